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
import json
import logging
import os
import secrets
from typing import Any, Iterator, Mapping, Optional, Union

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from spot import errors
from spot import io as spot_io
from spot.checkpoints import run_dir
from spot.train.train_state import TrainState

logger = logging.getLogger(__name__)

# The run-directory layout (names, committed steps, the numpy prompt export) is
# spot.checkpoints.run_dir's; the trainer, the library and `spot report` share it.
COMMIT_MARKER = run_dir.COMMIT_MARKER
NUMPY_DIR = run_dir.NUMPY_DIR
is_committed = run_dir.is_committed
incomplete_steps = run_dir.incomplete_steps
numpy_step_dir = run_dir.numpy_step_dir
numpy_steps = run_dir.numpy_steps
has_prompt_numpy = run_dir.has_prompt_numpy
save_prompt_numpy = run_dir.save_prompt_numpy
remove_stale_exports = run_dir.remove_stale_exports
remove_numpy_after = run_dir.remove_numpy_after
latest_numpy_prompt = run_dir.latest_numpy_prompt


# Atomic writes live in spot.io; these names stay for the trainer and eval.
_is_remote = spot_io.is_remote
write_bytes_atomic = spot_io.write_bytes_atomic
write_text_atomic = spot_io.write_text_atomic
write_json_atomic = spot_io.write_json_atomic


def save_numpy_atomic(path: epath.PathLike, array: np.ndarray) -> None:
  write_bytes_atomic(path, run_dir._npy_bytes(array))  # pylint: disable=protected-access


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
