"""Fixtures of the prompt library tests: a fresh library and random prompts."""

from __future__ import annotations

import pathlib
from typing import Callable

import numpy as np
import pytest

from spot.library import PromptLibrary

MODEL = "t5_1_1_lm100k_base"


@pytest.fixture
def lib(tmp_path: pathlib.Path) -> PromptLibrary:
  return PromptLibrary(tmp_path / "lib")


@pytest.fixture
def make_prompt() -> Callable[..., np.ndarray]:
  """make_prompt(seed, tokens=5, dim=8) -> a random float32 [tokens, dim]."""

  def make(seed: int, tokens: int = 5, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(tokens, dim)).astype(np.float32)

  return make


@pytest.fixture
def model() -> str:
  return MODEL


@pytest.fixture
def real_prompts(shared_data: pathlib.Path) -> dict[str, pathlib.Path]:
  """The released SPoT-era prompts (100 x 768, T5 1.1 LM-adapted base)."""
  return {n: shared_data / "pretrained_prompts" / f"{n}.npy" for n in ("sst2", "mrpc", "rte")}
