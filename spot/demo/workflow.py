"""The demo's SPoT workflow: the recipe of `spot.workflows.spot_transfer`, scored
by the demo's `PromptScorer`.

The steps (pretrain, sources and library, targets from random, generic SPoT
and retrieved initialisations) live once, in the recipe; this module binds
how the demo scores prompts and re-exports the recipe's records.
"""

from __future__ import annotations

from typing import Any, Mapping

from spot.workflows.spot_transfer import (INIT_LABELS, INITS, RUN_RECORD, RunRecord, Suite,
                                          SpotWorkflow, TargetOutcome)

__all__ = ["INIT_LABELS", "INITS", "RUN_RECORD", "RunRecord", "Suite", "TargetOutcome",
           "Workflow"]


class Workflow(SpotWorkflow):
  """`SpotWorkflow` whose learning curves come from one `PromptScorer` for the whole demo."""

  def make_scorer(self, model: Any, params: Mapping[str, Any]) -> Any:
    from spot.demo import scoring  # pylint: disable=g-import-not-at-top
    return scoring.PromptScorer(model, params, self.cfg.feature_lengths, self.cfg.eval_examples,
                                self.cfg.eval_batch_size or None)
