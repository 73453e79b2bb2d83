"""Run checkpoints: trainable parameters, optimizer state, step, data position.

Layout under `model_dir`:

  checkpoints/<step>/       orbax: `state` (trainable, opt_state, step) + `meta` (JSON)
  best/<step>/              the same, for the best evaluation so far (keep 1)
  numpy_checkpoints/checkpoint_<step>/encoder.prompt.prompt.prompt
                            the prompt as prompt-tuning writes it (np.save, no
                            suffix), plus `<name>.npy` copies for convenience
  run.json                  base checkpoint path, model config, prompt shape

Frozen weights are never written: `meta` records the frozen base checkpoint's
path instead. Orbax writes into a temporary directory and renames it when
complete, so a run killed at any moment leaves only whole checkpoints, and the
latest one is where a restarted run resumes.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util


def write_json_atomic(path: epath.PathLike, obj: Any) -> None:
  """Writes JSON via a temporary file and rename (atomic on local disks)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  text = json.dumps(obj, indent=2, sort_keys=True, default=str)
  if str(path).startswith("gs://"):
    path.write_text(text)
    return
  fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.")
  with os.fdopen(fd, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def save_numpy_atomic(path: epath.PathLike, array: np.ndarray) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
  with tmp.open("wb") as f:
    np.save(f, np.asarray(array))
  tmp.replace(path)  # overwrites an existing file, unlike rename


class RunCheckpointer:
  """Saves and restores the trainable state of one run with orbax."""

  def __init__(self, model_dir: str, keep: int = 1, keep_best: int = 1):
    self.model_dir = epath.Path(model_dir)
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                        enable_async_checkpointing=False)
    self._latest = ocp.CheckpointManager(self.model_dir / "checkpoints", options=opts)
    best_opts = ocp.CheckpointManagerOptions(max_to_keep=keep_best, create=True,
                                             enable_async_checkpointing=False)
    self._best = ocp.CheckpointManager(self.model_dir / "best", options=best_opts)

  def latest_step(self) -> Optional[int]:
    return self._latest.latest_step()

  def save(self, step: int, state: Mapping[str, Any], meta: Mapping[str, Any],
           best: bool = False) -> None:
    mngr = self._best if best else self._latest
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(dict(state)),
                                            meta=ocp.args.JsonSave(dict(meta))), force=True)
    mngr.wait_until_finished()

  def restore(self, abstract_state: Mapping[str, Any], step: Optional[int] = None,
              best: bool = False) -> tuple[dict, dict]:
    mngr = self._best if best else self._latest
    step = mngr.latest_step() if step is None else step
    if step is None:
      where = "best" if best else "checkpoints"
      raise FileNotFoundError(f"No checkpoint under {self.model_dir / where}.")
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(dict(abstract_state)), meta=ocp.args.JsonRestore()))
    return dict(out["state"]), dict(out["meta"])

  def read_meta(self, step: Optional[int] = None, best: bool = False) -> dict:
    mngr = self._best if best else self._latest
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint under {self.model_dir}.")
    out = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def save_prompt_numpy(model_dir: str, step: int, trainable: Mapping[str, Any],
                      pattern: str = "prompt") -> list[str]:
  """Writes every trainable array whose path contains `pattern` as numpy.

  File names are the '/'-joined parameter path with '.' (prompt-tuning's
  `encoder.prompt.prompt.prompt`), into `numpy_checkpoints/checkpoint_<step>`,
  written in a temporary directory and renamed so a reader never sees half.
  """
  if jax.process_index() != 0:
    return []
  flat = traverse_util.flatten_dict(dict(trainable), sep=".")
  chosen = {k: np.asarray(jax.device_get(v)) for k, v in flat.items() if pattern in k}
  if not chosen:
    return []
  root = epath.Path(model_dir) / "numpy_checkpoints"
  final = root / f"checkpoint_{step}"
  tmp = root / f".checkpoint_{step}.tmp{os.getpid()}"
  if tmp.exists():
    tmp.rmtree()
  tmp.mkdir(parents=True)
  for name, value in chosen.items():
    with (tmp / name).open("wb") as f:
      np.save(f, value)
    with (tmp / f"{name}.npy").open("wb") as f:
      np.save(f, value)
  if final.exists():
    final.rmtree()
  tmp.rename(final)
  return sorted(str(final / n) for n in chosen)


def latest_numpy_prompt(model_dir: str, name: str = "encoder.prompt.prompt.prompt") -> np.ndarray:
  """The prompt of the newest numpy checkpoint of a run."""
  root = epath.Path(model_dir) / "numpy_checkpoints"
  steps = sorted((int(p.name.split("_")[-1]) for p in root.glob("checkpoint_*")
                  if p.name.split("_")[-1].isdigit()), reverse=True) if root.exists() else []
  if not steps:
    raise FileNotFoundError(f"No numpy_checkpoints/checkpoint_<step> under {model_dir}.")
  with (root / f"checkpoint_{steps[0]}" / name).open("rb") as f:
    return np.load(f)
