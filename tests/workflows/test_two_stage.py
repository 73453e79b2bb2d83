"""Two-stage recipe on ../shared/data RTE: a prompt (or LoRA) first, then the whole model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spot import errors
from spot.workflows import two_stage

pytestmark = pytest.mark.filterwarnings("ignore")


def _flags(shared_data, model="t5_1_1_tiny_prompt"):
  return [f"--gin_file=spot/gin/models/{model}.gin",
          "--gin_file=spot/gin/runs/prompt_finetune.gin",
          f"--gin.SPM_PATH='{shared_data / 't5_vocab' / 'spiece.model'}'",
          f"--gin.DATA_DIR='{shared_data}'", "--gin.PACK=False",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.BATCH_SIZE=4",
          "--gin.LEARNING_RATE=0.3", "--gin.EVAL_NUM_EXAMPLES=4", "--gin.EVAL_BATCH_SIZE=4",
          "--gin.LOG_EVERY=100",
          f"--gin.INITIAL_CHECKPOINT_PATH='{shared_data / 't5x_tiny_checkpoint' / 'checkpoint_3'}'"]


def test_prompt_then_full_fine_tuning_reports_both_stages(shared_data, tmp_path):
  from spot.checkpoints import run_dir
  from spot.train import state as state_lib
  spec = two_stage.TwoStageSpec(task="spot_glue_rte", stage1_steps=2, stage2_steps=2,
                                train_flags=tuple(_flags(shared_data) + ["--gin.PROMPT_LENGTH=4"]),
                                stage2_flags=("--gin.LEARNING_RATE=0.01",))
  lines = []
  r = two_stage.run_two_stage(spec, str(tmp_path / "ts"), log=lines.append)
  assert [row["stage"] for row in r["stages"]] == ["stage1", "stage2"]
  one, two = r["stages"]
  for row in (one, two):
    assert row["score"] is not None and 0.0 <= row["score"] <= 100.0
  assert one["num_trainable"] == 4 * 4 and one["num_frozen"] > 0  # the prompt only
  assert two["num_frozen"] == 0 and two["num_trainable"] == one["num_trainable"] + one["num_frozen"]
  assert one["method"] == "two_stage_1_prompt" and two["method"] == "two_stage_2_prompt"
  # Stage 2 starts from stage 1's final prompt, at stage 2's learning rate.
  stage1 = two_stage.stage1_settings(spec, tmp_path / "ts")
  stage2 = two_stage.stage2_settings(spec, tmp_path / "ts", stage1)
  start = state_lib.initial_params(stage2.model, stage2.initial_checkpoint_path, stage2.seed)
  np.testing.assert_array_equal(np.asarray(start["encoder"]["prompt"]["prompt"]["prompt"]),
                                run_dir.latest_numpy_prompt(str(tmp_path / "ts" / "stage1")))
  assert "LEARNING_RATE = 0.01" in stage2.gin_config
  table = (tmp_path / "ts" / two_stage.REPORT_MD).read_text()
  assert f"| stage1 | two_stage_1_prompt | 16 | 2 | {one['score']:.2f} |" in table
  assert f"| stage2 | two_stage_2_prompt |" in table
  assert json.loads((tmp_path / "ts" / two_stage.RESULTS_JSON).read_text()) == r
  # Finished stages are skipped.
  calls = []
  two_stage.run_two_stage(spec, str(tmp_path / "ts"), log=lines.append, train=calls.append)
  assert calls == []


def test_lora_is_merged_into_the_base_before_full_fine_tuning(shared_data, tmp_path):
  from spot.checkpoints import load_t5x
  spec = two_stage.TwoStageSpec(
      task="spot_glue_rte", stage1_steps=2, stage2_steps=1,
      train_flags=tuple(_flags(shared_data, "t5_1_1_tiny")
                        + ["--gin_file=spot/gin/peft/lora.gin", "--gin.LORA_RANK=2"]))
  r = two_stage.run_two_stage(spec, str(tmp_path / "ts"), log=lambda m: None)
  one, two = r["stages"]
  assert one["method"] == "two_stage_1_lora" and two["method"] == "two_stage_2_lora"
  assert two["num_frozen"] == 0 and two["num_trainable"] == one["num_frozen"]  # LoRA folded in
  assert one["score"] is not None and two["score"] is not None
  merged = tmp_path / "ts" / two_stage.MERGED_DIR / "checkpoint_2"
  base = load_t5x(str(shared_data / "t5x_tiny_checkpoint" / "checkpoint_3"))
  folded = load_t5x(str(merged))
  q = ("encoder", "layers_0", "attention", "query", "kernel")
  get = lambda tree: np.asarray(tree[q[0]][q[1]][q[2]][q[3]][q[4]])
  assert get(folded).shape == get(base).shape and not np.allclose(get(folded), get(base))


def test_stage_one_must_be_parameter_efficient(shared_data, tmp_path):
  spec = two_stage.TwoStageSpec(task="spot_glue_rte", stage1_steps=1, stage2_steps=1,
                                train_flags=tuple(_flags(shared_data) + ["--gin.TRAINABLE='all'"]))
  with pytest.raises(errors.ConfigError, match="stage 1 trains a parameter-efficient module"):
    two_stage.run_two_stage(spec, str(tmp_path / "ts"), train=lambda s: None)
