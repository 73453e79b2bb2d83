"""Shared test fixtures: the path of ../shared/data and a skip when it is absent."""

from __future__ import annotations

import os
import pathlib

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("SPOT_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_addoption(parser):
  parser.addoption("--slow", action="store_true", default=False,
                   help="also run tests marked slow (the console journeys); CI passes it")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: a long test (console journeys); runs with --slow")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--slow") or os.environ.get("SPOT_SLOW_TESTS") == "1":
    return
  skip = pytest.mark.skip(reason="slow: run with `bash tools/run.sh test --slow` (CI does)")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """../shared/data, or skip: it holds real checkpoints and task files that a
  user's clone does not have (CI always has it)."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"needs the shared test data at {SHARED_DATA} (absent in this clone; "
                "set SPOT_SHARED_DATA to its path)")
  return SHARED_DATA
