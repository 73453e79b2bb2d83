"""Settings of a run that the trainer, `evaluate` and the gin run files share.

A module of plain frozen dataclasses, imported by the trainer and by the
stand-alone evaluation alike, so neither imports the other for them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

from spot import errors

# How a run's reported scores are chosen (PROTOCOL): "dev" selects the
# checkpoint and reports on the same eval split; "dev1/dev2" selects on one half
# of it and reports on the other (spot.train.data.dev_halves).
PROTOCOL_DEV = "dev"
PROTOCOL_DEV1_DEV2 = "dev1/dev2"
PROTOCOLS = (PROTOCOL_DEV, PROTOCOL_DEV1_DEV2)
DEV1, DEV2 = "dev1", "dev2"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """How often to save, how many to keep, and whether to export prompts as numpy."""

  period: int = 1000
  keep: int = 1
  save_numpy: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Periodic evaluation with the tasks' SeqIO metrics.

  Attributes:
    period: evaluate every `period` steps (0: only after the last step).
    tasks: tasks to evaluate; default: the training task or mixture's tasks.
    split / num_examples / batch_size / task_feature_lengths: the eval data
      (lengths default to the training ones).
    best_metric: "task/metric" (or just "metric" when there is one task) whose
      best value is kept in `model_dir/best`.
    mode: "max" or "min" for best_metric.
    early_stopping_patience: stop after this many evaluations without
      improvement of best_metric (None: never).
    decode: keyword arguments of `spot.train.inference.predict_batch`
      (method, num_decodes, alpha, temperature, topk, topp).
    dev_split_seed: DEV_SPLIT_SEED, the seed of the dev1/dev2 halves.
    dev_source_split: DEV_SOURCE_SPLIT, the split the halves divide; default
      `split` when the task has it, else its first "validation*" split.
  """

  period: int = 0
  tasks: Optional[Sequence[str]] = None
  split: str = "validation"
  num_examples: Optional[int] = None
  batch_size: int = 32
  task_feature_lengths: Optional[Mapping[str, int]] = None
  best_metric: Optional[str] = None
  mode: str = "max"
  early_stopping_patience: Optional[int] = None
  decode: Optional[Mapping[str, Any]] = None
  dev_split_seed: int = 0
  dev_source_split: Optional[str] = None


def check_protocol(protocol: str, eval_cfg: Optional[EvalConfig]) -> None:
  """PROTOCOL is known, and "dev1/dev2" has an evaluation to select with."""
  if protocol not in PROTOCOLS:
    raise errors.UsageError(f"PROTOCOL={protocol!r} is not a protocol; use "
                            f"{' or '.join(map(repr, PROTOCOLS))}.")
  if protocol == PROTOCOL_DEV1_DEV2 and eval_cfg is None:
    raise errors.UsageError("PROTOCOL='dev1/dev2' selects checkpoints by evaluation, but the run "
                            "has none; bind trainer.train.eval_cfg (a run file does).")
  if protocol == PROTOCOL_DEV1_DEV2 and eval_cfg.split in (DEV1, DEV2):
    raise errors.UsageError(f"PROTOCOL='dev1/dev2' with EVAL_SPLIT={eval_cfg.split!r}: give the "
                            "split to halve (e.g. 'validation') as EVAL_SPLIT or DEV_SOURCE_SPLIT.")


def selection_eval_cfg(eval_cfg: Optional[EvalConfig], protocol: str) -> Optional[EvalConfig]:
  """The evaluation that selects checkpoints: `eval_cfg`, or its dev1 half under dev1/dev2."""
  if eval_cfg is None or protocol == PROTOCOL_DEV:
    return eval_cfg
  return _half(eval_cfg, DEV1)


def report_eval_cfg(eval_cfg: EvalConfig, protocol: str) -> EvalConfig:
  """The evaluation a run reports: `eval_cfg`, or its dev2 half under dev1/dev2."""
  return eval_cfg if protocol == PROTOCOL_DEV else _half(eval_cfg, DEV2)


def _half(eval_cfg: EvalConfig, half: str) -> EvalConfig:
  return dataclasses.replace(eval_cfg, split=half,
                             dev_source_split=eval_cfg.dev_source_split or eval_cfg.split)


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """What a finished evaluation hands to the writers of final metrics (`spot.report`, xGen).

  Attributes:
    model_dir: the run's (or eval's output) directory, where writers write.
    task: the trained task or mixture (or the evaluated one).
    method: the label reports group runs by ("prompt_tuning", "spot_glue", "pt").
    seed: the run's seed.
    step: the step whose evaluation `results` holds (None for a stand-alone eval).
    results: {"task/metric": value or None}: the best evaluation, else the last.
    model_size: the model size name ("small", "base", ...).
    prompt_length: the prompt length, None without a prompt.
    protocol: how `results` was chosen and scored: "dev" (selected and reported
      on the same evaluation split) or "dev1/dev2" (checkpoint selected on dev1,
      `results` scored on dev2).
    selection_results: with "dev1/dev2", the dev1 scores selection used.
    init_seed: the seed of the trainable parameters' initial values.
    data_seed: the seed of the data order (and dropout).
    peft: the parameter-efficient method's config dict (None: prompt or full).
    num_trainable: how many parameters trained.
    num_base: how many parameters the frozen base has.
  """

  model_dir: str
  task: str
  method: str
  seed: int
  step: Optional[int]
  results: Mapping[str, Optional[float]]
  model_size: str
  prompt_length: Optional[int] = None
  protocol: str = "dev"
  selection_results: Optional[Mapping[str, Optional[float]]] = None
  init_seed: Optional[int] = None
  data_seed: Optional[int] = None
  peft: Optional[Mapping[str, Any]] = None
  num_trainable: Optional[int] = None
  num_base: Optional[int] = None
