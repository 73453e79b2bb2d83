"""The study's pictures: a clustered RER heatmap and similarity-vs-RER scatters.

Drawn on matplotlib's Agg canvas directly (no pyplot, no global backend);
each function returns PNG bytes.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from spot.report_plots import figure as _figure, png_bytes as _png


def cluster_order(matrix: np.ndarray) -> list[int]:
  """Row order of an average-linkage clustering of `matrix` [R, C] rows (NaN as 0)."""
  from scipy.cluster import hierarchy  # pylint: disable=g-import-not-at-top
  if matrix.shape[0] < 3 or matrix.shape[1] < 1:
    return list(range(matrix.shape[0]))
  links = hierarchy.linkage(np.nan_to_num(matrix), method="average", metric="euclidean")
  return [int(i) for i in hierarchy.leaves_list(links)]


def rer_matrix(grid: Mapping[str, Any], sources: Sequence[str]) -> np.ndarray:
  """[targets, sources] RER in percent (NaN where there is none)."""
  return np.array([[100.0 * v if (v := row["sources"].get(s, {}).get("rer")) is not None
                    else np.nan for s in sources] for row in grid.values()], dtype=np.float64)


def heatmap(grid: Mapping[str, Any], sources: Sequence[str]) -> tuple[bytes, list[str], list[str]]:
  """PNG of targets x sources RER (%), rows and columns clustered; returns (png, rows, cols)."""
  targets = list(grid)
  m = rer_matrix(grid, sources)
  rows, cols = cluster_order(m), cluster_order(m.T)
  m = m[np.ix_(rows, cols)]
  names_r, names_c = [targets[i] for i in rows], [sources[i] for i in cols]
  fig = _figure(2.5 + 0.9 * len(names_c), 1.8 + 0.5 * len(names_r))
  ax = fig.add_subplot()
  # Colours saturate at +-100%: one large negative RER must not wash out the rest
  # (the numbers in the cells are not clipped).
  lim = min(max(float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0, 1e-6), 100.0)
  image = ax.imshow(m, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
  fig.colorbar(image, ax=ax, label="relative error reduction (%)")
  ax.set_xticks(range(len(names_c)), labels=names_c, rotation=45, ha="right", fontsize=8)
  ax.set_yticks(range(len(names_r)), labels=names_r, fontsize=8)
  for i in range(m.shape[0]):
    for j in range(m.shape[1]):
      ax.text(j, i, "-" if np.isnan(m[i, j]) else f"{m[i, j]:.0f}", ha="center", va="center",
              fontsize=7)
  ax.set_xlabel("source task")
  ax.set_ylabel("target task")
  ax.set_title("transfer: relative error reduction (clustered)")
  return _png(fig), names_r, names_c


def scatter(target: str, metric: str, points: Sequence[Sequence[Any]],
            pearson: Optional[Mapping[str, float]]) -> bytes:
  """PNG of similarity (x) against RER in percent (y), one labelled point per source."""
  fig = _figure(4.5, 3.5)
  ax = fig.add_subplot()
  xs = [p[1] for p in points]
  ys = [100.0 * p[2] for p in points]
  ax.scatter(xs, ys)
  for name, x, y in zip((p[0] for p in points), xs, ys):
    ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
  ax.axhline(0.0, color="gray", linewidth=0.8, linestyle=":")
  if len(xs) >= 2 and np.ptp(xs) > 0:
    slope, icpt = np.polyfit(xs, ys, 1)
    grid = np.linspace(min(xs), max(xs), 10)
    ax.plot(grid, slope * grid + icpt, color="gray", linewidth=1)
  shown = (f"Pearson r = {pearson['r']:.2f}, p = {pearson['p']:.3g}" if pearson
           else "Pearson r: too few points")
  ax.set_title(f"{target}: {shown}", fontsize=9)
  ax.set_xlabel(f"task-embedding similarity ({metric})")
  ax.set_ylabel("relative error reduction (%)")
  return _png(fig)
