"""The demo's study: one transfer per (study source, target), the retrieved run reused, and
the tables and section the report shows (a stand-in workflow; `spot demo` runs the real one)."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest

from spot.demo import study as demo_study
from spot.demo.config import DEFAULT, QUICK
from spot.workflows import study_report
from spot.workflows.spot_transfer import RunRecord, TargetOutcome

pytestmark = pytest.mark.filterwarnings("ignore")


def _record(name: str, task: str, score: float, source: str = "") -> RunRecord:
  return RunRecord(name=name, task=task, init="", model_dir=f"/runs/{name}", steps=40,
                   curve=[(40, score)], losses=[], results={}, seconds=0.0, source=source)


def _emb(task: str) -> np.ndarray:
  skill = task.split("_")[1]  # a target's embedding is near its skill's source
  rng = np.random.RandomState(zlib.crc32(skill.encode()))
  return rng.normal(size=(4, 8)) + 0.1 * np.random.RandomState(len(task)).normal(size=(4, 8))


class FakeFlow:
  """Trains nothing: a transfer's score is a fixed function of its source and target."""

  def __init__(self):
    self.trained = []

  def library(self):
    return self

  def prompt(self, name: str) -> np.ndarray:
    return np.full((4, 8), len(name), np.float32)

  def early_prompt(self, record: RunRecord) -> np.ndarray:
    return _emb(record.task)

  def train_prompt(self, name, task, steps, init_name, init=None, eval_every=0) -> RunRecord:
    assert init_name == "transfer" and init is not None and steps == QUICK.target_steps
    self.trained.append(name)
    source = name.split("_", 1)[1].split("__")[0]
    related = source.split("_")[1] == task.split("_")[1]
    return _record(name, task, 90.0 if related else 40.0 + len(source))


def test_the_demo_study_reuses_the_retrieved_run_and_its_tables_agree(tmp_path):
  cfg = dataclasses.replace(QUICK, study_skills=("sentiment", "topic", "add"))
  sources = [_record(f"source_{t}", t, 95.0) for t in
             ("synthetic_sentiment_a", "synthetic_topic_a", "synthetic_add_a", "synthetic_max_a")]
  targets = [TargetOutcome(t, {"random": _record(f"{t}_random", t, 60.0),
                               "retrieved": _record(f"{t}_retrieved", t, 91.0, source=src)},
                           [], "")
             for t, src in (("synthetic_sentiment_b", "synthetic_sentiment_a"),
                            ("synthetic_add_b", "synthetic_max_a"))]
  flow = FakeFlow()
  collected = demo_study.run(flow, cfg, 0, sources, targets, log=lambda m: None)
  # 3 sources x 2 targets, one reused (sentiment_a -> sentiment_b was the retrieved run).
  assert len(flow.trained) == 5
  assert "study_synthetic_sentiment_a__synthetic_sentiment_b" not in flow.trained
  assert collected.score("transfers/synthetic_sentiment_a__synthetic_sentiment_b/seed0") == 91.0
  results, lines = demo_study.write(tmp_path, collected)
  assert study_report.check_consistency(results) == []
  rows = results["retrieval"]["rows"]
  assert rows["baseline"]["value"]["mean"] == 60.0
  assert rows["oracle"]["value"]["mean"] == pytest.approx((91.0 + 90.0) / 2)
  assert rows["best_of_top_1"]["value"]["mean"] == pytest.approx((91.0 + 90.0) / 2)
  assert results["retrieval"]["eliminated"]["fraction"] == pytest.approx(2 / 3)
  cell = results["grid"]["synthetic_add_b"]["sources"]["synthetic_topic_a"]
  assert cell["rer"] == pytest.approx(((100 - 60) - (100 - (40 + 17))) / (100 - 60))
  assert lines[0] == "## Transferability study"
  assert (tmp_path / demo_study.HEATMAP).read_bytes()[:4] == b"\x89PNG"
  assert any(line.startswith("![similarity vs RER") for line in lines)


def test_only_the_default_preset_runs_a_study():
  assert QUICK.study_skills == ()
  assert set(DEFAULT.study_skills) <= set(DEFAULT.skills) and len(DEFAULT.study_skills) == 4
