"""Writers of a finished run's final metrics, handed to `spot.train.train(metrics_writers=...)`.

`spot.train` knows nothing of reports: it calls each writer it is given with a
`spot.train.config.RunSummary`. The run files (`spot/gin/runs/*.gin`) bind
`write_final_metrics` and `spot.xgen.report.write_xgen_scores`, so `spot train`
and `t5x train` leave `metrics.json` (and `xgen_scores.json` for xGen tasks).
"""

from __future__ import annotations

from typing import Mapping, Optional

from spot import report
from spot.train.config import RunSummary
from spot.xgen import report as xgen_report


def write_final_metrics(summary: RunSummary) -> None:
  """`metrics.json` for `spot report`: the summary's evaluation, by metric for one task.

  With one evaluated task the scores are keyed by metric and the run is
  recorded under that task; with several, by "task/metric" under the trained
  task or mixture. Non-finite metrics are already None (JSON null). The
  protocol, the dev1 selection scores (dev1/dev2), the init / data seeds, the
  PEFT method's config and the trainable / base parameter counts go with them
  (None where the trainer did not fill them in).
  """
  task, scores = _by_metric(summary.task, summary.results)
  selection = None
  if summary.selection_results:
    _, selection = _by_metric(summary.task, summary.selection_results)
  report.write_run_metrics(summary.model_dir, task, summary.method, summary.seed, scores,
                           step=summary.step, protocol=summary.protocol or report.DEFAULT_PROTOCOL,
                           selection_scores=selection, init_seed=summary.init_seed,
                           data_seed=summary.data_seed,
                           peft=dict(summary.peft) if summary.peft else None,
                           num_trainable=summary.num_trainable, num_base=summary.num_base)


def _by_metric(trained: str, results: Mapping[str, Optional[float]]
               ) -> tuple[str, dict[str, Optional[float]]]:
  """(task, scores): keyed by metric under the one evaluated task, else by "task/metric"
  under the trained task or mixture."""
  tasks = {k.split("/", 1)[0] for k in results}
  if len(tasks) == 1 and all("/" in k for k in results):
    return tasks.pop(), {k.split("/", 1)[1]: v for k, v in results.items()}
  return trained, dict(results)


# What `spot train` writes, in order: xgen_scores.json (xGen tasks only), then metrics.json.
DEFAULT_WRITERS = (xgen_report.write_xgen_scores, write_final_metrics)
