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
