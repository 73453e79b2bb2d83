"""Autoregressive decoding: greedy, temperature / top-k / nucleus sampling, beam search.

Pure, jit-friendly functions built on `lax.while_loop`, in the spirit of T5X's
`t5x/decoding.py` and with its conventions, so predictions match a T5X run:

- The decoder is reached only through a callable
  `tokens_to_logits(ids [N, 1] int32, cache) -> (logits [N, V] float32, new_cache)`
  where `cache` is any pytree of arrays (a Flax `cache` collection).
- `inputs` [B, L] int32 plays the role of T5X's decoder prompt inputs: it is
  "shifted right", `inputs[:, 0]` is ignored (the start token 0 is fed
  first) and a non-zero `inputs[:, t]` forces output position `t - 1` (teacher
  forcing of a decoder prefix). All zeros means "decode from scratch". The
  returned sequences have the same length L and do not contain the start token.
- After a sequence emits `eos_id` every later position is 0 (padding).
- Results come sorted by score in **ascending** order, as in T5X: the best
  sequence is the **last** one, `sequences[:, -1]`.
- Every function returns `(sequences [B, num_decodes, L], scores [B, num_decodes])`.

Decodes of one example are laid out contiguously in the flat batch: row
`b * num_decodes + j` is decode `j` of example `b` (see `flat_batch_expand`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from spot.models import scan

Array = jax.Array
PyTree = Any
TokensToLogits = Callable[[Array, PyTree], Tuple[Array, PyTree]]

# "Effective negative infinity": finite so that sums never become NaN.
NEG_INF = np.float32(-1.0e7)
# Candidates whose score is below this are filler, never real sequences.
_INVALID_BELOW = NEG_INF / 2
# Temperatures at or below this sample greedily (argmax), as in T5X.
MIN_TEMPERATURE = np.float32(1e-4)
# Cache leaves that are shared across the batch and never tiled or gathered:
# the per-layer decode position and cached position biases.
UNBATCHED_CACHE_LEAVES = ("cache_index", "cached_bias", "position_embedder_index")


# ------------------------------------------------------------------------------
# Batch / beam reshaping and cache helpers.
# ------------------------------------------------------------------------------


def flat_batch_expand(x: Array, k: int) -> Array:
  """Repeats every batch row `k` times: [B, ...] -> [B * k, ...].

  Row `b * k + j` of the result is row `b` of `x`. Scalars are returned as is.
  """
  x = jnp.asarray(x)
  if x.ndim == 0:
    return x
  return jnp.repeat(x, k, axis=0, total_repeat_length=x.shape[0] * k)


def unflatten_beam_dim(x: Array, batch_size: int, k: int) -> Array:
  """[B * k, ...] -> [B, k, ...]."""
  if x.shape[0] != batch_size * k:
    raise ValueError(f"Expected a leading dimension of {batch_size} * {k}, got shape {x.shape}.")
  return x.reshape((batch_size, k) + x.shape[1:])


def flatten_beam_dim(x: Array) -> Array:
  """[B, k, ...] -> [B * k, ...]."""
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _is_batched_leaf(path: tuple, leaf: Any) -> bool:
  name = getattr(path[-1], "key", getattr(path[-1], "name", None)) if path else None
  return jnp.ndim(leaf) > 0 and name not in UNBATCHED_CACHE_LEAVES


def _is_scanned_leaf(path: tuple) -> bool:
  # A scanned stack (`T5Config.scan_layers`) keeps its cache under `layers`
  # with a leading layer axis; unrolled stacks use `layers_i`.
  return any(getattr(p, "key", getattr(p, "name", None)) == scan.SCANNED for p in path)


def cache_map(fn: Callable[[Array], Array], cache: PyTree) -> PyTree:
  """Applies `fn` to the batched leaves of a decoding cache.

  Scalars (such as each layer's `cache_index`) and the leaves named in
  `UNBATCHED_CACHE_LEAVES` are left untouched: they are shared by the whole
  batch. Leaves of scanned layers ([layers, B, ...]) get `fn` per layer, so
  `fn` always sees the batch first. Works on dicts and `FrozenDict`s alike.
  """
  def apply(path, x):
    if not _is_batched_leaf(path, x):
      return x
    return jax.vmap(fn)(x) if _is_scanned_leaf(path) else fn(x)
  return jax.tree_util.tree_map_with_path(apply, cache)


def expand_cache(cache: PyTree, k: int) -> PyTree:
  """Tiles a cache for `k` beams / decodes per example: [B, ...] -> [B * k, ...]."""
  return cache_map(functools.partial(flat_batch_expand, k=k), cache)


def gather_beams(x: Array, beam_indices: Array) -> Array:
  """Selects beams per example: x [B, k_old, ...], beam_indices [B, k_new] -> [B, k_new, ...]."""
  return jax.vmap(lambda row, idx: jnp.take(row, idx, axis=0))(x, beam_indices)


def gather_cache_beams(cache: PyTree, beam_indices: Array) -> PyTree:
  """Reorders a flat beam cache: leaves [B * k, ...] -> [B * k, ...] by beam_indices [B, k]."""
  batch_size, k = beam_indices.shape
  return cache_map(
      lambda x: flatten_beam_dim(gather_beams(unflatten_beam_dim(x, batch_size, k),
                                              beam_indices)), cache)


def brevity_penalty(alpha: Union[float, Array], length: Union[int, Array]) -> Array:
  """T5X / GNMT length normalisation `((5 + length) / 6) ** alpha`."""
  return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


# ------------------------------------------------------------------------------
# Logit filters.
# ------------------------------------------------------------------------------


def topk_mask(logits: Array, topk: int) -> Array:
  """Keeps the `topk` largest logits per row and sets the rest to NEG_INF.

  Args:
    logits: [N, V] float logits.
    topk: how many to keep, 1 <= topk; values >= V keep everything. Logits tied
      with the k-th largest are kept too.

  Returns:
    [N, V] filtered logits.
  """
  if topk >= logits.shape[-1]:
    return logits
  kth = lax.top_k(logits, topk)[0][..., -1:]
  return jnp.where(logits < kth, NEG_INF, logits)


def topp_mask(logits: Array, topp: Union[float, Array]) -> Array:
  """Nucleus filter: keeps the smallest set of most likely tokens whose probability reaches `topp`.

  The most likely token is always kept, so `topp` close to 0 is greedy.

  Args:
    logits: [N, V] float logits.
    topp: cumulative probability threshold in (0, 1]; 1 keeps every token.

  Returns:
    [N, V] filtered logits.
  """
  sorted_logits = -jnp.sort(-logits, axis=-1)  # descending
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = (mass_before < topp) | (jnp.asarray(topp) >= 1.0)  # float rounding at topp=1
  keep = keep.at[..., 0].set(True)
  threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < threshold, NEG_INF, logits)


def _check_sampling_args(topk: int, topp: float, num_decodes: int) -> None:
  if not isinstance(topk, (int, np.integer)) or topk < 0:
    raise ValueError(f"topk={topk!r} must be a non-negative Python int (0 disables top-k).")
  if isinstance(topp, (float, int)) and not 0.0 <= topp <= 1.0:
    raise ValueError(f"topp={topp!r} must lie in [0, 1] (0 disables nucleus sampling).")
  if topk and (not isinstance(topp, (float, int)) or topp):
    raise ValueError(f"At most one of topk={topk} and topp={topp} may be non-zero; "
                     "pass topk=0 for nucleus sampling, or topp=0.0 for top-k sampling.")
  if num_decodes < 1:
    raise ValueError(f"num_decodes={num_decodes} must be >= 1.")


def _decode_length(inputs: Array, max_decode_len: Optional[int]) -> int:
  if inputs.ndim != 2:
    raise ValueError(f"inputs must be [batch, length] int32 decoder prompt tokens, "
                     f"got shape {inputs.shape}.")
  length = inputs.shape[1]
  if max_decode_len is None:
    return length
  if not 1 <= max_decode_len <= length:
    raise ValueError(f"max_decode_len={max_decode_len} must be in [1, inputs.shape[1]={length}]; "
                     "make `inputs` (and the cache) at least that long.")
  return int(max_decode_len)


def _forced_tokens(padded_inputs: Array, step: Array) -> Array:
  """The token forced at output position `step` ([N]; 0 means not forced).

  `padded_inputs` is `inputs` [N, L] with one extra 0 column, as step + 1 may reach L.
  """
  return lax.dynamic_index_in_dim(padded_inputs, step + 1, axis=1, keepdims=False)


def _sort_ascending(sequences: Array, scores: Array) -> Tuple[Array, Array]:
  """Sorts [B, k, L] sequences and [B, k] scores by ascending score (best last)."""
  order = jnp.argsort(scores, axis=-1)
  return gather_beams(sequences, order), jnp.take_along_axis(scores, order, axis=-1)


# ------------------------------------------------------------------------------
# Temperature sampling (and greedy decoding).
# ------------------------------------------------------------------------------


@flax.struct.dataclass
class SamplingState:
  """Loop state of `temperature_sample` (N = batch * num_decodes).

  Attributes:
    step: scalar int32, number of positions produced so far.
    sequences: [N, L + 1] int32; column 0 is the start token, column t + 1 is
      output position t.
    cur_token: [N, 1] int32, the token fed to the decoder at this step.
    ended: [N] bool, sequences that have emitted EOS.
    log_prob: [N] float32, accumulated log probability of sampled tokens.
    rng: the PRNG key of the next step.
    cache: the decoder cache pytree.
  """

  step: Array
  sequences: Array
  cur_token: Array
  ended: Array
  log_prob: Array
  rng: Array
  cache: PyTree


def _next_tokens(logits: Array, rng: Array, temperature: Union[float, Array], topk: int,
                 topp: Union[float, Array], rescale_log_probs: bool) -> Tuple[Array, Array]:
  """Picks one token per row. Returns (tokens [N] int32, their log probs [N] float32)."""
  greedy_only = isinstance(temperature, (int, float)) and temperature <= MIN_TEMPERATURE
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if greedy_only:
    tokens = greedy
    log_probs = (jnp.zeros_like(logits) if rescale_log_probs
                 else jax.nn.log_softmax(logits, axis=-1))
  else:
    t = jnp.asarray(temperature, jnp.float32)
    t = t[:, None] if t.ndim == 1 else t
    scaled = logits / jnp.maximum(t, MIN_TEMPERATURE)
    if topk:
      scaled = topk_mask(scaled, topk)
    if not isinstance(topp, (int, float)) or topp:
      scaled = topp_mask(scaled, topp)
    sampled = jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
    is_greedy = jnp.broadcast_to(t <= MIN_TEMPERATURE, logits.shape[:1] + (1,))[:, 0]
    tokens = jnp.where(is_greedy, greedy, sampled)
    log_probs = jax.nn.log_softmax(scaled if rescale_log_probs else logits, axis=-1)
    if rescale_log_probs:
      log_probs = jnp.where(is_greedy[:, None], 0.0, log_probs)
  token_log_prob = jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
  return tokens, token_log_prob


def temperature_sample(
    inputs: Array,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    decode_rng: Optional[Array] = None,
    temperature: Union[float, Array] = 1.0,
    topk: int = 1,
    topp: Union[float, Array] = 0.0,
    num_decodes: int = 1,
    max_decode_len: Optional[int] = None,
    rescale_log_probs: bool = True,
) -> Tuple[Array, Array]:
  """Samples `num_decodes` continuations per example with temperature, top-k or top-p.

  Defaults follow T5X: `topk=1` is greedy decoding; set `topk=0, topp=0.9` for
  nucleus sampling, or `topk=0, topp=0.0` for plain ancestral sampling. With
  `topk=1` the choice is the argmax, so the rng does not matter.

  Args:
    inputs: [B, L] int32 decoder prompt, shifted right (see module docstring);
      zeros to decode from scratch. L is the length of the cache.
    cache: the decoder cache for B examples (leaves [B, ...] plus scalars).
    tokens_to_logits: `(ids [N, 1], cache) -> (logits [N, V], new_cache)`.
    eos_id: end-of-sequence id; a sequence stops after emitting it.
    decode_rng: PRNG key; `jax.random.PRNGKey(0)` if None. The result is a
      deterministic function of it.
    temperature: softmax temperature, a float or a [B] array; values <= 1e-4
      decode greedily.
    topk: if > 0, sample among the `topk` most likely tokens only.
    topp: if > 0, sample from the smallest set of tokens whose probability
      reaches `topp` (nucleus sampling). At most one of topk / topp is non-zero.
    num_decodes: independent samples per example.
    max_decode_len: stop after this many output positions (<= L); default L.
    rescale_log_probs: if True (T5X's default) the returned log probs are those
      of the filtered, temperature-scaled distribution (0 for greedy); if
      False, those of the model itself.

  Returns:
    (sequences [B, num_decodes, L] int32, log_probs [B, num_decodes] float32),
    sorted by ascending log probability: the most likely sample is last.
  """
  _check_sampling_args(topk, topp, num_decodes)
  max_len = _decode_length(inputs, max_decode_len)
  batch_size, length = inputs.shape
  decode_rng = jax.random.PRNGKey(0) if decode_rng is None else decode_rng
  if not isinstance(temperature, (int, float)) and jnp.ndim(temperature) == 1:
    temperature = flat_batch_expand(temperature, num_decodes)
  padded_inputs = jnp.pad(flat_batch_expand(inputs.astype(jnp.int32), num_decodes),
                          ((0, 0), (0, 1)))
  cache = expand_cache(cache, num_decodes) if num_decodes > 1 else cache
  n = padded_inputs.shape[0]

  def cond_fn(state: SamplingState) -> Array:
    return (state.step < max_len) & ~jnp.all(state.ended)

  def body_fn(state: SamplingState) -> SamplingState:
    rng, next_rng = jax.random.split(state.rng)
    logits, new_cache = tokens_to_logits(state.cur_token, state.cache)
    token, token_log_prob = _next_tokens(logits.astype(jnp.float32), rng, temperature, topk,
                                         topp, rescale_log_probs)
    forced = _forced_tokens(padded_inputs, state.step)
    is_forced = forced != 0
    token = jnp.where(is_forced, forced, token)
    token = jnp.where(state.ended, 0, token)
    counts = ~is_forced & ~state.ended
    log_prob = state.log_prob + jnp.where(counts, token_log_prob, 0.0)
    sequences = lax.dynamic_update_slice(state.sequences, token[:, None], (0, state.step + 1))
    ended = state.ended | (counts & (token == eos_id))
    return SamplingState(step=state.step + 1, sequences=sequences, cur_token=token[:, None],
                         ended=ended, log_prob=log_prob, rng=next_rng, cache=new_cache)

  init = SamplingState(
      step=jnp.array(0, jnp.int32),
      sequences=jnp.zeros((n, length + 1), jnp.int32),
      cur_token=jnp.zeros((n, 1), jnp.int32),
      ended=jnp.zeros((n,), bool),
      log_prob=jnp.zeros((n,), jnp.float32),
      rng=decode_rng,
      cache=cache)
  final = lax.while_loop(cond_fn, body_fn, init)
  sequences = unflatten_beam_dim(final.sequences[:, 1:], batch_size, num_decodes)
  log_prob = unflatten_beam_dim(final.log_prob, batch_size, num_decodes)
  return _sort_ascending(sequences, log_prob)


def greedy_decode(
    inputs: Array,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    max_decode_len: Optional[int] = None,
) -> Tuple[Array, Array]:
  """Greedy (argmax) decoding.

  Args:
    inputs: [B, L] int32 decoder prompt, shifted right; zeros to decode from scratch.
    cache: the decoder cache for B examples.
    tokens_to_logits: `(ids [N, 1], cache) -> (logits [N, V], new_cache)`.
    eos_id: end-of-sequence id.
    max_decode_len: stop after this many output positions (<= L); default L.

  Returns:
    (sequences [B, 1, L] int32, log_probs [B, 1] float32): the model's log
    likelihood of the generated tokens (forced prefix tokens excluded).
  """
  return temperature_sample(inputs, cache, tokens_to_logits, eos_id, temperature=0.0, topk=0,
                            max_decode_len=max_decode_len, rescale_log_probs=False)


# ------------------------------------------------------------------------------
# Beam search.
# ------------------------------------------------------------------------------


@flax.struct.dataclass
class BeamState:
  """Loop state of `beam_search` (B examples, k beams, L positions).

  Attributes:
    step: scalar int32, number of positions produced so far.
    live_seqs: [B, k, L + 1] int32 unfinished hypotheses (column 0 = start token).
    live_log_probs: [B, k] float32 their log probabilities (NEG_INF for filler).
    finished_seqs: [B, k, L + 1] int32 hypotheses that ended with EOS.
    finished_scores: [B, k] float32 their length-normalised scores.
    finished_flags: [B, k] bool, which finished slots hold a real hypothesis.
    cache: the decoder cache, flat leaves [B * k, ...].
  """

  step: Array
  live_seqs: Array
  live_log_probs: Array
  finished_seqs: Array
  finished_scores: Array
  finished_flags: Array
  cache: PyTree


def _top_beams(scores: Array, k: int) -> Array:
  """Indices [B, k] of the k best entries of scores [B, M], best first."""
  return lax.top_k(scores, k)[1]


def beam_search(
    inputs: Array,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    num_decodes: int = 4,
    alpha: float = 0.6,
    max_decode_len: Optional[int] = None,
) -> Tuple[Array, Array]:
  """Beam search with T5X's brevity penalty and finished / alive bookkeeping.

  Each step extends the k live beams by every token, keeps the 2k best
  candidates (so k can continue even if k of them end), moves candidates that
  emit EOS into the finished set with score `log_prob / ((5 + len) / 6) ** alpha`
  (`len` counts output tokens including EOS), and keeps the k best non-EOS
  candidates alive, reordering the cache by their parent beam. The loop stops
  at `max_decode_len` or when no live beam can beat the worst of k finished
  ones (log probs only fall and the penalty is largest at full length).

  As in T5X, a hypothesis that reaches the maximum length without EOS is not
  finished; only if an example has no finished hypothesis at all are its live
  beams returned, scored by their raw log probability.

  Args:
    inputs: [B, L] int32 decoder prompt, shifted right; zeros to decode from
      scratch. Forced tokens add nothing to the score.
    cache: the decoder cache for B examples (leaves [B, ...] plus scalars).
    tokens_to_logits: `(ids [N, 1], cache) -> (logits [N, V], new_cache)`, N = B * k.
    eos_id: end-of-sequence id.
    num_decodes: beam size k; all k beams are returned.
    alpha: brevity-penalty exponent (>= 0); 0 ranks by raw log probability.
    max_decode_len: stop after this many output positions (<= L); default L.

  Returns:
    (sequences [B, k, L] int32, scores [B, k] float32) in ascending score
    order: the best hypothesis is `sequences[:, -1]`.
  """
  if num_decodes < 1:
    raise ValueError(f"num_decodes={num_decodes} (the beam size) must be >= 1.")
  if isinstance(alpha, (int, float)) and alpha < 0:
    raise ValueError(f"alpha={alpha} must be >= 0; the stopping rule assumes longer "
                     "hypotheses are not penalised more than shorter ones.")
  max_len = _decode_length(inputs, max_decode_len)
  batch_size, length = inputs.shape
  k = num_decodes
  padded_inputs = jnp.pad(inputs.astype(jnp.int32), ((0, 0), (0, 1)))

  def cond_fn(state: BeamState) -> Array:
    best_possible = state.live_log_probs.max(axis=1) / brevity_penalty(alpha, max_len)
    worst_finished = jnp.where(state.finished_flags.all(axis=1),
                               state.finished_scores.min(axis=1), NEG_INF)
    return (state.step < max_len) & ~jnp.all(worst_finished > best_possible)

  def body_fn(state: BeamState) -> BeamState:
    step = state.step
    ids = lax.dynamic_slice_in_dim(state.live_seqs, step, 1, axis=2)  # [B, k, 1]
    logits, new_cache = tokens_to_logits(flatten_beam_dim(ids), state.cache)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    log_probs = unflatten_beam_dim(log_probs, batch_size, k)  # [B, k, V]
    forced = _forced_tokens(padded_inputs, step)  # [B]
    forced_log_probs = jnp.where(jnp.arange(vocab) == forced[:, None, None], 0.0, NEG_INF)
    log_probs = jnp.where((forced != 0)[:, None, None], forced_log_probs, log_probs)
    candidates = (state.live_log_probs[:, :, None] + log_probs).reshape(batch_size, k * vocab)

    # The 2k best extensions of all live beams.
    cand_log_probs, cand_idx = lax.top_k(candidates, 2 * k)  # [B, 2k]
    cand_beams, cand_tokens = cand_idx // vocab, cand_idx % vocab
    cand_seqs = gather_beams(state.live_seqs, cand_beams)
    cand_seqs = lax.dynamic_update_slice(cand_seqs, cand_tokens[:, :, None], (0, 0, step + 1))
    valid = cand_log_probs > _INVALID_BELOW
    ends = valid & (cand_tokens == eos_id) & (forced == 0)[:, None]

    # Live: the k best extensions that did not end; the cache follows its parent beam.
    alive_log_probs = jnp.where(ends, cand_log_probs + NEG_INF, cand_log_probs)
    keep = _top_beams(alive_log_probs, k)
    live_seqs = gather_beams(cand_seqs, keep)
    live_log_probs = jnp.take_along_axis(alive_log_probs, keep, axis=1)
    cache = gather_cache_beams(new_cache, jnp.take_along_axis(cand_beams, keep, axis=1))

    # Finished: merge the new EOS hypotheses into the k best so far.
    new_scores = jnp.where(ends, cand_log_probs / brevity_penalty(alpha, step + 1), NEG_INF)
    all_scores = jnp.concatenate([state.finished_scores, new_scores], axis=1)
    best = _top_beams(all_scores, k)
    finished_seqs = gather_beams(jnp.concatenate([state.finished_seqs, cand_seqs], axis=1), best)
    finished_flags = jnp.take_along_axis(
        jnp.concatenate([state.finished_flags, ends], axis=1), best, axis=1)
    return BeamState(step=step + 1, live_seqs=live_seqs, live_log_probs=live_log_probs,
                     finished_seqs=finished_seqs,
                     finished_scores=jnp.take_along_axis(all_scores, best, axis=1),
                     finished_flags=finished_flags, cache=cache)

  init = BeamState(
      step=jnp.array(0, jnp.int32),
      live_seqs=jnp.zeros((batch_size, k, length + 1), jnp.int32),
      live_log_probs=jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32),
                              (batch_size, 1)),
      finished_seqs=jnp.zeros((batch_size, k, length + 1), jnp.int32),
      finished_scores=jnp.full((batch_size, k), NEG_INF, jnp.float32),
      finished_flags=jnp.zeros((batch_size, k), bool),
      cache=expand_cache(cache, k))
  final = lax.while_loop(cond_fn, body_fn, init)

  any_finished = final.finished_flags.any(axis=1)
  sequences = jnp.where(any_finished[:, None, None], final.finished_seqs, final.live_seqs)
  scores = jnp.where(any_finished[:, None], final.finished_scores, final.live_log_probs)
  return _sort_ascending(sequences[:, :, 1:], scores)


__all__ = [
    "BeamState", "MIN_TEMPERATURE", "NEG_INF", "SamplingState", "UNBATCHED_CACHE_LEAVES",
    "beam_search", "brevity_penalty", "cache_map", "expand_cache", "flat_batch_expand",
    "flatten_beam_dim", "gather_beams", "gather_cache_beams", "greedy_decode",
    "temperature_sample", "topk_mask", "topp_mask", "unflatten_beam_dim",
]
