"""Optimizers and learning-rate schedules built on optax.

`adafactor` defaults to the prompt-tuning paper's settings (REFERENCE.md 2):
learning rate 0.3 constant, decay_rate 0.8, no parameter scaling, update
clipping 1.0, decoupled weight decay 1e-5, factored second moments for dims
>= 128. These functions are the gin-facing building blocks (`OPTIMIZER`). Gradient
accumulation is not an optimizer wrapper here: the train step accumulates
micro-batches itself (`spot.train.trainer.make_train_step(num_microbatches=)`).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import optax

Schedule = Union[float, Callable[[int], float]]


def constant(value: float = 0.3) -> Schedule:
  return optax.constant_schedule(value)


def rsqrt(base: float = 1.0, warmup_steps: int = 10_000) -> Schedule:
  """T5's inverse square root decay, 1/sqrt(max(step, warmup)) times `base`."""
  import jax.numpy as jnp
  return lambda step: base / jnp.sqrt(jnp.maximum(step, warmup_steps))


def linear_warmup_cosine(peak: float, warmup_steps: int, total_steps: int,
                         end_value: float = 0.0) -> Schedule:
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, total_steps, end_value)


def linear_warmup_constant(peak: float, warmup_steps: int) -> Schedule:
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup_steps),
                               optax.constant_schedule(peak)], [warmup_steps])


def adafactor(learning_rate: Schedule = 0.3, decay_rate: float = 0.8,
              multiply_by_parameter_scale: bool = False, clipping_threshold: Optional[float] = 1.0,
              weight_decay_rate: Optional[float] = 1e-5, min_dim_size_to_factor: int = 128,
              momentum: Optional[float] = None, eps: float = 1e-30,
              factored: bool = True) -> optax.GradientTransformation:
  """Adafactor as prompt-tuning configures it (T5X `adafactor.Adafactor` semantics)."""
  # Only the learning rate is injected, so the trainer can log it from the state.
  make = optax.inject_hyperparams(optax.adafactor, static_args=(
      "min_dim_size_to_factor", "decay_rate", "decay_offset", "multiply_by_parameter_scale",
      "clipping_threshold", "momentum", "dtype_momentum", "weight_decay_rate", "eps",
      "factored", "weight_decay_mask"))
  return make(learning_rate=learning_rate, decay_rate=decay_rate,
                         multiply_by_parameter_scale=multiply_by_parameter_scale,
                         clipping_threshold=clipping_threshold, momentum=momentum,
                         weight_decay_rate=weight_decay_rate,
                         min_dim_size_to_factor=min_dim_size_to_factor, eps=eps, factored=factored)


def adam(learning_rate: Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0, grad_clip_norm: Optional[float] = None
         ) -> optax.GradientTransformation:
  """Adam (AdamW when weight_decay > 0), optionally with global-norm clipping."""
  if weight_decay:
    tx = optax.inject_hyperparams(optax.adamw, static_args=("b1", "b2", "eps", "weight_decay"))(
        learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  else:
    tx = optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps"))(
        learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx


def sgd(learning_rate: Schedule = 0.1, momentum: Optional[float] = None
        ) -> optax.GradientTransformation:
  return optax.inject_hyperparams(optax.sgd, static_args=("momentum",))(
      learning_rate=learning_rate, momentum=momentum)

