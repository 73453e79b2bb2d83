"""`spot report`'s pictures: per-seed strip plots, box plots and learning curves.

Drawn on matplotlib's Agg canvas directly (no pyplot, no global backend
switch); each function returns PNG bytes. `figure` and `png_bytes` are the
shared canvas helpers (spot.workflows' study plots can use them too).
"""

from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

import numpy as np

# Dots of one group are spread this far (in x units) so equal scores stay visible.
_JITTER = 0.25


def figure(width: float, height: float):
  """A matplotlib Figure on its own Agg canvas, `width` x `height` inches at 100 dpi."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(fig)
  return fig


def png_bytes(fig) -> bytes:
  """The figure, laid out tight, as PNG bytes."""
  buf = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buf, format="png")
  return buf.getvalue()


def _label(cell: Mapping[str, Any], protocols: Sequence[str]) -> str:
  """"method", or "method [protocol]" when the report has several protocols."""
  return cell["method"] if len(protocols) < 2 else f"{cell['method']} [{cell['protocol']}]"


def _panels(report: Mapping[str, Any]) -> tuple[list[str], list[str], list[list[Mapping]]]:
  """(tasks, group labels, per task the cells in label order) of the report's cells."""
  protocols = report.get("protocols") or ["dev"]
  cells = report["cells"]
  labels = list(dict.fromkeys(
      _label(c, protocols) for p in protocols for m in report["methods"]
      for c in cells if c["method"] == m and c["protocol"] == p))
  tasks = [t for t in report["tasks"] if any(c["task"] == t for c in cells)]
  by_task = [[c for lab in labels for c in cells
              if c["task"] == t and _label(c, protocols) == lab] for t in tasks]
  return tasks, labels, by_task


def _grid(n: int, width_per: float) -> tuple[Any, list[Any]]:
  cols = min(n, 3)
  rows = math.ceil(n / cols)
  fig = figure(max(4.0, width_per * cols), 3.2 * rows)
  axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
  return fig, axes


def _seed_scores(cell: Mapping[str, Any]) -> list[float]:
  return [s["score"] for s in cell.get("per_seed", ()) if s.get("score") is not None]


def strip_plot(report: Mapping[str, Any]) -> bytes:
  """PNG: one panel per task, one dot per seed for each method (and protocol),
  with the mean as a bar."""
  tasks, labels, by_task = _panels(report)
  fig, axes = _grid(len(tasks), 0.9 * len(labels) + 2.5)
  protocols = report.get("protocols") or ["dev"]
  for ax, task, cells in zip(axes, tasks, by_task):
    for cell in cells:
      x = labels.index(_label(cell, protocols))
      ys = _seed_scores(cell)
      offsets = np.linspace(-_JITTER, _JITTER, len(ys)) if len(ys) > 1 else np.zeros(len(ys))
      ax.scatter(x + offsets, ys, s=18, alpha=0.8)
      if cell.get("score_mean") is not None:
        ax.hlines(cell["score_mean"], x - 0.35, x + 0.35, color="black", linewidth=1.2)
    _label_axes(ax, task, labels)
  return png_bytes(fig)


def box_plot(report: Mapping[str, Any]) -> bytes:
  """PNG: one panel per task, a box of the seeds' scores for each method (and protocol)."""
  tasks, labels, by_task = _panels(report)
  fig, axes = _grid(len(tasks), 0.9 * len(labels) + 2.5)
  protocols = report.get("protocols") or ["dev"]
  for ax, task, cells in zip(axes, tasks, by_task):
    data = [(labels.index(_label(c, protocols)), _seed_scores(c)) for c in cells]
    data = [(x, ys) for x, ys in data if ys]
    if data:
      ax.boxplot([ys for _, ys in data], positions=[x for x, _ in data], widths=0.5)
    _label_axes(ax, task, labels)
  return png_bytes(fig)


def _label_axes(ax, task: str, labels: Sequence[str]) -> None:
  ax.set_xticks(range(len(labels)), labels=list(labels), rotation=30, ha="right", fontsize=8)
  ax.set_xlim(-0.6, len(labels) - 0.4)
  ax.set_title(task, fontsize=9)
  ax.set_ylabel("score (mean of metrics)")


def learning_curves(title: str, curves: Sequence[Mapping[str, Any]]) -> bytes:
  """PNG: the evaluations during training of every seed of one (task, method,
  protocol) on one axis.

  Args:
    title: the figure's title, e.g. "spot_glue_rte / lora (dev)".
    curves: [{"label": "seed 0", "points": [[step, score], ...]}], one per seed.
  """
  fig = figure(5.5, 3.6)
  ax = fig.add_subplot()
  for curve in curves:
    points = [(s, v) for s, v in curve["points"] if v is not None]
    if points:
      steps, values = zip(*points)
      ax.plot(steps, values, marker="o", markersize=3, linewidth=1, label=curve["label"])
  ax.set_title(title, fontsize=9)
  ax.set_xlabel("step")
  ax.set_ylabel("validation score during training")
  if len(curves) <= 12:
    ax.legend(fontsize=7)
  return png_bytes(fig)
