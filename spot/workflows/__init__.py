"""Multi-run recipes above training: task embeddings, targeted transfer, the SPoT workflow,
the transferability study, seed sweeps, CrossFit-style upstream / few-shot downstream,
two-stage recipes.

    from spot import workflows

    target = workflows.from_flags(["--gin_file=...", "--gin.MIXTURE_OR_TASK_NAME=..."])
    embedding = workflows.compute_task_embedding(target, steps=1000)
    runs, chosen = workflows.run_transfer(lib, target, embedding, mode="top1",
                                          out_dir="/tmp/transfer")
    workflows.run_study(target, workflows.StudySpec(sources=..., targets=...), "/tmp/study")
    workflows.write_report("/tmp/study")   # report.md, results.json, plots/
    workflows.run_sweep(target, workflows.SweepSpec(seeds=(0, 1, 2)), "/tmp/sweep")

Recipes take a `TrainSettings` (the keyword arguments of `spot.train.trainer.train`,
parsed once from gin at the edge) and derive each run with `dataclasses.replace`.
Names load on first use, so `spot library list` (which dispatches through
`spot.workflows.cli`) does not import SeqIO.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "spot.workflows.crossfit": ("DownstreamSpec", "UpstreamSpec", "run_downstream",
                                "run_upstream"),
    "spot.workflows.embedding": ("compute_task_embedding", "embedding_from_flags",
                                 "embedding_settings"),
    "spot.workflows.fewshot": ("register_fewshot",),
    "spot.workflows.settings": ("TrainSettings", "for_run", "from_flags", "from_parsed_gin",
                                "run", "with_prompt_init"),
    "spot.workflows.spot_transfer": ("RunRecord", "SpotWorkflow", "Suite", "TargetOutcome"),
    "spot.workflows.study": ("StudyRun", "StudySpec", "pending_stages", "plan_commands",
                             "plan_runs", "run_study"),
    "spot.workflows.study_launch": ("LaunchOptions", "plan_lines"),
    "spot.workflows.study_report": ("check_consistency", "collect", "write_report"),
    "spot.workflows.sweep": ("SweepSpec", "run_sweep"),
    "spot.workflows.targeted": ("MODES", "TransferRun", "mixture_name", "register_mixture",
                                "run_transfer"),
    "spot.workflows.two_stage": ("TwoStageSpec", "run_two_stage"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
  if name not in _WHERE:
    raise AttributeError(f"module 'spot.workflows' has no attribute {name!r}")
  value = getattr(importlib.import_module(_WHERE[name]), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)
