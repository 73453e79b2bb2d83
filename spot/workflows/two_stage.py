"""Two-stage recipe: train a parameter-efficient module, then fine-tune the whole model from it.

    DIR/stage1/                 stage 1: the run of the user's flags (a prompt, or a PEFT method)
    DIR/stage1_merged/checkpoint_<N>  LoRA / (IA)3 only: the base with stage 1 folded in (T5X)
    DIR/stage2/                 stage 2: every parameter trained (TRAINABLE='all')
    DIR/two_stage.md, two_stage.json  both stages' scores in one table

Stage 2 starts from stage 1: a prompt run keeps its model and prompt (the
prompt initialised from stage 1's final prompt) and trains all parameters,
prompt included; a LoRA or (IA)3 run is merged into the base kernels
(`spot.peft.merge_peft`), written as a T5X checkpoint, and that checkpoint is
fully fine-tuned without the method. Other PEFT methods (adapters, prefix,
BitFit) do not fold into the base and are refused. Stage 2 takes the same
flags plus `stage2_flags` (e.g. a lower `--gin.LEARNING_RATE=1e-4`), which win.
Finished stages (metrics.json and a committed final checkpoint) are skipped.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Optional

from etils import epath

from spot import errors
from spot import io as spot_io
from spot.checkpoints import run_dir
from spot.workflows import settings as settings_lib
from spot.workflows import study as study_lib

REPORT_MD = "two_stage.md"
RESULTS_JSON = "two_stage.json"
STAGES = ("stage1", "stage2")
MERGED_DIR = "stage1_merged"


@dataclasses.dataclass(frozen=True)
class TwoStageSpec:
  """Attributes:
    task: the SeqIO task both stages train on.
    stage1_steps / stage2_steps: training steps of each stage.
    train_flags: `spot train` flags of stage 1 (a prompt or PEFT run), and of stage 2.
    stage2_flags: extra flags of stage 2 only (they win over train_flags).
    seed: both stages' seed.
    score_metric: metrics.json metric scoring a stage (default the mean of its metrics).
  """

  task: str
  stage1_steps: int
  stage2_steps: int
  train_flags: tuple[str, ...]
  stage2_flags: tuple[str, ...] = ()
  seed: int = 0
  score_metric: Optional[str] = None

  def __post_init__(self):
    if min(self.stage1_steps, self.stage2_steps) < 1:
      raise errors.ConfigError("two-stage --stage1-steps and --stage2-steps must be at least 1.")

  def steps(self, stage: str) -> int:
    return self.stage1_steps if stage == "stage1" else self.stage2_steps


def _defaults(spec: TwoStageSpec) -> list[str]:
  return ["MODEL_DIR = 'unused'", f"MIXTURE_OR_TASK_NAME = {spec.task!r}",
          f"TRAIN_STEPS = {spec.stage1_steps}"]


def _run(stage: str, spec: TwoStageSpec) -> study_lib.StudyRun:
  return study_lib.StudyRun(stage, "baseline", spec.task, spec.seed, spec.steps(stage))


def _with_run(settings: settings_lib.TrainSettings, spec: TwoStageSpec, out: epath.Path,
              stage: str, **changes: Any) -> settings_lib.TrainSettings:
  from spot.train import trainer  # pylint: disable=g-import-not-at-top
  data = dataclasses.replace(settings.train_dataset_cfg, mixture_or_task_name=spec.task,
                             seed=spec.seed)
  eval_cfg = dataclasses.replace(settings.eval_cfg or trainer.EvalConfig(), tasks=[spec.task])
  writers = settings.metrics_writers
  if not writers:
    from spot import report_writers  # pylint: disable=g-import-not-at-top
    writers = report_writers.DEFAULT_WRITERS
  ckpt = settings.checkpoint_cfg or trainer.CheckpointConfig()
  return settings_lib.for_run(
      settings, model_dir=str(out / stage), train_steps=spec.steps(stage), seed=spec.seed,
      train_dataset_cfg=data, eval_cfg=eval_cfg, metrics_writers=tuple(writers),
      checkpoint_cfg=dataclasses.replace(ckpt, save_numpy=True), **changes)


def stage1_settings(spec: TwoStageSpec, out: epath.Path) -> settings_lib.TrainSettings:
  base = settings_lib.from_flags(list(spec.train_flags), defaults=_defaults(spec))
  if base.trainable in ("all", "model"):
    raise errors.ConfigError("two-stage stage 1 trains a parameter-efficient module, but the "
                             "flags train every parameter (TRAINABLE='all'); give a prompt or "
                             "PEFT run file.")
  return _with_run(base, spec, out, "stage1", method=f"two_stage_1_{_method(base)}")


def _method(settings: settings_lib.TrainSettings) -> str:
  peft = getattr(settings.model, "peft", None)
  return "prompt" if peft is None else peft.method


def merged_checkpoint(stage1: settings_lib.TrainSettings, out: epath.Path) -> str:
  """Stage 1's LoRA / (IA)3 folded into the base, as a T5X checkpoint (written once)."""
  from spot.checkpoints import t5x  # pylint: disable=g-import-not-at-top
  from spot.peft import merge  # pylint: disable=g-import-not-at-top
  from spot.train import state as state_lib  # pylint: disable=g-import-not-at-top
  peft = stage1.model.peft
  if not merge.mergeable(peft):
    raise errors.ConfigError(f"two-stage: stage 1's method {peft.method!r} does not fold into the "
                             "base model, so stage 2 cannot start from it; use a prompt, lora or "
                             "ia3.")
  final = out / MERGED_DIR / f"checkpoint_{stage1.train_steps}"
  if not final.exists():
    params, _ = state_lib.params_from_run(stage1.model, stage1.model_dir)
    t5x.save_t5x(out / MERGED_DIR, merge.merge_peft(params, peft), step=stage1.train_steps)
  return str(final)


def stage2_settings(spec: TwoStageSpec, out: epath.Path,
                    stage1: settings_lib.TrainSettings) -> settings_lib.TrainSettings:
  """Stage 2: every parameter trained, starting from stage 1's result."""
  flags = list(spec.train_flags) + list(spec.stage2_flags) + ["--gin.TRAINABLE='all'"]
  base = settings_lib.from_flags(flags, defaults=_defaults(spec))
  method = f"two_stage_2_{_method(stage1)}"
  if getattr(base.model, "peft", None) is None:
    prompt = run_dir.latest_numpy_prompt(stage1.model_dir)
    return _with_run(settings_lib.with_prompt_init(base, prompt), spec, out, "stage2",
                     trainable="all", method=method)
  model = dataclasses.replace(base.model, peft=None)
  return _with_run(base, spec, out, "stage2", model=model, trainable="all", method=method,
                   initial_checkpoint_path=merged_checkpoint(stage1, out))


def run_two_stage(spec: TwoStageSpec, out_dir: str, *, log: Callable[[str], None] = print,
                  train: Callable[[settings_lib.TrainSettings], Any] = settings_lib.run
                  ) -> dict[str, Any]:
  """Trains the unfinished stages, then writes and returns the report (see `write_report`)."""
  out = epath.Path(spot_io.absolute(out_dir))
  stage1 = stage1_settings(spec, out)
  if not study_lib.is_finished(out, _run("stage1", spec)):
    log(f"[two-stage 1/2] training {stage1.model_dir} ({spec.stage1_steps} steps, "
        f"{_method(stage1)})")
    train(stage1)
  stage2 = stage2_settings(spec, out, stage1)
  if not study_lib.is_finished(out, _run("stage2", spec)):
    log(f"[two-stage 2/2] training {stage2.model_dir} ({spec.stage2_steps} steps, all "
        "parameters)")
    train(stage2)
  return write_report(spec, out)


def collect(spec: TwoStageSpec, out: epath.Path) -> dict[str, Any]:
  rows = []
  for stage in STAGES:
    model_dir = out / stage
    metrics = run_dir.read_metrics(model_dir) or {}
    meta = run_dir.read_run_json(model_dir) or {}
    rows.append({
        "stage": stage, "model_dir": str(model_dir), "method": metrics.get("method"),
        "steps": spec.steps(stage), "scores": metrics.get("scores", {}),
        "score": study_lib.run_score(out, _run(stage, spec), spec.score_metric),
        "num_trainable": meta.get("num_trainable"), "num_frozen": meta.get("num_frozen")})
  return {"task": spec.task, "seed": spec.seed, "stages": rows}


def markdown(r: dict[str, Any]) -> str:
  lines = [f"# Two-stage: {r['task']} (seed {r['seed']})", "",
           "| stage | method | trainable parameters | steps | score |", "|---|---|---|---|---|"]
  for row in r["stages"]:
    score = "-" if row["score"] is None else f"{row['score']:.2f}"
    tunable = "-" if row["num_trainable"] is None else f"{row['num_trainable']:,}"
    lines.append(f"| {row['stage']} | {row['method'] or '-'} | {tunable} | {row['steps']} | "
                 f"{score} |")
  return "\n".join(lines) + "\n"


def write_report(spec: TwoStageSpec, out: epath.Path) -> dict[str, Any]:
  """Writes OUT/two_stage.md and OUT/two_stage.json; returns the latter's content."""
  r = collect(spec, out)
  spot_io.write_text_atomic(out / RESULTS_JSON, json.dumps(r, indent=2, sort_keys=True) + "\n")
  spot_io.write_text_atomic(out / REPORT_MD, markdown(r))
  return r
