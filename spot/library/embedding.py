"""Task embeddings (SPoT): a prompt trained briefly on a task from a fixed init.

Vu et al. (2022) represent a task by an early checkpoint of its prompt, every
task starting from the same initial prompt (same seed and initializer), so
that differences between embeddings come from the tasks alone. This module
runs that short training with any gin run config (the same files as `spot
train`) and returns the prompt at the chosen step.
"""

from __future__ import annotations

import tempfile
from typing import Optional, Sequence

import numpy as np

DEFAULT_STEPS = 1000
DEFAULT_SEED = 0


def compute_task_embedding(train_flags: Sequence[str], steps: int = DEFAULT_STEPS,
                           model_dir: Optional[str] = None, seed: int = DEFAULT_SEED) -> np.ndarray:
  """Trains a prompt for `steps` steps with `spot train` flags; returns it [P, D].

  Args:
    train_flags: `spot train` flags: `--gin_file=...`, `--gin.KEY=VALUE`, ...;
      the run must be a prompt run (models/*_prompt.gin + runs/prompt_finetune.gin)
      with MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS and INITIAL_CHECKPOINT_PATH.
    steps: training steps (SPoT: an early checkpoint).
    model_dir: where the short run goes (default: a temporary folder).
    seed: the fixed seed shared by every task's embedding (prompt init, data,
      dropout).
  """
  from spot.train import checkpointing, cli

  if steps < 1:
    raise ValueError(f"steps must be at least 1, got {steps}.")
  tmp = None
  if model_dir is None:
    tmp = tempfile.TemporaryDirectory(prefix="spot_embed_")
    model_dir = tmp.name
  overrides = [f"TRAIN_STEPS = {steps}", f"MODEL_DIR = '{model_dir}'",
               f"CHECKPOINT_PERIOD = {steps}", "EVAL_PERIOD = 0", f"SEED = {seed}",
               "TRAINABLE = 'prompt'"]
  try:
    cli.run_with_flags(train_flags, extra_bindings=overrides, eval_cfg=None)
    return checkpointing.latest_numpy_prompt(model_dir)
  finally:
    if tmp is not None:
      tmp.cleanup()
