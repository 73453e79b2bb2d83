"""The SPoT workflow, step by step, with spot's own trainer and library.

The demo (`spot demo`, synthetic and `--real`) runs this recipe; it supplies
how prompts are scored (`SpotWorkflow.make_scorer`).


1. `pretrain`: train a small T5 as a model (all parameters) on instruction
   tasks, and save it as a T5X checkpoint: the frozen base of every prompt.
2. `train_sources`: one prompt per source task, from a fixed initialisation,
   keeping an early checkpoint as the task's embedding; plus the generic SPoT
   prompt on the mixture of all sources. All go into a `PromptLibrary`.
3. `run_target`: for a held-out target task, train a prompt from the fixed
   (random) initialisation, whose early checkpoint is the target's task
   embedding; rank the library's sources by similarity to it; train again
   from the generic SPoT prompt and from the best retrieved source prompt.

Each run is an ordinary spot training run with its own model_dir (orbax
checkpoints, numpy prompt checkpoints, TensorBoard summaries). A finished run
leaves `demo_run.json` in its model_dir, so a workflow started again with the same
`--out` skips what is done and continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from etils import epath

from spot.workflows import settings as settings_lib

RUN_RECORD = "demo_run.json"
INITS = ("random", "spot", "retrieved")
INIT_LABELS = {"random": "random", "spot": "generic SPoT", "retrieved": "retrieved"}


@dataclasses.dataclass(frozen=True)
class Suite:
  """The tasks of one demo: sources, their mixture, targets, and how to score them.

  Attributes:
    sources: single-task source tasks (one library entry each).
    mixture: the mixture of the sources (the generic SPoT prompt's task).
    targets: held-out target tasks.
    eval_tasks: task -> the tasks whose validation sets score it, when not
      the task itself (e.g. MNLI -> its matched and mismatched sets).
    related: target -> the source it is known to be related to (for the
      report only; retrieval never sees it).
  """

  sources: tuple[str, ...]
  mixture: str
  targets: tuple[str, ...]
  eval_tasks: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  related: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def scored_on(self, task: str) -> tuple[str, ...]:
    """The validation tasks of `task`; a mixture's are those of its sources."""
    if task == self.mixture:
      return tuple(t for s in self.sources for t in self.scored_on(s))
    return tuple(self.eval_tasks.get(task, (task,)))

  @staticmethod
  def score(results: Mapping[str, float], task: str) -> float:
    """A task's score: the mean of its metrics (T5's convention, e.g. MRPC's
    F1 and accuracy) in an evaluation's {"task/metric": value} results."""
    values = [v for k, v in results.items() if k.split("/", 1)[0] == task]
    if not values:
      raise KeyError(f"Evaluation results {sorted(results)} hold no metric of {task}.")
    return float(np.mean(values))


@dataclasses.dataclass
class RunRecord:
  """What the report needs from one finished training run.

  Attributes:
    name: the run's name (its folder under `runs/`).
    task: the task or mixture trained on.
    init: "random", "spot", "retrieved", or "" for the base model.
    model_dir: where the run's checkpoints and summaries are.
    steps: training steps.
    curve: [(step, score)] of the run's evaluations (step 0 = before training).
    losses: [(step, token loss)] of the progress lines.
    results: the last evaluation's {"task/metric": value}.
    seconds: wall time of the run (training and evaluation).
    cpu_seconds: CPU time of the process meanwhile.
    source: the retrieved source entry (retrieved runs).
    similarity: its similarity to the target.
  """

  name: str
  task: str
  init: str
  model_dir: str
  steps: int
  curve: list[tuple[int, float]]
  losses: list[tuple[int, float]]
  results: dict[str, float]
  seconds: float
  cpu_seconds: float = 0.0
  source: str = ""
  similarity: Optional[float] = None

  @property
  def final(self) -> float:
    return self.curve[-1][1] if self.curve else float("nan")

  def steps_to(self, threshold: float) -> Optional[int]:
    """The first evaluated step whose score reaches `threshold`, else None."""
    for step, score in self.curve:
      if score >= threshold:
        return step
    return None

  def save(self) -> None:
    from spot.train import checkpointing
    checkpointing.write_json_atomic(epath.Path(self.model_dir) / RUN_RECORD,
                                    dataclasses.asdict(self))

  @classmethod
  def load(cls, model_dir: epath.Path) -> Optional["RunRecord"]:
    path = epath.Path(model_dir) / RUN_RECORD
    if not path.exists():
      return None
    d = json.loads(path.read_text())
    d["curve"] = [tuple(x) for x in d["curve"]]
    d["losses"] = [tuple(x) for x in d["losses"]]
    return cls(**d)


@dataclasses.dataclass
class TargetOutcome:
  """One target task: its runs by initialisation and the retrieval behind them.

  Attributes:
    task: the target task.
    runs: init ("random", "spot", "retrieved") -> its run.
    ranking: [(source entry, similarity)], best first.
    embedding_file: the target's task embedding (.npy).
  """

  task: str
  runs: dict[str, RunRecord]
  ranking: list[tuple[str, float]]
  embedding_file: str


class SpotWorkflow:
  """Runs the SPoT workflow's training jobs under one output directory.

  Prompt runs are trained by `spot.train.trainer.train` (from `TrainSettings`)
  without periodic evaluation; their learning curves come from scoring the
  numpy prompt checkpoints they save with one scorer (`make_scorer`), so the
  validation data and the compiled decoder are built once for the whole
  workflow, not once per run.

  Args:
    out: the output directory.
    suite: the tasks.
    settings: steps, lengths, learning rates (a `DemoConfig`-like object).
    seed: seeds data order and initialisations.
    log: prints one progress line.
    model_name: the base model's name in the library.
  """

  def __init__(self, out: epath.Path, suite: Suite, settings: Any, seed: int,
               log: Callable[[str], None], model_name: str):
    self.out, self.suite, self.cfg, self.seed, self.log = out, suite, settings, seed, log
    self.model_name = model_name
    self.runs_dir = out / "runs"
    self.library_path = out / "library"
    self.base_checkpoint: Optional[str] = None
    self.base_config: Any = None
    self.vocabulary: Any = None
    self._base_params: Any = None
    self._scorer: Any = None
    self._fixed_init: Optional[np.ndarray] = None

  # -- the base model --------------------------------------------------------

  def use_base(self, checkpoint: str, config: Any, vocabulary: Any,
               params: Optional[Mapping[str, Any]] = None) -> None:
    """Freezes `checkpoint` (a T5X checkpoint of `config`) as the base model.

    `params`, when given, are the checkpoint's parameters already loaded.
    """
    from spot.checkpoints import load_t5x
    self.base_checkpoint, self.base_config, self.vocabulary = checkpoint, config, vocabulary
    self._base_params = load_t5x(checkpoint, config) if params is None else params
    self._scorer = self.make_scorer(self.prompt_model(None), self._base_params)

  def make_scorer(self, model: Any, params: Mapping[str, Any]) -> Any:
    """The scorer of prompts on validation tasks: `.score(task, prompt) -> {"task/metric": v}`."""
    raise NotImplementedError("SpotWorkflow.make_scorer: subclass it with the scorer to use.")

  def pretrain(self, config: Any, vocabulary: Any, mixture: str, steps: int, batch_size: int,
               lr: float, eval_tasks: Sequence[str]) -> RunRecord:
    """Trains the base model itself on `mixture` and saves it as a T5X checkpoint."""
    from spot.checkpoints import save_t5x
    from spot.train import optimizers
    from spot.train import state as state_lib
    from spot.train.models import EncoderDecoderModel

    model = EncoderDecoderModel(config, vocabulary=vocabulary)
    schedule = optimizers.linear_warmup_cosine(lr, min(100, steps // 10 + 1), steps, lr / 10)
    record = self._train("pretrain", model, mixture, steps, batch_size, optimizers.adam(schedule),
                         init="", trainable="all", initial_checkpoint="random",
                         eval_tasks=eval_tasks, log_every=max(steps // 10, 1))
    shown = (f"validation score {record.final:.1f} with instructions" if record.curve else
             f"final training loss {record.losses[-1][1]:.3f}" if record.losses else "")
    self.log(f"base model trained: {shown} ({record.seconds:.0f}s)")
    base_dir = self.out / "base"
    ckpt = base_dir / f"checkpoint_{steps}"
    if not ckpt.exists():
      params, _ = state_lib.params_from_run(model, record.model_dir)
      ckpt = save_t5x(base_dir, params, step=steps)
      self.log(f"saved the base model as a T5X checkpoint: {ckpt}")
    self.use_base(str(ckpt), config, vocabulary)
    return record

  # -- prompts ---------------------------------------------------------------

  def prompt_model(self, init: Optional[np.ndarray]):
    """The frozen base with a prompt: from `init`, or sampled vocabulary rows.

    The sampled rows are drawn with the run's seed, so every run started
    without `init` starts from the same prompt: the fixed initialisation that
    makes early checkpoints comparable as task embeddings.
    """
    from spot import prompts
    from spot.train.models import EncoderDecoderModel
    if self._base_params is None:
      raise RuntimeError("No base model yet: call pretrain() or use_base() first.")
    if init is None:
      table = np.asarray(self._base_params["token_embedder"]["embedding"])
      prompt_init = prompts.sampled_vocab(table)  # the first 5000 rows, as prompt-tuning
    else:
      prompt_init = prompts.from_array(np.asarray(init, np.float32))
    factory = functools.partial(prompts.PrefixPrompt, length=self.cfg.prompt_length,
                                prompt_init=prompt_init)
    return EncoderDecoderModel(self.base_config, prompt=factory, vocabulary=self.vocabulary)

  def fixed_init(self) -> np.ndarray:
    """The prompt every run without an explicit init starts from (as the trainer draws it)."""
    from spot.train import state as state_lib
    if self._fixed_init is None:
      params = state_lib.initial_params(self.prompt_model(None), self.base_checkpoint, self.seed)
      self._fixed_init = np.asarray(params["encoder"]["prompt"]["prompt"]["prompt"])
    return self._fixed_init

  def train_prompt(self, name: str, task: str, steps: int, init_name: str,
                   init: Optional[np.ndarray] = None, eval_every: int = 0) -> RunRecord:
    """Trains one prompt on `task` against the frozen base.

    Numpy prompt checkpoints are kept every `eval_every` steps (else every
    `embedding_step`) and evaluated afterwards; with `eval_every` the curve
    also has the initial prompt's score at step 0.
    """
    import optax
    from spot.train import optimizers
    # Adafactor as in prompt tuning, its rate decayed to a tenth by the last step, so a
    # short run ends on a settled prompt rather than one mid-jump.
    tx = optimizers.adafactor(optax.cosine_decay_schedule(self.cfg.prompt_lr, steps, 0.1))
    # Checkpoints at every evaluation and at the embedding step.
    every = math.gcd(eval_every, self.cfg.embedding_step)  # gcd(0, n) == n
    return self._train(name, self.prompt_model(init), task, steps, self.cfg.batch_size, tx,
                       init=init_name, trainable="prompt",
                       initial_checkpoint=self.base_checkpoint,
                       eval_tasks=self.suite.scored_on(task), log_every=eval_every or steps // 2,
                       checkpoint_every=every, eval_every=eval_every,
                       initial_prompt=(None if not eval_every else
                                       self.fixed_init() if init is None else init))

  def early_prompt(self, record: RunRecord) -> np.ndarray:
    """A run's prompt at the embedding step: its task embedding."""
    from spot.library import sources
    prompt, _ = sources.model_dir_prompt(record.model_dir, step=self.cfg.embedding_step)
    return prompt

  def final_prompt(self, record: RunRecord) -> np.ndarray:
    from spot.library import sources
    prompt, _ = sources.model_dir_prompt(record.model_dir, step=record.steps)
    return prompt

  # -- evaluation --------------------------------------------------------------

  def _curve(self, record_dir: epath.Path, tasks: Sequence[str], steps: Sequence[int],
             initial_prompt: Optional[np.ndarray]) -> tuple[list[tuple[int, float]], dict]:
    """Scores of a run's numpy checkpoints (and its initial prompt at step 0),
    also written as TensorBoard scalars under `model_dir/eval`."""
    from spot.library import sources
    from spot.train import progress
    points = [(0, initial_prompt)] if initial_prompt is not None else []
    points += [(s, sources.model_dir_prompt(str(record_dir), step=s)[0]) for s in steps]
    curve, results = [], {}
    summaries = progress.Summaries(str(record_dir / "eval"))
    for step, prompt in points:
      results = {}
      for task in tasks:
        results.update(self._scorer.score(task, prompt))
      score = float(np.mean([self.suite.score(results, t) for t in tasks]))
      summaries.scalars(step, {"eval/score": score, **{f"eval/{k}": v for k, v in results.items()}})
      curve.append((step, score))
    summaries.close()
    return curve, results

  # -- the library -----------------------------------------------------------

  def library(self):
    from spot.library import PromptLibrary
    return PromptLibrary(str(self.library_path))

  def add_to_library(self, entry: str, record: RunRecord, kind: str) -> None:
    """Adds a run's final prompt with its early checkpoint as task embedding."""
    from spot.library import ModelInfo, Provenance
    lib = self.library()
    key = f"step_{self.cfg.embedding_step}"
    lib.add(entry, self.final_prompt(record),
            model=ModelInfo(self.model_name, checkpoint=self.base_checkpoint),
            embeddings={key: self.early_prompt(record)}, task=record.task,
            metrics={"score": round(record.final, 4),
                     **{k: round(v, 4) for k, v in record.results.items()}},
            provenance=Provenance(step=record.steps), overwrite=True,
            meta={"kind": kind, "run": record.model_dir, "demo_seed": self.seed})

  def train_sources(self) -> list[RunRecord]:
    """Source prompts (one per task, then the mixture), each added to the library."""
    records = []
    todo = [(t, self.cfg.source_steps) for t in self.suite.sources]
    todo.append((self.suite.mixture, self.cfg.mixture_steps))
    for i, (task, steps) in enumerate(todo, start=1):
      kind = "mixture" if task == self.suite.mixture else "source"
      self.log(f"({i}/{len(todo)}) {kind} prompt on {task}: {steps} steps from the fixed "
               f"initialisation (task embedding = step {self.cfg.embedding_step})")
      record = self.train_prompt(f"{kind}_{task}", task, steps, "fixed")
      self.log(f"{kind} prompt on {task}: score {record.final:.1f}")
      self.add_to_library(task, record, kind)
      records.append(record)
    return records

  # -- targets ---------------------------------------------------------------

  def run_target(self, task: str, index: int, total: int) -> TargetOutcome:
    """Random, generic-SPoT and retrieved initialisations on one target task."""
    from spot.library import retrieval, transfer
    from spot.library.entry import check_prompt_entry
    from spot.train import checkpointing
    steps, every = self.cfg.target_steps, self.cfg.eval_every
    head = f"target {index}/{total} {task}"
    lib = self.library()
    # Before any target trains: generic SPoT starts from the mixture's prompt, so an entry of
    # another method (LoRA, ...) under that name is refused here, naming it and its method.
    check_prompt_entry(lib.entry(self.suite.mixture))
    self.log(f"{head}: prompt from the fixed (random) initialisation; its step "
             f"{self.cfg.embedding_step} is the target's task embedding")
    runs = {"random": self.train_prompt(f"target_{task}_random", task, steps, "random",
                                        eval_every=every)}
    embedding = self.early_prompt(runs["random"])
    emb_file = epath.Path(runs["random"].model_dir) / "task_embedding.npy"
    checkpointing.save_numpy_atomic(emb_file, embedding)

    # Prompt entries only: an embedding query never ranks another method's entries.
    ranking = retrieval.rank(lib, embedding, model=self.model_name, method="prompt",
                             exclude=[self.suite.mixture])
    best, sim = ranking[0]
    self.log(f"{head}: retrieved {best} (similarity {sim:.3f}); next: "
             + ", ".join(f"{n} {s:.3f}" for n, s in ranking[1:3]))
    self.log(f"{head}: prompt from the generic SPoT prompt ({self.suite.mixture})")
    runs["spot"] = self.train_prompt(f"target_{task}_spot", task, steps, "spot",
                                     init=lib.prompt(self.suite.mixture), eval_every=every)
    self.log(f"{head}: prompt from the retrieved source prompt {best}")
    runs["retrieved"] = self.train_prompt(
        f"target_{task}_retrieved", task, steps, "retrieved",
        init=transfer.init_prompt(lib, ranking[:1], "top1"), eval_every=every)
    runs["retrieved"].source, runs["retrieved"].similarity = best, sim
    runs["retrieved"].save()
    self.log(f"{head}: final score random {runs['random'].final:.1f}, generic SPoT "
             f"{runs['spot'].final:.1f}, retrieved {runs['retrieved'].final:.1f}")
    return TargetOutcome(task, runs, ranking, str(emb_file))

  # -- one training run --------------------------------------------------------

  def _train(self, name: str, model: Any, task: str, steps: int, batch_size: int, optimizer: Any,
             *, init: str, trainable: str, initial_checkpoint: str, eval_tasks: Sequence[str],
             log_every: int, checkpoint_every: int = 0, eval_every: int = 0,
             initial_prompt: Optional[np.ndarray] = None) -> RunRecord:
    """One `trainer.train` run, or its record if an earlier demo finished it."""
    from spot.train import data as data_lib
    from spot.train import trainer

    model_dir = self.runs_dir / name
    done = RunRecord.load(model_dir)
    if done is not None and done.steps == steps:
      self.log(f"{name}: already trained ({model_dir}), skipped")
      return done
    ds_cfg = data_lib.DatasetConfig(task, dict(self.cfg.feature_lengths), batch_size=batch_size,
                                    seed=self.seed)
    prompt_run = trainable == "prompt"
    # The base model is evaluated by the trainer (once, at the end); prompt runs
    # from their numpy checkpoints afterwards.
    eval_cfg = None if prompt_run or not eval_tasks else trainer.EvalConfig(
        tasks=list(eval_tasks), num_examples=self.cfg.eval_examples,
        batch_size=self.cfg.eval_examples)
    run = settings_lib.TrainSettings(
        model=model, train_dataset_cfg=ds_cfg, model_dir=str(model_dir), train_steps=steps,
        initial_checkpoint_path=initial_checkpoint, optimizer=optimizer, trainable=trainable,
        seed=self.seed,
        checkpoint_cfg=trainer.CheckpointConfig(period=checkpoint_every, keep=1,
                                                save_numpy=prompt_run),
        eval_cfg=eval_cfg, log_every=log_every)
    start, cpu = time.perf_counter(), time.process_time()
    result = settings_lib.run(run)
    if prompt_run:
      at = list(range(eval_every, steps, eval_every)) + [steps] if eval_every else [steps]
      curve, results = self._curve(model_dir, eval_tasks, at, initial_prompt)
    else:
      results = dict(result.eval_history[-1][1]) if result.eval_history else {}
      curve = ([(steps, float(np.mean([self.suite.score(results, t) for t in eval_tasks])))]
               if results else [])
    record = RunRecord(name=name, task=task, init=init, model_dir=str(model_dir), steps=steps,
                       curve=curve, losses=[(int(s), float(l)) for s, l in result.losses],
                       # a metric the trainer recorded as null (not finite) is left out
                       results={k: float(v) for k, v in results.items() if v is not None},
                       seconds=time.perf_counter() - start,
                       cpu_seconds=time.process_time() - cpu)
    record.save()
    return record
