"""Evaluation across resumes: best/, early stopping and metrics.json as if never stopped;
NaN metrics; the best step's numpy export; SeqIO's prediction and TensorBoard logs."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from spot import report_writers
from spot.train import checkpointing, evaluation, trainer

from tests import helpers

pytestmark = pytest.mark.filterwarnings("ignore")

STEPS = 12
# score per eval step (mode max, patience 3): best at 4; 6 (NaN), 8, 10 do not improve,
# so the run stops early at 10. A resume that forgot the best would pick 8.
SCORES = {2: 0.5, 4: 0.9, 6: float("nan"), 8: 0.3, 10: 0.2, 12: 0.1}
# What `spot train` binds: metrics.json (and xgen_scores.json for xGen tasks).
WRITERS = report_writers.DEFAULT_WRITERS
EVAL = trainer.EvalConfig(period=2, num_examples=4, batch_size=4, best_metric="score",
                          mode="max", early_stopping_patience=3)


class Crash(Exception):
  """Stands for a kill at an exact point."""


def _score(targets, predictions):
  del targets, predictions
  return {"score": 0.0}


@pytest.fixture(scope="module")
def task():
  return helpers.register_tiny_task("resume_tiny", metric_fns=[_score])


@pytest.fixture()
def scripted_scores(monkeypatch):
  """Evaluator.evaluate returns SCORES[step]: the trainer's bookkeeping, without decoding."""
  monkeypatch.setattr(evaluation.Evaluator, "evaluate",
                      lambda self, params, step: {"resume_tiny/score": SCORES[step]})


def _train(model_dir, task, **kwargs):
  kwargs.setdefault("checkpoint_cfg", trainer.CheckpointConfig(period=4, keep=1))
  return helpers.quick_train(model_dir, task, train_steps=STEPS, eval_cfg=EVAL,
                             metrics_writers=WRITERS, **kwargs)


def _outcome(model_dir, result):
  return dict(step=result.step, best=result.best, stopped_early=result.stopped_early,
              history=[(s, {k: (None if v is None else round(v, 6)) for k, v in r.items()})
                       for s, r in result.eval_history],
              best_dir=sorted(p.name for p in (model_dir / "best").iterdir()),
              metrics=json.loads((model_dir / "metrics.json").read_text()),
              numpy={step: {name: a.tolist() for name, a in files.items()}
                     for step, files in helpers.numpy_exports(model_dir).items()})


@pytest.fixture(scope="module")
def uninterrupted(task, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("uninterrupted")
  with pytest.MonkeyPatch.context() as m:
    m.setattr(evaluation.Evaluator, "evaluate",
              lambda self, params, step: {"resume_tiny/score": SCORES[step]})
    result = _train(model_dir, task)
  return _outcome(model_dir, result)


def test_uninterrupted_run_keeps_the_best_and_stops_early(uninterrupted):
  assert uninterrupted["best"] == (4, 0.9)
  assert uninterrupted["stopped_early"] and uninterrupted["step"] == 10
  assert uninterrupted["best_dir"] == ["4"]
  assert [s for s, _ in uninterrupted["history"]] == [2, 4, 6, 8, 10]
  assert uninterrupted["history"][2] == (6, {"resume_tiny/score": None})  # NaN -> null
  assert uninterrupted["metrics"]["step"] == 4
  assert uninterrupted["metrics"]["scores"] == {"score": 0.9}
  # every step that was saved as best has its numpy export, next to the periodic ones
  assert sorted(uninterrupted["numpy"], key=lambda n: int(n.split("_")[1])) == [
      "checkpoint_2", "checkpoint_4", "checkpoint_8", "checkpoint_10"]


def _stop_at(step):
  def run(model_dir, task, monkeypatch):
    _train(model_dir, task, stop_after_steps=step)
    return [f"checkpoint_{step}"]
  return run


def _crash_after_best_save(step):
  def run(model_dir, task, monkeypatch):
    original = checkpointing.RunCheckpointer.save

    def save(self, at_step, state, meta, best=False):
      original(self, at_step, state, meta, best=best)
      if best and at_step == step:
        raise Crash(f"killed after best/{step}, before checkpoints/{step}")

    with monkeypatch.context() as m:
      m.setattr(checkpointing.RunCheckpointer, "save", save)
      with pytest.raises(Crash):
        _train(model_dir, task)
  return run


def _crash_after_eval(step):
  def run(model_dir, task, monkeypatch):
    original = checkpointing.RunCheckpointer.save

    def save(self, at_step, state, meta, best=False):
      if at_step == step and not best:
        raise Crash(f"killed after the eval at {step}, before its checkpoint")
      original(self, at_step, state, meta, best=best)

    with monkeypatch.context() as m:
      m.setattr(checkpointing.RunCheckpointer, "save", save)
      with pytest.raises(Crash):
        _train(model_dir, task)
  return run


@pytest.mark.parametrize("interrupt", [_stop_at(6), _crash_after_best_save(4),
                                       _crash_after_eval(8)],
                         ids=["stop_at_6", "kill_after_best_4", "kill_after_eval_8"])
def test_resumed_run_equals_uninterrupted(task, tmp_path, monkeypatch, scripted_scores,
                                          uninterrupted, interrupt):
  extra = interrupt(tmp_path, task, monkeypatch) or ()
  result = _train(tmp_path, task)
  got = _outcome(tmp_path, result)
  for name in extra:  # what a stop (unlike a kill) saves at the step it stops at
    del got["numpy"][name]
  assert got == uninterrupted


def test_rerun_of_an_early_stopped_run_stays_stopped(task, tmp_path, scripted_scores):
  _train(tmp_path, task)
  metrics = (tmp_path / "metrics.json").read_text()
  result = _train(tmp_path, task)
  assert result.step == 10 and result.stopped_early and result.best == (4, 0.9)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10"]
  assert (tmp_path / "metrics.json").read_text() == metrics


def test_best_numpy_export_matches_best_checkpoint(task, tmp_path, scripted_scores):
  """`spot library add --from-model-dir DIR --step <best>` needs the best step's export."""
  import orbax.checkpoint as ocp
  _train(tmp_path, task)
  ckpt = checkpointing.RunCheckpointer(str(tmp_path))
  out = ckpt._best.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                        meta=ocp.args.JsonRestore()))
  best_prompt = np.asarray(out["state"]["trainable"]["encoder"]["prompt"]["prompt"]["prompt"])
  for name in ("encoder.prompt.prompt.prompt", "encoder.prompt.prompt.prompt.npy"):
    exported = np.load(tmp_path / "numpy_checkpoints" / "checkpoint_4" / name)
    np.testing.assert_array_equal(exported, best_prompt)
  assert out["meta"]["best"] == [4, 0.9] and out["meta"]["step"] == 4


def test_nan_metric_is_null_everywhere(task, tmp_path, monkeypatch, capsys, caplog):
  """STS-B-like: Pearson NaN while predictions are constant; the run carries on."""
  values = {2: {"pearson": float("nan"), "accuracy": 50.0},
            4: {"pearson": 0.25, "accuracy": float("nan")},
            6: {"pearson": float("nan"), "accuracy": 75.0}}
  monkeypatch.setattr(evaluation.Evaluator, "evaluate", lambda self, params, step: {
      f"resume_tiny/{k}": v for k, v in values[step].items()})
  cfg = trainer.EvalConfig(period=2, num_examples=4, batch_size=4, best_metric="pearson")
  with caplog.at_level(logging.WARNING):
    result = helpers.quick_train(tmp_path, task, train_steps=6, eval_cfg=cfg,
                                  metrics_writers=WRITERS)
  assert result.best == (4, 0.25)
  assert result.eval_history[0][1] == {"resume_tiny/pearson": None, "resume_tiny/accuracy": 50.0}
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["scores"] == {"pearson": 0.25, "accuracy": None}  # the best eval, NaN as null
  assert metrics["step"] == 4
  umask = os.umask(0o022)
  os.umask(umask)
  assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~umask
  out = capsys.readouterr().out
  assert "eval step 2: resume_tiny/accuracy 50, resume_tiny/pearson nan" in out
  assert any("resume_tiny/pearson is nan at step 2" in r.getMessage() for r in caplog.records)
  meta = checkpointing.RunCheckpointer(str(tmp_path)).read_meta()
  assert meta["eval_history"][0][1]["resume_tiny/pearson"] is None
  assert meta["best"] == [4, 0.25]


def test_all_nan_best_metric_never_wins(task, tmp_path, monkeypatch):
  monkeypatch.setattr(evaluation.Evaluator, "evaluate",
                      lambda self, params, step: {"resume_tiny/score": float("nan")})
  cfg = trainer.EvalConfig(period=2, num_examples=4, batch_size=4, best_metric="score",
                           early_stopping_patience=2)
  result = helpers.quick_train(tmp_path, task, train_steps=8, eval_cfg=cfg,
                                metrics_writers=WRITERS)
  assert result.best is None
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["scores"] == {"score": None} and metrics["step"] == 4  # the last eval
  assert result.stopped_early and result.step == 4
  assert not list((tmp_path / "best").iterdir())


def _event_tags(directory) -> set:
  tags = set()
  for path in tf.io.gfile.glob(f"{directory}/events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


def test_training_eval_saves_predictions_and_separate_summaries(task, tmp_path):
  cfg = trainer.EvalConfig(period=4, num_examples=4, batch_size=4)
  helpers.quick_train(tmp_path, task, train_steps=4, eval_cfg=cfg)
  predictions = tmp_path / "inference_eval" / "resume_tiny-000004.jsonl"
  rows = [json.loads(line) for line in predictions.read_text().splitlines()]
  assert len(rows) == 4 and all("prediction" in r and "target" in r for r in rows)
  metrics = (tmp_path / "inference_eval" / "resume_tiny-metrics.jsonl").read_text()
  assert json.loads(metrics.splitlines()[-1]) == {"step": 4, "score": 0.0}
  assert "eval/score" in _event_tags(tmp_path / "training_eval" / "resume_tiny")
  train_tags = _event_tags(tmp_path / "train")
  assert "train/loss" in train_tags and not any(t.startswith("eval/") for t in train_tags)


def test_summaries_skip_non_finite_values(tmp_path):
  from spot.train import progress
  summaries = progress.Summaries(str(tmp_path / "train"))
  summaries.scalars(1, {"eval/pearson": float("nan"), "eval/none": None, "eval/inf": float("inf"),
                        "eval/accuracy": 0.5})
  summaries.close()
  assert _event_tags(tmp_path / "train") == {"eval/accuracy"}
  assert progress.format_metrics({"b": None, "a": 0.25}) == "a 0.25, b nan"
