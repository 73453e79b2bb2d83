"""Reading and writing T5X checkpoints (legacy msgpack + zarr, and Orbax).

`load_t5x` is what `INITIAL_CHECKPOINT_PATH` resolves through: it returns the
parameter tree under T5X names (the `target/` prefix stripped), optionally with
the optimizer state, and checks every shape against a `T5Config` when given
one. `load_t5x_variable` reads a single array — the prompt initializers use it
to fetch the [V, D] embedding table without loading the model.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping, Optional, Union

import numpy as np
from etils import epath
from flax import serialization

from spot import errors
from spot.checkpoints import layout, orbax_format, t5x_format, tree
from spot.checkpoints.layout import CheckpointFormat, PathLike
from spot.models import T5Config, scan

Params = dict[str, Any]


class MissingVariableError(errors.CheckpointError, KeyError):
  """A variable asked for by name is not in the checkpoint."""

  def __str__(self) -> str:  # KeyError would quote the message
    return str(self.args[0]) if self.args else ""


def _unsupported_tf(located: layout.Located) -> errors.CheckpointError:
  return errors.CheckpointError(
      f"{located.path} is a TensorFlow checkpoint index (Mesh TensorFlow / T5X_TF), not a "
      "T5X msgpack or Orbax checkpoint; convert it with T5X first "
      "(t5x.checkpoints.Checkpointer.restore_from_tf_checkpoint).")


def _normalise_variable(variable_path: str) -> str:
  name = variable_path.strip("/")
  return name if name.split("/", 1)[0] in ("target", "state") else f"target/{name}"


def _missing_variable(name: str, names: list[str], source: Any) -> MissingVariableError:
  close = difflib.get_close_matches(name, names, n=3)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  return MissingVariableError(f"Variable {name!r} is not in the checkpoint {source} "
                  f"({len(names)} variables).{hint}")


def _split(state: Mapping[str, Any], with_optimizer_state: bool):
  params = state["target"]
  if with_optimizer_state:
    return params, state.get("state", {})
  return params


def _load_legacy(located: layout.Located, with_optimizer_state: bool, dtype) -> dict:
  contents = t5x_format.read_contents(located.path)
  optimizer, version = t5x_format.optimizer_tree(contents, located.path)
  keys = ["target", "state"] if with_optimizer_state else ["target"]
  leaves = {}
  for key in keys:
    for name, leaf in t5x_format.flatten_leaves(optimizer.get(key, {})).items():
      leaves[f"{key}/{name}"] = leaf
  del contents, optimizer
  target = {n: v for n, v in leaves.items() if n.startswith("target/")}
  state = {n: v for n, v in leaves.items() if n.startswith("state/")}
  # Parameters are cast to `dtype`; the optimizer state keeps its own dtypes.
  out = t5x_format.read_leaves(target, located.directory, located.path, dtype=dtype,
                               version=version)
  out.update(t5x_format.read_leaves(state, located.directory, located.path, version=version))
  return tree.unflatten(out)


def _load_orbax(located: layout.Located, with_optimizer_state: bool, dtype) -> dict:
  metadata = orbax_format.metadata_tree(located.path)
  keys = ["target", "state"] if with_optimizer_state else ["target"]
  subtree = {k: metadata[k] for k in keys if k in metadata}
  return orbax_format.restore(located.path, subtree, {"target": dtype})


def load_t5x(path: PathLike, config: Optional[T5Config] = None, *, step: Optional[int] = None,
             with_optimizer_state: bool = False, dtype: Optional[Any] = None
             ) -> Union[Params, tuple[Params, dict]]:
  """Reads a T5X checkpoint and returns its parameters under T5X names.

  Args:
    path: a model_dir (the latest complete `checkpoint_<step>` is used), a
      `checkpoint_<step>` directory (legacy msgpack+zarr or Orbax `state/`),
      the msgpack `checkpoint` file, or a single-file Flax msgpack checkpoint.
      Local paths and `gs://` URLs (etils.epath) both work.
    config: when given, the layers are put in the layout `config` asks for
      (stacked for `scan_layers`, `layers_i` otherwise; `spot.models.scan`)
      and every parameter shape is checked against
      `spot.models.param_shapes(config)`; prompt parameters under
      `encoder/prompt/` are allowed extras.
    step: with a model_dir, load this step instead of the latest.
    with_optimizer_state: also read the optimizer state (`step`,
      `param_states`) and return `(params, state)`.
    dtype: cast the parameters to this dtype while reading (e.g. bfloat16
      for inference); the optimizer state keeps its stored dtypes.

  Returns:
    The nested dict of numpy arrays (`token_embedder/embedding`, ...), or
    `(params, state)` with `with_optimizer_state=True`.

  Raises:
    FileNotFoundError: no checkpoint at `path` (or for `step`), or an array's
      files are missing (the message names the parameter and the file).
    ValueError: not a T5X checkpoint, or shapes that do not match `config`
      (each mismatched, missing or unexpected parameter is named with the
      expected and found shapes).
  """
  located = layout.locate(path, step)
  if located.format is CheckpointFormat.T5X_TF:
    raise _unsupported_tf(located)
  if located.format is CheckpointFormat.ORBAX:
    state = _load_orbax(located, with_optimizer_state, dtype)
  else:
    state = _load_legacy(located, with_optimizer_state, dtype)
  if config is not None:
    # Either layout (`layers_i` or scanned `layers`) serves either model.
    params = scan.to_layout(state["target"], config.scan_layers, config.param_scan_axis)
    tree.check_shapes(params, config, source=f"T5X checkpoint {located.path}")
    state = {**state, "target": params}
  return _split(state, with_optimizer_state)


def load_t5x_variable(path: PathLike, variable_path: str, *, step: Optional[int] = None,
                      dtype: Optional[Any] = None) -> np.ndarray:
  """Reads one array of a T5X checkpoint without reading the others.

  Args:
    path: as for `load_t5x`.
    variable_path: '/'-separated name such as `token_embedder/embedding` or
      `encoder/prompt/prompt/prompt`; a leading `target/` is optional, and
      `state/...` addresses the optimizer state.
    step: with a model_dir, the step to read.
    dtype: optional dtype to cast to while reading.

  Raises:
    KeyError: the variable is not in the checkpoint (close names suggested).
    FileNotFoundError: as for `load_t5x`.
  """
  located = layout.locate(path, step)
  if located.format is CheckpointFormat.T5X_TF:
    raise _unsupported_tf(located)
  name = _normalise_variable(variable_path)
  if located.format is CheckpointFormat.ORBAX:
    metadata = tree.flatten(orbax_format.metadata_tree(located.path))
    if name not in metadata:
      raise _missing_variable(name, sorted(metadata), located.path)
    restored = orbax_format.restore(located.path, tree.unflatten({name: metadata[name]}),
                                    {name.split("/", 1)[0]: dtype})
    return tree.flatten(restored)[name]
  contents = t5x_format.read_contents(located.path)
  optimizer, version = t5x_format.optimizer_tree(contents, located.path)
  leaves = t5x_format.flatten_leaves(optimizer)
  if name not in leaves:
    raise _missing_variable(name, sorted(leaves), located.path)
  leaf = leaves[name]
  del contents, optimizer, leaves
  return t5x_format.read_leaves({name: leaf}, located.directory, located.path, dtype=dtype,
                                version=version)[name]


@dataclasses.dataclass(frozen=True)
class CheckpointSummary:
  """What `describe` reports about a checkpoint without reading its arrays."""

  format: str
  path: str
  step: Optional[int]
  shapes: dict[str, tuple[int, ...]]
  dtypes: dict[str, str]
  version: Optional[int] = None

  @property
  def total_params(self) -> int:
    return tree.total_size(self.shapes)

  def to_json(self) -> dict[str, Any]:
    return {
        "format": self.format, "path": self.path, "step": self.step, "version": self.version,
        "params": {n: {"shape": list(self.shapes[n]), "dtype": self.dtypes[n]}
                   for n in sorted(self.shapes)},
        "total_params": self.total_params,
    }


def _leaf_info(leaf: Any) -> tuple[tuple[int, ...], str]:
  if t5x_format.is_spec(leaf):
    metadata = leaf["metadata"]
    dtype = metadata.get("dtype", leaf.get("dtype", "?"))
    return tuple(metadata["shape"]), np.dtype(dtype).name if dtype != "bfloat16" else dtype
  return tuple(np.shape(leaf)), np.asarray(leaf).dtype.name


def describe(path: PathLike, *, step: Optional[int] = None,
             with_optimizer_state: bool = False) -> CheckpointSummary:
  """Names, shapes and dtypes of a T5X checkpoint's arrays, from metadata only.

  Names are T5X parameter names; with `with_optimizer_state` the optimizer
  state is listed too, prefixed `state/`.
  """
  located = layout.locate(path, step)
  if located.format is CheckpointFormat.T5X_TF:
    raise _unsupported_tf(located)
  keys = ("target", "state") if with_optimizer_state else ("target",)
  shapes, dtypes, version = {}, {}, None
  if located.format is CheckpointFormat.ORBAX:
    metadata = orbax_format.metadata_tree(located.path)
    for key in keys:
      for name, meta in tree.flatten(metadata.get(key, {})).items():
        full = name if key == "target" else f"state/{name}"
        shapes[full] = tuple(meta.shape)
        dtypes[full] = np.dtype(meta.dtype).name
  else:
    contents = t5x_format.read_contents(located.path)
    optimizer, version = t5x_format.optimizer_tree(contents, located.path)
    for key in keys:
      for name, leaf in t5x_format.flatten_leaves(optimizer.get(key, {})).items():
        if leaf is None:
          continue
        full = name if key == "target" else f"state/{name}"
        shapes[full], dtypes[full] = _leaf_info(leaf)
  return CheckpointSummary(located.format.value, str(located.path), located.step, shapes,
                           dtypes, version)


def save_t5x(path: PathLike, params: Mapping[str, Any], *, step: int,
             optimizer_state: Optional[Mapping[str, Any]] = None,
             version: int = t5x_format.VERSION) -> epath.Path:
  """Writes `params` as the legacy T5X checkpoint `path/checkpoint_<step>`.

  The files are those T5X writes (msgpack `checkpoint` + zarr v2 arrays with
  gzip level 1 and chunks of at most 64 MiB; norm scales, scalars and relative
  position tables inline), so T5X, prompt-tuning and `load_t5x` all read it.
  Everything is written into `checkpoint_<step>.tmp-<time>` and renamed when
  complete: a crash leaves no directory that a loader would pick up.

  Args:
    path: the model_dir (created if needed); local or `gs://`.
    params: nested dict of arrays under T5X names (jax or numpy).
    step: the training step; names the directory and is stored as
      `state/step`.
    optimizer_state: T5X's `state` subtree ({"param_states": ...}); `step` is
      added when absent. Without it only {"step": step} is stored.
    version: the T5X format version (3).

  Returns:
    The final checkpoint directory.

  Raises:
    FileExistsError: `path/checkpoint_<step>` already exists.
  """
  state = dict(serialization.to_state_dict(optimizer_state or {}))
  state.setdefault("step", np.asarray(step, np.int32))
  optimizer = {"target": serialization.to_state_dict(params), "state": state}
  final = layout.checkpoint_dir(path, step)
  with layout.atomic_directory(final) as tmp:
    t5x_format.write_checkpoint(tmp, optimizer, version=version)
  return final
