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

Packed rows (several examples per row, SeqIO's packed features): called with
`segment_ids=` and `positions=` [B, L], a prompt module keeps the shape
[B, L, D] and writes each segment's prompt over its positions 0..P-1 (which
`PromptFeatureConverter(pack=True)` reserves), reading the per-example ids as
per-token features [B, L]. Modules that can do so set `SUPPORTS_PACKING`.

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


def prompt_slots(positions: Array, segment_ids: Array, length: int) -> Array:
  """[B, L] bool: the positions of a packed row that hold a segment's prompt."""
  return (positions < length) & (segment_ids > 0)


def _packed_output(rows: Array, embedded: Array, slots: Array) -> Array:
  """`rows` [B, L, D] at the prompt slots [B, L] of a packed row, `embedded` elsewhere."""
  return jnp.where(slots[..., None], rows.astype(embedded.dtype), embedded)


def _token_ids(ids: Optional[Array], name: str, shape: tuple[int, ...]) -> Array:
  """A per-token id feature [B, L] of a packed row (see `_select` for unpacked rows)."""
  if ids is None:
    raise ValueError(f"This prompt needs the per-token feature {name!r} (an int32 [batch, length] "
                     "array in a packed batch) in prompt_inputs; add it to the batch.")
  ids = jnp.asarray(ids, jnp.int32)
  if ids.shape != shape:
    raise ValueError(f"{name} has shape {ids.shape} in a packed batch; it must match the "
                     f"encoder row {shape} (PromptFeatureConverter(pack=True) makes it so).")
  return ids


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

  SUPPORTS_PACKING = True
  length: int = 100
  prompt_init: Callable = inits.random_uniform()

  def setup(self):
    if self.length <= 0:
      raise ValueError(f"PROMPT_LENGTH must be positive, got {self.length}.")
    self.prompt = Prompt(self.length, self.prompt_init)

  def __call__(self, embedded: Array, tokens: Array, segment_ids: Optional[Array] = None,
               positions: Optional[Array] = None, **unused: Array) -> Array:
    del tokens, unused
    prompt = self.prompt(embedded.shape[-1])
    if positions is None:
      return prefix(prompt, embedded)
    rows = jnp.take(prompt, jnp.clip(positions, 0, self.length - 1), axis=0)  # [B, L, D]
    return _packed_output(rows, embedded, prompt_slots(positions, segment_ids, self.length))


class MultiTaskPrompt(nn.Module):
  """A table of prompts [num_prompts, length, D]; example i uses row `prompt_id[i]`."""

  SUPPORTS_PACKING = True
  num_prompts: int
  length: int = 100
  prompt_init: Callable = inits.random_uniform()

  @nn.compact
  def __call__(self, embedded: Array, tokens: Array, prompt_id: Optional[Array] = None,
               segment_ids: Optional[Array] = None, positions: Optional[Array] = None,
               **unused: Array) -> Array:
    del tokens, unused
    table = self.param("prompts", nn.with_logical_partitioning(
        self.prompt_init, ("tasks", "prompt", "prompt_embed")),
        (self.num_prompts, self.length, embedded.shape[-1]), jnp.float32)
    if positions is None:
      return prefix(_select(table, prompt_id, "prompt_id", embedded.shape[0]), embedded)
    ids = jnp.clip(_token_ids(prompt_id, "prompt_id", positions.shape), 0, self.num_prompts - 1)
    rows = table[ids, jnp.clip(positions, 0, self.length - 1)]  # [B, L, D]
    return _packed_output(rows, embedded, prompt_slots(positions, segment_ids, self.length))


class FactorizedPrompt(nn.Module):
  """xGen factorized prompt: `[language sub-prompt; task sub-prompt]` per example."""

  SUPPORTS_PACKING = True
  num_languages: int
  num_tasks: int
  language_length: int = 50
  task_length: int = 50
  language_init: Callable = inits.random_uniform()
  task_init: Callable = inits.random_uniform()

  @nn.compact
  def __call__(self, embedded: Array, tokens: Array, language_id: Optional[Array] = None,
               task_id: Optional[Array] = None, segment_ids: Optional[Array] = None,
               positions: Optional[Array] = None, **unused: Array) -> Array:
    del tokens, unused
    d, b = embedded.shape[-1], embedded.shape[0]
    lang = self.param("language_prompts", nn.with_logical_partitioning(
        self.language_init, ("tasks", "prompt", "prompt_embed")),
        (self.num_languages, self.language_length, d), jnp.float32)
    task = self.param("task_prompts", nn.with_logical_partitioning(
        self.task_init, ("tasks", "prompt", "prompt_embed")),
        (self.num_tasks, self.task_length, d), jnp.float32)
    if positions is not None:
      return self._packed(lang, task, embedded, language_id, task_id, segment_ids, positions)
    combined = jnp.concatenate([_select(lang, language_id, "language_id", b),
                                _select(task, task_id, "task_id", b)], axis=1)
    return prefix(combined, embedded)

  def _packed(self, lang: Array, task: Array, embedded: Array, language_id: Optional[Array],
              task_id: Optional[Array], segment_ids: Array, positions: Array) -> Array:
    """Packed rows: positions 0..P_l-1 of a segment take its language sub-prompt,
    P_l..P_l+P_t-1 its task sub-prompt ([B, L, D] out)."""
    shape = positions.shape
    lang_ids = jnp.clip(_token_ids(language_id, "language_id", shape), 0, self.num_languages - 1)
    task_ids = jnp.clip(_token_ids(task_id, "task_id", shape), 0, self.num_tasks - 1)
    n = self.language_length
    lang_rows = lang[lang_ids, jnp.clip(positions, 0, n - 1)]
    task_rows = task[task_ids, jnp.clip(positions - n, 0, self.task_length - 1)]
    rows = jnp.where((positions < n)[..., None], lang_rows, task_rows)
    slots = prompt_slots(positions, segment_ids, n + self.task_length)
    return _packed_output(rows, embedded, slots)


def prompt_length(module: nn.Module) -> int:
  """Number of positions a prompt module prepends."""
  if isinstance(module, (PrefixPrompt, MultiTaskPrompt)):
    return module.length
  if isinstance(module, FactorizedPrompt):
    return module.language_length + module.task_length
  raise TypeError(f"Unknown prompt module {type(module).__name__}.")


def supports_packing(module: nn.Module) -> bool:
  """Whether a prompt module can write a prompt per segment of a packed row."""
  return bool(getattr(type(module), "SUPPORTS_PACKING", False))


def prompt_input_names(module: nn.Module) -> Sequence[str]:
  """The per-example features a prompt module reads from `prompt_inputs`."""
  if isinstance(module, MultiTaskPrompt):
    return ("prompt_id",)
  if isinstance(module, FactorizedPrompt):
    return ("language_id", "task_id")
  return ()
