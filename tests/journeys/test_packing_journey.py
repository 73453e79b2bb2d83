"""Packed prompt tuning as a user runs it: train (PACK on by the run files), resume,
refuse a PACK change, eval and infer the packed run, and the same run unpacked.

docs/training.md ("Packing") and docs/scaling.md describe these commands.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from tests.journeys.conftest import spot

pytestmark = pytest.mark.slow

PROMPT_LENGTH = 4


def train_flags(data, model_dir: pathlib.Path, steps: int, *extra: str,
                task: str = "spot_glue_rte") -> list[str]:
  return ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
          "--gin_file=spot/gin/runs/prompt_finetune.gin",
          f"--gin.INITIAL_CHECKPOINT_PATH='{data['checkpoint']}'",
          f"--gin.SPM_PATH='{data['spm']}'", f"--gin.DATA_DIR='{data['data_dir']}'",
          f"--gin.MIXTURE_OR_TASK_NAME='{task}'", "--gin.MIXTURE_OR_TASK_MODULE='spot.tasks'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 4}",
          f"--gin.PROMPT_LENGTH={PROMPT_LENGTH}", f"--gin.TRAIN_STEPS={steps}",
          "--gin.BATCH_SIZE=4", "--gin.CHECKPOINT_PERIOD=2", "--gin.EVAL_PERIOD=0",
          "--gin.EVAL_NUM_EXAMPLES=8", "--gin.LOG_EVERY=1", f"--gin.MODEL_DIR='{model_dir}'",
          *extra]


def _examples_per_step(stdout_and_err: str) -> list[float]:
  return [float(line.split("examples ")[1].split()[0]) for line in stdout_and_err.splitlines()
          if line.startswith("train step") and "examples " in line]


def test_packed_training_resumes_refuses_a_pack_change_and_evaluates(data, tmp_path):
  packed = tmp_path / "packed"
  spot("train", *train_flags(data, packed, 2)).check()
  run = json.loads((packed / "run.json").read_text())
  assert run["pack"] is True  # the run files turn packing on
  # Resuming with the same settings continues from step 2.
  spot("train", *train_flags(data, packed, 4)).check()
  assert (packed / "numpy_checkpoints" / "checkpoint_4").is_dir()
  # A resume that would change the batches is refused before anything changes.
  before = sorted(p.name for p in (packed / "numpy_checkpoints").iterdir())
  refused = spot("train", *train_flags(data, packed, 6, "--gin.PACK=False")).check(2)
  assert "PACK" in refused.stderr and "MODEL_DIR" in refused.stderr
  assert sorted(p.name for p in (packed / "numpy_checkpoints").iterdir()) == before

  # Eval and infer of the packed run read whole examples, batched by length.
  common = ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
            f"--gin.RESTORE_MODEL_DIR='{packed}'", f"--gin.SPM_PATH='{data['spm']}'",
            f"--gin.DATA_DIR='{data['data_dir']}'", "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rte'",
            "--gin.MIXTURE_OR_TASK_MODULE='spot.tasks'", f"--gin.PROMPT_LENGTH={PROMPT_LENGTH}",
            "--gin.EVAL_NUM_EXAMPLES=8", "--gin.BATCH_SIZE=4"]
  spot("eval", "--gin_file=spot/gin/runs/prompt_eval.gin", *common,
       f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'").check()
  results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
  assert 0.0 <= results["spot_glue_rte/accuracy"] <= 100.0
  spot("infer", "--gin_file=spot/gin/runs/prompt_infer.gin", *common,
       "--gin.INFER_NUM_EXAMPLES=8", f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'infer'}'").check()
  lines = [json.loads(x) for f in (tmp_path / "infer" / "inference").glob("*.jsonl")
           for x in f.read_text().splitlines() if x.strip()]
  assert [line["index"] for line in lines] == list(range(len(lines)))  # input order
  assert len(lines) == 8


def test_the_same_run_unpacked_trains_too_and_packing_puts_more_examples_in_a_step(
    data, tmp_path):
  # SST-2 sentences (about 22 tokens) leave room in a row of 4 + 64 positions.
  packed = spot("train", *train_flags(data, tmp_path / "p", 2, task="spot_glue_sst2")).check()
  unpacked = spot("train", *train_flags(data, tmp_path / "u", 2, "--gin.PACK=False",
                                        task="spot_glue_sst2")).check()
  assert json.loads((tmp_path / "u" / "run.json").read_text())["pack"] is False
  prompt = lambda d: np.load(d / "numpy_checkpoints" / "checkpoint_2" /
                             "encoder.prompt.prompt.prompt")
  assert prompt(tmp_path / "p").shape == prompt(tmp_path / "u").shape == (PROMPT_LENGTH, 4)
  # Four rows per step either way; packed rows hold several sentences each.
  per_step_packed = _examples_per_step(packed.stdout + packed.stderr)
  per_step_unpacked = _examples_per_step(unpacked.stdout + unpacked.stderr)
  assert per_step_unpacked == [4.0, 4.0]
  assert len(per_step_packed) == 2 and min(per_step_packed) > 4.0
