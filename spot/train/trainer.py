"""The training loop: frozen T5 + trainable parameters, SeqIO data, orbax checkpoints.

`train()` is the entry point `spot train` / `t5x train` configure with gin. Its
shape follows T5X's trainer: a typed `TrainState` (step, trainable, optimizer
state) with its shardings, a train step compiled through
`Partitioner.partition` over a ('data', 'model') mesh, periodic checkpoints
(`RunCheckpointer`) and evaluation with `EarlyStopping`, progress lines and
TensorBoard summaries. `train()` says in what order things happen; `_Run`
does each one. What differs from T5X, and why:

- Gradients are taken only with respect to the trainable tree (the prompt by
  default); the frozen tree enters the step as a constant argument, so it has
  no gradient buffers, no optimizer state and is never checkpointed.
- Checkpoints hold the trainable parameters, optimizer state, step and the
  data position, plus the path of the frozen base checkpoint: kilobytes for a
  prompt run instead of the full model.
- Data order and dropout are functions of (data_seed, step), and the initial
  trainable values of init_seed alone (both default to seed), so seeds of
  initialisation and of data order vary apart, and a run killed at any point
  and resumed ends with the same prompt as an uninterrupted one. The
  checkpoint meta also carries the eval history, the best (step, value) and the
  bad-eval count, so best/, early stopping and the final metrics come out the same.
- Every step returns a finiteness flag (see `step_is_finite`); it is read one
  step late (a scalar, no stall) and always before a save, so no checkpoint or
  export ever holds a diverged state.
- Everything that can be checked cheaply (task, batch split, eval settings,
  model_dir writable, base checkpoint and prompt shape on resume) is checked
  before the first file in model_dir changes.
- With protocol "dev1/dev2", evaluations during training (best/, early
  stopping) run on dev1, one half of the validation split, and the selected
  step is scored once on the other half, dev2 (`spot.train.data.dev_halves`).
- Final metrics go to the `metrics_writers` the caller passes (the run files
  bind `spot.report_writers.write_final_metrics` and
  `spot.xgen.report.write_xgen_scores`): training knows nothing of reports.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import traverse_util

from spot import errors
from spot import io as spot_io
from spot import partitioning as partitioning_lib
from spot.prompts import modules as prompt_modules
from spot.train import checkpointing, optimizers, progress, trainable as trainable_lib
from spot.train import state as state_lib
from spot.train import train_state as train_state_lib
from spot.train.config import (PROTOCOL_DEV, CheckpointConfig, EvalConfig, RunSummary,
                               check_protocol as _check_protocol, report_eval_cfg,
                               selection_eval_cfg)
from spot.train.early_stopping import EarlyStopping, finite_results
from spot.train.models import EncoderDecoderModel
from spot.train.train_state import TrainState

logger = logging.getLogger(__name__)

# `spot.train.data` (SeqIO, TensorFlow: ~700 MiB) is imported inside `train`, so
# the step itself (`make_train_step`, benchmarks) does not pay for it.


# T5's RMS layer norm squares its float32 input: a value at or above sqrt(f32 max)
# (~1.8e19) overflows x*x to inf, the norm's rsqrt to 0, and silently zeroes the
# activations and every gradient (a huge LEARNING_RATE such as 1e30 does this
# without any NaN). Trainable values must stay below it to carry any signal.
PARAM_LIMIT = float(np.sqrt(np.finfo(np.float32).max))


def _learning_rate(opt_state: Any) -> Optional[float]:
  """The current learning rate when the optimizer was built with inject_hyperparams."""
  for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=_has_hyperparams):
    if _has_hyperparams(leaf) and "learning_rate" in leaf.hyperparams:
      return float(leaf.hyperparams["learning_rate"])
  return None


def _has_hyperparams(x: Any) -> bool:
  return isinstance(getattr(x, "hyperparams", None), dict)


def with_configured_hyperparams(restored: Any, configured: Any) -> Any:
  """The restored optimizer state with the hyperparameters of this run's config.

  `optax.inject_hyperparams` keeps constant hyperparameters (the learning
  rate) in the state, so a restored state would silently keep the old
  LEARNING_RATE; the config given now wins, as in T5X. Same config: same values.
  """
  return jax.tree_util.tree_map(
      lambda r, c: r._replace(hyperparams=c.hyperparams) if _has_hyperparams(r) else r,
      restored, configured, is_leaf=_has_hyperparams)


def step_is_finite(loss: jax.Array, grads: Any, trainable: Any) -> jax.Array:
  """Scalar bool: loss and grads finite, and every updated trainable |value| < PARAM_LIMIT.

  The bound (which also rejects inf and NaN) catches the learning rates that
  do not overflow to NaN but push the prompt to magnitudes whose squares
  overflow float32 in the first layer norm (see PARAM_LIMIT): from there on the
  loss is finite, the gradient exactly zero and training is over.
  """
  ok = [jnp.isfinite(loss)]
  ok += [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]
  ok += [jnp.all(jnp.abs(p) < PARAM_LIMIT) for p in jax.tree_util.tree_leaves(trainable)]
  return jnp.all(jnp.stack(ok))


def make_train_step(model: EncoderDecoderModel, tx: optax.GradientTransformation,
                    num_microbatches: int = 1):
  """The pure train step `(trainable, opt_state, frozen, batch, step, rng) -> ...`.

  Returns `(trainable, opt_state, metrics)`; metrics hold the summed `loss`,
  `correct`, `num_tokens`, the `grad_norm` and `finite` (`step_is_finite`).
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
    metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                   finite=step_is_finite(metrics["loss"], grads, trainable))
    return trainable, opt_state, metrics

  return step_fn


def diverged_message(step: int, model_dir: str, learning_rate: Optional[float],
                     last_good: Optional[tuple[int, str]]) -> str:
  """The one-line DivergedError message: where, the last good checkpoint, what to change."""
  if learning_rate is None:
    lr = "LEARNING_RATE"
  elif math.isfinite(learning_rate):
    lr = f"LEARNING_RATE={learning_rate:g}"
  else:
    lr = "LEARNING_RATE (beyond float32's range)"
  where = (f"the last good checkpoint is step {last_good[0]} at {last_good[1]}"
           if last_good else "no checkpoint was saved before it")
  return (f"Training diverged at step {step} of MODEL_DIR {model_dir}: the loss, gradients or "
          f"updated parameters are not finite or exceed {PARAM_LIMIT:.3g} (float32 overflow); "
          f"nothing from that step was saved and {where}. Rerunning with the same {lr} diverges "
          "again (training is deterministic): lower LEARNING_RATE and use a new MODEL_DIR, or "
          "resume this MODEL_DIR with a lower LEARNING_RATE.")


class FiniteGuard:
  """Reads each step's `finite` flag one step late, and all of them before a save.

  Reading the flag of the step before the one just dispatched transfers one
  ready scalar and never waits for the device, so the per-step cost is nil;
  `check()` waits for the newest flag and is called before anything is saved,
  logged or evaluated.
  """

  def __init__(self, on_diverged):
    self._pending: list[tuple[int, jax.Array]] = []
    self._on_diverged = on_diverged

  def push(self, step: int, flag: jax.Array) -> None:
    self._pending.append((step, flag))
    while len(self._pending) > 1:
      self._read(*self._pending.pop(0))

  def check(self) -> None:
    while self._pending:
      self._read(*self._pending.pop(0))

  def _read(self, step: int, flag: jax.Array) -> None:
    if not bool(jax.device_get(flag)):
      raise errors.DivergedError(self._on_diverged(step))


def make_state_step(model: EncoderDecoderModel, tx: optax.GradientTransformation,
                    num_microbatches: int = 1):
  """`(state, frozen, batch, rng) -> (state, metrics)`: `make_train_step` over a TrainState.

  Data order and dropout depend on `state.step` (the updates before this one),
  so a resumed run takes the same steps as an uninterrupted one.
  """
  step_fn = make_train_step(model, tx, num_microbatches)

  def state_step(state: TrainState, frozen: Any, batch: Mapping[str, jax.Array],
                 rng: jax.Array) -> tuple[TrainState, dict]:
    trainable, opt_state, metrics = step_fn(state.trainable, state.opt_state, frozen, batch,
                                            state.step, rng)
    return TrainState(step=state.step + 1, trainable=trainable, opt_state=opt_state), metrics

  return state_step


def compile_train_step(partitioner: partitioning_lib.Partitioner, step_fn: Any,
                       shardings: TrainState, frozen_shardings: Any,
                       batch: Mapping[str, Any]) -> partitioning_lib.PartitionedFn:
  """The state step compiled through the partitioner; the state's buffers are donated."""
  rep = partitioner.replicated
  return partitioner.partition(
      step_fn, in_shardings=(shardings, frozen_shardings, partitioner.batch_shardings(batch), rep),
      out_shardings=(shardings, rep), donate_argnums=(0,))


def make_eval_step(model: EncoderDecoderModel):
  """`(state, frozen, batch) -> metrics`: the summed loss, correct tokens and token count.

  Compile it with `compile_eval_step`; dropout is off (no rng).
  """

  def eval_step(state: TrainState, frozen: Any, batch: Mapping[str, jax.Array]) -> dict:
    _, metrics = model.loss(trainable_lib.merge(state.trainable, frozen), batch, None)
    return metrics

  return eval_step


def compile_eval_step(partitioner: partitioning_lib.Partitioner, model: EncoderDecoderModel,
                      shardings: TrainState, frozen_shardings: Any,
                      batch: Mapping[str, Any]) -> partitioning_lib.PartitionedFn:
  """`make_eval_step(model)` compiled through the partitioner (metrics replicated)."""
  return partitioner.partition(
      make_eval_step(model),
      in_shardings=(shardings, frozen_shardings, partitioner.batch_shardings(batch)),
      out_shardings=partitioner.replicated)


MetricsWriter = Callable[[RunSummary], Any]


@dataclasses.dataclass(frozen=True)
class RunSeeds:
  """SEED and the two it defaults: INIT_SEED (initial trainable values) and DATA_SEED
  (data order and dropout)."""

  seed: int
  init_seed: int
  data_seed: int

  @classmethod
  def of(cls, seed: int, init_seed: Optional[int] = None,
         data_seed: Optional[int] = None) -> "RunSeeds":
    return cls(int(seed), int(seed if init_seed is None else init_seed),
               int(seed if data_seed is None else data_seed))


class _Run:
  """The mutable side of one `train()` call: state, saves, evaluations, logs.

  `train()` owns the order of things; this object owns how each one is done,
  so the loop reads top to bottom without closures over its variables.
  """

  def __init__(self, *, model_dir: str, ckpt: checkpointing.RunCheckpointer,
               checkpoint_cfg: CheckpointConfig, run_meta: Mapping[str, Any],
               state: TrainState, shardings: TrainState, frozen: Any, frozen_shardings: Any,
               step_fn: Any, partitioner: partitioning_lib.Partitioner,
               stopper: EarlyStopping, evaluator: Any, last_good: Optional[tuple[int, str]],
               prog: progress.Progress, verbose: bool):
    self.model_dir, self.ckpt, self.checkpoint_cfg = model_dir, ckpt, checkpoint_cfg
    self.run_meta, self.state, self.shardings = run_meta, state, shardings
    self.frozen, self.frozen_shardings, self.partitioner = frozen, frozen_shardings, partitioner
    self.step_fn, self.compiled = step_fn, None
    self.stopper, self.evaluator, self.last_good, self.verbose = stopper, evaluator, last_good, verbose
    self.guard = FiniteGuard(lambda at: diverged_message(
        at, model_dir, _learning_rate(self.state.opt_state), self.last_good))
    self.losses: list[tuple[int, float]] = []
    self.prog = prog
    self.summaries = progress.Summaries(str(epath.Path(model_dir) / "train"))

  def train_step(self, batch: Mapping[str, Any], global_batch_size: int, rng: jax.Array,
                 step: int) -> dict:
    """Runs one update; its finiteness is read one step late by the guard."""
    gbatch = self.partitioner.shard_batch(batch, global_batch_size)
    if self.compiled is None:
      self.compiled = compile_train_step(self.partitioner, self.step_fn, self.shardings,
                                         self.frozen_shardings, batch)
    self.state, metrics = self.compiled(self.state, self.frozen, gbatch, rng)
    self.guard.push(step, metrics["finite"])
    return metrics

  def log(self, step: int, metrics: Mapping[str, Any]) -> None:
    """A progress line and TensorBoard scalars of the step's (host) metrics."""
    self.guard.check()
    scalars = _train_scalars(jax.device_get(metrics), _learning_rate(self.state.opt_state))
    self.losses.append((step, scalars["loss"]))
    if self.verbose:
      self.prog.log(step, scalars)
    self.summaries.scalars(step, dict({f"train/{k}": v for k, v in scalars.items()},
                                      **{"train/steps_per_sec": self.prog.steps_per_sec}))

  def close(self) -> None:
    """Flushes the summaries and releases orbax (also after a divergence or an error)."""
    self.summaries.close()
    self.ckpt.close()

  def save(self, step: int, best: bool = False) -> None:
    """numpy export first, then the orbax commit: a committed step always has its export."""
    self.guard.check()  # never save a non-finite state
    meta = dict(self.run_meta, step=step, data_batches_consumed=step, **self.stopper.to_meta())
    if self.checkpoint_cfg.save_numpy:
      checkpointing.save_prompt_numpy(self.model_dir, step, self.state.trainable)
    self.ckpt.save(step, self.state, meta, best=best)
    if not best:
      self.last_good = (step, self.ckpt.path(step))
      # Older best/ steps go only once a checkpoint's meta names the new best.
      self.ckpt.prune_best([self.stopper.best_step] if self.stopper.best else [])

  def evaluate(self, step: int) -> None:
    """Evaluates, records the result and saves best/ when it improved."""
    self.guard.check()
    raw = self.evaluator.evaluate(trainable_lib.merge(self.state.trainable, self.frozen), step)
    results = finite_results(raw, step)
    if self.stopper.update(step, results):
      self.save(step, best=True)
    if jax.process_index() == 0:
      print(f"eval step {step}: {progress.format_metrics(results)}", flush=True)


def train(*, model: EncoderDecoderModel, train_dataset_cfg: data_lib.DatasetConfig,
          model_dir: str, train_steps: int, initial_checkpoint_path: Optional[str],
          optimizer: Optional[optax.GradientTransformation] = None,
          trainable: Union[str, Sequence[str]] = "prompt", seed: int = 0,
          init_seed: Optional[int] = None, data_seed: Optional[int] = None,
          protocol: str = PROTOCOL_DEV, num_microbatches: int = 1,
          checkpoint_cfg: CheckpointConfig = CheckpointConfig(),
          eval_cfg: Optional[EvalConfig] = None, log_every: int = 10,
          partitioner: Optional[partitioning_lib.Partitioner] = None,
          stop_after_steps: Optional[int] = None, gin_config: Optional[str] = None,
          method: Optional[str] = None, verbose: bool = True,
          metrics_writers: Sequence[MetricsWriter] = (),
          init_trainable_from: Optional[str] = None) -> TrainResult:
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
    seed: SEED, the default of the two below (and the seed of a "random" base).
    init_seed: INIT_SEED (default `seed`): the initial trainable values only
      (prompt, PEFT parameters); nothing else depends on it.
    data_seed: DATA_SEED (default `seed`): the data order and dropout (dropout
      follows the data seed, as both are per-step randomness); given, it
      replaces `train_dataset_cfg.seed`.
    protocol: PROTOCOL, "dev" (select and report on eval_cfg's split) or
      "dev1/dev2" (evaluate, keep best/ and stop early on dev1; score the
      selected step on dev2; see `spot.train.data.dev_halves`).
    num_microbatches: gradient accumulation steps per update.
    checkpoint_cfg / eval_cfg: saving and evaluation.
    log_every: steps between progress lines and summaries.
    partitioner: mesh and rules; default: all devices on the 'data' axis.
    stop_after_steps: leave after this many steps in this invocation (for
      tests of resumption), without the final evaluation.
    gin_config: the operative gin config text, saved as model_dir/config.gin
      (atomically, and only once the run's settings have been checked).
    method: the label reports group runs by (e.g. "spot_glue"); default
      "prompt_tuning" or "model_tuning" from `trainable`.
    metrics_writers: called on process 0 with a `RunSummary` of the best
      evaluation (the last one without best_metric) after the final one, e.g.
      `spot.report_writers.write_final_metrics` (metrics.json) and
      `spot.xgen.report.write_xgen_scores`; the run files bind both.
    init_trainable_from: INIT_TRAINABLE_FROM, a run's model_dir: a fresh start
      takes its trainable values (prompt or PEFT parameters) from that run's
      latest committed checkpoint instead of the initializers (CrossFit-style
      downstream). Ignored on resume.

  Raises:
    UsageError: a setting that cannot work (task, batch split, resume with
      another base checkpoint or prompt shape), before model_dir changes.
    SystemResourceError: model_dir is not writable, before any compute.
    DivergedError: a non-finite step (nothing non-finite is ever saved).
  """
  from spot.train import data as data_lib  # pylint: disable=g-import-not-at-top
  tx = optimizer if optimizer is not None else optimizers.adafactor()
  partitioner = partitioner or partitioning_lib.Partitioner.create()
  initial_checkpoint_path = _absolute_checkpoint(initial_checkpoint_path)
  seeds = RunSeeds.of(seed, init_seed, data_seed)
  if data_seed is not None and train_dataset_cfg.seed != data_seed:
    train_dataset_cfg = dataclasses.replace(train_dataset_cfg, seed=data_seed)
  run_meta = dict(_run_meta(model, train_dataset_cfg, trainable, initial_checkpoint_path, seeds),
                  protocol=protocol)
  if init_trainable_from:
    run_meta["init_trainable_from"] = spot_io.absolute(init_trainable_from)
  # 1. Check all that is cheap to check; model_dir does not change until this passes.
  _check_protocol(protocol, eval_cfg)
  _check_settings(data_lib, train_dataset_cfg, num_microbatches, eval_cfg, model)
  _check_base_checkpoint(model, initial_checkpoint_path)
  latest, resume_meta = _check_model_dir(model_dir, run_meta)
  start_from = (_trainable_from_run(init_trainable_from, run_meta["trainable_shapes"])
                if init_trainable_from and latest is None else None)
  # 2. Now the run may change model_dir: config, and what killed writers left behind.
  ckpt = _open_model_dir(model_dir, checkpoint_cfg.keep, gin_config)
  state, shardings, frozen, frozen_sh = _init_state(model, tx, trainable, partitioner,
                                                    initial_checkpoint_path, seeds)
  if start_from is not None:
    state = state.replace(trainable=jax.device_put(
        jax.tree_util.tree_map(np.asarray, start_from), shardings.trainable))
  stopper = EarlyStopping.from_config(eval_cfg)
  state = _resume_or_start(ckpt, model_dir, latest, resume_meta, state, shardings, stopper,
                           checkpoint_cfg, verbose)
  _write_run_json(model_dir, run_meta, state.trainable, frozen)
  start_step = step = int(state.step)
  # 3. Data (before the evaluator: it registers the tasks with the model's vocabulary),
  # then the loop. Data order and dropout are functions of (data_seed, step).
  data_iter = _train_data(data_lib, model, train_dataset_cfg, partitioner, start_step)
  end_step = (train_steps if stop_after_steps is None
              else min(train_steps, start_step + stop_after_steps))
  run = _Run(model_dir=model_dir, ckpt=ckpt, checkpoint_cfg=checkpoint_cfg, run_meta=run_meta,
             state=state, shardings=shardings, frozen=frozen, frozen_shardings=frozen_sh,
             step_fn=make_state_step(model, tx, num_microbatches), partitioner=partitioner,
             stopper=stopper, evaluator=_evaluator(model, train_dataset_cfg,
                                                   selection_eval_cfg(eval_cfg, protocol),
                                                   partitioner, model_dir),
             last_good=(step, ckpt.path(step)) if latest is not None else None,
             prog=progress.Progress(train_steps, start_step, log_every), verbose=verbose)
  rng = jax.random.PRNGKey(seeds.data_seed)  # dropout follows the data seed
  periodic_eval = bool(run.evaluator is not None and eval_cfg.period)
  try:
    with partitioner:
      while step < end_step and not stopper.should_stop:  # a rerun of a run that stopped early
        metrics = run.train_step(model.model_features(next(data_iter)),
                                 train_dataset_cfg.batch_size, rng, step + 1)
        step += 1
        if run.prog.should_log(step) or step == end_step:
          run.log(step, metrics)
        # Evaluate before saving, so the step's checkpoint meta holds its evaluation
        # (also at a stop_after_steps end: the resumed run will not come back to it).
        if periodic_eval and step % eval_cfg.period == 0 and step < train_steps:
          run.evaluate(step)
        if stopper.should_stop:
          _say(verbose, f"Early stopping at step {step}: no improvement of {eval_cfg.best_metric} "
               f"in {eval_cfg.early_stopping_patience} evaluations.")
          break  # saved below
        if checkpoint_cfg.period and step % checkpoint_cfg.period == 0 and step < end_step:
          run.save(step)
      if (run.evaluator is not None and (step == train_steps or stopper.should_stop)
          and not stopper.evaluated(step)):
        run.evaluate(step)
      if step > start_step or latest is None:
        run.save(step)
      final = _final_results(run, model, train_dataset_cfg, eval_cfg, protocol, partitioner,
                             verbose) if metrics_writers else None
  finally:
    run.close()
  method = method or ("prompt_tuning" if trainable == "prompt" else "model_tuning")
  _write_final(metrics_writers, model, model_dir, train_dataset_cfg, method, seeds, final,
               counts=(trainable_lib.count(run.state.trainable), trainable_lib.count(frozen)))
  return TrainResult(model_dir=str(model_dir), step=step,
                     final_loss=run.losses[-1][1] if run.losses else float("nan"),
                     losses=run.losses, eval_history=[(s, dict(r)) for s, r in stopper.history],
                     best=stopper.best,
                     steps_per_sec=(step - start_step) / max(run.prog.elapsed, 1e-9),
                     stopped_early=stopper.should_stop)

def _say(verbose: bool, message: str) -> None:
  if verbose and jax.process_index() == 0:
    print(message, flush=True)


def _run_meta(model: EncoderDecoderModel, cfg: Any, trainable: Union[str, Sequence[str]],
              initial_checkpoint_path: Optional[str], seeds: "RunSeeds") -> dict:
  """The run facts every checkpoint meta and run.json record (and a resume must match)."""
  abstract_tr, _ = trainable_lib.split(
      jax.eval_shape(model.init_params, jax.random.PRNGKey(0)), trainable)
  return {
      # Absolute, so eval, export and the library find the base from any directory.
      "base_checkpoint": initial_checkpoint_path,
      "model_config": model.config.to_dict(),
      "prompt_length": model.prompt_length,
      "trainable": list(trainable_lib.resolve(trainable)),
      "trainable_shapes": trainable_shapes(abstract_tr),
      "task": cfg.mixture_or_task_name,
      "task_feature_lengths": dict(cfg.task_feature_lengths),
      "batch_size": cfg.batch_size,
      "pack": bool(getattr(cfg, "pack", False)),
      "seed": seeds.seed,
      "init_seed": seeds.init_seed,
      "data_seed": seeds.data_seed,
      # The parameter-efficient method, so eval, export and the library rebuild it.
      "method": "prompt" if model.peft is None else model.peft.method,
      "peft": None if model.peft is None else model.peft.to_dict(),
  }


def _check_model_dir(model_dir: str, run_meta: Mapping[str, Any]
                     ) -> tuple[Optional[int], Optional[dict]]:
  """(latest committed step, its meta), after checking model_dir is writable and resumable."""
  if jax.process_index() == 0:
    checkpointing.check_writable(model_dir)
  reader = checkpointing.RunCheckpointer(model_dir)
  try:
    latest = reader.latest_step()
    resume_meta = reader.read_meta(latest) if latest is not None else None
  finally:
    reader.close()
  if resume_meta is not None:
    check_resume(resume_meta, run_meta, model_dir, latest)
  return latest, resume_meta


def _open_model_dir(model_dir: str, keep: int, gin_config: Optional[str]
                    ) -> checkpointing.RunCheckpointer:
  """The run's checkpoint writer, after writing config.gin and setting aside what killed
  writers left behind (process 0)."""
  ckpt = checkpointing.RunCheckpointer(model_dir, keep=keep, writer=True)
  if jax.process_index() == 0:
    if gin_config:
      checkpointing.write_text_atomic(epath.Path(model_dir) / "config.gin", gin_config)
    for path in ckpt.set_aside_incomplete() + checkpointing.remove_stale_exports(model_dir):
      logger.warning("Set aside or removed %s, left by an interrupted save.", path)
  return ckpt


def _init_state(model: EncoderDecoderModel, tx: optax.GradientTransformation,
                trainable: Union[str, Sequence[str]], partitioner: partitioning_lib.Partitioner,
                initial_checkpoint_path: Optional[str], seeds: "RunSeeds"
                ) -> tuple[TrainState, TrainState, Any, Any]:
  """(state, its shardings, frozen params, their shardings), all on their devices."""
  params = state_lib.initial_params(model, initial_checkpoint_path, seeds.seed,
                                    init_seed=seeds.init_seed)
  tr, frozen = trainable_lib.split(params, trainable)
  del params
  axes = model.param_axes()
  tr_axes, frozen_axes = trainable_lib.split(axes, trainable) if frozen else (axes, {})
  frozen_sh = partitioner.logical_to_mesh(frozen_axes, frozen)
  # Host values go straight to their shards: an XXL base never sits whole on one device.
  frozen = partitioner.put(frozen, frozen_sh, in_place=True)
  state, shardings = train_state_lib.create_state(partitioner, tx, tr, tr_axes)
  return state, shardings, frozen, frozen_sh


def _trainable_from_run(model_dir: str, shapes: Mapping[str, Sequence[int]]) -> dict:
  """The trainable tree of `model_dir`'s latest checkpoint, checked against `shapes`.

  Every '/'-joined path and shape must equal this run's (`trainable_shapes`).
  """
  trained = state_lib.trainable_from_run(model_dir)
  have = trainable_shapes(trained)
  for name in sorted(set(shapes) | set(have)):
    if list(shapes.get(name, [])) != list(have.get(name, [])) or (name in shapes) != (name in have):
      raise errors.UsageError(
          f"INIT_TRAINABLE_FROM={model_dir!r} has parameter {name} with shape "
          f"{have.get(name)} but this run trains {shapes.get(name)}; use the same PROMPT_LENGTH, "
          "TRAINABLE and PEFT settings as that run, or point INIT_TRAINABLE_FROM at a matching run.")
  return trained


def _resume_or_start(ckpt: checkpointing.RunCheckpointer, model_dir: str,
                     latest: Optional[int], resume_meta: Optional[Mapping[str, Any]],
                     fresh: TrainState, shardings: TrainState, stopper: EarlyStopping,
                     checkpoint_cfg: CheckpointConfig, verbose: bool) -> TrainState:
  """The state to train from: checkpoint `latest` (this run's hyperparameters), else `fresh`.

  Either way model_dir is made to look as it did at that step (see `_heal_resumed_run`).
  """
  if latest is None:  # No committed checkpoint: exports and best/ are a killed first try's.
    ckpt.prune_best([])
    checkpointing.remove_numpy_after(model_dir, -1)
    return fresh
  stopper.restore_meta(resume_meta)
  restored, _ = ckpt.restore(fresh, step=latest)
  state = jax.device_put(restored.replace(
      opt_state=with_configured_hyperparams(restored.opt_state, fresh.opt_state)), shardings)
  _heal_resumed_run(ckpt, model_dir, latest, state, fresh, stopper, checkpoint_cfg,
                    knows_best="best" in resume_meta)
  _say(verbose, f"Resuming {model_dir} from step {latest}.")
  return state


def _write_run_json(model_dir: str, run_meta: Mapping[str, Any], trainable: Any,
                    frozen: Any) -> None:
  if jax.process_index() == 0:
    checkpointing.write_json_atomic(epath.Path(model_dir) / "run.json", dict(
        run_meta, trainable_params=trainable_lib.paths(trainable),
        num_trainable=trainable_lib.count(trainable), num_frozen=trainable_lib.count(frozen)))


def _evaluator(model: EncoderDecoderModel, cfg: Any, eval_cfg: Optional[EvalConfig],
               partitioner: partitioning_lib.Partitioner, model_dir: str) -> Any:
  if eval_cfg is None:
    return None
  from spot.train import evaluation  # pylint: disable=g-import-not-at-top  (SeqIO)
  return evaluation.Evaluator(model, cfg, eval_cfg, partitioner, model_dir=model_dir)


def _train_data(data_lib: Any, model: EncoderDecoderModel, cfg: Any,
                partitioner: partitioning_lib.Partitioner, start_step: int) -> Iterator[dict]:
  """This host's batches from `start_step` on (data order is a function of seed and step)."""
  converter = data_lib.PromptFeatureConverter(model.prompt_length, pack=cfg.pack,
                                               prompt_features=model.prompt_input_names)
  # Hosts of one model-parallel group read the same shard (T5X's DataLayout).
  layout = partitioner.data_layout(cfg.batch_size)
  ds = data_lib.get_dataset(cfg, converter, shard_index=layout.shard_id,
                            num_shards=layout.num_shards, skip_batches=start_step,
                            prompt_features=tuple(model.prompt_input_names))
  return data_lib.iterate(ds, cfg.mixture_or_task_name)


@dataclasses.dataclass(frozen=True)
class FinalResults:
  """The evaluation a run reports: its step, the scores and how they were chosen.

  Attributes:
    step: the selected step (best of best_metric, else the last evaluated).
    results: {"task/metric": value}: that step's scores on the reporting split
      (eval_cfg's split under "dev", dev2 under "dev1/dev2").
    protocol: "dev" or "dev1/dev2".
    selection_results: under "dev1/dev2", the step's dev1 scores; else None.
  """

  step: int
  results: Mapping[str, Optional[float]]
  protocol: str = PROTOCOL_DEV
  selection_results: Optional[Mapping[str, Optional[float]]] = None


def _final_results(run: _Run, model: EncoderDecoderModel, cfg: Any,
                   eval_cfg: Optional[EvalConfig], protocol: str,
                   partitioner: partitioning_lib.Partitioner,
                   verbose: bool) -> Optional[FinalResults]:
  """The selected evaluation; under "dev1/dev2" the selected step scored on dev2.

  None when nothing was evaluated, or (dev1/dev2) when the selected step's
  parameters are gone (neither in best/ nor the current state: a run left by
  stop_after_steps before evaluating its last step).
  """
  if not run.stopper.history:
    return None
  step, results = run.stopper.final()
  if protocol == PROTOCOL_DEV:
    return FinalResults(step, results)
  trainable = _trainable_at(run, step)
  if trainable is None:
    logger.warning("No parameters of the selected step %d are kept; dev2 is not scored.", step)
    return None
  from spot.train import evaluation  # pylint: disable=g-import-not-at-top  (SeqIO)
  dev2 = evaluation.Evaluator(model, cfg, report_eval_cfg(eval_cfg, protocol), partitioner)
  scores = finite_results(dev2.evaluate(trainable_lib.merge(trainable, run.frozen), step), step)
  _say(verbose, f"dev2 eval of step {step} (selected on dev1): {progress.format_metrics(scores)}")
  return FinalResults(step, scores, protocol, selection_results=results)


def _trainable_at(run: _Run, step: int) -> Any:
  """The trainable parameters of `step`: the current state's, else best/'s, else None."""
  if int(run.state.step) == step:
    return run.state.trainable
  if step in run.ckpt.best_steps():
    restored, _ = run.ckpt.restore(run.state, step=step, best=True)
    return jax.device_put(restored.trainable, run.shardings.trainable)
  return None


def _write_final(writers: Sequence[MetricsWriter], model: EncoderDecoderModel, model_dir: str,
                 cfg: Any, method: str, seeds: "RunSeeds", final: Optional[FinalResults],
                 counts: tuple[int, int]) -> None:
  """Hands the reported evaluation (`_final_results`) to each writer, on process 0.

  `counts` is (trainable parameters, frozen base parameters).
  """
  if not writers or final is None or jax.process_index() != 0:
    return
  from spot.models import size_name  # pylint: disable=g-import-not-at-top
  summary = RunSummary(
      model_dir=str(model_dir), task=cfg.mixture_or_task_name, method=method, seed=seeds.seed,
      step=final.step, results=final.results, model_size=size_name(model.config),
      prompt_length=model.prompt_length or None, protocol=final.protocol,
      selection_results=final.selection_results, init_seed=seeds.init_seed,
      data_seed=seeds.data_seed, peft=None if model.peft is None else model.peft.to_dict(),
      num_trainable=counts[0], num_base=counts[1])
  for write in writers:
    write(summary)


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


def _check_settings(data_lib: Any, cfg: Any, num_microbatches: int,
                    eval_cfg: Optional[EvalConfig], model: EncoderDecoderModel) -> None:
  """Cheap checks of the run's settings; raises UsageError naming the setting."""
  if getattr(cfg, "pack", False) and model.prompt is not None:
    prompt = model.prompt()
    if not prompt_modules.supports_packing(prompt):
      raise errors.ConfigError(
          f"PACK=True, but the prompt {type(prompt).__name__} cannot write a prompt per packed "
          "segment; use --gin.PACK=False (or a PrefixPrompt, MultiTaskPrompt or "
          "FactorizedPrompt).")
  if cfg.batch_size % max(num_microbatches, 1):
    raise errors.UsageError(f"BATCH_SIZE {cfg.batch_size} is not divisible by "
                            f"num_microbatches {num_microbatches}; choose a multiple.")
  names = [cfg.mixture_or_task_name] + list((eval_cfg and eval_cfg.tasks) or ())
  for name in names:
    try:
      data_lib.get_task(name, cfg.module, cfg.data_dir)
    except errors.SpotError:
      raise
    except ValueError as e:
      raise errors.UsageError(str(e)) from e
  if eval_cfg is not None and eval_cfg.mode not in ("max", "min"):
    raise errors.UsageError(f"EvalConfig.mode is {eval_cfg.mode!r}; use 'max' or 'min'.")


def _check_base_checkpoint(model: EncoderDecoderModel, path: Optional[str]) -> None:
  """INITIAL_CHECKPOINT_PATH is set, exists and fits the model (its metadata only)."""
  if not path:
    raise errors.UsageError("INITIAL_CHECKPOINT_PATH is not set: give the frozen base model's "
                            "T5X checkpoint (or 'random' for a randomly initialised model).")
  check = getattr(state_lib, "check_base_checkpoint", None)  # metadata-only shape check
  if path != state_lib.RANDOM_INIT and check is not None:
    check(model.config, path)


def trainable_shapes(tree: Any) -> dict[str, list[int]]:
  return {k: list(np.shape(v)) for k, v in traverse_util.flatten_dict(dict(tree), sep="/").items()}


def _absolute_checkpoint(path: Optional[str]) -> Optional[str]:
  """A local checkpoint path made absolute; gs:// paths, "random" and None as given."""
  if not path or path == "random":
    return path
  return spot_io.absolute(path)


def check_resume(meta: Mapping[str, Any], run_meta: Mapping[str, Any], model_dir: str,
                 step: int) -> None:
  """Refuses a resume that cannot continue the saved run; reads only the checkpoint meta."""
  saved, given = meta.get("base_checkpoint"), run_meta["base_checkpoint"]
  if saved != given and _absolute_checkpoint(saved) != given:
    raise errors.UsageError(
        f"MODEL_DIR {model_dir} was trained from base checkpoint {saved!r}, not "
        f"INITIAL_CHECKPOINT_PATH={given!r}; use the same INITIAL_CHECKPOINT_PATH or a new "
        "MODEL_DIR.")
  saved_len, given_len = meta.get("prompt_length"), run_meta["prompt_length"]
  if saved_len is not None and saved_len != given_len:
    raise errors.UsageError(
        f"PROMPT_LENGTH={given_len} does not match the prompt of length {saved_len} saved in "
        f"MODEL_DIR {model_dir} (step {step}); resume with PROMPT_LENGTH={saved_len} or use a "
        "new MODEL_DIR.")
  # A run saved before PACK existed was unpacked: resuming it packed would change its data.
  saved_pack, given_pack = bool(meta.get("pack", False)), bool(run_meta.get("pack", False))
  if saved_pack != given_pack:
    raise errors.UsageError(
        f"PACK={given_pack} but MODEL_DIR {model_dir} was trained with PACK={saved_pack} "
        f"(step {step}): its batches, and so the resumed data order, differ; resume with "
        f"PACK={saved_pack} or use a new MODEL_DIR.")
  _check_resume_seeds(meta, run_meta, model_dir, step)
  shapes = meta.get("trainable_shapes")
  if shapes is not None:
    for path, shape in run_meta["trainable_shapes"].items():
      if path in shapes and list(shapes[path]) != list(shape):
        raise errors.UsageError(
            f"Trainable parameter {path} has shape {tuple(shape)} but MODEL_DIR {model_dir} "
            f"saved {tuple(shapes[path])} (step {step}); use the model settings of that run "
            "(PROMPT, PROMPT_LENGTH) or a new MODEL_DIR.")
    if set(shapes) != set(run_meta["trainable_shapes"]):
      raise errors.UsageError(
          f"The trainable parameters {sorted(run_meta['trainable_shapes'])} differ from the "
          f"{sorted(shapes)} saved in MODEL_DIR {model_dir}; use that run's PROMPT and "
          "trainable selection, or a new MODEL_DIR.")


def _check_resume_seeds(meta: Mapping[str, Any], run_meta: Mapping[str, Any], model_dir: str,
                        step: int) -> None:
  """INIT_SEED, DATA_SEED and PROTOCOL must be the saved run's (a run saved before they
  existed used its SEED for both seeds and "dev"; one without any seed is not checked)."""
  for name, key in (("INIT_SEED", "init_seed"), ("DATA_SEED", "data_seed")):
    saved, given = meta.get(key, meta.get("seed")), run_meta.get(key)
    if saved is not None and given is not None and int(saved) != int(given):
      raise errors.UsageError(
          f"{name}={given} but MODEL_DIR {model_dir} was trained with {name}={saved} (step "
          f"{step}): the resumed run would not continue it; resume with {name}={saved} (or "
          "SEED) or use a new MODEL_DIR.")
  # The eval history and best/ were chosen on one split; another protocol would mix two.
  saved, given = meta.get("protocol", PROTOCOL_DEV), run_meta.get("protocol", PROTOCOL_DEV)
  if saved != given:
    raise errors.UsageError(
        f"PROTOCOL={given!r} but MODEL_DIR {model_dir} was trained with PROTOCOL={saved!r} "
        f"(step {step}): its evaluations and best/ were chosen on another split; resume with "
        f"PROTOCOL={saved!r} or use a new MODEL_DIR.")


def _train_scalars(m: Mapping[str, Any], learning_rate: Optional[float]) -> dict[str, float]:
  """Per-token loss and accuracy, grad norm and learning rate of one step's host metrics."""
  tokens = max(float(m["num_tokens"]), 1.0)
  scalars = {"loss": float(m["loss"]) / tokens, "accuracy": float(m["correct"]) / tokens,
             "grad_norm": float(m["grad_norm"])}
  if "num_examples" in m:  # examples in the step: rows, or the segments of packed rows
    scalars["examples"] = float(m["num_examples"])
  if learning_rate is not None:
    scalars["lr"] = learning_rate
  return scalars


def _heal_resumed_run(ckpt: checkpointing.RunCheckpointer, model_dir: str, step: int,
                      state: TrainState, abstract: TrainState, stopper: EarlyStopping,
                      checkpoint_cfg: CheckpointConfig, knows_best: bool = True) -> None:
  """Makes a resumed model_dir look as it did when checkpoint `step` was committed.

  Exports and best/ steps after `step` come from the killed run's lost steps (they
  are redone, identically, by the resumed run); an export a kill cut short is
  written again, from the restored state or from best/. A checkpoint from before
  the meta held the best step (`knows_best` False) leaves best/ as it is.
  """
  best_step = stopper.best_step
  if knows_best:
    ckpt.prune_best([best_step] if best_step is not None else [])
  checkpointing.remove_numpy_after(model_dir, step)
  if not checkpoint_cfg.save_numpy:
    return
  if not checkpointing.has_prompt_numpy(model_dir, step, state.trainable):
    checkpointing.save_prompt_numpy(model_dir, step, state.trainable)
  if (best_step is not None and best_step in ckpt.best_steps()
      and not checkpointing.has_prompt_numpy(model_dir, best_step, state.trainable)):
    best_state, _ = ckpt.restore(abstract, step=best_step, best=True)
    checkpointing.save_prompt_numpy(model_dir, best_step, best_state.trainable)
