"""Evaluation protocols from the console, as docs/protocols.md shows them.

1. `spot sweep run` trains a prompt over two seeds under PROTOCOL='dev1/dev2'
   on SST-2 (the tiny T5X checkpoint, local GLUE files); a rerun skips both.
2. `spot report DIR --out` gives per-seed statistics with the protocol named,
   and the strip, box and learning-curve PNGs.
3. `spot crossfit upstream` (first-order MAML over SST-2 and CoLA), then
   `spot crossfit downstream` (a 2-cell few-shot grid on RTE, from the upstream
   and from scratch) and `spot crossfit report`.
4. `spot two-stage`: a prompt first, then the whole model from it.
"""

from __future__ import annotations

import json

import pytest

from tests.journeys.conftest import spot

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"


def _flags(data, task: str = "spot_glue_sst2", steps: int = 4) -> list[str]:
  return ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
          "--gin_file=spot/gin/runs/prompt_finetune.gin",
          f"--gin.INITIAL_CHECKPOINT_PATH='{data['checkpoint']}'",
          f"--gin.SPM_PATH='{data['spm']}'", f"--gin.DATA_DIR='{data['data_dir']}'",
          f"--gin.MIXTURE_OR_TASK_NAME='{task}'", "--gin.MIXTURE_OR_TASK_MODULE='spot.tasks'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.PROMPT_LENGTH=4",
          f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=4", "--gin.EVAL_PERIOD=2",
          "--gin.EVAL_NUM_EXAMPLES=8", "--gin.EVAL_BATCH_SIZE=4", "--gin.LOG_EVERY=2"]


def test_sweep_under_dev1_dev2_then_report(data, tmp_path):
  sweep_dir = tmp_path / "sweep"
  flags = [*_flags(data), "--gin.PROTOCOL='dev1/dev2'", "--gin.BEST_METRIC='accuracy'"]
  out = spot("sweep", "run", "--dir", str(sweep_dir), "--seeds", "0,1", "--", *flags).check()
  assert "[sweep 2/2" in out.stdout + out.stderr
  for seed in (0, 1):
    metrics = json.loads((sweep_dir / f"seed_{seed}" / "metrics.json").read_text())
    assert metrics["protocol"] == "dev1/dev2"
    assert (metrics["seed"], metrics["init_seed"], metrics["data_seed"]) == (seed, seed, seed)
    assert "accuracy" in metrics["scores"] and "accuracy" in metrics["selection_scores"]
  again = spot("sweep", "run", "--dir", str(sweep_dir)).check()
  assert "training seed_" not in again.stdout + again.stderr

  report_dir = tmp_path / "report"
  spot("report", str(sweep_dir), "--out", str(report_dir)).check()
  md = (report_dir / "report.md").read_text()
  assert "dev1/dev2" in md
  numbers = json.loads((report_dir / "report.json").read_text())
  seeds = [row for cell in numbers["cells"] for row in cell.get("per_seed", [])] \
      if isinstance(numbers.get("cells"), list) else None
  assert seeds is None or len(seeds) == 2, seeds
  assert "per_seed" in json.dumps(numbers)
  pngs = sorted(report_dir.rglob("*.png"))
  assert len(pngs) >= 3 and all(p.read_bytes()[:8] == PNG for p in pngs)


def test_crossfit_fomaml_upstream_few_shot_downstream_and_two_stage(data, tmp_path):
  study = tmp_path / "crossfit"
  spot("crossfit", "upstream", "--dir", str(study), "--task", "spot_glue_sst2",
       "--task", "spot_glue_cola", "--algorithm", "fomaml", "--steps", "4",
       "--inner-lr", "0.1", "--outer-lr", "0.1", "--inner-steps", "1",
       "--inner-batch-size", "4", "--tasks-per-meta-batch", "2", "--",
       *_flags(data)).check()
  upstream = json.loads((study / "upstream.json").read_text())
  assert upstream  # settings and MAML's losses
  assert (study / "upstream" / "run.json").exists()

  spot("crossfit", "downstream", "--dir", str(study), "--task", "spot_glue_rte",
       "--lr", "0.3", "--lr", "1.0", "--batch-size", "4", "--shots", "8", "--seeds", "0",
       "--steps", "2", "--", *_flags(data, task="spot_glue_rte", steps=2)).check()
  cells = sorted(p.parent for p in (study / "downstream").rglob("metrics.json"))
  # 2 learning rates x (upstream, baseline), one task, K and seed.
  assert len(cells) == 4, cells
  spot("crossfit", "report", str(study)).check()
  report = json.loads((study / "report" / "crossfit.json").read_text())
  assert "spot_glue_rte" in json.dumps(report)
  assert "ARG" in (study / "report" / "crossfit.md").read_text()

  two = tmp_path / "two_stage"
  spot("two-stage", "--dir", str(two), "--task", "spot_glue_rte", "--stage1-steps", "2",
       "--stage2-steps", "2", "--stage2-flag=--gin.LEARNING_RATE=1e-4", "--",
       *_flags(data, task="spot_glue_rte", steps=2)).check()
  table = (two / "two_stage.md").read_text()
  assert "stage1" in table.lower().replace(" ", "") or "stage 1" in table.lower()
  assert (two / "stage1" / "metrics.json").exists() and (two / "stage2" / "metrics.json").exists()
