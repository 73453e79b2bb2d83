"""Building a run's parameters: frozen base weights plus freshly initialised prompts.

The base model comes from a T5X checkpoint (INITIAL_CHECKPOINT_PATH) or, only
when asked for explicitly with "random", from a seeded random init. Prompt
parameters are initialised by the prompt module alone, so a prompt run never
materialises a random copy of the (possibly XXL) base model.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from etils import epath

from spot import errors
from spot.models import T5Config
from spot.models import config as config_lib
from spot.train import trainable as trainable_lib
from spot.train.models import EncoderDecoderModel

RANDOM_INIT = "random"


def load_base_params(model: EncoderDecoderModel, initial_checkpoint_path: Optional[str],
                     seed: int = 0) -> dict:
  """Frozen base parameters (numpy), without any prompt parameters.

  Args:
    model: the model (its config is used to check every shape).
    initial_checkpoint_path: a T5X checkpoint directory (local or gs://), or
      "random" for a seeded random init (tests, demos).
    seed: used only for "random".
  """
  if not initial_checkpoint_path:
    raise errors.UsageError("INITIAL_CHECKPOINT_PATH is not set: give the frozen base model's "
                            "T5X checkpoint, e.g. --gin.INITIAL_CHECKPOINT_PATH=\"'gs://t5-data/"
                            "pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000'\".")
  if initial_checkpoint_path == RANDOM_INIT:
    params = _random_init(model.config)(jax.random.PRNGKey(seed))
    return jax.tree_util.tree_map(np.asarray, params)
  check_base_checkpoint(model.config, initial_checkpoint_path)
  from spot.checkpoints import load_t5x
  return load_t5x(initial_checkpoint_path, model.config)


def check_base_checkpoint(config: T5Config, path: str,
                          setting: str = "INITIAL_CHECKPOINT_PATH") -> None:
  """Checks, from the checkpoint's metadata only, that `path` fits `config`.

  Reads the parameter names and shapes (no weights), infers the checkpoint's
  config and compares the fields shapes fix. Runs before the weights load, so
  a size mismatch costs a metadata read rather than the whole checkpoint.

  Raises:
    MissingInputError: nothing exists at `path`.
    UsageError: the checkpoint's shapes are another size or family than the
      model's; the message gives the detected size and the gin fix.
  """
  from spot import checkpoints
  if not epath.Path(path).exists():
    raise errors.MissingInputError(
        f"{setting}={path!r} does not exist; point it at a T5X checkpoint "
        "(a checkpoint_<step> directory or its model_dir).")
  info = checkpoints.describe(path)
  shapes = {n: jax.ShapeDtypeStruct(s, np.float32)
            for n, s in info.shapes.items() if not n.startswith("state/")}
  try:
    found = checkpoints.infer_config(traverse_util.unflatten_dict(
        {tuple(k.split("/")): v for k, v in shapes.items()}))
  except ValueError:
    return  # not a T5 tree we can read shapes of: load_t5x reports it
  want, have = config_lib.shape_fields(config), config_lib.shape_fields(found)
  if want == have:
    return
  family, size = config_lib.family_and_size(found)
  my_family, my_size = config_lib.family_and_size(config)
  diff = ", ".join(f"{k} {have[k]} (model {want[k]})" for k in config_lib.SHAPE_FIELDS
                   if want[k] != have[k])
  if size != "custom" and family == my_family:
    fix = f"add --gin.MODEL_SIZE=\"'{size}'\""
  elif size != "custom":
    fix = f"use the {family} model file with --gin.MODEL_SIZE=\"'{size}'\""
  else:
    fix = "configure the model's T5Config with the checkpoint's shapes"
  raise errors.UsageError(
      f"{setting}={path!r} holds a {family} {size} model but the gin config builds "
      f"{my_family} {my_size} ({diff}); {fix}, or point {setting} at a {my_family} "
      f"{my_size} checkpoint.")


@functools.lru_cache(maxsize=8)
def _random_init(config: T5Config):
  """The jitted random init of a bare model, compiled once per (frozen, hashable) config.

  Tests, demos and benchmarks build many runs on the same random base; a fresh
  `jax.jit` of a bound method per call would retrace and recompile each time.
  """
  return jax.jit(EncoderDecoderModel(config).init_params)


def init_prompt_params(model: EncoderDecoderModel, rng: jax.Array) -> dict:
  """Parameters of the prompt module only, nested under `encoder/prompt`."""
  if model.prompt is None:
    return {}
  module = model.prompt()
  d = model.config.emb_dim
  inputs = {n: jnp.zeros((1,), jnp.int32) for n in model.prompt_input_names}
  variables = module.init(rng, jnp.zeros((1, 1, d), jnp.float32), jnp.ones((1, 1), jnp.int32),
                          **inputs)
  return {"encoder": {"prompt": nn.unbox(variables)["params"]}}


def initial_params(model: EncoderDecoderModel, initial_checkpoint_path: Optional[str],
                   seed: int = 0, init_seed: Optional[int] = None) -> dict:
  """Base parameters with the prompt's (and PEFT method's) initial value added.

  Args:
    seed: the run's SEED; seeds the "random" base (so eval and export, which
      read the run's `seed`, rebuild the same base).
    init_seed: INIT_SEED, the seed of the prompt and PEFT initial values only
      (default `seed`): runs that differ only in it share the base and the data.
  """
  base = load_base_params(model, initial_checkpoint_path, seed)
  init_key = jax.random.PRNGKey(seed if init_seed is None else init_seed)
  flat = traverse_util.flatten_dict(dict(base), sep="/")
  prompt_keys = [k for k in flat if k.startswith("encoder/prompt/")]
  if prompt_keys and model.prompt is not None:
    # A prompt-tuned T5X checkpoint: keep its prompt (eval/infer of T5X runs).
    flat.update(init_peft_params(model, flat, jax.random.fold_in(init_key, 2)))
    return traverse_util.unflatten_dict(flat, sep="/")
  base = {k: v for k, v in flat.items() if k not in prompt_keys}
  prompt = init_prompt_params(model, jax.random.fold_in(init_key, 1))
  base.update(init_peft_params(model, base, jax.random.fold_in(init_key, 2)))
  return trainable_lib.merge(prompt, traverse_util.unflatten_dict(base, sep="/"))


def init_peft_params(model: EncoderDecoderModel, base: Mapping[str, Any],
                     rng: jax.Array) -> dict:
  """The PEFT method's initial parameters the flat '/'-joined `base` lacks (flat, numpy)."""
  if getattr(model, "peft", None) is None:
    return {}
  full = traverse_util.flatten_dict(dict(jax.jit(model.init_params)(rng)), sep="/")
  return {k: np.asarray(v) for k, v in full.items()
          if k not in base and not k.startswith("encoder/prompt/")}


def trainable_from_run(model_dir: str, best: bool = False,
                       step: Optional[int] = None) -> dict:
  """The trained parameters (numpy) of a run's checkpoint, without the base."""
  return _restore_run(model_dir, best, step)[0]


def _restore_run(model_dir: str, best: bool, step: Optional[int]) -> tuple[dict, dict]:
  """(trainable tree, meta) of checkpoint `step` (default latest) of `model_dir`."""
  from spot.train import checkpointing
  if not epath.Path(model_dir).exists():
    raise errors.MissingInputError(f"RESTORE_MODEL_DIR={model_dir!r} does not exist; point it "
                                   "at the model_dir of a run.")
  ckpt = checkpointing.RunCheckpointer(model_dir)
  try:
    mngr = ckpt._best if best else ckpt._latest  # pylint: disable=protected-access
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise errors.MissingInputError(
          f"RESTORE_MODEL_DIR={model_dir!r} holds no {'best ' if best else ''}checkpoint; "
          "train first or point RESTORE_MODEL_DIR at a run's model_dir.")
    import orbax.checkpoint as ocp
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                     meta=ocp.args.JsonRestore()))
  finally:
    ckpt.close()
  return jax.tree_util.tree_map(np.asarray, out["state"]["trainable"]), dict(out["meta"])


def params_from_run(model: EncoderDecoderModel, model_dir: str,
                    initial_checkpoint_path: Optional[str] = None, best: bool = False,
                    step: Optional[int] = None) -> tuple[dict, dict]:
  """Full parameters of a finished (or running) run: base + its trained parameters.

  The base checkpoint path is read from the run's checkpoint metadata unless
  `initial_checkpoint_path` overrides it. Returns (params, meta).
  """
  trained, meta = _restore_run(model_dir, best, step)
  base_path = initial_checkpoint_path or meta.get("base_checkpoint")
  base = load_base_params(model, base_path, int(meta.get("seed", 0)))
  flat = traverse_util.flatten_dict(dict(base), sep="/")
  for k, v in traverse_util.flatten_dict(dict(trained), sep="/").items():
    if k in flat and tuple(flat[k].shape) != tuple(v.shape):
      raise ValueError(f"Run parameter {k} has shape {tuple(v.shape)} but the base model has "
                       f"{tuple(flat[k].shape)}.")
    flat[k] = v
  params = traverse_util.unflatten_dict(flat, sep="/")
  expected = traverse_util.flatten_dict(
      jax.eval_shape(model.init_params, jax.random.PRNGKey(0)), sep="/")
  missing = sorted(set(expected) - set(flat))
  if missing:
    raise ValueError(f"Parameters {missing[:5]} are neither in the base checkpoint nor in the "
                     f"run {model_dir}; is the model (PROMPT, PROMPT_LENGTH) the one trained?")
  return params, meta


def params_for_inference(model: EncoderDecoderModel, initial_checkpoint_path: Optional[str],
                         restore_model_dir: Optional[str] = None, use_best: bool = False,
                         seed: int = 0) -> dict:
  """Parameters for eval / infer.

  With `restore_model_dir`, the run's trained parameters over its base model;
  otherwise the base checkpoint with the prompt from its initializer (e.g.
  `from_npy(PROMPT_FILE)`: prompt-tuning's way of evaluating a saved prompt).
  """
  if restore_model_dir:
    params, _ = params_from_run(model, restore_model_dir, initial_checkpoint_path, use_best)
    return params
  return initial_params(model, initial_checkpoint_path, seed)
