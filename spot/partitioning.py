"""Mesh, logical axis rules and shardings: one code path from one CPU to a pod.

The model annotates parameters and activations with logical names (batch,
length, embed, mlp, heads, kv, joined_kv, vocab, relpos_buckets, prompt,
prompt_embed, tasks). `Partitioner` maps them onto a ('data', 'model') mesh
with T5X's standard rules and gives `NamedSharding`s for parameters,
optimizer state, batches and decode caches. A single CPU device is a 1x1 mesh.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

LogicalRules = Sequence[tuple[str, Any]]


def standard_logical_axis_rules(activation_partitioning_dims: int = 1,
                                parameter_partitioning_dims: int = 1,
                                additional_rules: Optional[LogicalRules] = None
                                ) -> tuple[tuple[str, Any], ...]:
  """T5X's standard rules (REFERENCE.md 3) plus prompt axes, replicated."""
  if activation_partitioning_dims == 1 and parameter_partitioning_dims == 1:
    rules = [("batch", "data"), ("vocab", "model"), ("embed", None), ("mlp", "model"),
             ("heads", "model"), ("kv", None), ("joined_kv", "model")]
  elif activation_partitioning_dims == 2 and parameter_partitioning_dims == 1:
    rules = [("batch", "data"), ("vocab", "model"), ("mlp", "model"), ("heads", "model"),
             ("kv", None), ("joined_kv", "model"), ("embed", "model")]
  elif activation_partitioning_dims == 1 and parameter_partitioning_dims == 2:
    rules = [("batch", "data"), ("vocab", "model"), ("mlp", "model"), ("heads", "model"),
             ("kv", None), ("joined_kv", "model"), ("embed", "data")]
  elif activation_partitioning_dims == 2 and parameter_partitioning_dims == 2:
    rules = [("batch", "data"), ("vocab", "model"), ("mlp", "model"), ("heads", "model"),
             ("kv", None), ("joined_kv", "model"), ("embed", "model"), ("embed", "data")]
  else:
    raise ValueError(f"Unsupported partitioning dims ({activation_partitioning_dims}, "
                     f"{parameter_partitioning_dims}); use 1 or 2 for each.")
  rules += [("relpos_buckets", None), ("abspos_buckets", None), ("length", None),
            ("layers", None), ("stack", None), ("mlp_activations", None),
            ("prompt", None), ("prompt_embed", None), ("tasks", None)]
  rules += list(additional_rules or ())
  return tuple(rules)


def make_mesh(num_partitions: int = 1, devices: Optional[Sequence[jax.Device]] = None,
              data_size: Optional[int] = None) -> Mesh:
  """A ('data', 'model') mesh: `num_partitions` devices per model replica.

  Args:
    num_partitions: size of the 'model' axis (model parallelism).
    devices: defaults to all devices of all processes.
    data_size: size of the 'data' axis; defaults to devices / num_partitions.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if num_partitions < 1 or n % num_partitions:
    raise ValueError(f"num_partitions={num_partitions} must divide the {n} devices.")
  data_size = n // num_partitions if data_size is None else data_size
  if data_size * num_partitions != n:
    raise ValueError(f"Mesh ({data_size} data x {num_partitions} model) does not cover the "
                     f"{n} devices; pick sizes whose product is {n}.")
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh((data_size, num_partitions), devices)
  except Exception:  # CPU / uneven topologies: plain row-major order.
    grid = np.asarray(devices).reshape(data_size, num_partitions)
  return Mesh(grid, ("data", "model"))


@dataclasses.dataclass
class Partitioner:
  """Shardings for a ('data', 'model') mesh under logical axis rules."""

  mesh: Mesh
  rules: tuple[tuple[str, Any], ...] = dataclasses.field(
      default_factory=standard_logical_axis_rules)

  @classmethod
  def create(cls, num_partitions: int = 1, rules: Optional[LogicalRules] = None,
             devices: Optional[Sequence[jax.Device]] = None) -> "Partitioner":
    return cls(make_mesh(num_partitions, devices),
               tuple(rules) if rules is not None else standard_logical_axis_rules())

  @property
  def data_shards(self) -> int:
    return self.mesh.shape["data"]

  def sharding(self, spec: P) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  def logical_to_mesh(self, logical_specs: Any) -> Any:
    """A tree of logical PartitionSpecs -> a tree of NamedShardings."""
    return nn.logical_to_mesh_sharding(logical_specs, self.mesh, self.rules)

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def data_sharding(self, ndim: int = 2) -> NamedSharding:
    return NamedSharding(self.mesh, P("data", *([None] * (ndim - 1))))

  def batch_shardings(self, batch: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: self.data_sharding(np.ndim(x)), batch)

  def shard_batch(self, batch: Any) -> Any:
    """Host-local numpy batch -> global arrays split over 'data' (multi-host aware)."""
    if jax.process_count() == 1:
      return jax.device_put(batch, self.batch_shardings(batch))
    from jax.experimental import multihost_utils
    specs = jax.tree_util.tree_map(lambda x: P("data", *([None] * (np.ndim(x) - 1))), batch)
    return multihost_utils.host_local_array_to_global_array(batch, self.mesh, specs)

  def optimizer_state_shardings(self, opt_state_shapes: Any, param_shardings: Any,
                                params_shapes: Any) -> Any:
    """Optimizer-state leaves shaped like a parameter take its sharding; others replicate."""
    by_shape: dict[tuple, NamedSharding] = {}
    for s, sh in zip(jax.tree_util.tree_leaves(params_shapes),
                     jax.tree_util.tree_leaves(param_shardings)):
      by_shape.setdefault(tuple(s.shape), sh)
    return jax.tree_util.tree_map(
        lambda s: by_shape.get(tuple(getattr(s, "shape", ())), self.replicated), opt_state_shapes)

  def __enter__(self):
    self._ctx = [self.mesh, nn.logical_axis_rules(self.rules)]
    for c in self._ctx:
      c.__enter__()
    return self

  def __exit__(self, *exc):
    for c in reversed(self._ctx):
      c.__exit__(*exc)
    return False
