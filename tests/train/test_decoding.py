"""Tests of spot.train.decoding against a tiny random T5 (and against brute force)."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spot.models import T5, get_config, init_params
from spot.train import decoding, inference

EOS = 1
LENGTH = 6


def tiny_config(vocab: int):
  return get_config("t5_1_1_tiny").replace(vocab_size=vocab, emb_dim=16, num_heads=2, head_dim=8,
                                           mlp_dim=32)


VOCAB = 6


@pytest.fixture(scope="module")
def t5():
  """(model, params, encoder tokens [4, 7]) with a vocabulary of 6 (small enough to enumerate)."""
  config = tiny_config(VOCAB)
  params = init_params(config, jax.random.PRNGKey(1))
  tokens = jax.random.randint(jax.random.PRNGKey(2), (4, 7), 2, VOCAB)
  tokens = tokens.at[0, 4:].set(0).at[1, 6:].set(0)
  return T5(config), params, tokens


@functools.lru_cache(maxsize=None)
def _jitted_decoder(model, decode_fn, k: int, length: int):
  """jit of `decode_fn(inputs, cache, tokens_to_logits, EOS, **traced_kwargs)` on the model.

  Cached, so tests sharing a `decode_fn` object share one compilation.
  """

  @jax.jit
  def run(params, enc_tokens, inputs, eos_bias, traced_kwargs):
    encoded, valid = inference.encode(model, params, {"encoder_input_tokens": enc_tokens})
    cache = inference.init_cache(model, params, encoded, valid, length)
    step = inference.make_tokens_to_logits(model, params,
                                           decoding.flat_batch_expand(encoded, k),
                                           decoding.flat_batch_expand(valid, k), length)

    def tokens_to_logits(ids, cache):
      logits, cache = step(ids, cache)
      return logits.at[:, EOS].add(eos_bias), cache

    return decode_fn(inputs, cache, tokens_to_logits, EOS, **traced_kwargs)

  return run


def decode_with(model, params, enc_tokens, decode_fn, k: int = 1, length: int = LENGTH,
                inputs=None, eos_bias: float = 0.0, **traced_kwargs):
  """Runs a decoding function on the model: (sequences, scores) as numpy arrays.

  `k` is how many rows per example the decoder sees (beams / samples);
  `inputs` the decoder prompt (default zeros); `eos_bias` is added to the EOS
  logit at every step; `traced_kwargs` (rng, alpha) go to `decode_fn` as traced values.
  """
  if inputs is None:
    inputs = jnp.zeros((enc_tokens.shape[0], length), jnp.int32)
  run = _jitted_decoder(model, decode_fn, k, length)
  return jax.tree_util.tree_map(np.asarray, run(params, enc_tokens, inputs, eos_bias,
                                                traced_kwargs))


@functools.lru_cache(maxsize=None)
def _jitted_log_probs(model):
  def log_probs(params, enc_tokens, sequences):
    logits = model.apply({"params": params}, enc_tokens, inference.shift_right(sequences),
                         jnp.ones_like(sequences), enable_dropout=False)
    return jax.nn.log_softmax(logits, axis=-1)
  return jax.jit(log_probs)


def full_log_probs(model, params, enc_tokens, sequences) -> np.ndarray:
  """Log-softmax [N, L, V] of one uncached forward pass over whole output sequences [N, L].

  Every decoder position is marked valid, so with the causal mask position t
  sees exactly the prefix sequences[:, :t], as in step-by-step decoding.
  Inputs are padded to [32k, LENGTH] so that one compiled program serves all tests.
  """
  n, length = np.shape(sequences)
  rows = -(-n // 32) * 32
  pad = lambda x, cols: np.pad(np.asarray(x, np.int32), ((0, rows - n), (0, cols - x.shape[1])))
  enc_tokens = np.asarray(enc_tokens)
  out = _jitted_log_probs(model)(params, pad(enc_tokens, enc_tokens.shape[1]),
                                 pad(np.asarray(sequences), max(length, LENGTH)))
  return np.asarray(out)[:n, :length]


def uncached_greedy(model, params, enc_tokens, length: int = LENGTH) -> np.ndarray:
  """Greedy decoding by a full forward pass per step and argmax: [B, L]."""
  out = np.zeros((enc_tokens.shape[0], length), np.int32)
  done = np.zeros(enc_tokens.shape[0], bool)
  for t in range(length):
    token = np.argmax(full_log_probs(model, params, enc_tokens, out)[:, t], axis=-1)
    out[:, t] = np.where(done, 0, token)
    done |= out[:, t] == EOS
  return out


def sequence_log_prob(log_probs: np.ndarray, sequences: np.ndarray) -> np.ndarray:
  """Sum of log probs [N, L, V] at sequences [N, L] up to and including EOS: [N]."""
  token_lp = np.take_along_axis(log_probs, sequences[..., None], axis=-1)[..., 0]
  ended_before = np.cumsum(sequences == EOS, axis=-1) - (sequences == EOS) > 0
  return np.where(ended_before, 0.0, token_lp).sum(-1)


# ------------------------------------------------------------------------------
# Helpers.
# ------------------------------------------------------------------------------


def test_expand_cache_tiles_arrays_but_not_scalars():
  cache = {"layer": {"cached_key": jnp.arange(6.0).reshape(2, 3), "cache_index": jnp.array(4)}}
  out = decoding.expand_cache(cache, 3)
  np.testing.assert_array_equal(out["layer"]["cached_key"][:, 0], [0, 0, 0, 3, 3, 3])
  assert out["layer"]["cache_index"].shape == () and int(out["layer"]["cache_index"]) == 4


def test_gather_cache_beams_reorders_within_each_example():
  cache = {"cached_value": jnp.arange(6)[:, None] * jnp.ones((1, 2)), "cache_index": jnp.array(1)}
  out = decoding.gather_cache_beams(cache, jnp.array([[2, 2, 0], [1, 0, 0]]))
  np.testing.assert_array_equal(out["cached_value"][:, 0], [2, 2, 0, 4, 3, 3])
  assert int(out["cache_index"]) == 1


def test_topk_and_topp_masks():
  logits = jnp.log(jnp.array([[0.1, 0.5, 0.15, 0.25]]))
  kept = lambda x: np.asarray(x[0] > decoding.NEG_INF / 2)
  np.testing.assert_array_equal(kept(decoding.topk_mask(logits, 2)), [0, 1, 0, 1])
  np.testing.assert_array_equal(kept(decoding.topp_mask(logits, 0.7)), [0, 1, 0, 1])
  np.testing.assert_array_equal(kept(decoding.topp_mask(logits, 0.76)), [0, 1, 1, 1])
  np.testing.assert_array_equal(kept(decoding.topp_mask(logits, 1e-6)), [0, 1, 0, 0])


def test_brevity_penalty_matches_t5x_formula():
  np.testing.assert_allclose(decoding.brevity_penalty(0.6, 7), ((5 + 7) / 6) ** 0.6, rtol=1e-6)
  assert float(decoding.brevity_penalty(0.0, 3)) == 1.0


def test_argument_errors_name_the_fix():
  ids = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="topk=0 for nucleus"):
    decoding.temperature_sample(ids, {}, None, EOS, topk=1, topp=0.9)
  with pytest.raises(ValueError, match="max_decode_len=9"):
    decoding.beam_search(ids, {}, None, EOS, max_decode_len=9)
  with pytest.raises(ValueError, match="alpha"):
    decoding.beam_search(ids, {}, None, EOS, alpha=-1.0)


# ------------------------------------------------------------------------------
# Greedy and sampling.
# ------------------------------------------------------------------------------

NUM_SAMPLES = 8
# Shared decode functions: each compiles once for all the tests that use it
# (values passed through `decode_with(**traced_kwargs)` do not recompile).
GREEDY = decoding.greedy_decode
SAMPLE = functools.partial(decoding.temperature_sample, topk=0, num_decodes=NUM_SAMPLES,
                           rescale_log_probs=False)
BEAM_1 = functools.partial(decoding.beam_search, num_decodes=1)


def ended_before(sequences: np.ndarray) -> np.ndarray:
  """Positions after the first EOS (bool, same shape)."""
  return np.cumsum(sequences == EOS, axis=-1) - (sequences == EOS) > 0


def test_cached_greedy_equals_uncached_argmax(t5):
  model, params, enc = t5
  seqs, log_probs = decode_with(model, params, enc, GREEDY)
  assert seqs.shape == (4, 1, LENGTH) and log_probs.shape == (4, 1)
  expected = uncached_greedy(model, params, enc)
  np.testing.assert_array_equal(seqs[:, 0], expected)
  # Some sequences end early (then pad with 0) and some run to full length.
  ends = (expected == EOS).any(-1)
  assert ends.any() and not ends.all(), expected
  # The log probs are the model's likelihood of the decoded tokens.
  lp = full_log_probs(model, params, enc, expected)
  np.testing.assert_allclose(log_probs[:, 0], sequence_log_prob(lp, expected), rtol=1e-4,
                             atol=1e-4)


def test_forced_decoder_prefix_is_kept_and_continued_greedily(t5):
  model, params, enc = t5
  prefix = np.array([3, 2], np.int32)
  inputs = jnp.zeros((4, LENGTH), jnp.int32).at[:, 1:3].set(prefix)  # shifted right
  seqs, _ = decode_with(model, params, enc, GREEDY, inputs=inputs)
  np.testing.assert_array_equal(seqs[:, 0, :2], np.broadcast_to(prefix, (4, 2)))
  lp = full_log_probs(model, params, enc, seqs[:, 0])
  after = ended_before(seqs[:, 0])
  for b in range(4):
    for t in range(2, LENGTH):
      assert seqs[b, 0, t] == (0 if after[b, t] else np.argmax(lp[b, t]))


def test_sampling_topk1_equals_greedy(t5):
  model, params, enc = t5
  sample = functools.partial(decoding.temperature_sample, temperature=1.7, topk=1, num_decodes=2)
  seqs, log_probs = decode_with(model, params, enc, sample, k=2,
                                decode_rng=jax.random.PRNGKey(5))
  greedy, _ = decode_with(model, params, enc, GREEDY)
  np.testing.assert_array_equal(seqs, np.repeat(greedy, 2, axis=1))
  np.testing.assert_array_equal(log_probs, 0.0)  # rescaled: one token left, probability 1


def test_sampling_is_deterministic_given_rng_and_scores_its_samples(t5):
  model, params, enc = t5
  run = lambda seed: decode_with(model, params, enc, SAMPLE, k=NUM_SAMPLES, temperature=1.0,
                                 topp=1.0, decode_rng=jax.random.PRNGKey(seed))
  (a, a_lp), (b, _), (c, _) = run(0), run(0), run(1)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  assert a.shape == (4, NUM_SAMPLES, LENGTH)
  assert (np.diff(a_lp, axis=1) >= 0).all()  # ascending: most likely sample last
  after = ended_before(a)
  assert after.any() and (a[after] == 0).all()  # padding after EOS
  # The returned log probs are the model's, recomputed by a full forward pass.
  flat = a.reshape(-1, LENGTH)
  lp = full_log_probs(model, params, np.repeat(enc, NUM_SAMPLES, axis=0), flat)
  np.testing.assert_allclose(a_lp.reshape(-1), sequence_log_prob(lp, flat), rtol=1e-4, atol=1e-3)


TOPK_2 = functools.partial(decoding.temperature_sample, topk=2, num_decodes=NUM_SAMPLES)


@pytest.mark.parametrize("topk,topp", [(2, 0.0), (0, 0.5)])
def test_topk_and_topp_sample_only_allowed_tokens(t5, topk, topp):
  model, params, enc = t5
  temperature = 3.0
  if topk:
    seqs, _ = decode_with(model, params, enc, TOPK_2, k=NUM_SAMPLES, temperature=temperature,
                          decode_rng=jax.random.PRNGKey(3))
  else:
    seqs, _ = decode_with(model, params, enc, SAMPLE, k=NUM_SAMPLES, temperature=temperature,
                          topp=topp, decode_rng=jax.random.PRNGKey(3))
  flat = seqs.reshape(-1, LENGTH)
  lp = full_log_probs(model, params, np.repeat(enc, NUM_SAMPLES, axis=0), flat)
  scaled = jnp.asarray(lp) / temperature
  mask = decoding.topk_mask(scaled, topk) if topk else decoding.topp_mask(scaled, topp)
  allowed = np.asarray(mask > decoding.NEG_INF / 2)
  picked = np.take_along_axis(allowed, flat[..., None], axis=-1)[..., 0]
  assert picked[~ended_before(flat)].all()
  # The filters do bite (fewer allowed tokens than the vocabulary) and the
  # samples still spread over the allowed set.
  assert allowed.sum(-1).min() < VOCAB
  assert max(len(set(row)) for row in flat[:, 0].reshape(4, NUM_SAMPLES)) > 1


# ------------------------------------------------------------------------------
# Beam search.
# ------------------------------------------------------------------------------


def test_beam_of_one_equals_greedy_when_nothing_ends(t5):
  # Beam search keeps EOS hypotheses aside and continues the best other token,
  # so with k=1 it is greedy exactly while no hypothesis ends (EOS suppressed).
  model, params, enc = t5
  seqs, scores = decode_with(model, params, enc, BEAM_1, eos_bias=-1e4, alpha=0.6)
  greedy, greedy_lp = decode_with(model, params, enc, GREEDY, eos_bias=-1e4)
  np.testing.assert_array_equal(seqs, greedy)
  np.testing.assert_allclose(scores, greedy_lp, rtol=1e-5)  # unfinished: raw log prob


def test_beam_of_one_with_alpha_zero_is_no_worse_than_greedy(t5):
  # With EOS allowed a beam of one may prefer an earlier-ending hypothesis
  # that greedy passed over, but never a less likely one.
  model, params, enc = t5
  seqs, scores = decode_with(model, params, enc, BEAM_1, alpha=0.0)
  greedy, greedy_lp = decode_with(model, params, enc, GREEDY)
  greedy_ended = (greedy[:, 0] == EOS).any(-1)
  assert greedy_ended.any()
  assert (scores[greedy_ended, 0] >= greedy_lp[greedy_ended, 0] - 1e-5).all()


def _enumerate_finished(vocab: int, length: int) -> np.ndarray:
  """Every output that ends with EOS within `length`, padded with 0: [M, length]."""
  others = [t for t in range(vocab) if t != EOS]
  rows = []
  for n in range(length):
    for prefix in itertools.product(others, repeat=n):
      rows.append(list(prefix) + [EOS] + [0] * (length - n - 1))
  return np.array(rows, np.int32)


def _brute_force_scores(model, params, enc_row, candidates, alpha: float) -> np.ndarray:
  """Length-normalised score of every candidate output [M, L] for one example: [M]."""
  lp = full_log_probs(model, params, np.repeat(enc_row[None], len(candidates), axis=0),
                      candidates)
  lengths = np.argmax(candidates == EOS, axis=-1) + 1
  return sequence_log_prob(lp, candidates) / ((5.0 + lengths) / 6.0) ** alpha


BEAM_ALL = functools.partial(decoding.beam_search, num_decodes=80)


@pytest.mark.parametrize("alpha", [0.6, 0.0])
def test_beam_search_equals_exhaustive_search(t5, alpha):
  # vocab 6, length 3: 1 + 5 + 25 = 31 finished outputs. A beam of 80 keeps
  # all 2k >= 25 * 6 candidates of the last step, so nothing is pruned and the
  # ranked finished set must equal brute force, brevity penalty included.
  model, params, enc = t5
  length = 3
  seqs, scores = decode_with(model, params, enc, BEAM_ALL, k=80, length=length, alpha=alpha)
  candidates = _enumerate_finished(VOCAB, length)
  m = len(candidates)
  for b in range(enc.shape[0]):
    brute = _brute_force_scores(model, params, np.asarray(enc[b]), candidates, alpha)
    order = np.argsort(brute)
    np.testing.assert_allclose(scores[b, -m:], brute[order], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(seqs[b, -1], candidates[order[-1]])
    assert (scores[b, :-m] <= decoding.NEG_INF / 2).all()  # slots with no hypothesis


def test_narrow_beam_prunes_stops_early_and_scores_consistently(t5):
  # A beam of one prunes hardest and its stopping rule fires as soon as the
  # finished hypothesis beats the best the live one could still reach. (The
  # exhaustive test above covers wide beams, ranking and cache reordering.)
  model, params, enc = t5
  alpha = 0.6
  seqs, scores = decode_with(model, params, enc, BEAM_1, alpha=alpha)
  lp = sequence_log_prob(full_log_probs(model, params, enc, seqs[:, 0]), seqs[:, 0])
  # An example whose only beam never ended falls back to it, scored by its
  # raw log probability; finished ones carry the length-normalised score.
  finished = (seqs[:, 0] == EOS).any(-1)
  assert finished.any()
  lengths = np.argmax(seqs[:, 0] == EOS, axis=-1) + 1
  expected = np.where(finished, lp / ((5.0 + lengths) / 6.0) ** alpha, lp)
  np.testing.assert_allclose(scores[:, 0], expected, rtol=1e-4, atol=1e-4)


def _counting_tokens_to_logits(ends: np.ndarray, vocab: int = 4):
  """A toy decoder that emits token 2 until step `ends[b]`, then EOS; it counts its calls.

  The cache carries the step [N]; each call appends 1 to `calls` on the host.
  """
  calls = []
  ends = jnp.asarray(ends, jnp.int32)

  def tokens_to_logits(ids, cache):
    del ids
    jax.debug.callback(lambda: calls.append(1))
    step = cache["step"]
    token = jnp.where(step >= ends, EOS, 2)
    logits = jnp.where(jnp.arange(vocab)[None] == token[:, None], 0.0, -1e4)
    return logits, {"step": step + 1}

  return tokens_to_logits, calls


@pytest.mark.parametrize("method", ["greedy", "sample"])
def test_decoding_stops_once_every_sequence_has_ended(method):
  """The while_loop ends at the step the last sequence emits EOS, not at max length."""
  ends = np.array([0, 3, 1])  # EOS at output positions 0, 3 and 1
  tokens_to_logits, calls = _counting_tokens_to_logits(ends)
  inputs = jnp.zeros((3, 16), jnp.int32)
  cache = {"step": jnp.zeros((3,), jnp.int32)}
  if method == "greedy":
    seqs, _ = decoding.greedy_decode(inputs, cache, tokens_to_logits, EOS)
  else:
    seqs, _ = decoding.temperature_sample(inputs, cache, tokens_to_logits, EOS,
                                          decode_rng=jax.random.PRNGKey(0), topk=0)
  jax.effects_barrier()
  seqs = np.asarray(seqs)[:, 0]
  expected = np.zeros((3, 16), np.int32)
  for b, e in enumerate(ends):
    expected[b, :e], expected[b, e] = 2, EOS
  np.testing.assert_array_equal(seqs, expected)
  assert len(calls) == ends.max() + 1 == 4  # 4 decoder steps of a possible 16


def test_beam_search_stops_once_no_live_beam_can_win():
  ends = np.array([1, 2])
  tokens_to_logits, calls = _counting_tokens_to_logits(np.repeat(ends, 2))  # rows b * k + j
  inputs = jnp.zeros((2, 16), jnp.int32)
  cache = {"step": jnp.zeros((2,), jnp.int32)}
  seqs, _ = decoding.beam_search(inputs, cache, tokens_to_logits, EOS, num_decodes=2, alpha=0.0)
  jax.effects_barrier()
  np.testing.assert_array_equal(np.asarray(seqs)[:, -1, :3], [[2, EOS, 0], [2, 2, EOS]])
  # Both examples' best beams end by step 2; the loop stops 12 steps before max length.
  assert len(calls) == 4
