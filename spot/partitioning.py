"""Mesh, logical axis rules and shardings: one code path from one CPU to a pod.

The model annotates parameters and activations with logical names (batch,
length, embed, mlp, heads, kv, joined_kv, vocab, relpos_buckets, prompt,
prompt_embed, tasks). `Partitioner` maps them onto a ('data', 'model') mesh
with T5X's standard rules (REFERENCE.md 3) and gives `NamedSharding`s for
parameters, optimizer state, batches and decode caches. A single CPU device is
a 1x1 mesh; the same jitted step runs on 8 GPUs or a TPU pod slice.

What is placed where, and why:

- Frozen weights: 'heads', 'mlp', 'joined_kv' and 'vocab' dimensions on
  'model' (tensor parallelism, as T5X), so XL/XXL fit.
- Prompts ('prompt', 'prompt_embed', 'tasks'): replicated. They are tiny and
  every data shard needs the whole prompt; their optimizer state follows.
- Optimizer state: each leaf that mirrors a trainable parameter takes that
  parameter's sharding; Adafactor's factored `v_row` / `v_col` take the
  parameter's spec without the reduced dimension; counters are replicated.
- Batches: the leading dimension on 'data'. In a multi-host run each host
  reads one shard of the data (`DataLayout`); hosts whose devices hold the
  same data rows (one model-parallel group spanning hosts) read the same shard.
- Decode caches [batch, length, heads, kv]: batch on 'data', heads on 'model'.

A dimension whose size the mesh axis does not divide (e.g. 6 heads on 4
model partitions) is replicated instead, with a warning, rather than failing.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

LogicalRules = Sequence[tuple[str, Any]]
PyTree = Any

DATA_AXIS = "data"
MODEL_AXIS = "model"
# Logical axes of the decoder's cached keys and values [batch, length, heads, kv].
CACHE_AXES = ("batch", "length", "heads", "kv")

_REPLICATED_AXES = ("relpos_buckets", "abspos_buckets", "length", "layers", "stack",
                    "mlp_activations", "prompt", "prompt_embed", "tasks")
_EMBED_RULES = {
    (1, 1): (("embed", None),),
    (2, 1): (("embed", MODEL_AXIS),),
    (1, 2): (("embed", DATA_AXIS),),
    (2, 2): (("embed", MODEL_AXIS), ("embed", DATA_AXIS)),
}


def standard_logical_axis_rules(activation_partitioning_dims: int = 1,
                                parameter_partitioning_dims: int = 1,
                                additional_rules: Optional[LogicalRules] = None
                                ) -> tuple[tuple[str, Any], ...]:
  """T5X's standard rules plus prompt-tuning's prompt axes (replicated).

  Args:
    activation_partitioning_dims: 2 also shards activations' 'embed' on 'model'.
    parameter_partitioning_dims: 2 also shards parameters' 'embed' on 'data'
      (ZeRO-3-like; it saves memory on model tuning, not on prompt tuning).
    additional_rules: appended last, e.g. `(("tasks", "model"),)`.
  """
  key = (activation_partitioning_dims, parameter_partitioning_dims)
  if key not in _EMBED_RULES:
    raise ValueError(f"Unsupported partitioning dims {key}: activation_partitioning_dims and "
                     "parameter_partitioning_dims must each be 1 or 2.")
  rules = [("batch", DATA_AXIS), ("vocab", MODEL_AXIS), ("mlp", MODEL_AXIS),
           ("heads", MODEL_AXIS), ("kv", None), ("joined_kv", MODEL_AXIS)]
  rules += list(_EMBED_RULES[key])
  rules += [(name, None) for name in _REPLICATED_AXES]
  rules += [tuple(r) for r in (additional_rules or ())]
  return tuple(rules)


# ------------------------------------------------------------------------------
# Meshes.
# ------------------------------------------------------------------------------


def _sorted_devices(devices: Sequence[Any]) -> list[Any]:
  """Devices grouped by host, so a model-parallel row stays on one host if it can."""
  return sorted(devices, key=lambda d: (getattr(d, "process_index", 0), d.id))


def submesh_device_grid(devices: Sequence[Any], submesh: Sequence[int]) -> np.ndarray:
  """A [data, model] grid whose rows are physical TPU tiles of shape `submesh`.

  T5X's `model_parallel_submesh=(x, y, z, core)`: each model-parallel group is
  an x*y*z chips by `core` cores block of the physical topology, so 'model'
  collectives stay on the nearest links; the tiles form the 'data' axis.

  Args:
    devices: TPU devices (each has `coords` (x, y, z) and `core_on_chip`).
    submesh: tile shape (x, y, z, core).
  """
  submesh = tuple(int(s) for s in submesh)
  if len(submesh) != 4 or min(submesh) < 1:
    raise ValueError(f"model_parallel_submesh={submesh} must be 4 positive ints (x, y, z, core).")
  keyed = []
  for d in devices:
    coords = getattr(d, "coords", None)
    if coords is None:
      raise ValueError(f"model_parallel_submesh needs TPU devices with physical coords; {d} has "
                       "none. Use num_partitions (NUM_PARTITIONS) on this platform.")
    keyed.append((tuple(coords) + (getattr(d, "core_on_chip", 0),), d))
  extent = tuple(max(k[i] for k, _ in keyed) + 1 for i in range(4))
  if any(e % s for e, s in zip(extent, submesh)):
    raise ValueError(f"model_parallel_submesh={submesh} does not tile the physical topology "
                     f"{extent} (x, y, z, core); each entry must divide the extent.")
  tiles: dict[tuple[int, ...], list] = {}
  for k, d in keyed:
    tile = tuple(c // s for c, s in zip(k, submesh))
    pos = tuple(c % s for c, s in zip(k, submesh))
    tiles.setdefault(tile, []).append((pos, d))
  grid = np.empty((len(tiles), math.prod(submesh)), dtype=object)
  for i, (_, members) in enumerate(sorted(tiles.items())):
    grid[i, :] = [d for _, d in sorted(members, key=lambda x: x[0])]
  return grid


def _device_grid(devices: Sequence[Any], data_size: int, model_size: int) -> np.ndarray:
  """[data, model] devices: topology-aware on TPU, host-major elsewhere."""
  if devices and getattr(devices[0], "platform", "") == "tpu":
    from jax.experimental import mesh_utils
    try:
      return mesh_utils.create_device_mesh((data_size, model_size), list(devices))
    except (ValueError, NotImplementedError, AssertionError) as e:
      logging.warning("No topology-aware TPU mesh for (%d, %d) (%s); using host-major order.",
                      data_size, model_size, e)
  grid = np.empty(len(devices), dtype=object)
  grid[:] = _sorted_devices(devices)
  return grid.reshape(data_size, model_size)


def make_mesh(num_partitions: Optional[int] = None,
              model_parallel_submesh: Optional[Sequence[int]] = None,
              devices: Optional[Sequence[jax.Device]] = None,
              data_size: Optional[int] = None) -> Mesh:
  """A ('data', 'model') mesh over all devices of all processes.

  Args:
    num_partitions: size of the 'model' axis (NUM_PARTITIONS); default 1.
    model_parallel_submesh: TPU tile (x, y, z, core) forming one model-parallel
      group (excludes num_partitions).
    devices: defaults to `jax.devices()` (every process's devices).
    data_size: size of the 'data' axis; defaults to devices / num_partitions.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if model_parallel_submesh is not None:
    if num_partitions not in (None, math.prod(model_parallel_submesh)):
      raise ValueError("Give either num_partitions or model_parallel_submesh, not both "
                       f"(got {num_partitions} and {tuple(model_parallel_submesh)}).")
    return Mesh(submesh_device_grid(devices, model_parallel_submesh), (DATA_AXIS, MODEL_AXIS))
  num_partitions = 1 if num_partitions is None else int(num_partitions)
  if num_partitions < 1 or n % num_partitions:
    raise ValueError(f"num_partitions={num_partitions} (NUM_PARTITIONS) must divide the {n} "
                     "devices.")
  data_size = n // num_partitions if data_size is None else int(data_size)
  if data_size * num_partitions != n:
    raise ValueError(f"Mesh ({data_size} data x {num_partitions} model) does not cover the "
                     f"{n} devices; pick sizes whose product is {n}.")
  return Mesh(_device_grid(devices, data_size, num_partitions), (DATA_AXIS, MODEL_AXIS))


# ------------------------------------------------------------------------------
# Multi-host data layout.
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataLayout:
  """Which shard of the data this host reads (T5X's `DataLayout`).

  Attributes:
    batch_size: the global batch size.
    shard_id: this host's SeqIO shard index.
    num_shards: distinct data shards over all hosts (hosts of one
      model-parallel group read the same shard).
    is_first_host_in_replica_set: the lowest process among those reading this
      shard (the one that may write per-shard state such as dataset positions).
  """

  batch_size: int
  shard_id: int
  num_shards: int
  is_first_host_in_replica_set: bool = True

  @property
  def per_host_batch_size(self) -> int:
    return self.batch_size // self.num_shards


def data_layout_from_grid(grid: np.ndarray, batch_size: int, process_index: int,
                          data_axis: int = 0) -> DataLayout:
  """The `DataLayout` of `process_index` for a device grid (devices know their process).

  A host whose devices sit on data rows [s, s + k) reads shard s // k of
  data_size // k shards; rows must form such aligned blocks.
  """
  grid = np.moveaxis(np.asarray(grid, dtype=object), data_axis, 0)
  data_size = grid.shape[0]
  rows_of: dict[int, set] = {}
  for row in range(data_size):
    for d in grid[row].flat:
      rows_of.setdefault(getattr(d, "process_index", 0), set()).add(row)
  if process_index not in rows_of:
    raise ValueError(f"Process {process_index} owns no device of the mesh; build the mesh from "
                     "jax.devices() (all processes' devices).")
  rows = sorted(rows_of[process_index])
  k = len(rows)
  if rows != list(range(rows[0], rows[0] + k)) or rows[0] % k or data_size % k:
    raise ValueError(f"Process {process_index} holds data rows {rows} of {data_size}, not an "
                     "aligned block; use a NUM_PARTITIONS that divides or is a multiple of the "
                     "devices per host.")
  num_shards = data_size // k
  if batch_size % data_size:
    raise ValueError(f"BATCH_SIZE {batch_size} is not divisible by the {data_size} data-parallel "
                     "replicas (mesh 'data' axis); choose a multiple.")
  peers = [p for p, r in rows_of.items() if sorted(r) == rows]
  return DataLayout(batch_size, rows[0] // k, num_shards, process_index == min(peers))


# ------------------------------------------------------------------------------
# Specs for parameters, optimizer state and caches.
# ------------------------------------------------------------------------------


def _padded(spec: Any, ndim: int) -> tuple:
  spec = tuple(spec) if spec is not None else ()
  return spec + (None,) * (ndim - len(spec))


def fit_spec(spec: P, shape: Sequence[int], mesh_shape: Mapping[str, int],
             what: str = "array") -> P:
  """Drops mesh axes from dimensions they do not divide (those become replicated)."""
  out = []
  for size, axes in zip(shape, _padded(spec, len(shape))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    parts = math.prod(mesh_shape[a] for a in names)
    if parts > 1 and size % parts:
      _warn_once(f"{what}: dimension of size {size} is not divisible by mesh axes {names} "
                 f"({parts}); replicating it. A NUM_PARTITIONS dividing it avoids the copies.")
      axes = None
    out.append(axes)
  while out and out[-1] is None:
    out.pop()
  return P(*out)


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
  logging.warning(message)


def _reduced_dim(param_shape: tuple, leaf_shape: tuple, field: Optional[str]) -> Optional[int]:
  """The dimension of a parameter that a factored accumulator reduces, or None."""
  candidates = [d for d in range(len(param_shape))
                if param_shape[:d] + param_shape[d + 1:] == leaf_shape]
  if not candidates:
    return None
  if field in ("v_row", "v_col") and len(param_shape) >= 2:
    # optax.adafactor: d1, d0 are the second largest and largest dimensions;
    # v_row drops d0, v_col drops d1 (stable argsort breaks ties).
    d1, d0 = (int(i) for i in np.argsort(param_shape)[-2:])
    return d0 if field == "v_row" else d1
  return candidates[0] if len(candidates) == 1 else None


def mirror_spec(param_shape: Sequence[int], param_spec: P, leaf_shape: Sequence[int],
                field: Optional[str] = None) -> P:
  """The spec of an optimizer-state leaf derived from a parameter.

  Same shape: the parameter's spec. One dimension fewer (Adafactor's
  factored `v_row` / `v_col`): the spec without the reduced dimension.
  Anything else (placeholders such as shape (1,)): replicated.
  """
  param_shape, leaf_shape = tuple(param_shape), tuple(leaf_shape)
  spec = _padded(param_spec, len(param_shape))
  if leaf_shape == param_shape:
    return P(*spec)
  if len(leaf_shape) == len(param_shape) - 1:
    d = _reduced_dim(param_shape, leaf_shape, field)
    if d is not None:
      return P(*(spec[:d] + spec[d + 1:]))
  return P()


def _key_name(entry: Any) -> Optional[str]:
  for attr in ("name", "key"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return None


def optimizer_state_specs(opt_state_shapes: PyTree, param_specs: PyTree,
                          param_shapes: PyTree) -> PyTree:
  """PartitionSpecs for an optax state, derived from the parameters' specs.

  Every subtree of the state with the structure of the parameter tree (Adam's
  `mu`/`nu`, Adafactor's `v_row`/`v_col`/`v`, accumulated gradients ...) is
  matched leaf by leaf with the parameters (`mirror_spec`); all other leaves
  (step counts, injected hyperparameters) are replicated.
  """
  param_def = jax.tree_util.tree_structure(param_shapes)
  shapes = param_def.flatten_up_to(param_shapes)
  specs = param_def.flatten_up_to(param_specs)
  is_mirror = lambda x: (not isinstance(x, jax.ShapeDtypeStruct)
                         and jax.tree_util.tree_structure(x) == param_def)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(opt_state_shapes, is_leaf=is_mirror)
  out = []
  for path, leaf in leaves:
    if is_mirror(leaf):
      field = _key_name(path[-1]) if path else None
      mirrored = [mirror_spec(s.shape, spec, l.shape, field)
                  for s, spec, l in zip(shapes, specs, param_def.flatten_up_to(leaf))]
      out.append(param_def.unflatten(mirrored))
    else:
      out.append(P())
  return treedef.unflatten(out)


def _cache_axes(x: Any) -> Optional[tuple[str, ...]]:
  """CACHE_AXES for a [B, L, H, K] leaf, ("layers", *CACHE_AXES) for a scanned one."""
  if np.ndim(x) == len(CACHE_AXES):
    return CACHE_AXES
  if np.ndim(x) == len(CACHE_AXES) + 1:
    return ("layers",) + CACHE_AXES
  return None


def cache_specs(cache: PyTree, rules: LogicalRules) -> PyTree:
  """Specs for a decoder cache: [batch, length, heads, kv] leaves by CACHE_AXES
  (scanned layers add a leading replicated "layers" axis)."""
  def spec(x):
    axes = _cache_axes(x)
    return nn.logical_to_mesh_axes(axes, rules) if axes else P()
  return jax.tree_util.tree_map(spec, cache)


def constrain_cache(cache: PyTree) -> PyTree:
  """Annotates a decoder cache with CACHE_AXES inside jit (no-op without a mesh)."""
  def constrain(x):
    axes = _cache_axes(x)
    return nn.with_logical_constraint(x, axes) if axes else x
  return jax.tree_util.tree_map(constrain, cache)


# ------------------------------------------------------------------------------
# The partitioner.
# ------------------------------------------------------------------------------


class PartitionedFn:
  """A jitted function that runs inside its partitioner's mesh and rules."""

  def __init__(self, fn: Callable[..., Any], partitioner: "Partitioner"):
    self._fn, self._partitioner = fn, partitioner

  def __call__(self, *args, **kwargs):
    with self._partitioner:
      return self._fn(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with self._partitioner:
      return self._fn.lower(*args, **kwargs)


@dataclasses.dataclass
class Partitioner:
  """Shardings for a ('data', 'model') mesh under logical axis rules.

  Build with `Partitioner.create(num_partitions=...)` (gin:
  `partitioning.Partitioner.create.num_partitions = %NUM_PARTITIONS`). Used as
  a context manager it activates the mesh and the rules, which makes the
  model's `with_logical_constraint` annotations effective.
  """

  mesh: Mesh
  rules: tuple[tuple[str, Any], ...] = dataclasses.field(
      default_factory=standard_logical_axis_rules)

  @classmethod
  def create(cls, num_partitions: Optional[int] = None,
             model_parallel_submesh: Optional[Sequence[int]] = None,
             rules: Optional[LogicalRules] = None,
             devices: Optional[Sequence[jax.Device]] = None) -> "Partitioner":
    """A partitioner over all devices.

    Args:
      num_partitions: model-parallel size (the 'model' axis); default 1.
      model_parallel_submesh: TPU tile (x, y, z, core) instead of num_partitions.
      rules: logical axis rules; default `standard_logical_axis_rules()`.
      devices: defaults to `jax.devices()`.
    """
    mesh = make_mesh(num_partitions, model_parallel_submesh, devices)
    return cls(mesh, tuple(tuple(r) for r in rules) if rules is not None
               else standard_logical_axis_rules())

  @property
  def data_shards(self) -> int:
    """Data-parallel replicas (the size of the mesh axes 'batch' maps to)."""
    return math.prod(self.mesh.shape[a] for a in self._batch_axes())

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def sharding(self, spec: P) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  def _batch_axes(self) -> tuple[str, ...]:
    axes = nn.logical_to_mesh_axes(("batch",), self.rules)[0]
    return (axes,) if isinstance(axes, str) else tuple(axes or ())

  def _fit(self, specs: PyTree, shapes: Optional[PyTree], what: str) -> PyTree:
    if shapes is None:
      return specs
    is_spec = lambda x: isinstance(x, P)
    flat_shapes = jax.tree_util.tree_structure(specs, is_leaf=is_spec).flatten_up_to(shapes)
    flat_specs, treedef = jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)
    fitted = [fit_spec(spec, np.shape(s), dict(self.mesh.shape),
                       f"{what} {jax.tree_util.keystr(path)}")
              for (path, spec), s in zip(flat_specs, flat_shapes)]
    return treedef.unflatten(fitted)

  def _named(self, specs: PyTree) -> PyTree:
    return jax.tree_util.tree_map(self.sharding, specs, is_leaf=lambda x: isinstance(x, P))

  def logical_to_mesh(self, logical_specs: PyTree, shapes: Optional[PyTree] = None) -> PyTree:
    """A tree of logical PartitionSpecs -> a tree of NamedShardings.

    With `shapes` (arrays or ShapeDtypeStructs of the same tree), a dimension
    the mesh axis does not divide is replicated instead of failing.
    """
    specs = nn.logical_to_mesh(logical_specs, self.rules)
    return self._named(self._fit(specs, shapes, "parameter"))

  def optimizer_state_shardings(self, opt_state_shapes: PyTree, param_shardings: PyTree,
                                params_shapes: PyTree) -> PyTree:
    """Shardings of an optax state mirroring the parameters' (`optimizer_state_specs`)."""
    param_specs = jax.tree_util.tree_map(lambda s: s.spec, param_shardings)
    specs = optimizer_state_specs(opt_state_shapes, param_specs, params_shapes)
    return self._named(self._fit(specs, opt_state_shapes, "optimizer state"))

  def cache_shardings(self, cache: PyTree) -> PyTree:
    """Shardings of a decoder cache (batch on 'data', heads on 'model')."""
    return self._named(self._fit(cache_specs(cache, self.rules), cache, "decode cache"))

  def data_sharding(self, ndim: int = 2) -> NamedSharding:
    return NamedSharding(self.mesh, P(self._batch_axes() or None, *([None] * (ndim - 1))))

  def batch_shardings(self, batch: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda x: self.data_sharding(max(np.ndim(x), 1)), batch)

  def data_layout(self, batch_size: int, process_index: Optional[int] = None) -> DataLayout:
    """This host's shard of the data for a global `batch_size`."""
    axes = self._batch_axes()
    if len(axes) != 1:
      raise ValueError(f"The data layout needs 'batch' on one mesh axis, rules give {axes}.")
    grid = self.mesh.devices
    return data_layout_from_grid(grid, batch_size,
                                 jax.process_index() if process_index is None else process_index,
                                 self.mesh.axis_names.index(axes[0]))

  def shard_batch(self, batch: PyTree, global_batch_size: Optional[int] = None) -> PyTree:
    """A host-local numpy batch -> global arrays split over 'data'.

    Args:
      batch: this host's rows (`DataLayout.per_host_batch_size` of them).
      global_batch_size: rows over all hosts; default: the host rows times the
        number of data shards of the mesh's layout.
    """
    if jax.process_count() == 1:
      return jax.device_put(batch, self.batch_shardings(batch))
    rows = next(iter(jax.tree_util.tree_leaves(batch))).shape[0]
    if global_batch_size is None:
      shards = self.data_layout(rows * self.data_shards).num_shards
      global_batch_size = rows * shards
    shapes = jax.tree_util.tree_map(lambda x: (global_batch_size,) + np.shape(x)[1:], batch)
    return jax.make_array_from_process_local_data(self.batch_shardings(batch), batch, shapes)

  def put(self, tree: PyTree, shardings: PyTree, *, in_place: bool = False) -> PyTree:
    """Places host values (identical on every host) with the given shardings.

    With `in_place`, a tree of nested dicts is updated leaf by leaf, so each
    host array can be freed as soon as its device copy exists: peak host
    memory is one copy of the tree plus its largest leaf instead of two
    copies (on CPU the devices' memory is the host's).
    """
    if not in_place or not isinstance(tree, dict):
      return jax.device_put(tree, shardings)
    for key in list(tree):
      if isinstance(tree[key], dict):
        self.put(tree[key], shardings[key], in_place=True)
      else:
        tree[key] = jax.block_until_ready(jax.device_put(tree[key], shardings[key]))
    return tree

  def partition(self, fn: Callable[..., Any], in_shardings: Any = None,
                out_shardings: Any = None, static_argnums: Sequence[int] = (),
                donate_argnums: Sequence[int] = ()) -> PartitionedFn:
    """`jax.jit` with shardings, run inside the mesh and rules (T5X's `partition`)."""
    kwargs = dict(static_argnums=tuple(static_argnums), donate_argnums=tuple(donate_argnums))
    if in_shardings is not None:
      kwargs["in_shardings"] = in_shardings
    if out_shardings is not None:
      kwargs["out_shardings"] = out_shardings
    return PartitionedFn(jax.jit(fn, **kwargs), self)

  def __enter__(self):
    # jax.set_mesh (not the deprecated `with mesh:`) is what makes flax's
    # logical constraints inside the model take effect. A stack, so a partitioned
    # function called inside `with partitioner:` (the trainer's loop) nests.
    ctx = [jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules)]
    for c in ctx:
      c.__enter__()
    self.__dict__.setdefault("_ctx_stack", []).append(ctx)
    return self

  def __exit__(self, *exc):
    for c in reversed(self.__dict__["_ctx_stack"].pop()):
      c.__exit__(*exc)
    return False


def host_array(x: jax.Array) -> np.ndarray:
  """A (possibly multi-host, sharded) array as a full numpy array on every host."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
