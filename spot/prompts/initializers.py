"""Prompt initializers: closures `(rng, shape) -> [P, D]` as in prompt-tuning.

Each factory validates its inputs eagerly and returns a Flax-style initializer.
Embedding tables may be given as arrays or as zero-argument callables (e.g.
`lambda: load_t5x_variable(ckpt, "token_embedder/embedding")`) so that a large
vocabulary is only read when the prompt is actually initialised.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from spot import errors
from spot.checkpoints import run_dir

Array = Any
Initializer = Callable[[jax.Array, Sequence[int]], jax.Array]
Embeddings = Union[np.ndarray, jax.Array, Callable[[], Any]]


def _materialize(embeddings: Embeddings) -> np.ndarray:
  table = embeddings() if callable(embeddings) else embeddings
  table = np.asarray(table, np.float32)
  if table.ndim != 2:
    raise ValueError(f"Embedding table must be [vocab, embed], got shape {table.shape}.")
  return table


def _check_shape(name: str, shape: Sequence[int], embed_dim: int) -> None:
  if len(shape) != 2:
    raise ValueError(f"{name}: a prompt is [length, embed]; asked for shape {tuple(shape)}.")
  if shape[1] != embed_dim:
    raise ValueError(f"{name}: prompt shape {tuple(shape)} but the embeddings have width "
                     f"{embed_dim}; use a prompt of shape ({shape[0]}, {embed_dim}).")


def random_uniform(scale: float = 0.5) -> Initializer:
  """Uniform on [0, scale): prompt-tuning's default `uniform(scale=0.5)`."""

  def init(rng, shape, dtype=jnp.float32):
    return jax.random.uniform(rng, tuple(shape), dtype) * scale

  return init


def sampled_vocab(embeddings: Embeddings, population_size: Optional[int] = 5000) -> Initializer:
  """Rows sampled from the first `population_size` embeddings (all if None).

  Without replacement when the population is large enough, else with, as in
  prompt-tuning's `from_sample_of_embeddings`.
  """

  def init(rng, shape, dtype=jnp.float32):
    table = _materialize(embeddings)
    _check_shape("sampled_vocab", shape, table.shape[1])
    pop = table.shape[0] if population_size is None else min(population_size, table.shape[0])
    replace = shape[0] > pop
    idx = jax.random.choice(rng, pop, (shape[0],), replace=replace)
    # jnp.take, not numpy indexing: `idx` is a tracer under jit / eval_shape.
    return jnp.take(jnp.asarray(table, dtype), idx, axis=0)

  return init


def _embed_text(table: np.ndarray, vocab: Any, text: str) -> np.ndarray:
  ids = list(vocab.encode(text))
  if not ids:
    raise ValueError(f"Text {text!r} encodes to no tokens with vocabulary {vocab}.")
  if max(ids) >= table.shape[0]:
    raise ValueError(f"Text {text!r} has token id {max(ids)} outside the embedding table "
                     f"of {table.shape[0]} rows; vocabulary and model do not match.")
  return table[ids]


def class_labels(embeddings: Embeddings, vocab: Any, labels: Sequence[str],
                 fallback: Optional[Initializer] = None) -> Initializer:
  """Rows 0..n-1 are the embedded class labels (sub-tokens averaged).

  The remaining rows come from `fallback` (sampled vocabulary in the papers'
  gin files; uniform when None). `vocab` needs an `encode(str) -> ids` method,
  e.g. `seqio.SentencePieceVocabulary`.
  """
  if not labels:
    raise ValueError("class_labels needs at least one label, e.g. ['positive', 'negative'].")

  def init(rng, shape, dtype=jnp.float32):
    table = _materialize(embeddings)
    _check_shape("class_labels", shape, table.shape[1])
    if len(labels) > shape[0]:
      raise ValueError(f"{len(labels)} class labels do not fit a prompt of length {shape[0]}.")
    rows = np.stack([_embed_text(table, vocab, label).mean(0) for label in labels])
    rng_rest, _ = jax.random.split(rng)
    rest = (fallback or random_uniform())(rng_rest, (shape[0], shape[1]))
    out = jnp.asarray(rest, dtype).at[: len(labels)].set(jnp.asarray(rows, dtype))
    return out

  return init


def from_string(embeddings: Embeddings, vocab: Any, text: str,
                fallback: Optional[Initializer] = None) -> Initializer:
  """The embedded tokens of `text`, one per row; remaining rows from `fallback`.

  A text longer than the prompt is truncated to the prompt length.
  """

  def init(rng, shape, dtype=jnp.float32):
    table = _materialize(embeddings)
    _check_shape("from_string", shape, table.shape[1])
    rows = _embed_text(table, vocab, text)[: shape[0]]
    rest = (fallback or random_uniform())(rng, (shape[0], shape[1]))
    return jnp.asarray(rest, dtype).at[: rows.shape[0]].set(jnp.asarray(rows, dtype))

  return init


def from_array(prompt: Array) -> Initializer:
  """A fixed array; a shape mismatch names both shapes."""
  value = np.asarray(prompt)

  def init(rng, shape, dtype=jnp.float32):
    del rng
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f"Prompt initial value has shape {tuple(value.shape)} but the model's "
                       f"prompt has shape {tuple(shape)}; set PROMPT_LENGTH={value.shape[0]} "
                       f"or use a prompt of shape {tuple(shape)}.")
    return jnp.asarray(value, dtype)

  return init


def load_npy(path: str) -> np.ndarray:
  """Reads a prompt `[P, D]` saved with np.save (with or without `.npy`, any epath).

  Never unpickles. A missing, truncated, pickled or non-numpy file, a prompt
  that is not 2-D floats, or one holding NaN/inf raises a DataError naming
  the file (so a bad PROMPT_FILE is never blamed on the learning rate).
  """
  from etils import epath  # local: keeps module import light
  p = epath.Path(path)
  if not p.exists():
    raise errors.MissingInputError(
        f"Prompt file {path} does not exist; pass the path of a .npy file or of a "
        f"numpy_checkpoints/checkpoint_N/{run_dir.PROMPT_FILE} file.")
  try:
    with p.open("rb") as f:
      is_npy = f.read(6) == b"\x93NUMPY"
      f.seek(0)
      value = np.load(f, allow_pickle=False)
  except ValueError as e:
    why = ("it holds pickled Python objects, which spot never loads"
           if is_npy and "pickle" in str(e).lower() else "it is not a numpy .npy file")
    raise errors.DataError(f"Prompt file {path}: {why}; save the prompt with "
                           "np.save(path, np.asarray(prompt, np.float32)).") from None
  except (EOFError, OSError) as e:
    raise errors.DataError(f"Prompt file {path} is truncated or unreadable ({e}); "
                           "export it again.") from None
  if not isinstance(value, np.ndarray) or value.ndim != 2 or not np.issubdtype(
      value.dtype, np.floating):
    shape = getattr(value, "shape", None)
    raise errors.DataError(f"Prompt file {path} holds {getattr(value, 'dtype', type(value))} "
                           f"of shape {shape}; a prompt is a float array [length, embed_dim].")
  if not np.isfinite(value).all():
    bad = int((~np.isfinite(value)).sum())
    raise errors.DataError(f"Prompt file {path} holds {bad} NaN/inf values; use a prompt from "
                           "a run that did not diverge (an earlier numpy checkpoint).")
  return value


def from_npy(path: str) -> Initializer:
  """From a .npy file, e.g. a SPoT source prompt (prompt-tuning's `from_file.gin`)."""
  return _lazy(lambda: load_npy(path), f"file {path}")


def from_t5x(checkpoint_path: str,
             variable_path: str = run_dir.PROMPT_VARIABLE) -> Initializer:
  """From one variable of a T5X checkpoint, read without loading the rest."""

  def read():
    from spot.checkpoints import load_t5x_variable
    return load_t5x_variable(checkpoint_path, variable_path)

  return _lazy(read, f"{variable_path} in {checkpoint_path}")


def from_library(load: Callable[[int], Array], what: str) -> Initializer:
  """From a prompt-library entry the caller resolved: `load(embed_dim) -> [P, D]`.

  The prompts package knows nothing of the library: the edge (from_library.gin's
  configurable in spot.workflows) passes a loader that checks the entry
  against the run's base model (the prompt's embed dim, given here) and
  returns its prompt; `what` names the entry in shape errors.
  """

  def init(rng, shape, dtype=jnp.float32):
    embed_dim = int(shape[-1])
    return _lazy(lambda: load(embed_dim), what)(rng, shape, dtype)

  return init


def _lazy(read: Callable[[], Array], what: str) -> Initializer:

  def init(rng, shape, dtype=jnp.float32):
    value = np.asarray(read())
    if tuple(value.shape) != tuple(shape):
      raise errors.DataError(
          f"Prompt from {what} has shape {tuple(value.shape)} but the model's prompt has "
          f"shape {tuple(shape)}; set PROMPT_LENGTH={value.shape[0]} (and a model of embed "
          f"dim {value.shape[-1]}) or use a matching prompt.")
    return from_array(value)(rng, shape, dtype)

  return init


def stacked(inits: Sequence[Initializer]) -> Callable[[jax.Array, Sequence[int]], jax.Array]:
  """Initialises a table [N, P, D] with one initializer per row block."""

  def init(rng, shape, dtype=jnp.float32):
    if len(inits) != shape[0]:
      raise ValueError(f"stacked: {len(inits)} initializers for {shape[0]} prompts.")
    rngs = jax.random.split(rng, len(inits))
    return jnp.stack([f(r, tuple(shape[1:]), dtype) for f, r in zip(inits, rngs)])

  return init
