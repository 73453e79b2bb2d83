"""The query index: one summary vector per entry and metric, grouped by model.

The index is a cache at `PATH/index/index.npz`. Each row carries the entry's
fingerprint (see `fs.local_fingerprints`); a reader compares the rows with a
fresh listing of `PATH/entries/` and re-reads only what is new or changed, so
the index is never trusted beyond what the listing confirms and concurrent
writers can at worst make it rebuild a row twice.
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import json
from typing import Callable, Mapping, Optional

import numpy as np

from spot.library import fs, similarity

INDEX_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Row:
  """What the index knows of one entry directory; `problem` is "" if valid."""

  name: str
  fingerprint: str
  model: str = ""
  task: str = ""
  problem: str = ""


@dataclasses.dataclass(frozen=True)
class ModelIndex:
  """The valid entries of one base model: names (sorted) and summary vectors."""

  names: tuple[str, ...]
  vectors: Mapping[str, np.ndarray]  # metric -> [n, D] float32

  @property
  def dim(self) -> int:
    return int(self.vectors[similarity.METRICS[0]].shape[1])

  def position(self, name: str) -> int:
    """Row of `name` (names are sorted)."""
    i = bisect.bisect_left(self.names, name)
    if i >= len(self.names) or self.names[i] != name:
      raise KeyError(name)
    return i


@dataclasses.dataclass(frozen=True)
class Index:
  rows: Mapping[str, Row]
  models: Mapping[str, ModelIndex]

  @property
  def problems(self) -> list[Row]:
    return [r for r in self.rows.values() if r.problem]

  def valid(self) -> list[Row]:
    return [r for _, r in sorted(self.rows.items()) if not r.problem]


EMPTY = Index(rows={}, models={})

# (name, fingerprint) -> (row, {metric: vector [D]}); the vectors are None when
# the row has a problem, and the row is None when the entry vanished meanwhile.
Loader = Callable[[str, str], tuple[Optional[Row], Optional[dict[str, np.ndarray]]]]


def refresh(index: Index, fingerprints: Mapping[str, str], load: Loader) -> tuple[Index, bool]:
  """Brings `index` up to date with the listed `fingerprints`; returns (index, changed).

  `load(name, fingerprint)` reads and validates one entry; it is called only
  for entries that are new or whose fingerprint changed.
  """
  stale = sorted(n for n, fp in fingerprints.items()
                 if n not in index.rows or index.rows[n].fingerprint != fp)
  gone = [n for n in index.rows if n not in fingerprints]
  if not stale and not gone:
    return index, False
  vectors: dict[str, dict[str, np.ndarray]] = {}
  for model, mi in index.models.items():
    for i, name in enumerate(mi.names):
      if name in fingerprints and name not in stale:
        vectors[name] = {m: v[i] for m, v in mi.vectors.items()}
  rows = {n: r for n, r in index.rows.items() if n in fingerprints and n not in stale}
  for row, vec in fs.parallel_map(lambda n: load(n, fingerprints[n]), stale):
    if row is None:
      continue
    rows[row.name] = row
    if vec is not None and not row.problem:
      vectors[row.name] = vec
  return Index(rows=rows, models=_group(rows, vectors)), True


def _group(rows: Mapping[str, Row], vectors: Mapping[str, Mapping[str, np.ndarray]]
           ) -> dict[str, ModelIndex]:
  by_model: dict[str, list[str]] = {}
  for name in sorted(vectors):
    by_model.setdefault(rows[name].model, []).append(name)
  return {
      model: ModelIndex(
          names=tuple(names),
          vectors={m: np.stack([vectors[n][m] for n in names]).astype(np.float32)
                   for m in similarity.METRICS})
      for model, names in by_model.items()
  }


def dumps(index: Index) -> bytes:
  """Serialises the index as one .npz payload (a JSON header plus matrices)."""
  models = sorted(index.models)
  header = {
      "version": INDEX_VERSION,
      "rows": [dataclasses.astuple(r) for _, r in sorted(index.rows.items())],
      "models": [{"name": m, "entries": list(index.models[m].names)} for m in models],
  }
  arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
  for i, m in enumerate(models):
    for metric, v in index.models[m].vectors.items():
      arrays[f"{metric}_{i}"] = v
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def loads(data: bytes) -> Index:
  """Reads `dumps` output; an unreadable or older cache gives the empty index."""
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
      header = json.loads(z["header"].tobytes())
      if header.get("version") != INDEX_VERSION:
        return EMPTY
      rows = {r[0]: Row(*r) for r in header["rows"]}
      models = {}
      for i, m in enumerate(header["models"]):
        vecs = {metric: z[f"{metric}_{i}"] for metric in similarity.METRICS}
        if any(v.shape[0] != len(m["entries"]) for v in vecs.values()):
          return EMPTY
        models[m["name"]] = ModelIndex(names=tuple(m["entries"]), vectors=vecs)
  except (ValueError, KeyError, TypeError, OSError, EOFError):
    return EMPTY
  return Index(rows=rows, models=models)
