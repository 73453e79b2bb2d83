"""spot's own run checkpoints, read without `spot.train`, and their conversion to T5X.

A `spot train` run keeps only what it trained (spot.train.checkpointing):

  MODEL_DIR/run.json                 base_checkpoint, model_config, prompt_length, task, ...
  MODEL_DIR/checkpoints/<step>/      orbax: `state` ({trainable, opt_state, step}) + `meta` (JSON)
  MODEL_DIR/best/<step>/             the same, for the best evaluation so far

`locate_run` resolves a model_dir, a `checkpoints/<step>` or `best/<step>` folder
(or its `state`) to one step; `describe_run` lists the trained parameters from
orbax metadata alone; `read_trained` restores them; `convert_run` writes the
frozen base plus the trained parameters as a T5X checkpoint (T5X's names, so
the prompt is `target/encoder/prompt/prompt/prompt` as in prompt-tuning).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

import numpy as np
from etils import epath

from spot import errors
from spot import io as spot_io
from spot.checkpoints import layout, orbax_format, run_dir, t5x, tree
from spot.checkpoints.layout import PathLike
from spot.checkpoints.run_dir import META_ITEM, RUN_KINDS, STATE_ITEM
from spot.checkpoints.run_dir import RUN_JSON as RUN_FILE
from spot.models import T5Config, scan

META_FILE = "metadata"  # orbax JsonCheckpointHandler's file name
RANDOM_BASE = "random"  # spot.train.state.RANDOM_INIT: a seeded random base, no checkpoint


@dataclasses.dataclass(frozen=True)
class RunCheckpoint:
  """One step of a spot run.

  Attributes:
    model_dir: the run's model_dir.
    kind: "checkpoints" (periodic) or "best".
    step: the step.
    path: `model_dir/<kind>/<step>`.
    meta: the step's `meta` JSON (base_checkpoint, model_config, step, ...).
    run: `model_dir/run.json`, or None when the run has none.
  """

  model_dir: epath.Path
  kind: str
  step: int
  path: epath.Path
  meta: dict[str, Any]
  run: Optional[dict[str, Any]]

  @property
  def state_dir(self) -> epath.Path:
    return self.path / STATE_ITEM

  def setting(self, key: str) -> Any:
    """`key` from the step's meta, else from run.json (None when neither has it)."""
    if self.meta.get(key) is not None:
      return self.meta[key]
    return (self.run or {}).get(key)


COMMIT_MARKER = run_dir.COMMIT_MARKER  # orbax's (and spot.train's) mark of a finished step


def _is_complete(step_dir: epath.Path) -> bool:
  return ((step_dir / COMMIT_MARKER).exists()
          and (step_dir / STATE_ITEM / layout.ORBAX_METADATA).exists())


def run_steps(model_dir: PathLike, kind: str = "checkpoints") -> list[int]:
  """Complete steps under `model_dir/<kind>` ("checkpoints" or "best"), ascending.

  Orbax writes `<step>.orbax-checkpoint-tmp-<ts>` and renames it when done;
  only plain `<step>` folders with orbax's `commit_success.txt` and
  `state/_METADATA` count (as spot.train counts them).
  """
  root = layout.resolve(model_dir) / kind
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir()
                if p.name.isdigit() and p.is_dir() and _is_complete(p))


def _read_json(file: epath.Path, what: str) -> dict[str, Any]:
  return spot_io.read_json(file, what, error=errors.CheckpointError,
                           fix="it is truncated or damaged, copy the run again")


def read_run_json(model_dir: PathLike) -> Optional[dict[str, Any]]:
  """`model_dir/run.json`, or None when absent."""
  return run_dir.read_run_json(layout.resolve(model_dir))


def _available(model_dir: epath.Path) -> str:
  steps, best = run_steps(model_dir), run_steps(model_dir, "best")
  return f"checkpoints/: {steps or 'none'}, best/: {best or 'none'}"


def _step_folder(step_dir: epath.Path, kind: str, model_dir: epath.Path) -> RunCheckpoint:
  if not any(step_dir.iterdir()):
    raise errors.MissingInputError(
        f"Run step folder {step_dir} is empty (an interrupted or partly copied checkpoint); "
        f"use another step ({_available(model_dir)}) or copy the complete folder.")
  if not _is_complete(step_dir):
    missing = [f for f in (COMMIT_MARKER, f"{STATE_ITEM}/{layout.ORBAX_METADATA}")
               if not (step_dir / f).exists()]
    raise errors.CheckpointError(
        f"Run step folder {step_dir} is incomplete (no {' and no '.join(missing)}: an "
        "interrupted write or a partial copy); copy the complete folder or use another step "
        f"({_available(model_dir)}).")
  meta_file = step_dir / META_ITEM / META_FILE
  meta = _read_json(meta_file, "run checkpoint metadata") if meta_file.is_file() else {}
  return RunCheckpoint(model_dir, kind, int(step_dir.name), step_dir, meta,
                       read_run_json(model_dir))


def locate_run(path: PathLike, *, step: Optional[int] = None, best: bool = False
               ) -> RunCheckpoint:
  """Resolves a run's model_dir or one of its step folders to one step.

  Args:
    path: the run's model_dir (the latest step, or `step`), a
      `checkpoints/<step>` or `best/<step>` folder, or that folder's `state`.
      Relative paths are taken from the current directory.
    step: with a model_dir, the step to use: from `checkpoints/`, or from
      `best/` when only the best checkpoint kept it.
    best: with a model_dir, look under `best/` instead of `checkpoints/`.

  Raises:
    MissingInputError: the path does not exist, the run has no checkpoint,
      the step does not exist (the message lists the available steps), or
      the step folder is empty.
    CheckpointError: not a spot run, or a damaged step folder.
    UsageError: `step`/`best` given with a path that is already one step.
  """
  p = layout.resolve(path)
  if not p.exists():
    raise errors.MissingInputError(
        f"No run at {p}: the path does not exist; pass the model_dir of a `spot train` run "
        "or its checkpoints/<step> folder.")
  if p.name == STATE_ITEM and p.parent.parent.name in RUN_KINDS:
    p = p.parent
  if p.parent.name in RUN_KINDS and p.name.isdigit():
    model_dir, kind = p.parent.parent, p.parent.name
    if (step is not None and step != int(p.name)) or (best and kind != "best"):
      raise errors.UsageError(f"{p} is one checkpoint (step {p.name} in {kind}/); pass the "
                              "run's model_dir to choose --step or --best.")
    return _step_folder(p, kind, model_dir)
  if not p.is_dir() or not layout.is_run_path(p):
    raise errors.CheckpointError(
        f"{p} is not a spot run: it has no {RUN_FILE} and no checkpoints/ or best/ folder; "
        "pass the model_dir that `spot train` wrote.")
  kind = "best" if best else "checkpoints"
  steps = run_steps(p, kind)
  if step is None:
    if not steps:
      raise errors.MissingInputError(
          f"Run {p} has no complete checkpoint under {kind}/ ({_available(p)}); train "
          f"first{', or drop --best' if best else ''}.")
    step = steps[-1]
  elif step not in steps:
    if not best and step in run_steps(p, "best"):
      # A step kept only as the best one (checkpoints/ keeps the latest few).
      return _step_folder(p / "best" / str(step), "best", p)
    if (p / kind / str(step)).is_dir():
      return _step_folder(p / kind / str(step), kind, p)  # names what is wrong with it
    raise errors.MissingInputError(
        f"Run {p} has no step {step} under {kind}/; available steps: {_available(p)}.")
  return _step_folder(p / kind / str(step), kind, p)


def _flatten_metadata(node: Any, prefix: str = "") -> dict[str, Any]:
  """{'a/b/0/c': leaf metadata} over dicts and lists (optax states hold lists); None skipped."""
  if node is None:
    return {}
  if isinstance(node, Mapping):
    items = node.items()
  elif isinstance(node, (list, tuple)):
    items = enumerate(node)
  else:
    return {prefix: node}
  out = {}
  for key, value in items:
    out.update(_flatten_metadata(value, f"{prefix}/{key}" if prefix else str(key)))
  return out


def _state_metadata(ckpt: RunCheckpoint) -> dict[str, Any]:
  tree_meta = orbax_format.metadata(ckpt.state_dir)
  if not isinstance(tree_meta, Mapping) or "trainable" not in tree_meta:
    keys = sorted(tree_meta) if isinstance(tree_meta, Mapping) else type(tree_meta).__name__
    raise errors.CheckpointError(f"{ckpt.state_dir} is not a spot run state: top-level keys {keys}, "
                           "expected 'trainable', 'opt_state' and 'step'.")
  return dict(tree_meta)


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """What `describe_run` reports: the step, the trained parameters and the run settings."""

  checkpoint: RunCheckpoint
  shapes: dict[str, tuple[int, ...]]
  dtypes: dict[str, str]

  def to_json(self) -> dict[str, Any]:
    c = self.checkpoint
    return {
        "format": "spot_run", "path": str(c.path), "model_dir": str(c.model_dir),
        "kind": c.kind, "step": c.step,
        "steps": run_steps(c.model_dir), "best_steps": run_steps(c.model_dir, "best"),
        "base_checkpoint": c.setting("base_checkpoint"),
        "prompt_length": c.setting("prompt_length"), "task": c.setting("task"),
        "trainable": c.setting("trainable"),
        "params": {n: {"shape": list(self.shapes[n]), "dtype": self.dtypes[n]}
                   for n in sorted(self.shapes)},
        "total_params": sum(tree.total_size({n: s}) for n, s in self.shapes.items()
                            if not n.startswith("opt_state/")),
        "model_config": c.setting("model_config"),
    }


def describe_run(path: PathLike, *, step: Optional[int] = None, best: bool = False,
                 with_optimizer_state: bool = False) -> RunSummary:
  """The trained parameters' names, shapes and dtypes of one run step, from metadata only.

  With `with_optimizer_state`, the optax state is listed too, prefixed `opt_state/`.
  """
  ckpt = locate_run(path, step=step, best=best)
  meta = _state_metadata(ckpt)
  flat = {n: m for n, m in _flatten_metadata(meta["trainable"]).items()}
  if with_optimizer_state:
    flat.update(_flatten_metadata(meta.get("opt_state"), "opt_state"))
  shapes = {n: tuple(int(d) for d in m.shape) for n, m in flat.items()}
  dtypes = {n: np.dtype(m.dtype).name for n, m in flat.items()}
  return RunSummary(ckpt, shapes, dtypes)


def read_trained(ckpt: RunCheckpoint) -> dict[str, np.ndarray]:
  """The run step's trained parameters as {'/'-joined T5X name: array} (no optimizer state)."""
  meta = _state_metadata(ckpt)
  restored = orbax_format.restore(ckpt.state_dir, {"trainable": meta["trainable"]})
  return {n: np.asarray(v) for n, v in tree.flatten(restored["trainable"]).items()}


def _base_path(ckpt: RunCheckpoint) -> str:
  base = ckpt.setting("base_checkpoint")
  if not base or base == RANDOM_BASE:
    raise errors.CheckpointError(
        f"Run {ckpt.model_dir} was trained from base checkpoint {base!r}, not a T5X "
        "checkpoint, so there are no frozen weights to convert; train from a T5X "
        "INITIAL_CHECKPOINT_PATH.")
  return base


def _config(ckpt: RunCheckpoint) -> Optional[T5Config]:
  """The run's model config (checks the base's shapes), or None when it recorded none."""
  config = ckpt.setting("model_config")
  if not config:
    return None
  try:
    return T5Config.from_dict(config)
  except (TypeError, ValueError) as e:
    raise errors.CheckpointError(f"model_config in {ckpt.model_dir / RUN_FILE} is not a T5Config "
                           f"({errors.one_line(str(e))}); was the run written by another "
                           "spot version?") from e


def _same_or_inside(a: epath.Path, b: epath.Path) -> bool:
  a, b = os.fspath(a).rstrip("/"), os.fspath(b).rstrip("/")
  return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def convert_run(path: PathLike, out_dir: PathLike, *, step: Optional[int] = None,
                best: bool = False, overwrite: bool = False) -> epath.Path:
  """Writes a run's frozen base plus its trained parameters as a T5X model_dir.

  The output is `out_dir/checkpoint_<run step>/` in the legacy T5X layout
  (`save_t5x`: msgpack + zarr), with T5X's parameter names: a prompt run's
  prompt is `target/encoder/prompt/prompt/prompt` [P, D], where prompt-tuning
  keeps it, and a model-tuning run's parameters replace the base's. Layers are
  written per layer (`layers_i`), as T5X and prompt-tuning expect. Only
  parameters are written (state/step is the run step; no optimizer state), which
  is what T5X eval / infer and prompt-tuning's `prompt_eval.gin` restore. The
  whole `out_dir` is written under a temporary name and renamed when complete.

  Args:
    path: the run's model_dir (or one of its step folders; see `locate_run`).
    out_dir: the T5X model_dir to create.
    step / best: which run step (default: the latest under checkpoints/).
    overwrite: replace an existing `out_dir` (only after the new one is complete).

  Returns:
    The written `out_dir/checkpoint_<step>` directory.

  Raises:
    MissingInputError / CheckpointError: no run, no run.json, no such step (the
      available steps are named), a base checkpoint that cannot be read, or
      trained parameters that do not fit the base.
    OutputExistsError: `out_dir` exists and not `overwrite`.
    UsageError: `out_dir` is the run or the base checkpoint itself.
  """
  ckpt = locate_run(path, step=step, best=best)
  if ckpt.run is None:
    raise errors.CheckpointError(
        f"Run {ckpt.model_dir} has no {RUN_FILE} (spot train writes it with the model config "
        "and base checkpoint); pass the complete model_dir of a `spot train` run.")
  out = layout.resolve(out_dir)
  base = _base_path(ckpt)
  base_resolved = layout.resolve(base)
  if not spot_io.is_remote(base) and not base_resolved.exists():
    hint = (" (the run recorded a relative path: run this from the directory it was trained "
            "in)" if not os.path.isabs(base) else "")
    raise errors.MissingInputError(
        f"Base checkpoint {base!r} of run {ckpt.model_dir} does not exist at {base_resolved}"
        f"{hint}; restore the base checkpoint there, since the run holds only trained "
        "parameters.")
  for what, where in (("the run", ckpt.model_dir), ("the base checkpoint", base_resolved)):
    if _same_or_inside(out, where):
      raise errors.UsageError(f"--to {out} would overwrite {what} ({where}); choose a new "
                              "output directory.")
  if out.exists() and not overwrite:
    raise layout.OutputExistsError(f"{out} already exists; remove it, choose a new --to, or "
                                   "pass --overwrite.")
  config = _config(ckpt)
  trained = read_trained(ckpt)
  # In the run's layout (scanned or not), so trained layer parameters line up.
  flat = tree.flatten(t5x.load_t5x(base, config))
  problems = []
  for name, value in trained.items():
    if name in flat and tuple(np.shape(flat[name])) != tuple(value.shape):
      problems.append(f"{name}: run {list(value.shape)}, base {list(np.shape(flat[name]))}")
    elif name not in flat and not tree.is_extra_param(name):
      problems.append(f"{name}: not in the base checkpoint")
    flat[name] = value
  if problems:
    raise errors.CheckpointError(
        f"Run {ckpt.path} does not fit its base checkpoint {base}: {'; '.join(problems[:5])}; "
        "was the run trained from this base?")
  # T5X and prompt-tuning checkpoints keep one subtree per layer.
  axis = config.param_scan_axis if config is not None else 0
  params = scan.to_layout(tree.unflatten(flat), False, axis)
  provenance = {"source_run": str(ckpt.model_dir), "kind": ckpt.kind, "step": ckpt.step,
                "base_checkpoint": base, "trained_params": sorted(trained)}
  with layout.atomic_directory(out, overwrite=overwrite,
                               hint="remove it, choose a new --to, or pass --overwrite") as tmp:
    t5x.save_t5x(tmp, params, step=ckpt.step)
    (tmp / "converted_from_run.json").write_text(json.dumps(provenance, indent=2) + "\n")
  return layout.checkpoint_dir(out, ckpt.step)
