"""The T5 module: parameter tree, logical axes, numerics of its parts, options."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from spot.models import T5, T5Config, get_config, init_params, logical_axes, param_shapes
from spot.models import layers as L

SMALL = get_config("t5_1_1_tiny", dropout_rate=0.0).replace(vocab_size=96, emb_dim=16,
                                                            num_heads=2, head_dim=8, mlp_dim=32)


def _batch(seed=0, b=2, t=9, l=5, vocab=96):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  x = jax.random.randint(k1, (b, t), 2, vocab)
  y = jax.random.randint(k2, (b, l), 2, vocab)
  return x, jnp.pad(y, ((0, 0), (1, 0)))[:, :-1], y


def test_t5x_parameter_paths_and_shapes():
  c = get_config("t5_1_1_base")
  shapes = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(
      param_shapes(c), sep="/").items()}
  assert shapes["token_embedder/embedding"] == (32128, 768)
  assert shapes["encoder/layers_0/attention/query/kernel"] == (768, 768)
  assert shapes["encoder/layers_11/mlp/wi_0/kernel"] == (768, 2048)
  assert shapes["encoder/layers_11/mlp/wi_1/kernel"] == (768, 2048)
  assert shapes["decoder/layers_3/encoder_decoder_attention/out/kernel"] == (768, 768)
  assert shapes["encoder/relpos_bias/rel_embedding"] == (12, 32)
  assert shapes["decoder/relpos_bias/rel_embedding"] == (12, 32)
  assert shapes["decoder/logits_dense/kernel"] == (768, 32128)
  assert shapes["decoder/decoder_norm/scale"] == (768,)
  assert "encoder/layers_0/relpos_bias/rel_embedding" not in shapes  # shared per stack
  assert not any("bias" in k and "relpos" not in k for k in shapes)  # no biases
  n = sum(np.prod(s) for s in shapes.values())
  assert 247e6 < n < 249e6  # T5 1.1 base: 247.6M parameters


def test_t5_1_0_tied_relu_and_mt5_sizes():
  shapes = traverse_util.flatten_dict(param_shapes(get_config("t5_1_0_tiny")), sep="/")
  assert "decoder/logits_dense/kernel" not in shapes
  assert "encoder/layers_0/mlp/wi/kernel" in shapes
  mt5 = get_config("mt5_xxl")
  assert (mt5.vocab_size, mt5.emb_dim, mt5.num_heads, mt5.mlp_dim) == (250112, 4096, 64, 10240)
  assert get_config("t5_1_1_large").mlp_dim == 2816
  assert get_config("mt5_xl").emb_dim == 2048
  with pytest.raises(ValueError, match="MODEL_SIZE=.huge. is not a size of t5_1_1"):
    get_config("t5_1_1_huge")
  with pytest.raises(ValueError, match="dtype"):
    T5Config(dtype="float64")


def test_logical_axes_cover_every_parameter():
  axes = traverse_util.flatten_dict(logical_axes(SMALL), sep="/")
  assert tuple(axes["token_embedder/embedding"]) == ("vocab", "embed")
  assert tuple(axes["encoder/layers_0/attention/query/kernel"]) == ("embed", "joined_kv")
  assert tuple(axes["encoder/layers_0/mlp/wo/kernel"]) == ("mlp", "embed")
  assert tuple(axes["encoder/relpos_bias/rel_embedding"]) == ("heads", "relpos_buckets")
  assert tuple(axes["decoder/logits_dense/kernel"]) == ("embed", "vocab")
  assert all(len(tuple(v)) >= 1 for v in axes.values())


def test_relative_position_buckets_match_flaxformer_values():
  rel = np.arange(-20, 21)[None, :]
  bi = L.relative_position_bucket(rel, True, 32, 128)[0]
  # bidirectional: 16 buckets per direction, exact below 8, log-spaced after.
  assert bi[20] == 0 and bi[21] == 17 and bi[19] == 1 and bi[12] == 8
  assert bi[0] == 10  # -20 -> 8 + int(log(20/8)/log(16)*8) = 8 + 2
  causal = L.relative_position_bucket(rel, False, 32, 128)[0]
  assert (causal[21:] == 0).all()  # future positions map to bucket 0
  assert causal[0] == 16 + int(np.log(20 / 16) / np.log(128 / 16) * 16)
  far = L.relative_position_bucket(np.array([[-10_000]]), False, 32, 128)
  assert far[0, 0] == 31


def test_rmsnorm_matches_numpy():
  x = np.random.RandomState(0).randn(2, 3, 8).astype(np.float32)
  scale = np.linspace(0.5, 2.0, 8).astype(np.float32)
  out = L.RMSNorm().apply({"params": {"scale": scale}}, x)
  ref = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5)


def _fwd(config):
  return jax.jit(lambda p, x, d, y: T5(config).apply({"params": p}, x, d, y,
                                                     enable_dropout=False))


def test_forward_contract_and_padding_invariance():
  params = init_params(SMALL)
  model = T5(SMALL)
  x, d, y = _batch()
  logits = model.apply({"params": params}, x, d, y, enable_dropout=False)  # the contract
  fwd = _fwd(SMALL)
  assert logits.shape == (2, 5, 96) and logits.dtype == jnp.float32
  # Extra encoder padding does not change the logits.
  padded = jnp.pad(x, ((0, 0), (0, 4)))
  logits2 = fwd(params, padded, d, y)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(logits2), atol=1e-5)
  # Causality: changing a later decoder input leaves earlier positions alone.
  d2 = d.at[:, 3].set(7)
  logits3 = fwd(params, x, d2, y)
  np.testing.assert_allclose(np.asarray(logits[:, :3]), np.asarray(logits3[:, :3]), atol=1e-5)


def test_remat_and_bfloat16_and_dropout():
  params = init_params(SMALL)
  x, d, y = _batch(1)
  ref = _fwd(SMALL)(params, x, d, y)
  grad = lambda c: jax.jit(jax.grad(lambda p: _fwd(c)(p, x, d, y).sum()))(params)
  g_ref = grad(SMALL)
  for policy in ("full", "minimal"):
    c = SMALL.replace(remat_policy=policy)
    out = _fwd(c)(params, x, d, y)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
    g = grad(c)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
  bf = _fwd(SMALL.replace(dtype="bfloat16"))(params, x, d, y)
  assert bf.dtype == jnp.float32  # logits stay float32
  assert float(jnp.abs(bf - ref).max()) < 0.5
  drop = SMALL.replace(dropout_rate=0.5)
  dropped = jax.jit(lambda p, r: T5(drop).apply({"params": p}, x, d, y, enable_dropout=True,
                                                rngs={"dropout": r}))
  a, b = dropped(params, jax.random.PRNGKey(0)), dropped(params, jax.random.PRNGKey(1))
  assert float(jnp.abs(a - b).max()) > 1e-3


def test_prompt_inputs_without_prompt_is_an_error():
  params = init_params(SMALL)
  x, d, y = _batch()
  with pytest.raises(ValueError, match="prompt_factory"):
    T5(SMALL).apply({"params": params}, x, d, y, enable_dropout=False,
                    prompt_inputs={"prompt_id": jnp.zeros(2, jnp.int32)})
