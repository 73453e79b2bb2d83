"""Writers of a finished run's final metrics, handed to `spot.train.train(metrics_writers=...)`.

`spot.train` knows nothing of reports: it calls each writer it is given with a
`spot.train.config.RunSummary`. The run files (`spot/gin/runs/*.gin`) bind
`write_final_metrics` and `spot.xgen.report.write_xgen_scores`, so `spot train`
and `t5x train` leave `metrics.json` (and `xgen_scores.json` for xGen tasks).
"""

from __future__ import annotations

from spot import report
from spot.train.config import RunSummary
from spot.xgen import report as xgen_report


def write_final_metrics(summary: RunSummary) -> None:
  """`metrics.json` for `spot report`: the summary's evaluation, by metric for one task.

  With one evaluated task the scores are keyed by metric and the run is
  recorded under that task; with several, by "task/metric" under the trained
  task or mixture. Non-finite metrics are already None (JSON null).
  """
  results = summary.results
  tasks = {k.split("/", 1)[0] for k in results}
  task, scores = summary.task, dict(results)
  if len(tasks) == 1:
    task = tasks.pop()
    scores = {k.split("/", 1)[1]: v for k, v in results.items()}
  report.write_run_metrics(summary.model_dir, task, summary.method, summary.seed, scores,
                           step=summary.step)


# What `spot train` writes, in order: xgen_scores.json (xGen tasks only), then metrics.json.
DEFAULT_WRITERS = (xgen_report.write_xgen_scores, write_final_metrics)
