"""`spot report`: finished runs -> the papers' tables.

A finished run is a directory holding `metrics.json`:

    {"task": "spot_superglue_cb", "method": "spot_glue", "seed": 0,
     "scores": {"mean_3class_f1": 91.2, "accuracy": 94.6}, "step": 30000,
     "protocol": "dev"}

written by the trainer with `write_run_metrics` when its final evaluation is
done (atomically, so a killed run leaves no half file). A metric that is not
finite (STS-B's correlations are NaN while early predictions are constant) is
written as `null` with a warning; the run still finishes. A task's score is
the mean of its metrics (T5's task score: MRPC = (F1 + accuracy) / 2, ...),
undefined (`null`) when one of them is. The report gives, per task and method,
the mean and standard deviation of that score over seeds, averages per
benchmark (labelled with how many of the benchmark's tasks they cover), and
the relative error reduction of each method over a baseline,
RER = (err_base - err_method) / err_base with err = 100 - score, as in the
SPoT paper.

Protocols: a run records how its scores were selected and scored
("protocol": "dev", or "dev1/dev2" with the dev1 "selection_scores"), and
runs of different protocols are never averaged or compared. A run also
records its "init_seed" / "data_seed", its PEFT method's config ("peft") and
its "num_trainable" / "num_base" parameters; the per-method table shows the
tunable share of the base, the mean RER and CrossFit's average relative gain,
ARG = mean over tasks of (P - P0) / P0 * 100 (`average_relative_gain`).
With --out the report also draws per-seed strip and box plots and every
seed's learning curve (`spot.report_plots`).

Candidate runs: SPoT's best-of-top-k trains k runs of one (task, method,
seed), one per retrieved source prompt, and keeps the best on validation.
Each candidate's `metrics.json` names its source in `"candidate"` and how the
winner is chosen in `"selection"` (`{"rule": "best_of_top_k", "metric":
"accuracy", "selected": true}`); the report keeps the selected candidate per
(task, method, seed) and lists the others.

    spot report RUNS_DIR... [--baseline prompt_tuning] [--out DIR | REPORT.md] [--json]

prints Markdown (or JSON) and, with --out, writes report.md, report.csv,
report.json and the PNGs there. Reads and writes local paths and gs:// alike.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import numbers
import os
import statistics
import sys
import warnings
from typing import Any, Iterable, Mapping, Optional, Sequence

from etils import epath

from spot import errors
from spot import io as spot_io
from spot.checkpoints import run_dir as run_layout

METRICS_FILE = run_layout.METRICS_JSON
DEFAULT_BASELINE = "prompt_tuning"
# How a run's reported scores were selected and scored (spot.train.config.RunSummary).
DEFAULT_PROTOCOL = "dev"
PROTOCOLS: dict[str, str] = {
    "dev": "checkpoint selected and scored on the same validation split",
    "dev1/dev2": "checkpoint selected (and early stopping) on dev1, scored on dev2",
}
# The trainer's labels when it is given none; a PEFT run so labelled is grouped by its method.
DEFAULT_LABELS = frozenset({"prompt_tuning", "model_tuning"})
# Methods whose runs are candidates of one selection even when their
# metrics.json predates the "candidate" field (the directory names them).
CANDIDATE_METHOD_MARK = "best_of_top_k"
SELECTION_KEYS = frozenset({"rule", "metric", "selected"})
# The tasks each benchmark's published average is over (T5 / SPoT; GLUE
# leaves WNLI out), keyed as in spot.tasks.metrics' *_SCORE_PARTS.
BENCHMARK_TASKS: dict[str, tuple[str, ...]] = {
    "GLUE": ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"),
    "SuperGLUE": ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"),
}
# Sub-directories of a model_dir that never hold other runs (and can be big).
_SKIP_DIRS = frozenset({run_layout.CHECKPOINTS_DIR, run_layout.NUMPY_DIR, run_layout.BEST_DIR,
                        "train", "eval", run_layout.INFERENCE_EVAL_DIR, "tensorboard"})
_MAX_DEPTH = 6
_ORBAX_JSON_FILE = "metadata"  # orbax JsonCheckpointHandler's file in a step's meta item
_FIX = "write it with spot.report.write_run_metrics(run_dir, task, method, seed, scores)"


class NonFiniteMetricWarning(UserWarning):
  """A metric was NaN or infinite; it is recorded as null (no score) instead."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One finished run: what it trained, with which seed, and how it scored.

  `scores` values are None where the metric was not finite. `candidate` and
  `selection` are as recorded for candidate runs; `candidates` and
  `selected_by` are filled in by `find_runs` on the run it kept from a
  group of candidates.
  """

  task: str
  method: str
  seed: int
  scores: Mapping[str, Optional[float]]
  path: str = ""
  candidate: Optional[str] = None
  selection: Optional[Mapping[str, Any]] = None
  candidates: tuple[Mapping[str, Any], ...] = ()
  selected_by: Optional[str] = None
  protocol: str = DEFAULT_PROTOCOL
  selection_scores: Optional[Mapping[str, Optional[float]]] = None
  init_seed: Optional[int] = None
  data_seed: Optional[int] = None
  peft: Optional[Mapping[str, Any]] = None
  num_trainable: Optional[int] = None
  num_base: Optional[int] = None

  @property
  def group(self) -> str:
    """The method the report groups this run under: the PEFT method ("lora", ...)
    when the run has one and only the trainer's default label, else the label."""
    peft_method = (self.peft or {}).get("method")
    if peft_method and self.method in DEFAULT_LABELS:
      return str(peft_method)
    return self.method

  @property
  def seed_label(self) -> str:
    """The seed as the report names it: "3", or "3 (init 1, data 2)" when split."""
    split = [(k, v) for k, v in (("init", self.init_seed), ("data", self.data_seed))
             if v is not None and v != self.seed]
    if not split:
      return str(self.seed)
    return f"{self.seed} ({', '.join(f'{k} {v}' for k, v in split)})"

  @property
  def score(self) -> Optional[float]:
    """The task score: the mean of the run's metrics; None if one has no value."""
    values = [_finite(v) for v in self.scores.values()]
    if not values or any(v is None for v in values):
      return None
    return statistics.fmean(values)

  @property
  def null_metrics(self) -> list[str]:
    """The metrics without a (finite) value."""
    return sorted(name for name, v in self.scores.items() if _finite(v) is None)


def _finite(value: Any) -> Optional[float]:
  """`value` as a float, or None when it is None, NaN or infinite."""
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


def _is_number(value: Any) -> bool:
  if isinstance(value, (bool, str, bytes)):
    return False
  if isinstance(value, numbers.Real):
    return True
  # 0-d numpy / jax arrays
  return getattr(value, "shape", None) == () and hasattr(value, "__float__")


def _check_selection(selection: Any, where: str) -> Optional[dict[str, Any]]:
  if selection is None:
    return None
  if (not isinstance(selection, Mapping) or not set(selection) <= SELECTION_KEYS
      or not isinstance(selection.get("rule", ""), str)
      or not isinstance(selection.get("metric") or "", str)
      or selection.get("selected") not in (None, True, False)):
    raise errors.DataError(
        f"{where}: 'selection' must be {{\"rule\": str, \"metric\": str, \"selected\": bool}}, "
        f"got {selection!r}; write it with spot.report.write_run_metrics(..., selection=...).")
  return dict(selection)


def _check_seed(name: str, value: Any, where: str) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int):
    raise errors.DataError(f"{where}: {name!r} must be an integer or null, got {value!r}; {_FIX}.")
  return value


def _check_count(name: str, value: Any, where: str) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise errors.DataError(f"{where}: {name!r} must be a parameter count (an integer >= 0) or "
                           f"null, got {value!r}; {_FIX}.")
  return value


def _check_scores(name: str, scores: Any, where: str, task: Any,
                  on_non_finite: str) -> dict[str, Optional[float]]:
  """{metric: float or None}; non-finite values become None (warned when "warn")."""
  if not isinstance(scores, Mapping) or not scores:
    raise errors.DataError(f"{where}: {name!r} must be a non-empty {{metric: value}} mapping, "
                           f"got {scores!r}; {_FIX}.")
  clean: dict[str, Optional[float]] = {}
  for metric, value in scores.items():
    if not isinstance(metric, str) or not (value is None or _is_number(value)):
      raise errors.DataError(f"{where}: score {metric!r} = {value!r} is not a number; {_FIX}.")
    clean[metric] = _finite(value)
    if clean[metric] is None and value is not None and on_non_finite == "warn":
      warnings.warn(f"{where}: metric {metric!r} of task {task!r} is {value!r}, not a finite "
                    "number; it is written as null and the task has no score for this run "
                    "(STS-B's correlations are NaN while predictions are constant).",
                    NonFiniteMetricWarning, stacklevel=4)
  return clean


def _check_facts(facts: Mapping[str, Any], where: str, task: Any,
                 on_non_finite: str) -> dict[str, Any]:
  """The protocol, seeds, PEFT method and parameter counts, checked; absent ones default."""
  protocol = facts.get("protocol")
  protocol = DEFAULT_PROTOCOL if protocol is None else protocol
  if not isinstance(protocol, str) or not protocol:
    raise errors.DataError(f"{where}: 'protocol' must be a non-empty string such as "
                           f"{' or '.join(map(repr, PROTOCOLS))}, got {protocol!r}; {_FIX}.")
  selection_scores = facts.get("selection_scores")
  if selection_scores is not None:
    selection_scores = _check_scores("selection_scores", selection_scores, where, task,
                                     on_non_finite)
  peft = facts.get("peft")
  if peft is not None and (not isinstance(peft, Mapping)
                           or not isinstance(peft.get("method"), str)):
    raise errors.DataError(f"{where}: 'peft' must be the method's config "
                           f"{{\"method\": \"lora\", ...}} or null, got {peft!r}; {_FIX}.")
  return {"protocol": protocol, "selection_scores": selection_scores,
          "init_seed": _check_seed("init_seed", facts.get("init_seed"), where),
          "data_seed": _check_seed("data_seed", facts.get("data_seed"), where),
          "peft": None if peft is None else dict(peft),
          "num_trainable": _check_count("num_trainable", facts.get("num_trainable"), where),
          "num_base": _check_count("num_base", facts.get("num_base"), where)}


# The run facts beyond task, method, seed and scores that metrics.json records.
FACT_KEYS = ("protocol", "selection_scores", "init_seed", "data_seed", "peft", "num_trainable",
             "num_base")


def _check_run(task: Any, method: Any, seed: Any, scores: Any, where: str, *,
               candidate: Any = None, selection: Any = None,
               on_non_finite: str = "null", facts: Optional[Mapping[str, Any]] = None) -> Run:
  """Validates a run's fields; non-finite scores become None (warned when
  `on_non_finite` is "warn")."""
  for field, value in (("task", task), ("method", method)):
    if not isinstance(value, str) or not value:
      raise errors.DataError(f"{where}: {field!r} must be a non-empty string, got {value!r}; "
                             f"{_FIX}.")
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise errors.DataError(f"{where}: 'seed' must be an integer, got {seed!r}; {_FIX}.")
  clean = _check_scores("scores", scores, where, task, on_non_finite)
  if candidate is not None and (not isinstance(candidate, str) or not candidate):
    raise errors.DataError(f"{where}: 'candidate' must be a non-empty string (the source the "
                           f"candidate run started from), got {candidate!r}.")
  return Run(task, method, seed, clean, where, candidate=candidate,
             selection=_check_selection(selection, where),
             **_check_facts(facts or {}, where, task, on_non_finite))


def _json_safe(value: Any, where: str) -> Any:
  """`value` with non-finite floats replaced by None (JSON has no NaN)."""
  if isinstance(value, Mapping):
    return {k: _json_safe(v, f"{where}.{k}") for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v, f"{where}[{i}]") for i, v in enumerate(value)]
  if isinstance(value, float) and not math.isfinite(value):
    warnings.warn(f"{where} is {value!r}, not a finite number; written as null.",
                  NonFiniteMetricWarning, stacklevel=4)
    return None
  return value


def write_run_metrics(run_dir: epath.PathLike, task: str, method: str, seed: int,
                      scores: Mapping[str, float], *, step: Optional[int] = None,
                      extra: Optional[Mapping[str, Any]] = None,
                      candidate: Optional[str] = None,
                      selection: Optional[Mapping[str, Any]] = None,
                      protocol: str = DEFAULT_PROTOCOL,
                      selection_scores: Optional[Mapping[str, Optional[float]]] = None,
                      init_seed: Optional[int] = None, data_seed: Optional[int] = None,
                      peft: Optional[Mapping[str, Any]] = None,
                      num_trainable: Optional[int] = None,
                      num_base: Optional[int] = None) -> epath.Path:
  """Marks `run_dir` as a finished run by writing its `metrics.json`.

  A score that is NaN or infinite is written as `null` with a
  `NonFiniteMetricWarning` naming it: an undefined metric (STS-B's Pearson on
  constant early predictions) must not lose a finished run.

  Args:
    run_dir: the run's model_dir (local or gs://).
    task: the task (or mixture) evaluated, e.g. "spot_glue_mrpc".
    method: how the prompt was initialised, e.g. "prompt_tuning", "spot_glue".
    seed: the run's random seed (runs differing only in seed are averaged).
    scores: the final evaluation, {metric: value} on a 0-100 scale.
    step: the step the scores are from.
    extra: any further JSON-serialisable facts (checkpoint, gin file, ...).
    candidate: for one of several candidate runs of the same task, method and
      seed (best-of-top-k), the name of what it started from (the source
      prompt's library entry).
    selection: how the report picks among the candidates:
      {"rule": "best_of_top_k", "metric": "accuracy", "selected": True|False};
      "selected" decides when given, else the highest "metric" wins.
    protocol: how `scores` were selected and scored: "dev" (one validation
      split for both) or "dev1/dev2" (selected on dev1, `scores` on dev2).
    selection_scores: with "dev1/dev2", the dev1 scores selection used.
    init_seed: the seed of the trainable parameters' initial values.
    data_seed: the seed of the data order.
    peft: the parameter-efficient method's config ({"method": "lora", ...});
      None for a prompt or full model run.
    num_trainable: how many parameters trained.
    num_base: how many parameters the frozen base has.

  Returns:
    The path written.
  """
  path = epath.Path(run_dir) / METRICS_FILE
  where = os.fspath(path)
  facts = {"protocol": protocol, "selection_scores": selection_scores, "init_seed": init_seed,
           "data_seed": data_seed, "peft": peft, "num_trainable": num_trainable,
           "num_base": num_base}
  run = _check_run(task, method, seed, scores, where, candidate=candidate,
                   selection=selection, on_non_finite="warn", facts=facts)
  record: dict[str, Any] = {"task": run.task, "method": run.method, "seed": run.seed,
                            "scores": dict(run.scores), "protocol": run.protocol}
  for key in FACT_KEYS[1:]:
    if getattr(run, key) is not None:
      record[key] = _json_safe(getattr(run, key), f"{where}: {key}")
  if step is not None:
    record["step"] = int(step)
  if extra:
    record["extra"] = _json_safe(dict(extra), f"{where}: extra")
  if run.candidate is not None:
    record["candidate"] = run.candidate
  if run.selection is not None:
    record["selection"] = run.selection
  spot_io.write_text_atomic(
      path, json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n")
  return path


def mark_candidate(run_dir: epath.PathLike, candidate: str, *, rule: str = "best_of_top_k",
                   metric: Optional[str] = None,
                   selected: Optional[bool] = None) -> epath.Path:
  """Records in a finished run's `metrics.json` that it is one candidate of a
  selection (e.g. best-of-top-k), and whether it was the one selected.

  For code that picks the winner after the runs wrote their metrics (SPoT's
  targeted transfer). Everything else in the file is kept.
  """
  path = epath.Path(run_dir) / METRICS_FILE
  record = _read_record(path)
  run = _run_from_record(record, path)
  selection = {"rule": rule, **({"metric": metric} if metric else {}),
               **({"selected": bool(selected)} if selected is not None else {})}
  return write_run_metrics(run_dir, run.task, run.method, run.seed, run.scores,
                           step=record.get("step"), extra=record.get("extra"),
                           candidate=candidate, selection=selection,
                           **{key: getattr(run, key) for key in FACT_KEYS})


def _read_record(path: epath.Path) -> dict[str, Any]:
  if not path.exists():
    raise errors.MissingInputError(f"{path}: no such file; a finished run holds "
                                   f"{METRICS_FILE} ({_FIX}).")
  return spot_io.read_json(path, "metrics file", error=errors.DataError,
                           fix="rewrite it with spot.report.write_run_metrics or remove it")


def _run_from_record(record: Mapping[str, Any], path: epath.Path) -> Run:
  return _check_run(record.get("task"), record.get("method"), record.get("seed"),
                    record.get("scores"), os.fspath(path), candidate=record.get("candidate"),
                    selection=record.get("selection"),
                    facts={key: record.get(key) for key in FACT_KEYS})


def read_run(path: epath.PathLike) -> Run:
  """Reads one `metrics.json`; a malformed file is a DataError naming it.
  `null` (or NaN) scores read as None."""
  path = epath.Path(path)
  return _run_from_record(_read_record(path), path)


def _find_metrics(path: epath.Path, depth: int) -> Iterable[epath.Path]:
  if (path / METRICS_FILE).exists():
    yield path / METRICS_FILE
    return
  if depth >= _MAX_DEPTH:
    return
  for child in sorted(path.iterdir()):
    if child.is_dir() and not child.name.startswith(".") and child.name not in _SKIP_DIRS:
      yield from _find_metrics(child, depth + 1)


def _run_dir_name(run: Run) -> str:
  return os.path.basename(os.path.dirname(run.path.rstrip("/"))) or run.path


def _selection_value(run: Run, metric: Optional[str]) -> Optional[float]:
  """The value a candidate is ranked by: `metric` (exact key, or the one key
  ending in "/metric"), else the task score."""
  if not metric:
    return run.score
  if metric in run.scores:
    return run.scores[metric]
  matches = [k for k in run.scores if k.endswith("/" + metric)]
  return run.scores[matches[0]] if len(matches) == 1 else None


def select_candidate(group: Sequence[Run]) -> Run:
  """The run kept from candidate runs of one (task, method, seed).

  The candidate recorded as selected wins; else the one with the highest
  selection metric (recorded in "selection"), else the highest task score.
  The returned run lists every candidate in `candidates`.
  """
  first = group[0]
  names = [r.candidate or _run_dir_name(r) for r in group]
  if len(set(names)) < len(names):
    twice = sorted({n for n in names if names.count(n) > 1})[0]
    paths = " and ".join(r.path for r, n in zip(group, names) if n == twice)
    raise errors.DataError(
        f"Two runs of task {first.task!r}, method {first.method!r}, seed {first.seed} are "
        f"both candidate {twice!r}: {paths}. Remove one.")
  order = sorted(range(len(group)), key=lambda i: names[i])
  marked = [i for i in order if (group[i].selection or {}).get("selected") is True]
  metrics = {(group[i].selection or {}).get("metric") for i in order} - {None}
  metric = metrics.pop() if len(metrics) == 1 else None
  values = {i: _selection_value(group[i], metric) for i in order}
  if len(marked) > 1:
    raise errors.DataError(
        f"Candidates {', '.join(names[i] for i in marked)} of task {first.task!r}, method "
        f"{first.method!r}, seed {first.seed} are all marked selected; mark one "
        "(spot.report.mark_candidate(..., selected=True)).")
  rule = next((group[i].selection["rule"] for i in order
               if group[i].selection and group[i].selection.get("rule")), None)
  if marked:
    chosen, by = marked[0], "recorded selection"
  else:
    scored = [i for i in order if values[i] is not None]
    chosen = max(scored, key=lambda i: values[i]) if scored else order[0]
    by = (f"highest {metric}" if metric else "highest task score") if scored else (
        "no candidate has a score; first by name")
  if rule:
    by = f"{rule}: {by}"
  candidates = tuple({"candidate": names[i], "path": group[i].path, "value": values[i],
                      "selected": i == chosen} for i in order)
  return dataclasses.replace(group[chosen], candidate=names[chosen], candidates=candidates,
                             selected_by=by)


def _is_candidate_group(group: Sequence[Run]) -> bool:
  if all(r.candidate is not None for r in group):
    return True
  return all(r.candidate is None for r in group) and CANDIDATE_METHOD_MARK in group[0].method


def find_runs(dirs: Sequence[epath.PathLike]) -> list[Run]:
  """Finished runs in `dirs`: each a run directory, a folder of them, or a
  `metrics.json` itself.

  Candidate runs of one (task, method, seed) (best-of-top-k) are reduced to
  the selected one (`select_candidate`). Any other (task, method, seed) twice
  is an error, since the report could not tell which one to believe.
  """
  groups: dict[tuple[Any, ...], dict[str, Run]] = {}
  for d in dirs:
    root = epath.Path(d)
    if not root.exists():
      raise errors.MissingInputError(f"--runs {d}: no such directory; pass run directories "
                                     f"(holding {METRICS_FILE}) or folders of them.")
    if root.is_dir():
      paths = list(_find_metrics(root, 0))
    elif root.name == METRICS_FILE:
      paths = [root]
    else:
      raise errors.UsageError(f"--runs {d}: a file, not a directory; pass run directories "
                              f"(holding {METRICS_FILE}) or folders of them.")
    for path in paths:
      run = read_run(path)
      key = (run.task, run.group, run.protocol, run.seed, run.init_seed, run.data_seed)
      groups.setdefault(key, {})[run.path] = run
  runs = []
  for (task, method, protocol, *_), by_path in groups.items():
    group = list(by_path.values())
    if len(group) == 1 and group[0].candidate is None:
      runs.append(group[0])
    elif _is_candidate_group(group):
      runs.append(select_candidate(group))
    else:
      paths = sorted(by_path)
      seed = group[0].seed_label
      in_protocol = "" if protocol == DEFAULT_PROTOCOL else f", protocol {protocol}"
      raise errors.DataError(
          f"Two runs of task {task!r}, method {method!r}, seed {seed}{in_protocol}: {paths[0]} and "
          f"{paths[1]}. Remove one, give them different seeds or methods, or, if they are "
          "candidates of one selection, record it (spot.report.mark_candidate).")
  return sorted(runs, key=lambda r: (r.task, r.group, _protocol_order(r.protocol), r.seed,
                                     r.init_seed or 0, r.data_seed or 0))


def _protocol_order(protocol: str) -> tuple[int, str]:
  """Known protocols first, in PROTOCOLS' order, then others by name."""
  known = list(PROTOCOLS)
  return (known.index(protocol) if protocol in known else len(known), protocol)


# --------------------------------------------------------------- summarise


def benchmark_of(task: str) -> str:
  """"SuperGLUE", "GLUE" or "Other", from the task's registered name."""
  lowered = task.lower()
  if "superglue" in lowered or "super_glue" in lowered:
    return "SuperGLUE"
  return "GLUE" if "glue" in lowered else "Other"


def benchmark_task(task: str) -> str:
  """The benchmark's key for a task name, e.g. "spot_glue_mnli_matched" ->
  "mnli", "spot_superglue_cb" -> "cb"; other tasks are their own key."""
  lowered = task.lower()
  for mark in ("superglue_", "super_glue_", "glue_"):
    if mark in lowered:
      key = lowered[lowered.rindex(mark) + len(mark):]
      for suffix in ("_matched", "_mismatched"):
        key = key[:-len(suffix)] if key.endswith(suffix) else key
      return key
  return task


def relative_error_reduction(baseline: Optional[float],
                             method: Optional[float]) -> Optional[float]:
  """(err_base - err_method) / err_base in percent, err = 100 - score;
  None when the baseline has no error to reduce or a score is missing."""
  if baseline is None or method is None:
    return None
  err_base, err_method = 100.0 - baseline, 100.0 - method
  return None if err_base == 0 else 100.0 * (err_base - err_method) / err_base


def average_relative_gain(scores: Mapping[str, Optional[float]],
                          baselines: Mapping[str, Optional[float]]) -> float:
  """ARG (CrossFit): the mean over tasks of (P - P0) / P0 * 100, in percent.

  Args:
    scores: {task: P}, the method's score per task.
    baselines: {task: P0}, the baseline's score per task.

  Returns:
    The mean relative gain over the tasks both map (others are left out), e.g.
    P = {a: 60, b: 45} over P0 = {a: 50, b: 50} gives (20 + -10) / 2 = 5.0.

  Raises:
    DataError: no task in common, or a common task whose P0 is 0 or whose P
      or P0 is missing (None / not finite), naming the tasks.
  """
  common = sorted(set(scores) & set(baselines))
  if not common:
    raise errors.DataError(
        f"ARG: the method ({', '.join(sorted(scores)) or 'no tasks'}) and the baseline "
        f"({', '.join(sorted(baselines)) or 'no tasks'}) share no task; run both on the same "
        "tasks.")
  undefined = [t for t in common
               if _finite(baselines[t]) in (None, 0.0) or _finite(scores[t]) is None]
  if undefined:
    raise errors.DataError(
        f"ARG: tasks {', '.join(undefined)} have a baseline score of 0 or a missing score, so "
        "the relative gain is undefined; leave them out or rerun them.")
  return statistics.fmean(100.0 * (float(scores[t]) - float(baselines[t])) / float(baselines[t])
                          for t in common)


def _mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
  """Mean and sample standard deviation (None for a single value; both None
  for none)."""
  if not values:
    return None, None
  return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _benchmark_keys(bench: str, tasks: Sequence[str]) -> list[str]:
  """The task keys of a benchmark: its published task set plus any other
  task of it in the report."""
  keys = list(BENCHMARK_TASKS.get(bench, ()))
  for t in tasks:
    if benchmark_of(t) == bench and benchmark_task(t) not in keys:
      keys.append(benchmark_task(t))
  return keys


def _cell(task: str, method: str, protocol: str, group: Sequence[Run],
          notes: list[str]) -> dict[str, Any]:
  """One (task, method, protocol): the score's mean / std / min / max over seeds, per metric."""
  scored = [r for r in group if r.score is not None]
  values = [r.score for r in scored]
  mean, std = _mean_std(values)
  per_metric = {}
  for m in sorted({m for r in group for m in r.scores}):
    m_values = [r.scores[m] for r in group if r.scores.get(m) is not None]
    m_mean, m_std = _mean_std(m_values)
    per_metric[m] = {"mean": m_mean, "std": m_std, "n": len(m_values)}
  for r in group:
    if r.score is None:
      notes.append(f"{task} / {method} seed {r.seed_label}: no score ({', '.join(r.null_metrics)} "
                   "not finite); left out of the mean.")
  selections = [{"seed": r.seed, "selected": r.candidate, "of": len(r.candidates),
                 "by": r.selected_by, "candidates": list(r.candidates)}
                for r in group if r.candidates]
  per_seed = [{"seed": r.seed, "init_seed": r.init_seed, "data_seed": r.data_seed,
               "label": r.seed_label, "score": r.score, "path": r.path,
               **({"selection_score": _mean_or_none(r.selection_scores)}
                  if r.selection_scores else {})} for r in group]
  return {"task": task, "method": method, "protocol": protocol, "benchmark": benchmark_of(task),
          "seeds": [r.seed for r in group], "n": len(scored), "n_runs": len(group),
          "null_seeds": [r.seed for r in group if r.score is None],
          "score_mean": mean, "score_std": std,
          "score_min": min(values) if values else None,
          "score_max": max(values) if values else None,
          "per_seed": per_seed, "metrics": per_metric, "rer": None, "selections": selections}


def _mean_or_none(scores: Optional[Mapping[str, Optional[float]]]) -> Optional[float]:
  """The mean of `scores`' values; None when there are none or one is missing."""
  values = [_finite(v) for v in (scores or {}).values()]
  return None if not values or None in values else statistics.fmean(values)


def _one_count(values: Iterable[Optional[int]]) -> Optional[int]:
  """The count the runs agree on; None when none has one or they differ."""
  distinct = {v for v in values if v is not None}
  return distinct.pop() if len(distinct) == 1 else None


def _averages(cells: Mapping[tuple[str, str, str], Mapping[str, Any]], tasks: Sequence[str],
              methods: Sequence[str], protocol: str) -> list[dict[str, Any]]:
  """An average per (benchmark, method) of one protocol, over the tasks with a score."""
  averages = []
  benchmarks = sorted({benchmark_of(t) for t in tasks})
  # (benchmark, key) of every task a benchmark average should cover
  keys = {b: [(b, k) for k in _benchmark_keys(b, tasks)] for b in benchmarks}
  groups = benchmarks + (["All"] if len(benchmarks) > 1 else [])
  for bench in groups:
    bench_tasks = [t for t in tasks if bench == "All" or benchmark_of(t) == bench]
    expected = [bk for b in benchmarks for bk in keys[b]] if bench == "All" else keys[bench]
    for method in methods:
      have = [t for t in bench_tasks if (t, method, protocol) in cells
              and cells[t, method, protocol]["score_mean"] is not None]
      if not have:
        continue
      covered = {(benchmark_of(t), benchmark_task(t)) for t in have}
      missing = [k if bench != "All" else f"{b}/{k}" for b, k in expected
                 if (b, k) not in covered]
      averages.append({"benchmark": bench, "method": method, "protocol": protocol,
                       "n_tasks": len(covered), "of_tasks": max(len(expected), len(covered)),
                       "tasks": have, "missing": missing,
                       "score_mean": statistics.fmean(cells[t, method, protocol]["score_mean"]
                                                      for t in have),
                       "rer": None})
  return averages


def _method_rows(runs: Sequence[Run], cells: Mapping[tuple[str, str, str], Mapping[str, Any]],
                 methods: Sequence[str], protocols: Sequence[str], baseline: Optional[str],
                 notes: list[str]) -> list[dict[str, Any]]:
  """Per (method, protocol): tunable parameters, per-task mean ± std, mean RER and ARG."""
  rows = []
  for protocol in protocols:
    for method in methods:
      group = [r for r in runs if r.group == method and r.protocol == protocol]
      if not group:
        continue
      trainable = _one_count(r.num_trainable for r in group)
      base = _one_count(r.num_base for r in group)
      counts = sorted({r.num_trainable for r in group} - {None})
      if len(counts) > 1:
        notes.append(f"{method} ({protocol}): runs train different numbers of parameters "
                     f"({', '.join(map(str, counts))}); no single count is shown.")
      mine = {t: c for (t, m, p), c in cells.items() if m == method and p == protocol}
      rers = [c["rer"] for c in mine.values() if c["rer"] is not None]
      arg, arg_tasks = None, []
      if baseline is not None and method != baseline:
        base_cells = {t: c for (t, m, p), c in cells.items() if m == baseline and p == protocol}
        # Over the tasks both have a score on (a task without one is noted under the table).
        arg_tasks = sorted(t for t in set(mine) & set(base_cells)
                           if mine[t]["score_mean"] is not None
                           and base_cells[t]["score_mean"] is not None)
        if arg_tasks:
          try:
            arg = average_relative_gain({t: mine[t]["score_mean"] for t in arg_tasks},
                                        {t: base_cells[t]["score_mean"] for t in arg_tasks})
          except errors.DataError as e:
            notes.append(f"{method} ({protocol}): no ARG over {baseline}: {e}")
      peft_methods = sorted({(r.peft or {}).get("method") for r in group} - {None})
      rows.append({
          "method": method, "protocol": protocol, "peft": peft_methods,
          "num_trainable": trainable, "num_base": base,
          "trainable_pct": (100.0 * trainable / base) if trainable is not None and base else None,
          "tasks": {t: {"mean": c["score_mean"], "std": c["score_std"], "n": c["n"],
                        "rer": c["rer"]} for t, c in sorted(mine.items())},
          "rer_mean": statistics.fmean(rers) if rers else None, "n_rer_tasks": len(rers),
          "arg": arg, "arg_tasks": arg_tasks,
          "baseline": baseline if method != baseline else None})
  return rows


def summarize(runs: Sequence[Run], baseline: Optional[str] = None) -> dict[str, Any]:
  """The report as plain data (what report.json holds).

  Runs are grouped by `Run.group` (the method) and never averaged across
  protocols: every cell, average, RER and ARG is of one protocol, and RER and
  ARG compare with the baseline's runs of the same protocol.

  Args:
    runs: finished runs.
    baseline: the method RER and ARG are measured against; None for neither.

  Returns:
    {"baseline", "methods", "tasks", "protocols", "cells", "averages",
    "method_rows", "notes", "runs"}: a cell per (task, method, protocol) with
    the score's mean / std / min / max over the seeds that have a value (`n`
    of `n_runs`), each seed's score, each metric's mean / std, and the RER; an
    average per (benchmark, method, protocol) over the tasks with a score,
    `n_tasks` of the benchmark's `of_tasks`; a row per (method, protocol) with
    the tunable parameters (count, % of the base), mean RER and ARG.
  """
  if not runs:
    raise errors.DataError("No finished runs to report.")
  methods = sorted({r.group for r in runs}, key=lambda m: (m != baseline, m))
  if baseline is not None and baseline not in methods:
    raise errors.UsageError(f"--baseline {baseline!r} has no runs; pass one of the methods "
                            f"found: {', '.join(methods)}.")
  tasks = sorted({r.task for r in runs}, key=lambda t: (benchmark_of(t), t))
  protocols = sorted({r.protocol for r in runs}, key=_protocol_order)
  notes: list[str] = []
  cells: dict[tuple[str, str, str], dict[str, Any]] = {}
  for protocol in protocols:
    for task in tasks:
      for method in methods:
        group = [r for r in runs if r.task == task and r.group == method and r.protocol == protocol]
        if group:
          cells[task, method, protocol] = _cell(task, method, protocol, group, notes)
  averages = [a for p in protocols for a in _averages(cells, tasks, methods, p)]
  if baseline is not None:
    for (task, method, protocol), cell in cells.items():
      if method != baseline and (task, baseline, protocol) in cells:
        cell["rer"] = relative_error_reduction(cells[task, baseline, protocol]["score_mean"],
                                               cell["score_mean"])
    base_avg = {(a["benchmark"], a["protocol"]): a for a in averages if a["method"] == baseline}
    for avg in averages:
      base = base_avg.get((avg["benchmark"], avg["protocol"]))
      # Only over the same tasks: otherwise the difference is the task mix.
      if avg["method"] != baseline and base is not None and avg["tasks"] == base["tasks"]:
        avg["rer"] = relative_error_reduction(base["score_mean"], avg["score_mean"])
  for avg in averages:
    if avg["n_tasks"] < avg["of_tasks"]:
      of_protocol = f" ({avg['protocol']})" if len(protocols) > 1 else ""
      notes.append(f"{avg['benchmark']} average of {avg['method']}{of_protocol} covers "
                   f"{avg['n_tasks']} of {avg['of_tasks']} tasks; missing: "
                   f"{', '.join(avg['missing'])}.")
  method_rows = _method_rows(runs, cells, methods, protocols, baseline, notes)
  return {"baseline": baseline, "methods": methods, "tasks": tasks, "protocols": protocols,
          "cells": list(cells.values()), "averages": averages, "method_rows": method_rows,
          "notes": notes, "runs": [dataclasses.asdict(r) for r in runs]}


# ------------------------------------------------------------------ render


def _fmt(value: Optional[float]) -> str:
  return "-" if value is None else f"{value:.2f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _coverage(a: Mapping[str, Any]) -> str:
  return f"{a['n_tasks']}/{a['of_tasks']} tasks"


def _count(n: Optional[int]) -> str:
  """A parameter count with thousands separators ("1,024"); "-" when unknown."""
  return "-" if n is None else f"{n:,}"


def _pct(value: Optional[float]) -> str:
  if value is None:
    return "-"
  return f"{value:.3g}%" if value < 1 else f"{value:.2f}%"


def _protocol_legend(protocols: Sequence[str]) -> str:
  known = "; ".join(f"**{p}**: {PROTOCOLS.get(p, 'as the runs recorded it')}" for p in protocols)
  return (f"Protocol ({known}). Each table names the protocol of its numbers; runs of "
          "different protocols are never averaged or compared with each other.")


def _score_tables(report: Mapping[str, Any], protocol: str, several: bool) -> list[str]:
  """The task x method score table (with benchmark averages) and the RER table of one protocol."""
  methods, baseline = report["methods"], report["baseline"]
  cells = {(c["task"], c["method"]): c for c in report["cells"] if c["protocol"] == protocol}
  averages = {(a["benchmark"], a["method"]): a for a in report["averages"]
              if a["protocol"] == protocol}
  benches = list(dict.fromkeys(a["benchmark"] for a in report["averages"]
                               if a["protocol"] == protocol))
  tasks = [t for t in report["tasks"] if any((t, m) in cells for m in methods)]
  methods = [m for m in methods if any((t, m) in cells for t in tasks)]
  first = f"Task ({protocol})"

  def label(bench: str, ms: Sequence[str]) -> tuple[str, bool]:
    """The row label, and whether each cell must say its own coverage."""
    coverages = {_coverage(averages[bench, m]) for m in ms if (bench, m) in averages}
    full = all(averages[bench, m]["n_tasks"] == averages[bench, m]["of_tasks"]
               for m in ms if (bench, m) in averages)
    if full:
      return f"**{bench} avg**", False
    if len(coverages) == 1:
      return f"**{bench} avg ({coverages.pop()})**", False
    return f"**{bench} avg (partial)**", True

  def score(cell):
    if cell is None:
      return ""
    if cell["score_mean"] is None:
      return f"- (n=0/{cell['n_runs']})"
    std = f" ± {cell['score_std']:.2f}" if cell["score_std"] is not None else ""
    n = f"{cell['n']}/{cell['n_runs']}" if cell["n"] < cell["n_runs"] else str(cell["n"])
    return f"{cell['score_mean']:.2f}{std} (n={n})"

  def avg(a, per_cell, value):
    if a is None:
      return ""
    partial = f" ({_coverage(a)})" if per_cell else ""
    return f"{value(a)}{partial}"

  lines = [f"## Scores, protocol {protocol}", ""] if several else []
  rows = [[t] + [score(cells.get((t, m))) for m in methods] for t in tasks]
  for b in benches:
    name, per_cell = label(b, methods)
    rows.append([name] + [avg(averages.get((b, m)), per_cell,
                              lambda a: f"**{a['score_mean']:.2f}**") for m in methods])
  lines += _table([first] + methods, rows)
  others = [m for m in methods if m != baseline]
  if baseline is not None and baseline in methods and others:
    in_protocol = f", protocol {protocol}" if several else ""
    lines += ["", f"## Relative error reduction over {baseline} (%){in_protocol}", "",
              "RER = (err_base - err_method) / err_base, err = 100 - score; for an average, "
              "only when both average the same tasks.", ""]
    rows = [[t] + [_fmt(cells[t, m]["rer"]) if (t, m) in cells else "" for m in others]
            for t in tasks]
    for b in benches:
      name, per_cell = label(b, [baseline] + others)
      rows.append([name] + [avg(averages.get((b, m)), per_cell, lambda a: _fmt(a["rer"]))
                            for m in others])
    lines += _table([first] + others, rows)
  return lines


def _seed_entry(seed: Mapping[str, Any]) -> str:
  """"seed: score", with the selection (dev1) score when the run has one."""
  selection = seed.get("selection_score")
  on_dev1 = f" (selected at {selection:.2f})" if selection is not None else ""
  return f"{seed['label']}: {_fmt(seed['score'])}{on_dev1}"


def _seed_table(report: Mapping[str, Any]) -> list[str]:
  """Per (task, method, protocol): n, mean, std, min, max and every seed's score."""
  rows = [[c["task"], c["method"], c["protocol"], f"{c['n']}/{c['n_runs']}",
           _fmt(c["score_mean"]), _fmt(c["score_std"]), _fmt(c.get("score_min")),
           _fmt(c.get("score_max")),
           ", ".join(_seed_entry(s) for s in c.get("per_seed", ()))]
          for c in report["cells"]]
  return _table(["Task", "Method", "Protocol", "n", "Mean", "Std", "Min", "Max",
                 "Per seed (seed: score)"], rows)


def _method_table(report: Mapping[str, Any]) -> list[str]:
  """Per (method, protocol): tunable parameters, ARG and mean RER over the baseline,
  and each task's mean ± std."""
  baseline = report["baseline"]
  tasks = report["tasks"]

  def task_cell(row, t):
    v = row["tasks"].get(t)
    if v is None or v["mean"] is None:
      return ""
    return f"{v['mean']:.2f}" + (f" ± {v['std']:.2f}" if v["std"] is not None else "")

  vs = f" vs {baseline}" if baseline else ""
  rows = [[r["method"], r["protocol"], ", ".join(r.get("peft") or ()) or "-",
           _count(r["num_trainable"]), _pct(r["trainable_pct"]), _fmt(r["arg"]),
           _fmt(r["rer_mean"])] + [task_cell(r, t) for t in tasks]
          for r in report.get("method_rows", ())]
  return _table(["Method", "Protocol", "PEFT", "Tunable params", "% of base", f"ARG{vs} (%)",
                 f"Mean RER{vs} (%)"] + list(tasks), rows)


def render_markdown(report: Mapping[str, Any],
                    figures: Optional[Mapping[str, Any]] = None) -> str:
  """The paper-style tables: scores and RER over the baseline per protocol, per-seed
  statistics, the per-method table (parameters, ARG), candidate selection, all
  metrics; with `figures` ({"seeds": path, "box": path, "curves": [(title,
  path)]}, paths relative to the Markdown), links to the PNGs."""
  methods = report["methods"]
  protocols = report.get("protocols") or [DEFAULT_PROTOCOL]
  figures = figures or {}
  lines = [f"# Results: {len(report['runs'])} runs, {len(methods)} methods, "
           f"{len(report['tasks'])} tasks", "",
           "Score = mean of a task's metrics; mean ± sample std over seeds (n seeds). "
           "An average over fewer than all of a benchmark's tasks says how many it covers.", "",
           _protocol_legend(protocols), ""]
  for i, protocol in enumerate(protocols):
    lines += ([""] if i else []) + _score_tables(report, protocol, len(protocols) > 1)
  if report.get("notes"):
    lines += [""] + [f"- {note}" for note in report["notes"]]
  lines += ["", "## Per-seed statistics", "",
            "Over the seeds with a score: sample std; min and max of the task score. "
            "\"selected at\" is the score the checkpoint was selected by (dev1 under "
            "dev1/dev2).", ""]
  lines += _seed_table(report)
  for key, alt in (("seeds", "per-seed scores"), ("box", "box plot per method and task")):
    if figures.get(key):
      lines += ["", f"![{alt}]({figures[key]})"]
  lines += ["", "## Methods", "",
            "Tunable params: parameters trained (% of the frozen base's). ARG = mean over "
            "tasks of (P - P0) / P0 x 100 against the baseline, over the tasks both have; mean "
            "RER over the same tasks. Both compare runs of the same protocol.", ""]
  lines += _method_table(report)
  if figures.get("curves"):
    lines += ["", "## Learning curves", "",
              "Evaluations during training, every seed of a (task, method, protocol) on one "
              "figure.", ""]
    lines += [f"- [{title}]({path})" for title, path in figures["curves"]]
  selections = [(c, s) for c in report["cells"] for s in c.get("selections", [])]
  if selections:
    lines += ["", "## Candidate selection", "",
              "Runs with the same task, method and seed that are candidates of one "
              "selection (best of top-k): the one kept, of how many.", ""]
    rows = [[c["task"], c["method"], str(s["seed"]), s["selected"], str(s["of"]), s["by"],
             ", ".join(f"{x['candidate']} ({_fmt(x['value'])})" for x in s["candidates"]),
             c["protocol"]]
            for c, s in selections]
    lines += _table(["Task", "Method", "Seed", "Selected", "Of", "By", "Candidates",
                     "Protocol"], rows)
  lines += ["", "## All metrics", "", "Seeds = number of seeds with a value for the metric.", ""]
  rows = [[c["task"], c["method"], name, _fmt(v["mean"]), _fmt(v["std"]), str(v["n"]),
           c["protocol"]]
          for c in report["cells"] for name, v in c["metrics"].items()]
  lines += _table(["Task", "Method", "Metric", "Mean", "Std", "Seeds", "Protocol"], rows)
  return "\n".join(lines) + "\n"


def render_csv(report: Mapping[str, Any]) -> str:
  """Long format: one row per (task, method, protocol, metric); metric "score" is
  the task score and carries the RER, min and max; "average:<benchmark>" rows
  hold averages, with `n` the tasks averaged and `of` the benchmark's tasks."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["task", "method", "metric", "mean", "std", "n", "rer", "of", "protocol",
                   "min", "max"])

  def num(v):
    return "" if v is None else repr(float(v))

  for c in report["cells"]:
    writer.writerow([c["task"], c["method"], "score", num(c["score_mean"]),
                     num(c["score_std"]), c["n"], num(c["rer"]), c["n_runs"], c["protocol"],
                     num(c.get("score_min")), num(c.get("score_max"))])
    for name, v in c["metrics"].items():
      writer.writerow([c["task"], c["method"], name, num(v["mean"]), num(v["std"]), v["n"], "",
                       c["n_runs"], c["protocol"], "", ""])
  for a in report["averages"]:
    writer.writerow([f"average:{a['benchmark']}", a["method"], "score", num(a["score_mean"]),
                     "", a["n_tasks"], num(a["rer"]), a["of_tasks"], a["protocol"], "", ""])
  return out.getvalue()


# ------------------------------------------------------------ curves, PNGs


def eval_history(run_dir: epath.PathLike) -> list[tuple[int, dict[str, Optional[float]]]]:
  """The evaluations during training a run's latest checkpoint records
  ([(step, {"task/metric": value})], oldest first); [] when it has none."""
  root = epath.Path(run_dir)
  for kind in (run_layout.CHECKPOINTS_DIR, run_layout.BEST_DIR):
    steps = run_layout.committed_steps(root, kind)
    if steps:
      break
  else:
    return []
  meta_file = run_layout.step_dir(root, steps[-1], kind == run_layout.BEST_DIR) / (
      run_layout.META_ITEM) / _ORBAX_JSON_FILE
  if not meta_file.is_file():
    return []
  meta = spot_io.read_json(meta_file, "run checkpoint metadata", error=errors.DataError,
                           fix="the checkpoint is damaged; copy the run again")
  history = meta.get("eval_history") or []
  try:
    return [(int(s), dict(r)) for s, r in history]
  except (TypeError, ValueError) as e:
    raise errors.DataError(f"{meta_file}: 'eval_history' must be [[step, {{metric: value}}], "
                           f"...], got {history!r:.80}; copy the run again.") from e


def _history_score(task: str, results: Mapping[str, Any]) -> Optional[float]:
  """The task score of one evaluation: the mean of the task's "task/metric" values
  (all values when none is keyed by `task`); None when one is missing."""
  own = {k: v for k, v in results.items() if k.split("/", 1)[0] == task}
  values = [_finite(v) if v is None or _is_number(v) else None
            for v in (own or results).values()]
  return None if not values or None in values else statistics.fmean(values)


def read_curves(runs: Sequence[Run]) -> list[dict[str, Any]]:
  """Per (task, method, protocol) with an eval history: each seed's [[step, score]]."""
  groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
  for run in runs:
    if not run.path:
      continue
    history = eval_history(os.path.dirname(run.path))
    if history:
      points = [[step, _history_score(run.task, results)] for step, results in history]
      groups.setdefault((run.task, run.group, run.protocol), []).append(
          {"label": f"seed {run.seed_label}", "points": points})
  return [{"task": t, "method": m, "protocol": p, "seeds": seeds}
          for (t, m, p), seeds in sorted(groups.items())]


def _slug(text: str) -> str:
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def write_figures(report: Mapping[str, Any], out_dir: epath.PathLike, prefix: str = "report"
                  ) -> dict[str, Any]:
  """Writes the strip plot, box plot and learning-curve PNGs into `out_dir`;
  returns their paths relative to it (for `render_markdown(figures=...)`)."""
  from spot import report_plots  # pylint: disable=g-import-not-at-top
  out = epath.Path(out_dir)
  figures: dict[str, Any] = {"seeds": f"{prefix}_seeds.png", "box": f"{prefix}_box.png",
                             "curves": []}
  spot_io.write_bytes_atomic(out / figures["seeds"], report_plots.strip_plot(report))
  spot_io.write_bytes_atomic(out / figures["box"], report_plots.box_plot(report))
  for curve in report.get("curves", ()):
    title = f"{curve['task']} / {curve['method']} ({curve['protocol']})"
    name = f"{prefix}_curves/{_slug(curve['task'])}__{_slug(curve['method'])}__" \
           f"{_slug(curve['protocol'])}.png"
    spot_io.write_bytes_atomic(out / name, report_plots.learning_curves(title, curve["seeds"]))
    figures["curves"].append((title, name))
  return figures


# --------------------------------------------------------------------- CLI


def _outputs(out: str) -> tuple[epath.Path, str]:
  """(folder, file stem) of --out: a folder (report.md ...) or a REPORT.md file."""
  path = epath.Path(out)
  if out.endswith(".md"):
    return path.parent, path.name[:-len(".md")]
  return path, "report"


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`spot report`; failures raise spot.errors types (the CLI prints one line)."""
  parser = argparse.ArgumentParser(
      prog="spot report", description="Turn finished runs (directories with metrics.json) "
      "into tables: per-task mean ± std, min and max over seeds, per protocol, benchmark "
      "averages, tunable parameters, and RER and ARG over a baseline method; with --out, "
      "strip, box and learning-curve plots.")
  parser.add_argument("dirs", nargs="*", metavar="DIR",
                      help="run directories, or folders searched for them (as --runs)")
  parser.add_argument("--runs", nargs="+", default=[], metavar="DIR",
                      help="run directories, or folders searched for them")
  parser.add_argument("--baseline", default=None, metavar="METHOD",
                      help=f"method to measure RER and ARG against (default: "
                      f"{DEFAULT_BASELINE!r} if it has runs, else none)")
  parser.add_argument("--out", metavar="DIR|REPORT.md",
                      help="write report.md, report.csv, report.json and the PNGs into DIR, "
                      "or REPORT.md with REPORT.csv, REPORT.json and the PNGs beside it")
  parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
  args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
  dirs = list(args.dirs) + list(args.runs)
  if not dirs:
    raise errors.UsageError("no run directories given; pass them as DIR... or --runs DIR...")
  runs = find_runs(dirs)
  if not runs:
    raise errors.DataError(f"--runs {' '.join(dirs)}: no finished runs ({METRICS_FILE}) "
                           "there; a run writes it with spot.report.write_run_metrics when it "
                           "finishes.")
  baseline = args.baseline
  if baseline is None and any(r.group == DEFAULT_BASELINE for r in runs):
    baseline = DEFAULT_BASELINE
  report = summarize(runs, baseline)
  figures = None
  if args.out:
    out, stem = _outputs(args.out)
    report["curves"] = read_curves(runs)
    figures = write_figures(report, out, stem)
    report["figures"] = figures
  markdown = render_markdown(report, figures)
  as_json = json.dumps(report, indent=2, sort_keys=True) + "\n"
  if args.out:
    spot_io.write_text_atomic(out / f"{stem}.md", markdown)
    spot_io.write_text_atomic(out / f"{stem}.csv", render_csv(report))
    spot_io.write_text_atomic(out / f"{stem}.json", as_json)
  sys.stdout.write(as_json if args.json else markdown)
  return 0


if __name__ == "__main__":
  sys.exit(errors.run_cli("spot report", main))
