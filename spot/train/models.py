"""`EncoderDecoderModel`: a T5 module and its computation, as T5X's models.py pairs them.

The model owns everything the trainer, evaluator, decoder, demo and server
compute with it: which batch features it reads (`model_features`), the training
loss (`loss_fn`), the per-example log-likelihood (`score_batch`) and rank
classification on top of it, and decoding (`predict_batch`: greedy, beam search,
sampling through `spot.train.decoding`).

Batches are flat dicts of arrays, as SeqIO's feature converters write them:

- `encoder_input_tokens` [B, T] int32 (0 is padding),
- `decoder_target_tokens` [B, L] (padded with 0), `decoder_input_tokens` [B, L]
  (default: targets shifted right), `decoder_loss_weights` [B, L] (default:
  `decoder_target_tokens > 0`),
- the prompt's per-example features (`prompt_id`, or `language_id` and
  `task_id`) when the prompt reads them,
- SeqIO's packing features (`encoder_segment_ids`, `encoder_positions`,
  `decoder_segment_ids`, `decoder_positions`) when the batch is packed.

Anything else (strings, example ids) is dropped. Every jitted computation is
compiled once per model and static configuration (decoding method, lengths,
beam size, shapes) and cached; `params` and the batch arrays are traced
arguments, so new weights or prompts never recompile.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spot import partitioning
from spot.models import T5, T5Config
from spot.prompts import modules as prompt_modules
from spot.train import decoding
from spot.train import losses

Array = jax.Array
PyTree = Any
Batch = Mapping[str, Any]

PROMPT_FEATURES = ("prompt_id", "language_id", "task_id")
TOKEN_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                  "decoder_loss_weights")
PACKING_FEATURES = ("encoder_segment_ids", "encoder_positions", "decoder_segment_ids",
                    "decoder_positions")

DECODE_METHODS = ("greedy", "beam", "sample")
EOS_ID = 1
# T5X defaults: beam_search(num_decodes=4, alpha=0.6); sampling one decode.
DEFAULT_BEAM_SIZE = 4
DEFAULT_ALPHA = 0.6


def shift_right(targets: Array) -> Array:
  """Decoder inputs from targets: [B, L] -> [B, L], start token 0 then targets[:, :-1]."""
  return jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]


# ------------------------------------------------------------------------------
# Encoder and cached decoder steps of a bare `T5` module (used by decoding).
# ------------------------------------------------------------------------------


def encode(module: T5, params: PyTree, tokens: Array,
           prompt_inputs: Optional[Mapping[str, Array]] = None) -> Tuple[Array, Array]:
  """Runs the encoder (prompt included): tokens [B, T] -> (encoded [B, S, D], valid [B, S])."""
  return module.apply({"params": params}, tokens, enable_dropout=False,
                      prompt_inputs=prompt_inputs or None, method=module.encode)


def init_cache(module: T5, params: PyTree, encoded: Array, encoder_valid: Array,
               length: int) -> PyTree:
  """An empty decoder cache for `length` positions ([B, length, H, K] per layer).

  Built by one `decode=True` call over a dummy full-length target, whose compute
  XLA drops inside jit since only the (constant) initial cache is used.
  """
  dummy = jnp.zeros((encoded.shape[0], length), jnp.int32)
  _, variables = module.apply({"params": params}, encoded, encoder_valid, dummy, dummy,
                              enable_dropout=False, decode=True, mutable=["cache"],
                              method=module.decode)
  # Under a partitioner: batch on 'data', heads on 'model' (no-op without a mesh).
  return partitioning.constrain_cache(variables["cache"])


def make_tokens_to_logits(module: T5, params: PyTree, encoded: Array, encoder_valid: Array,
                          length: int) -> decoding.TokensToLogits:
  """A `tokens_to_logits(ids [N, 1], cache) -> (logits [N, V], cache)` for `spot.train.decoding`.

  Args:
    module: the `T5` module.
    params: its parameters.
    encoded: [N, S, D] encoder output, already repeated to the decoding batch N.
    encoder_valid: [N, S] encoder validity.
    length: the cache length (maximum decode length).
  """

  def tokens_to_logits(ids: Array, cache: PyTree) -> Tuple[Array, PyTree]:
    logits, updates = module.apply({"params": params, "cache": cache}, encoded, encoder_valid,
                                   ids, ids, enable_dropout=False, decode=True,
                                   max_decode_length=length, mutable=["cache"],
                                   method=module.decode)
    return logits[:, 0, :], updates["cache"]

  return tokens_to_logits


def _expand(x: Array, k: int) -> Array:
  return x if k == 1 else decoding.flat_batch_expand(x, k)


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


# ------------------------------------------------------------------------------
# Jitted computations, cached per model (see `EncoderDecoderModel._key`).
# ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _jitted_score(model: "EncoderDecoderModel", return_intermediates: bool) -> Callable:
  score = model._score  # pylint: disable=protected-access
  return jax.jit(functools.partial(score, return_intermediates=return_intermediates))


@functools.lru_cache(maxsize=64)
def _jitted_decode(model: "EncoderDecoderModel", **static: Any) -> Callable:
  return jax.jit(functools.partial(model._decode, **static))  # pylint: disable=protected-access


@dataclasses.dataclass(frozen=True)
class EncoderDecoderModel:
  """A T5 encoder-decoder, optionally with a prompt, and its computation.

  Attributes:
    config: the `T5Config`.
    prompt: a zero-argument factory of the prompt module (e.g.
      `functools.partial(PrefixPrompt, length=100)`), or None for no prompt.
    vocabulary: a `seqio.Vocabulary` (for decoding predictions to text).
    z_loss / label_smoothing / loss_normalizing_factor: as T5X's model gins
      (Z_LOSS=1e-4, no smoothing, plain sum over tokens).
    prompt_features: names of the per-example prompt inputs the prompt module
      reads; None (default) derives them from the prompt module.
  """

  config: T5Config
  prompt: Optional[Callable[[], nn.Module]] = None
  vocabulary: Any = None
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  loss_normalizing_factor: Optional[float] = None
  prompt_features: Optional[Tuple[str, ...]] = None
  peft: Any = None  # a spot.peft method config (LoraConfig, ...); None: none

  @property
  def module(self) -> T5:
    return T5(self.config, self.prompt, self.peft)

  @property
  def prompt_length(self) -> int:
    return 0 if self.prompt is None else prompt_modules.prompt_length(self.prompt())

  @property
  def prompt_input_names(self) -> Sequence[str]:
    if self.prompt_features is not None:
      return tuple(self.prompt_features)
    return () if self.prompt is None else tuple(prompt_modules.prompt_input_names(self.prompt()))

  @property
  def _key(self) -> "EncoderDecoderModel":
    """The model without its vocabulary: hashable, and equal for equal computations."""
    return dataclasses.replace(self, vocabulary=None)

  # -- features ---------------------------------------------------------------

  def model_features(self, batch: Batch) -> dict:
    """The features the model reads from `batch` (tokens, prompt ids, packing); the rest dropped.

    Raises:
      ValueError: the prompt reads per-example features the batch lacks.
    """
    self.prompt_inputs(batch)  # validates the prompt features
    keys = TOKEN_FEATURES + tuple(self.prompt_input_names) + PACKING_FEATURES
    return {k: batch[k] for k in keys if k in batch}

  def prompt_inputs(self, batch: Batch) -> Optional[dict]:
    """The prompt module's per-example inputs {name: [B]}, or None when it reads none."""
    names = self.prompt_input_names
    if not names:
      return None
    missing = [n for n in names if n not in batch]
    if missing:
      raise ValueError(f"The model's prompt needs batch features {missing}; the task must "
                       f"provide them (have {sorted(batch)}).")
    return {n: batch[n] for n in names}

  def _encoder_features(self, batch: Batch) -> dict:
    """Encoder tokens (validated, int32) and prompt features: what decoding reads."""
    if "encoder_input_tokens" not in batch:
      raise ValueError("batch needs 'encoder_input_tokens' [batch, length]; "
                       f"got keys {sorted(batch)}.")
    tokens = jnp.asarray(batch["encoder_input_tokens"])
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError("batch['encoder_input_tokens'] must be an integer [batch, length] "
                       f"array, got {tokens.dtype} {tokens.shape}.")
    out = {"encoder_input_tokens": tokens.astype(jnp.int32)}
    out.update(self.prompt_inputs(batch) or {})
    return out

  def _target_features(self, batch: Batch) -> dict:
    """Model features with decoder inputs and loss weights filled in, for scoring."""
    out = dict(self.model_features(batch), **self._encoder_features(batch))
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

  # -- parameters -------------------------------------------------------------

  def _init_variables(self, rng: jax.Array) -> dict:
    tokens = jnp.ones((1, 2), jnp.int32)
    inputs = {n: jnp.zeros((1,), jnp.int32) for n in self.prompt_input_names} or None
    return self.module.init(rng, tokens, tokens, tokens, enable_dropout=False,
                            prompt_inputs=inputs)

  def init_params(self, rng: jax.Array) -> dict:
    """Random parameters (unboxed); used for prompts and for tests."""
    return nn.unbox(self._init_variables(rng))["params"]

  def param_axes(self) -> dict:
    """Logical axis names of every parameter (PartitionSpec tree)."""
    abstract = jax.eval_shape(self._init_variables, jax.random.PRNGKey(0))
    return nn.get_partition_spec(abstract)["params"]

  # -- teacher-forced computation: loss and scores ------------------------------

  def logits(self, params: Mapping[str, Any], batch: Batch, *, enable_dropout: bool = False,
             dropout_rng: Optional[jax.Array] = None,
             mutable: Union[bool, Sequence[str]] = False) -> Any:
    """Teacher-forced logits [B, L, V] (with `mutable`, `(logits, variables)`)."""
    features = self.model_features(batch)
    packing = {k: features[k] for k in PACKING_FEATURES if k in features}
    rngs = {"dropout": dropout_rng} if enable_dropout and dropout_rng is not None else None
    return self.module.apply({"params": params}, features["encoder_input_tokens"],
                             features["decoder_input_tokens"], features["decoder_target_tokens"],
                             enable_dropout=enable_dropout,
                             prompt_inputs=self.prompt_inputs(features), rngs=rngs,
                             mutable=mutable, **packing)

  def loss_fn(self, params: Mapping[str, Any], batch: Batch,
              dropout_rng: Optional[jax.Array] = None) -> tuple[Array, dict]:
    """Summed training loss and metrics (loss, z_loss, num_tokens, correct, num_examples).

    Dropout is on exactly when `dropout_rng` is given.
    """
    logits = self.logits(params, batch, enable_dropout=dropout_rng is not None,
                         dropout_rng=dropout_rng)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    if weights is None:
      weights = (targets > 0).astype(jnp.float32)
    loss, z_part, num_tokens = losses.cross_entropy(
        logits, targets, weights, self.label_smoothing, self.z_loss, self.loss_normalizing_factor)
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
    if "decoder_segment_ids" in batch:  # packed: a row holds segments 1..n
      num_examples = jnp.sum(jnp.max(batch["decoder_segment_ids"], axis=-1)).astype(jnp.float32)
    else:
      num_examples = jnp.asarray(targets.shape[0], jnp.float32)
    return loss, {"loss": loss, "z_loss": z_part, "num_tokens": num_tokens, "correct": correct,
                  "num_examples": num_examples}

  loss = loss_fn  # the name the trainer used before `loss_fn`

  def _score(self, params: PyTree, features: dict, return_intermediates: bool = False) -> Any:
    """Traced body of `score_batch`."""
    out = self.logits(params, features,
                      mutable=["intermediates"] if return_intermediates else False)
    logits, variables = out if return_intermediates else (out, None)
    scores = losses.sequence_log_likelihood(logits, features["decoder_target_tokens"],
                                            features["decoder_loss_weights"])
    if return_intermediates:
      return scores, dict(variables).get("intermediates", {})
    return scores

  def score_batch(self, params: PyTree, batch: Batch, return_intermediates: bool = False) -> Any:
    """Log likelihood of each example's target: [B] float32 (T5X's `score_batch`, no z-loss).

    Sums `log p(target_t | target_<t, inputs)` over positions with
    `decoder_loss_weights` (default `decoder_target_tokens > 0`), so the EOS
    token counts and padding does not. With `return_intermediates`, returns
    `(scores, intermediates)`, the module's sown `intermediates` collection.
    """
    return _jitted_score(self._key, bool(return_intermediates))(params,
                                                                self._target_features(batch))

  def score_candidates(self, params: PyTree, batch: Batch,
                       candidates: Union[Array, np.ndarray]) -> Array:
    """Log likelihood of every candidate target of every example: [B, C] float32.

    Each example is repeated once per candidate and the [B * C] batch goes
    through `score_batch`, so a candidate's score is exactly its `score_batch`.

    Args:
      params: the model's parameters.
      batch: `encoder_input_tokens` [B, T] and the prompt features.
      candidates: token ids padded with 0 and ending in EOS, either [C, L] (the
        same label set for every example, e.g. the tokenized class names) or
        [B, C, L] (per-example choices).
    """
    enc = self._encoder_features(batch)
    batch_size = enc["encoder_input_tokens"].shape[0]
    candidates = jnp.asarray(candidates)
    if candidates.ndim == 2:
      candidates = jnp.broadcast_to(candidates[None], (batch_size,) + candidates.shape)
    if (candidates.ndim != 3 or candidates.shape[0] != batch_size
        or not jnp.issubdtype(candidates.dtype, jnp.integer)):
      raise ValueError("candidates must be integer token ids [num_candidates, length] or "
                       f"[batch={batch_size}, num_candidates, length], got {candidates.dtype} "
                       f"{candidates.shape}.")
    num = candidates.shape[1]
    expanded = {k: jnp.repeat(jnp.asarray(v), num, axis=0) for k, v in enc.items()}
    expanded["decoder_target_tokens"] = candidates.reshape(batch_size * num, -1).astype(jnp.int32)
    return self.score_batch(params, expanded).reshape(batch_size, num)

  def rank_classify(self, params: PyTree, batch: Batch,
                    candidates: Union[Array, np.ndarray]) -> Array:
    """Index of the most likely candidate target per example: [B] int32 (T5X's rank
    classification: each candidate scored by its summed log likelihood)."""
    return jnp.argmax(self.score_candidates(params, batch, candidates), -1).astype(jnp.int32)

  # -- decoding ---------------------------------------------------------------

  def _decode(self, params: PyTree, features: dict, rng: Array, temperature: Array, *,
              method: str, length: int, num_decodes: int, alpha: float, topk: int, topp: float,
              eos_id: int) -> Tuple[Array, Array]:
    """Traced body of `predict_batch`: (sequences [B, k, L], scores [B, k]), best last."""
    module = self.module
    encoded, valid = encode(module, params, features["encoder_input_tokens"],
                            self.prompt_inputs(features))
    batch_size = encoded.shape[0]
    cache = init_cache(module, params, encoded, valid, length)
    # Rows of the decoding batch are example-major: row b * k + j is decode j of b.
    k = num_decodes
    tokens_to_logits = make_tokens_to_logits(module, params, _expand(encoded, k),
                                             _expand(valid, k), length)
    inputs = jnp.zeros((batch_size, length), jnp.int32)
    if method == "greedy":
      return decoding.greedy_decode(inputs, cache, tokens_to_logits, eos_id)
    if method == "beam":
      return decoding.beam_search(inputs, cache, tokens_to_logits, eos_id, num_decodes=k,
                                  alpha=alpha)
    return decoding.temperature_sample(inputs, cache, tokens_to_logits, eos_id, decode_rng=rng,
                                       temperature=temperature, topk=topk, topp=topp,
                                       num_decodes=k)

  def predict_batch_with_aux(
      self, params: PyTree, batch: Batch, rng: Optional[Array] = None, *,
      method: str = "greedy", num_decodes: Optional[int] = None, alpha: float = DEFAULT_ALPHA,
      temperature: Union[float, Array] = 1.0, topk: int = 0, topp: float = 0.0,
      max_decode_length: Optional[int] = None, eos_id: int = EOS_ID,
      return_all_decodes: bool = False) -> Tuple[Array, dict]:
    """Decodes target token ids for a batch: `(tokens, {"scores": scores})`.

    Args:
      params: the model's parameters.
      batch: `encoder_input_tokens` [B, T] and the prompt features.
      rng: PRNG key for "sample" (default `PRNGKey(0)`); results are a
        deterministic function of it.
      method: "greedy" (argmax), "beam" (beam search) or "sample" (temperature /
        top-k / nucleus sampling).
      num_decodes: beams for "beam" (default 4, as T5X's beam_search) or samples
        for "sample" (default 1); ignored by "greedy".
      alpha: beam-search brevity-penalty exponent (T5X default 0.6).
      temperature: sampling temperature, a float or a [B] array ("sample" only).
      topk: "sample" only: sample among the k most likely tokens; 0 (default)
        disables top-k (greedy is `method="greedy"`).
      topp: "sample" only: nucleus threshold, e.g. 0.9; 0.0 disables it. At
        most one of topk / topp is non-zero.
      max_decode_length: output length L; defaults to the length of
        `batch['decoder_target_tokens']`.
      eos_id: end-of-sequence id (1 for T5 vocabularies).
      return_all_decodes: return every decode instead of the best one.

    Returns:
      tokens [B, L] int32 and scores [B] float32 of the best decode, or with
      `return_all_decodes` [B, k, L] and [B, k] in ascending score order (best
      last). Tokens after EOS are 0. Scores are the model log likelihood for
      "greedy", the brevity-normalised beam score for "beam", and the log
      probability under the filtered, temperature-scaled distribution for "sample".
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
    fn = _jitted_decode(self._key, **static)
    sequences, scores = fn(params, self._encoder_features(batch), rng,
                           jnp.asarray(temperature, jnp.float32))
    if not return_all_decodes:
      sequences, scores = sequences[:, -1], scores[:, -1]
    return sequences, {"scores": scores}

  def predict_batch(self, params: PyTree, batch: Batch, rng: Optional[Array] = None, *,
                    return_scores: bool = False, **kwargs: Any) -> Any:
    """Decoded token ids [B, L] (`predict_batch_with_aux` without aux); with
    `return_scores`, `(tokens, scores [B])`. Keyword arguments as `predict_batch_with_aux`."""
    tokens, aux = self.predict_batch_with_aux(params, batch, rng, **kwargs)
    return (tokens, aux["scores"]) if return_scores else tokens
