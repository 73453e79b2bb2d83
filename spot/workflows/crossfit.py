"""CrossFit-style study: upstream training of the trainable parameters, then a few-shot grid.

Layout of a study directory:

    upstream/                            the upstream run (a normal run model_dir: a
                                         committed checkpoint of the trainable parameters,
                                         numpy prompt exports, run.json)
    upstream.json                        the upstream settings (UpstreamSpec) and, for
                                         first-order MAML, the per-step losses
    downstream.json                      the grid (DownstreamSpec)
    downstream/<init>/<task>/k<K>/lr<LR>_bs<B>/seed<S>   one grid cell's run; <init> is
                                         "upstream" (from the upstream prompt) or
                                         "baseline" (the run's own fresh initialisation)
    report/crossfit.md, crossfit.json    per-task results, the baseline, ARG, tunable ratio

Upstream is multi-task learning (an examples-proportional mixture of the tasks,
trained by the normal trainer) or first-order MAML (`spot.train.maml`). Both
train only `TRAINABLE` (the base stays frozen): a prompt, or a PEFT method.
Downstream starts a prompt from the upstream prompt, and any other method's
trainable parameters from the upstream run's checkpoint (the trainer's
`init_trainable_from`), so both stages work for every method.

The best grid cell of each (task, K, seed) is the one with the best dev
score (the run's metrics.json); its score is the cell's result. K is a data
budget, not a hyperparameter: each K is reported on its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
from etils import epath

from spot import errors
from spot import io as spot_io
from spot.checkpoints import run_dir
from spot.workflows import fewshot
from spot.workflows import settings as settings_lib
from spot.workflows import study as study_lib

UPSTREAM_DIR = "upstream"
UPSTREAM_JSON = "upstream.json"
DOWNSTREAM_JSON = "downstream.json"
REPORT_MD = "crossfit.md"
RESULTS_JSON = "crossfit.json"
ALGORITHMS = ("multitask", "fomaml")
INITS = ("upstream", "baseline")


# ------------------------------------------------------------------ upstream


@dataclasses.dataclass(frozen=True)
class UpstreamSpec:
  """Upstream training on `tasks`.

  Attributes:
    tasks: SeqIO task names (at least one; MAML samples among them).
    algorithm: "multitask" (a mixture, the normal trainer) or "fomaml".
    steps: trainer steps (multitask) or outer steps (fomaml).
    seed: data order and initialisation.
    inner_lr / inner_steps / inner_batch_size: fomaml's per-task SGD adaptation
      (on support batches of inner_batch_size examples; the query batch has as many).
    outer_lr: fomaml's outer Adam learning rate.
    tasks_per_meta_batch: tasks per outer step (drawn without replacement by seed and step).
  """

  tasks: tuple[str, ...]
  algorithm: str = "multitask"
  steps: int = 1000
  seed: int = 0
  inner_lr: float = 0.1
  outer_lr: float = 0.1
  inner_steps: int = 1
  inner_batch_size: int = 8
  tasks_per_meta_batch: int = 2

  def __post_init__(self):
    if not self.tasks:
      raise errors.ConfigError("upstream needs at least one task; pass --task NAME (repeat).")
    if self.algorithm not in ALGORITHMS:
      raise errors.ConfigError(f"--algorithm {self.algorithm!r}: use one of {ALGORITHMS}.")
    if self.steps < 1 or self.inner_steps < 0 or self.inner_batch_size < 1:
      raise errors.ConfigError("upstream --steps and --inner-batch-size must be >= 1 and "
                               "--inner-steps >= 0.")
    if not 1 <= self.tasks_per_meta_batch <= len(self.tasks):
      raise errors.ConfigError(f"--tasks-per-meta-batch {self.tasks_per_meta_batch} must be "
                               f"between 1 and the {len(self.tasks)} upstream task(s).")

  def to_json(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def upstream_dir(study_dir: epath.PathLike) -> epath.Path:
  return epath.Path(study_dir) / UPSTREAM_DIR


def _finished(model_dir: epath.PathLike, steps: int) -> bool:
  found = run_dir.committed_steps(model_dir) if epath.Path(model_dir).exists() else []
  return bool(found) and max(found) >= steps


def upstream_seeds(base: settings_lib.TrainSettings, spec: UpstreamSpec) -> tuple[int, int]:
  """(init seed, data seed) of the upstream run: the train flags' INIT_SEED / DATA_SEED
  where given, else --seed."""
  return (spec.seed if base.init_seed is None else int(base.init_seed),
          spec.seed if base.data_seed is None else int(base.data_seed))


def multitask_settings(base: settings_lib.TrainSettings, spec: UpstreamSpec,
                       model_dir: str) -> settings_lib.TrainSettings:
  """`base` trained on an examples-proportional mixture of the upstream tasks."""
  from spot.train import trainer  # pylint: disable=g-import-not-at-top
  from spot.workflows import targeted  # pylint: disable=g-import-not-at-top
  module, data_dir = targeted.data_settings(base)
  name, _ = targeted.register_mixture(list(spec.tasks), module=module, data_dir=data_dir)
  seeded = settings_lib.with_seeds(base, spec.seed, base.init_seed, base.data_seed)
  data = dataclasses.replace(seeded.train_dataset_cfg, mixture_or_task_name=name)
  ckpt = base.checkpoint_cfg or trainer.CheckpointConfig()
  return settings_lib.for_run(
      seeded, model_dir=model_dir, train_steps=spec.steps, train_dataset_cfg=data,
      eval_cfg=None, checkpoint_cfg=dataclasses.replace(ckpt, save_numpy=True),
      method="crossfit_multitask")


def task_batches(base: settings_lib.TrainSettings, task: str, batch_size: int,
                  seed: int) -> Iterator[dict]:
  """Endless model-feature batches of one upstream task (its own data order per seed)."""
  from spot.train import data as data_lib  # pylint: disable=g-import-not-at-top
  model = base.model
  cfg = dataclasses.replace(base.train_dataset_cfg, mixture_or_task_name=task,
                            batch_size=batch_size, seed=seed, pack=False)
  converter = data_lib.PromptFeatureConverter(model.prompt_length, pack=False,
                                               prompt_features=model.prompt_input_names)
  ds = data_lib.get_dataset(cfg, converter, prompt_features=tuple(model.prompt_input_names))
  for batch in data_lib.iterate(ds, task):
    yield model.model_features(batch)


def meta_batch_tasks(spec: UpstreamSpec, step: int, seed: Optional[int] = None) -> list[int]:
  """Indices of the tasks of outer step `step` (a function of the data seed and step;
  `seed` default: spec.seed)."""
  rng = np.random.RandomState([spec.seed if seed is None else seed, step])
  return sorted(rng.choice(len(spec.tasks), spec.tasks_per_meta_batch, replace=False).tolist())


def run_fomaml(base: settings_lib.TrainSettings, spec: UpstreamSpec, model_dir: str,
               log: Callable[[str], None] = print, log_every: int = 10) -> list[dict]:
  """First-order MAML upstream; saves the trainable parameters as a run. Returns the losses.

  Each outer step draws `tasks_per_meta_batch` tasks; each gives a support and
  then a query batch of `inner_batch_size` from its own data stream. The initial
  trainable values follow the init seed, the task draws, data order and dropout
  the data seed (`upstream_seeds`). Every CHECKPOINT_PERIOD outer steps, and at
  the end, the state is saved as a committed run checkpoint (the last at step
  `spec.steps`, with numpy exports of the prompt and run.json, like a trainer
  run); a killed run resumes from its latest checkpoint, each task's data
  stream advanced past the batches already used, so it ends where an
  uninterrupted run would. The outer step is jitted on the default devices
  (not the trainer's mesh).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from spot.train import checkpointing  # pylint: disable=g-import-not-at-top
  from spot.train import maml  # pylint: disable=g-import-not-at-top
  from spot.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from spot.train import trainable as trainable_lib  # pylint: disable=g-import-not-at-top
  model = base.model
  init_seed, data_seed = upstream_seeds(base, spec)
  params = state_lib.initial_params(model, _absolute(base.initial_checkpoint_path), init_seed)
  trainable, frozen = trainable_lib.split(params, base.trainable)
  del params
  tx = optax.adam(spec.outer_lr)
  step_fn = maml.make_outer_step(model, tx, inner_lr=spec.inner_lr, inner_steps=spec.inner_steps,
                                 use_dropout=model.config.dropout_rate > 0)
  state = maml.init_state(trainable, tx)
  period = (base.checkpoint_cfg.period if base.checkpoint_cfg is not None else 0) or spec.steps
  ckpt = checkpointing.RunCheckpointer(model_dir, keep=1, writer=True)
  try:
    ckpt.set_aside_incomplete()
    state, history = _resume(ckpt, base, spec, state, log)
    done = int(state.step)
    streams = [task_batches(base, t, spec.inner_batch_size, data_seed) for t in spec.tasks]
    for step in range(done):  # skip the support and query batches the resumed steps used
      for i in meta_batch_tasks(spec, step, data_seed):
        next(streams[i]), next(streams[i])
    rng, start = jax.random.PRNGKey(data_seed), time.perf_counter()
    for step in range(done, spec.steps):
      chosen = meta_batch_tasks(spec, step, data_seed)
      pairs = [(next(streams[i]), next(streams[i])) for i in chosen]
      state, metrics = step_fn(state, frozen, maml.stack_tasks([s for s, _ in pairs]),
                               maml.stack_tasks([q for _, q in pairs]),
                               jax.random.fold_in(rng, step))
      record = {"step": step + 1, "tasks": [spec.tasks[i] for i in chosen],
                **{k: float(v) for k, v in metrics.items()}}
      if not all(math.isfinite(record[k]) for k in ("support_loss", "query_loss")):
        raise errors.DivergedError(f"first-order MAML diverged at outer step {step + 1} "
                                   f"({record}); lower --inner-lr or --outer-lr.")
      history.append(record)
      if (step + 1) % log_every == 0 or step + 1 == spec.steps:
        rate = (step + 1 - done) / max(time.perf_counter() - start, 1e-9)
        log(f"[fomaml {step + 1}/{spec.steps}] query loss {record['query_loss']:.4f} "
            f"support loss {record['support_loss']:.4f} ({rate:.2f} steps/s)")
      if (step + 1) % period == 0 and step + 1 < spec.steps:
        _save_state(ckpt, base, spec, step + 1, state, history)
    if done < spec.steps:
      _save_state(ckpt, base, spec, spec.steps, state, history)
  finally:
    ckpt.close()
  _save_run(base, spec, model_dir, state, frozen)
  return history


def _run_meta(base: settings_lib.TrainSettings, spec: UpstreamSpec, trained: Any
              ) -> dict[str, Any]:
  """What the upstream run records about itself (checkpoint meta and run.json)."""
  from spot.train import trainable as trainable_lib  # pylint: disable=g-import-not-at-top
  from spot.train import trainer  # pylint: disable=g-import-not-at-top
  model = base.model
  init_seed, data_seed = upstream_seeds(base, spec)
  return {"base_checkpoint": _absolute(base.initial_checkpoint_path),
          "model_config": model.config.to_dict(), "prompt_length": model.prompt_length,
          "trainable": list(trainable_lib.resolve(base.trainable)),
          "trainable_shapes": trainer.trainable_shapes(trained),
          "task": "+".join(spec.tasks), "seed": spec.seed, "init_seed": init_seed,
          "data_seed": data_seed,
          "method": "prompt" if model.peft is None else model.peft.method,
          "peft": None if model.peft is None else model.peft.to_dict(),
          "upstream": spec.to_json()}


def _save_state(ckpt: Any, base: settings_lib.TrainSettings, spec: UpstreamSpec, step: int,
                state: Any, history: list[dict]) -> None:
  """The MAML state at outer step `step` as a committed run checkpoint (its losses in meta)."""
  import jax  # pylint: disable=g-import-not-at-top
  from spot.train.train_state import TrainState  # pylint: disable=g-import-not-at-top
  trained = jax.tree_util.tree_map(np.asarray, state.trainable)
  ckpt.save(step, TrainState(step=np.asarray(step, np.int32), trainable=trained,
                             opt_state=jax.tree_util.tree_map(np.asarray, state.opt_state)),
            dict(_run_meta(base, spec, trained), step=step, upstream_losses=history))


def _resume(ckpt: Any, base: settings_lib.TrainSettings, spec: UpstreamSpec, state: Any,
            log: Callable[[str], None]) -> tuple[Any, list[dict]]:
  """(state, losses so far) of the latest checkpoint of an interrupted run, or the fresh
  `state` and []; refuses a checkpoint of other upstream settings."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from spot.train import maml  # pylint: disable=g-import-not-at-top
  from spot.train import trainable as trainable_lib  # pylint: disable=g-import-not-at-top
  from spot.train.train_state import TrainState  # pylint: disable=g-import-not-at-top
  step = ckpt.latest_step()
  if step is None:
    return state, []
  meta = ckpt.read_meta(step)
  if (meta.get("upstream") != spec.to_json()
      or meta.get("trainable") != list(trainable_lib.resolve(base.trainable))):
    raise errors.ConfigError(
        f"{ckpt.model_dir} holds an upstream run of other settings ({meta.get('upstream')}); "
        "rerun with those settings, or use a new --dir.")
  abstract = TrainState(step=np.asarray(0, np.int32), trainable=state.trainable,
                        opt_state=state.opt_state)
  restored, _ = ckpt.restore(abstract, step)
  log(f"upstream: resuming first-order MAML from outer step {step} of {spec.steps}")
  return (maml.MamlState(jnp.asarray(restored.step, jnp.int32), restored.trainable,
                         restored.opt_state), list(meta.get("upstream_losses") or []))


def _save_run(base: settings_lib.TrainSettings, spec: UpstreamSpec, model_dir: str,
              state: Any, frozen: Any) -> None:
  """The numpy prompt exports, run.json and config.gin of the finished MAML run."""
  import jax  # pylint: disable=g-import-not-at-top
  from spot.train import trainable as trainable_lib  # pylint: disable=g-import-not-at-top
  trained = jax.tree_util.tree_map(np.asarray, state.trainable)
  if base.model.prompt is not None:
    run_dir.save_prompt_numpy(model_dir, spec.steps, trained)
  run_dir.write_run_json(model_dir, dict(
      _run_meta(base, spec, trained), trainable_params=trainable_lib.paths(trained),
      num_trainable=trainable_lib.count(trained), num_frozen=trainable_lib.count(frozen)))
  if base.gin_config:
    run_dir.write_config_gin(model_dir, base.gin_config)


def run_upstream(base: settings_lib.TrainSettings, spec: UpstreamSpec, study_dir: str, *,
                 log: Callable[[str], None] = print,
                 train: Callable[[settings_lib.TrainSettings], Any] = settings_lib.run
                 ) -> epath.Path:
  """Trains the upstream run under STUDY_DIR/upstream unless it is finished; returns its dir."""
  study = epath.Path(spot_io.absolute(study_dir))
  model_dir = upstream_dir(study)
  record = {"spec": spec.to_json()}
  path = study / UPSTREAM_JSON
  if _finished(model_dir, spec.steps) and path.exists():
    log(f"upstream {model_dir} is finished ({spec.steps} steps); skipped")
    return model_dir
  study.mkdir(parents=True, exist_ok=True)
  log(f"upstream: {spec.algorithm} on {', '.join(spec.tasks)} for {spec.steps} steps")
  if spec.algorithm == "multitask":
    train(multitask_settings(base, spec, str(model_dir)))
  else:
    record["losses"] = run_fomaml(base, spec, str(model_dir), log=log,
                                  log_every=max(base.log_every, 1))
  spot_io.write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
  return model_dir


def upstream_prompt(model_dir: epath.PathLike) -> np.ndarray:
  """The upstream run's final prompt [P, D]."""
  if not epath.Path(model_dir).exists() or not run_dir.numpy_steps(str(model_dir)):
    raise errors.MissingInputError(f"{model_dir} holds no prompt export; train it first with "
                                   "`spot crossfit upstream --dir DIR ...` (a prompt run).")
  return run_dir.latest_numpy_prompt(str(model_dir))


def _absolute(path: Optional[str]) -> Optional[str]:
  if path is None or path == "random":
    return path
  return spot_io.absolute(path)


# ---------------------------------------------------------------- downstream


@dataclasses.dataclass(frozen=True)
class DownstreamSpec:
  """The few-shot grid: every task x K x seed x learning rate x batch size, twice (inits).

  Attributes:
    tasks: downstream SeqIO tasks.
    learning_rates / batch_sizes / shots: the grid (LEARNING_RATE, BATCH_SIZE, K).
    seeds: each seed draws its own K examples and seeds its runs.
    steps: training steps of every cell.
    pool: train examples the K are drawn from (fewshot.DEFAULT_POOL).
    score_metric: metrics.json metric scoring a cell (default: mean of its metrics).
    train_flags: `spot train` flags of every cell (gin files, --gin.KEY=VALUE).
    upstream: the upstream run (default STUDY_DIR/upstream).
  """

  tasks: tuple[str, ...]
  learning_rates: tuple[float, ...]
  batch_sizes: tuple[int, ...]
  shots: tuple[int, ...]
  seeds: tuple[int, ...] = (0,)
  steps: int = 100
  pool: int = fewshot.DEFAULT_POOL
  score_metric: Optional[str] = None
  train_flags: tuple[str, ...] = ()
  upstream: Optional[str] = None

  def __post_init__(self):
    for name in ("tasks", "learning_rates", "batch_sizes", "shots", "seeds"):
      values = getattr(self, name)
      if not values:
        raise errors.ConfigError(f"the downstream grid needs at least one of {name}.")
      if len(set(values)) != len(values):
        raise errors.ConfigError(f"downstream {name} {list(values)} repeat a value; list each "
                                 "once.")
    if self.steps < 1:
      raise errors.ConfigError(f"downstream --steps must be at least 1, got {self.steps}.")

  def to_json(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "DownstreamSpec":
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclasses.dataclass(frozen=True)
class Cell:
  """One grid cell's run; `run_id` is its model_dir relative to the study dir."""

  init: str
  task: str
  shots: int
  learning_rate: float
  batch_size: int
  seed: int

  @property
  def run_id(self) -> str:
    return (f"downstream/{self.init}/{self.task}/k{self.shots}/"
            f"lr{self.learning_rate:g}_bs{self.batch_size}/seed{self.seed}")

  def as_study_run(self, steps: int) -> study_lib.StudyRun:
    return study_lib.StudyRun(self.run_id, "baseline", self.task, self.seed, steps)


def plan_cells(spec: DownstreamSpec) -> list[Cell]:
  return [Cell(init, task, k, lr, bs, seed)
          for init in INITS for task in spec.tasks for k in spec.shots for seed in spec.seeds
          for lr in spec.learning_rates for bs in spec.batch_sizes]


def cell_flags(cell: Cell) -> list[str]:
  """The gin overrides of a cell (they win over the spec's train flags)."""
  return [f"--gin.LEARNING_RATE={cell.learning_rate!r}", f"--gin.BATCH_SIZE={cell.batch_size}"]


def cell_settings(base: settings_lib.TrainSettings, spec: DownstreamSpec, study_dir: epath.Path,
                  cell: Cell, init: Optional[np.ndarray]) -> settings_lib.TrainSettings:
  """`base` (parsed with the cell's flags) as the cell's run on its K-shot task."""
  from spot.train import trainer  # pylint: disable=g-import-not-at-top
  data = base.train_dataset_cfg
  name = fewshot.register_fewshot(cell.task, cell.shots, cell.seed, module=data.module,
                                  data_dir=data.data_dir, vocabulary=data.vocabulary,
                                  pool=spec.pool)
  data = dataclasses.replace(data, mixture_or_task_name=name, seed=cell.seed)
  eval_cfg = dataclasses.replace(base.eval_cfg or trainer.EvalConfig(), tasks=[name])
  writers = base.metrics_writers
  if not writers:
    from spot import report_writers  # pylint: disable=g-import-not-at-top
    writers = report_writers.DEFAULT_WRITERS
  out = base if init is None else settings_lib.with_prompt_init(base, init)
  ckpt = base.checkpoint_cfg or trainer.CheckpointConfig()
  return settings_lib.for_run(
      out, model_dir=str(study_dir / cell.run_id), train_steps=spec.steps, seed=cell.seed,
      train_dataset_cfg=data, eval_cfg=eval_cfg, metrics_writers=tuple(writers),
      checkpoint_cfg=dataclasses.replace(ckpt, period=spec.steps),
      method=f"crossfit_{cell.init}")


def write_downstream_spec(study_dir: epath.Path, spec: DownstreamSpec) -> DownstreamSpec:
  """Writes downstream.json, or checks that the one there is the same grid."""
  path = study_dir / DOWNSTREAM_JSON
  return study_lib.write_or_check_spec(
      path, spec, lambda: DownstreamSpec.from_json(json.loads(path.read_text())),
      lambda diff: f"{study_dir} holds another downstream grid; use a new --dir, or rerun it "
      "with `spot crossfit downstream --dir DIR` alone.")


def read_downstream_spec(study_dir: epath.PathLike) -> DownstreamSpec:
  path = epath.Path(study_dir) / DOWNSTREAM_JSON
  if not path.exists():
    raise errors.MissingInputError(f"{path} not found; run `spot crossfit downstream --dir DIR "
                                   "--task ... -- TRAIN_FLAGS` first.")
  return DownstreamSpec.from_json(json.loads(path.read_text()))


def run_downstream(spec: DownstreamSpec, study_dir: str, *, log: Callable[[str], None] = print,
                   train: Callable[[settings_lib.TrainSettings], Any] = settings_lib.run
                   ) -> list[Cell]:
  """Trains every unfinished grid cell (finished ones are skipped); returns those trained."""
  study = epath.Path(spot_io.absolute(study_dir))
  spec = write_downstream_spec(study, spec)
  cells = plan_cells(spec)
  done = [c for c in cells if study_lib.is_finished(study, c.as_study_run(spec.steps))]
  prog = _Progress(len(cells), len(done), log)
  prog(f"{len(done)} of {len(cells)} cell(s) already finished under {study}")
  bases: dict[tuple[float, int], settings_lib.TrainSettings] = {}
  init, upstream = None, None
  trained = []
  for cell in cells:
    if cell in done:
      continue
    key = (cell.learning_rate, cell.batch_size)
    if key not in bases:
      bases[key] = settings_lib.from_flags(list(spec.train_flags) + cell_flags(cell), defaults=[
          "MODEL_DIR = 'unused'", f"MIXTURE_OR_TASK_NAME = {spec.tasks[0]!r}",
          f"TRAIN_STEPS = {spec.steps}"])
    base = bases[key]
    if not trained:
      _check_eval_splits(base, spec.tasks)
    if cell.init == "upstream" and upstream is None:
      upstream = spec.upstream or _finished_upstream(study)
      if _is_prompt_run(base):
        init = upstream_prompt(upstream)
    prog(f"training {cell.run_id} ({spec.steps} steps)")
    start = time.perf_counter()
    run = cell_settings(base, spec, study, cell, init if cell.init == "upstream" else None)
    if cell.init == "upstream" and init is None:
      # A PEFT method (or any non-prompt selection) starts from the upstream's trained values.
      run = dataclasses.replace(run, extra=dict(run.extra, init_trainable_from=str(upstream)))
    train(run)
    prog.finished(time.perf_counter() - start)
    trained.append(cell)
  prog(f"finished; `spot crossfit report {study}` writes the report")
  return trained


class _Progress(study_lib.Progress):
  """`[crossfit 3/16 ETA 1m40s] message`."""

  def __call__(self, message: str) -> None:
    self.log(f"[crossfit {self.done}/{self.total} {self.eta()}] {message}")


def _finished_upstream(study_dir: epath.Path) -> epath.Path:
  """STUDY_DIR/upstream, refused while its run (per upstream.json) is unfinished."""
  path = study_dir / UPSTREAM_JSON
  model_dir = upstream_dir(study_dir)
  if not path.exists():
    raise errors.MissingInputError(f"{path} not found: train the upstream first (`spot crossfit "
                                   f"upstream --dir {study_dir} ...`) or pass --upstream MODEL_DIR.")
  steps = int(json.loads(path.read_text())["spec"]["steps"])
  if not _finished(model_dir, steps):
    raise errors.MissingInputError(f"the upstream run {model_dir} has not reached its {steps} "
                                   "steps; rerun `spot crossfit upstream` on this --dir first.")
  return model_dir


def _check_eval_splits(base: settings_lib.TrainSettings, tasks: Sequence[str]) -> None:
  """Refuses, before any cell trains, a downstream task without the split cells are scored on."""
  from spot.train import config as train_config  # pylint: disable=g-import-not-at-top
  from spot.train import data as train_data  # pylint: disable=g-import-not-at-top
  split = (base.eval_cfg.split if base.eval_cfg is not None else "validation")
  cfg = base.train_dataset_cfg
  for name in tasks:
    # Imports MIXTURE_OR_TASK_MODULE and registers DATA_DIR's local files, as the cells will.
    task = train_data.get_task(name, cfg.module, cfg.data_dir)
    splits = list(getattr(task, "splits", None) or ())
    if split in (train_config.DEV1, train_config.DEV2):
      if not any(s.startswith("validation") for s in splits):
        raise errors.MissingInputError(
            f"downstream task {name!r} has no validation split to score its cells on (its "
            f"splits: {splits}); give its dev file under DATA_DIR or choose another --task.")
    elif splits and split not in splits:
      raise errors.MissingInputError(
          f"downstream task {name!r} has no {split!r} split to score its cells on (its splits: "
          f"{splits}); give its dev file under DATA_DIR, set --gin.EVAL_SPLIT, or choose "
          "another --task.")


def _is_prompt_run(base: settings_lib.TrainSettings) -> bool:
  """Whether the run trains only a prompt (started from the upstream prompt array)."""
  return base.trainable == "prompt" and getattr(base.model, "peft", None) is None


# -------------------------------------------------------------------- report


def cell_score(study_dir: epath.Path, spec: DownstreamSpec, cell: Cell) -> Optional[float]:
  return study_lib.run_score(study_dir, cell.as_study_run(spec.steps), spec.score_metric)


def best_cells(study_dir: epath.Path, spec: DownstreamSpec
               ) -> dict[tuple[str, str, int, int], tuple[Cell, float]]:
  """{(init, task, K, seed): (best cell, its dev score)} over learning rates x batch sizes.

  Ties go to the first cell in grid order (smaller learning rate, then batch size).
  """
  best: dict[tuple[str, str, int, int], tuple[Cell, float]] = {}
  for cell in plan_cells(spec):
    score = cell_score(study_dir, spec, cell)
    if score is None:
      continue
    key = (cell.init, cell.task, cell.shots, cell.seed)
    if key not in best or score > best[key][1]:
      best[key] = (cell, score)
  return best


def tunable_ratio(study_dir: epath.Path, cells: Iterable[Cell]) -> Optional[dict[str, Any]]:
  """{num_trainable, num_base, percent} from the first cell run.json that has the counts.

  `percent` is of the frozen base (`num_trainable / num_base * 100`), as `spot report` shows it.
  """
  for cell in cells:
    meta = run_dir.read_run_json(study_dir / cell.run_id) or {}
    if meta.get("num_trainable") is not None and meta.get("num_frozen"):
      trainable, base = int(meta["num_trainable"]), int(meta["num_frozen"])
      return {"num_trainable": trainable, "num_base": base, "percent": 100.0 * trainable / base}
  return None


def collect(study_dir: epath.PathLike) -> dict[str, Any]:
  """The study's results as one JSON-able dict (see `write_report`)."""
  from spot import report  # pylint: disable=g-import-not-at-top
  study = epath.Path(spot_io.absolute(study_dir))
  spec = read_downstream_spec(study)
  best = best_cells(study, spec)
  missing = [c.run_id for c in plan_cells(spec) if cell_score(study, spec, c) is None]
  per_k = []
  for k in spec.shots:
    rows, means = {}, {init: {} for init in INITS}
    for task in spec.tasks:
      row = {}
      for init in INITS:
        found = [best[(init, task, k, s)] for s in spec.seeds if (init, task, k, s) in best]
        scores = [score for _, score in found]
        row[init] = {"mean": float(np.mean(scores)) if scores else None,
                     "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else (
                         0.0 if scores else None),  # sample std, as spot report
                     "seeds": {str(c.seed): score for c, score in found},
                     "best_cells": {str(c.seed): {"learning_rate": c.learning_rate,
                                                  "batch_size": c.batch_size} for c, _ in found}}
        if scores:
          means[init][task] = row[init]["mean"]
      rows[task] = row
    arg, arg_error = None, None
    try:
      arg = report.average_relative_gain(means["upstream"], means["baseline"])
    except errors.SpotError as e:
      arg_error = str(e).removeprefix("ARG: ")
    per_k.append({"shots": k, "tasks": rows, "arg": arg, "arg_error": arg_error})
  upstream_json = study / UPSTREAM_JSON
  upstream = json.loads(upstream_json.read_text()) if upstream_json.exists() else None
  return {"downstream": spec.to_json(),
          "upstream": upstream and upstream.get("spec"),
          "results": per_k, "tunable": tunable_ratio(study, plan_cells(spec)),
          "missing": missing}


def markdown(r: Mapping[str, Any]) -> str:
  """The report as Markdown: a table per K (task, upstream, baseline, relative gain), ARG."""
  up = r.get("upstream") or {}
  lines = ["# CrossFit-style study", ""]
  if up:
    lines.append(f"Upstream: {up.get('algorithm')} on {', '.join(up.get('tasks', []))} "
                 f"({up.get('steps')} steps).")
  grid = r["downstream"]
  lines.append(f"Downstream grid: learning rates {grid['learning_rates']}, batch sizes "
               f"{grid['batch_sizes']}, seeds {grid['seeds']}; best cell per task, K and seed "
               "by dev score.")
  tunable = r.get("tunable")
  if tunable:
    lines.append(f"Tunable parameters: {tunable['num_trainable']:,} ({tunable['percent']:.4f}% "
                 f"of the {tunable['num_base']:,} of the frozen base).")
  fmt = lambda c: "-" if c["mean"] is None else f"{c['mean']:.2f} ± {c['std']:.2f}"
  for block in r["results"]:
    lines += ["", f"## K = {block['shots']}", "",
              "| task | upstream | baseline | relative gain (%) |", "|---|---|---|---|"]
    for task, row in block["tasks"].items():
      up_m, base_m = row["upstream"]["mean"], row["baseline"]["mean"]
      gain = ("-" if up_m is None or not base_m else f"{(up_m - base_m) / base_m * 100:+.2f}")
      lines.append(f"| {task} | {fmt(row['upstream'])} | {fmt(row['baseline'])} | {gain} |")
    lines += ["", "ARG: " + (f"{block['arg']:+.2f}%" if block["arg"] is not None
                             else f"undefined ({block['arg_error']})")]
  if r["missing"]:
    lines += ["", f"Partial: {len(r['missing'])} cell(s) not finished, e.g. {r['missing'][0]}."]
  return "\n".join(lines) + "\n"


def write_report(study_dir: epath.PathLike, out: Optional[str] = None) -> dict[str, Any]:
  """Writes OUT/crossfit.md and OUT/crossfit.json (default STUDY_DIR/report); returns them."""
  r = collect(study_dir)
  out_dir = epath.Path(out or epath.Path(spot_io.absolute(study_dir)) / "report")
  out_dir.mkdir(parents=True, exist_ok=True)
  spot_io.write_text_atomic(out_dir / RESULTS_JSON, json.dumps(r, indent=2, sort_keys=True) + "\n")
  spot_io.write_text_atomic(out_dir / REPORT_MD, markdown(r))
  return r
