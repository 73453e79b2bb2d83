"""Task embeddings (SPoT): a prompt trained briefly on a task from a fixed init.

Vu et al. (2022) represent a task by an early checkpoint of its prompt, every
task starting from the same initial prompt (same seed and initializer), so
that differences between embeddings come from the tasks alone. This recipe
runs that short training from a `TrainSettings` (parsed once from the same gin
files as `spot train`) and returns the prompt at the chosen step.
"""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Optional, Sequence

import numpy as np

from spot.workflows import settings as settings_lib

DEFAULT_STEPS = 1000
DEFAULT_SEED = 0


def embedding_settings(base: settings_lib.TrainSettings, steps: int, model_dir: str,
                       seed: int) -> settings_lib.TrainSettings:
  """`base` as a task-embedding run: `steps` prompt steps, one checkpoint, no evaluation."""
  from spot.train import trainer  # pylint: disable=g-import-not-at-top
  ckpt = base.checkpoint_cfg or trainer.CheckpointConfig()
  return settings_lib.for_run(
      base, model_dir=model_dir, train_steps=steps, seed=seed, trainable="prompt",
      train_dataset_cfg=dataclasses.replace(base.train_dataset_cfg, seed=seed),
      checkpoint_cfg=dataclasses.replace(ckpt, period=steps), eval_cfg=None)


def compute_task_embedding(base: settings_lib.TrainSettings, steps: int = DEFAULT_STEPS,
                           model_dir: Optional[str] = None,
                           seed: int = DEFAULT_SEED) -> np.ndarray:
  """Trains a prompt for `steps` steps from `base`'s settings; returns it [P, D].

  Args:
    base: a prompt run's settings (models/*_prompt.gin + runs/prompt_finetune.gin),
      e.g. `settings.from_flags(flags)`; its model_dir and steps are replaced.
    steps: training steps (SPoT: an early checkpoint).
    model_dir: where the short run goes (default: a temporary folder).
    seed: the fixed seed shared by every task's embedding (prompt init, data,
      dropout).
  """
  from spot.train import checkpointing  # pylint: disable=g-import-not-at-top
  if steps < 1:
    raise ValueError(f"steps must be at least 1, got {steps}.")
  tmp = None
  if model_dir is None:
    tmp = tempfile.TemporaryDirectory(prefix="spot_embed_")
    model_dir = tmp.name
  try:
    settings_lib.run(embedding_settings(base, steps, model_dir, seed))
    return checkpointing.latest_numpy_prompt(model_dir)
  finally:
    if tmp is not None:
      tmp.cleanup()


def embedding_from_flags(train_flags: Sequence[str], steps: int = DEFAULT_STEPS,
                         model_dir: Optional[str] = None,
                         seed: int = DEFAULT_SEED) -> np.ndarray:
  """`compute_task_embedding` from `spot train` flags (TRAIN_STEPS and MODEL_DIR optional)."""
  base = settings_lib.from_flags(train_flags,
                                 defaults=[f"TRAIN_STEPS = {steps}", "MODEL_DIR = 'unused'"])
  return compute_task_embedding(base, steps, model_dir, seed)
