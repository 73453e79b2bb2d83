"""Token-level losses matching T5X's `compute_weighted_cross_entropy`.

Cross entropy with optional label smoothing (minus its normalising constant, so
a perfect prediction has loss 0) and z-loss `z_loss * logsumexp(logits)^2`,
summed over weighted tokens and divided by `loss_normalizing_factor` when set.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def cross_entropy(logits: Array, targets: Array, weights: Optional[Array] = None,
                  label_smoothing: float = 0.0, z_loss: float = 0.0,
                  loss_normalizing_factor: Optional[float] = None) -> tuple[Array, Array, Array]:
  """Weighted cross entropy.

  Args:
    logits: [B, L, V] float32.
    targets: [B, L] int token ids.
    weights: [B, L] loss weights (T5X's decoder_loss_weights); default targets > 0.
    label_smoothing: mass moved uniformly onto the other V - 1 tokens.
    z_loss: coefficient of the log-partition penalty.
    loss_normalizing_factor: divide the summed loss by this (None: plain sum).

  Returns:
    (loss, z_loss_part, weight_sum): scalars; the loss includes the z-loss part.
  """
  if logits.shape[:-1] != targets.shape:
    raise ValueError(f"logits {logits.shape} and targets {targets.shape} disagree.")
  vocab = logits.shape[-1]
  weights = (targets > 0).astype(jnp.float32) if weights is None else weights.astype(jnp.float32)
  logits = logits.astype(jnp.float32)
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  normalizing = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  target_lp = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  if label_smoothing:
    token_loss = -(confidence * target_lp + low * (log_probs.sum(-1) - target_lp)) - normalizing
  else:
    token_loss = -target_lp
  z_part = z_loss * jnp.square(log_z)
  total = jnp.sum((token_loss + z_part) * weights)
  z_total = jnp.sum(z_part * weights)
  if loss_normalizing_factor is not None:
    total, z_total = total / loss_normalizing_factor, z_total / loss_normalizing_factor
  return total, z_total, jnp.sum(weights)


def sequence_log_likelihood(logits: Array, targets: Array,
                            weights: Optional[Array] = None) -> Array:
  """Per-example sum of target log-probabilities [B] (for scoring / rank classification)."""
  weights = (targets > 0).astype(jnp.float32) if weights is None else weights.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  lp = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.sum(lp * weights, axis=-1)
