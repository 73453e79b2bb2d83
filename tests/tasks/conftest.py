"""Session fixtures for the registry tests: the local T5 vocabulary and the
GLUE / SuperGLUE tasks registered once on ../shared/data (TF is slow to start,
so every test module shares them)."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

SEQUENCE_LENGTH = {"inputs": 512, "targets": 16}


@pytest.fixture(scope="session")
def vocab(shared_data: pathlib.Path):
  import seqio
  return seqio.SentencePieceVocabulary(str(shared_data / "t5_vocab" / "spiece.model"),
                                       extra_ids=100)


@pytest.fixture(scope="session")
def glue_dirs(shared_data: pathlib.Path) -> list[str]:
  """The GLUE copies, then the Hugging Face fixture files (MNLI, QNLI, QQP)."""
  return [str(shared_data / "glue"), str(shared_data / "glue" / "format_samples_hf_dummy")]


@pytest.fixture(scope="session")
def local_glue(glue_dirs, vocab) -> list[str]:
  from spot.tasks import glue
  return glue.register_glue(data_dir=glue_dirs, vocabulary=vocab, name_prefix="test_glue")


@pytest.fixture(scope="session")
def local_superglue(shared_data: pathlib.Path, vocab) -> list[str]:
  from spot.tasks import superglue
  return superglue.register_superglue(data_dir=str(shared_data / "superglue"), vocabulary=vocab,
                                      name_prefix="test_superglue")


@pytest.fixture(scope="session")
def read_examples():
  """read_examples(name, split, n=3): the first `n` examples of a registered
  task's split, unshuffled, as numpy dicts."""
  import seqio

  def read(name: str, split: str, n: int = 3) -> list[dict[str, Any]]:
    ds = seqio.get_mixture_or_task(name).get_dataset(
        sequence_length=SEQUENCE_LENGTH, split=split, shuffle=False)
    return list(ds.take(n).as_numpy_iterator())

  return read
