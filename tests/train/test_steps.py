"""The train step: gradient accumulation, frozen parameters, losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spot.models import get_config
from spot.train import losses, trainable as trainable_lib
from spot.train.trainer import make_train_step
from spot.train.models import EncoderDecoderModel

CFG = get_config("t5_1_1_tiny", dropout_rate=0.0).replace(vocab_size=64, emb_dim=16,
                                                          num_heads=2, head_dim=8, mlp_dim=32)


def _batch(b=8):
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.randint(k1, (b, 6), 2, 64)
  y = jax.random.randint(k2, (b, 3), 2, 64).at[:, -1].set(0)
  d = jnp.pad(y, ((0, 0), (1, 0)))[:, :-1]
  return {"encoder_input_tokens": x, "decoder_input_tokens": d, "decoder_target_tokens": y,
          "decoder_loss_weights": (y > 0).astype(jnp.float32)}


def test_microbatches_equal_one_big_batch():
  model = EncoderDecoderModel(CFG)
  params = model.init_params(jax.random.PRNGKey(1))
  tr, frozen = trainable_lib.split(params, r"decoder/.*")
  tx = optax.sgd(0.1)
  batch = _batch()
  outs = []
  for n in (1, 2, 4):
    step = jax.jit(make_train_step(model, tx, num_microbatches=n))
    new, _, metrics = step(tr, tx.init(tr), frozen, batch, jnp.int32(0), jax.random.PRNGKey(0))
    outs.append((new, metrics))
  for new, metrics in outs[1:]:
    for a, b in zip(jax.tree_util.tree_leaves(outs[0][0]), jax.tree_util.tree_leaves(new)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(float(metrics["loss"]), float(outs[0][1]["loss"]), rtol=1e-5)
    assert float(metrics["num_tokens"]) == float(outs[0][1]["num_tokens"]) == 16.0


def test_trainable_regex_split_and_merge():
  params = EncoderDecoderModel(CFG).init_params(jax.random.PRNGKey(1))
  tr, frozen = trainable_lib.split(params, [r"encoder/layers_0/.*", r".*relpos_bias.*"])
  names = trainable_lib.paths(tr)
  assert "encoder/layers_0/attention/query/kernel" in names
  assert "decoder/relpos_bias/rel_embedding" in names
  assert "decoder/layers_0/mlp/wo/kernel" not in names
  merged = trainable_lib.merge(tr, frozen)
  assert trainable_lib.paths(merged) == trainable_lib.paths(params)
  try:
    trainable_lib.split(params, "prompt")
  except ValueError as e:
    assert "prompt" in str(e)
  else:
    raise AssertionError("a model without a prompt has nothing to prompt-tune")


def test_cross_entropy_matches_numpy_with_smoothing_and_z_loss():
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 3, 7).astype(np.float32)
  targets = np.array([[1, 2, 0], [3, 4, 5]])
  weights = (targets > 0).astype(np.float32)
  loss, z, n = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                    jnp.asarray(weights), label_smoothing=0.1, z_loss=1e-4)
  log_z = np.log(np.exp(logits).sum(-1))
  logp = logits - log_z[..., None]
  conf, low = 0.9, 0.1 / 6
  soft = np.full(logits.shape, low)
  np.put_along_axis(soft, targets[..., None], conf, axis=-1)
  const = -(conf * np.log(conf) + 6 * low * np.log(low + 1e-20))
  ref = (-(soft * logp).sum(-1) - const + 1e-4 * log_z ** 2) * weights
  np.testing.assert_allclose(float(loss), ref.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(z), (1e-4 * log_z ** 2 * weights).sum(), rtol=1e-5)
  assert float(n) == 5.0
  ll = losses.sequence_log_likelihood(jnp.asarray(logits), jnp.asarray(targets))
  ref_ll = (np.take_along_axis(logp, targets[..., None], -1)[..., 0] * weights).sum(-1)
  np.testing.assert_allclose(np.asarray(ll), ref_ll, rtol=1e-5)


def test_adafactor_has_the_prompt_tuning_settings():
  from spot.train import optimizers
  tx = optimizers.adafactor()
  p = {"prompt": jnp.ones((100, 768))}
  state = tx.init(p)
  assert abs(float(state.hyperparams["learning_rate"]) - 0.3) < 1e-7
  g = {"prompt": jnp.full((100, 768), 1e-3)}
  upd, _ = tx.update(g, state, p)
  # Update RMS is clipped to 1 then scaled by lr; decoupled weight decay 1e-5 on top.
  step = np.asarray(upd["prompt"])
  np.testing.assert_allclose(step, -(0.3 * 1.0 + 1e-5 * 1.0), rtol=1e-4)
