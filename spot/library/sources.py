"""Reading prompts out of training runs: a model_dir's numpy checkpoints or T5X.

prompt-tuning style runs save each prompt checkpoint as a raw `np.save`
payload (no `.npy` suffix) named after the variable path with dots:
`MODEL_DIR/numpy_checkpoints/checkpoint_<step>/encoder.prompt.prompt.prompt`.
T5X writes the run's operative gin config to `MODEL_DIR/config.gin`.
"""

from __future__ import annotations

import io
import re
from typing import Optional

import numpy as np
from spot.library import fs
from spot.library.errors import LibraryError

DEFAULT_VARIABLE = "encoder/prompt/prompt/prompt"
NUMPY_CHECKPOINTS = "numpy_checkpoints"
_STEP = re.compile(r"^checkpoint_(\d+)$")


def read_npy(path: str, what: str) -> np.ndarray:
  """Reads a `np.save` payload (any file name) or raises naming `what`."""
  try:
    data = fs.read_bytes(path)
  except (FileNotFoundError, IsADirectoryError, OSError) as e:
    raise LibraryError(f"cannot read {what} {path}: {e.__class__.__name__}: {e}") from e
  try:
    return np.load(io.BytesIO(data), allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise LibraryError(f"{what} {path} is not a .npy array file ({e}); save it with "
                       "numpy.save.") from e


def checkpoint_step(path: str) -> Optional[int]:
  """The step of a `checkpoint_<step>` path, else None."""
  m = _STEP.match(fs.path(path).name)
  return int(m.group(1)) if m else None


def numpy_checkpoints(model_dir: str) -> dict[int, fs.Path]:
  """step -> folder of the numpy prompt checkpoints of a run."""
  root = fs.path(model_dir) / NUMPY_CHECKPOINTS
  if not root.is_dir():
    raise LibraryError(f"{model_dir} has no {NUMPY_CHECKPOINTS}/ folder: is it a prompt "
                       "tuning run's model_dir? Use --prompt FILE.npy or --from-t5x CKPT "
                       "otherwise.")
  steps = {}
  for p in root.iterdir():
    step = checkpoint_step(p.name)
    if step is not None:
      steps[step] = p
  if not steps:
    raise LibraryError(f"{root} holds no checkpoint_<step> folders yet.")
  return steps


def model_dir_prompt(model_dir: str, step: Optional[int] = None,
                     variable: str = DEFAULT_VARIABLE) -> tuple[np.ndarray, int]:
  """(prompt, step) from a run's numpy checkpoints: `step`, or the latest."""
  steps = numpy_checkpoints(model_dir)
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise LibraryError(f"{model_dir} has no numpy checkpoint at step {step}; it has steps "
                       f"{', '.join(map(str, sorted(steps)))}.")
  path = steps[step] / variable.replace("/", ".")
  return read_npy(str(path), f"prompt variable {variable!r} at"), step


def gin_config(model_dir: str) -> str:
  """The run's `config.gin` text, or "" if it has none."""
  path = fs.path(model_dir) / "config.gin"
  return path.read_text() if path.is_file() else ""


def t5x_prompt(checkpoint: str, variable: str = DEFAULT_VARIABLE) -> np.ndarray:
  """One variable of a T5X checkpoint (via `spot.checkpoints.load_t5x_variable`)."""
  try:
    from spot.checkpoints import load_t5x_variable  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise LibraryError("reading T5X checkpoints needs spot.checkpoints.load_t5x_variable, "
                       f"which this installation lacks ({e}); export the prompt with "
                       "numpy.save and use --prompt FILE.npy.") from e
  try:
    return np.asarray(load_t5x_variable(checkpoint, variable))
  except (FileNotFoundError, KeyError, ValueError) as e:
    raise LibraryError(f"cannot read variable {variable!r} from T5X checkpoint "
                       f"{checkpoint}: {e}") from e
