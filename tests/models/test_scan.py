"""Scanned layers: the same numbers as unrolled layers, both checkpoint layouts."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from spot.models import get_config, init_params, logical_axes, param_shapes, scan
from spot.prompts import PrefixPrompt
from spot.train import inference
from spot.train.models import EncoderDecoderModel

UNROLLED = get_config("t5_1_1_tiny", dropout_rate=0.0).replace(
    vocab_size=96, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=3,
    num_decoder_layers=2)
SCANNED = UNROLLED.replace(scan_layers=True)


def _flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


def _batch(seed=0, b=2, t=9, length=5):
  rng = np.random.RandomState(seed)
  targets = rng.randint(2, 96, (b, length)).astype(np.int32)
  targets[1, -2:] = 0  # padding in the targets of the second example
  return {"encoder_input_tokens": rng.randint(2, 96, (b, t)).astype(np.int32),
          "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
          "decoder_target_tokens": targets}


def _model(config):
  return EncoderDecoderModel(config, functools.partial(PrefixPrompt, length=3))


@pytest.fixture(scope="module")
def params():
  """Unrolled parameters with a prompt, and the same values stacked."""
  unrolled = _model(UNROLLED).init_params(jax.random.PRNGKey(0))
  unrolled = jax.tree_util.tree_map(np.asarray, unrolled)
  return unrolled, scan.scan_layers(unrolled)


def test_scanned_parameter_layout_and_axes():
  shapes = {k: tuple(v.shape) for k, v in _flat(param_shapes(SCANNED)).items()}
  assert shapes["encoder/layers/attention/query/kernel"] == (3, 16, 16)
  assert shapes["encoder/layers/mlp/wo/kernel"] == (3, 32, 16)
  assert shapes["decoder/layers/pre_mlp_layer_norm/scale"] == (2, 16)
  assert shapes["encoder/relpos_bias/rel_embedding"] == (2, 4)  # still one table per stack
  assert not any("layers_" in k for k in shapes)
  axes = _flat(logical_axes(SCANNED))
  assert tuple(axes["encoder/layers/attention/query/kernel"]) == ("layers", "embed", "joined_kv")
  assert tuple(axes["decoder/layers/mlp/wo/kernel"]) == ("layers", "mlp", "embed")
  # T5X scalable_t5's layout: layers on axis 1.
  second = SCANNED.replace(param_scan_axis=1)
  assert _flat(param_shapes(second))["encoder/layers/attention/query/kernel"].shape == (16, 3, 16)
  assert tuple(_flat(logical_axes(second))["decoder/layers/mlp/wo/kernel"]) == (
      "mlp", "layers", "embed")
  # Both layouts hold the same number of parameters.
  assert sum(np.prod(s) for s in shapes.values()) == sum(
      np.prod(v.shape) for v in _flat(param_shapes(UNROLLED)).values())


def test_scan_and_unscan_are_inverse(params):
  unrolled, scanned = params
  assert scan.is_scanned(scanned) and not scan.is_scanned(unrolled)
  flat = _flat(scanned)
  np.testing.assert_array_equal(flat["encoder/layers/attention/key/kernel"][2],
                                _flat(unrolled)["encoder/layers_2/attention/key/kernel"])
  # The prompt and the shared tables are not touched.
  np.testing.assert_array_equal(flat["encoder/prompt/prompt/prompt"],
                                _flat(unrolled)["encoder/prompt/prompt/prompt"])
  back = _flat(scan.unscan_layers(scanned))
  assert set(back) == set(_flat(unrolled))
  for k, v in _flat(unrolled).items():
    np.testing.assert_array_equal(back[k], v)
  axis1 = scan.scan_layers(unrolled, axis=1)
  assert _flat(axis1)["decoder/layers/mlp/wo/kernel"].shape == (32, 2, 16)
  back1 = _flat(scan.to_layout(axis1, False, axis=1))
  np.testing.assert_array_equal(back1["decoder/layers_1/mlp/wo/kernel"],
                                _flat(unrolled)["decoder/layers_1/mlp/wo/kernel"])
  assert scan.to_layout(scanned, True) == scanned  # already in the asked layout


def test_stacking_names_the_layer_that_differs(params):
  unrolled, _ = params
  flat = _flat(unrolled)
  del flat["encoder/layers_1/mlp/wo/kernel"]
  with pytest.raises(ValueError, match=r"encoder/layers_i/mlp/wo/kernel.*layers \[0, 2\]"):
    scan.scan_layers(traverse_util.unflatten_dict(flat, sep="/"))
  flat = _flat(unrolled)
  flat["decoder/layers_1/mlp/wo/kernel"] = np.zeros((31, 16), np.float32)
  with pytest.raises(ValueError, match="different shapes"):
    scan.scan_layers(traverse_util.unflatten_dict(flat, sep="/"))


@pytest.mark.parametrize("remat,axis", [("none", 0), ("full", 0), ("minimal", 1)])
def test_scanned_loss_and_gradients_match_unrolled(params, remat, axis):
  unrolled, _ = params
  scanned = scan.scan_layers(unrolled, axis)
  batch = _batch()
  ref_model = _model(UNROLLED)
  scan_model = _model(SCANNED.replace(remat_policy=remat, param_scan_axis=axis))
  loss_fn = lambda m: jax.jit(jax.value_and_grad(lambda p: m.loss(p, batch)[0]))
  ref_loss, ref_grad = loss_fn(ref_model)(unrolled)
  loss, grad = loss_fn(scan_model)(scanned)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  # Gradients of every weight, stacked, equal the per-layer gradients.
  stacked_ref = _flat(scan.scan_layers(jax.tree_util.tree_map(np.asarray, ref_grad), axis))
  for name, g in _flat(grad).items():
    np.testing.assert_allclose(g, stacked_ref[name], rtol=1e-4, atol=1e-6, err_msg=name)
  assert float(np.abs(_flat(grad)["encoder/prompt/prompt/prompt"]).sum()) > 0


def test_scanned_dropout_draws_a_mask_per_layer(params):
  _, scanned = params
  model = _model(SCANNED.replace(dropout_rate=0.5))
  batch = _batch()
  a = model.logits(scanned, batch, enable_dropout=True, dropout_rng=jax.random.PRNGKey(1))
  b = model.logits(scanned, batch, enable_dropout=True, dropout_rng=jax.random.PRNGKey(2))
  clean = model.logits(scanned, batch)
  assert np.all(np.isfinite(a)) and not np.allclose(a, b) and not np.allclose(a, clean)


@pytest.mark.parametrize("method,kwargs", [("greedy", {}), ("beam", {"num_decodes": 3}),
                                           ("sample", {"num_decodes": 2, "topk": 5})])
def test_scanned_decoding_matches_unrolled(params, method, kwargs):
  """The decode cache of scanned layers ([layers, B, ...]) is tiled and reordered per layer."""
  unrolled, scanned = params
  batch = {"encoder_input_tokens": _batch(seed=3, b=3)["encoder_input_tokens"]}
  out = []
  for config, p in ((UNROLLED, unrolled), (SCANNED, scanned)):
    tokens, scores = inference.predict_batch(
        _model(config).module, p, batch, max_decode_length=6, method=method,
        rng=jax.random.PRNGKey(4), return_all=True, **kwargs)
    out.append((np.asarray(tokens), np.asarray(scores)))
  np.testing.assert_array_equal(out[1][0], out[0][0])
  np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-4, atol=1e-5)
  cache = jax.eval_shape(lambda: inference.init_cache(
      _model(SCANNED).module, scanned, jnp.zeros((3, 12, 16)), jnp.ones((3, 12), bool), 6))
  leaves = _flat(cache)
  assert leaves["decoder/layers/self_attention/cached_key"].shape == (2, 3, 6, 2, 8)
  assert leaves["decoder/layers/self_attention/cache_index"].shape == (2,)


def test_checkpoints_load_into_either_layout(tmp_path):
  """A `layers_i` T5X checkpoint serves a scanned model and a scanned one an unrolled model."""
  from spot.checkpoints import load_hf, load_t5x, save_hf, save_t5x
  unrolled = jax.tree_util.tree_map(np.asarray, init_params(UNROLLED))
  save_t5x(tmp_path / "unrolled", unrolled, step=1)
  loaded = load_t5x(tmp_path / "unrolled", SCANNED)
  expected = _flat(scan.scan_layers(unrolled))
  assert set(_flat(loaded)) == set(expected)
  for k, v in _flat(loaded).items():
    np.testing.assert_array_equal(v, expected[k])
  save_t5x(tmp_path / "scanned", loaded, step=1)
  back = load_t5x(tmp_path / "scanned", UNROLLED)
  for k, v in _flat(unrolled).items():
    np.testing.assert_array_equal(_flat(back)[k], v)
  with pytest.raises(ValueError, match="shape mismatch for encoder/layers/mlp/wo/kernel"):
    load_t5x(tmp_path / "scanned", SCANNED.replace(mlp_dim=24))
  # Hugging Face T5 has one block per layer: a scanned model exports unrolled.
  save_hf(tmp_path / "hf", SCANNED, loaded)
  config, hf = load_hf(tmp_path / "hf")
  assert not config.scan_layers
  np.testing.assert_array_equal(_flat(hf)["decoder/layers_1/mlp/wo/kernel"],
                                _flat(unrolled)["decoder/layers_1/mlp/wo/kernel"])
  from spot.checkpoints import infer_config
  assert infer_config(loaded) == infer_config(unrolled).replace(scan_layers=True)
  assert infer_config(loaded, relative_attention_max_distance=8).num_encoder_layers == 3
  assert infer_config(scan.scan_layers(unrolled, axis=1)).param_scan_axis == 1
