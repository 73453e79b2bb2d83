"""The task-transferability study (SPoT sec. 4): every source -> target transfer.

A study is a grid of ordinary training runs, each its own model_dir under one
study directory:

    study.json                          the study's settings (StudySpec + train flags)
    sources/<task>/seed<k>              a source prompt (its early checkpoint: the
                                        task's embedding, from the first seed)
    baselines/<target>/seed<k>          the target trained from the fixed init
    embeddings/<task>.npy               task embeddings [P, D] (first seed, step
                                        `embedding_step` of the run above)
    transfers/<source>__<target>/seed<k>  target initialised from the source prompt
    retrieval/weighted_average/<target>/seed<k>  from the top-k weighted average
    retrieval/mixture/<target>/seed<k>  trained on the top-k sources + target mixed

A run is finished when its model_dir holds `metrics.json` and a committed
checkpoint at its last step; a rerun skips finished runs and the trainer
resumes interrupted ones. A target that is also a source is never its own
candidate. `plan` lists the runs in dependency order as one command each
(`spot study run --dir DIR --only RUN_ID`), for launchers on other machines;
`pending_stages` groups the unfinished ones into stages a launcher runs in
parallel, one stage after the other (spot.workflows.study_launch renders them).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Iterable, Optional

import numpy as np
from etils import epath

from spot import errors
from spot import io as spot_io
from spot.checkpoints import run_dir
from spot.workflows import settings as settings_lib

STUDY_FILE = "study.json"
KINDS = ("source", "baseline", "transfer", "weighted_average", "mixture")
STAGES = {"source": 0, "baseline": 0, "transfer": 1, "weighted_average": 1, "mixture": 1}
DEFAULT_TOP_KS = (1, 3, 6, 9, 12, 15)


@dataclasses.dataclass(frozen=True)
class StudySpec:
  """What a study trains.

  Attributes:
    sources / targets: SeqIO task names (a task may be both; it is then not
      its own candidate).
    library / library_sources: a prompt library and entry names used as sources
      as they are (no source run; the entry's prompt for every seed, its first
      task embedding, its task for mixtures). Entries of another base model
      are refused.
    seeds: every source, baseline and transfer is run once per seed.
    source_steps / target_steps: training steps of source and target runs.
    embedding_step: the early checkpoint kept as a task embedding (first seed).
    top_ks: k of the retrieval table's best of top-k (k = all sources is added).
    weighted_k: k of the top-k weighted-average runs (0: none).
    mixture_k: k of the top-k multi-task mixture runs (0: none).
    metric: similarity that ranks sources for retrieval ("avg_tokens" or "per_token").
    score_metric: metric of metrics.json that scores a run (0..100); default
      the mean of its metrics (T5's convention).
    train_flags: `spot train` flags of every run (gin files, --gin.KEY=VALUE).
  """

  sources: tuple[str, ...]
  targets: tuple[str, ...]
  seeds: tuple[int, ...] = (0,)
  source_steps: int = 1000
  target_steps: int = 1000
  embedding_step: int = 100
  top_ks: tuple[int, ...] = DEFAULT_TOP_KS
  weighted_k: int = 3
  mixture_k: int = 0
  metric: str = "avg_tokens"
  score_metric: Optional[str] = None
  train_flags: tuple[str, ...] = ()
  library: Optional[str] = None
  library_sources: tuple[str, ...] = ()

  def __post_init__(self):
    if self.library_sources and not self.library:
      raise errors.ConfigError("library sources need the library: pass --library PATH.")
    if set(self.library_sources) & set(self.sources):
      raise errors.ConfigError(f"{sorted(set(self.library_sources) & set(self.sources))} are "
                               "both trained and library sources; name each once.")
    for name in ("sources", "targets", "seeds"):
      values = self.all_sources if name == "sources" else getattr(self, name)
      if not values:
        raise errors.ConfigError(f"a study needs at least one of {name}; pass --{name[:-1]} ...")
      if len(set(values)) != len(values):
        raise errors.ConfigError(f"study {name} {list(values)} repeat a name; list each once.")
    for name in ("source_steps", "target_steps", "embedding_step"):
      if int(getattr(self, name)) < 1:
        raise errors.ConfigError(f"study {name} must be at least 1, got {getattr(self, name)}.")
    if self.embedding_step > min(self.source_steps, self.target_steps):
      raise errors.ConfigError(f"embedding_step {self.embedding_step} exceeds the source or "
                               "target steps; it must be an early checkpoint of both.")
    if self.metric not in ("avg_tokens", "per_token"):
      raise errors.ConfigError(f"unknown similarity {self.metric!r}; use avg_tokens or per_token.")
    if any(len(self.candidates(t)) == 0 for t in self.targets):
      raise errors.ConfigError("a target has no source other than itself; add sources.")

  @property
  def all_sources(self) -> tuple[str, ...]:
    """Trained sources, then library sources."""
    return tuple(self.sources) + tuple(self.library_sources)

  def candidates(self, target: str) -> tuple[str, ...]:
    """The sources a target is scored against: every source but the target itself."""
    return tuple(s for s in self.all_sources if s != target)

  def excluded(self) -> list[str]:
    """Targets that are also sources (left out of their own candidates)."""
    return [t for t in self.targets if t in self.all_sources]

  def to_json(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "StudySpec":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise errors.ConfigError(f"{STUDY_FILE} has unknown keys {unknown}; was it written by a "
                               "newer spot?")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclasses.dataclass(frozen=True)
class StudyRun:
  """One training run of a study; `run_id` is its model_dir relative to the study dir."""

  run_id: str
  kind: str
  task: str
  seed: int
  steps: int
  source: Optional[str] = None  # transfer: the source task

  @property
  def stage(self) -> int:
    return STAGES[self.kind]


def embedding_owner(spec: StudySpec, task: str) -> str:
  """The run whose step `embedding_step` checkpoint is `task`'s embedding (first seed)."""
  kind = "sources" if task in spec.sources else "baselines"
  return f"{kind}/{task}/seed{spec.seeds[0]}"


def embedding_file(study_dir: epath.PathLike, task: str) -> epath.Path:
  return epath.Path(study_dir) / "embeddings" / f"{task}.npy"


def plan_runs(spec: StudySpec) -> list[StudyRun]:
  """Every run of the study, in dependency order (sources and baselines first)."""
  runs = []
  for seed in spec.seeds:
    runs += [StudyRun(f"sources/{s}/seed{seed}", "source", s, seed, spec.source_steps)
             for s in spec.sources]
    runs += [StudyRun(f"baselines/{t}/seed{seed}", "baseline", t, seed, spec.target_steps)
             for t in spec.targets]
  for seed in spec.seeds:
    for t in spec.targets:
      runs += [StudyRun(f"transfers/{s}__{t}/seed{seed}", "transfer", t, seed, spec.target_steps,
                        source=s) for s in spec.candidates(t)]
      if spec.weighted_k:
        runs.append(StudyRun(f"retrieval/weighted_average/{t}/seed{seed}", "weighted_average",
                             t, seed, spec.target_steps))
      if spec.mixture_k:
        runs.append(StudyRun(f"retrieval/mixture/{t}/seed{seed}", "mixture", t, seed,
                             spec.target_steps))
  return runs


def find_run(spec: StudySpec, run_id: str) -> StudyRun:
  runs = {r.run_id: r for r in plan_runs(spec)}
  if run_id.rstrip("/") not in runs:
    raise errors.UnknownNameError(f"--only {run_id!r} is not a run of this study; "
                                  "`spot study plan --dir DIR` lists them.")
  return runs[run_id.rstrip("/")]


# ----------------------------------------------------------------- run state


def is_finished(study_dir: epath.PathLike, run: StudyRun) -> bool:
  """Whether the run's model_dir holds metrics.json and a committed checkpoint at its end."""
  model_dir = epath.Path(study_dir) / run.run_id
  if not (model_dir / run_dir.METRICS_JSON).exists():
    return False
  steps = run_dir.committed_steps(model_dir)
  return bool(steps) and max(steps) >= run.steps


def run_score(study_dir: epath.PathLike, run: StudyRun,
              score_metric: Optional[str] = None) -> Optional[float]:
  """A finished run's score (0..100) from its metrics.json, else None."""
  if not is_finished(study_dir, run):
    return None
  metrics = run_dir.read_metrics(epath.Path(study_dir) / run.run_id) or {}
  return score_of(metrics.get("scores", {}), score_metric, run.run_id)


def score_of(scores: dict[str, Any], score_metric: Optional[str], where: str) -> Optional[float]:
  """`scores[score_metric]`, or the mean of the finite scores (None when there is none)."""
  if score_metric:
    matches = [v for k, v in scores.items() if k == score_metric or k.endswith(f"/{score_metric}")]
    if not matches:
      raise errors.DataError(f"{where}/metrics.json has no metric {score_metric!r} (it has "
                             f"{sorted(scores)}); pass one of those as --score-metric.")
    values = matches
  else:
    values = list(scores.values())
  values = [float(v) for v in values if v is not None and np.isfinite(v)]
  return float(np.mean(values)) if values else None


def read_spec(study_dir: epath.PathLike) -> StudySpec:
  path = epath.Path(study_dir) / STUDY_FILE
  if not path.exists():
    raise errors.MissingInputError(f"{path} not found: {study_dir} is not a study directory; "
                                   "start one with `spot study run --dir DIR --source ...`.")
  return StudySpec.from_json(json.loads(path.read_text()))


def write_or_check_spec(path: epath.Path, spec: Any, read: Callable[[], Any],
                        mismatch: Callable[[list[str]], str]) -> Any:
  """Writes a recipe's spec JSON at `path`, or returns the one there when it equals `spec`.

  A different saved spec raises ConfigError(mismatch(names of the differing fields)),
  so a rerun never mixes two recipes' runs in one directory.
  """
  if path.exists():
    old = read()
    if old != spec:
      diff = [f.name for f in dataclasses.fields(spec)
              if getattr(old, f.name) != getattr(spec, f.name)]
      raise errors.ConfigError(mismatch(diff))
    return old
  path.parent.mkdir(parents=True, exist_ok=True)
  spot_io.write_text_atomic(path, json.dumps(spec.to_json(), indent=2, sort_keys=True) + "\n")
  return spec


def write_spec(study_dir: epath.PathLike, spec: StudySpec) -> StudySpec:
  """Writes study.json, or checks that the one there is the same study."""
  return write_or_check_spec(
      epath.Path(study_dir) / STUDY_FILE, spec, lambda: read_spec(study_dir),
      lambda diff: f"{study_dir} holds a study with other settings ({', '.join(diff)}); use a "
      "new --dir, or run it as is with `spot study run --dir DIR` alone.")


def check_library_sources(spec: StudySpec, base: settings_lib.TrainSettings) -> None:
  """Refuses library sources that are not prompts, or prompts for another base model,
  naming them all, before any run trains."""
  from spot.library.entry import check_run_model  # pylint: disable=g-import-not-at-top
  from spot.library.errors import MethodMismatchError, ModelMismatchError  # pylint: disable=g-import-not-at-top
  if not spec.library_sources:
    return
  lib, other = _library(spec), []
  entries = [lib.entry(name) for name in spec.library_sources]
  not_prompts = [f"{e.name} ({e.method})" for e in entries if not e.is_prompt]
  if not_prompts:
    raise MethodMismatchError(
        f"library source(s) {', '.join(not_prompts)} hold another method's parameters, not "
        "prompts; a study transfers prompts: drop them, or give entries of method 'prompt' "
        "(spot library list --method prompt).")
  for name, entry in zip(spec.library_sources, entries):
    try:
      check_run_model(entry, int(base.model.config.emb_dim), base.macros.get("MODEL_FAMILY"),
                      base.macros.get("MODEL_SIZE"))
    except ModelMismatchError:
      other.append(f"{name} ({entry.model.name}, embed dim {entry.model.embed_dim})")
  if other:
    raise errors.ConfigError(f"library source(s) {', '.join(other)} were trained on another "
                             f"base model than this study's (embed dim "
                             f"{base.model.config.emb_dim}); drop them or use their base model.")


def check_base_model(study_dir: epath.PathLike, spec: StudySpec, base_checkpoint: Optional[str]
                     ) -> None:
  """Refuses sources whose runs were trained on another base checkpoint, naming them."""
  other = []
  for run in plan_runs(spec):
    if run.kind != "source":
      continue
    meta = run_dir.read_run_json(epath.Path(study_dir) / run.run_id)
    if meta and meta.get("base_checkpoint") not in (None, base_checkpoint):
      other.append(f"{run.run_id} ({meta.get('base_checkpoint')})")
  if other:
    raise errors.ConfigError(f"source run(s) {', '.join(other)} were trained on another base "
                             f"model than {base_checkpoint}; a study transfers on one base. Use "
                             "a new --dir, or the same INITIAL_CHECKPOINT_PATH.")


# ------------------------------------------------------------------ settings


def task_embedding(study_dir: epath.Path, spec: StudySpec, task: str) -> np.ndarray:
  """`task`'s embedding [P, D] (written once from its first-seed run's early checkpoint)."""
  path = embedding_file(study_dir, task)
  if path.exists():
    with path.open("rb") as f:
      return np.load(f)
  if task in spec.library_sources:
    return _library(spec).embedding(task)
  owner = study_dir / embedding_owner(spec, task)
  if spec.embedding_step not in run_dir.numpy_steps(str(owner)):
    raise errors.MissingInputError(f"{owner} has no step-{spec.embedding_step} prompt checkpoint "
                                   f"(the embedding of {task}); run `spot study run --dir "
                                   f"{study_dir} --only {embedding_owner(spec, task)}` first.")
  emb = run_dir.read_numpy_variable(str(owner), spec.embedding_step)
  path.parent.mkdir(parents=True, exist_ok=True)
  spot_io.write_bytes_atomic(path, _npy(emb))
  return emb


def _npy(array: np.ndarray) -> bytes:
  import io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  np.save(buf, np.asarray(array, np.float32))
  return buf.getvalue()


def _library(spec: StudySpec) -> Any:
  from spot.library.store import PromptLibrary  # pylint: disable=g-import-not-at-top
  return PromptLibrary(spec.library)


def source_prompt(study_dir: epath.Path, spec: StudySpec, source: str, seed: int) -> np.ndarray:
  """The prompt a transfer from `source` starts from: its seed's final prompt, or the entry's."""
  if source in spec.library_sources:
    return _library(spec).prompt(source)
  run = StudyRun(f"sources/{source}/seed{seed}", "source", source, seed, spec.source_steps)
  if not is_finished(study_dir, run):  # an unfinished source's prompt is not its prompt
    raise errors.MissingInputError(f"{study_dir / run.run_id} is not finished; run `spot study "
                                   f"run --dir {study_dir} --only {run.run_id}` first.")
  return run_dir.latest_numpy_prompt(str(study_dir / run.run_id))


def ranking(study_dir: epath.PathLike, spec: StudySpec, target: str,
            metric: Optional[str] = None) -> list[tuple[str, float]]:
  """The target's candidate sources by embedding similarity, best first."""
  from spot.library import similarity  # pylint: disable=g-import-not-at-top
  study_dir = epath.Path(study_dir)
  query = task_embedding(study_dir, spec, target)
  names = list(spec.candidates(target))
  sims = similarity.similarities(query, [task_embedding(study_dir, spec, s) for s in names],
                                 metric or spec.metric)
  order = sorted(range(len(names)), key=lambda i: (-sims[i], names[i]))
  return [(names[i], float(sims[i])) for i in order]


def run_settings(base: settings_lib.TrainSettings, spec: StudySpec, study_dir: epath.PathLike,
                 run: StudyRun) -> settings_lib.TrainSettings:
  """`base` as the study run `run`: its task, seed, steps, model_dir and initialisation."""
  from spot.library import transfer  # pylint: disable=g-import-not-at-top
  from spot.train import trainer  # pylint: disable=g-import-not-at-top
  study_dir = epath.Path(study_dir)
  ckpt = base.checkpoint_cfg or trainer.CheckpointConfig()
  period = spec.embedding_step if run.kind in ("source", "baseline") else run.steps
  data = dataclasses.replace(base.train_dataset_cfg, mixture_or_task_name=run.task, seed=run.seed)
  writers = base.metrics_writers
  if not writers:
    from spot import report_writers  # pylint: disable=g-import-not-at-top
    writers = report_writers.DEFAULT_WRITERS
  eval_cfg = dataclasses.replace(base.eval_cfg or trainer.EvalConfig(), tasks=[run.task])
  out = base
  if run.kind == "transfer":
    out = settings_lib.with_prompt_init(base, source_prompt(study_dir, spec, run.source,
                                                            run.seed))
  elif run.kind in ("weighted_average", "mixture"):
    k = spec.weighted_k if run.kind == "weighted_average" else spec.mixture_k
    top = ranking(study_dir, spec, run.task)[:k]
    if run.kind == "weighted_average":
      init = transfer.weighted_average(
          [source_prompt(study_dir, spec, s, run.seed) for s, _ in top],
          [sim for _, sim in top])
      out = settings_lib.with_prompt_init(base, init)
    else:
      from spot.workflows import targeted  # pylint: disable=g-import-not-at-top
      module, data_dir = targeted.data_settings(base)
      tasks = [_library(spec).entry(s).task if s in spec.library_sources else s for s, _ in top]
      name, _ = targeted.register_mixture(tasks + [run.task], module=module, data_dir=data_dir)
      data = dataclasses.replace(data, mixture_or_task_name=name)
  return settings_lib.for_run(
      out, model_dir=str(study_dir / run.run_id), train_steps=run.steps, seed=run.seed,
      train_dataset_cfg=data, eval_cfg=eval_cfg, metrics_writers=tuple(writers),
      checkpoint_cfg=dataclasses.replace(ckpt, period=period, save_numpy=True),
      method=f"study_{run.kind}")


# ------------------------------------------------------------------- running


class Progress:
  """`[study 3/26 ETA 1m40s] message`: runs done of the total and the time left."""

  def __init__(self, total: int, done: int, log: Callable[[str], None] = print):
    self.total, self.done, self.log = total, done, log
    self.trained, self.seconds = 0, 0.0

  def eta(self) -> str:
    if not self.trained:
      return "ETA ?"
    left = (self.total - self.done) * self.seconds / self.trained
    m, s = divmod(int(left), 60)
    return f"ETA {m}m{s:02d}s"

  def finished(self, seconds: float) -> None:
    self.done, self.trained, self.seconds = self.done + 1, self.trained + 1, self.seconds + seconds

  def __call__(self, message: str) -> None:
    self.log(f"[study {self.done}/{self.total} {self.eta()}] {message}")


def run_study(base: settings_lib.TrainSettings, spec: StudySpec, study_dir: str, *,
              only: Iterable[str] = (), log: Callable[[str], None] = print,
              train: Callable[[settings_lib.TrainSettings], Any] = settings_lib.run
              ) -> list[StudyRun]:
  """Trains every unfinished run of the study (or those in `only`); returns the runs trained.

  Args:
    base: the settings every run derives from (`settings.from_flags(spec.train_flags)`).
    spec: the study; written to (or checked against) STUDY_DIR/study.json.
    study_dir: the study directory (local or gs://).
    only: run ids to train (their inputs must be finished), e.g. from `plan`.
    log: prints one progress line.
    train: trains one run (default `settings.run`).
  """
  study = epath.Path(spot_io.absolute(study_dir))
  spec = write_spec(study, spec)
  check_base_model(study, spec, _absolute(base.initial_checkpoint_path))
  check_library_sources(spec, base)
  runs = [find_run(spec, r) for r in only] if only else plan_runs(spec)
  done = [r for r in runs if is_finished(study, r)]
  prog = Progress(len(runs), len(done), log)
  prog(f"{len(done)} of {len(runs)} run(s) already finished under {study}")
  trained = []
  for run in runs:
    if run in done:
      continue
    prog(f"training {run.run_id} ({run.steps} steps)")
    start = time.perf_counter()
    train(run_settings(base, spec, study, run))
    prog.finished(time.perf_counter() - start)
    trained.append(run)
    if run.kind in ("source", "baseline") and run.seed == spec.seeds[0]:
      task_embedding(study, spec, run.task)  # as soon as it exists
  prog("finished; `spot study report " + str(study) + "` writes the report")
  return trained


def _absolute(path: Optional[str]) -> Optional[str]:
  if path is None or path == "random":
    return path
  return spot_io.absolute(path)


def needs(spec: StudySpec, run: StudyRun) -> list[str]:
  """The run ids whose outputs `run` starts from (sorted; none for stage 0)."""
  trained = lambda names: [n for n in names if n not in spec.library_sources]
  if run.kind == "transfer":
    return [f"sources/{s}/seed{run.seed}" for s in trained([run.source])]
  if run.kind in ("weighted_average", "mixture"):
    cands = trained(spec.candidates(run.task))
    owners = [embedding_owner(spec, t) for t in (run.task, *cands)]
    return sorted(set(owners + [f"sources/{s}/seed{run.seed}" for s in cands]))
  return []


def plan_commands(spec: StudySpec, study_dir: str, prog: str = "spot study run",
                  fmt: str = "shell") -> list[str]:
  """One line per run: `spot study run --dir DIR --only RUN_ID` (shell), or a JSON object
  {"run_id", "stage", "needs", "command"} (jsonl); stage-0 runs before stage 1."""
  lines = []
  for run in plan_runs(spec):
    command = f"{prog} --dir {study_dir} --only {run.run_id}"
    if fmt == "jsonl":
      lines.append(json.dumps({"run_id": run.run_id, "stage": run.stage,
                               "needs": needs(spec, run), "command": command}))
    else:
      lines.append(command)
  return lines


def pending_stages(spec: StudySpec, study_dir: epath.PathLike) -> list[list[StudyRun]]:
  """The study's unfinished runs in stages, for launchers that run a stage in parallel.

  A run's stage is one past the latest stage of the unfinished runs it `needs`
  (0 when all are finished), so each stage's runs are independent and need only
  earlier stages: sources and baselines (whose early checkpoints are the task
  embeddings), then the transfers and retrieval runs. Finished runs are left
  out; empty stages are dropped.
  """
  study = epath.Path(study_dir)
  pending = [r for r in plan_runs(spec) if not is_finished(study, r)]
  stage: dict[str, int] = {}
  for run in pending:  # plan_runs lists every run after the runs it needs
    stage[run.run_id] = max((stage[n] + 1 for n in needs(spec, run) if n in stage), default=0)
  stages: list[list[StudyRun]] = [[] for _ in range(max(stage.values(), default=-1) + 1)]
  for run in pending:
    stages[stage[run.run_id]].append(run)
  return stages
