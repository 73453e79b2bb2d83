"""Checkpoint import and export: T5X (msgpack + tensorstore, and Orbax) and Hugging Face.

Parameters are plain nested dicts of numpy arrays under T5X names
(`token_embedder/embedding`, `encoder/layers_0/attention/query/kernel`, ...),
the tree `spot.models.T5` creates, so a loaded checkpoint goes straight into
`T5(config).apply({"params": params}, ...)`. spot's own run checkpoints
(trained parameters only) are read by `locate_run` / `describe_run` and turned
into a T5X checkpoint by `convert_run`. See docs/checkpoints.md.
"""

from spot.checkpoints.hf import config_from_hf, config_to_hf, load_hf, save_hf
from spot.checkpoints.layout import (CheckpointFormat, OutputExistsError, all_steps,
                                     latest_step, locate)
from spot.checkpoints.run import (RunCheckpoint, RunSummary, convert_run, describe_run,
                                  locate_run, read_trained, run_steps)
from spot.checkpoints.t5x import (CheckpointSummary, MissingVariableError, describe, load_t5x,
                                  load_t5x_variable, save_t5x)
from spot.checkpoints.tree import EXTRA_PARAM_PREFIXES, check_shapes, infer_config

__all__ = [
    "CheckpointFormat", "CheckpointSummary", "EXTRA_PARAM_PREFIXES", "MissingVariableError",
    "OutputExistsError", "RunCheckpoint", "RunSummary", "all_steps", "check_shapes",
    "config_from_hf", "config_to_hf", "convert_run", "describe", "describe_run",
    "infer_config", "latest_step", "load_hf", "load_t5x", "load_t5x_variable", "locate",
    "locate_run", "read_trained", "run_steps", "save_hf", "save_t5x",
]
