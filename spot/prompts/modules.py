"""Prompt modules that `spot.models.T5` creates under `encoder/prompt`.

Each is called as `prompt(embedded [B, T, D], tokens [B, T], **prompt_inputs)`
and returns [B, P + T, D] with the prompt prefixed (Lester et al., 2021).

- `PrefixPrompt`: one [P, D] prompt for every example. Its parameter path is
  `encoder/prompt/prompt/prompt`, as in prompt-tuning, so T5X-trained prompts
  and `numpy_checkpoints/.../encoder.prompt.prompt.prompt` files map directly.
- `MultiTaskPrompt`: a table [N, P, D]; each example picks row `prompt_id`, so
  one batch can mix tasks (mixed-task inference in one forward pass).
- `FactorizedPrompt` (xGen): a language sub-prompt table [L, P_l, D] and a task
  sub-prompt table [K, P_t, D]; each example selects `language_id` and
  `task_id` and gets `[language; task]`. Any pair can be combined at inference,
  including pairs never seen in training.

Prompt parameters carry the logical axes ("prompt", "prompt_embed") (and
"tasks" for tables), which the partitioning rules replicate, so a prompt can be
saved as one numpy array.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from spot.prompts import initializers as inits

Array = jax.Array


def prefix(prompt: Array, embedded: Array) -> Array:
  """[B, P, D] or [P, D] prompt + [B, T, D] input -> [B, P + T, D]."""
  if prompt.ndim == 2:
    prompt = jnp.broadcast_to(prompt[None], (embedded.shape[0],) + prompt.shape)
  return jnp.concatenate([prompt.astype(embedded.dtype), embedded], axis=1)


def _select(table: Array, ids: Optional[Array], name: str, batch: int) -> Array:
  """Rows of `table` [N, P, D] chosen per example by `ids` [B] -> [B, P, D]."""
  if ids is None:
    raise ValueError(f"This prompt needs the per-example feature {name!r} (an int32 [batch] "
                     f"array) in prompt_inputs; add it to the batch.")
  ids = jnp.asarray(ids, jnp.int32).reshape(-1)
  if ids.shape[0] != batch:
    raise ValueError(f"{name} has {ids.shape[0]} entries for a batch of {batch}.")
  return jnp.take(table, ids, axis=0, mode="clip")


class Prompt(nn.Module):
  """The trainable [length, embed] prompt variable, named `prompt`."""

  length: int
  prompt_init: Callable = inits.random_uniform()

  @nn.compact
  def __call__(self, embed_dim: int) -> Array:
    return self.param("prompt", nn.with_logical_partitioning(self.prompt_init, ("prompt", "prompt_embed")),
                      (self.length, embed_dim), jnp.float32)


class PrefixPrompt(nn.Module):
  """A single prompt prefixed to every example's embedded input."""

  length: int = 100
  prompt_init: Callable = inits.random_uniform()

  def setup(self):
    if self.length <= 0:
      raise ValueError(f"PROMPT_LENGTH must be positive, got {self.length}.")
    self.prompt = Prompt(self.length, self.prompt_init)

  def __call__(self, embedded: Array, tokens: Array, **unused: Array) -> Array:
    del tokens, unused
    return prefix(self.prompt(embedded.shape[-1]), embedded)


class MultiTaskPrompt(nn.Module):
  """A table of prompts [num_prompts, length, D]; example i uses row `prompt_id[i]`."""

  num_prompts: int
  length: int = 100
  prompt_init: Callable = inits.random_uniform()

  @nn.compact
  def __call__(self, embedded: Array, tokens: Array, prompt_id: Optional[Array] = None,
               **unused: Array) -> Array:
    del tokens, unused
    table = self.param("prompts", nn.with_logical_partitioning(
        self.prompt_init, ("tasks", "prompt", "prompt_embed")),
        (self.num_prompts, self.length, embedded.shape[-1]), jnp.float32)
    return prefix(_select(table, prompt_id, "prompt_id", embedded.shape[0]), embedded)


class FactorizedPrompt(nn.Module):
  """xGen factorized prompt: `[language sub-prompt; task sub-prompt]` per example."""

  num_languages: int
  num_tasks: int
  language_length: int = 50
  task_length: int = 50
  language_init: Callable = inits.random_uniform()
  task_init: Callable = inits.random_uniform()

  @nn.compact
  def __call__(self, embedded: Array, tokens: Array, language_id: Optional[Array] = None,
               task_id: Optional[Array] = None, **unused: Array) -> Array:
    del tokens, unused
    d, b = embedded.shape[-1], embedded.shape[0]
    lang = self.param("language_prompts", nn.with_logical_partitioning(
        self.language_init, ("tasks", "prompt", "prompt_embed")),
        (self.num_languages, self.language_length, d), jnp.float32)
    task = self.param("task_prompts", nn.with_logical_partitioning(
        self.task_init, ("tasks", "prompt", "prompt_embed")),
        (self.num_tasks, self.task_length, d), jnp.float32)
    combined = jnp.concatenate([_select(lang, language_id, "language_id", b),
                                _select(task, task_id, "task_id", b)], axis=1)
    return prefix(combined, embedded)


def prompt_length(module: nn.Module) -> int:
  """Number of positions a prompt module prepends."""
  if isinstance(module, (PrefixPrompt, MultiTaskPrompt)):
    return module.length
  if isinstance(module, FactorizedPrompt):
    return module.language_length + module.task_length
  raise TypeError(f"Unknown prompt module {type(module).__name__}.")


def prompt_input_names(module: nn.Module) -> Sequence[str]:
  """The per-example features a prompt module reads from `prompt_inputs`."""
  if isinstance(module, MultiTaskPrompt):
    return ("prompt_id",)
  if isinstance(module, FactorizedPrompt):
    return ("language_id", "task_id")
  return ()
