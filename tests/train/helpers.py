"""Shared pieces of the trainer tests: tiny models and small real SeqIO tasks."""

from __future__ import annotations

import functools
import pathlib

import numpy as np
import seqio
import tensorflow as tf

from spot.models import get_config
from spot.prompts import PrefixPrompt
from spot.train.models import EncoderDecoderModel

TINY_CHECKPOINT = "t5x_tiny_checkpoint/checkpoint_3"


def register_sst2(shared_data: pathlib.Path, prefix: str = "test_glue") -> str:
  """SST-2 from ../shared/data/glue with the real T5 vocabulary; returns the task name."""
  from spot.tasks import glue
  names = glue.register_glue(data_dir=str(shared_data / "glue"),
                             vocabulary=str(shared_data / "t5_vocab" / "spiece.model"),
                             name_prefix=prefix, tasks=["sst2"])
  return names[0]


def tiny_prompt_model(shared_data: pathlib.Path, prompt_length: int = 4,
                      dropout_rate: float = 0.0, prompt_init=None) -> EncoderDecoderModel:
  """The t5_1_1_tiny shape of ../shared/data/t5x_tiny_checkpoint with a prompt."""
  vocab = seqio.SentencePieceVocabulary(str(shared_data / "t5_vocab" / "spiece.model"))
  kwargs = {} if prompt_init is None else {"prompt_init": prompt_init}
  return EncoderDecoderModel(get_config("t5_1_1_tiny", dropout_rate=dropout_rate),
                             functools.partial(PrefixPrompt, length=prompt_length, **kwargs),
                             vocab)


def register_counting_task(name: str, num_examples: int = 64, vocab_size: int = 64) -> str:
  """A deterministic token task (target = first two input tokens) needing no files."""
  vocab = seqio.PassThroughVocabulary(size=vocab_size)
  rng = np.random.RandomState(0)
  inputs = rng.randint(3, vocab_size, size=(num_examples, 8)).astype(np.int32)

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    part = inputs[: num_examples // 2] if split == "train" else inputs[num_examples // 2:]
    return tf.data.Dataset.from_tensor_slices({"inputs": part, "targets": part[:, :2]})

  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=["train", "validation"]),
      preprocessors=[seqio.preprocessors.append_eos],
      output_features={"inputs": seqio.Feature(vocab, add_eos=True),
                       "targets": seqio.Feature(vocab, add_eos=True)},
      metric_fns=[])
  return name
