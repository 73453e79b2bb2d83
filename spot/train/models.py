"""`EncoderDecoderModel`: a T5 module plus its loss, as T5X's models.py pairs them.

It owns what the trainer, evaluator and decoder need to know about a model:
the Flax module (built with or without a prompt), the vocabulary, the loss
settings, and which per-example prompt features (`prompt_id`, `language_id`,
`task_id`) a batch must carry.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from spot.models import T5, T5Config
from spot.prompts import modules as prompt_modules
from spot.train import losses

Array = jax.Array
Batch = Mapping[str, Array]

PROMPT_FEATURES = ("prompt_id", "language_id", "task_id")


@dataclasses.dataclass(frozen=True)
class EncoderDecoderModel:
  """A T5 encoder-decoder, optionally with a prompt, and its training loss.

  Attributes:
    config: the `T5Config`.
    prompt: a zero-argument factory of the prompt module (e.g.
      `functools.partial(PrefixPrompt, length=100)`), or None for no prompt.
    vocabulary: a `seqio.Vocabulary` (for decoding predictions to text).
    z_loss / label_smoothing / loss_normalizing_factor: as T5X's model gins
      (Z_LOSS=1e-4, no smoothing, plain sum over tokens).
  """

  config: T5Config
  prompt: Optional[Callable[[], nn.Module]] = None
  vocabulary: Any = None
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  loss_normalizing_factor: Optional[float] = None

  @property
  def module(self) -> T5:
    return T5(self.config, self.prompt)

  @property
  def prompt_length(self) -> int:
    return 0 if self.prompt is None else prompt_modules.prompt_length(self.prompt())

  @property
  def prompt_input_names(self) -> Sequence[str]:
    return () if self.prompt is None else tuple(prompt_modules.prompt_input_names(self.prompt()))

  def prompt_inputs(self, batch: Batch) -> Optional[dict]:
    names = self.prompt_input_names
    if not names:
      return None
    missing = [n for n in names if n not in batch]
    if missing:
      raise ValueError(f"The model's prompt needs batch features {missing}; the task must "
                       f"provide them (have {sorted(batch)}).")
    return {n: batch[n] for n in names}

  def init_params(self, rng: jax.Array) -> dict:
    """Random parameters (unboxed); used for prompts and for tests."""
    tokens = jnp.ones((1, 2), jnp.int32)
    inputs = {n: jnp.zeros((1,), jnp.int32) for n in self.prompt_input_names} or None
    module = self.module
    variables = module.init(rng, tokens, tokens, tokens, enable_dropout=False,
                            prompt_inputs=inputs)
    return nn.unbox(variables)["params"]

  def param_axes(self) -> dict:
    """Logical axis names of every parameter (PartitionSpec tree)."""
    tokens = jnp.ones((1, 2), jnp.int32)
    inputs = {n: jnp.zeros((1,), jnp.int32) for n in self.prompt_input_names} or None
    module = self.module
    abstract = jax.eval_shape(lambda r: module.init(r, tokens, tokens, tokens,
                                                    enable_dropout=False, prompt_inputs=inputs),
                              jax.random.PRNGKey(0))
    return nn.get_partition_spec(abstract)["params"]

  def logits(self, params: Mapping[str, Any], batch: Batch, *, enable_dropout: bool = False,
             dropout_rng: Optional[jax.Array] = None) -> Array:
    rngs = {"dropout": dropout_rng} if enable_dropout and dropout_rng is not None else None
    return self.module.apply({"params": params}, batch["encoder_input_tokens"],
                             batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                             enable_dropout=enable_dropout, prompt_inputs=self.prompt_inputs(batch),
                             rngs=rngs)

  def loss(self, params: Mapping[str, Any], batch: Batch,
           dropout_rng: Optional[jax.Array] = None) -> tuple[Array, dict]:
    """Training loss and metrics (loss, z_loss, token count, accuracy)."""
    logits = self.logits(params, batch, enable_dropout=dropout_rng is not None,
                         dropout_rng=dropout_rng)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    if weights is None:
      weights = (targets > 0).astype(jnp.float32)
    loss, z_part, num_tokens = losses.cross_entropy(
        logits, targets, weights, self.label_smoothing, self.z_loss, self.loss_normalizing_factor)
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
    return loss, {"loss": loss, "z_loss": z_part, "num_tokens": num_tokens, "correct": correct,
                  "num_examples": jnp.asarray(targets.shape[0], jnp.float32)}

  def score(self, params: Mapping[str, Any], batch: Batch) -> Array:
    """Per-example log-likelihood of the targets [B] (rank classification)."""
    logits = self.logits(params, batch)
    return losses.sequence_log_likelihood(logits, batch["decoder_target_tokens"],
                                          batch.get("decoder_loss_weights"))
