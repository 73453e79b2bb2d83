"""Reading prompts out of training runs: a model_dir's checkpoints, or T5X.

prompt-tuning style runs save each prompt checkpoint as a raw `np.save`
payload (no `.npy` suffix) named after the variable path with dots:
`MODEL_DIR/numpy_checkpoints/checkpoint_<step>/encoder.prompt.prompt.prompt`.
T5X writes the run's operative gin config to `MODEL_DIR/config.gin`.

A spot run's model_dir also holds orbax run checkpoints,
`checkpoints/<step>/` and `best/<step>/`, each with a `state` item (the
trainable parameters under `trainable/`, the optimizer state, the step) and a
`meta` item (JSON: base checkpoint, task, ...); `run.json` (base_checkpoint,
task, model_config, prompt_length, seed, ...); and, once its final evaluation
is done, `metrics.json` (`spot.report.write_run_metrics`: task, method, seed,
scores, step). They are read here with orbax and json directly: the library
does not import the trainer.

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
from spot import io as spot_io
from spot.library import fs
from spot.library.errors import LibraryError

DEFAULT_VARIABLE = "encoder/prompt/prompt/prompt"
NUMPY_CHECKPOINTS = "numpy_checkpoints"
RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"
RUN_CHECKPOINT_DIRS = ("best", "checkpoints")  # orbax managers of a spot run
_STEP = re.compile(r"^checkpoint_(\d+)$")


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
  root = fs.path(absolute(model_dir)) / NUMPY_CHECKPOINTS
  steps = {}
  for p in (root.iterdir() if root.is_dir() else []):
    step = checkpoint_step(p.name)
    if step is not None:
      steps[step] = p
  return steps


def run_checkpoints(model_dir: str, kind: str) -> dict[int, fs.Path]:
  """step -> orbax run checkpoint under `model_dir/<kind>/` (kind: best, checkpoints)."""
  root = fs.path(absolute(model_dir)) / kind
  return {int(p.name): p for p in (root.iterdir() if root.is_dir() else [])
          if p.name.isdigit() and is_run_checkpoint(p)}


def is_run_checkpoint(path: Any) -> bool:
  """Whether `path` is a spot run checkpoint (`<step>/` holding `state` and `meta`)."""
  p = fs.path(absolute(path))
  return (p / "state").is_dir() and (p / "meta").is_dir()


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
    path = numpy_steps[step] / variable.replace("/", ".")
    return read_npy(str(path), f"prompt variable {variable!r} at"), step
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
  state = epath.Path(path) / "state"
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


def _nest(keys: list[str], leaf: Any) -> Any:
  for key in reversed(keys):
    leaf = {key: leaf}
  return leaf


def run_checkpoint_meta(path: str) -> dict[str, Any]:
  """The `meta` item (JSON) of a spot run checkpoint, {} if unreadable."""
  meta = fs.path(absolute(path)) / "meta"
  for f in (meta.iterdir() if meta.is_dir() else []):
    if f.is_file() and f.name != "commit_success.txt":
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

  def meta(self) -> dict[str, Any]:
    """The facts worth keeping in an entry's meta (those the run recorded)."""
    d = {"seed": self.seed, "method": self.method or None, "metrics_step": self.scores_step}
    return {k: v for k, v in d.items() if v is not None}


def _read_json(path: fs.Path, what: str) -> dict[str, Any]:
  try:
    d = json.loads(path.read_text())
  except FileNotFoundError:
    return {}
  except (ValueError, UnicodeDecodeError) as e:
    raise LibraryError(f"{path} is not valid JSON ({e}); fix or delete it, or pass {what} "
                       "explicitly.") from e
  if not isinstance(d, dict):
    raise LibraryError(f"{path} holds {type(d).__name__}, not a JSON object; fix or delete "
                       f"it, or pass {what} explicitly.")
  return d


def _int(value: Any) -> Optional[int]:
  return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_run(model_dir: str, meta: Optional[Mapping[str, Any]] = None) -> RunRecord:
  """The run's record from `run.json` (or a checkpoint's `meta`) and `metrics.json`.

  Missing files or fields give empty values; null scores are left out.
  """
  root = fs.path(absolute(model_dir))
  run = dict(meta or {})
  run.update(_read_json(root / RUN_JSON, "--task and --model-checkpoint"))
  metrics = _read_json(root / METRICS_JSON, "--metrics")
  scores = metrics.get("scores") if isinstance(metrics.get("scores"), Mapping) else {}
  clean = {str(k): float(v) for k, v in scores.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
  config = run.get("model_config") if isinstance(run.get("model_config"), Mapping) else {}
  return RunRecord(
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
  path = fs.path(absolute(model_dir)) / "config.gin"
  return path.read_text() if path.is_file() else ""


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
