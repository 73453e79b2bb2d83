"""K-shot versions of SeqIO tasks, drawn per seed and registered on the fly.

`register_fewshot("spot_glue_rte", k=16, seed=0)` registers `spot_glue_rte_16shot_s0`:
the same task (preprocessors, vocabulary, postprocessor, metrics) whose train
split is K raw examples of the original's, and whose other splits are the
original's. The K examples are a function of the seed only: the first `pool`
train examples in file order (no shuffling), K of them chosen without
replacement by `numpy.random.RandomState(seed)`, kept in pool order. A seed
gives the same K examples in every process; different seeds, different ones.
K counts examples (not examples per class).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from spot import errors

DEFAULT_POOL = 10_000  # train examples the K are drawn from (the first ones, in file order)


def fewshot_name(task: str, k: int, seed: int) -> str:
  return f"{task}_{k}shot_s{seed}"


def sample_indices(pool_size: int, k: int, seed: int) -> np.ndarray:
  """K distinct indices in [0, pool_size), sorted; a function of (pool_size, k, seed) only."""
  if k < 1:
    raise errors.ConfigError(f"K={k} shots: give at least 1.")
  if k > pool_size:
    raise errors.DataError(f"K={k} shots but the task's train pool has only {pool_size} "
                           "examples; lower K.")
  return np.sort(np.random.RandomState(seed).choice(pool_size, size=k, replace=False))


def read_pool(task: Any, pool: int = DEFAULT_POOL) -> list[dict[str, Any]]:
  """The first `pool` raw train examples of a `seqio.Task`'s source, in file order."""
  ds = task.source.get_dataset(split="train", shuffle=False)
  return list(ds.take(pool).as_numpy_iterator())


def kshot_examples(task: Any, k: int, seed: int, pool: int = DEFAULT_POOL
                   ) -> list[dict[str, Any]]:
  """The K raw train examples of `task` for `seed` (see the module docstring)."""
  examples = read_pool(task, pool)
  return [examples[i] for i in sample_indices(len(examples), k, seed)]


def _stacked(examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  return {key: np.asarray([ex[key] for ex in examples]) for key in examples[0]}


def register_fewshot(task_name: str, k: int, seed: int, *, module: Optional[str] = None,
                     data_dir: Any = None, vocabulary: Any = None,
                     pool: int = DEFAULT_POOL) -> str:
  """Registers the K-shot version of `task_name` for `seed` (replacing one of that name).

  The original is looked up as a run looks it up (`spot.train.data.get_task`:
  `module`, DATA_DIR local files, the model's vocabulary). Returns the new name.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from spot.train import data as data_lib  # pylint: disable=g-import-not-at-top
  task = data_lib.get_task(task_name, module, data_dir, vocabulary)
  if not isinstance(task, seqio.Task):
    raise errors.UsageError(f"{task_name} is a mixture; few-shot tasks are drawn from one task "
                            "each: name its tasks.")
  columns = _stacked(kshot_examples(task, k, seed, pool))
  original = task.source

  def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None):
    if split == "train":
      return tf.data.Dataset.from_tensor_slices(columns)
    return original.get_dataset(split=split, shuffle=shuffle_files, seed=seed)

  source = seqio.FunctionDataSource(dataset_fn, splits=list(original.splits))
  name = fewshot_name(task_name, k, seed)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add_provider(name, task.replace(name=name, source=source))
  return name
