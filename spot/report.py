"""`spot report`: finished runs -> the papers' tables.

A finished run is a directory holding `metrics.json`:

    {"task": "spot_superglue_cb", "method": "spot_glue", "seed": 0,
     "scores": {"mean_3class_f1": 91.2, "accuracy": 94.6}, "step": 30000}

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

Candidate runs: SPoT's best-of-top-k trains k runs of one (task, method,
seed), one per retrieved source prompt, and keeps the best on validation.
Each candidate's `metrics.json` names its source in `"candidate"` and how the
winner is chosen in `"selection"` (`{"rule": "best_of_top_k", "metric":
"accuracy", "selected": true}`); the report keeps the selected candidate per
(task, method, seed) and lists the others.

    spot report --runs RUNS_DIR... [--baseline prompt_tuning] [--out DIR] [--json]

prints Markdown (or JSON) and, with --out, writes report.md, report.csv and
report.json there. Reads and writes local paths and gs:// alike.
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


def _check_run(task: Any, method: Any, seed: Any, scores: Any, where: str, *,
               candidate: Any = None, selection: Any = None,
               on_non_finite: str = "null") -> Run:
  """Validates a run's fields; non-finite scores become None (warned when
  `on_non_finite` is "warn")."""
  for field, value in (("task", task), ("method", method)):
    if not isinstance(value, str) or not value:
      raise errors.DataError(f"{where}: {field!r} must be a non-empty string, got {value!r}; "
                             f"{_FIX}.")
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise errors.DataError(f"{where}: 'seed' must be an integer, got {seed!r}; {_FIX}.")
  if not isinstance(scores, Mapping) or not scores:
    raise errors.DataError(f"{where}: 'scores' must be a non-empty {{metric: value}} mapping, "
                           f"got {scores!r}; {_FIX}.")
  if candidate is not None and (not isinstance(candidate, str) or not candidate):
    raise errors.DataError(f"{where}: 'candidate' must be a non-empty string (the source the "
                           f"candidate run started from), got {candidate!r}.")
  clean: dict[str, Optional[float]] = {}
  for name, value in scores.items():
    if not isinstance(name, str) or not (value is None or _is_number(value)):
      raise errors.DataError(f"{where}: score {name!r} = {value!r} is not a number; {_FIX}.")
    clean[name] = _finite(value)
    if clean[name] is None and value is not None and on_non_finite == "warn":
      warnings.warn(f"{where}: metric {name!r} of task {task!r} is {value!r}, not a finite "
                    "number; it is written as null and the task has no score for this run "
                    "(STS-B's correlations are NaN while predictions are constant).",
                    NonFiniteMetricWarning, stacklevel=3)
  return Run(task, method, seed, clean, where, candidate=candidate,
             selection=_check_selection(selection, where))


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
                      selection: Optional[Mapping[str, Any]] = None) -> epath.Path:
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

  Returns:
    The path written.
  """
  path = epath.Path(run_dir) / METRICS_FILE
  where = os.fspath(path)
  run = _check_run(task, method, seed, scores, where, candidate=candidate,
                   selection=selection, on_non_finite="warn")
  record: dict[str, Any] = {"task": run.task, "method": run.method, "seed": run.seed,
                            "scores": dict(run.scores)}
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
                           candidate=candidate, selection=selection)


def _read_record(path: epath.Path) -> dict[str, Any]:
  if not path.exists():
    raise errors.MissingInputError(f"{path}: no such file; a finished run holds "
                                   f"{METRICS_FILE} ({_FIX}).")
  return spot_io.read_json(path, "metrics file", error=errors.DataError,
                           fix="rewrite it with spot.report.write_run_metrics or remove it")


def _run_from_record(record: Mapping[str, Any], path: epath.Path) -> Run:
  return _check_run(record.get("task"), record.get("method"), record.get("seed"),
                    record.get("scores"), os.fspath(path), candidate=record.get("candidate"),
                    selection=record.get("selection"))


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
  groups: dict[tuple[str, str, int], dict[str, Run]] = {}
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
      groups.setdefault((run.task, run.method, run.seed), {})[run.path] = run
  runs = []
  for (task, method, seed), by_path in groups.items():
    group = list(by_path.values())
    if len(group) == 1 and group[0].candidate is None:
      runs.append(group[0])
    elif _is_candidate_group(group):
      runs.append(select_candidate(group))
    else:
      paths = sorted(by_path)
      raise errors.DataError(
          f"Two runs of task {task!r}, method {method!r}, seed {seed}: {paths[0]} and "
          f"{paths[1]}. Remove one, give them different seeds or methods, or, if they are "
          "candidates of one selection, record it (spot.report.mark_candidate).")
  return sorted(runs, key=lambda r: (r.task, r.method, r.seed))


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
        f"({', '.join(sorted(baselines)) or 'no tasks'}) share no task; run both on the same tasks.")
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


def summarize(runs: Sequence[Run], baseline: Optional[str] = None) -> dict[str, Any]:
  """The report as plain data (what report.json holds).

  Args:
    runs: finished runs.
    baseline: the method RER is measured against; None for no RER.

  Returns:
    {"baseline", "methods", "tasks", "cells", "averages", "notes", "runs"}: a
    cell per (task, method) with the score's and each metric's mean / std over
    the seeds that have a value (`n` of `n_runs`) and the RER; an average per
    (benchmark, method) over the tasks with a score, `n_tasks` of the
    benchmark's `of_tasks`.
  """
  if not runs:
    raise errors.DataError("No finished runs to report.")
  methods = sorted({r.method for r in runs}, key=lambda m: (m != baseline, m))
  if baseline is not None and baseline not in methods:
    raise errors.UsageError(f"--baseline {baseline!r} has no runs; pass one of the methods "
                            f"found: {', '.join(methods)}.")
  tasks = sorted({r.task for r in runs}, key=lambda t: (benchmark_of(t), t))
  notes: list[str] = []
  cells: dict[tuple[str, str], dict[str, Any]] = {}
  for task in tasks:
    for method in methods:
      group = [r for r in runs if r.task == task and r.method == method]
      if not group:
        continue
      scored = [r for r in group if r.score is not None]
      mean, std = _mean_std([r.score for r in scored])
      metric_names = sorted({m for r in group for m in r.scores})
      per_metric = {}
      for m in metric_names:
        values = [r.scores[m] for r in group if r.scores.get(m) is not None]
        m_mean, m_std = _mean_std(values)
        per_metric[m] = {"mean": m_mean, "std": m_std, "n": len(values)}
      null_seeds = [r.seed for r in group if r.score is None]
      for r in group:
        if r.score is None:
          notes.append(f"{task} / {method} seed {r.seed}: no score ({', '.join(r.null_metrics)} "
                       "not finite); left out of the mean.")
      selections = [{"seed": r.seed, "selected": r.candidate, "of": len(r.candidates),
                     "by": r.selected_by, "candidates": list(r.candidates)}
                    for r in group if r.candidates]
      cells[task, method] = {"task": task, "method": method, "benchmark": benchmark_of(task),
                             "seeds": [r.seed for r in group], "n": len(scored),
                             "n_runs": len(group), "null_seeds": null_seeds,
                             "score_mean": mean, "score_std": std, "metrics": per_metric,
                             "rer": None, "selections": selections}
  averages = []
  benchmarks = sorted({benchmark_of(t) for t in tasks})
  # (benchmark, key) of every task a benchmark average should cover
  keys = {b: [(b, k) for k in _benchmark_keys(b, tasks)] for b in benchmarks}
  groups = benchmarks + (["All"] if len(benchmarks) > 1 else [])
  for bench in groups:
    bench_tasks = [t for t in tasks if bench == "All" or benchmark_of(t) == bench]
    expected = [bk for b in benchmarks for bk in keys[b]] if bench == "All" else keys[bench]
    for method in methods:
      have = [t for t in bench_tasks
              if (t, method) in cells and cells[t, method]["score_mean"] is not None]
      if not have:
        continue
      covered = {(benchmark_of(t), benchmark_task(t)) for t in have}
      missing = [k if bench != "All" else f"{b}/{k}" for b, k in expected
                 if (b, k) not in covered]
      averages.append({"benchmark": bench, "method": method, "n_tasks": len(covered),
                       "of_tasks": max(len(expected), len(covered)), "tasks": have,
                       "missing": missing,
                       "score_mean": statistics.fmean(cells[t, method]["score_mean"]
                                                      for t in have),
                       "rer": None})
  if baseline is not None:
    for (task, method), cell in cells.items():
      if method != baseline and (task, baseline) in cells:
        cell["rer"] = relative_error_reduction(cells[task, baseline]["score_mean"],
                                               cell["score_mean"])
    base_avg = {a["benchmark"]: a for a in averages if a["method"] == baseline}
    for avg in averages:
      base = base_avg.get(avg["benchmark"])
      # Only over the same tasks: otherwise the difference is the task mix.
      if avg["method"] != baseline and base is not None and avg["tasks"] == base["tasks"]:
        avg["rer"] = relative_error_reduction(base["score_mean"], avg["score_mean"])
  for avg in averages:
    if avg["n_tasks"] < avg["of_tasks"]:
      notes.append(f"{avg['benchmark']} average of {avg['method']} covers {avg['n_tasks']} of "
                   f"{avg['of_tasks']} tasks; missing: {', '.join(avg['missing'])}.")
  return {"baseline": baseline, "methods": methods, "tasks": tasks,
          "cells": list(cells.values()), "averages": averages, "notes": notes,
          "runs": [dataclasses.asdict(r) for r in runs]}


# ------------------------------------------------------------------ render


def _fmt(value: Optional[float]) -> str:
  return "-" if value is None else f"{value:.2f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _coverage(a: Mapping[str, Any]) -> str:
  return f"{a['n_tasks']}/{a['of_tasks']} tasks"


def render_markdown(report: Mapping[str, Any]) -> str:
  """The paper-style tables: scores, RER over the baseline, all metrics."""
  methods, baseline = report["methods"], report["baseline"]
  cells = {(c["task"], c["method"]): c for c in report["cells"]}
  averages = {(a["benchmark"], a["method"]): a for a in report["averages"]}
  benches = list(dict.fromkeys(a["benchmark"] for a in report["averages"]))

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

  lines = [f"# Results: {len(report['runs'])} runs, {len(methods)} methods, "
           f"{len(report['tasks'])} tasks", "",
           "Score = mean of a task's metrics; mean ± sample std over seeds (n seeds). "
           "An average over fewer than all of a benchmark's tasks says how many it covers.", ""]
  rows = [[t] + [score(cells.get((t, m))) for m in methods] for t in report["tasks"]]
  for b in benches:
    name, per_cell = label(b, methods)
    rows.append([name] + [avg(averages.get((b, m)), per_cell,
                              lambda a: f"**{a['score_mean']:.2f}**") for m in methods])
  lines += _table(["Task"] + methods, rows)
  if report.get("notes"):
    lines += [""] + [f"- {note}" for note in report["notes"]]
  others = [m for m in methods if m != baseline]
  if baseline is not None and others:
    lines += ["", f"## Relative error reduction over {baseline} (%)", "",
              "RER = (err_base - err_method) / err_base, err = 100 - score; for an average, "
              "only when both average the same tasks.", ""]
    rows = [[t] + [_fmt(cells[t, m]["rer"]) if (t, m) in cells else "" for m in others]
            for t in report["tasks"]]
    for b in benches:
      name, per_cell = label(b, [baseline] + others)
      rows.append([name] + [avg(averages.get((b, m)), per_cell, lambda a: _fmt(a["rer"]))
                            for m in others])
    lines += _table(["Task"] + others, rows)
  selections = [(c, s) for c in report["cells"] for s in c.get("selections", [])]
  if selections:
    lines += ["", "## Candidate selection", "",
              "Runs with the same task, method and seed that are candidates of one "
              "selection (best of top-k): the one kept, of how many.", ""]
    rows = [[c["task"], c["method"], str(s["seed"]), s["selected"], str(s["of"]), s["by"],
             ", ".join(f"{x['candidate']} ({_fmt(x['value'])})" for x in s["candidates"])]
            for c, s in selections]
    lines += _table(["Task", "Method", "Seed", "Selected", "Of", "By", "Candidates"], rows)
  lines += ["", "## All metrics", "", "Seeds = number of seeds with a value for the metric.", ""]
  rows = [[c["task"], c["method"], name, _fmt(v["mean"]), _fmt(v["std"]), str(v["n"])]
          for c in report["cells"] for name, v in c["metrics"].items()]
  lines += _table(["Task", "Method", "Metric", "Mean", "Std", "Seeds"], rows)
  return "\n".join(lines) + "\n"


def render_csv(report: Mapping[str, Any]) -> str:
  """Long format: one row per (task, method, metric); metric "score" is the
  task score and carries the RER; "average:<benchmark>" rows hold averages,
  with `n` the tasks averaged and `of` the benchmark's tasks."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["task", "method", "metric", "mean", "std", "n", "rer", "of"])

  def num(v):
    return "" if v is None else repr(float(v))

  for c in report["cells"]:
    writer.writerow([c["task"], c["method"], "score", num(c["score_mean"]),
                     num(c["score_std"]), c["n"], num(c["rer"]), c["n_runs"]])
    for name, v in c["metrics"].items():
      writer.writerow([c["task"], c["method"], name, num(v["mean"]), num(v["std"]), v["n"], "",
                       c["n_runs"]])
  for a in report["averages"]:
    writer.writerow([f"average:{a['benchmark']}", a["method"], "score", num(a["score_mean"]),
                     "", a["n_tasks"], num(a["rer"]), a["of_tasks"]])
  return out.getvalue()


# --------------------------------------------------------------------- CLI


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`spot report`; failures raise spot.errors types (the CLI prints one line)."""
  parser = argparse.ArgumentParser(
      prog="spot report", description="Turn finished runs (directories with metrics.json) "
      "into tables: per-task mean ± std over seeds, benchmark averages, and the relative "
      "error reduction over a baseline method.")
  parser.add_argument("--runs", nargs="+", required=True, metavar="DIR",
                      help="run directories, or folders searched for them")
  parser.add_argument("--baseline", default=None, metavar="METHOD",
                      help=f"method to measure RER against (default: {DEFAULT_BASELINE!r} "
                      "if it has runs, else none)")
  parser.add_argument("--out", metavar="DIR", help="write report.md, report.csv, report.json")
  parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
  args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
  runs = find_runs(args.runs)
  if not runs:
    raise errors.DataError(f"--runs {' '.join(args.runs)}: no finished runs ({METRICS_FILE}) "
                           "there; a run writes it with spot.report.write_run_metrics when it "
                           "finishes.")
  baseline = args.baseline
  if baseline is None and any(r.method == DEFAULT_BASELINE for r in runs):
    baseline = DEFAULT_BASELINE
  report = summarize(runs, baseline)
  markdown = render_markdown(report)
  as_json = json.dumps(report, indent=2, sort_keys=True) + "\n"
  if args.out:
    out = epath.Path(args.out)
    spot_io.write_text_atomic(out / "report.md", markdown)
    spot_io.write_text_atomic(out / "report.csv", render_csv(report))
    spot_io.write_text_atomic(out / "report.json", as_json)
  sys.stdout.write(as_json if args.json else markdown)
  return 0


if __name__ == "__main__":
  sys.exit(errors.run_cli("spot report", main))
