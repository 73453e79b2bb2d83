"""The layout of a run's model_dir, and its small files: one owner for every reader.

The trainer writes a run directory; the library's sources, `spot report`, the
demo and `spot checkpoint` read it. Names and paths live here only:

  MODEL_DIR/checkpoints/<step>/   orbax: `state` (trainable, opt_state, step) + `meta` (JSON),
                                  committed when `commit_success.txt` is there
  MODEL_DIR/best/<step>/          the same, for the best evaluation so far
  MODEL_DIR/numpy_checkpoints/checkpoint_<step>/<variable>
                                  the prompt as prompt-tuning writes it: `np.save` bytes
                                  under the dotted variable path
                                  (`encoder.prompt.prompt.prompt`, no suffix), plus a
                                  `<variable>.npy` copy
  MODEL_DIR/run.json              base checkpoint, model config, prompt shape, task, seed
  MODEL_DIR/metrics.json          the final scores (`spot report`)
  MODEL_DIR/config.gin            the operative gin config
  MODEL_DIR/training_eval/<task>/ TensorBoard scalars of evaluations during training
  MODEL_DIR/inference_eval/       SeqIO's predictions and metrics (jsonl)

Small files are written with `spot.io` (temporary sibling, fsync, rename), so
a reader never sees half a file. A numpy export is written in a temporary
folder and renamed whole; what a killed writer leaves is cleared (or, for the
only copy of an export, restored) by `remove_stale_exports`.
"""

from __future__ import annotations

import io
import os
import secrets
from typing import Any, Mapping, Optional

import numpy as np
from etils import epath

from spot import errors
from spot import io as spot_io

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
RUN_KINDS = (CHECKPOINTS_DIR, BEST_DIR)
COMMIT_MARKER = "commit_success.txt"  # orbax's mark of a finished step folder
STATE_ITEM = "state"
META_ITEM = "meta"
NUMPY_DIR = "numpy_checkpoints"
NUMPY_STEP_PREFIX = "checkpoint_"
RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"
CONFIG_GIN = "config.gin"
TRAINING_EVAL_DIR = "training_eval"
INFERENCE_EVAL_DIR = "inference_eval"

# The prompt's parameter path (T5X / prompt-tuning), and its numpy export's file name.
PROMPT_VARIABLE = "encoder/prompt/prompt/prompt"


def variable_file(variable: str) -> str:
  """The numpy export's file name of a '/'-joined parameter path: '/' becomes '.'."""
  return variable.replace("/", ".")


PROMPT_FILE = variable_file(PROMPT_VARIABLE)  # "encoder.prompt.prompt.prompt"


def step_dir(model_dir: epath.PathLike, step: int, best: bool = False) -> epath.Path:
  """`model_dir/checkpoints/<step>` (or `best/<step>`), the orbax step folder."""
  return epath.Path(model_dir) / (BEST_DIR if best else CHECKPOINTS_DIR) / str(step)


def is_committed(step_folder: epath.PathLike) -> bool:
  """Whether an orbax step folder is whole: its commit marker and both items are there."""
  step_folder = epath.Path(step_folder)
  return ((step_folder / COMMIT_MARKER).exists() and (step_folder / STATE_ITEM).is_dir()
          and (step_folder / META_ITEM).is_dir())


def committed_steps(model_dir: epath.PathLike, kind: str = CHECKPOINTS_DIR) -> list[int]:
  """Steps of committed folders under `model_dir/<kind>` ("checkpoints" or "best"), ascending."""
  root = epath.Path(model_dir) / kind
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir()
                if p.name.isdigit() and p.is_dir() and is_committed(p))


def incomplete_steps(root: epath.PathLike) -> list[epath.Path]:
  """Step-named folders under `root` (`checkpoints/` or `best/`) that are not committed."""
  root = epath.Path(root)
  if not root.is_dir():
    return []
  return sorted((p for p in root.iterdir() if p.name.isdigit() and p.is_dir()
                 and not is_committed(p)), key=lambda p: int(p.name))


# Numpy prompt exports.


def _npy_bytes(array: Any) -> bytes:
  buf = io.BytesIO()
  np.save(buf, np.asarray(array))
  return buf.getvalue()


def numpy_step_dir(model_dir: str, step: int) -> epath.Path:
  """`model_dir/numpy_checkpoints/checkpoint_<step>`."""
  return epath.Path(model_dir) / NUMPY_DIR / f"{NUMPY_STEP_PREFIX}{step}"


def numpy_steps(model_dir: str) -> list[int]:
  """Steps with a numpy export, ascending."""
  root = epath.Path(model_dir) / NUMPY_DIR
  if not root.exists():
    return []
  return sorted(int(p.name.split("_")[-1]) for p in root.glob(f"{NUMPY_STEP_PREFIX}*")
                if p.name.split("_")[-1].isdigit())


# jax and flax load only for a writer: readers (the library, `spot report`) stay light.


def _process_index() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


def _flat_names(trainable: Mapping[str, Any]) -> dict[str, Any]:
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return traverse_util.flatten_dict(dict(trainable), sep=".")


def _numpy_arrays(trainable: Mapping[str, Any], pattern: str) -> dict[str, np.ndarray]:
  import jax  # pylint: disable=g-import-not-at-top
  return {k: np.asarray(jax.device_get(v)) for k, v in _flat_names(trainable).items()
          if pattern in k}


def has_prompt_numpy(model_dir: str, step: int, trainable: Mapping[str, Any],
                     pattern: str = "prompt") -> bool:
  """Whether `checkpoint_<step>` holds every file `save_prompt_numpy` would write."""
  names = [k for k in _flat_names(trainable) if pattern in k]
  final = numpy_step_dir(model_dir, step)
  return all((final / n).exists() and (final / f"{n}.npy").exists() for n in names)


def save_prompt_numpy(model_dir: str, step: int, trainable: Mapping[str, Any],
                      pattern: str = "prompt") -> list[str]:
  """Writes every trainable array whose path contains `pattern` as numpy.

  File names are the '/'-joined parameter path with '.' (prompt-tuning's
  `encoder.prompt.prompt.prompt`), into `numpy_checkpoints/checkpoint_<step>`,
  written in a temporary directory and renamed so a reader never sees half.
  An existing export of the step is moved aside first and removed last; a kill
  in between leaves `.checkpoint_<step>.*` folders that `remove_stale_exports`
  clears (or, for a moved-aside export with no replacement, restores) on the
  next start. Only process 0 writes; returns the written variable files.
  """
  if _process_index() != 0:
    return []
  chosen = _numpy_arrays(trainable, pattern)
  if not chosen:
    return []
  final = numpy_step_dir(model_dir, step)
  root = final.parent
  tag = f"{os.getpid()}.{secrets.token_hex(4)}"
  tmp = root / f".{NUMPY_STEP_PREFIX}{step}.tmp{tag}"
  tmp.mkdir(parents=True)
  for name, value in chosen.items():
    data = _npy_bytes(value)
    (tmp / name).write_bytes(data)
    (tmp / f"{name}.npy").write_bytes(data)
  old = root / f".{NUMPY_STEP_PREFIX}{step}.old{tag}"
  if final.exists():
    final.rename(old)
  tmp.rename(final)
  if old.exists():
    old.rmtree()
  return sorted(os.fspath(final / n) for n in chosen)


def remove_stale_exports(model_dir: str) -> list[str]:
  """Removes what killed writers left: `.checkpoint_*.tmp*`/`.old*` folders, `.*.tmp*` files."""
  removed = []
  root = epath.Path(model_dir)
  numpy_root = root / NUMPY_DIR
  for p in list(numpy_root.glob(f".{NUMPY_STEP_PREFIX}*")) if numpy_root.exists() else []:
    if ".old" in p.name and p.is_dir():
      # A kill between moving the old export aside and renaming the new one in:
      # the old export is the only copy, so it goes back.
      final = numpy_root / p.name[1:].split(".old", 1)[0]
      if not final.exists():
        p.rename(final)
        continue
    if ".tmp" in p.name or ".old" in p.name:
      p.rmtree() if p.is_dir() else p.unlink()
      removed.append(os.fspath(p))
  for p in list(root.glob(".*.tmp*")) if root.exists() else []:
    if p.is_file() and not p.name.startswith(".spot-write-probe"):
      p.unlink()
      removed.append(os.fspath(p))
  return removed


def remove_numpy_after(model_dir: str, step: int) -> list[int]:
  """Removes numpy exports of steps after `step` (a killed run's, to be redone on resume)."""
  if _process_index() != 0:
    return []
  gone = [s for s in numpy_steps(model_dir) if s > step]
  for s in gone:
    numpy_step_dir(model_dir, s).rmtree()
  return gone


def read_numpy_variable(model_dir: str, step: int, variable: str = PROMPT_VARIABLE
                        ) -> np.ndarray:
  """One exported variable ('/'- or '.'-joined path) of step `step`, e.g. the prompt [P, D].

  Raises:
    CheckpointError: the file is missing or is not a `np.save` payload.
  """
  path = numpy_step_dir(model_dir, step) / variable_file(variable)
  try:
    data = path.read_bytes()
  except (FileNotFoundError, IsADirectoryError, OSError) as e:
    raise errors.CheckpointError(
        f"cannot read prompt variable {variable!r} at {path} ({type(e).__name__}: {e}); "
        "pass the variable the run exported, or check the model_dir.") from e
  try:
    return np.load(io.BytesIO(data), allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise errors.CheckpointError(f"{path} is not a .npy array file ({e}); delete that export "
                                 "folder, or save the array with numpy.save.") from e


def latest_numpy_prompt(model_dir: str, name: str = PROMPT_FILE) -> np.ndarray:
  """The prompt of the newest numpy checkpoint of a run."""
  steps = numpy_steps(model_dir)
  if not steps:
    raise errors.MissingInputError(
        f"No {NUMPY_DIR}/checkpoint_<step> under {model_dir}; train with "
        "CheckpointConfig.save_numpy or check the path.")
  with (numpy_step_dir(model_dir, steps[-1]) / name).open("rb") as f:
    return np.load(f)


# run.json, metrics.json, config.gin.


def read_run_json(model_dir: epath.PathLike) -> Optional[dict[str, Any]]:
  """`model_dir/run.json`, or None when absent; a damaged file is a CheckpointError."""
  file = epath.Path(spot_io.absolute(model_dir)) / RUN_JSON
  if not file.is_file():
    return None
  return spot_io.read_json(file, "run file", error=errors.CheckpointError,
                           fix="it is truncated or damaged, copy the run again")


def write_run_json(model_dir: epath.PathLike, run: Mapping[str, Any]) -> None:
  """Writes `model_dir/run.json` atomically."""
  spot_io.write_json_atomic(epath.Path(model_dir) / RUN_JSON, dict(run))


def read_metrics(model_dir: epath.PathLike) -> Optional[dict[str, Any]]:
  """`model_dir/metrics.json`, or None when absent; a damaged file is a DataError."""
  file = epath.Path(spot_io.absolute(model_dir)) / METRICS_JSON
  if not file.is_file():
    return None
  return spot_io.read_json(file, "metrics file", error=errors.DataError,
                           fix="fix or delete it, or rerun the final evaluation")


def read_config_gin(model_dir: epath.PathLike) -> str:
  """The run's `config.gin` text, or "" if it has none."""
  path = epath.Path(spot_io.absolute(model_dir)) / CONFIG_GIN
  return path.read_text() if path.is_file() else ""


def write_config_gin(model_dir: epath.PathLike, text: str) -> None:
  """Writes `model_dir/config.gin` atomically."""
  spot_io.write_text_atomic(epath.Path(model_dir) / CONFIG_GIN, text)
