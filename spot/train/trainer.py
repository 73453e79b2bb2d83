"""The training loop: frozen T5 + trainable parameters, SeqIO data, orbax checkpoints.

`train()` is the entry point `spot train` / `t5x train` configure with gin. Its
shape follows T5X's train.py: a jitted, sharded step over a ('data', 'model')
mesh, periodic checkpoints and evaluation, progress lines and TensorBoard
summaries. What differs, and why:

- Gradients are taken only with respect to the trainable tree (the prompt by
  default); the frozen tree enters the step as a constant argument, so it has
  no gradient buffers, no optimizer state and is never checkpointed.
- Checkpoints hold the trainable parameters, optimizer state, step and the
  data position, plus the path of the frozen base checkpoint: kilobytes for a
  prompt run instead of the full model.
- Data order and dropout are functions of (seed, step), so a run killed at any
  point and resumed ends with the same prompt as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from spot import partitioning as partitioning_lib
from spot.train import checkpointing, optimizers, progress, trainable as trainable_lib
from spot.train import state as state_lib
from spot.train.models import EncoderDecoderModel

# `spot.train.data` (SeqIO, TensorFlow: ~700 MiB) is imported inside `train`, so
# the step itself (`make_train_step`, benchmarks) does not pay for it.


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """How often to save, how many to keep, and whether to export prompts as numpy."""

  period: int = 1000
  keep: int = 1
  save_numpy: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Periodic evaluation with the tasks' SeqIO metrics.

  Attributes:
    period: evaluate every `period` steps (0: only after the last step).
    tasks: tasks to evaluate; default: the training task or mixture's tasks.
    split / num_examples / batch_size / task_feature_lengths: the eval data
      (lengths default to the training ones).
    best_metric: "task/metric" (or just "metric" when there is one task) whose
      best value is kept in `model_dir/best`.
    mode: "max" or "min" for best_metric.
    early_stopping_patience: stop after this many evaluations without
      improvement of best_metric (None: never).
    decode: keyword arguments of `spot.train.inference.predict_batch`
      (method, num_decodes, alpha, temperature, topk, topp).
  """

  period: int = 0
  tasks: Optional[Sequence[str]] = None
  split: str = "validation"
  num_examples: Optional[int] = None
  batch_size: int = 32
  task_feature_lengths: Optional[Mapping[str, int]] = None
  best_metric: Optional[str] = None
  mode: str = "max"
  early_stopping_patience: Optional[int] = None
  decode: Optional[Mapping[str, Any]] = None


def _learning_rate(opt_state: Any) -> Optional[float]:
  """The current learning rate when the optimizer was built with inject_hyperparams."""
  has = lambda x: isinstance(getattr(x, "hyperparams", None), dict)
  for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=has):
    if has(leaf) and "learning_rate" in leaf.hyperparams:
      return float(leaf.hyperparams["learning_rate"])
  return None


def make_train_step(model: EncoderDecoderModel, tx: optax.GradientTransformation,
                    num_microbatches: int = 1):
  """The pure train step `(trainable, opt_state, frozen, batch, step, rng) -> ...`.

  With `num_microbatches > 1` the batch is split and gradients accumulated with
  `lax.scan` before one optimizer update (gradient accumulation).
  """

  def loss_fn(trainable, frozen, batch, rng):
    params = trainable_lib.merge(trainable, frozen)
    return model.loss(params, batch, rng)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step_fn(trainable, opt_state, frozen, batch, step, rng):
    rng = jax.random.fold_in(rng, step)
    if num_microbatches > 1:
      micro = jax.tree_util.tree_map(
          lambda x: x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:]),
          batch)

      def body(carry, inp):
        grads, metrics = carry
        i, mb = inp
        (_, m), g = grad_fn(trainable, frozen, mb, jax.random.fold_in(rng, i))
        add = lambda a, b: jax.tree_util.tree_map(jnp.add, a, b)
        return (add(grads, g), add(metrics, m)), None

      zeros_g = jax.tree_util.tree_map(jnp.zeros_like, trainable)
      zeros_m = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(
          lambda: grad_fn(trainable, frozen, jax.tree_util.tree_map(lambda x: x[0], micro),
                          rng)[0][1]))
      (grads, metrics), _ = jax.lax.scan(
          body, (zeros_g, zeros_m), (jnp.arange(num_microbatches), micro))
    else:
      (_, metrics), grads = grad_fn(trainable, frozen, batch, rng)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads))
    return trainable, opt_state, metrics

  return step_fn


def write_xgen_scores(model: EncoderDecoderModel, model_dir: str, results: Mapping[str, float],
                      method: str, **meta: Any) -> None:
  """`xgen_scores.json` for `spot xgen report` when the results hold xGen metrics."""
  from spot.models import size_name
  from spot.xgen import report as xgen_report
  by_task: dict[str, dict] = {}
  for key, value in results.items():
    task, _, metric = key.partition("/")
    by_task.setdefault(task, {})[metric] = value
  scores = xgen_report.scores_by_language(by_task)
  if scores:
    xgen_report.write_run_scores(model_dir, scores, size=size_name(model.config), method=method,
                                 prompt_length=model.prompt_length or None, **meta)


def _write_final_metrics(model: EncoderDecoderModel, model_dir: str, task: str,
                         eval_history: list[tuple[int, dict]],
                         best: Optional[tuple[int, float]], method: str, seed: int) -> None:
  """`metrics.json` for `spot report` (and xGen scores): the best evaluation, else the last."""
  from spot import report
  step, results = eval_history[-1]
  if best is not None:
    step, results = next((s, r) for s, r in eval_history if s == best[0])
  write_xgen_scores(model, model_dir, results, method, seed=seed, step=step)
  tasks = {k.split("/", 1)[0] for k in results}
  if len(tasks) == 1:
    task = tasks.pop()
    scores = {k.split("/", 1)[1]: v for k, v in results.items()}
  else:
    scores = dict(results)
  report.write_run_metrics(model_dir, task, method, seed, scores, step=step)


@dataclasses.dataclass
class TrainResult:
  model_dir: str
  step: int
  final_loss: float
  losses: list[tuple[int, float]]
  eval_history: list[tuple[int, dict]]
  best: Optional[tuple[int, float]]
  steps_per_sec: float
  stopped_early: bool = False


def train(*, model: EncoderDecoderModel, train_dataset_cfg: data_lib.DatasetConfig,
          model_dir: str, train_steps: int, initial_checkpoint_path: Optional[str],
          optimizer: Optional[optax.GradientTransformation] = None,
          trainable: Union[str, Sequence[str]] = "prompt", seed: int = 0,
          num_microbatches: int = 1,
          checkpoint_cfg: CheckpointConfig = CheckpointConfig(),
          eval_cfg: Optional[EvalConfig] = None, log_every: int = 10,
          partitioner: Optional[partitioning_lib.Partitioner] = None,
          stop_after_steps: Optional[int] = None, gin_config: Optional[str] = None,
          method: Optional[str] = None, verbose: bool = True) -> TrainResult:
  """Trains `trainable` parameters of `model` on a SeqIO task; resumes if possible.

  Args:
    model: the model (with a prompt for prompt tuning).
    train_dataset_cfg: the SeqIO task/mixture, feature lengths, batch size.
    model_dir: where checkpoints, summaries and the config go (local or gs://).
    train_steps: the step to stop at (absolute, as in T5X).
    initial_checkpoint_path: T5X checkpoint of the frozen base ("random" for tests).
    optimizer: an optax transformation; default Adafactor with the
      prompt-tuning paper's settings (lr 0.3 constant).
    trainable: "prompt" (default), "all" (model tuning) or regex(es) over
      '/'-joined parameter paths.
    seed: fixes data order, dropout and prompt initialisation.
    num_microbatches: gradient accumulation steps per update.
    checkpoint_cfg / eval_cfg: saving and evaluation.
    log_every: steps between progress lines and summaries.
    partitioner: mesh and rules; default: all devices on the 'data' axis.
    stop_after_steps: leave after this many steps in this invocation (for
      tests of resumption), without the final evaluation.
    gin_config: the operative gin config text, saved as model_dir/config.gin.
    method: the label `spot report` groups runs by (e.g. "spot_glue"); default
      "prompt_tuning" or "model_tuning" from `trainable`. After the final
      evaluation the run writes `metrics.json` (see spot.report).
  """
  from spot.train import data as data_lib  # pylint: disable=g-import-not-at-top
  tx = optimizer if optimizer is not None else optimizers.adafactor()
  partitioner = partitioner or partitioning_lib.Partitioner.create()
  mdir = epath.Path(model_dir)
  if jax.process_index() == 0:
    mdir.mkdir(parents=True, exist_ok=True)
    if gin_config:
      (mdir / "config.gin").write_text(gin_config)
  if train_dataset_cfg.batch_size % max(num_microbatches, 1):
    raise ValueError(f"BATCH_SIZE {train_dataset_cfg.batch_size} is not divisible by "
                     f"num_microbatches {num_microbatches}.")
  # Fail before any compute on a bad task name or feature lengths.
  data_lib.get_task(train_dataset_cfg.mixture_or_task_name, train_dataset_cfg.module,
                    train_dataset_cfg.data_dir)

  ckpt = checkpointing.RunCheckpointer(model_dir, keep=checkpoint_cfg.keep)
  params = state_lib.initial_params(model, initial_checkpoint_path, seed)
  tr, frozen = trainable_lib.split(params, trainable)
  del params

  axes = model.param_axes()
  tr_axes, frozen_axes = trainable_lib.split(axes, trainable) if frozen else (axes, {})
  tr_sh = partitioner.logical_to_mesh(tr_axes, tr)
  fr_sh = partitioner.logical_to_mesh(frozen_axes, frozen)
  # Host values go straight to their shards: an XXL base never sits whole on one device.
  tr = jax.device_put(tr, tr_sh)
  frozen = partitioner.put(frozen, fr_sh, in_place=True)

  opt_shapes = jax.eval_shape(tx.init, tr)
  opt_sh = partitioner.optimizer_state_shardings(opt_shapes, tr_sh, tr)
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(tr)

  run_meta = {
      "base_checkpoint": initial_checkpoint_path,
      "model_config": model.config.to_dict(),
      "prompt_length": model.prompt_length,
      "trainable": list(trainable_lib.resolve(trainable)),
      "task": train_dataset_cfg.mixture_or_task_name,
      "task_feature_lengths": dict(train_dataset_cfg.task_feature_lengths),
      "batch_size": train_dataset_cfg.batch_size,
      "seed": seed,
  }
  start_step = 0
  latest = ckpt.latest_step()
  if latest is not None:
    restored, meta = ckpt.restore({"trainable": tr, "opt_state": opt_state,
                                   "step": jnp.zeros((), jnp.int32)})
    if meta.get("base_checkpoint") != initial_checkpoint_path:
      raise ValueError(f"{model_dir} was trained from base checkpoint "
                       f"{meta.get('base_checkpoint')!r}, not {initial_checkpoint_path!r}; use a "
                       "new MODEL_DIR or the same INITIAL_CHECKPOINT_PATH.")
    tr = jax.device_put(restored["trainable"], tr_sh)
    opt_state = jax.device_put(restored["opt_state"], opt_sh)
    start_step = int(restored["step"])
    if verbose and jax.process_index() == 0:
      print(f"Resuming {model_dir} from step {start_step}.", flush=True)
  if jax.process_index() == 0:
    checkpointing.write_json_atomic(mdir / "run.json", dict(
        run_meta, trainable_params=trainable_lib.paths(tr),
        num_trainable=trainable_lib.count(tr), num_frozen=trainable_lib.count(frozen)))

  step_fn = make_train_step(model, tx, num_microbatches)
  rep = partitioner.replicated
  converter = data_lib.PromptFeatureConverter(model.prompt_length,
                                               prompt_features=model.prompt_input_names)
  # Hosts of one model-parallel group read the same shard (T5X's DataLayout).
  layout = partitioner.data_layout(train_dataset_cfg.batch_size)
  ds = data_lib.get_dataset(train_dataset_cfg, converter,
                            shard_index=layout.shard_id, num_shards=layout.num_shards,
                            skip_batches=start_step,
                            prompt_features=tuple(model.prompt_input_names))
  evaluator = None
  if eval_cfg is not None:
    from spot.train import evaluation
    evaluator = evaluation.Evaluator(model, train_dataset_cfg, eval_cfg, partitioner)

  summaries = progress.Summaries(str(mdir / "train"))
  prog = progress.Progress(train_steps, start_step, log_every)
  base_rng = jax.random.PRNGKey(seed)
  end_step = train_steps if stop_after_steps is None else min(train_steps,
                                                               start_step + stop_after_steps)
  losses: list[tuple[int, float]] = []
  eval_history: list[tuple[int, dict]] = []
  best: Optional[tuple[int, float]] = None
  bad_evals = 0
  stopped_early = False
  jitted = None
  step = start_step
  metrics = None

  def save(at_step: int, best_ckpt: bool = False):
    state = {"trainable": tr, "opt_state": opt_state, "step": jnp.asarray(at_step, jnp.int32)}
    meta = dict(run_meta, step=at_step, data_batches_consumed=at_step)
    ckpt.save(at_step, state, meta, best=best_ckpt)
    if checkpoint_cfg.save_numpy and not best_ckpt:
      checkpointing.save_prompt_numpy(model_dir, at_step, tr)

  def run_eval(at_step: int):
    nonlocal best, bad_evals, stopped_early
    params = trainable_lib.merge(tr, frozen)
    results = evaluator.evaluate(params, at_step)
    eval_history.append((at_step, results))
    summaries.scalars(at_step, {f"eval/{k}": v for k, v in results.items()})
    if eval_cfg.best_metric:
      value = evaluation.pick_metric(results, eval_cfg.best_metric)
      improved = best is None or (value > best[1] if eval_cfg.mode == "max" else value < best[1])
      if improved:
        best = (at_step, value)
        bad_evals = 0
        save(at_step, best_ckpt=True)
      else:
        bad_evals += 1
        if eval_cfg.early_stopping_patience and bad_evals >= eval_cfg.early_stopping_patience:
          stopped_early = True
    if jax.process_index() == 0:
      shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(results.items()))
      print(f"eval step {at_step}: {shown}", flush=True)

  with partitioner:
    data_iter = data_lib.iterate(ds, train_dataset_cfg.mixture_or_task_name)
    while step < end_step:
      batch = next(data_iter)
      batch = {k: v for k, v in batch.items() if k in (
          "encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
          "decoder_loss_weights", *model.prompt_input_names)}
      gbatch = partitioner.shard_batch(batch, train_dataset_cfg.batch_size)
      if jitted is None:
        jitted = jax.jit(step_fn,
                         in_shardings=(tr_sh, opt_sh, fr_sh, partitioner.batch_shardings(batch),
                                       rep, rep),
                         out_shardings=(tr_sh, opt_sh, rep), donate_argnums=(0, 1))
      tr, opt_state, metrics = jitted(tr, opt_state, frozen, gbatch,
                                      jnp.asarray(step, jnp.int32), base_rng)
      step += 1
      if prog.should_log(step) or step == end_step:
        m = jax.device_get(metrics)
        token_loss = float(m["loss"]) / max(float(m["num_tokens"]), 1.0)
        if not math.isfinite(token_loss):
          raise FloatingPointError(
              f"Loss is {token_loss} at step {step} of {model_dir}; lower the learning rate, "
              "check the data for empty targets, or resume from the last checkpoint.")
        scalars = {"loss": token_loss,
                   "accuracy": float(m["correct"]) / max(float(m["num_tokens"]), 1.0),
                   "grad_norm": float(m["grad_norm"])}
        lr = _learning_rate(opt_state)
        if lr is not None:
          scalars["lr"] = lr
        losses.append((step, token_loss))
        if verbose:
          prog.log(step, scalars)
        summaries.scalars(step, dict({f"train/{k}": v for k, v in scalars.items()},
                                     **{"train/steps_per_sec": prog.steps_per_sec}))
      if checkpoint_cfg.period and step % checkpoint_cfg.period == 0 and step < end_step:
        save(step)
      if (evaluator is not None and eval_cfg.period and step % eval_cfg.period == 0
          and step < end_step):
        run_eval(step)
        if stopped_early:
          if verbose and jax.process_index() == 0:
            print(f"Early stopping at step {step}: no improvement of {eval_cfg.best_metric} "
                  f"in {eval_cfg.early_stopping_patience} evaluations.", flush=True)
          break
    if step > start_step or latest is None:
      save(step)
    if evaluator is not None and step == train_steps or (evaluator is not None and stopped_early):
      if not eval_history or eval_history[-1][0] != step:
        run_eval(step)
  summaries.close()
  ckpt.close()
  if eval_history and jax.process_index() == 0:
    _write_final_metrics(model, model_dir, train_dataset_cfg.mixture_or_task_name,
                         eval_history, best,
                         method or ("prompt_tuning" if trainable == "prompt" else "model_tuning"),
                         seed)
  final_loss = losses[-1][1] if losses else float("nan")
  return TrainResult(model_dir=str(model_dir), step=step, final_loss=final_loss, losses=losses,
                     eval_history=eval_history, best=best,
                     steps_per_sec=(step - start_step) / max(prog.elapsed, 1e-9),
                     stopped_early=stopped_early)
