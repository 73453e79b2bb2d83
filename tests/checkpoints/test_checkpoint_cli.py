"""`spot checkpoint inspect|convert`."""

from __future__ import annotations

import json

import numpy as np

from spot import checkpoints
from spot.checkpoints import cli, tree
from spot.cli import spot_main
from spot.models import T5Config


def test_inspect_text_and_json(tiny_ckpt, capsys):
  assert cli.main(["inspect", str(tiny_ckpt.parent)]) == 0
  out = capsys.readouterr().out
  assert "format: t5x" in out and "step: 3" in out
  assert "token_embedder/embedding" in out and "[32128, 4]" in out
  assert "total: 52 arrays, 257,856 parameters" in out
  assert spot_main(["checkpoint", "inspect", str(tiny_ckpt), "--json", "--optimizer"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["format"] == "t5x" and summary["version"] == 3
  assert summary["params"]["decoder/logits_dense/kernel"] == {"shape": [4, 32128],
                                                              "dtype": "float32"}
  assert summary["params"]["state/step"] == {"shape": [], "dtype": "int32"}
  assert summary["inferred_config"]["emb_dim"] == 4
  assert summary["inferred_config"]["mlp_activations"] == ["gelu", "linear"]


def test_convert_round_trip(tmp_path, capsys, make_params):
  config = T5Config(vocab_size=40, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                    num_encoder_layers=1, num_decoder_layers=2, mlp_activations=("relu",),
                    logits_via_embedding=True)
  params = make_params(config)
  checkpoints.save_hf(tmp_path / "hf", config, params)
  assert cli.main(["inspect", str(tmp_path / "hf"), "--json"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["format"] == "hf" and summary["params"]["shared.weight"]["shape"] == [40, 8]
  assert cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--to", str(tmp_path / "t5x"),
                   "--step", "7"]) == 0
  assert "checkpoint_7" in capsys.readouterr().out
  loaded = checkpoints.load_t5x(tmp_path / "t5x", config)
  config_file = tmp_path / "config.json"
  config_file.write_text(json.dumps(config.to_dict()))
  assert cli.main(["convert", "--from-t5x", str(tmp_path / "t5x"), "--to-hf",
                   str(tmp_path / "hf2"), "--config", str(config_file)]) == 0
  config2, params2 = checkpoints.load_hf(tmp_path / "hf2")
  assert config2 == config
  want, got = tree.flatten(params), tree.flatten(params2)
  for name in want:
    np.testing.assert_array_equal(got[name], np.asarray(want[name]), err_msg=name)
  assert sorted(tree.flatten(loaded)) == sorted(want)


def test_convert_infers_config_and_reports_errors(tiny_ckpt, tmp_path, capsys):
  assert cli.main(["convert", "--from-t5x", str(tiny_ckpt), "--to-hf", str(tmp_path / "hf")]) == 0
  err = capsys.readouterr().err
  assert "inferred from shapes" in err and "relative_attention_max_distance=8" in err
  config, _ = checkpoints.load_hf(tmp_path / "hf")
  assert config.emb_dim == 4 and config.relative_attention_max_distance == 8
  # Writing over an existing directory (usage, 2), a missing checkpoint (data, 3) and a
  # config that does not fit (usage, 2) fail with one line naming the path and the fix.
  assert spot_main(["checkpoint", "convert", "--from-t5x", str(tiny_ckpt), "--to-hf",
                    str(tmp_path / "hf"), "--config", "t5_1_1_tiny"]) == 2
  assert "already exists" in capsys.readouterr().err
  assert spot_main(["checkpoint", "inspect", str(tmp_path / "missing")]) == 3
  assert "does not exist" in capsys.readouterr().err
  assert spot_main(["checkpoint", "convert", "--from-t5x", str(tiny_ckpt), "--to-hf",
                    str(tmp_path / "x"), "--config", "t5_1_1_small"]) == 2
  assert "shape mismatch for decoder/decoder_norm/scale" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()
