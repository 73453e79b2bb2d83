"""Tests of spot.train.inference: predict_batch, score_batch, rank classification, prompts."""

from __future__ import annotations

from typing import Optional

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spot.models import T5, get_config, init_params, param_shapes
from spot.train import inference, models

EOS = 1
LENGTH = 5  # = the target length, so reference passes share one compiled program
CONFIG = get_config("t5_1_1_tiny").replace(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8,
                                           mlp_dim=32)


class ToyPrompt(nn.Module):
  """A test-only prompt: a [P, D] parameter prepended to the embedded input.

  The optional prompt input `scale` [B] multiplies the prompt per example, to
  check that `batch['prompt_inputs']` reaches the module.
  """

  length: int
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, tokens: jax.Array,
               scale: Optional[jax.Array] = None) -> jax.Array:
    del tokens
    prompt = self.param("prompt", nn.initializers.normal(1.0), (self.length, self.features))
    prompt = jnp.broadcast_to(prompt.astype(x.dtype), (x.shape[0],) + prompt.shape)
    if scale is not None:
      prompt = prompt * scale[:, None, None].astype(x.dtype)
    return jnp.concatenate([prompt, x], axis=1)


@pytest.fixture(scope="module")
def t5():
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  # Boost the EOS logit so that random-weight outputs end at varying lengths.
  kernel = params["decoder"]["logits_dense"]["kernel"]
  params["decoder"]["logits_dense"]["kernel"] = kernel.at[:, EOS].multiply(1.8)
  enc = jax.random.randint(jax.random.PRNGKey(1), (3, 7), 2, CONFIG.vocab_size)
  targets = jnp.array([[5, 9, 1, 0, 0], [7, 1, 0, 0, 0], [3, 4, 8, 6, 1]], jnp.int32)
  batch = {"encoder_input_tokens": enc.at[0, 5:].set(0), "decoder_target_tokens": targets}
  return T5(CONFIG), params, batch


@functools.partial(jax.jit, static_argnums=0)
def _teacher_forced_log_probs(model, params, batch, outputs):
  logits = model.apply({"params": params}, batch["encoder_input_tokens"],
                       inference.shift_right(outputs), jnp.ones_like(outputs),
                       enable_dropout=False, prompt_inputs=batch.get("prompt_inputs"))
  return jax.nn.log_softmax(logits, axis=-1)


def teacher_forced_log_probs(model, params, batch, outputs) -> np.ndarray:
  """Log-softmax [B, L, V] of one uncached forward pass over outputs [B, L].

  All decoder positions are valid, so position t sees exactly outputs[:, :t]:
  the argmax at t is what uncached step-by-step greedy decoding picks there,
  and for padded targets the valid positions are unaffected by the padding.
  """
  batch = {k: v for k, v in batch.items() if k in ("encoder_input_tokens", "prompt_inputs")}
  return np.asarray(_teacher_forced_log_probs(model, params, batch,
                                              jnp.asarray(outputs, jnp.int32)))


def assert_greedy(model, params, batch, tokens, scores):
  """tokens [B, L] is uncached greedy decoding's output and scores its log likelihood."""
  lp = teacher_forced_log_probs(model, params, batch, tokens)
  ended = np.cumsum(tokens == EOS, axis=-1) - (tokens == EOS) > 0
  expected = np.where(ended, 0, np.argmax(lp, axis=-1))
  np.testing.assert_array_equal(tokens, expected)
  token_lp = np.take_along_axis(lp, np.asarray(tokens)[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(scores, np.where(ended, 0, token_lp).sum(-1), rtol=1e-4, atol=1e-4)


def test_predict_greedy_matches_uncached_argmax(t5):
  model, params, batch = t5
  tokens, scores = inference.predict_batch(model, params, batch, max_decode_length=LENGTH)
  assert tokens.shape == (3, LENGTH) and scores.shape == (3,)
  tokens = np.asarray(tokens)
  assert_greedy(model, params, batch, tokens, scores)
  assert (tokens == EOS).any(-1).any()
  all_tokens, all_scores = inference.predict_batch(model, params, batch, max_decode_length=LENGTH,
                                                   return_all=True)
  assert all_tokens.shape == (3, 1, LENGTH) and all_scores.shape == (3, 1)
  np.testing.assert_array_equal(all_tokens[:, 0], tokens)


def test_predict_reuses_compiled_function(t5):
  model, params, batch = t5
  inference.predict_batch(model, params, batch, max_decode_length=LENGTH)
  before = models._jitted_decode.cache_info()  # pylint: disable=protected-access
  other = jax.tree_util.tree_map(lambda x: x * 1.01, params)
  inference.predict_batch(T5(CONFIG), other, batch, max_decode_length=LENGTH)
  after = models._jitted_decode.cache_info()  # pylint: disable=protected-access
  assert after.hits == before.hits + 1 and after.misses == before.misses


def test_predict_beam_returns_best_last(t5):
  model, params, batch = t5
  # Length defaults to that of decoder_target_tokens; beam defaults to 4 beams.
  tokens, scores = inference.predict_batch(model, params, batch, method="beam", return_all=True)
  assert tokens.shape == (3, 4, 5) and scores.shape == (3, 4)
  assert (np.diff(np.asarray(scores), axis=1) >= 0).all()
  best, best_score = inference.predict_batch(model, params, batch, method="beam")
  np.testing.assert_array_equal(best, tokens[:, -1])
  np.testing.assert_array_equal(best_score, scores[:, -1])


def test_predict_sample_is_deterministic_given_rng(t5):
  model, params, batch = t5
  sample = lambda seed: inference.predict_batch(
      model, params, batch, max_decode_length=LENGTH, method="sample", num_decodes=3, topp=0.9,
      temperature=2.0, rng=jax.random.PRNGKey(seed), return_all=True)
  (a, a_scores), (b, _), (c, _) = sample(0), sample(0), sample(1)
  assert a.shape == (3, 3, LENGTH) and a_scores.shape == (3, 3)
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(a) != np.asarray(c)).any()


def test_score_batch_equals_full_forward_log_likelihood(t5):
  model, params, batch = t5
  targets = np.asarray(batch["decoder_target_tokens"])
  lp = teacher_forced_log_probs(model, params, batch, targets)
  lp = np.take_along_axis(lp, targets[..., None], axis=-1)[..., 0]
  expected = np.where(targets > 0, lp, 0.0).sum(-1)
  np.testing.assert_allclose(inference.score_batch(model, params, batch), expected, rtol=1e-5)
  # Explicit loss weights are honoured.
  weights = (targets > 0) & (np.arange(5) < 2)
  weighted = inference.score_batch(model, params, dict(batch, decoder_loss_weights=weights))
  np.testing.assert_allclose(weighted, np.where(weights, lp, 0.0).sum(-1), rtol=1e-5)


def test_rank_classify_picks_the_most_likely_candidate(t5):
  model, params, batch = t5
  candidates = np.array([[5, 9, 1, 0, 0], [7, 1, 0, 0, 0], [3, 4, 8, 6, 1], [2, 1, 0, 0, 0]])
  scores = np.asarray(inference.score_candidates(model, params, batch, candidates))
  assert scores.shape == (3, 4)
  for c, cand in enumerate(candidates):
    one = dict(batch, decoder_target_tokens=np.broadcast_to(cand, (3, 5)))
    np.testing.assert_allclose(scores[:, c], inference.score_batch(model, params, one), rtol=1e-5)
  choice = inference.rank_classify(model, params, batch, candidates)
  np.testing.assert_array_equal(choice, scores.argmax(-1))
  # Per-example candidate sets [B, C, L].
  per_example = np.stack([candidates[::-1]] * 3)
  np.testing.assert_array_equal(inference.rank_classify(model, params, batch, per_example),
                                3 - scores.argmax(-1))


def test_decoding_with_a_prompt_matches_uncached_argmax(t5):
  _, base_params, batch = t5
  factory = lambda: ToyPrompt(length=3, features=CONFIG.emb_dim)
  model = T5(CONFIG, prompt_factory=factory)
  # The frozen model's parameters plus a prompt (cheaper than a second init).
  prompt = jax.random.normal(jax.random.PRNGKey(4), (3, CONFIG.emb_dim))
  params = dict(base_params, encoder=dict(base_params["encoder"], prompt={"prompt": prompt}))
  expected = param_shapes(CONFIG, prompt_factory=factory)
  assert (jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected)
          and expected["encoder"]["prompt"]["prompt"].shape == prompt.shape)
  batch = dict(batch, prompt_inputs={"scale": jnp.array([1.0, 0.5, 2.0])})
  encoded, valid = jax.eval_shape(functools.partial(inference.encode, model), params, batch)
  assert encoded.shape == (3, 3 + 7, CONFIG.emb_dim) and valid.shape == (3, 3 + 7)
  tokens, scores = inference.predict_batch(model, params, batch, max_decode_length=LENGTH)
  assert_greedy(model, params, batch, np.asarray(tokens), scores)
  # The prompt (and its prompt input) changes what the decoder sees.
  zero = dict(batch, prompt_inputs={"scale": jnp.zeros(3)})
  assert not np.allclose(teacher_forced_log_probs(model, params, batch, tokens),
                         teacher_forced_log_probs(model, params, zero, tokens))


def test_errors_name_the_fix(t5):
  model, params, batch = t5
  no_targets = {"encoder_input_tokens": batch["encoder_input_tokens"]}
  with pytest.raises(ValueError, match="max_decode_length"):
    inference.predict_batch(model, params, no_targets)
  with pytest.raises(ValueError, match="method="):
    inference.predict_batch(model, params, batch, method="nucleus")
  with pytest.raises(ValueError, match="topk=0 for nucleus"):
    inference.predict_batch(model, params, batch, method="sample", topk=5, topp=0.9)
  with pytest.raises(ValueError, match="decoder_target_tokens"):
    inference.score_batch(model, params, no_targets)
  with pytest.raises(ValueError, match="encoder_input_tokens"):
    inference.score_batch(model, params, {"inputs": batch["encoder_input_tokens"],
                                          "decoder_target_tokens": batch["decoder_target_tokens"]})
  with pytest.raises(ValueError, match="num_candidates"):
    inference.rank_classify(model, params, batch, np.zeros((2, 3, 4, 5), np.int32))
