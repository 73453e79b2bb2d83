"""The demo's results: the table it prints, plots, `results.json` and `report.md`.

Paths inside the report are relative to the output directory, so the folder
can be moved or zipped and its links still resolve.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any, Optional, Sequence

import numpy as np
from etils import epath

from spot import io as spot_io
from spot.checkpoints import run_dir
from spot.demo import workflow
from spot.demo.workflow import INIT_LABELS, INITS, RunRecord, TargetOutcome

LIBRARY_HEATMAP = "plots/library_heatmap.png"
TARGET_HEATMAP = "plots/target_similarity.png"
PRETRAIN_PLOT = "plots/pretrain_loss.png"


def curve_plot(task: str) -> str:
  return f"plots/curve_{task}.png"


# ------------------------------------------------------------------ numbers


def _fmt(value: Optional[float], digits: int = 1) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return f"{value:.{digits}f}"


def _steps(record: RunRecord, threshold: float) -> str:
  step = record.steps_to(threshold)
  return f">{record.steps}" if step is None else str(step)


def mean_steps(records: Sequence[RunRecord], threshold: float) -> float:
  """Mean steps to reach `threshold`; a run that never does counts its length."""
  steps = [r.steps_to(threshold) for r in records]
  return float(np.mean([r.steps if s is None else s for r, s in zip(records, steps)]))


def verdict(targets: Sequence[TargetOutcome], threshold: float) -> tuple[bool, str]:
  """Whether a transferred prompt beat random initialisation on average, in words."""
  mean = {i: float(np.mean([t.runs[i].final for t in targets])) for i in INITS}
  steps = {i: mean_steps([t.runs[i] for t in targets], threshold) for i in INITS}
  best = max(("spot", "retrieved"), key=lambda i: mean[i])
  helped = mean[best] > mean["random"]
  wins = sum(t.runs["retrieved"].final > t.runs["random"].final for t in targets)
  lines = [
      f"Mean final score over {len(targets)} target task(s): random {mean['random']:.1f}, "
      f"generic SPoT {mean['spot']:.1f}, retrieved {mean['retrieved']:.1f}.",
      f"Mean steps to reach {threshold:g}: random {steps['random']:.0f}, generic SPoT "
      f"{steps['spot']:.0f}, retrieved {steps['retrieved']:.0f} (a run that never reaches "
      "it counts its full length).",
  ]
  if helped:
    lines.append(f"Transfer helped: the {INIT_LABELS[best]} initialisation beats random "
                 f"initialisation by {mean[best] - mean['random']:+.1f} points on average; the "
                 f"retrieved prompt beats random on {wins} of {len(targets)} target(s).")
  else:
    lines.append("Transfer did NOT help in this run: neither transferred initialisation "
                 f"beats random initialisation on average (best: {INIT_LABELS[best]}, "
                 f"{mean[best] - mean['random']:+.1f} points).")
  return helped, "\n".join(lines)


def retrieval_note(targets: Sequence[TargetOutcome], related: dict) -> str:
  """How often retrieval found the source each target was built to resemble."""
  if not related:
    return ""
  found = sum(related.get(t.task) == t.ranking[0][0] for t in targets)
  return (f"Retrieval picked the source built to be related (same skill) for {found} of "
          f"{len(targets)} target(s).")


def main_table(targets: Sequence[TargetOutcome], threshold: float) -> list[list[str]]:
  """Rows of the headline table (header first)."""
  rows = [["target task"] + [f"{INIT_LABELS[i]} score" for i in INITS]
          + [f"{INIT_LABELS[i]} steps to {threshold:g}" for i in INITS]
          + ["retrieved source", "similarity"]]
  for t in targets:
    rows.append([t.task] + [_fmt(t.runs[i].final) for i in INITS]
                + [_steps(t.runs[i], threshold) for i in INITS]
                + [t.ranking[0][0], _fmt(t.ranking[0][1], 3)])
  return rows


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
  head, *body = rows
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def text_table(rows: Sequence[Sequence[str]]) -> str:
  widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
  line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()
  return "\n".join([line(rows[0]), line(["-" * w for w in widths])] + [line(r) for r in rows[1:]])


# -------------------------------------------------------------------- plots


def _figure(width: float = 5.0, height: float = 3.5):
  # The Agg canvas directly: no pyplot, no global backend switch.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path: epath.Path) -> None:
  buf = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buf, format="png")
  spot_io.write_bytes_atomic(path, buf.getvalue())


def plot_curves(target: TargetOutcome, threshold: float, path: epath.Path) -> None:
  """Validation score against training step, one line per initialisation."""
  fig = _figure()
  ax = fig.add_subplot()
  for init in INITS:
    run = target.runs[init]
    steps, scores = zip(*run.curve)
    label = INIT_LABELS[init] + (f" ({run.source})" if init == "retrieved" else "")
    ax.plot(steps, scores, marker="o", markersize=3, label=label)
  ax.axhline(threshold, color="gray", linestyle=":", linewidth=1)
  ax.set_xlabel("target training step")
  ax.set_ylabel("validation score")
  ax.set_title(target.task)
  ax.set_ylim(-2, 102)
  ax.legend(fontsize=8, loc="lower right")
  _save(fig, path)


def plot_losses(record: RunRecord, path: epath.Path) -> None:
  fig = _figure()
  ax = fig.add_subplot()
  if record.losses:
    ax.plot(*zip(*record.losses))
  ax.set_xlabel("step")
  ax.set_ylabel("token loss")
  ax.set_title(f"base model training on {record.task}")
  _save(fig, path)


def plot_target_similarity(targets: Sequence[TargetOutcome], sources: Sequence[str],
                           path: epath.Path) -> None:
  """Targets (rows) by sources (columns), colours scaled to the values shown,
  the retrieved source of each target boxed."""
  matrix = np.array([[dict(t.ranking).get(s, np.nan) for s in sources] for t in targets])
  fig = _figure(1.6 + 1.1 * len(sources), 1.6 + 0.55 * len(targets))
  ax = fig.add_subplot()
  image = ax.imshow(matrix, cmap="viridis", aspect="auto")
  fig.colorbar(image, ax=ax, label="similarity (avg_tokens)")
  ax.set_xticks(range(len(sources)), labels=list(sources), rotation=45, ha="right", fontsize=8)
  ax.set_yticks(range(len(targets)), labels=[t.task for t in targets], fontsize=8)
  for row, t in enumerate(targets):
    for col, s in enumerate(sources):
      if not np.isnan(matrix[row, col]):
        ax.text(col, row, f"{matrix[row, col]:.3f}", ha="center", va="center", fontsize=7,
                color="white" if s != t.ranking[0][0] else "black",
                bbox=dict(facecolor="white", edgecolor="black") if s == t.ranking[0][0] else None)
  ax.set_title("target task embeddings vs. source task embeddings")
  _save(fig, path)


def plot_library_heatmap(flow: workflow.Workflow, path: epath.Path) -> None:
  """The library's clustered similarity heatmap (what `spot library heatmap` draws)."""
  from spot.library import heatmap, retrieval
  names, matrix = retrieval.pairwise(flow.library(), model=flow.model_name)
  heatmap.write_heatmap(names, matrix, os.fspath(path),
                        title="library: task-embedding similarity (avg_tokens)")


# ------------------------------------------------------------------- report


def _link(out: epath.Path, path: Any, text: Optional[str] = None) -> str:
  rel = os.path.relpath(os.fspath(path), os.fspath(out))
  return f"[{text or rel}]({rel})"


def _similarity_table(targets: Sequence[TargetOutcome], sources: Sequence[str]) -> str:
  rows = [["target \\ source"] + list(sources)]
  for t in targets:
    scores = dict(t.ranking)
    rows.append([t.task] + [("-" if s not in scores else f"**{scores[s]:.3f}**"
                             if s == t.ranking[0][0] else f"{scores[s]:.3f}") for s in sources])
  return markdown_table(rows)


def _runs_table(out: epath.Path, records: Sequence[RunRecord]) -> str:
  rows = [["run", "task", "init", "steps", "final score", "wall s", "CPU s", "model_dir"]]
  for r in records:
    rows.append([r.name, r.task, r.init or "-", str(r.steps), _fmt(r.final), f"{r.seconds:.0f}",
                 f"{r.cpu_seconds:.0f}", _link(out, r.model_dir, "model_dir")])
  return markdown_table(rows)


def _base_section(out: epath.Path, flow: workflow.Workflow, base: Optional[RunRecord]) -> list[str]:
  ckpt = _link(out, flow.base_checkpoint, "T5X checkpoint") if base else \
      f"`{flow.base_checkpoint}`"
  lines = ["## The frozen base model", ""]
  if base is None:
    return lines + [f"The given {ckpt}, frozen; only prompts were trained.", ""]
  lines.append(f"A T5 (T5 1.1 layout, T5X parameter names) trained as a model for "
               f"{base.steps} steps on `{base.task}` (the skills with an instruction word in "
               f"the input), saved as a {ckpt} and frozen; loss curve "
               f"{_link(out, out / PRETRAIN_PLOT)}.")
  if base.results:
    lines += ["Its validation scores with the instruction word:", "",
              markdown_table([["task", "metric", "score"]] + [
                  [k.split("/")[0], k.split("/", 1)[1], _fmt(v)]
                  for k, v in sorted(base.results.items())])]
  elif base.losses:
    lines.append(f"Final training loss {base.losses[-1][1]:.3f} per token (this preset skips "
                 "evaluating the base model to save compiling a second decoder).")
  return lines + [""]


def write(out: epath.Path, cfg: Any, seed: int, base: Optional[RunRecord],
          sources: Sequence[RunRecord], targets: Sequence[TargetOutcome],
          flow: workflow.Workflow, seconds: float, cpu_seconds: float,
          title: str = "spot demo", study: Optional[tuple[dict, Sequence[str]]] = None) -> str:
  """Writes plots, results.json and report.md; returns the summary to print.

  `study`: (results, Markdown lines) of the demo's transferability study, if it ran.
  """
  threshold = cfg.threshold
  if base is not None:
    plot_losses(base, out / PRETRAIN_PLOT)
  plot_library_heatmap(flow, out / LIBRARY_HEATMAP)
  plot_target_similarity(targets, flow.suite.sources, out / TARGET_HEATMAP)
  for t in targets:
    plot_curves(t, threshold, out / curve_plot(t.task))
  rows = main_table(targets, threshold)
  helped, words = verdict(targets, threshold)
  note = retrieval_note(targets, dict(flow.suite.related))
  results = {
      "preset": cfg.name, "seed": seed, "seconds": round(seconds, 1),
      "cpu_seconds": round(cpu_seconds, 1), "threshold": threshold, "transfer_helped": helped,
      "base_model": {"checkpoint": flow.base_checkpoint,
                     "results": base.results if base else {}},
      "sources": [{"task": r.task, "score": r.final, "model_dir": r.model_dir} for r in sources],
      "targets": [{
          "task": t.task,
          "related_source": flow.suite.related.get(t.task),
          "ranking": [{"name": n, "score": s} for n, s in t.ranking],
          "runs": {i: {"score": t.runs[i].final, "steps_to_threshold": t.runs[i].steps_to(
              threshold), "curve": t.runs[i].curve, "model_dir": t.runs[i].model_dir}
                   for i in INITS},
      } for t in targets],
  }
  if study is not None:
    results["study"] = study[0]
  spot_io.write_text_atomic(out / "results.json", json.dumps(results, indent=2))

  entries = flow.library().entries(model=flow.model_name)
  metric_names = sorted({k.split("/", 1)[1] for t in targets for r in t.runs.values()
                         for k in r.results})
  all_runs = ([base] if base else []) + list(sources) + [t.runs[i] for t in targets
                                                         for i in INITS]
  lib = flow.library_path
  md = [
      f"# {title}: {cfg.name} preset, seed {seed}",
      "",
      f"Wall time {seconds:.0f} s ({cpu_seconds:.0f} s CPU). Each target prompt was trained "
      f"{cfg.target_steps} steps from each initialisation. Score: validation "
      f"{' / '.join(metric_names)} (percent; the mean when a task has several) on the first "
      f"{cfg.eval_examples} examples. Steps to {threshold:g}: the first evaluation (every "
      f"{cfg.eval_every} steps, and at step 0) at or above {threshold:g}.",
      "",
      "## Result",
      "",
      markdown_table(rows),
      "",
      *words.split("\n"),
      "",
      note,
      "",
      "Learning curves: " + ", ".join(_link(out, out / curve_plot(t.task), t.task)
                                     for t in targets) + ".",
      "",
      *[f"![{t.task}]({curve_plot(t.task)})" for t in targets],
      "",
      *(study[1] if study is not None else []),
      "## How the target prompts were initialised",
      "",
      "- **random**: rows sampled from the frozen model's vocabulary embeddings with the run's "
      "seed; every source run starts from the same prompt, so the early checkpoints (step "
      f"{cfg.embedding_step}) of all these runs are comparable task embeddings.",
      f"- **generic SPoT**: the prompt trained on the mixture of all sources "
      f"(`{flow.suite.mixture}`).",
      "- **retrieved**: the library's source prompt whose task embedding is most similar "
      "(`avg_tokens`) to the target's (the step "
      f"{cfg.embedding_step} checkpoint of its random run). All similarities:",
      "",
      _similarity_table(targets, flow.suite.sources),
      "",
      f"As a picture: {_link(out, out / TARGET_HEATMAP)}; the whole library, clustered: "
      f"{_link(out, out / LIBRARY_HEATMAP)}.",
      "",
      f"![target similarities]({TARGET_HEATMAP})",
      "",
      *_base_section(out, flow, base),
      "## The prompt library",
      "",
      f"{_link(out, lib, 'library/')} holds {len(entries)} entries of model "
      f"`{flow.model_name}` (prompt, task embedding, base checkpoint, task, scores, run). "
      "Try:",
      "",
      "```",
      f"spot library --library {lib} list",
      f"spot library --library {lib} query --embedding {targets[0].embedding_file} --top-k 3"
      if targets else f"spot library --library {lib} heatmap --out heatmap.png",
      "```",
      "",
      markdown_table([["entry", "kind", "task", "prompt shape", "embeddings", "score"]] + [
          [e.name, str(e.meta.get("kind", "")), e.task, "x".join(map(str, e.prompt_shape)),
           ", ".join(e.embedding_keys), _fmt(e.metrics.get("score"))] for e in entries]),
      "",
      "## Runs",
      "",
      f"Each run's model_dir holds its orbax checkpoints, numpy prompt checkpoints "
      f"(`{run_dir.NUMPY_DIR}/{run_dir.NUMPY_STEP_PREFIX}<step>/`), `{run_dir.RUN_JSON}` and "
      "TensorBoard summaries "
      f"(`train/`, and `eval/` for the scores above): `tensorboard --logdir {out / 'runs'}`.",
      "",
      _runs_table(out, all_runs),
      "",
  ]
  spot_io.write_text_atomic(out / "report.md", "\n".join(md))
  return "\n".join([text_table(rows), "", words, note])
