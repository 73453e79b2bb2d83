"""Fixed-shape batches for eval, scoring and inference: the one place a short batch is padded.

A jitted computation compiles once per input shape, so the last, partial batch
of a split is padded with zero rows to the batch size, and results are trimmed
back to the real rows.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np


def pad_batch(batch: Mapping[str, np.ndarray], size: int) -> tuple[dict, int]:
  """Pads every array of `batch` [n, ...] with zero rows to [size, ...]; returns (batch, n).

  Raises:
    ValueError: the arrays disagree on n, or n > size.
  """
  sizes = {k: np.shape(v)[0] for k, v in batch.items()}
  n = next(iter(sizes.values()))
  if any(s != n for s in sizes.values()) or n > size:
    raise ValueError(f"pad_batch needs arrays of one length <= size={size}; got {sizes}.")
  if n == size:
    return dict(batch), n
  return {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}, n


def split_batches(features: Mapping[str, np.ndarray], size: int
                  ) -> Iterator[tuple[dict, int]]:
  """Slices arrays [N, ...] into padded batches [size, ...]: yields (batch, real rows)."""
  total = next(iter(features.values())).shape[0]
  for start in range(0, total, size):
    yield pad_batch({k: v[start:start + size] for k, v in features.items()}, size)


ENCODER_KEYS = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
DECODER_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                "decoder_segment_ids", "decoder_positions")


def bucket_lengths(max_length: int, min_length: int = 8) -> tuple[int, ...]:
  """The padded lengths a split is cut to: powers of two in [min_length, max_length), then
  max_length (so at most log2(max_length / min_length) + 1 compiled shapes)."""
  if max_length < 1 or min_length < 1:
    raise ValueError(f"bucket_lengths needs lengths >= 1, got max_length={max_length}, "
                     f"min_length={min_length}.")
  out, n = [], min_length
  while n < max_length:
    out.append(n)
    n *= 2
  return tuple(out) + (max_length,)


def real_lengths(tokens: np.ndarray) -> np.ndarray:
  """Length of each row of tokens [N, L]: one past its last non-zero token, [N] int."""
  nonzero = np.asarray(tokens) != 0
  return np.where(nonzero.any(-1), nonzero.shape[-1] - np.argmax(nonzero[:, ::-1], -1), 0)


def _fit(length: int, buckets: tuple[int, ...]) -> int:
  return next(b for b in buckets if b >= length)


def length_batches(features: Mapping[str, np.ndarray], size: int, *, min_length: int = 8,
                   trim_targets: bool = False) -> Iterator[tuple[np.ndarray, dict, int]]:
  """Batches of similar-length examples, cut to a few fixed lengths: (indices [n], batch, n).

  Examples are sorted by encoder length (stable), taken `size` at a time, and
  each batch's encoder arrays [size, T] are cut to the smallest of
  `bucket_lengths(T, min_length)` holding its longest example; with
  `trim_targets` the decoder arrays likewise (for scoring, not for decoding,
  whose length comes from the targets). `indices` are the rows' positions in
  `features`, for putting results back in input order (`in_input_order`).
  Cutting trailing padding changes no result: padding is masked.
  """
  enc = features["encoder_input_tokens"]
  enc_buckets = bucket_lengths(enc.shape[1], min_length)
  order = np.argsort(real_lengths(enc), kind="stable")
  dec = features.get("decoder_target_tokens")
  dec_buckets = bucket_lengths(dec.shape[1], min_length) if dec is not None else ()
  for start in range(0, len(order), size):
    rows = order[start:start + size]
    chunk = {k: v[rows] for k, v in features.items()}
    cut = {k: _fit(int(real_lengths(chunk["encoder_input_tokens"]).max()), enc_buckets)
           for k in ENCODER_KEYS}
    if trim_targets and dec is not None:
      cut.update({k: _fit(int(real_lengths(chunk["decoder_target_tokens"]).max()), dec_buckets)
                  for k in DECODER_KEYS})
    chunk = {k: v[:, :cut[k]] if k in cut and np.ndim(v) == 2 else v for k, v in chunk.items()}
    padded, n = pad_batch(chunk, size)
    yield rows, padded, n


def in_input_order(parts: Iterator[tuple[np.ndarray, np.ndarray]], total: int) -> np.ndarray:
  """Results [total, ...] from (indices [n], results [n, ...]) pairs in any order."""
  out = None
  for rows, values in parts:
    values = np.asarray(values)
    if out is None:
      out = np.zeros((total,) + values.shape[1:], values.dtype)
    out[rows] = values
  if out is None:
    raise ValueError("in_input_order got no results; the split is empty.")
  return out
