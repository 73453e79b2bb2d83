"""Training, evaluation and inference for (prompt-)tuning frozen T5 models.

The public API, as users call it:

  train(...)                 the training loop (`spot train`), returns a TrainResult
  run_eval(...), run_infer(...)  SeqIO metrics of a run or prompt; predictions as JSONL
                             (`spot eval` / `spot infer`; the modules spot.train.evaluate
                             and spot.train.infer keep their own names)
  EncoderDecoderModel        the model: loss_fn, predict_batch, score_batch
  DatasetConfig              a SeqIO task or mixture, lengths, batch size
  CheckpointConfig, EvalConfig, RunSummary   run settings; what metrics writers receive
  TrainState, init_state, state_shardings    the typed train state
  EarlyStopping              best-evaluation tracking and patience
  RunCheckpointer            a run's orbax checkpoints

Names that need SeqIO and TensorFlow (train, run_eval, run_infer, DatasetConfig)
are imported on first use, so `import spot.train` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from spot.train.config import CheckpointConfig, EvalConfig, RunSummary
from spot.train.early_stopping import EarlyStopping
from spot.train.models import EncoderDecoderModel
from spot.train.train_state import TrainState, init_state, state_shardings

_LAZY = {
    "train": ("spot.train.trainer", "train"),
    "TrainResult": ("spot.train.trainer", "TrainResult"),
    "run_eval": ("spot.train.evaluate", "evaluate"),
    "run_infer": ("spot.train.infer", "infer"),
    "DatasetConfig": ("spot.train.data", "DatasetConfig"),
    "RunCheckpointer": ("spot.train.checkpointing", "RunCheckpointer"),
}

__all__ = ["CheckpointConfig", "DatasetConfig", "EarlyStopping", "EncoderDecoderModel",
           "EvalConfig", "RunCheckpointer", "RunSummary", "TrainResult", "TrainState",
           "init_state", "run_eval", "run_infer", "state_shardings", "train"]


def __getattr__(name: str) -> Any:
  """Imports `train`, `run_eval`, `run_infer`, ... on first use (they pull in SeqIO)."""
  if name not in _LAZY:
    raise AttributeError(f"module 'spot.train' has no attribute {name!r}")
  module, attr = _LAZY[name]
  value = getattr(importlib.import_module(module), attr)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
