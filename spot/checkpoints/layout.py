"""Where a T5X checkpoint is and which format it is in.

A user may point at any of:

  MODEL_DIR/                              -> the latest complete checkpoint_<step>
  MODEL_DIR/checkpoint_<step>/            -> legacy (msgpack `checkpoint` file) or
                                             Orbax (`state/_METADATA`)
  MODEL_DIR/checkpoint_<step>/checkpoint  -> the legacy msgpack file itself
  MODEL_DIR/checkpoint_<step>/state/      -> the Orbax PyTree directory
  some/file.checkpoint_0                  -> a single-file Flax msgpack checkpoint

Detection follows T5X's `checkpoint_utils.detect_checkpoint_type`: a `_METADATA`
file means Orbax; a file starting with b"model_checkpoint_path" is a TensorFlow
checkpoint index (unsupported); anything else is read as T5X msgpack.

Only complete step directories count: T5X writes `checkpoint_<step>.tmp-<ts>`
and Orbax `checkpoint_<step>.orbax-checkpoint-tmp-<ts>` and rename when done,
and a step directory without its msgpack file or `_METADATA` is skipped, so a
half-written checkpoint is never picked up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import re
import time
from typing import Iterator, Optional, Union

from etils import epath

from spot import errors
from spot import io as spot_io
from spot.checkpoints import run_dir

PathLike = Union[str, os.PathLike]

CHECKPOINT_PREFIX = "checkpoint"
MSGPACK_FILE = "checkpoint"
ORBAX_STATE_DIR = "state"
ORBAX_METADATA = "_METADATA"
_TF_INDEX_MAGIC = b"model_checkpoint_path"
_STEP_DIR = re.compile(rf"^{CHECKPOINT_PREFIX}_(\d+)$")
# spot's own run layout (spot.checkpoints.run_dir): MODEL_DIR/run.json and
# MODEL_DIR/{checkpoints,best}/<step>/{state,meta}, written by orbax.
RUN_FILE = run_dir.RUN_JSON
RUN_KINDS = run_dir.RUN_KINDS


class OutputExistsError(errors.UsageError, FileExistsError):
  """An output path exists and would be overwritten; the message names the fix."""


def resolve(path: PathLike) -> epath.Path:
  """`path` as an absolute epath: local paths via os.path.abspath, URLs (gs://) as given.

  Orbax and tensorstore need absolute paths; users type relative ones.
  """
  return epath.Path(spot_io.absolute(path))


def is_run_path(path: PathLike) -> bool:
  """Whether `path` is a spot run: its model_dir, `checkpoints/<step>`, `best/<step>`
  or a step's `state` folder (spot.train.checkpointing's layout, not T5X's)."""
  p = resolve(path)
  if p.name == ORBAX_STATE_DIR:
    p = p.parent
  if p.parent.name in RUN_KINDS and p.name.isdigit():
    return True
  return (p / RUN_FILE).is_file() or any((p / kind).is_dir() for kind in RUN_KINDS)


def _run_not_t5x(p: epath.Path) -> errors.CheckpointError:
  return errors.CheckpointError(
      f"{p} is a spot run checkpoint (trained parameters only), not a T5X checkpoint; "
      "inspect it with `spot checkpoint inspect`, or write a T5X checkpoint with "
      "`spot checkpoint convert --from-run MODEL_DIR --to OUT_DIR`.")


class CheckpointFormat(enum.Enum):
  T5X = "t5x"        # msgpack `checkpoint` file, arrays inline or as tensorstore zarr
  ORBAX = "orbax"    # checkpoint_<step>/state/ written by orbax PyTreeCheckpointHandler
  T5X_TF = "t5x_tf"  # a TensorFlow checkpoint index (not supported)


@dataclasses.dataclass(frozen=True)
class Located:
  """A resolved checkpoint.

  Attributes:
    format: which reader applies.
    path: the msgpack file (T5X) or the Orbax `state` directory (ORBAX).
    directory: the directory relative tensorstore paths are resolved against.
    step: the step parsed from `checkpoint_<step>`, when the name has one.
  """

  format: CheckpointFormat
  path: epath.Path
  directory: epath.Path
  step: Optional[int]


def checkpoint_dir(model_dir: PathLike, step: int) -> epath.Path:
  """MODEL_DIR/checkpoint_<step>, T5X's naming."""
  return resolve(model_dir) / f"{CHECKPOINT_PREFIX}_{int(step)}"


def _is_complete(step_dir: epath.Path) -> bool:
  return ((step_dir / MSGPACK_FILE).is_file()
          or (step_dir / ORBAX_STATE_DIR / ORBAX_METADATA).exists())


def all_steps(model_dir: PathLike) -> list[int]:
  """Steps of the complete `checkpoint_<step>` directories in `model_dir`, ascending."""
  model_dir = resolve(model_dir)
  if not model_dir.is_dir():
    return []
  steps = []
  for child in model_dir.iterdir():
    m = _STEP_DIR.match(child.name)
    if m and child.is_dir() and _is_complete(child):
      steps.append(int(m.group(1)))
  return sorted(steps)


def latest_step(model_dir: PathLike) -> Optional[int]:
  """The highest complete step in `model_dir`, or None."""
  steps = all_steps(model_dir)
  return steps[-1] if steps else None


def _step_of(path: epath.Path) -> Optional[int]:
  for part in (path.name, path.parent.name):
    if m := _STEP_DIR.match(part):
      return int(m.group(1))
  return None


def _classify_file(file: epath.Path) -> Located:
  directory = file.parent
  step = _step_of(directory)
  if (directory / ORBAX_METADATA).exists():
    return Located(CheckpointFormat.ORBAX, directory, directory, _step_of(directory.parent))
  with file.open("rb") as f:
    head = f.read(len(_TF_INDEX_MAGIC))
  if head == _TF_INDEX_MAGIC:
    return Located(CheckpointFormat.T5X_TF, file, directory, step)
  return Located(CheckpointFormat.T5X, file, directory, step)


def locate(path: PathLike, step: Optional[int] = None) -> Located:
  """Resolves `path` (model_dir, step dir, msgpack file or Orbax dir) to one checkpoint.

  Args:
    path: local path or any URL etils.epath understands (e.g. `gs://`).
    step: with a model_dir, the step to pick instead of the latest.

  Raises:
    MissingInputError (a FileNotFoundError): the path does not exist, holds
      no checkpoint, or has no checkpoint for `step` (the message lists the
      steps that exist).
    CheckpointError: `path` is a spot run (see `spot.checkpoints.run`).
    UsageError (a ValueError): `step` given for a path that is already one
      checkpoint of another step.
  """
  p = resolve(path)
  if not p.exists():
    raise errors.MissingInputError(
        f"No checkpoint at {p}: the path does not exist. Pass a T5X model_dir, a "
        "checkpoint_<step> directory or a checkpoint file.")
  if p.is_dir() and (p.parent.name in RUN_KINDS or p.parent.parent.name in RUN_KINDS) \
      and is_run_path(p):
    raise _run_not_t5x(p)
  if p.is_file():
    located = _classify_file(p)
  elif (p / ORBAX_METADATA).exists():
    located = Located(CheckpointFormat.ORBAX, p, p, _step_of(p.parent))
  elif (p / ORBAX_STATE_DIR / ORBAX_METADATA).exists():
    located = Located(CheckpointFormat.ORBAX, p / ORBAX_STATE_DIR, p / ORBAX_STATE_DIR,
                      _step_of(p))
  elif (p / MSGPACK_FILE).is_file():
    located = _classify_file(p / MSGPACK_FILE)
  else:
    steps = all_steps(p)
    if not steps:
      if is_run_path(p):
        raise _run_not_t5x(p)
      raise errors.MissingInputError(
          f"No checkpoint in {p}: it has no `{MSGPACK_FILE}` msgpack file, no "
          f"`{ORBAX_STATE_DIR}/{ORBAX_METADATA}` and no complete {CHECKPOINT_PREFIX}_<step> "
          "subdirectory (an empty or unfinished step directory; *.tmp-* names are unfinished "
          "writes); copy the complete checkpoint or point at another step.")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise errors.MissingInputError(
          f"No checkpoint for step {step} in {p}; complete steps: {steps}.")
    return locate(checkpoint_dir(p, step))
  if step is not None and located.step is not None and located.step != step:
    raise errors.UsageError(f"step={step} was given, but {p} is the checkpoint of step "
                            f"{located.step}; pass the model_dir to choose a step.")
  return located


@contextlib.contextmanager
def atomic_directory(final: PathLike, *, overwrite: bool = False,
                     hint: str = "remove it or choose another name") -> Iterator[epath.Path]:
  """Yields `<final>.tmp-<time>` and renames it to `final` when the block succeeds.

  On any error the temporary directory is removed, so `final` either holds a
  complete write or does not exist. With `overwrite`, an existing `final` is
  moved aside only once the new directory is complete, and removed after the
  rename. (On GCS a directory rename copies objects; readers still ignore the
  `.tmp-` name until it completes.)

  Raises:
    OutputExistsError (a FileExistsError): `final` exists and not `overwrite`;
      the message names `final` and `hint`.
  """
  final = resolve(final)
  if final.exists() and not overwrite:
    raise OutputExistsError(f"{final} already exists; {hint}.")
  stamp = time.time_ns()
  tmp = final.parent / f"{final.name}.tmp-{stamp}"
  tmp.mkdir(parents=True, exist_ok=False)
  old = None
  try:
    yield tmp
    if final.exists():
      old = final.parent / f"{final.name}.old-{stamp}"
      final.rename(old)
    tmp.rename(final)
  except BaseException:
    tmp.rmtree(missing_ok=True)
    if old is not None and not final.exists():
      old.rename(final)  # put the previous directory back
    raise
  if old is not None:
    old.rmtree(missing_ok=True)
