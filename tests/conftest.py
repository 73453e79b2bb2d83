"""Shared test fixtures: the path of ../shared/data and a skip when it is absent."""

from __future__ import annotations

import os
import pathlib

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("SPOT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """../shared/data, or skip: it holds real checkpoints and task files that a
  user's clone does not have (CI always has it)."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"needs the shared test data at {SHARED_DATA} (absent in this clone; "
                "set SPOT_SHARED_DATA to its path)")
  return SHARED_DATA
