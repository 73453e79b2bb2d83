"""`spot report`: finished runs -> the papers' tables.

A finished run is a directory holding `metrics.json`:

    {"task": "spot_superglue_cb", "method": "spot_glue", "seed": 0,
     "scores": {"mean_3class_f1": 91.2, "accuracy": 94.6}, "step": 30000}

written by the trainer with `write_run_metrics` when its final evaluation is
done (atomically, so a killed run leaves no half file). A task's score is the
mean of its metrics (T5's task score: MRPC = (F1 + accuracy) / 2, ...). The
report gives, per task and method, the mean and standard deviation of that
score over seeds, averages per benchmark, and the relative error reduction of
each method over a baseline, RER = (err_base - err_method) / err_base with
err = 100 - score, as in the SPoT paper.

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
import os
import statistics
import sys
import tempfile
from typing import Any, Iterable, Mapping, Optional, Sequence

from etils import epath

METRICS_FILE = "metrics.json"
DEFAULT_BASELINE = "prompt_tuning"
# Sub-directories of a model_dir that never hold other runs (and can be big).
_SKIP_DIRS = frozenset({"checkpoints", "numpy_checkpoints", "best", "train", "eval",
                        "inference_eval", "tensorboard"})
_MAX_DEPTH = 6


@dataclasses.dataclass(frozen=True)
class Run:
  """One finished run: what it trained, with which seed, and how it scored."""

  task: str
  method: str
  seed: int
  scores: Mapping[str, float]
  path: str = ""

  @property
  def score(self) -> float:
    """The task score: the mean of the run's metrics."""
    return statistics.fmean(self.scores.values())


def _check_run(task: Any, method: Any, seed: Any, scores: Any, where: str) -> Run:
  fix = "write it with spot.report.write_run_metrics(run_dir, task, method, seed, scores)"
  for field, value in (("task", task), ("method", method)):
    if not isinstance(value, str) or not value:
      raise ValueError(f"{where}: {field!r} must be a non-empty string, got {value!r}; {fix}.")
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ValueError(f"{where}: 'seed' must be an integer, got {seed!r}; {fix}.")
  if not isinstance(scores, Mapping) or not scores:
    raise ValueError(f"{where}: 'scores' must be a non-empty {{metric: value}} mapping, got "
                     f"{scores!r}; {fix}.")
  clean = {}
  for name, value in scores.items():
    if (not isinstance(name, str) or isinstance(value, bool)
        or not isinstance(value, (int, float)) or not math.isfinite(value)):
      raise ValueError(f"{where}: score {name!r} = {value!r} is not a finite number; {fix}.")
    clean[name] = float(value)
  return Run(task, method, seed, clean, where)


def _write_text_atomic(path: epath.Path, text: str) -> None:
  """Writes via a temporary file and a rename, so readers never see half a file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  if "://" in os.fspath(path):
    path.write_text(text)  # object stores write whole objects
    return
  fd, tmp = tempfile.mkstemp(dir=os.fspath(path.parent), prefix=f".{path.name}.")
  with os.fdopen(fd, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_run_metrics(run_dir: epath.PathLike, task: str, method: str, seed: int,
                      scores: Mapping[str, float], *, step: Optional[int] = None,
                      extra: Optional[Mapping[str, Any]] = None) -> epath.Path:
  """Marks `run_dir` as a finished run by writing its `metrics.json`.

  Args:
    run_dir: the run's model_dir (local or gs://).
    task: the task (or mixture) evaluated, e.g. "spot_glue_mrpc".
    method: how the prompt was initialised, e.g. "prompt_tuning", "spot_glue".
    seed: the run's random seed (runs differing only in seed are averaged).
    scores: the final evaluation, {metric: value} on a 0-100 scale.
    step: the step the scores are from.
    extra: any further JSON-serialisable facts (checkpoint, gin file, ...).

  Returns:
    The path written.
  """
  path = epath.Path(run_dir) / METRICS_FILE
  run = _check_run(task, method, seed, scores, os.fspath(path))
  record: dict[str, Any] = {"task": run.task, "method": run.method, "seed": run.seed,
                            "scores": dict(run.scores)}
  if step is not None:
    record["step"] = int(step)
  if extra:
    record["extra"] = dict(extra)
  _write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
  return path


def read_run(path: epath.PathLike) -> Run:
  """Reads one `metrics.json`; a malformed file is an error naming it."""
  path = epath.Path(path)
  try:
    record = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e}); rewrite it with "
                     "spot.report.write_run_metrics.") from e
  if not isinstance(record, dict):
    raise ValueError(f"{path}: expected a JSON object with task, method, seed and scores.")
  return _check_run(record.get("task"), record.get("method"), record.get("seed"),
                    record.get("scores"), os.fspath(path))


def _find_metrics(path: epath.Path, depth: int) -> Iterable[epath.Path]:
  if (path / METRICS_FILE).exists():
    yield path / METRICS_FILE
    return
  if depth >= _MAX_DEPTH:
    return
  for child in sorted(path.iterdir()):
    if child.is_dir() and not child.name.startswith(".") and child.name not in _SKIP_DIRS:
      yield from _find_metrics(child, depth + 1)


def find_runs(dirs: Sequence[epath.PathLike]) -> list[Run]:
  """Finished runs in `dirs`: each a run directory or a folder of them.

  The same (task, method, seed) twice is an error, since the report could not
  tell which one to believe.
  """
  runs: dict[tuple[str, str, int], Run] = {}
  for d in dirs:
    root = epath.Path(d)
    if not root.exists():
      raise FileNotFoundError(f"--runs {d}: no such directory.")
    for path in _find_metrics(root, 0):
      run = read_run(path)
      key = (run.task, run.method, run.seed)
      if key in runs and runs[key].path != run.path:
        raise ValueError(f"Two runs of task {run.task!r}, method {run.method!r}, seed "
                         f"{run.seed}: {runs[key].path} and {run.path}. Remove one or give "
                         "them different seeds or methods.")
      runs[key] = run
  return sorted(runs.values(), key=lambda r: (r.task, r.method, r.seed))


# --------------------------------------------------------------- summarise


def benchmark_of(task: str) -> str:
  """"SuperGLUE", "GLUE" or "Other", from the task's registered name."""
  lowered = task.lower()
  if "superglue" in lowered or "super_glue" in lowered:
    return "SuperGLUE"
  return "GLUE" if "glue" in lowered else "Other"


def relative_error_reduction(baseline: float, method: float) -> Optional[float]:
  """(err_base - err_method) / err_base in percent, err = 100 - score;
  None when the baseline has no error to reduce."""
  err_base, err_method = 100.0 - baseline, 100.0 - method
  return None if err_base == 0 else 100.0 * (err_base - err_method) / err_base


def _mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
  """Mean, and the sample standard deviation (None for a single value)."""
  return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(runs: Sequence[Run], baseline: Optional[str] = None) -> dict[str, Any]:
  """The report as plain data (what report.json holds).

  Args:
    runs: finished runs.
    baseline: the method RER is measured against; None for no RER.

  Returns:
    {"baseline", "methods", "tasks", "cells", "averages", "runs"}: a cell per
    (task, method) with the score's and each metric's mean / std over seeds
    and the RER; an average per (benchmark, method) over its tasks.
  """
  if not runs:
    raise ValueError("No finished runs to report.")
  methods = sorted({r.method for r in runs}, key=lambda m: (m != baseline, m))
  if baseline is not None and baseline not in methods:
    raise ValueError(f"Baseline {baseline!r} has no runs; methods found: {methods}.")
  tasks = sorted({r.task for r in runs}, key=lambda t: (benchmark_of(t), t))
  cells: dict[tuple[str, str], dict[str, Any]] = {}
  for task in tasks:
    for method in methods:
      group = [r for r in runs if r.task == task and r.method == method]
      if not group:
        continue
      mean, std = _mean_std([r.score for r in group])
      metric_names = sorted({m for r in group for m in r.scores})
      per_metric = {}
      for m in metric_names:
        m_mean, m_std = _mean_std([r.scores[m] for r in group if m in r.scores])
        per_metric[m] = {"mean": m_mean, "std": m_std}
      cells[task, method] = {"task": task, "method": method, "benchmark": benchmark_of(task),
                             "seeds": [r.seed for r in group], "n": len(group),
                             "score_mean": mean, "score_std": std, "metrics": per_metric,
                             "rer": None}
  averages = []
  benchmarks = sorted({benchmark_of(t) for t in tasks})
  groups = benchmarks + (["All"] if len(benchmarks) > 1 else [])
  for bench in groups:
    bench_tasks = [t for t in tasks if bench == "All" or benchmark_of(t) == bench]
    for method in methods:
      have = [cells[t, method]["score_mean"] for t in bench_tasks if (t, method) in cells]
      if have:
        averages.append({"benchmark": bench, "method": method, "n_tasks": len(have),
                         "of_tasks": len(bench_tasks), "score_mean": statistics.fmean(have),
                         "rer": None})
  if baseline is not None:
    for (task, method), cell in cells.items():
      if method != baseline and (task, baseline) in cells:
        cell["rer"] = relative_error_reduction(cells[task, baseline]["score_mean"],
                                               cell["score_mean"])
    base_avg = {a["benchmark"]: a for a in averages if a["method"] == baseline}
    for avg in averages:
      base = base_avg.get(avg["benchmark"])
      if (avg["method"] != baseline and base is not None
          and avg["n_tasks"] == base["n_tasks"] == avg["of_tasks"]):
        avg["rer"] = relative_error_reduction(base["score_mean"], avg["score_mean"])
  return {"baseline": baseline, "methods": methods, "tasks": tasks,
          "cells": list(cells.values()), "averages": averages,
          "runs": [dataclasses.asdict(r) for r in runs]}


# ------------------------------------------------------------------ render


def _fmt(value: Optional[float]) -> str:
  return "–" if value is None else f"{value:.2f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_markdown(report: Mapping[str, Any]) -> str:
  """The paper-style tables: scores, RER over the baseline, all metrics."""
  methods, baseline = report["methods"], report["baseline"]
  cells = {(c["task"], c["method"]): c for c in report["cells"]}
  averages = {(a["benchmark"], a["method"]): a for a in report["averages"]}
  benches = list(dict.fromkeys(a["benchmark"] for a in report["averages"]))

  def score(cell):
    if cell is None:
      return ""
    std = f" ± {cell['score_std']:.2f}" if cell["score_std"] is not None else ""
    return f"{cell['score_mean']:.2f}{std} (n={cell['n']})"

  def avg(a):
    if a is None:
      return ""
    partial = f" ({a['n_tasks']}/{a['of_tasks']} tasks)" if a["n_tasks"] < a["of_tasks"] else ""
    return f"**{a['score_mean']:.2f}**{partial}"

  lines = [f"# Results: {len(report['runs'])} runs, {len(methods)} methods, "
           f"{len(report['tasks'])} tasks", "",
           "Score = mean of a task's metrics; mean ± sample std over seeds (n seeds).", ""]
  rows = [[t] + [score(cells.get((t, m))) for m in methods] for t in report["tasks"]]
  rows += [[f"**{b} average**"] + [avg(averages.get((b, m))) for m in methods] for b in benches]
  lines += _table(["Task"] + methods, rows)
  others = [m for m in methods if m != baseline]
  if baseline is not None and others:
    lines += ["", f"## Relative error reduction over {baseline} (%)", "",
              "RER = (err_base - err_method) / err_base, err = 100 - score.", ""]
    rows = [[t] + [_fmt(cells[t, m]["rer"]) if (t, m) in cells else "" for m in others]
            for t in report["tasks"]]
    rows += [[f"**{b} average**"] + [_fmt(averages[b, m]["rer"]) if (b, m) in averages else ""
                                     for m in others] for b in benches]
    lines += _table(["Task"] + others, rows)
  lines += ["", "## All metrics", ""]
  rows = [[c["task"], c["method"], name, _fmt(v["mean"]), _fmt(v["std"]),
           " ".join(map(str, c["seeds"]))]
          for c in report["cells"] for name, v in c["metrics"].items()]
  lines += _table(["Task", "Method", "Metric", "Mean", "Std", "Seeds"], rows)
  return "\n".join(lines) + "\n"


def render_csv(report: Mapping[str, Any]) -> str:
  """Long format: one row per (task, method, metric); metric "score" is the
  task score and carries the RER; "average:<benchmark>" rows hold averages."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["task", "method", "metric", "mean", "std", "n", "rer"])

  def num(v):
    return "" if v is None else repr(float(v))

  for c in report["cells"]:
    writer.writerow([c["task"], c["method"], "score", num(c["score_mean"]),
                     num(c["score_std"]), c["n"], num(c["rer"])])
    for name, v in c["metrics"].items():
      writer.writerow([c["task"], c["method"], name, num(v["mean"]), num(v["std"]), c["n"], ""])
  for a in report["averages"]:
    writer.writerow([f"average:{a['benchmark']}", a["method"], "score", num(a["score_mean"]),
                     "", a["n_tasks"], num(a["rer"])])
  return out.getvalue()


# --------------------------------------------------------------------- CLI


def main(argv: Optional[Sequence[str]] = None) -> int:
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
  try:
    runs = find_runs(args.runs)
    if not runs:
      raise ValueError(f"No finished runs ({METRICS_FILE}) under {' '.join(args.runs)}; a run "
                       "writes it with spot.report.write_run_metrics when it finishes.")
    baseline = args.baseline
    if baseline is None and any(r.method == DEFAULT_BASELINE for r in runs):
      baseline = DEFAULT_BASELINE
    report = summarize(runs, baseline)
  except (OSError, ValueError) as e:
    print(f"spot report: {e}", file=sys.stderr)
    return 2
  markdown = render_markdown(report)
  as_json = json.dumps(report, indent=2, sort_keys=True) + "\n"
  if args.out:
    out = epath.Path(args.out)
    _write_text_atomic(out / "report.md", markdown)
    _write_text_atomic(out / "report.csv", render_csv(report))
    _write_text_atomic(out / "report.json", as_json)
  sys.stdout.write(as_json if args.json else markdown)
  return 0


if __name__ == "__main__":
  sys.exit(main())
