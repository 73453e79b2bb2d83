"""The prompt cache's memory bound and model checks, and `spot serve`'s start-up errors."""

from __future__ import annotations

import numpy as np
import pytest

from spot import errors
from spot.library import PromptLibrary
from spot.serve.cache import PromptCache, UnknownPromptError, WrongModelError


@pytest.fixture()
def lib(tmp_path) -> PromptLibrary:
  lib = PromptLibrary(tmp_path / "lib")
  for i in range(4):
    lib.add(f"p{i}", np.full((5, 4), i, np.float32), model="t5_1_1_tiny")
  lib.add("small_prompt", np.zeros((5, 8), np.float32), model="t5_1_1_small")
  lib.add("tiny_variant", np.zeros((5, 4), np.float32), model="t5_1_1_lm100k_tiny")
  return lib


def test_cache_keeps_within_its_budget_least_recently_used_first(lib):
  one = 5 * 4 * 4  # bytes of one [5, 4] float32 prompt
  cache = PromptCache(lib, "t5_1_1_tiny", 4, max_bytes=2 * one)
  assert cache.get("p0").array[0, 0] == 0
  cache.get("p1")
  cache.get("p0")  # p0 is now the most recent
  cache.get("p2")  # evicts p1
  assert len(cache) == 2 and cache.size_bytes == 2 * one
  misses = cache.misses
  cache.get("p0")
  assert cache.misses == misses  # still cached
  cache.get("p1")
  assert cache.misses == misses + 1  # was evicted, read again
  np.testing.assert_array_equal(cache.get("p3").array, np.full((5, 4), 3, np.float32))


def test_cache_refuses_other_models_and_names_close_entries(lib):
  cache = PromptCache(lib, "t5_1_1_tiny", 4)
  with pytest.raises(WrongModelError, match="t5_1_1_small"):
    cache.get("small_prompt")
  cache.get("tiny_variant")  # same family, size and dim: servable
  with pytest.raises(UnknownPromptError) as e:
    cache.get("p9")
  assert set(e.value.close) <= {"p0", "p1", "p2", "p3"} and e.value.close
  with pytest.raises(UnknownPromptError):
    cache.get("no/such name")
  exact = PromptCache(lib, "t5_1_1_tiny", 4, exact_model=True)
  with pytest.raises(WrongModelError, match="t5_1_1_lm100k_tiny"):
    exact.get("tiny_variant")
  assert [e.name for e in cache.servable()] == ["p0", "p1", "p2", "p3", "tiny_variant"]
  assert [e.name for e in exact.servable()] == ["p0", "p1", "p2", "p3"]


def test_cache_refuses_and_does_not_list_other_methods(lib):
  from spot.library.entry import ModelInfo
  from spot.serve.cache import UnservableMethodError
  lib.add_params("ia3_entry", {"encoder/layers_0/attention/key/ia3/scale": np.ones(4)},
                 method="ia3", peft={"method": "ia3"},
                 model=ModelInfo("t5_1_1_tiny", embed_dim=4))
  cache = PromptCache(lib, "t5_1_1_tiny", 4)
  with pytest.raises(UnservableMethodError,
                     match=r"'ia3_entry' holds ia3 parameters \(method 'ia3'\).*GET /v1/prompts"):
    cache.get("ia3_entry")
  assert "ia3_entry" not in [e.name for e in cache.servable()]
  assert len(cache) == 0


def test_serve_start_up_errors_name_the_flag(tmp_path, lib):
  from spot.serve import cli
  args = ["--base", str(tmp_path / "nothing"), "--vocabulary", str(tmp_path / "none.model")]
  with pytest.raises(errors.MissingInputError, match="--library"):
    cli.build_service(cli.build_parser().parse_args(args + ["--library", str(tmp_path / "x")]))
  with pytest.raises(errors.MissingInputError, match="--vocabulary"):
    cli.build_service(cli.build_parser().parse_args(args + ["--library", str(lib.path)]))
  with pytest.raises(errors.UsageError, match="--max-batch"):
    cli.build_service(cli.build_parser().parse_args(
        args + ["--library", str(lib.path), "--max-batch", "0"]))
