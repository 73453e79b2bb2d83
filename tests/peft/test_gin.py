"""Every spot/gin/peft file parses after a run file and builds its method into the model."""

from __future__ import annotations

import pathlib

import gin
import pytest

from spot import peft
from spot.train import cli

GIN = pathlib.Path(cli.GIN_ROOT)
REQUIRED = ["--gin.MODEL_DIR='/tmp/m'", "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rte'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}", "--gin.TRAIN_STEPS=1",
            "--gin.INITIAL_CHECKPOINT_PATH='/tmp/ckpt'"]
EXPECTED = {"lora": peft.LoraConfig(targets=peft.TARGETS[:4] + ("wi_0", "wi_1", "wo")),
            "ia3": peft.IA3Config(), "adapter_houlsby": peft.AdapterConfig("houlsby", 64),
            "adapter_pfeiffer": peft.AdapterConfig("pfeiffer", 64), "bitfit": peft.BitFitConfig(),
            "prefix": peft.PrefixConfig(num_virtual_tokens=20, hidden=512)}


@pytest.mark.parametrize("name", sorted(p.stem for p in (GIN / "peft").glob("*.gin")))
def test_peft_file_parses_and_sets_the_method(name, capsys):
  argv = ["--gin_file=spot/gin/models/t5_1_1_tiny.gin",
          "--gin_file=spot/gin/runs/prompt_finetune.gin", f"--gin_file=spot/gin/peft/{name}.gin"]
  assert cli.main(argv + REQUIRED + ["--print_config"], mode="train") == 0
  text = capsys.readouterr().out
  trainable = gin.query_parameter("%TRAINABLE")
  assert gin.query_parameter("%METHOD") == name
  if name in EXPECTED:
    model = gin.query_parameter("train_models.EncoderDecoderModel.peft")
    assert model is not None and "EncoderDecoderModel.peft" in text
    spec = gin.query_parameter("%PEFT").scoped_configurable_fn()
    assert spec == EXPECTED[name]
    assert trainable == EXPECTED[name].method
  else:
    assert trainable == name.removeprefix("select_")
