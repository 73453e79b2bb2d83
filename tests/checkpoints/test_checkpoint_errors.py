"""Bad input fails loudly, naming the parameter or file and what was expected."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from spot import checkpoints
from spot.models import T5Config, get_config

TINY_HF = T5Config(vocab_size=48, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                   num_encoder_layers=1, num_decoder_layers=1)


@pytest.fixture
def tiny_copy(tiny_ckpt, tmp_path):
  target = tmp_path / "checkpoint_3"
  shutil.copytree(tiny_ckpt, target)
  return target


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, make_params):
  path = tmp_path_factory.mktemp("hf") / "model"
  checkpoints.save_hf(path, TINY_HF, make_params(TINY_HF))
  return path


def _copy_hf(hf_dir, tmp_path, edit):
  """A copy of `hf_dir` whose tensors are changed by `edit(dict) -> dict`."""
  target = tmp_path / "edited"
  shutil.copytree(hf_dir, target)
  tensors = edit(load_file(target / "model.safetensors"))
  save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
  return target


def test_nonexistent_path(tmp_path):
  missing = tmp_path / "no" / "such" / "checkpoint_1"
  with pytest.raises(FileNotFoundError, match=f"No checkpoint at {missing}"):
    checkpoints.load_t5x(missing)
  with pytest.raises(FileNotFoundError, match="config.json does not exist"):
    checkpoints.load_hf(missing)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no complete checkpoint_<step>"):
    checkpoints.load_t5x(tmp_path / "empty")


def test_missing_array_directory(tiny_copy):
  shutil.rmtree(tiny_copy / "target.encoder.layers_1.mlp.wo.kernel")
  with pytest.raises(FileNotFoundError,
                     match=r"encoder/layers_1/mlp/wo/kernel.*target\.encoder\.layers_1\.mlp\.wo"):
    checkpoints.load_t5x(tiny_copy)


def test_missing_chunk_file_is_not_read_as_zeros(tiny_copy):
  (tiny_copy / "target.token_embedder.embedding" / "3.0").unlink()
  with pytest.raises(FileNotFoundError, match=r"token_embedder/embedding.*3\.0"):
    checkpoints.load_t5x(tiny_copy)
  with pytest.raises(FileNotFoundError, match="token_embedder/embedding"):
    checkpoints.load_t5x_variable(tiny_copy, "token_embedder/embedding")
  # Other variables stay readable on their own.
  assert checkpoints.load_t5x_variable(tiny_copy, "decoder/logits_dense/kernel").shape == (4, 32128)


@pytest.mark.parametrize("overrides,lines", [
    (dict(emb_dim=8),
     ["shape mismatch for token_embedder/embedding: expected [32128, 8], found [32128, 4]",
      "shape mismatch for encoder/encoder_norm/scale: expected [8], found [4]"]),
    (dict(num_encoder_layers=3, num_decoder_layers=1),
     ["missing parameter encoder/layers_2/attention/query/kernel: expected shape [4, 4]",
      "unexpected parameter decoder/layers_1/mlp/wi_0/kernel with shape [4, 8]"]),
    (dict(logits_via_embedding=True),
     ["unexpected parameter decoder/logits_dense/kernel with shape [4, 32128]"]),
])
def test_shape_mismatch_names_each_parameter(tiny_ckpt, overrides, lines):
  with pytest.raises(ValueError) as info:
    checkpoints.load_t5x(tiny_ckpt, get_config("t5_1_1_tiny", **overrides))
  for line in lines:
    assert line in str(info.value)


def test_prompt_parameters_are_allowed_extras(tmp_path, make_params):
  config = TINY_HF
  params = make_params(config)
  params["encoder"]["prompt"] = {"prompt": {"prompt": np.ones((5, 8), np.float32)}}
  checkpoints.save_t5x(tmp_path, params, step=1)
  loaded = checkpoints.load_t5x(tmp_path, config)
  np.testing.assert_array_equal(loaded["encoder"]["prompt"]["prompt"]["prompt"], 1.0)
  prompt = checkpoints.load_t5x_variable(tmp_path, "encoder/prompt/prompt/prompt")
  assert prompt.shape == (5, 8)
  with pytest.raises(ValueError, match="prompt parameters"):
    checkpoints.save_hf(tmp_path / "hf", config, loaded)


def test_not_a_checkpoint_file(tmp_path):
  (tmp_path / "checkpoint").write_bytes(b"model_checkpoint_path: \"model.ckpt-1\"\n")
  with pytest.raises(ValueError, match="TensorFlow checkpoint"):
    checkpoints.load_t5x(tmp_path)
  (tmp_path / "checkpoint").write_bytes(b"\xc1\xc1 not msgpack")
  with pytest.raises(ValueError, match="is not a msgpack T5X checkpoint"):
    checkpoints.load_t5x(tmp_path / "checkpoint")
  (tmp_path / "checkpoint").write_bytes(b"\x81\xa6params\x80")  # {"params": {}}
  with pytest.raises(ValueError, match=r"top-level keys are \['params'\]"):
    checkpoints.load_t5x(tmp_path)


def test_wrong_architecture_config_json(hf_dir, tmp_path):
  target = tmp_path / "bert"
  shutil.copytree(hf_dir, target)
  config = json.loads((target / "config.json").read_text())
  config["model_type"] = "bert"
  (target / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"bert/config\.json: model_type='bert' is not a T5"):
    checkpoints.load_hf(target)
  config.update(model_type="t5", feed_forward_proj="gated-tanh")
  (target / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="activation 'tanh'"):
    checkpoints.load_hf(target)


def test_hf_missing_tensor(hf_dir, tmp_path):
  name = "decoder.block.0.layer.1.EncDecAttention.k.weight"
  target = _copy_hf(hf_dir, tmp_path, lambda t: {k: v for k, v in t.items() if k != name})
  with pytest.raises(ValueError, match=rf"missing tensor {name} \(for decoder/layers_0/"
                     r"encoder_decoder_attention/key/kernel\): expected shape \[8, 8\]"):
    checkpoints.load_hf(target)


def test_hf_wrong_shape_and_unexpected_tensor(hf_dir, tmp_path):
  name = "encoder.block.0.layer.1.DenseReluDense.wi_1.weight"

  def edit(tensors):
    tensors[name] = np.zeros((12, 8), np.float32)
    tensors["encoder.block.0.layer.0.SelfAttention.relative_attention_bias2.weight"] = (
        np.zeros((2,), np.float32))
    return tensors

  target = _copy_hf(hf_dir, tmp_path, edit)
  with pytest.raises(ValueError) as info:
    checkpoints.load_hf(target)
  message = str(info.value)
  assert (f"tensor {name} in model.safetensors (for encoder/layers_0/mlp/wi_1/kernel): "
          "expected shape [16, 8], found [12, 8]") in message
  assert ("unexpected tensor encoder.block.0.layer.0.SelfAttention.relative_attention_bias2"
          in message)


def test_hf_without_weights(hf_dir, tmp_path):
  target = tmp_path / "noweights"
  target.mkdir()
  shutil.copy(hf_dir / "config.json", target / "config.json")
  with pytest.raises(FileNotFoundError, match="No weights in .*model.safetensors"):
    checkpoints.load_hf(target)


# --- `spot checkpoint` on bad input: one line, a typed exit code, nothing left behind ---


def _fails(capsys, argv: list[str], code: int, *names: str) -> str:
  """Runs `spot checkpoint ...` and checks the exit code and the one-line message."""
  from spot.cli import spot_main
  capsys.readouterr()
  assert spot_main(["checkpoint", *argv]) == code
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "Traceback" not in err, err
  assert err.startswith("spot checkpoint: "), err
  for name in names:
    assert name in err, err
  return err


def _only(directory, *names):
  assert sorted(p.name for p in directory.iterdir()) == sorted(names)


def test_cli_missing_and_empty_checkpoints(tmp_path, capsys):
  _fails(capsys, ["inspect", str(tmp_path / "nope")], 3, f"No checkpoint at {tmp_path / 'nope'}",
         "the path does not exist")
  (tmp_path / "model" / "checkpoint_5").mkdir(parents=True)  # an empty step folder
  for path in (tmp_path / "model", tmp_path / "model" / "checkpoint_5"):
    _fails(capsys, ["inspect", str(path)], 3, f"No checkpoint in {path}",
           "copy the complete checkpoint")
  err = _fails(capsys, ["convert", "--from-t5x", str(tmp_path / "model"), "--to-hf",
                        str(tmp_path / "hf")], 3, str(tmp_path / "model"))
  assert "empty" in err
  _only(tmp_path, "model")


def test_cli_empty_and_truncated_run_step_folders(spot_run, tmp_path, capsys):
  copy = tmp_path / "run"
  shutil.copytree(spot_run["model_dir"], copy)
  (copy / "checkpoints" / "3").mkdir()
  _fails(capsys, ["inspect", str(copy / "checkpoints" / "3")], 3,
         f"Run step folder {copy / 'checkpoints' / '3'} is empty",
         "checkpoints/: [1, 2]")
  _fails(capsys, ["convert", "--from-run", str(copy), "--step", "3", "--to",
                  str(tmp_path / "out")], 3, "is empty")
  # Orbax array data gone (a partial copy): named, and no output directory appears.
  for data in (copy / "checkpoints" / "2" / "state").rglob("d/*"):
    data.unlink()
  _fails(capsys, ["convert", "--from-run", str(copy), "--to", str(tmp_path / "out")], 3,
         f"Orbax checkpoint {copy / 'checkpoints' / '2' / 'state'} cannot be read",
         "copy the complete step directory")
  (copy / "checkpoints" / "1" / "commit_success.txt").unlink()
  _fails(capsys, ["inspect", str(copy / "checkpoints" / "1")], 3,
         f"Run step folder {copy / 'checkpoints' / '1'} is incomplete (no commit_success.txt")
  # Step 1 no longer counts; the latest, step 2, is the damaged one.
  _fails(capsys, ["inspect", str(copy)], 3,
         f"{copy / 'checkpoints' / '2' / 'state'} cannot be read")
  _only(tmp_path, "run")


def test_cli_truncated_msgpack_and_missing_chunk(tiny_copy, tmp_path, capsys):
  file = tiny_copy / "checkpoint"
  data = file.read_bytes()
  file.write_bytes(data[: len(data) // 2])
  _fails(capsys, ["inspect", str(tiny_copy)], 3, str(file), "truncated",
         "copy the complete checkpoint_<step> directory again")
  file.write_bytes(data)
  (tiny_copy / "target.token_embedder.embedding" / "3.0").unlink()
  _fails(capsys, ["convert", "--from-t5x", str(tiny_copy), "--to-hf", str(tmp_path / "hf")], 3,
         "token_embedder/embedding", "copy the whole checkpoint_<step> directory")
  _only(tmp_path, "checkpoint_3")


def test_cli_run_with_damaged_base_leaves_no_output(spot_run, tiny_copy, tmp_path, capsys):
  """convert --from-run reads a base with a missing chunk: exit 3, no OUT_DIR, no temp dir."""
  (tiny_copy / "target.encoder.layers_0.mlp.wo.kernel" / "0.0").unlink()
  copy = tmp_path / "run"
  shutil.copytree(spot_run["model_dir"], copy)
  for file in [copy / "run.json", *copy.glob("*/*/meta/metadata")]:
    meta = json.loads(file.read_text())
    meta["base_checkpoint"] = str(tiny_copy)
    file.write_text(json.dumps(meta))
  out = tmp_path / "out"
  _fails(capsys, ["convert", "--from-run", str(copy), "--to", str(out)], 3,
         "encoder/layers_0/mlp/wo/kernel", "copy the whole checkpoint_<step> directory")
  _only(tmp_path, "checkpoint_3", "run")


def test_cli_wrong_config(tiny_ckpt, tmp_path, capsys):
  out = tmp_path / "hf"
  _fails(capsys, ["convert", "--from-t5x", str(tiny_ckpt), "--to-hf", str(out), "--config",
                  "t5_1_1_nano"], 2, "--config 't5_1_1_nano'", "t5_1_1_tiny")
  bad = tmp_path / "config.json"
  bad.write_text("{not json")
  _fails(capsys, ["convert", "--from-t5x", str(tiny_ckpt), "--to-hf", str(out), "--config",
                  str(bad)], 2, f"--config {bad} is not a T5Config JSON file")
  bad.write_text(json.dumps({"emb_dim": 4, "colour": "red"}))
  _fails(capsys, ["convert", "--from-t5x", str(tiny_ckpt), "--to-hf", str(out), "--config",
                  str(bad)], 2, "colour")
  _fails(capsys, ["convert", "--from-t5x", str(tiny_ckpt), "--to-hf", str(out), "--config",
                  "t5_1_1_base"], 2, "--config t5_1_1_base does not match",
         "shape mismatch for decoder/decoder_norm/scale: expected [768], found [4]",
         "omit --config")
  _fails(capsys, ["convert", "--from-hf", str(tmp_path), "--to", str(tmp_path / "t"),
                  "--config", "t5_1_1_tiny"], 2, "--config does not apply to --from-hf")
  _only(tmp_path, "config.json")
