"""`spot train|eval|infer` and `t5x ...` through gin, and their configuration errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from spot.train import cli

GIN = ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin"]


def _common(shared_data):
  spm = shared_data / "t5_vocab" / "spiece.model"
  return [f"--gin.SPM_PATH='{spm}'", "--gin.MIXTURE_OR_TASK_MODULE='tests.train.cli_tasks'",
          "--gin.MIXTURE_OR_TASK_NAME='cli_glue_sst2'", "--gin.PROMPT_LENGTH=3",
          "--gin.DROPOUT_RATE=0.0",
          f"--gin.INITIAL_CHECKPOINT_PATH='{shared_data / 't5x_tiny_checkpoint' / 'checkpoint_3'}'"]


def test_rewrite_gin_args():
  assert cli.rewrite_gin_args(["--gin.TRAIN_STEPS=5", "--x"]) == [
      "--gin_bindings=TRAIN_STEPS = 5", "--x"]
  with pytest.raises(cli.ConfigError, match="--gin.MODEL_DIR=VALUE"):
    cli.rewrite_gin_args(["--gin.MODEL_DIR"])


def test_missing_required_macro_names_it(capsys):
  rc = cli.main(GIN + ["--gin_file=spot/gin/runs/prompt_finetune.gin",
                       "--gin.MODEL_DIR='/tmp/x'"], mode="train")
  assert rc == 2
  assert "MIXTURE_OR_TASK_NAME" in capsys.readouterr().err


def test_bad_binding_and_missing_file_fail_before_compute(capsys):
  rc = cli.main(GIN + ["--gin_file=spot/gin/runs/prompt_finetune.gin",
                       "--gin.trainer.train.no_such_arg=3"], mode="train")
  assert rc == 2 and "no_such_arg" in capsys.readouterr().err
  rc = cli.main(["--gin_file=spot/gin/models/nope.gin"], mode="train")
  assert rc == 2 and "nope.gin" in capsys.readouterr().err


def test_unknown_task_names_it(shared_data, tmp_path, capsys):
  rc = cli.main(GIN + ["--gin_file=spot/gin/runs/prompt_finetune.gin"] + _common(shared_data) + [
      "--gin.MIXTURE_OR_TASK_NAME='cli_glue_sst3'", f"--gin.MODEL_DIR='{tmp_path}'",
      "--gin.TRAIN_STEPS=2", "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}"],
                mode="train")
  assert rc == 2
  err = capsys.readouterr().err
  assert "cli_glue_sst3" in err and "cli_glue_sst2" in err
  assert not (tmp_path / "checkpoints").exists()


def test_train_eval_infer_end_to_end(shared_data, tmp_path):
  """t5x train -> spot eval (restoring the run) -> spot infer writing JSONL."""
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  model_dir = tmp_path / "run"
  common = _common(shared_data) + ["--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
                                   "--gin.BATCH_SIZE=4"]
  train = subprocess.run(
      [sys.executable, "-m", "spot.cli", "train"] + GIN +
      ["--gin_file=spot/gin/runs/prompt_finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
       "--gin.TRAIN_STEPS=4", "--gin.EVAL_PERIOD=0", "--gin.LOG_EVERY=2"] + common,
      env=env, capture_output=True, text=True, timeout=600)
  assert train.returncode == 0, train.stderr[-3000:]
  assert "train step 4/4" in train.stdout
  assert (model_dir / "config.gin").exists()
  assert "PROMPT_LENGTH = 3" in (model_dir / "config.gin").read_text()

  from spot.cli import t5x_main, spot_main
  os.environ.setdefault("SPOT_SHARED_DATA", str(shared_data))
  eval_dir = tmp_path / "eval"
  rc = t5x_main(["eval"] + GIN + ["--gin_file=spot/gin/runs/prompt_eval.gin"] + common + [
      f"--gin.EVAL_OUTPUT_DIR='{eval_dir}'", f"--gin.RESTORE_MODEL_DIR='{model_dir}'",
      "--gin.EVAL_NUM_EXAMPLES=8"])
  assert rc == 0
  results = json.loads((eval_dir / "eval_results.json").read_text())
  assert 0.0 <= results["cli_glue_sst2/accuracy"] <= 100.0

  infer_dir = tmp_path / "infer"
  rc = spot_main(["infer"] + GIN + ["--gin_file=spot/gin/runs/prompt_infer.gin",
                                    "--gin_file=spot/gin/decoding/beam_search.gin"] + common + [
      f"--gin.INFER_OUTPUT_DIR='{infer_dir}'", f"--gin.RESTORE_MODEL_DIR='{model_dir}'",
      "--gin.INFER_NUM_EXAMPLES=6"])
  assert rc == 0
  lines = (infer_dir / "inference" / "cli_glue_sst2-validation.jsonl").read_text().splitlines()
  rows = [json.loads(l) for l in lines]
  assert len(rows) == 6
  assert rows[0]["inputs"].startswith("sst2 sentence:")
  assert rows[0]["targets"] in ("positive", "negative")
  assert isinstance(rows[0]["prediction"], str)
