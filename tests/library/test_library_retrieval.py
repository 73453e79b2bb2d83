"""Ranking: against direct numpy, model filtering, and on the released prompts."""

from __future__ import annotations

import numpy as np
import pytest

from spot.library import (EntryNotFoundError, LibraryError, ModelMismatchError, init_prompt,
                          mixture_tasks, pairwise, rank, similarity)


def _numpy_ranking(query, candidates, metric):
  scores = {n: similarity.similarity(query, e, metric) for n, e in candidates.items()}
  return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


@pytest.mark.parametrize("metric", ["avg_tokens", "per_token"])
def test_rank_matches_numpy(lib, make_prompt, model, metric):
  embeddings = {f"t{i:02d}": make_prompt(100 + i, tokens=2 + i % 5) + 0.2 for i in range(20)}
  for name, e in embeddings.items():
    lib.add(name, make_prompt(int(name[1:])), model=model, embeddings={"step_10": e})
  query = make_prompt(7, tokens=6) + 0.2
  got = rank(lib, query, metric=metric)
  want = _numpy_ranking(query, embeddings, metric)
  assert [n for n, _ in got] == [n for n, _ in want]
  np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
  assert rank(lib, query, metric=metric, top_k=3) == got[:3]
  by_entry = rank(lib, "t03", metric=metric)
  others = {n: e for n, e in embeddings.items() if n != "t03"}
  assert [n for n, _ in by_entry] == [n for n, _ in _numpy_ranking(embeddings["t03"], others,
                                                                    metric)]
  assert "t00" not in dict(rank(lib, query, metric=metric, exclude=["t00", "zz"]))


def test_models_are_never_mixed(lib, make_prompt, model):
  lib.add("base_a", make_prompt(1), model=model)
  lib.add("base_b", make_prompt(2), model=model)
  lib.add("small_a", make_prompt(1, dim=4), model="t5_small")
  lib.add("other_8", make_prompt(3), model="another_d8_model")  # same dim, other model
  with pytest.raises(ModelMismatchError, match="several base models.*--model"):
    rank(lib, make_prompt(5))
  assert [n for n, _ in rank(lib, make_prompt(5), model=model)] in (["base_a", "base_b"],
                                                                     ["base_b", "base_a"])
  assert [n for n, _ in rank(lib, "base_a")] == ["base_b"]
  assert rank(lib, "small_a") == []
  with pytest.raises(ModelMismatchError, match="dim 8 but model 't5_small' has 4"):
    rank(lib, make_prompt(5), model="t5_small")
  with pytest.raises(ModelMismatchError, match="no valid entries for model 'nope'"):
    rank(lib, make_prompt(5), model="nope")
  with pytest.raises(ModelMismatchError, match="belongs to model"):
    rank(lib, "base_a", model="t5_small")
  with pytest.raises(EntryNotFoundError, match="did you mean base_b, base_a"):
    rank(lib, "base_c")
  names, matrix = pairwise(lib, model=model)
  assert names == ["base_a", "base_b"] and matrix.shape == (2, 2)


def test_init_and_mixture(lib, make_prompt, model):
  lib.add("mnli", make_prompt(1), model=model, task="glue_mnli", embeddings={"e": make_prompt(11)})
  lib.add("mnli_2", make_prompt(2), model=model, task="glue_mnli")
  lib.add("qnli", make_prompt(3), model=model, task="glue_qnli")
  ranked = rank(lib, make_prompt(11), top_k=3)
  assert ranked[0] == ("mnli", pytest.approx(1.0, abs=1e-6))
  np.testing.assert_array_equal(init_prompt(lib, ranked, "top1"), make_prompt(1))
  positive = [(n, s) for n, s in ranked if s > 0]
  weights = np.array([s for _, s in positive]) / sum(s for _, s in positive)
  want = sum(w * lib.prompt(n).astype(np.float64) for w, (n, _) in zip(weights, positive))
  np.testing.assert_allclose(init_prompt(lib, ranked, "weighted_average"), want, rtol=1e-5,
                             atol=1e-6)
  tasks = mixture_tasks(lib, ranked, target_task="super_glue_cb")
  assert tasks[-1] == "super_glue_cb" and sorted(tasks[:-1]) == ["glue_mnli", "glue_qnli"]
  lib.add("untasked", make_prompt(4), model=model)
  with pytest.raises(LibraryError, match="--task"):
    mixture_tasks(lib, [("untasked", 1.0)])


def test_real_prompts(lib, real_prompts, model):
  """The released sst2/mrpc/rte prompts: ranking equals numpy, self-similarity 1."""
  arrays = {n: np.load(p) for n, p in real_prompts.items()}
  for name, array in arrays.items():
    assert array.shape == (100, 768)
    lib.add(name, array, model=model, task=f"glue_{name}")
  for metric in ("avg_tokens", "per_token"):
    for name, array in arrays.items():
      got = rank(lib, array, metric=metric)
      want = _numpy_ranking(array, arrays, metric)
      assert [n for n, _ in got] == [n for n, _ in want]
      np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
      if metric == "avg_tokens":
        assert got[0] == (name, pytest.approx(1.0, abs=1e-5))
      assert [n for n, _ in rank(lib, name, metric=metric)] == [n for n, _ in want[1:]]
  # The two sentence-pair tasks are closer to each other than to sentiment.
  assert rank(lib, "rte")[0][0] == "mrpc" and rank(lib, "mrpc")[0][0] == "rte"
