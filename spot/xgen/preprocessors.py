"""SeqIO preprocessors for xGen: summarization, the unsupervised tasks, and ids.

The unsupervised tasks train Mix-Unsup and factorized prompts on raw text in
any language:

- `span_corruption`: T5's objective (Raffel et al., 2020): documents are
  concatenated and cut into segments sized so that, after replacing 15% of the
  tokens (spans of mean length 3) by one sentinel each, the inputs fit
  `sequence_length["inputs"]`; targets are the dropped spans, each after its
  sentinel. 512 inputs give 568-token segments and 114-token targets.
- `iid_denoising`: the same with every token dropped independently (T5's
  "i.i.d. noise, replace spans").
- `prefix_lm`: a segment split at a random point; predict the continuation.
- `lead_sentence`: a summarization-like task: predict a document's first
  sentence (or line) from the rest of it.

Randomness goes through `seqio.map_over_dataset(num_seeds=...)`, so it is
reproducible under `seqio.utils.map_seed_manager` and differs per example.
Sentinels are the ids at the top of the vocabulary (`vocab_size - 1` is
`<extra_id_0>`), as in T5 and mT5.
"""

from __future__ import annotations

from typing import Mapping, Optional

import seqio
import tensorflow as tf

from spot.xgen import languages

# Inputs length used when a task is read without a sequence length.
DEFAULT_INPUTS_LENGTH = 512
DEFAULT_DOCS_PER_BATCH = 128
DEFAULT_LINES_PER_DOCUMENT = 8
# Sentence ends: Latin/Devanagari punctuation before a space; CJK full stops
# anywhere (those scripts put no space after them).
_SENTENCE_END = r"([.!?।॥])\s+"
_CJK_SENTENCE_END = r"([。！？])\s*"


# ------------------------------------------------------------ raw text shaping


def lines_to_documents(dataset: tf.data.Dataset,
                       lines_per_document: int = DEFAULT_LINES_PER_DOCUMENT) -> tf.data.Dataset:
  """Groups lines of a one-sentence-per-line file into `{"text": ...}`
  documents of `lines_per_document` lines joined by newlines."""
  dataset = dataset.batch(lines_per_document)
  return dataset.map(lambda lines: {"text": tf.strings.reduce_join(lines, separator="\n")},
                     num_parallel_calls=tf.data.AUTOTUNE)


def text_to_targets(dataset: tf.data.Dataset, text_key: str = "text") -> tf.data.Dataset:
  """`{"text"}` -> `{"inputs": "", "targets": text}`, ready for `seqio.preprocessors.tokenize`."""
  return dataset.map(lambda x: {"inputs": tf.constant(""), "targets": x[text_key]},
                     num_parallel_calls=tf.data.AUTOTUNE)


def summarization(dataset: tf.data.Dataset, source_key: str = "source",
                  target_key: str = "target") -> tf.data.Dataset:
  """Article -> summary as `{"inputs", "targets"}` text, skipping empty pairs."""
  dataset = dataset.map(lambda x: {"inputs": x[source_key], "targets": x[target_key]},
                        num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.filter(lambda x: tf.logical_and(tf.strings.length(x["inputs"]) > 0,
                                                 tf.strings.length(x["targets"]) > 0))


def lead_sentence(dataset: tf.data.Dataset, text_key: str = "text") -> tf.data.Dataset:
  """`{"text"}` -> `{"inputs": rest of the document, "targets": first sentence}`.

  Sentences end at a newline, at sentence-final punctuation followed by
  space, or at a CJK full stop; documents of a single sentence are dropped.
  """

  def split(x):
    text = tf.strings.regex_replace(x[text_key], _SENTENCE_END, "\\1\n")
    text = tf.strings.regex_replace(text, _CJK_SENTENCE_END, "\\1\n")
    parts = tf.strings.strip(tf.strings.split(text, "\n"))
    parts = tf.boolean_mask(parts, tf.strings.length(parts) > 0)
    rest = tf.strings.reduce_join(parts[1:], separator=" ")
    first = tf.cond(tf.size(parts) > 0, lambda: parts[0], lambda: tf.constant(""))
    return {"inputs": rest, "targets": first}

  dataset = dataset.map(split, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.filter(lambda x: tf.logical_and(tf.strings.length(x["inputs"]) > 0,
                                                 tf.strings.length(x["targets"]) > 0))


def add_ids(dataset: tf.data.Dataset, language: str, task: str) -> tf.data.Dataset:
  """Adds the fixed ids `language` and `task` (int32) and their names
  `language_code` and `task_name` (string), which factorized prompts read."""
  ids = {
      "language": tf.constant(languages.language_id(language), tf.int32),
      "task": tf.constant(languages.task_id(task), tf.int32),
      "language_code": tf.constant(language),
      "task_name": tf.constant(task),
  }
  return dataset.map(lambda x: {**x, **ids}, num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------------------------------- token stream segments


def concat_and_split(dataset: tf.data.Dataset, segment_length: int, key: str = "targets",
                     docs_per_batch: int = DEFAULT_DOCS_PER_BATCH) -> tf.data.Dataset:
  """Concatenates the token ids of `docs_per_batch` documents at a time and cuts
  them into `{key: ids}` segments of `segment_length` (the last one shorter)."""
  if segment_length < 2:
    raise ValueError(f"segment_length must be at least 2, got {segment_length}")
  dataset = dataset.map(lambda x: x[key]).ragged_batch(docs_per_batch)

  def split(batch):
    flat = batch.flat_values
    n = tf.size(flat, out_type=tf.int64)
    full = n // segment_length
    rest = n - full * segment_length
    lengths = tf.concat([tf.fill([full], tf.constant(segment_length, tf.int64)),
                         tf.boolean_mask(tf.reshape(rest, [1]), tf.reshape(rest > 0, [1]))], 0)
    return tf.data.Dataset.from_tensor_slices(tf.RaggedTensor.from_row_lengths(flat, lengths))

  dataset = dataset.flat_map(split)
  return dataset.map(lambda ids: {key: ids}).filter(lambda x: tf.size(x[key]) >= 2)


def span_corruption_lengths(inputs_length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tuple[int, int]:
  """(segment length, targets length) such that a corrupted segment plus EOS
  fills `inputs_length` exactly as in T5 (512 -> (568, 114))."""

  def lengths(tokens: int) -> tuple[int, int]:
    noise = int(round(tokens * noise_density))
    spans = max(1, int(round(noise / mean_noise_span_length)))
    return tokens - noise + spans + 1, noise + spans + 1

  tokens = 2
  while lengths(tokens + 1)[0] <= inputs_length:
    tokens += 1
  return tokens, lengths(tokens)[1]


# ----------------------------------------------------------------- noise masks


def _random_segmentation(num_items: tf.Tensor, num_segments: tf.Tensor,
                         seed: tf.Tensor) -> tf.Tensor:
  """Lengths of a uniformly random split of `num_items` into `num_segments`
  non-empty segments."""
  starts = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
  order = tf.argsort(tf.random.stateless_uniform(tf.shape(starts), seed))
  starts = tf.pad(tf.gather(starts, order), [[1, 0]])
  segment = tf.cumsum(starts)
  return tf.math.unsorted_segment_sum(tf.ones_like(segment), segment, num_segments)


def random_spans_noise_mask(length: tf.Tensor, noise_density: float,
                            mean_noise_span_length: float, seeds: tf.Tensor) -> tf.Tensor:
  """Boolean [length] mask of noise spans alternating with kept spans, the first
  span kept; about `noise_density` of the tokens, spans of mean length
  `mean_noise_span_length`. Needs `length >= 2` and two seeds."""
  length = tf.cast(length, tf.int32)
  noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
  noise = tf.clip_by_value(noise, 1, length - 1)
  spans = tf.cast(tf.round(tf.cast(noise, tf.float32) / mean_noise_span_length), tf.int32)
  spans = tf.clip_by_value(spans, 1, tf.minimum(noise, length - noise))
  noise_lengths = _random_segmentation(noise, spans, seeds[0])
  kept_lengths = _random_segmentation(length - noise, spans, seeds[1])
  interleaved = tf.reshape(tf.stack([kept_lengths, noise_lengths], axis=1), [-1])
  starts = tf.cumsum(interleaved)[:-1]
  span_index = tf.cumsum(tf.math.unsorted_segment_sum(tf.ones_like(starts), starts, length))
  return tf.equal(span_index % 2, 1)


def iid_noise_mask(length: tf.Tensor, noise_density: float, seeds: tf.Tensor) -> tf.Tensor:
  """Boolean [length] mask, each token noise with probability `noise_density`;
  the first token is always kept (as with spans) and at least one is noise."""
  mask = tf.random.stateless_uniform([length], seeds[0]) < noise_density
  mask = tf.tensor_scatter_nd_update(mask, [[0]], [False])
  return tf.tensor_scatter_nd_update(mask, [[length - 1]],
                                     [tf.logical_or(mask[-1], ~tf.reduce_any(mask))])


def spans_to_sentinels(tokens: tf.Tensor, mask: tf.Tensor, first_sentinel: tf.Tensor) -> tf.Tensor:
  """Replaces each run of `mask` tokens by one sentinel, counting down from
  `first_sentinel` (span i gets `first_sentinel - i`)."""
  previous = tf.pad(mask[:-1], [[1, 0]])
  first = tf.logical_and(mask, ~previous)
  later = tf.logical_and(mask, previous)
  sentinels = first_sentinel + 1 - tf.cumsum(tf.cast(first, tokens.dtype))
  tokens = tf.where(first, sentinels, tokens)
  return tf.boolean_mask(tokens, ~later)


def _inputs_length(sequence_length: Optional[Mapping[str, int]]) -> int:
  return int((sequence_length or {}).get("inputs") or DEFAULT_INPUTS_LENGTH)


def _sentinel(output_features: Mapping[str, seqio.Feature]) -> int:
  return output_features["targets"].vocabulary.vocab_size - 1


# --------------------------------------------------------- tokenized objectives


def _denoise(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
             make_mask) -> tf.data.Dataset:
  sentinel = _sentinel(output_features)

  @seqio.map_over_dataset(num_seeds=2)
  def corrupt(x, seeds):
    tokens = x["targets"]
    mask = make_mask(tf.size(tokens), seeds)
    first = tf.constant(sentinel, tokens.dtype)
    return {"inputs": spans_to_sentinels(tokens, mask, first),
            "targets": spans_to_sentinels(tokens, ~mask, first)}

  return corrupt(dataset)


def span_corruption(dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]],
                    output_features: Mapping[str, seqio.Feature], noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0) -> tf.data.Dataset:
  """T5 span corruption on tokenized `targets` (see the module docstring)."""
  segment, _ = span_corruption_lengths(_inputs_length(sequence_length), noise_density,
                                       mean_noise_span_length)
  dataset = concat_and_split(dataset, segment)
  return _denoise(dataset, output_features,
                  lambda n, seeds: random_spans_noise_mask(n, noise_density,
                                                           mean_noise_span_length, seeds))


def iid_denoising(dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]],
                  output_features: Mapping[str, seqio.Feature],
                  noise_density: float = 0.15) -> tf.data.Dataset:
  """i.i.d. token noise, each run of noise replaced by one sentinel."""
  # With i.i.d. noise nearly every noise token starts its own span: about
  # (1 - density) * n + density * (1 - density) * n input tokens.
  inputs_length = _inputs_length(sequence_length)
  segment = max(2, int((inputs_length - 1) / (1 - noise_density ** 2)))
  dataset = concat_and_split(dataset, segment)
  return _denoise(dataset, output_features,
                  lambda n, seeds: iid_noise_mask(n, noise_density, seeds))


def prefix_lm(dataset: tf.data.Dataset,
              sequence_length: Optional[Mapping[str, int]]) -> tf.data.Dataset:
  """Cuts the token stream into segments that fill inputs and targets, and
  splits each at a uniformly random point: inputs = prefix, targets = rest."""
  inputs_length = _inputs_length(sequence_length)
  targets_length = int((sequence_length or {}).get("targets") or inputs_length)
  dataset = concat_and_split(dataset, max(2, inputs_length + targets_length - 2))

  @seqio.map_over_dataset(num_seeds=1)
  def split(x, seed):
    tokens = x["targets"]
    n = tf.size(tokens)
    low = tf.maximum(1, n - (targets_length - 1))
    high = tf.maximum(low, tf.minimum(n - 1, inputs_length - 1))
    k = tf.random.stateless_uniform([], seed, minval=low, maxval=high + 1, dtype=tf.int32)
    return {"inputs": tokens[:k], "targets": tokens[k:]}

  return split(dataset)
