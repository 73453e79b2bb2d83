"""Model-facing inference: decoding, scoring and rank classification for `spot.models.T5`.

Every function takes `(model, params, batch)` where `batch` is a dict with

- `encoder_input_tokens` [B, T] int32 (0 is padding),
- optionally `decoder_target_tokens` [B, L] int32 (padded with 0),
  `decoder_input_tokens` [B, L] (default: targets shifted right with 0),
  `decoder_loss_weights` [B, L] (default: `decoder_target_tokens > 0`),
- optionally `prompt_inputs`, a dict of arrays passed to the prompt module
  through `T5.encode(..., prompt_inputs=...)`.

Other keys are ignored. Each function runs one jitted computation, compiled
once per model and static configuration (decoding method, lengths, beam size,
top-k / top-p, shapes) and reused afterwards; `params` and the batch arrays are
ordinary traced arguments, so new weights or prompts never recompile.
See docs/decoding.md for how to choose a decoding method.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spot import partitioning
from spot.train import decoding

Array = jax.Array
PyTree = Any
Batch = Mapping[str, Any]

DECODE_METHODS = ("greedy", "beam", "sample")
EOS_ID = 1
# T5X defaults: beam_search(num_decodes=4, alpha=0.6); sampling one decode.
DEFAULT_BEAM_SIZE = 4
DEFAULT_ALPHA = 0.6


def shift_right(targets: Array) -> Array:
  """Decoder inputs from targets: [B, L] -> [B, L], start token 0 then targets[:, :-1]."""
  return jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]


def _encoder_batch(batch: Batch) -> dict[str, Any]:
  """The arrays the encoder needs, validated."""
  if "encoder_input_tokens" not in batch:
    raise ValueError("batch needs 'encoder_input_tokens' [batch, length]; "
                     f"got keys {sorted(batch)}.")
  tokens = jnp.asarray(batch["encoder_input_tokens"])
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError("batch['encoder_input_tokens'] must be an integer [batch, length] array, "
                     f"got {tokens.dtype} {tokens.shape}.")
  out = {"encoder_input_tokens": tokens.astype(jnp.int32)}
  if batch.get("prompt_inputs"):
    out["prompt_inputs"] = dict(batch["prompt_inputs"])
  return out


def _target_batch(batch: Batch) -> dict[str, Any]:
  """Encoder arrays plus decoder inputs, targets and weights for teacher-forced scoring."""
  out = _encoder_batch(batch)
  if "decoder_target_tokens" not in batch:
    raise ValueError("Scoring needs batch['decoder_target_tokens'] [batch, length] (padded "
                     f"with 0); got keys {sorted(batch)}.")
  targets = jnp.asarray(batch["decoder_target_tokens"], jnp.int32)
  if targets.ndim != 2 or targets.shape[0] != out["encoder_input_tokens"].shape[0]:
    raise ValueError("batch['decoder_target_tokens'] must be [batch, length] with the batch "
                     f"size of encoder_input_tokens, got {targets.shape}.")
  out["decoder_target_tokens"] = targets
  inputs = batch.get("decoder_input_tokens")
  out["decoder_input_tokens"] = (shift_right(targets) if inputs is None
                                 else jnp.asarray(inputs, jnp.int32))
  weights = batch.get("decoder_loss_weights")
  out["decoder_loss_weights"] = (targets > 0 if weights is None else jnp.asarray(weights)
                                 ).astype(jnp.float32)
  return out


def encode(model: nn.Module, params: PyTree, batch: Batch) -> Tuple[Array, Array]:
  """Runs the encoder (prompt included): returns (encoded [B, S, D], valid [B, S])."""
  return model.apply({"params": params}, batch["encoder_input_tokens"], enable_dropout=False,
                     prompt_inputs=batch.get("prompt_inputs"), method=model.encode)


def init_cache(model: nn.Module, params: PyTree, encoded: Array, encoder_valid: Array,
               length: int) -> PyTree:
  """An empty decoder cache for `length` positions ([B, length, H, K] per layer).

  Built by one `decode=True` call over a dummy full-length target, whose compute
  XLA drops inside jit since only the (constant) initial cache is used.
  """
  dummy = jnp.zeros((encoded.shape[0], length), jnp.int32)
  _, variables = model.apply({"params": params}, encoded, encoder_valid, dummy, dummy,
                             enable_dropout=False, decode=True, mutable=["cache"],
                             method=model.decode)
  # Under a partitioner: batch on 'data', heads on 'model' (no-op without a mesh).
  return partitioning.constrain_cache(variables["cache"])


def make_tokens_to_logits(model: nn.Module, params: PyTree, encoded: Array,
                          encoder_valid: Array, length: int) -> decoding.TokensToLogits:
  """A `tokens_to_logits(ids [N, 1], cache) -> (logits [N, V], cache)` for `spot.train.decoding`.

  Args:
    model: the `T5` module.
    params: its parameters.
    encoded: [N, S, D] encoder output, already repeated to the decoding batch N.
    encoder_valid: [N, S] encoder validity.
    length: the cache length (maximum decode length).
  """

  def tokens_to_logits(ids: Array, cache: PyTree) -> Tuple[Array, PyTree]:
    logits, updates = model.apply({"params": params, "cache": cache}, encoded, encoder_valid, ids,
                                  ids, enable_dropout=False, decode=True,
                                  max_decode_length=length, mutable=["cache"],
                                  method=model.decode)
    return logits[:, 0, :], updates["cache"]

  return tokens_to_logits


def _expand(x: Array, k: int) -> Array:
  return x if k == 1 else decoding.flat_batch_expand(x, k)


# ------------------------------------------------------------------------------
# Decoding.
# ------------------------------------------------------------------------------


def _decode(model: nn.Module, params: PyTree, batch: Batch, rng: Array, temperature: Array, *,
            method: str, length: int, num_decodes: int, alpha: float, topk: int, topp: float,
            eos_id: int) -> Tuple[Array, Array]:
  """Traced body of `predict_batch`: (sequences [B, k, L], scores [B, k]), best last."""
  encoded, valid = encode(model, params, batch)
  batch_size = encoded.shape[0]
  cache = init_cache(model, params, encoded, valid, length)
  # Rows of the decoding batch are example-major: row b * k + j is decode j of b.
  k = num_decodes
  tokens_to_logits = make_tokens_to_logits(model, params, _expand(encoded, k), _expand(valid, k),
                                           length)
  inputs = jnp.zeros((batch_size, length), jnp.int32)
  if method == "greedy":
    return decoding.greedy_decode(inputs, cache, tokens_to_logits, eos_id)
  if method == "beam":
    return decoding.beam_search(inputs, cache, tokens_to_logits, eos_id, num_decodes=k,
                                alpha=alpha)
  return decoding.temperature_sample(inputs, cache, tokens_to_logits, eos_id, decode_rng=rng,
                                     temperature=temperature, topk=topk, topp=topp,
                                     num_decodes=k)


@functools.lru_cache(maxsize=64)
def _jitted_decode(model: nn.Module, **static: Any) -> Callable[..., Tuple[Array, Array]]:
  return jax.jit(functools.partial(_decode, model, **static))


def _decode_length(batch: Batch, max_decode_length: Optional[int]) -> int:
  if max_decode_length is not None:
    if int(max_decode_length) < 1:
      raise ValueError(f"max_decode_length={max_decode_length} must be >= 1.")
    return int(max_decode_length)
  for key in ("decoder_target_tokens", "decoder_input_tokens"):
    if key in batch:
      return int(np.shape(batch[key])[1])
  raise ValueError("predict_batch needs max_decode_length=... (or a batch with "
                   "'decoder_target_tokens' whose length it can use).")


def predict_batch(
    model: nn.Module,
    params: PyTree,
    batch: Batch,
    *,
    max_decode_length: Optional[int] = None,
    method: str = "greedy",
    num_decodes: Optional[int] = None,
    alpha: float = DEFAULT_ALPHA,
    temperature: Union[float, Array] = 1.0,
    topk: int = 0,
    topp: float = 0.0,
    rng: Optional[Array] = None,
    eos_id: int = EOS_ID,
    return_all: bool = False,
) -> Tuple[Array, Array]:
  """Generates target token ids for a batch.

  Args:
    model: a `spot.models.T5` (with or without a prompt).
    params: its parameter tree.
    batch: `encoder_input_tokens` [B, T], optional `prompt_inputs`; see module docstring.
    max_decode_length: output length L; defaults to the length of
      `batch['decoder_target_tokens']`.
    method: "greedy" (argmax), "beam" (beam search) or "sample" (temperature /
      top-k / nucleus sampling).
    num_decodes: beams for "beam" (default 4, as T5X's beam_search) or samples
      for "sample" (default 1); ignored by "greedy".
    alpha: beam-search brevity-penalty exponent (T5X default 0.6).
    temperature: sampling temperature, a float or a [B] array ("sample" only).
    topk: "sample" only: sample among the k most likely tokens; 0 (default)
      disables top-k. Note `decoding.temperature_sample` itself defaults to
      T5X's topk=1 (greedy); here greedy is `method="greedy"`.
    topp: "sample" only: nucleus threshold, e.g. 0.9 (T5X's nucleus gin);
      0.0 disables it. At most one of topk / topp is non-zero.
    rng: PRNG key for "sample" (default `PRNGKey(0)`); results are a
      deterministic function of it.
    eos_id: end-of-sequence id (1 for T5 vocabularies).
    return_all: return all decodes instead of the best one.

  Returns:
    (tokens [B, L] int32, scores [B] float32) for the best decode, or with
    `return_all` (tokens [B, num_decodes, L], scores [B, num_decodes]) in
    ascending score order (best last). Tokens after EOS are 0. Scores are the
    model log likelihood for "greedy", the brevity-normalised beam score for
    "beam", and the log probability under the filtered, temperature-scaled
    distribution for "sample".
  """
  if method not in DECODE_METHODS:
    raise ValueError(f"method={method!r}; expected one of {DECODE_METHODS}.")
  if method == "greedy":
    num_decodes = 1
  elif num_decodes is None:
    num_decodes = DEFAULT_BEAM_SIZE if method == "beam" else 1
  static = dict(method=method, length=_decode_length(batch, max_decode_length),
                num_decodes=int(num_decodes), alpha=float(alpha), topk=int(topk),
                topp=float(topp), eos_id=int(eos_id))
  if method != "sample":  # Keep one compiled function per greedy / beam config.
    static.update(topk=0, topp=0.0)
    temperature = 0.0
  if method != "beam":
    static.update(alpha=0.0)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  fn = _jitted_decode(model, **static)
  sequences, scores = fn(params, _encoder_batch(batch), rng, jnp.asarray(temperature, jnp.float32))
  if return_all:
    return sequences, scores
  return sequences[:, -1], scores[:, -1]


# ------------------------------------------------------------------------------
# Scoring and rank classification.
# ------------------------------------------------------------------------------


def _sequence_log_likelihood(logits: Array, targets: Array, weights: Array) -> Array:
  """sum_t weights * log softmax(logits)[targets]: [N, L, V], [N, L], [N, L] -> [N]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(token_log_probs * weights, axis=-1)


def _score(model: nn.Module, params: PyTree, batch: Batch) -> Array:
  logits = model.apply({"params": params}, batch["encoder_input_tokens"],
                       batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                       enable_dropout=False, prompt_inputs=batch.get("prompt_inputs"))
  return _sequence_log_likelihood(logits, batch["decoder_target_tokens"],
                                  batch["decoder_loss_weights"])


@functools.lru_cache(maxsize=64)
def _jitted_score(model: nn.Module) -> Callable[..., Array]:
  return jax.jit(functools.partial(_score, model))


def score_batch(model: nn.Module, params: PyTree, batch: Batch) -> Array:
  """Log likelihood of each example's target: [B] float32 (T5X's `score_batch`, z_loss 0).

  Sums `log p(target_t | target_<t, inputs)` over positions with
  `decoder_loss_weights` (default `decoder_target_tokens > 0`), so the EOS
  token counts and padding does not.
  """
  return _jitted_score(model)(params, _target_batch(batch))


def _score_candidates(model: nn.Module, params: PyTree, batch: Batch, candidates: Array) -> Array:
  """Traced body of `score_candidates`: candidates [B, C, L] -> scores [B, C]."""
  encoded, valid = encode(model, params, batch)
  batch_size, num_candidates, _ = candidates.shape
  targets = candidates.reshape(batch_size * num_candidates, -1)
  logits = model.apply({"params": params}, _expand(encoded, num_candidates),
                       _expand(valid, num_candidates), shift_right(targets), targets,
                       enable_dropout=False, method=model.decode)
  scores = _sequence_log_likelihood(logits, targets, (targets > 0).astype(jnp.float32))
  return scores.reshape(batch_size, num_candidates)


@functools.lru_cache(maxsize=64)
def _jitted_score_candidates(model: nn.Module) -> Callable[..., Array]:
  return jax.jit(functools.partial(_score_candidates, model))


def score_candidates(model: nn.Module, params: PyTree, batch: Batch,
                     candidates: Union[Array, np.ndarray]) -> Array:
  """Log likelihood of every candidate target for every example: [B, C] float32.

  The encoder runs once per example; the decoder scores the C candidates.

  Args:
    model: a `spot.models.T5`.
    params: its parameters.
    batch: `encoder_input_tokens` [B, T] and optional `prompt_inputs`.
    candidates: token ids padded with 0 and ending in EOS, either [C, L] (the
      same label set for every example, e.g. the tokenized class names) or
      [B, C, L] (per-example choices).
  """
  enc = _encoder_batch(batch)
  batch_size = enc["encoder_input_tokens"].shape[0]
  candidates = jnp.asarray(candidates)
  if candidates.ndim == 2:
    candidates = jnp.broadcast_to(candidates[None], (batch_size,) + candidates.shape)
  if (candidates.ndim != 3 or candidates.shape[0] != batch_size
      or not jnp.issubdtype(candidates.dtype, jnp.integer)):
    raise ValueError("candidates must be integer token ids [num_candidates, length] or "
                     f"[batch={batch_size}, num_candidates, length], got {candidates.dtype} "
                     f"{candidates.shape}.")
  return _jitted_score_candidates(model)(params, enc, candidates.astype(jnp.int32))


def rank_classify(model: nn.Module, params: PyTree, batch: Batch,
                  candidates: Union[Array, np.ndarray]) -> Array:
  """Index of the most likely candidate target per example: [B] int32.

  Rank classification as in T5X: each candidate target is scored by its summed
  log likelihood (`score_candidates`) and the best one wins.
  """
  return jnp.argmax(score_candidates(model, params, batch, candidates), axis=-1).astype(jnp.int32)


__all__ = [
    "DECODE_METHODS", "encode", "init_cache", "make_tokens_to_logits", "predict_batch",
    "rank_classify", "score_batch", "score_candidates", "shift_right",
]
