"""LoRA from the console, as docs/peft.md shows it: train LoRA on the frozen tiny T5X
checkpoint, then merge a Hugging Face PEFT adapter into a T5X checkpoint.

1. `spot train` with models/t5_1_1_tiny.gin, runs/prompt_finetune.gin and
   peft/lora.gin: the run trains and checkpoints only LoRA's a/b matrices.
2. `spot checkpoint convert --from-t5x` writes the base as a Hugging Face
   directory; the peft library puts a LoRA adapter beside it (what a PEFT
   user already has).
3. `spot checkpoint convert --from-hf DIR --peft ADAPTER --to OUT` merges it
   into one T5X checkpoint that `spot checkpoint inspect` reads as a plain T5.
"""

from __future__ import annotations

import json

import pytest

from tests.journeys.conftest import spot

pytestmark = pytest.mark.slow


def test_lora_train_and_peft_convert(data, tmp_path):
  model_dir = tmp_path / "lora_run"
  out = spot("train", "--gin_file=spot/gin/models/t5_1_1_tiny.gin",
             "--gin_file=spot/gin/runs/prompt_finetune.gin",
             "--gin_file=spot/gin/peft/lora.gin",
             f"--gin.INITIAL_CHECKPOINT_PATH='{data['checkpoint']}'",
             f"--gin.SPM_PATH='{data['spm']}'", f"--gin.DATA_DIR='{data['data_dir']}'",
             "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rte'",
             "--gin.MIXTURE_OR_TASK_MODULE='spot.tasks'",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 4}",
             "--gin.LORA_RANK=2", "--gin.TRAIN_STEPS=6", "--gin.BATCH_SIZE=4",
             "--gin.EVAL_PERIOD=0", "--gin.LOG_EVERY=2", "--gin.LEARNING_RATE=0.05",
             f"--gin.MODEL_DIR='{model_dir}'").check()
  run = json.loads((model_dir / "run.json").read_text())
  assert run["trainable_params"] and all("/lora/" in p for p in run["trainable_params"])
  # 2 encoder + 2 decoder layers: (4 + 3 + 4 + 3) projections' a and b.
  assert len(run["trainable_params"]) == 2 * (2 * 7 + 2 * 11)
  assert run["num_trainable"] < run["num_frozen"] / 10

  hf_dir = tmp_path / "hf_base"
  spot("checkpoint", "convert", "--from-t5x", data["checkpoint"], "--to-hf", str(hf_dir)).check()
  pytest.importorskip("peft", reason="the PEFT step needs peft (pip install '.[test]')")
  import peft
  import torch
  import transformers
  model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir)
  model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=2,
                                                     lora_alpha=4, target_modules=["q", "v"]))
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "lora_B" in name:
        p.fill_(0.1)
  model.save_pretrained(tmp_path / "adapter")

  merged = tmp_path / "merged"
  spot("checkpoint", "convert", "--from-hf", str(hf_dir), "--peft", str(tmp_path / "adapter"),
       "--to", str(merged)).check()
  shown = json.loads(spot("checkpoint", "inspect", str(merged), "--json").check().stdout)
  assert not any("lora" in n for n in shown["params"])
  assert shown["total_params"] == json.loads(spot(
      "checkpoint", "inspect", data["checkpoint"], "--json").check().stdout)["total_params"]
