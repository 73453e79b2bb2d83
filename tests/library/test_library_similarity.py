"""Both SPoT similarity metrics against direct loops, and the init combinations."""

from __future__ import annotations

import numpy as np
import pytest

from spot.library import similarity, transfer
from spot.library.errors import LibraryError


def _cos(a: np.ndarray, b: np.ndarray) -> float:
  na, nb = np.linalg.norm(a), np.linalg.norm(b)
  return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


def _avg_tokens_loop(e1: np.ndarray, e2: np.ndarray) -> float:
  m1 = sum(e1[i].astype(np.float64) for i in range(len(e1))) / len(e1)
  m2 = sum(e2[j].astype(np.float64) for j in range(len(e2))) / len(e2)
  return _cos(m1, m2)


def _per_token_loop(e1: np.ndarray, e2: np.ndarray) -> float:
  total = 0.0
  for i in range(len(e1)):
    for j in range(len(e2)):
      total += _cos(e1[i].astype(np.float64), e2[j].astype(np.float64))
  return total / (len(e1) * len(e2))


@pytest.mark.parametrize("tokens", [(1, 1), (7, 7), (5, 11)])
def test_metrics_match_loops(make_prompt, tokens):
  e1, e2 = make_prompt(1, tokens[0], 16) + 0.3, make_prompt(2, tokens[1], 16) + 0.3
  assert similarity.avg_tokens(e1, e2) == pytest.approx(_avg_tokens_loop(e1, e2), abs=1e-12)
  assert similarity.per_token(e1, e2) == pytest.approx(_per_token_loop(e1, e2), abs=1e-12)
  assert similarity.similarity(e1, e2, "per_token") == pytest.approx(_per_token_loop(e1, e2))


def test_self_similarity(make_prompt):
  e = make_prompt(3, 6, 12)
  assert similarity.avg_tokens(e, e) == pytest.approx(1.0)
  # per_token averages every pair of tokens, so it is 1 only for parallel tokens.
  assert similarity.per_token(e, e) == pytest.approx(_per_token_loop(e, e))
  assert similarity.per_token(e, e) < 1.0
  parallel = np.outer([1.0, 2.0, 3.0], e[0])
  assert similarity.per_token(parallel, parallel) == pytest.approx(1.0)


def test_zero_tokens_have_cosine_zero(make_prompt):
  e1 = make_prompt(4, 4, 8)
  e2 = make_prompt(5, 4, 8)
  e2[1] = 0.0
  assert similarity.per_token(e1, e2) == pytest.approx(_per_token_loop(e1, e2))
  assert similarity.avg_tokens(e1, np.zeros((3, 8))) == 0.0


def test_vectorised_over_many(make_prompt):
  query = make_prompt(6, 5, 8)
  candidates = [make_prompt(10 + i, 3 + i % 4, 8) for i in range(12)]
  for metric, loop in (("avg_tokens", _avg_tokens_loop), ("per_token", _per_token_loop)):
    got = similarity.similarities(query, candidates, metric)
    np.testing.assert_allclose(got, [loop(query, c) for c in candidates], atol=1e-12)
    pair = similarity.pairwise(candidates, metric)
    np.testing.assert_allclose(pair[2, 5], loop(candidates[2], candidates[5]), atol=1e-12)
    np.testing.assert_allclose(pair, pair.T, atol=1e-12)


def test_bad_input():
  with pytest.raises(ValueError, match="unknown similarity metric"):
    similarity.similarity(np.ones((2, 2)), np.ones((2, 2)), "dot")
  with pytest.raises(ValueError, match=r"\[tokens, dim\]"):
    similarity.avg_tokens(np.ones(4), np.ones((2, 4)))


def test_weights_are_normalised_similarities():
  np.testing.assert_allclose(transfer.similarity_weights([0.6, 0.3, 0.1]), [0.6, 0.3, 0.1])
  np.testing.assert_allclose(transfer.similarity_weights([2.0, 1.0, -0.5]), [2 / 3, 1 / 3, 0])
  with pytest.raises(LibraryError, match="top-1"):
    transfer.similarity_weights([-0.1, 0.0])


def test_weighted_average(make_prompt):
  p1, p2 = make_prompt(7), make_prompt(8)
  got = transfer.weighted_average([p1, p2], [0.75, 0.25])
  np.testing.assert_allclose(got, 0.75 * p1 + 0.25 * p2, rtol=1e-6)
  assert got.dtype == np.float32
  with pytest.raises(LibraryError, match="different shapes"):
    transfer.weighted_average([p1, make_prompt(9, tokens=3)], [0.5, 0.5])
