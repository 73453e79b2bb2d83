"""Reading prompts out of training runs: a model_dir's checkpoints, or T5X.

The run directory's layout (numpy prompt exports, orbax `checkpoints/<step>`
and `best/<step>`, `run.json`, `metrics.json`, `config.gin`) is
`spot.checkpoints.run_dir`'s; this module picks a prompt and the facts worth
keeping in a library entry out of it. The library does not import the trainer.

Local paths are made absolute first (orbax refuses relative ones).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from typing import Any, Mapping, Optional

import numpy as np
from spot import errors
from spot import io as spot_io
from spot.checkpoints import run_dir
from spot.library import fs
from spot.library.errors import LibraryError

DEFAULT_VARIABLE = run_dir.PROMPT_VARIABLE
NUMPY_CHECKPOINTS = run_dir.NUMPY_DIR
RUN_JSON = run_dir.RUN_JSON
METRICS_JSON = run_dir.METRICS_JSON
RUN_CHECKPOINT_DIRS = (run_dir.BEST_DIR, run_dir.CHECKPOINTS_DIR)  # orbax managers of a run
_STEP = re.compile(rf"^{run_dir.NUMPY_STEP_PREFIX}(\d+)$")


absolute = spot_io.absolute  # `path` as a string, absolute when local


def read_npy(path: str, what: str) -> np.ndarray:
  """Reads a `np.save` payload (any file name) or raises naming `what`."""
  path = absolute(path)
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
  """step -> folder of the numpy prompt checkpoints of a run ({} if it has none)."""
  model_dir = absolute(model_dir)
  return {s: fs.path(run_dir.numpy_step_dir(model_dir, s)) for s in run_dir.numpy_steps(model_dir)}


def run_checkpoints(model_dir: str, kind: str) -> dict[int, fs.Path]:
  """step -> committed orbax run checkpoint under `model_dir/<kind>/` (best, checkpoints)."""
  model_dir = absolute(model_dir)
  return {s: fs.path(run_dir.step_dir(model_dir, s, best=kind == run_dir.BEST_DIR))
          for s in run_dir.committed_steps(model_dir, kind)}


def is_run_checkpoint(path: Any) -> bool:
  """Whether `path` is a spot run checkpoint (`<step>/` holding `state` and `meta`)."""
  p = fs.path(absolute(path))
  return (p / run_dir.STATE_ITEM).is_dir() and (p / run_dir.META_ITEM).is_dir()


def best_step(model_dir: str) -> int:
  """The step of the run's best checkpoint (`model_dir/best/<step>/`, the newest)."""
  steps = run_checkpoints(model_dir, "best")
  if not steps:
    raise LibraryError(f"{model_dir} has no best/<step> checkpoint (the run had no "
                       "BEST_METRIC, or has not evaluated yet); pass --step N instead of "
                       "--best.")
  return max(steps)


def model_dir_prompt(model_dir: str, step: Optional[int] = None,
                     variable: str = DEFAULT_VARIABLE) -> tuple[np.ndarray, int]:
  """(prompt, step) of a run: its numpy checkpoint at `step` (default the latest),
  else its orbax run checkpoint at `step` (best/ or checkpoints/)."""
  model_dir = absolute(model_dir)
  numpy_steps = numpy_checkpoints(model_dir)
  orbax = {**run_checkpoints(model_dir, "checkpoints"), **run_checkpoints(model_dir, "best")}
  if step is None:
    if not numpy_steps and not orbax:
      raise LibraryError(f"{model_dir} has no {NUMPY_CHECKPOINTS}/checkpoint_<step> folders "
                         "nor best/ or checkpoints/ run checkpoints: is it a prompt tuning "
                         "run's model_dir? Use --prompt FILE.npy or --from-t5x CKPT otherwise.")
    step = max(numpy_steps or orbax)
  if step in numpy_steps:
    try:
      return run_dir.read_numpy_variable(model_dir, step, variable), step
    except errors.CheckpointError as e:
      raise LibraryError(str(e)) from e
  if step in orbax:
    return run_checkpoint_prompt(str(orbax[step]), variable), step
  known = sorted(set(numpy_steps) | set(orbax))
  raise LibraryError(f"{model_dir} has no checkpoint at step {step}; it has steps "
                     f"{', '.join(map(str, known)) or 'none'} (--best picks the best one).")


def run_checkpoint_prompt(path: str, variable: str = DEFAULT_VARIABLE) -> np.ndarray:
  """One trainable variable of a spot run checkpoint (`<model_dir>/best/<step>`)."""
  path = absolute(path)
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (heavy)
  from etils import epath  # pylint: disable=g-import-not-at-top
  state = epath.Path(path) / run_dir.STATE_ITEM
  try:
    tree = ocp.PyTreeCheckpointHandler().metadata(state).tree
  except (FileNotFoundError, ValueError, OSError) as e:
    raise LibraryError(f"cannot read the run checkpoint {path}: {e}") from e
  keys = ["trainable"] + [k for k in variable.split("/") if k]
  node = tree
  for i, key in enumerate(keys):
    if not isinstance(node, Mapping) or key not in node:
      have = sorted(node) if isinstance(node, Mapping) else []
      raise LibraryError(f"run checkpoint {path} has no variable {variable!r} ('{key}' not "
                         f"under '{'/'.join(keys[:i]) or '/'}', which holds "
                         f"{', '.join(map(str, have)) or 'nothing'}); pass --variable.")
    node = node[key]
  subtree: Any = node
  for key in reversed(keys):
    subtree = {key: subtree}
  restore_args = {"trainable": _nest(keys[1:], ocp.RestoreArgs(restore_type=np.ndarray))}
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    out = checkpointer.restore(state, args=ocp.args.PyTreeRestore(
        item=subtree, restore_args=restore_args, partial_restore=True))
  for key in keys:
    out = out[key]
  return np.asarray(out)


def run_checkpoint_trainable(path: str) -> dict[str, np.ndarray]:
  """Every trainable array of a spot run checkpoint, flat {'/'-joined path: array}.

  This is what a PEFT run trained (its LoRA, (IA)3, adapter, ... parameters,
  and a prompt when one was trained beside them); the frozen base is not in
  a run checkpoint.
  """
  path = absolute(path)
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (heavy)
  from etils import epath  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  state = epath.Path(path) / run_dir.STATE_ITEM
  try:
    tree = ocp.PyTreeCheckpointHandler().metadata(state).tree
  except (FileNotFoundError, ValueError, OSError) as e:
    raise LibraryError(f"cannot read the run checkpoint {path}: {e}") from e
  if not isinstance(tree, Mapping) or not isinstance(tree.get("trainable"), Mapping):
    raise LibraryError(f"run checkpoint {path} holds no 'trainable' parameters; is it a spot "
                       "run checkpoint (MODEL_DIR/checkpoints/<step>)?")
  subtree = {"trainable": tree["trainable"]}
  restore_args = {"trainable": _map_leaves(tree["trainable"],
                                           ocp.RestoreArgs(restore_type=np.ndarray))}
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    out = checkpointer.restore(state, args=ocp.args.PyTreeRestore(
        item=subtree, restore_args=restore_args, partial_restore=True))
  flat = traverse_util.flatten_dict(dict(out["trainable"]), sep="/")
  return {k: np.asarray(v) for k, v in sorted(flat.items())}


def _map_leaves(tree: Any, leaf: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _map_leaves(v, leaf) for k, v in tree.items()}
  return leaf


def model_dir_trainable(model_dir: str, step: Optional[int] = None
                        ) -> tuple[dict[str, np.ndarray], int]:
  """(trainable arrays {path: array}, step) of a run's orbax checkpoint at `step`
  (default the latest, under checkpoints/ or best/)."""
  model_dir = absolute(model_dir)
  orbax = {**run_checkpoints(model_dir, "checkpoints"), **run_checkpoints(model_dir, "best")}
  if not orbax:
    raise LibraryError(f"{model_dir} has no checkpoints/<step> or best/<step> run "
                       "checkpoints: is it a training run's model_dir?")
  step = max(orbax) if step is None else step
  if step not in orbax:
    raise LibraryError(f"{model_dir} has no run checkpoint at step {step}; it has steps "
                       f"{', '.join(map(str, sorted(orbax)))} (--best picks the best one).")
  return run_checkpoint_trainable(str(orbax[step])), step


def _nest(keys: list[str], leaf: Any) -> Any:
  for key in reversed(keys):
    leaf = {key: leaf}
  return leaf


def run_checkpoint_meta(path: str) -> dict[str, Any]:
  """The `meta` item (JSON) of a spot run checkpoint, {} if unreadable."""
  meta = fs.path(absolute(path)) / run_dir.META_ITEM
  for f in (meta.iterdir() if meta.is_dir() else []):
    if f.is_file() and f.name != run_dir.COMMIT_MARKER:
      try:
        d = json.loads(f.read_text())
      except (ValueError, UnicodeDecodeError):
        continue
      if isinstance(d, dict):
        return d
  return {}


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """What a run's `run.json` and `metrics.json` say about its prompt."""

  task: str = ""
  base_checkpoint: str = ""
  embed_dim: Optional[int] = None
  prompt_length: Optional[int] = None
  seed: Optional[int] = None
  method: str = ""
  scores: Mapping[str, float] = dataclasses.field(default_factory=dict)
  scores_step: Optional[int] = None
  # What the run trained (run.json's "method", "peft", "trainable"): "prompt"
  # for runs written before methods were recorded.
  trained_method: str = "prompt"
  peft: Optional[Mapping[str, Any]] = None
  trainable: tuple[str, ...] = ()

  @property
  def is_prompt_run(self) -> bool:
    """Whether the run trained a prompt alone (what a prompt entry holds).

    run.json says "prompt" also for selective tuning (no module added, the
    base's own parameters trained), which its trainable regexes tell apart.
    """
    if self.trained_method != "prompt":
      return False
    return not self.trainable or all("prompt" in r for r in self.trainable)

  @property
  def is_model_tuning(self) -> bool:
    """Whether the run trained every parameter (TRAINABLE='all'): a whole model, not a
    parameter-efficient module a library entry holds."""
    return ".*" in self.trainable

  @property
  def entry_method(self) -> str:
    """The library method of the run's entry: "prompt", "selective" or the PEFT method."""
    if self.trained_method == "prompt" and not self.is_prompt_run:
      return "selective"
    return self.trained_method

  def meta(self) -> dict[str, Any]:
    """The facts worth keeping in an entry's meta (those the run recorded)."""
    d = {"seed": self.seed, "method": self.method or None, "metrics_step": self.scores_step}
    return {k: v for k, v in d.items() if v is not None}


def _read_json(path: fs.Path, label: str, what: str) -> dict[str, Any]:
  """A run's JSON object, {} when absent; a damaged file names `what` to pass instead."""
  return spot_io.read_json_if_exists(
      path, label, error=LibraryError,
      fix=f"fix or delete it, or pass {what} explicitly") or {}


def _int(value: Any) -> Optional[int]:
  return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_run(model_dir: str, meta: Optional[Mapping[str, Any]] = None) -> RunRecord:
  """The run's record from `run.json` (or a checkpoint's `meta`) and `metrics.json`.

  Missing files or fields give empty values; null scores are left out.
  """
  root = fs.path(absolute(model_dir))
  run = dict(meta or {})
  run.update(_read_json(root / RUN_JSON, "run file", "--task and --model-checkpoint"))
  metrics = _read_json(root / METRICS_JSON, "metrics file", "--metrics")
  scores = metrics.get("scores") if isinstance(metrics.get("scores"), Mapping) else {}
  clean = {str(k): float(v) for k, v in scores.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
  config = run.get("model_config") if isinstance(run.get("model_config"), Mapping) else {}
  trainable = run.get("trainable") if isinstance(run.get("trainable"), list) else []
  peft = run.get("peft") if isinstance(run.get("peft"), Mapping) else None
  return RunRecord(
      trained_method=str(run.get("method") or "prompt"), peft=dict(peft) if peft else None,
      trainable=tuple(str(r) for r in trainable),
      task=str(run.get("task") or metrics.get("task") or ""),
      base_checkpoint=str(run.get("base_checkpoint") or ""),
      embed_dim=_int(config.get("emb_dim")),
      prompt_length=_int(run.get("prompt_length")),
      seed=_int(run.get("seed")) if _int(run.get("seed")) is not None else _int(
          metrics.get("seed")),
      method=str(metrics.get("method") or ""),
      scores=clean, scores_step=_int(metrics.get("step")))


def gin_config(model_dir: str) -> str:
  """The run's `config.gin` text, or "" if it has none."""
  return run_dir.read_config_gin(absolute(model_dir))


def t5x_prompt(checkpoint: str, variable: str = DEFAULT_VARIABLE) -> np.ndarray:
  """One variable of a T5X checkpoint (via `spot.checkpoints.load_t5x_variable`), or
  of a spot run checkpoint (`<model_dir>/best/<step>`, `checkpoints/<step>`)."""
  checkpoint = absolute(checkpoint)
  if is_run_checkpoint(checkpoint):
    return run_checkpoint_prompt(checkpoint, variable)
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
