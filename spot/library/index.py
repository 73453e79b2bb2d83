"""The query index: one summary vector per entry and metric, grouped by model.

The index is a cache at `PATH/index/index.npz` (a JSON header and raw float32
matrices; the extension is historical, it is not a NumPy .npz), protected by a
CRC-32 of everything after its fixed prefix: a damaged file reads as damaged
(the store warns and rebuilds), never as impossible scores. Each row carries
the entry's fingerprint (see `fs.local_fingerprints`) and a stamp of the array
files it was computed from (`files`); a reader compares the rows with a fresh
listing of `PATH/entries/` and re-reads only what is new or changed, and a
ranking re-checks the `files` stamps of the entries it returns, so an array
rewritten in place is noticed too. Concurrent writers can at worst make it
rebuild a row twice.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import mmap
import zlib
from typing import Callable, Iterable, Mapping, NamedTuple, Optional, Union

import numpy as np

from spot.library import fs, similarity

INDEX_VERSION = 4  # 4: rows carry the entry's method
_MAGIC = b"SPOTIDX\x00"
_ALIGN = 64
_CRC_BYTES = 8  # zlib.crc32 of the body (header onwards), little-endian


class Row(NamedTuple):
  """What the index knows of one entry directory; `problem` is "" if valid.

  `files` stamps the array files the row was computed from (see
  `fs.files_stamp`); `prompt_length` is the stored prompt's P (0 for a PEFT
  entry); `method` is the entry's ("prompt", "lora", ...): rankings compare
  entries of one method only.
  """

  name: str
  fingerprint: str
  model: str = ""
  task: str = ""
  problem: str = ""
  prompt_length: int = 0
  files: str = ""
  method: str = "prompt"


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
  """All rows, the valid ones' vectors by model, and the listing's stamp.

  `stamp` is `fs.dir_stamp` of `entries/` taken before the listing the rows
  reflect; while it is unchanged the listing need not be re-checked.
  """

  rows: Mapping[str, Row]
  models: Mapping[str, ModelIndex]
  stamp: str = ""

  @property
  def problems(self) -> list[Row]:
    return [r for r in self.rows.values() if r.problem]

  def valid(self) -> list[Row]:
    return [r for _, r in sorted(self.rows.items()) if not r.problem]


EMPTY = Index(rows={}, models={})

# (name, fingerprint) -> (row, {metric: vector [D]}); the vectors are None when
# the row has a problem, {} when the entry has no task embedding (a PEFT entry),
# and the row is None when the entry vanished meanwhile.
Loader = Callable[[str, str], tuple[Optional[Row], Optional[dict[str, np.ndarray]]]]


def refresh(index: Index, fingerprints: Mapping[str, str], load: Loader,
            stamp: str = "", force: Iterable[str] = ()) -> tuple[Index, bool]:
  """Brings `index` up to date with the listed `fingerprints`; returns (index, changed).

  `load(name, fingerprint)` reads and validates one entry; it is called only
  for entries that are new, whose fingerprint changed, or that are in `force`.
  `stamp` is that of the listing (see `Index`).
  """
  forced = set(force)
  stale = sorted(n for n, fp in fingerprints.items()
                 if n not in index.rows or index.rows[n].fingerprint != fp or n in forced)
  gone = [n for n in index.rows if n not in fingerprints]
  if not stale and not gone:
    if not stamp or stamp == index.stamp:  # nothing new to record
      return index, False
    return dataclasses.replace(index, stamp=stamp), True
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
    if vec and not row.problem:  # {}: a valid entry with nothing to rank by
      vectors[row.name] = vec
  return Index(rows=rows, models=_group(rows, vectors), stamp=stamp), True


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
  """Serialises the index: magic, header length, JSON header, aligned float32 matrices.

  The matrices are raw little-endian float32 so that `loads` can view them in
  place (in a memory map of the file) instead of copying 60 MB for 10k entries.
  """
  models = sorted(index.models)
  arrays, layout, offset = [], [], 0
  for m in models:
    for metric in similarity.METRICS:
      v = np.ascontiguousarray(index.models[m].vectors[metric], dtype="<f4")
      layout.append({"model": m, "metric": metric, "shape": list(v.shape), "offset": offset})
      arrays.append(v.tobytes())
      offset += -(-len(arrays[-1]) // _ALIGN) * _ALIGN
  header = json.dumps({
      "version": INDEX_VERSION,
      "stamp": index.stamp,
      "rows": [list(r) for _, r in sorted(index.rows.items())],
      "models": [{"name": m, "entries": list(index.models[m].names)} for m in models],
      "arrays": layout,
  }).encode()
  start = len(_MAGIC) + 8 + _CRC_BYTES
  chunks = [header, bytes(-(start + len(header)) % _ALIGN)]
  for data in arrays:
    chunks += [data, bytes(-len(data) % _ALIGN)]
  body = b"".join(chunks)
  crc = zlib.crc32(body).to_bytes(_CRC_BYTES, "little")
  return _MAGIC + len(header).to_bytes(8, "little") + crc + body


def load(data: Union[bytes, mmap.mmap]) -> tuple[Index, str]:
  """Reads `dumps` output (bytes or a memory map, viewed, not copied); returns
  (index, problem).

  An absent, foreign or older cache gives the empty index with problem "" (the
  next refresh builds it); a cache of this version that fails its checksum or
  does not parse gives the empty index and a problem naming the damage, which
  the store reports before rebuilding.
  """
  start = len(_MAGIC) + 8 + _CRC_BYTES
  if len(data) < start or bytes(data[:len(_MAGIC)]) != _MAGIC:
    return EMPTY, ""
  try:
    size = int.from_bytes(data[len(_MAGIC):len(_MAGIC) + 8], "little")
    header = json.loads(bytes(data[start:start + size]))
    version = header.get("version") if isinstance(header, dict) else None
  except (ValueError, UnicodeDecodeError):
    version = None
  if version is not None and version != INDEX_VERSION:
    return EMPTY, ""  # another format: rebuilt quietly
  want = int.from_bytes(data[len(_MAGIC) + 8:start], "little")
  if zlib.crc32(memoryview(data)[start:]) != want:
    return EMPTY, "its checksum does not match (the file was damaged or cut)"
  try:
    base = start + size + (-(start + size) % _ALIGN)
    vectors: dict[str, dict[str, np.ndarray]] = {}
    for a in header["arrays"]:
      n, d = a["shape"]
      vectors.setdefault(a["model"], {})[a["metric"]] = np.frombuffer(
          data, dtype="<f4", count=n * d, offset=base + a["offset"]).reshape(n, d)
    models = {}
    for m in header["models"]:
      vecs = vectors[m["name"]]
      if set(vecs) != set(similarity.METRICS) or any(
          v.shape[0] != len(m["entries"]) for v in vecs.values()):
        return EMPTY, "its matrices do not match its header"
      models[m["name"]] = ModelIndex(names=tuple(m["entries"]), vectors=vecs)
    rows = {r[0]: Row._make(r) for r in header["rows"]}
  except (ValueError, KeyError, TypeError, IndexError) as e:
    return EMPTY, f"it does not parse ({type(e).__name__}: {e})"
  return Index(rows=rows, models=models, stamp=str(header.get("stamp", ""))), ""


def loads(data: Union[bytes, mmap.mmap]) -> Index:
  """`load` without the problem: the index, or the empty one if unusable."""
  return load(data)[0]
