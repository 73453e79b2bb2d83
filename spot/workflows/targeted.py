"""SPoT targeted transfer: retrieve source prompts for a target task and train from them.

Given a target task's embedding, the library ranks its source prompts; then:

- `top1`: initialise the target prompt from the best source;
- `weighted_average`: from the similarity-weighted average of the top-k;
- `best_of_top_k`: train k targets, one from each of the top-k sources, and
  keep the one best on validation (the paper's oracle-free selection);
- `mixture`: train on a multi-task mixture of the top-k source tasks plus the
  target task, evaluating on the target. The tasks are looked up the way the
  run itself will look them up (its MIXTURE_OR_TASK_MODULE imported, then
  `spot.tasks`, then, with DATA_DIR, the local-file versions registered), and
  mixed examples-proportionally as T5 does: rate = min(train examples, cap).

Runs start from one `TrainSettings` (the target run, parsed once from the same
gin files as `spot train`); this recipe only changes the prompt
initialisation, the model_dir of each run, the method label and, for
`mixture`, the task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Optional, Sequence

import numpy as np
import seqio
from etils import epath

from spot import io as spot_io
from spot.errors import DataError, UsageError
from spot.library import retrieval, transfer
from spot.library.entry import check_run_model
from spot.library.store import PromptLibrary
from spot.workflows import settings as settings_lib

MODES = ("top1", "weighted_average", "best_of_top_k", "mixture")
DEFAULT_MIXTURE_CAP = 2**19  # T5's examples-proportional limit K


@dataclasses.dataclass
class TransferRun:
  """One target training: where it came from and how it scored."""

  source: str
  similarity: Optional[float]
  model_dir: str
  best_step: Optional[int]
  best_value: Optional[float]
  rates: Optional[dict[str, float]] = None  # mixture mode: task -> mixing rate


def _best(result: Any) -> tuple[Optional[int], Optional[float]]:
  if result.best is not None:
    return int(result.best[0]), float(result.best[1])
  return None, None


def run_data_settings(train_flags: Sequence[str], extra_bindings: Sequence[str] = ()
                      ) -> tuple[Optional[str], Any]:
  """(MIXTURE_OR_TASK_MODULE, DATA_DIR) of a run's `spot train` flags, as it will see them
  (DATA_DIR: None, a directory, or a list of directories)."""
  return data_settings(settings_lib.from_flags(list(train_flags) + [
      f"--gin_bindings={b}" for b in extra_bindings]))


def data_settings(run: settings_lib.TrainSettings) -> tuple[Optional[str], Any]:
  """(MIXTURE_OR_TASK_MODULE, DATA_DIR) of a run's settings."""
  cfg = run.train_dataset_cfg
  data_dir = cfg.data_dir
  return cfg.module, list(data_dir) if isinstance(data_dir, tuple) else data_dir


def _published_size(name: str) -> Optional[int]:
  """The published train size of a GLUE / SuperGLUE task registered under any prefix."""
  from spot.tasks import mixtures  # pylint: disable=g-import-not-at-top
  keys = [k for k in mixtures.NUM_EXAMPLES if name == k or name.endswith(f"_{k}")]
  return mixtures.NUM_EXAMPLES[max(keys, key=len)] if keys else None


def num_train_examples(task: Any, cap: int) -> int:
  """Training examples of a SeqIO task (up to `cap`), for examples-proportional mixing.

  Local-file tasks (DATA_DIR) are counted from their files; a TFDS task of
  GLUE / SuperGLUE has its published size (no data read); otherwise seqio's
  own count (cached statistics or the source's) is used.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if isinstance(task.source, seqio.FunctionDataSource):
    ds = task.source.get_dataset("train", shuffle=False)
    n = int(ds.cardinality())
    if n == int(tf.data.INFINITE_CARDINALITY):
      return cap
    if n < 0:
      n = int(ds.take(cap).reduce(0, lambda count, _: count + 1))
    return n
  n = _published_size(task.name)
  if n is not None:
    return n
  try:
    n = task.num_input_examples("train")
  except Exception:  # pylint: disable=broad-except  (TFDS metadata may be unreachable)
    n = None
  if not n:
    raise DataError(f"cannot tell how many training examples task {task.name!r} has (needed "
                    "for examples-proportional mixing); give the run DATA_DIR with its local "
                    "files, or cache the task (seqio statistics).")
  return int(n)


class ByNameMixture(seqio.Mixture):
  """A mixture that looks its tasks up by name each time it is read.

  A run re-registers spot's tasks after its gin config is known (DATA_DIR's
  local files, the model's vocabulary); a plain `seqio.Mixture` keeps the task
  objects it was built with, this one follows the registry.
  """

  @property
  def tasks(self) -> list[seqio.Task]:
    return sorted((seqio.TaskRegistry.get(n) for n in self.rate_per_task_name),
                  key=lambda t: t.name)

  @property
  def _task_map(self) -> dict[str, seqio.Task]:
    return {t.name: t for t in self.tasks}

  @_task_map.setter
  def _task_map(self, value: Any) -> None:
    del value  # seqio.Mixture.__init__ sets it; the property above stands for it


def examples_proportional(cap: int) -> Callable[[Any], float]:
  """T5's examples-proportional rate of a task: min(its train examples, cap)."""
  from spot.tasks import mixtures  # pylint: disable=g-import-not-at-top

  def rate(task: Any) -> float:
    return mixtures.mixing_rate(num_train_examples(task, cap), cap)

  return rate


def expand_mixtures(names: Sequence[str]) -> list[str]:
  """Task names with every registered mixture replaced by its tasks (first seen first).

  A source entry trained on a mixture (SPoT's GLUE source: task 'spot_glue_mix')
  contributes that mixture's tasks to the target's multi-task mixture.
  """
  out: list[str] = []
  mixtures = set(seqio.MixtureRegistry.names())
  for name in names:
    if name in mixtures:
      # As SeqIO's Mixture.get_dataset does: members without a train split (e.g.
      # a DATA_DIR holding only their dev file) take no part in training.
      members = [t.name for t in seqio.get_subtasks(seqio.get_mixture_or_task(name))
                 if "train" in (getattr(t.source, "splits", None) or ("train",))]
    else:
      members = [name]
    out.extend(m for m in members if m not in out)
  return out


def mixture_name(rates: dict[str, float], *, module: Optional[str], data_dir: Any) -> str:
  """A name that is the same in every process: a sha256 digest of the sorted members,
  their rates and where their data comes from (Python's hash() is salted per process)."""
  digest = hashlib.sha256(json.dumps([module, data_dir, sorted(rates.items())]).encode())
  return f"spot_transfer_mix_{digest.hexdigest()[:12]}"


def register_mixture(tasks: Sequence[str], *, module: Optional[str], data_dir: Any,
                     cap: int = DEFAULT_MIXTURE_CAP) -> tuple[str, dict[str, float]]:
  """Registers an examples-proportional SeqIO mixture of `tasks`; returns (name, rates).

  The tasks are first registered as the run registers them (spot.train.data.get_task:
  `module` imported, then spot.tasks, then the DATA_DIR local-file versions), and
  mixtures among them are replaced by their tasks;
  the mixture then looks them up by name whenever it is read, and rates each
  by its training examples then (local files are counted).
  """
  from spot.train import data as data_lib  # pylint: disable=g-import-not-at-top
  data_lib.get_task(tasks[-1], module, data_dir)  # imports and registers; the target must exist
  tasks = expand_mixtures(tasks)
  registered = set(seqio.TaskRegistry.names())
  missing = [t for t in tasks if t not in registered]
  if missing:
    raise UsageError(f"mixture mode: task(s) {', '.join(missing)} (recorded by the top-k "
                     "entries, or --target-task) are not registered SeqIO tasks; register them "
                     "with MIXTURE_OR_TASK_MODULE, or re-add those entries with --task NAME.")
  rate = examples_proportional(cap)
  rates = {t: rate(seqio.TaskRegistry.get(t)) for t in tasks}
  name = mixture_name(rates, module=module, data_dir=data_dir)
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(t, rate) for t in tasks], mixture_cls=ByNameMixture)
  return name, rates


def source_settings(base: settings_lib.TrainSettings, lib: PromptLibrary, name: str
                    ) -> settings_lib.TrainSettings:
  """`base` initialised from library entry `name`, refused if it is of another base model."""
  check_run_model(lib.entry(name), int(base.model.config.emb_dim),
                  base.macros.get("MODEL_FAMILY"), base.macros.get("MODEL_SIZE"))
  return settings_lib.with_prompt_init(base, lib.prompt(name))


def _check_mode(mode: str, best_metric: Optional[str], target_task: Optional[str]) -> None:
  if mode not in MODES:
    raise ValueError(f"Unknown transfer mode {mode!r}; choose from {MODES}.")
  if mode == "best_of_top_k" and not best_metric:
    raise ValueError("best_of_top_k needs --best-metric (e.g. accuracy) to pick the best run.")
  if mode == "mixture" and not target_task:
    raise ValueError("mixture needs --target-task (the SeqIO task of the target).")


def _train(run: settings_lib.TrainSettings, out: epath.Path, name: str, mode: str,
           similarity: Optional[float], **changes: Any) -> TransferRun:
  """One target run named `name` under `out`, labelled `spot_<mode>` for `spot report`."""
  run = settings_lib.for_run(run, model_dir=str(out / name), method=f"spot_{mode}", **changes)
  step, value = _best(settings_lib.run(run))
  return TransferRun(name, similarity, str(out / name), step, value)


def _from_init(lib: PromptLibrary, target: settings_lib.TrainSettings, ranked: Any,
               out: epath.Path, mode: str) -> list[TransferRun]:
  """top1 / weighted_average: one run from the retrieved (or averaged) source prompt."""
  init = transfer.init_prompt(lib, ranked, mode)
  with (out / f"{mode}_init.npy").open("wb") as f:  # what the run started from
    np.save(f, init)
  run = _train(settings_lib.with_prompt_init(target, init), out, mode, mode,
               ranked[0][1] if mode == "top1" else None)
  run.source = ranked[0][0] if mode == "top1" else "+".join(n for n, _ in ranked)
  return [run]


def _best_of_top_k(lib: PromptLibrary, target: settings_lib.TrainSettings, ranked: Any,
                   out: epath.Path, best_metric: str) -> tuple[list[TransferRun], TransferRun]:
  """k runs, one from each top-k source; the best on `best_metric` is chosen."""
  runs = [_train(source_settings(target, lib, name), out, name, "best_of_top_k", score)
          for name, score in ranked]
  scored = [r for r in runs if r.best_value is not None]
  if not scored:
    raise ValueError(f"No run reported {best_metric!r}; check the metric name.")
  chosen = max(scored, key=lambda r: r.best_value)
  # The k runs share task, method and seed: record which one this selection
  # chose, so `spot report` reports it instead of refusing duplicates.
  from spot import report  # pylint: disable=g-import-not-at-top
  for r in runs:
    if (epath.Path(r.model_dir) / report.METRICS_FILE).exists():
      report.mark_candidate(r.model_dir, r.source, rule="best_of_top_k", metric=best_metric,
                            selected=r is chosen)
  return runs, chosen


def _mixture(lib: PromptLibrary, target: settings_lib.TrainSettings, ranked: Any,
             out: epath.Path, target_task: str, cap: int) -> TransferRun:
  """One run on the top-k source tasks plus the target, evaluated on the target."""
  tasks = transfer.mixture_tasks(lib, ranked, target_task)
  module, data_dir = data_settings(target)  # resolved as the run resolves them
  name, rates = register_mixture(tasks, module=module, data_dir=data_dir, cap=cap)
  run = _train(target, out, "mixture", "mixture", None,
               train_dataset_cfg=dataclasses.replace(target.train_dataset_cfg,
                                                     mixture_or_task_name=name),
               eval_cfg=dataclasses.replace(target.eval_cfg, tasks=[target_task]))
  run.source, run.rates = "+".join(tasks), rates
  return run


def run_transfer(lib: PromptLibrary, target: settings_lib.TrainSettings, query: np.ndarray, *,
                 mode: str, out_dir: str, model: Optional[str] = None, top_k: int = 3,
                 metric: str = "avg_tokens", best_metric: Optional[str] = None,
                 target_task: Optional[str] = None, prompt_length: Optional[int] = None,
                 mixture_cap: int = DEFAULT_MIXTURE_CAP
                 ) -> tuple[list[TransferRun], TransferRun]:
  """Trains target prompt(s) from retrieved sources; returns (all runs, chosen run).

  Args:
    lib: the prompt library.
    target: the target run's settings (model, task, feature lengths, steps,
      base checkpoint), e.g. `settings.from_flags(spot train flags)`.
    query: the target task's embedding [P', D] (see `spot library embed`).
    mode: one of MODES.
    out_dir: each run's model_dir goes under it.
    model: base model whose entries to consider (default: the library's only one).
    top_k / metric: retrieval settings.
    best_metric: validation metric (BEST_METRIC) that picks the best checkpoint
      and, for best_of_top_k, the best run; required for best_of_top_k.
    target_task: the target's SeqIO task (required for `mixture`).
    prompt_length: only sources whose prompt has this many tokens.
    mixture_cap: `mixture`: the examples-proportional limit K.
  """
  from spot.train import trainer  # pylint: disable=g-import-not-at-top
  _check_mode(mode, best_metric, target_task)
  ranked = retrieval.rank(lib, query, model=model, metric=metric, top_k=top_k,
                          prompt_length=prompt_length)
  if not ranked:
    raise ValueError(f"No library entry to transfer from (model {model!r}"
                     f"{f', prompt length {prompt_length}' if prompt_length else ''}).")
  out = epath.Path(spot_io.absolute(out_dir))
  out.mkdir(parents=True, exist_ok=True)
  eval_cfg = target.eval_cfg or trainer.EvalConfig()
  if best_metric:
    eval_cfg = dataclasses.replace(eval_cfg, best_metric=best_metric)
  target = dataclasses.replace(target, eval_cfg=eval_cfg)
  if mode in ("top1", "weighted_average"):
    runs = _from_init(lib, target, ranked, out, mode)
    return runs, runs[0]
  if mode == "best_of_top_k":
    return _best_of_top_k(lib, target, ranked, out, best_metric)
  run = _mixture(lib, target, ranked, out, target_task, mixture_cap)
  return [run], run
