"""Run checkpoints: trainable parameters, optimizer state, step, data position.

Layout under `model_dir`:

  checkpoints/<step>/       orbax: `state` (trainable, opt_state, step) + `meta` (JSON:
                            run facts, the eval history, best (step, value), bad-eval count)
  best/<step>/              the same, for the best evaluation so far
  numpy_checkpoints/checkpoint_<step>/encoder.prompt.prompt.prompt
                            the prompt as prompt-tuning writes it (np.save, no
                            suffix), plus `<name>.npy` copies, for every saved step
                            (periodic, final and best)
  run.json, config.gin      base checkpoint path, model config, prompt shape; the gin config

Frozen weights are never written: `meta` records the frozen base checkpoint's
path instead. Only committed step folders count: orbax writes a step into a
temporary folder, adds `commit_success.txt` and renames it, so a folder without
that marker (an empty `checkpoints/50`, a half copy) is ignored with a warning
and, by a writer, set aside as `<step>.incomplete`. Small files are written to a
temporary file and renamed (mode 0644 under the usual umask), so a kill or a
full disk never leaves half a file in place of a whole one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import secrets
from typing import Any, Iterator, Mapping, Optional, Union

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from spot import errors
from spot import io as spot_io
from spot.train.train_state import TrainState

logger = logging.getLogger(__name__)

COMMIT_MARKER = "commit_success.txt"
NUMPY_DIR = "numpy_checkpoints"


# Atomic writes live in spot.io; these names stay for the trainer and eval.
_is_remote = spot_io.is_remote
write_bytes_atomic = spot_io.write_bytes_atomic
write_text_atomic = spot_io.write_text_atomic
write_json_atomic = spot_io.write_json_atomic


def _npy_bytes(array: Any) -> bytes:
  buf = io.BytesIO()
  np.save(buf, np.asarray(array))
  return buf.getvalue()


def save_numpy_atomic(path: epath.PathLike, array: np.ndarray) -> None:
  write_bytes_atomic(path, _npy_bytes(array))


def check_writable(model_dir: str) -> None:
  """Fails before any compute when `model_dir` cannot be written.

  Creates `model_dir` if needed and creates and removes one probe file in it,
  so nothing in the directory changes. Object stores are not probed.
  """
  if _is_remote(model_dir):
    return
  try:
    os.makedirs(model_dir, exist_ok=True)
    probe = os.path.join(model_dir, f".spot-write-probe.{os.getpid()}.{secrets.token_hex(4)}")
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    os.unlink(probe)
  except OSError as e:
    reason = os.strerror(e.errno) if e.errno else str(e)
    raise errors.SystemResourceError(
        f"MODEL_DIR {model_dir} is not writable ({reason}); make it writable or choose "
        "another MODEL_DIR.") from e


def is_committed(step_dir: epath.PathLike) -> bool:
  """Whether an orbax step folder is whole: its commit marker and both items are there."""
  step_dir = epath.Path(step_dir)
  return ((step_dir / COMMIT_MARKER).exists() and (step_dir / "state").is_dir()
          and (step_dir / "meta").is_dir())


@dataclasses.dataclass(frozen=True)
class _CommittedSteps:
  """orbax's standard step names (`<step>/`), listing only committed step folders."""

  base: Any = dataclasses.field(default_factory=ocp.step.standard_name_format)

  def build_name(self, step: int) -> str:
    return self.base.build_name(step)

  def find_all(self, base_path: epath.PathLike) -> Iterator[Any]:
    return iter([m for m in self.base.find_all(base_path) if is_committed(m.path)])

  def find_step(self, base_path: epath.PathLike, step: int) -> Any:
    found = self.base.find_step(base_path, step)
    if not is_committed(found.path):
      raise ValueError(f"Step folder {found.path} has no {COMMIT_MARKER}: not committed.")
    return found


def incomplete_steps(root: epath.PathLike) -> list[epath.Path]:
  """Step-named folders under `root` (`checkpoints/` or `best/`) that are not committed."""
  root = epath.Path(root)
  if not root.is_dir():
    return []
  return sorted((p for p in root.iterdir() if p.name.isdigit() and p.is_dir()
                 and not is_committed(p)), key=lambda p: int(p.name))


def _unreadable(path: epath.Path, e: BaseException) -> errors.DataError:
  return errors.DataError(
      f"Checkpoint {path} is incomplete or corrupt ({type(e).__name__}: {e}); delete that "
      "step folder to resume from the previous checkpoint, or use a new MODEL_DIR.")


class RunCheckpointer:
  """Saves and restores the trainable state of one run with orbax.

  `checkpoints/` keeps the newest `keep` steps. `best/` keeps what the caller
  leaves there: the trainer prunes it only after a periodic checkpoint has
  recorded the new best, so `best/` always holds the best step that the latest
  checkpoint's meta names, even when the run is killed in between.
  """

  def __init__(self, model_dir: str, keep: int = 1, keep_best: Optional[int] = None,
               writer: bool = False):
    """A reader (the default) changes nothing on disk; a `writer` creates the folders
    and removes orbax's temporary ones."""
    self.model_dir = epath.Path(model_dir)
    for where in ("checkpoints", "best") if not writer else ():  # a writer sets them aside
      for p in incomplete_steps(self.model_dir / where):
        logger.warning("Ignoring %s: the checkpoint has no %s (killed while saving, or copied "
                       "in part).", p, COMMIT_MARKER)

    def manager(where: str, max_to_keep: Optional[int]) -> ocp.CheckpointManager:
      opts = ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=writer, enable_async_checkpointing=False,
          step_name_format=_CommittedSteps(), cleanup_tmp_directories=writer)
      return ocp.CheckpointManager(self.model_dir / where, options=opts)

    self._latest = manager("checkpoints", keep)
    self._best = manager("best", keep_best)

  def path(self, step: int, best: bool = False) -> str:
    return os.fspath(self.model_dir / ("best" if best else "checkpoints") / str(step))

  def latest_step(self) -> Optional[int]:
    return self._latest.latest_step()

  def best_steps(self) -> list[int]:
    return sorted(self._best.all_steps())

  def set_aside_incomplete(self) -> list[str]:
    """Renames uncommitted step folders to `<step>.incomplete` (orbax could not save there)."""
    moved = []
    for where in ("checkpoints", "best"):
      for p in incomplete_steps(self.model_dir / where):
        dest = p.parent / f"{p.name}.incomplete"
        if dest.exists():
          dest.rmtree()
        p.rename(dest)
        moved.append(os.fspath(dest))
    if moved:
      self._latest.reload()
      self._best.reload()
    return moved

  def save(self, step: int, state: Union[TrainState, Mapping[str, Any]],
           meta: Mapping[str, Any], best: bool = False) -> None:
    """Saves `state` as `step` (replacing a committed one of the same step); waits for the commit.

    `state` is a `TrainState` (stored as `TrainState.to_checkpoint()`) or that tree itself.
    """
    if isinstance(state, TrainState):
      state = state.to_checkpoint()
    mngr = self._best if best else self._latest
    if step in mngr.all_steps():
      mngr.delete(step)
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(dict(state)),
                                            meta=ocp.args.JsonSave(dict(meta))), force=True)
    mngr.wait_until_finished()

  def prune_best(self, keep_steps: Any) -> None:
    """Deletes the `best/` steps not in `keep_steps`."""
    keep_steps = set(keep_steps)
    for s in self.best_steps():
      if s not in keep_steps:
        self._best.delete(s)

  def restore(self, abstract_state: Union[TrainState, Mapping[str, Any]],
              step: Optional[int] = None, best: bool = False) -> tuple[Any, dict]:
    """(state, meta) of `step` (default: the latest), in the form of `abstract_state`.

    Given a `TrainState` (of arrays or ShapeDtypeStructs) it returns a `TrainState`;
    given the checkpoint tree, that tree.
    """
    if isinstance(abstract_state, TrainState):
      tree, meta = self.restore(abstract_state.to_checkpoint(), step, best)
      return TrainState.from_checkpoint(tree), meta
    mngr = self._best if best else self._latest
    step = mngr.latest_step() if step is None else step
    if step is None:
      where = "best" if best else "checkpoints"
      raise errors.MissingInputError(f"No checkpoint under {self.model_dir / where}; train "
                                     "first or check MODEL_DIR.")
    try:
      out = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(dict(abstract_state)), meta=ocp.args.JsonRestore()))
      return dict(out["state"]), dict(out["meta"])
    except (KeyError, FileNotFoundError) as e:
      raise _unreadable(epath.Path(self.path(step, best)), e) from e

  def read_meta(self, step: Optional[int] = None, best: bool = False) -> dict:
    """The JSON meta of a checkpoint (cheap: no arrays are read)."""
    mngr = self._best if best else self._latest
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise errors.MissingInputError(f"No checkpoint under {self.model_dir}; train first or "
                                     "check MODEL_DIR.")
    try:
      out = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      meta = out["meta"]
    except (KeyError, FileNotFoundError, ValueError) as e:
      raise _unreadable(epath.Path(self.path(step, best)), e) from e
    if not isinstance(meta, Mapping):
      raise _unreadable(epath.Path(self.path(step, best)), TypeError("meta is not an object"))
    return dict(meta)

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def numpy_step_dir(model_dir: str, step: int) -> epath.Path:
  return epath.Path(model_dir) / NUMPY_DIR / f"checkpoint_{step}"


def numpy_steps(model_dir: str) -> list[int]:
  """Steps with a numpy export, ascending."""
  root = epath.Path(model_dir) / NUMPY_DIR
  if not root.exists():
    return []
  return sorted(int(p.name.split("_")[-1]) for p in root.glob("checkpoint_*")
                if p.name.split("_")[-1].isdigit())


def _numpy_arrays(trainable: Mapping[str, Any], pattern: str) -> dict[str, np.ndarray]:
  flat = traverse_util.flatten_dict(dict(trainable), sep=".")
  return {k: np.asarray(jax.device_get(v)) for k, v in flat.items() if pattern in k}


def has_prompt_numpy(model_dir: str, step: int, trainable: Mapping[str, Any],
                     pattern: str = "prompt") -> bool:
  """Whether `checkpoint_<step>` holds every file `save_prompt_numpy` would write."""
  names = [k for k in traverse_util.flatten_dict(dict(trainable), sep=".") if pattern in k]
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
  next start.
  """
  if jax.process_index() != 0:
    return []
  chosen = _numpy_arrays(trainable, pattern)
  if not chosen:
    return []
  final = numpy_step_dir(model_dir, step)
  root = final.parent
  tag = f"{os.getpid()}.{secrets.token_hex(4)}"
  tmp = root / f".checkpoint_{step}.tmp{tag}"
  tmp.mkdir(parents=True)
  for name, value in chosen.items():
    data = _npy_bytes(value)
    (tmp / name).write_bytes(data)
    (tmp / f"{name}.npy").write_bytes(data)
  old = root / f".checkpoint_{step}.old{tag}"
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
  for p in list((root / NUMPY_DIR).glob(".checkpoint_*")) if (root / NUMPY_DIR).exists() else []:
    if ".old" in p.name and p.is_dir():
      # A kill between moving the old export aside and renaming the new one in:
      # the old export is the only copy, so it goes back.
      final = root / NUMPY_DIR / p.name[1:].split(".old", 1)[0]
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
  if jax.process_index() != 0:
    return []
  gone = [s for s in numpy_steps(model_dir) if s > step]
  for s in gone:
    numpy_step_dir(model_dir, s).rmtree()
  return gone


def latest_numpy_prompt(model_dir: str, name: str = "encoder.prompt.prompt.prompt") -> np.ndarray:
  """The prompt of the newest numpy checkpoint of a run."""
  steps = numpy_steps(model_dir)
  if not steps:
    raise errors.MissingInputError(
        f"No {NUMPY_DIR}/checkpoint_<step> under {model_dir}; train with "
        "CheckpointConfig.save_numpy or check the path.")
  with (numpy_step_dir(model_dir, steps[-1]) / name).open("rb") as f:
    return np.load(f)
