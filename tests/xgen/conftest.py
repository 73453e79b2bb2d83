"""xGen fixtures: a small multilingual SentencePiece model trained once per session.

mT5's vocabulary cannot be downloaded in tests, so tools/train_multilingual_spm.py
trains a 3000-piece unigram model (about a second) on Tatoeba sentences in the
18 WikiLingua languages from ../shared/data.
"""

from __future__ import annotations

import importlib.util
import pathlib
import types

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_spm_tool() -> types.ModuleType:
  spec = importlib.util.spec_from_file_location(
      "train_multilingual_spm", REPO / "tools" / "train_multilingual_spm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tatoeba_dir(shared_data: pathlib.Path) -> pathlib.Path:
  return shared_data / "multilingual_text" / "tatoeba_laser_v1"


def wikilingua_dir(shared_data: pathlib.Path) -> pathlib.Path:
  return shared_data / "wikilingua" / "gem_wiki_lingua_subset"


@pytest.fixture(scope="session")
def spm_model(shared_data, tmp_path_factory) -> str:
  """Path of a small multilingual SentencePiece model (no extra ids)."""
  prefix = tmp_path_factory.mktemp("spm") / "multilingual"
  return load_spm_tool().train(tatoeba_dir(shared_data), prefix)
