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
  point and resumed ends with the same prompt as an uninterrupted one. The
  checkpoint meta also carries the eval history, the best (step, value) and the
  bad-eval count, so best/, early stopping and metrics.json come out the same.
- Every step returns a finiteness flag (see `step_is_finite`); it is read one
  step late (a scalar, no stall) and always before a save, so no checkpoint or
  export ever holds a diverged state.
- Everything that can be checked cheaply (task, batch split, eval settings,
  model_dir writable, base checkpoint and prompt shape on resume) is checked
  before the first file in model_dir changes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import traverse_util

from spot import errors
from spot import io as spot_io
from spot import partitioning as partitioning_lib
from spot.train import checkpointing, optimizers, progress, trainable as trainable_lib
from spot.train import state as state_lib
from spot.train.models import EncoderDecoderModel

logger = logging.getLogger(__name__)

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


@dataclasses.dataclass(frozen=True)
class EvalState:
  """What a resumed run needs to continue best/ and early stopping as if never stopped.

  Attributes:
    history: [(step, {"task/metric": value or None})] (None: non-finite).
    best: (step, value) of the best finite best_metric so far, or None.
    bad_evals: evaluations since the best without improvement.
  """

  history: tuple[tuple[int, Mapping[str, Optional[float]]], ...] = ()
  best: Optional[tuple[int, float]] = None
  bad_evals: int = 0

  def to_meta(self) -> dict:
    return {"eval_history": [[s, dict(r)] for s, r in self.history],
            "best": list(self.best) if self.best else None, "bad_evals": self.bad_evals}

  @classmethod
  def from_meta(cls, meta: Mapping[str, Any]) -> "EvalState":
    best = meta.get("best")
    return cls(history=tuple((int(s), dict(r)) for s, r in meta.get("eval_history") or ()),
               best=(int(best[0]), float(best[1])) if best else None,
               bad_evals=int(meta.get("bad_evals") or 0))

  def evaluated(self, step: int) -> bool:
    return any(s == step for s, _ in self.history)


def finite_results(results: Mapping[str, Any], step: int) -> dict[str, Optional[float]]:
  """{"task/metric": value} with non-finite values as None (logged as a warning).

  STS-B's Pearson/Spearman are NaN while early predictions are constant;
  T5X logs such a metric and carries on, and so does spot: None is JSON null.
  """
  out: dict[str, Optional[float]] = {}
  for k, v in results.items():
    value = None if v is None else float(v)
    if value is not None and not math.isfinite(value):
      logger.warning("Eval metric %s is %s at step %d; recorded as null.", k, value, step)
      value = None
    out[k] = value
  return out


def improves(value: Optional[float], best: Optional[tuple[int, float]], mode: str) -> bool:
  """Whether `value` beats `best`; a missing or non-finite value never does."""
  if value is None or not math.isfinite(value):
    return False
  if best is None:
    return True
  return value > best[1] if mode == "max" else value < best[1]


def record_eval(state: EvalState, step: int, results: Mapping[str, Optional[float]],
                best_metric: Optional[str], mode: str) -> EvalState:
  """The EvalState after one evaluation at `step` (pure)."""
  history = state.history + ((step, dict(results)),)
  if not best_metric:
    return dataclasses.replace(state, history=history)
  from spot.train import evaluation  # pylint: disable=g-import-not-at-top
  value = evaluation.pick_metric(results, best_metric)
  if improves(value, state.best, mode):
    return EvalState(history, (step, value), 0)
  return EvalState(history, state.best, state.bad_evals + 1)


def write_xgen_scores(model: EncoderDecoderModel, model_dir: str, results: Mapping[str, float],
                      method: str, **meta: Any) -> None:
  """`xgen_scores.json` for `spot xgen report` when the results hold xGen metrics."""
  from spot.models import size_name
  from spot.xgen import report as xgen_report
  by_task: dict[str, dict] = {}
  for key, value in results.items():
    task, _, metric = key.partition("/")
    if value is not None:
      by_task.setdefault(task, {})[metric] = value
  scores = xgen_report.scores_by_language(by_task)
  if scores:
    xgen_report.write_run_scores(model_dir, scores, size=size_name(model.config), method=method,
                                 prompt_length=model.prompt_length or None, **meta)


def _write_final_metrics(model: EncoderDecoderModel, model_dir: str, task: str,
                         evals: EvalState, method: str, seed: int) -> None:
  """`metrics.json` for `spot report` (and xGen scores): the best evaluation, else the last.

  Non-finite metrics are already None (JSON null) in `evals`.
  """
  from spot import report
  step, results = evals.history[-1]
  if evals.best is not None:
    step, results = next((s, r) for s, r in evals.history if s == evals.best[0])
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


def _check_settings(data_lib: Any, cfg: Any, num_microbatches: int,
                    eval_cfg: Optional[EvalConfig]) -> None:
  """Cheap checks of the run's settings; raises UsageError naming the setting."""
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
    gin_config: the operative gin config text, saved as model_dir/config.gin
      (atomically, and only once the run's settings have been checked).
    method: the label `spot report` groups runs by (e.g. "spot_glue"); default
      "prompt_tuning" or "model_tuning" from `trainable`. After the final
      evaluation the run writes `metrics.json` (see spot.report) with the best
      evaluation (the last one without best_metric).

  Raises:
    UsageError: a setting that cannot work (task, batch split, resume with
      another base checkpoint or prompt shape), before model_dir changes.
    SystemResourceError: model_dir is not writable, before any compute.
    DivergedError: a non-finite step (nothing non-finite is ever saved).
  """
  from spot.train import data as data_lib  # pylint: disable=g-import-not-at-top
  tx = optimizer if optimizer is not None else optimizers.adafactor()
  partitioner = partitioner or partitioning_lib.Partitioner.create()
  method = method or ("prompt_tuning" if trainable == "prompt" else "model_tuning")
  mdir = epath.Path(model_dir)
  abstract_tr, _ = trainable_lib.split(
      jax.eval_shape(model.init_params, jax.random.PRNGKey(0)), trainable)
  # Recorded as an absolute path, so eval, export and the library find the base
  # from any working directory (users type relative local paths).
  initial_checkpoint_path = _absolute_checkpoint(initial_checkpoint_path)
  run_meta = {
      "base_checkpoint": initial_checkpoint_path,
      "model_config": model.config.to_dict(),
      "prompt_length": model.prompt_length,
      "trainable": list(trainable_lib.resolve(trainable)),
      "trainable_shapes": trainable_shapes(abstract_tr),
      "task": train_dataset_cfg.mixture_or_task_name,
      "task_feature_lengths": dict(train_dataset_cfg.task_feature_lengths),
      "batch_size": train_dataset_cfg.batch_size,
      "seed": seed,
  }

  # 1. Check all that is cheap to check; model_dir does not change until this passes.
  _check_settings(data_lib, train_dataset_cfg, num_microbatches, eval_cfg)
  _check_base_checkpoint(model, initial_checkpoint_path)
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

  # 2. Now the run may change model_dir: config, and what killed writers left behind.
  ckpt = checkpointing.RunCheckpointer(model_dir, keep=checkpoint_cfg.keep, writer=True)
  if jax.process_index() == 0:
    if gin_config:
      checkpointing.write_text_atomic(mdir / "config.gin", gin_config)
    for path in ckpt.set_aside_incomplete() + checkpointing.remove_stale_exports(model_dir):
      logger.warning("Set aside or removed %s, left by an interrupted save.", path)

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

  start_step = 0
  evals = EvalState()
  last_good: Optional[tuple[int, str]] = None
  if latest is not None:
    abstract = {"trainable": tr, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}
    restored, _ = ckpt.restore(abstract, step=latest)
    tr = jax.device_put(restored["trainable"], tr_sh)
    opt_state = jax.device_put(with_configured_hyperparams(restored["opt_state"], opt_state),
                               opt_sh)
    start_step = int(restored["step"])
    evals = EvalState.from_meta(resume_meta)
    last_good = (start_step, ckpt.path(start_step))
    _heal_resumed_run(ckpt, model_dir, start_step, tr, abstract, evals, checkpoint_cfg,
                      knows_best="best" in resume_meta)
    if verbose and jax.process_index() == 0:
      print(f"Resuming {model_dir} from step {start_step}.", flush=True)
  else:
    # No committed checkpoint: exports and best/ steps are a killed first try's; redone.
    ckpt.prune_best([])
    checkpointing.remove_numpy_after(model_dir, -1)
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
    evaluator = evaluation.Evaluator(model, train_dataset_cfg, eval_cfg, partitioner,
                                     model_dir=model_dir)

  summaries = progress.Summaries(str(mdir / "train"))
  prog = progress.Progress(train_steps, start_step, log_every)
  base_rng = jax.random.PRNGKey(seed)
  end_step = train_steps if stop_after_steps is None else min(train_steps,
                                                               start_step + stop_after_steps)
  guard = FiniteGuard(lambda at: diverged_message(at, model_dir, _learning_rate(opt_state),
                                                  last_good))
  losses: list[tuple[int, float]] = []
  stopped_early = _patience_spent(evals, eval_cfg)  # a rerun of a run that stopped early
  jitted = None
  step = start_step

  def save(at_step: int, best_ckpt: bool = False):
    """numpy export first, then the orbax commit: a committed step always has its export."""
    nonlocal last_good
    guard.check()  # never save a non-finite state
    state = {"trainable": tr, "opt_state": opt_state, "step": jnp.asarray(at_step, jnp.int32)}
    meta = dict(run_meta, step=at_step, data_batches_consumed=at_step, **evals.to_meta())
    if checkpoint_cfg.save_numpy:
      checkpointing.save_prompt_numpy(model_dir, at_step, tr)
    ckpt.save(at_step, state, meta, best=best_ckpt)
    if not best_ckpt:
      last_good = (at_step, ckpt.path(at_step))
      # Older best/ steps go only once a checkpoint's meta names the new best.
      ckpt.prune_best([evals.best[0]] if evals.best else [])

  def run_eval(at_step: int):
    nonlocal evals, stopped_early
    guard.check()
    raw = evaluator.evaluate(trainable_lib.merge(tr, frozen), at_step)
    results = finite_results(raw, at_step)
    evals = record_eval(evals, at_step, results, eval_cfg.best_metric, eval_cfg.mode)
    if evals.best is not None and evals.best[0] == at_step:
      save(at_step, best_ckpt=True)
    stopped_early = _patience_spent(evals, eval_cfg)
    if jax.process_index() == 0:
      print(f"eval step {at_step}: {progress.format_metrics(results)}", flush=True)

  try:
    with partitioner:
      data_iter = data_lib.iterate(ds, train_dataset_cfg.mixture_or_task_name)
      while step < end_step and not stopped_early:
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
        guard.push(step, metrics["finite"])
        if prog.should_log(step) or step == end_step:
          guard.check()
          scalars = _train_scalars(jax.device_get(metrics), _learning_rate(opt_state))
          losses.append((step, scalars["loss"]))
          if verbose:
            prog.log(step, scalars)
          summaries.scalars(step, dict({f"train/{k}": v for k, v in scalars.items()},
                                       **{"train/steps_per_sec": prog.steps_per_sec}))
        # Evaluate before saving, so the step's checkpoint meta holds its evaluation
        # (also at a stop_after_steps end: the resumed run will not come back to it).
        if (evaluator is not None and eval_cfg.period and step % eval_cfg.period == 0
            and step < train_steps):
          run_eval(step)
        if stopped_early:
          if verbose and jax.process_index() == 0:
            print(f"Early stopping at step {step}: no improvement of {eval_cfg.best_metric} "
                  f"in {eval_cfg.early_stopping_patience} evaluations.", flush=True)
          break  # saved below
        if checkpoint_cfg.period and step % checkpoint_cfg.period == 0 and step < end_step:
          save(step)
      if (evaluator is not None and (step == train_steps or stopped_early)
          and not evals.evaluated(step)):
        run_eval(step)
      if step > start_step or latest is None:
        save(step)
  finally:  # also on a divergence or an error: flush summaries, release orbax
    summaries.close()
    ckpt.close()
  if evals.history and jax.process_index() == 0:
    _write_final_metrics(model, model_dir, train_dataset_cfg.mixture_or_task_name, evals,
                         method, seed)
  final_loss = losses[-1][1] if losses else float("nan")
  return TrainResult(model_dir=str(model_dir), step=step, final_loss=final_loss, losses=losses,
                     eval_history=[(s, dict(r)) for s, r in evals.history], best=evals.best,
                     steps_per_sec=(step - start_step) / max(prog.elapsed, 1e-9),
                     stopped_early=stopped_early)


def _patience_spent(evals: EvalState, eval_cfg: Optional[EvalConfig]) -> bool:
  """Whether early stopping ends the run: EARLY_STOPPING_PATIENCE evaluations without gain."""
  patience = eval_cfg and eval_cfg.best_metric and eval_cfg.early_stopping_patience
  return bool(patience and evals.bad_evals >= patience)


def _train_scalars(m: Mapping[str, Any], learning_rate: Optional[float]) -> dict[str, float]:
  """Per-token loss and accuracy, grad norm and learning rate of one step's host metrics."""
  tokens = max(float(m["num_tokens"]), 1.0)
  scalars = {"loss": float(m["loss"]) / tokens, "accuracy": float(m["correct"]) / tokens,
             "grad_norm": float(m["grad_norm"])}
  if learning_rate is not None:
    scalars["lr"] = learning_rate
  return scalars


def _heal_resumed_run(ckpt: checkpointing.RunCheckpointer, model_dir: str, step: int,
                      trainable: Any, abstract: Mapping[str, Any], evals: EvalState,
                      checkpoint_cfg: CheckpointConfig, knows_best: bool = True) -> None:
  """Makes a resumed model_dir look as it did when checkpoint `step` was committed.

  Exports and best/ steps after `step` come from the killed run's lost steps (they
  are redone, identically, by the resumed run); an export a kill cut short is
  written again, from the restored state or from best/. A checkpoint from before
  the meta held the best step (`knows_best` False) leaves best/ as it is.
  """
  best_step = evals.best[0] if evals.best else None
  if knows_best:
    ckpt.prune_best([best_step] if best_step is not None else [])
  checkpointing.remove_numpy_after(model_dir, step)
  if not checkpoint_cfg.save_numpy:
    return
  if not checkpointing.has_prompt_numpy(model_dir, step, trainable):
    checkpointing.save_prompt_numpy(model_dir, step, trainable)
  if (best_step is not None and best_step in ckpt.best_steps()
      and not checkpointing.has_prompt_numpy(model_dir, best_step, trainable)):
    best_state, _ = ckpt.restore(abstract, step=best_step, best=True)
    checkpointing.save_prompt_numpy(model_dir, best_step, best_state["trainable"])
