"""Hugging Face import/export: logits parity between transformers' T5 and spot's T5.

The parity tests build randomly initialised `T5ForConditionalGeneration`
models, save them as transformers does, load them with `load_hf` and compare
logits in float32. Encoder inputs are 40 tokens so relative distances reach
the logarithmic buckets (>= 8 for 32 buckets), and the relative-position
tables are scaled up so that one wrong bucket would show in the logits.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from spot import checkpoints
from spot.checkpoints import hf, tree
from spot.models import T5, T5Config, get_config
from spot.models.layers import relative_position_bucket

VOCAB = 200
PARITY_ATOL = 1e-4


# --- config mapping (no torch needed) -------------------------------------------


def test_config_from_hf_t5_1_1_and_t5_1_0():
  # config.json of google/t5-v1_1-base as transformers 4 writes it.
  v1_1 = {"model_type": "t5", "d_model": 768, "d_kv": 64, "d_ff": 2048, "num_heads": 12,
          "num_layers": 12, "num_decoder_layers": 12, "vocab_size": 32128,
          "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
          "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
          "layer_norm_epsilon": 1e-6, "dropout_rate": 0.1}
  assert hf.config_from_hf(v1_1) == get_config("t5_1_1_base")
  # t5-small: relu, tied (tie_word_embeddings absent means True), no num_decoder_layers.
  t5_small = {"model_type": "t5", "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_heads": 8,
              "num_layers": 6, "vocab_size": 32128, "feed_forward_proj": "relu"}
  assert hf.config_from_hf(t5_small) == get_config("t5_1_0_small")
  mt5 = dict(v1_1, model_type="mt5", vocab_size=250112)
  assert hf.config_from_hf(mt5) == get_config("mt5_base")
  # transformers 5 writes tie_word_embeddings: true plus scale_decoder_outputs.
  v5 = dict(v1_1, tie_word_embeddings=True, scale_decoder_outputs=False)
  assert not hf.config_from_hf(v5).logits_via_embedding


@pytest.mark.parametrize("name", ["t5_1_1_base", "t5_1_0_small", "mt5_small"])
def test_config_to_hf_round_trips(name):
  config = get_config(name)
  assert hf.config_from_hf(hf.config_to_hf(config)) == config
  exact = get_config("t5_1_1_tiny", mlp_activations=("gelu_exact",))
  assert hf.config_to_hf(exact)["feed_forward_proj"] == "gelu"
  with pytest.raises(ValueError, match="gated exact GELU"):
    hf.config_to_hf(get_config("t5_1_1_tiny", mlp_activations=("gelu_exact", "linear")))


def test_name_map_covers_every_parameter():
  for name in ("t5_1_1_tiny", "t5_1_0_tiny"):
    config = get_config(name)
    ours = [row[0] for row in hf.name_map(config)]
    assert sorted(ours) == sorted(tree.expected_shapes(config))
    assert len(set(row[1] for row in hf.name_map(config))) == len(ours)


# --- parity with transformers ---------------------------------------------------


@pytest.fixture(scope="module")
def transformers():
  pytest.importorskip("torch", reason="the HF parity tests need PyTorch (pip install torch)")
  return pytest.importorskip(
      "transformers", reason="the HF parity tests need transformers (pip install transformers)")


def _hf_model(transformers, feed_forward_proj: str, tie: bool, seed: int):
  import torch
  torch.manual_seed(seed)
  config = transformers.T5Config(
      vocab_size=VOCAB, d_model=32, num_heads=4, d_kv=8, d_ff=64, num_layers=2,
      num_decoder_layers=2, feed_forward_proj=feed_forward_proj, tie_word_embeddings=tie,
      relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for stack in (model.encoder, model.decoder):
      stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight.mul_(5.0)
    if not tie:  # T5 1.1: a separate output layer
      model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * 0.05)
  return model


def _inputs(vocab: int = VOCAB):
  rng = np.random.default_rng(0)
  enc = rng.integers(2, vocab, (2, 40))
  enc[1, 29:] = 0  # padding
  dec_tgt = rng.integers(2, vocab, (2, 12))
  dec_in = np.concatenate([np.zeros((2, 1), np.int64), dec_tgt[:, :-1]], axis=1)
  return enc, dec_in, dec_tgt


def _hf_logits(model, enc, dec_in) -> np.ndarray:
  import torch
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                 decoder_input_ids=torch.tensor(dec_in)).logits.numpy()


def _spot_logits(config: T5Config, params, enc, dec_in, dec_tgt) -> np.ndarray:
  return np.asarray(T5(config).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec_in),
                                     jnp.asarray(dec_tgt), enable_dropout=False))


@pytest.mark.parametrize("proj,tie,family", [("gated-gelu", False, "T5 1.1"),
                                             ("relu", True, "T5 1.0")])
def test_logits_match_transformers(transformers, tmp_path, proj, tie, family):
  model = _hf_model(transformers, proj, tie, seed=1)
  model.save_pretrained(tmp_path)
  config, params = checkpoints.load_hf(tmp_path)
  assert config.logits_via_embedding == tie
  assert config.mlp_activations == (("gelu", "linear") if proj == "gated-gelu" else ("relu",))
  enc, dec_in, dec_tgt = _inputs()
  want = _hf_logits(model, enc, dec_in)
  got = _spot_logits(config, params, enc, dec_in, dec_tgt)
  diff = float(np.max(np.abs(got - want)))
  print(f"{family} ({proj}, tied={tie}): max |logit diff| = {diff:.3g}")
  assert got.shape == want.shape == (2, 12, VOCAB)
  assert float(np.max(np.abs(want))) > 0.5  # the comparison is not between near-zeros
  assert diff < PARITY_ATOL


def test_pytorch_bin_and_sharded_safetensors(transformers, tmp_path):
  import torch
  model = _hf_model(transformers, "gated-gelu", False, seed=2)
  model.save_pretrained(tmp_path / "single")
  model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
  torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")  # all tied copies too
  config, params = checkpoints.load_hf(tmp_path / "single")
  reference = tree.flatten(params)
  for variant in ("sharded", "bin"):
    other_config, other = checkpoints.load_hf(tmp_path / variant)
    assert other_config == config
    other = tree.flatten(other)
    assert sorted(other) == sorted(reference)
    for name in reference:
      np.testing.assert_array_equal(other[name], reference[name], err_msg=f"{variant}: {name}")
  enc, dec_in, dec_tgt = _inputs()
  got = _spot_logits(config, tree.unflatten(other), enc, dec_in, dec_tgt)
  assert float(np.max(np.abs(got - _hf_logits(model, enc, dec_in)))) < PARITY_ATOL


def test_bucket_function_matches_transformers(transformers):
  import torch
  from transformers.models.t5.modeling_t5 import T5Attention
  relative = np.arange(-300, 301, dtype=np.int32)
  for bidirectional in (True, False):
    for buckets, distance in ((32, 128), (4, 8), (64, 256)):
      ours = relative_position_bucket(relative, bidirectional, buckets, distance)
      theirs = T5Attention._relative_position_bucket(  # pylint: disable=protected-access
          torch.tensor(relative), bidirectional, buckets, distance).numpy()
      np.testing.assert_array_equal(ours, theirs, err_msg=f"{bidirectional} {buckets}")


def test_export_real_t5x_checkpoint_to_transformers(transformers, tiny_ckpt, tmp_path):
  """The real T5X tiny checkpoint, exported with save_hf, gives spot's logits in transformers."""
  config = get_config("t5_1_1_tiny")
  params = checkpoints.load_t5x(tiny_ckpt, config)
  out = checkpoints.save_hf(tmp_path / "hf", config, params)
  assert json.loads((out / "config.json").read_text())["relative_attention_max_distance"] == 8
  model, info = transformers.T5ForConditionalGeneration.from_pretrained(
      out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  model.eval()
  enc, dec_in, dec_tgt = _inputs(vocab=32128)
  want = _hf_logits(model, enc, dec_in)
  got = _spot_logits(config, params, enc, dec_in, dec_tgt)
  assert float(np.max(np.abs(got - want))) < PARITY_ATOL
  # And load_hf brings back exactly what was exported.
  config2, params2 = checkpoints.load_hf(out)
  assert config2 == config
  flat, flat2 = tree.flatten(params), tree.flatten(params2)
  for name in flat:
    np.testing.assert_array_equal(flat2[name], flat[name], err_msg=name)
