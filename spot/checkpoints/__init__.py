"""Checkpoint import and export: T5X (msgpack + tensorstore, and Orbax) and Hugging Face.

Parameters are plain nested dicts of numpy arrays under T5X names
(`token_embedder/embedding`, `encoder/layers_0/attention/query/kernel`, ...),
the tree `spot.models.T5` creates, so a loaded checkpoint goes straight into
`T5(config).apply({"params": params}, ...)`. spot's own run checkpoints
(trained parameters only) are read by `locate_run` / `describe_run` and turned
into a T5X checkpoint by `convert_run`. The run directory's layout (names,
the numpy prompt export, run.json, metrics.json) is `spot.checkpoints.run_dir`'s,
read by the trainer, the library, the demo and `spot report`. See docs/checkpoints.md.
"""

import importlib
from typing import Any

# Public name -> the module that defines it. Modules load on first use, so that
# `spot.checkpoints.run_dir` (read by the library and `spot report`) does not
# pull in the model and tensorstore.
_EXPORTS = {
    "config_from_hf": "hf", "config_to_hf": "hf", "load_hf": "hf", "save_hf": "hf",
    "CheckpointFormat": "layout", "OutputExistsError": "layout", "all_steps": "layout",
    "latest_step": "layout", "locate": "layout",
    "RunCheckpoint": "run", "RunSummary": "run", "convert_run": "run", "describe_run": "run",
    "locate_run": "run", "read_trained": "run", "run_steps": "run",
    "CheckpointSummary": "t5x", "MissingVariableError": "t5x", "describe": "t5x",
    "load_t5x": "t5x", "load_t5x_variable": "t5x", "save_t5x": "t5x",
    "EXTRA_PARAM_PREFIXES": "tree", "check_shapes": "tree", "infer_config": "tree",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name not in _EXPORTS:
    raise AttributeError(f"module 'spot.checkpoints' has no attribute {name!r}")
  # Cached on first use, so gin, which registers `checkpoints.load_t5x_variable`
  # by the object it finds, sees one function for the life of the process.
  value = getattr(importlib.import_module(f"spot.checkpoints.{_EXPORTS[name]}"), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_EXPORTS))
