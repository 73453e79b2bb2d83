"""A clustered heatmap of pairwise task similarities (SPoT Figure 4).

Rows and columns are ordered by average-linkage hierarchical clustering of the
distance 1 - similarity, so similar tasks sit next to each other. Drawn with
matplotlib's Agg canvas directly (no pyplot, no global backend switch).
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial import distance

from spot.library import fs


def cluster_order(matrix: np.ndarray) -> list[int]:
  """Leaf order of an average-linkage clustering of a similarity matrix."""
  n = matrix.shape[0]
  if n < 3:
    return list(range(n))
  dist = np.clip(1.0 - (matrix + matrix.T) / 2.0, 0.0, None)
  np.fill_diagonal(dist, 0.0)
  links = hierarchy.linkage(distance.squareform(dist, checks=False), method="average")
  return [int(i) for i in hierarchy.leaves_list(links)]


def render(names: Sequence[str], matrix: np.ndarray, title: str = "") -> bytes:
  """PNG bytes of the (already ordered) similarity matrix with labels."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  n = len(names)
  side = min(4.0 + 0.28 * n, 40.0)
  fig = Figure(figsize=(side + 1.5, side), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  image = ax.imshow(matrix, cmap="viridis", vmin=min(0.0, float(matrix.min(initial=0.0))),
                    vmax=1.0, interpolation="nearest")
  fig.colorbar(image, ax=ax, shrink=0.8, label="similarity")
  if n <= 120:
    size = max(4.0, 10.0 - n / 15.0)
    ax.set_xticks(range(n), labels=list(names), rotation=90, fontsize=size)
    ax.set_yticks(range(n), labels=list(names), fontsize=size)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  return buf.getvalue()


def write_heatmap(names: Sequence[str], matrix: np.ndarray, out: str, title: str = ""
                  ) -> tuple[list[str], np.ndarray]:
  """Clusters, renders and writes the PNG (atomically when local); returns the order."""
  order = cluster_order(matrix)
  names = [names[i] for i in order]
  matrix = matrix[np.ix_(order, order)]
  png = render(names, matrix, title)
  path = fs.path(out)
  if str(path.parent) not in ("", "."):
    path.parent.mkdir(parents=True, exist_ok=True)
  fs.write_bytes(path, png, local=fs.is_local(os.fspath(out)))
  return names, matrix
