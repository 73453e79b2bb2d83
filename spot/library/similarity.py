"""Task-embedding similarity, as defined in SPoT (Vu et al., ACL 2022, sec. 3.2).

A task embedding `e` is a prompt checkpoint, an array [L, D] of L prompt
tokens. For two tasks with embeddings e1 [L1, D] and e2 [L2, D]:

- `avg_tokens` (COSINE SIMILARITY OF AVERAGE TOKENS):
  cos(1/L1 sum_i e1_i, 1/L2 sum_j e2_j).
- `per_token` (PER-TOKEN AVERAGE COSINE SIMILARITY):
  1/(L1 L2) sum_i sum_j cos(e1_i, e2_j).

Both reduce to a dot product of one summary vector [D] per embedding:
`avg_tokens` of the unit-normalised mean token, `per_token` of the mean of the
unit-normalised tokens (the double sum factorises). Ranking N entries is then a
single [N, D] @ [D] product, which is what the library's index stores.

The cosine of a zero vector is taken as 0. `per_token` of an embedding with
itself is not 1 unless all its tokens point the same way.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

METRICS = ("avg_tokens", "per_token")
_EPS = 1e-12


def check_metric(metric: str) -> str:
  if metric not in METRICS:
    raise ValueError(f"unknown similarity metric {metric!r}; use one of {', '.join(METRICS)}.")
  return metric


def _unit(x: np.ndarray) -> np.ndarray:
  """Rows of `x` scaled to unit L2 norm; all-zero rows stay zero."""
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.maximum(norm, _EPS) * (norm > _EPS)


def _as_embedding(embedding: np.ndarray) -> np.ndarray:
  e = np.asarray(embedding, dtype=np.float64)
  if e.ndim != 2 or e.shape[0] == 0:
    raise ValueError(f"a task embedding must be a non-empty [tokens, dim] array, got shape "
                     f"{np.shape(embedding)}.")
  return e


def avg_tokens_vector(embedding: np.ndarray) -> np.ndarray:
  """Unit-normalised mean token [D]: `avg_tokens(a, b) == a_vec @ b_vec`."""
  return _unit(_as_embedding(embedding).mean(axis=0))


def per_token_vector(embedding: np.ndarray) -> np.ndarray:
  """Mean of the unit-normalised tokens [D]: `per_token(a, b) == a_vec @ b_vec`."""
  return _unit(_as_embedding(embedding)).mean(axis=0)


SUMMARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "avg_tokens": avg_tokens_vector,
    "per_token": per_token_vector,
}


def summary_vector(embedding: np.ndarray, metric: str) -> np.ndarray:
  """The [D] float64 vector whose dot products give `metric`."""
  return SUMMARY[check_metric(metric)](embedding)


def summary_matrix(embeddings: Sequence[np.ndarray], metric: str) -> np.ndarray:
  """Stacked summary vectors [N, D] of N embeddings (token counts may differ)."""
  fn = SUMMARY[check_metric(metric)]
  return np.stack([fn(e) for e in embeddings]) if len(embeddings) else np.zeros((0, 0))


def avg_tokens(e1: np.ndarray, e2: np.ndarray) -> float:
  """Cosine similarity of the average tokens of two task embeddings."""
  return float(avg_tokens_vector(e1) @ avg_tokens_vector(e2))


def per_token(e1: np.ndarray, e2: np.ndarray) -> float:
  """Average cosine similarity over every pair of tokens of two task embeddings."""
  return float(per_token_vector(e1) @ per_token_vector(e2))


def similarity(e1: np.ndarray, e2: np.ndarray, metric: str = "avg_tokens") -> float:
  """`metric` ("avg_tokens" or "per_token") between two task embeddings."""
  return float(summary_vector(e1, metric) @ summary_vector(e2, metric))


def similarities(query: np.ndarray, candidates: Sequence[np.ndarray] | np.ndarray,
                 metric: str = "avg_tokens") -> np.ndarray:
  """`metric` between one query embedding and each of N candidates -> [N]."""
  q = summary_vector(query, metric)
  return summary_matrix(list(candidates), metric) @ q if len(candidates) else np.zeros(0)


def pairwise(embeddings: Sequence[np.ndarray], metric: str = "avg_tokens") -> np.ndarray:
  """[N, N] matrix of `metric` between every pair of N embeddings."""
  m = summary_matrix(list(embeddings), metric)
  return m @ m.T
