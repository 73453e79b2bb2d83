"""Shared pieces of the trainer tests: tiny models and small real SeqIO tasks."""

from __future__ import annotations

import functools
import pathlib
from typing import Optional

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
  return register_tiny_task(name, num_examples=num_examples, vocab_size=vocab_size, eos_id=None)


def register_tiny_task(name: str, metric_fns=(), num_examples: int = 64,
                       vocab_size: int = 64, eos_id: Optional[int] = 1) -> str:
  """A deterministic token task (target = first two input tokens, EOS `eos_id`) needing
  no files.

  `metric_fns` are SeqIO metric fns `(targets, predictions) -> {name: value}`.
  """
  vocab = seqio.PassThroughVocabulary(size=vocab_size, eos_id=eos_id)
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
      metric_fns=list(metric_fns))
  return name


def tiny_random_model(prompt_length: int = 4) -> EncoderDecoderModel:
  """t5_1_1_tiny with a prompt and a pass-through vocabulary: no files needed."""
  return EncoderDecoderModel(get_config("t5_1_1_tiny", dropout_rate=0.0),
                             functools.partial(PrefixPrompt, length=prompt_length),
                             seqio.PassThroughVocabulary(size=64, eos_id=1))


def quick_train(model_dir, task: str, *, train_steps: int = 12, model=None, **kwargs):
  """A few-second prompt run of `tiny_random_model` on a `register_tiny_task` task."""
  from spot.train import trainer
  from spot.train.data import DatasetConfig
  kwargs.setdefault("checkpoint_cfg", trainer.CheckpointConfig(period=4, keep=1))
  kwargs.setdefault("log_every", 4)
  return trainer.train(
      model=model or tiny_random_model(),
      train_dataset_cfg=DatasetConfig(task, {"inputs": 9, "targets": 3}, batch_size=4, seed=0),
      model_dir=str(model_dir), train_steps=train_steps, initial_checkpoint_path="random",
      verbose=False, **kwargs)


def numpy_exports(model_dir) -> dict:
  """{step: {file name: array}} of a run's numpy_checkpoints."""
  root = pathlib.Path(model_dir) / "numpy_checkpoints"
  out = {}
  for d in sorted(root.iterdir()) if root.exists() else []:
    out[d.name] = {f.name: np.load(f) for f in sorted(d.iterdir()) if f.is_file()}
  return out
