"""tools/bench_methods.py and the benchmarks' T5Config overrides: one parser
(spot.models.config.parse_overrides), one timing loop (bench_train.measure_spot)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from spot import errors, peft
from spot.models import config as config_lib

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools"


def test_overrides_take_their_fields_types():
  got = config_lib.parse_overrides(["num_encoder_layers=2", "scan_layers=true",
                                    "dropout_rate=0.25", "mlp_activations=gelu,linear",
                                    "dtype=bfloat16"])
  assert got == {"num_encoder_layers": 2, "scan_layers": True, "dropout_rate": 0.25,
                 "mlp_activations": ("gelu", "linear"), "dtype": "bfloat16"}
  assert config_lib.get_config("t5_1_1_tiny", **got).num_encoder_layers == 2
  with pytest.raises(errors.UsageError, match="'num_layers=2'.*num_encoder_layers"):
    config_lib.parse_overrides(["num_layers=2"])
  with pytest.raises(errors.UsageError, match="scan_layers='maybe'.*bool"):
    config_lib.parse_overrides(["scan_layers=maybe"])
  with pytest.raises(errors.UsageError, match="emb_dim='wide'.*int"):
    config_lib.parse_overrides(["emb_dim=wide"])


def test_bench_setups_parse_overrides_through_the_config_module():
  sys.path.insert(0, str(TOOLS))
  import bench_train  # pylint: disable=g-import-not-at-top
  setup = bench_train.Setup(model="t5_1_1_tiny", overrides=("num_decoder_layers=1",
                                                            "scan_layers=false"))
  config = setup.config()
  assert config.num_decoder_layers == 1 and config.scan_layers is False


def test_bench_methods_help_and_methods():
  out = subprocess.run([sys.executable, str(TOOLS / "bench_methods.py"), "--help"],
                       capture_output=True, text=True, check=True).stdout
  assert "--size" in out and "--methods" in out
  sys.path.insert(0, str(TOOLS))
  import bench_methods  # pylint: disable=g-import-not-at-top
  methods = bench_methods.available_methods()
  assert {"prompt", "lora", "ia3", "bitfit", "model"} <= set(methods)
  assert ("prefix" in methods) == ("prefix" in peft.METHODS)
  assert list(methods)[-1] == "model"
