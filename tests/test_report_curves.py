"""`spot report`'s learning curves from what a real (tiny) training run leaves in its
model_dir: the eval history of its last checkpoint."""

from __future__ import annotations

import pytest

from spot import report, report_writers
from spot.train import evaluation, trainer

from tests import helpers

pytestmark = pytest.mark.filterwarnings("ignore")

# score per eval step, as a scripted evaluator returns it
SCORES = {2: 40.0, 4: 55.0, 6: 50.0, 8: 70.0}


def _score(targets, predictions):
  del targets, predictions
  return {"score": 0.0}


def test_curves_come_from_a_trained_runs_checkpoint(tmp_path, monkeypatch, capsys):
  task = helpers.register_tiny_task("report_curves_tiny", metric_fns=[_score])
  monkeypatch.setattr(evaluation.Evaluator, "evaluate",
                      lambda self, params, step: {f"{task}/score": SCORES[step]})
  eval_cfg = trainer.EvalConfig(period=2, num_examples=4, batch_size=4, best_metric="score",
                                mode="max")
  model_dir = tmp_path / "runs" / "seed0"
  result = helpers.quick_train(model_dir, task, train_steps=8, eval_cfg=eval_cfg,
                               metrics_writers=report_writers.DEFAULT_WRITERS)
  history = report.eval_history(model_dir)
  assert history == [(s, dict(r)) for s, r in result.eval_history]
  assert [s for s, _ in history] == [2, 4, 6, 8]
  (curve,) = report.read_curves(report.find_runs([tmp_path / "runs"]))
  assert curve["task"] == task and curve["seeds"][0]["points"] == [
      [2, 40.0], [4, 55.0], [6, 50.0], [8, 70.0]]
  assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
  assert "## Learning curves" in capsys.readouterr().out
  (png,) = (tmp_path / "out" / "report_curves").iterdir()
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
