"""Fixtures of the serving tests: the shared tiny T5X base, a library of three entries
and a running server on 127.0.0.1 (a free port)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

PROMPT_LENGTH = 4
ENTRIES = ("rte_prompt", "sst2_prompt", "mrpc_prompt")
MAX_BATCH = 4
MAX_INPUT_LENGTH = 32
MAX_DECODE_LENGTH = 8


@pytest.fixture(scope="session")
def engine(shared_data: pathlib.Path):
  """The shared tiny T5X checkpoint on the T5 vocabulary, with small buckets."""
  from spot.serve import engine as engine_lib
  return engine_lib.load_engine(
      str(shared_data / "t5x_tiny_checkpoint" / "checkpoint_3"),
      str(shared_data / "t5_vocab" / "spiece.model"),
      shapes=engine_lib.Shapes.create(MAX_BATCH, MAX_INPUT_LENGTH, 8),
      default_decoding=engine_lib.Decoding(max_length=MAX_DECODE_LENGTH))


@pytest.fixture(scope="session")
def library(tmp_path_factory, engine):
  """Three entries of the tiny base (distinct prompts) and one of another base model."""
  from spot.library import PromptLibrary
  lib = PromptLibrary(tmp_path_factory.mktemp("serve") / "library")
  rng = np.random.default_rng(0)
  d = engine.config.emb_dim
  for name in ENTRIES:
    lib.add(name, rng.uniform(-2, 2, (PROMPT_LENGTH, d)).astype(np.float32),
            model=engine.model_name, task=f"spot_glue_{name.split('_')[0]}")
  lib.add("base_prompt", rng.uniform(0, 0.5, (PROMPT_LENGTH, 768)).astype(np.float32),
          model="t5_1_1_lm100k_base")
  return lib


@pytest.fixture(scope="session")
def service(engine, library):
  from spot.serve import PromptCache, Service
  engine.warm_up([PROMPT_LENGTH])
  cache = PromptCache(library, engine.model_name, engine.config.emb_dim)
  return Service(engine, cache, max_wait_ms=20.0, max_queue=256)


@pytest.fixture(scope="session")
def url(service):
  from spot.serve import running
  with running(service) as base:
    yield base


@pytest.fixture()
def client(url):
  import httpx
  with httpx.Client(base_url=url, timeout=120) as c:
    yield c
