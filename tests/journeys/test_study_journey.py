"""Journey: a tiny transferability study from the shell, as docs/study.md shows it.

`spot study plan` lists the runs, `spot study run` trains them (3 sources,
2 targets, 1 seed, on the shared tiny T5X checkpoint and the synthetic
tasks), a second `run` finds everything finished, and `spot study report`
writes the Markdown, JSON and PNGs whose tables agree with each other.
"""

from __future__ import annotations

import json

import pytest

from tests.journeys.conftest import spot

pytestmark = pytest.mark.slow

SOURCES = ("synthetic_sentiment_a", "synthetic_topic_a", "synthetic_add_a")
TARGETS = ("synthetic_sentiment_b", "synthetic_add_a")  # add_a is also a source


def _study_args(study, data):
  args = ["--dir", str(study), "--seeds", "0", "--source-steps", "2", "--target-steps", "2",
          "--embedding-step", "1", "--weighted-k", "0"]
  for s in SOURCES:
    args += ["--source", s]
  for t in TARGETS:
    args += ["--target", t]
  return args + [
      "--", "--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
      "--gin_file=spot/gin/runs/prompt_finetune.gin",
      f"--gin.SPM_PATH='{data['spm']}'", "--gin.MIXTURE_OR_TASK_MODULE='spot.tasks.synthetic'",
      "--gin.PROMPT_LENGTH=4", "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
      "--gin.BATCH_SIZE=8", "--gin.EVAL_NUM_EXAMPLES=8", "--gin.EVAL_BATCH_SIZE=8",
      f"--gin.INITIAL_CHECKPOINT_PATH='{data['checkpoint']}'"]


def test_study_plan_run_rerun_report(data, tmp_path):
  study = tmp_path / "study"
  plan = spot("study", "plan", *_study_args(study, data)).check()
  commands = [c for c in plan.stdout.strip().splitlines() if not c.startswith("#")]  # stages
  # 3 sources + 2 baselines + (2 + 3) candidates, one seed (tests/workflows/test_study.py
  # runs the 2-seed grid with a stand-in trainer).
  assert len(commands) == 3 + 2 + 5
  assert commands[0] == f"spot study run --dir {study} --only sources/{SOURCES[0]}/seed0"
  assert not any("synthetic_add_a__synthetic_add_a" in c for c in commands)

  run = spot("study", "run", "--dir", str(study), timeout=1800).check()
  assert "[study 10/10" in run.stdout and "ETA" in run.stdout
  again = spot("study", "run", "--dir", str(study)).check()
  assert "10 of 10 run(s) already finished" in again.stdout
  assert "training" not in again.stdout

  report = spot("study", "report", str(study)).check()
  assert "best of top-3" in report.stdout and "oracle" in report.stdout
  results = json.loads((study / "report" / "results.json").read_text())
  assert results["missing"] == [] and results["excluded"] == ["synthetic_add_a"]
  assert results["runs"] == {"finished": 10, "total": 10}
  for png in [results["files"]["heatmap"], *results["files"]["scatters"]]:
    assert (study / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  from spot.workflows import study_report
  assert study_report.check_consistency(results) == []
  md = (study / "report" / "report.md").read_text()
  assert "Excluded from their own candidates" in md and "plots/rer_heatmap.png" in md
