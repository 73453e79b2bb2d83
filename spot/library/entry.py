"""One library entry: its metadata (`entry.json`) and how its arrays are stored.

An entry directory holds

  entry.json              this metadata, written last; the sha256 and size of
                          every array file
  prompt.npy              the source prompt [P, D], float32
  embeddings/<key>.npy    task embeddings [P', D], float32 (e.g. "step_10000")

Arrays are `np.save` payloads of C-ordered little-endian float32; a float32
array is stored byte for byte, other float dtypes (float64, bfloat16) are cast.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from typing import Any, Mapping, Optional

import numpy as np
from spot.checkpoints import run_dir
from spot.library import fs
from spot.library.errors import CorruptEntryError, LibraryError, ModelMismatchError

ENTRY_FILE = "entry.json"
PROMPT_FILE = "prompt.npy"
EMBEDDINGS_DIR = "embeddings"
FORMAT_VERSION = 1
PROMPT_KEY = "prompt"  # the query key of an entry that has no task embedding

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
# Model families whose library names read `<family>_[<variant>_]<size>`, e.g.
# t5_1_1_lm100k_base (spot/gin/models/<family>.gin sets MODEL_FAMILY).
MODEL_FAMILIES = ("t5_1_0", "t5_1_1", "mt5")


def check_name(name: str, what: str = "entry name") -> str:
  """Returns `name` if it is a valid entry or embedding key name, else raises."""
  if not isinstance(name, str) or not _NAME.match(name):
    raise LibraryError(
        f"invalid {what} {name!r}: use 1-128 letters, digits, '.', '_', '+' or '-', "
        "starting with a letter or digit (no '/' or spaces).")
  return name


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """The frozen base model a prompt belongs to.

  Attributes:
    name: model name, e.g. "t5_1_1_lm100k_base"; queries never mix names.
    checkpoint: path of the base checkpoint the prompt was trained against.
    embed_dim: model width D (the prompt's last dimension).
  """

  name: str
  checkpoint: str = ""
  embed_dim: Optional[int] = None


def family_and_size(model: str) -> tuple[Optional[str], Optional[str]]:
  """(family, size) of a library model name such as t5_1_1_lm100k_base, else (None, None)."""
  for family in sorted(MODEL_FAMILIES, key=len, reverse=True):
    if model.startswith(f"{family}_"):
      return family, model.rsplit("_", 1)[1]
  return None, None


def check_run_model(entry: "Entry", embed_dim: int, family: Optional[str] = None,
                    size: Optional[str] = None) -> None:
  """Refuses an entry trained for another base model than the run's.

  The embed dims must agree; when the run's family and size are known and the
  entry's model name follows `<family>_[<variant>_]<size>`, they must agree
  too (a t5_1_1_lm100k_base prompt fits a t5_1_1 base run, not a tiny one).
  """
  run = f"{family}_{size}" if family and size else None
  e_family, e_size = family_and_size(entry.model.name)
  names_differ = bool(run and e_family) and (e_family, e_size) != (family, size)
  if entry.model.embed_dim == embed_dim and not names_differ:
    return
  raise ModelMismatchError(
      f"library entry {entry.name!r} is a prompt for base model {entry.model.name!r} (embed "
      f"dim {entry.model.embed_dim}), but this run's model is {run or 'another one'} (embed "
      f"dim {embed_dim}); pick an entry of the run's model (spot library list --model "
      f"{run or 'MODEL'}) or train on the entry's base model.")


@dataclasses.dataclass(frozen=True)
class Provenance:
  """Where a prompt came from: the run's gin config, step, time, spot version."""

  gin_config: str = ""
  step: Optional[int] = None
  created: str = ""
  spot_version: str = ""


@dataclasses.dataclass(frozen=True)
class ArrayRecord:
  """A stored array file: path relative to the entry, shape, dtype, checksum."""

  file: str
  shape: tuple[int, ...]
  dtype: str
  sha256: str
  size: int


@dataclasses.dataclass(frozen=True)
class Entry:
  """The metadata of one entry (arrays are read on demand)."""

  name: str
  model: ModelInfo
  task: str
  prompt: ArrayRecord
  embeddings: tuple[tuple[str, ArrayRecord], ...]
  metrics: Mapping[str, Any]
  provenance: Provenance
  meta: Mapping[str, Any]
  uid: str = ""

  @property
  def prompt_shape(self) -> tuple[int, ...]:
    return self.prompt.shape

  @property
  def embedding_keys(self) -> tuple[str, ...]:
    return tuple(k for k, _ in self.embeddings)

  @property
  def query_key(self) -> str:
    """The embedding queries use: the first task embedding, else the prompt."""
    return self.embeddings[0][0] if self.embeddings else PROMPT_KEY

  def record(self, key: Optional[str] = None) -> ArrayRecord:
    """The stored array of embedding `key` (default: `query_key`; "prompt")."""
    key = self.query_key if key is None else key
    if key == PROMPT_KEY:
      return self.prompt
    for k, rec in self.embeddings:
      if k == key:
        return rec
    raise LibraryError(f"entry {self.name!r} has no embedding {key!r}; it has "
                       f"{', '.join(self.embedding_keys) or 'none'} (and {PROMPT_KEY!r}).")

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["embeddings"] = [dict(key=k, **dataclasses.asdict(r)) for k, r in self.embeddings]
    return {"format": FORMAT_VERSION, **d}

  def summary(self) -> dict[str, Any]:
    """The flat record `list --json` prints."""
    return {
        "name": self.name,
        "model": self.model.name,
        "task": self.task,
        "prompt_shape": list(self.prompt_shape),
        "embed_dim": self.model.embed_dim,
        "embeddings": list(self.embedding_keys),
        "checkpoint": self.model.checkpoint,
        "step": self.provenance.step,
        "created": self.provenance.created,
        "metrics": dict(self.metrics),
    }


def _record(d: Mapping[str, Any]) -> ArrayRecord:
  return ArrayRecord(file=str(d["file"]), shape=tuple(int(x) for x in d["shape"]),
                     dtype=str(d["dtype"]), sha256=str(d["sha256"]), size=int(d["size"]))


def entry_from_json(data: bytes, name: str) -> Entry:
  """Parses `entry.json` of directory `name`; raises CorruptEntryError."""
  try:
    d = json.loads(data)
    if int(d.get("format", 0)) > FORMAT_VERSION:
      raise CorruptEntryError(f"entry.json has format {d['format']}, newer than this spot "
                              f"reads ({FORMAT_VERSION}); upgrade spot.")
    entry = Entry(
        name=str(d["name"]),
        model=ModelInfo(**d["model"]),
        task=str(d.get("task", "")),
        prompt=_record(d["prompt"]),
        embeddings=tuple((check_name(str(e["key"]), "embedding key"), _record(e))
                         for e in d.get("embeddings", [])),
        metrics=dict(d.get("metrics", {})),
        provenance=Provenance(**d.get("provenance", {})),
        meta=dict(d.get("meta", {})),
        uid=str(d.get("uid", "")),
    )
  except CorruptEntryError:
    raise
  except (ValueError, KeyError, TypeError, LibraryError) as e:
    raise CorruptEntryError(f"bad entry.json ({type(e).__name__}: {e})") from e
  if entry.name != name:
    raise CorruptEntryError(f"entry.json names {entry.name!r}, not its directory {name!r}")
  return entry


def as_prompt_array(array: Any, what: str) -> np.ndarray:
  """`array` as C-ordered native float32 [tokens, dim], or a clear error."""
  a = np.asarray(array)
  if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
    raise ModelMismatchError(f"{what} has dtype {a.dtype}; a prompt or task embedding is a "
                             "float array [tokens, embed_dim].")
  a = np.ascontiguousarray(a, dtype=np.float32)
  if a.ndim != 2 or 0 in a.shape:
    raise ModelMismatchError(
        f"{what} has shape {a.shape}; expected [tokens, embed_dim], e.g. (100, 768) for a "
        "100-token prompt of a base-size T5. Save the encoder prompt variable itself "
        f"(T5X: {run_dir.PROMPT_VARIABLE}).")
  if not np.isfinite(a).all():
    raise ModelMismatchError(f"{what} contains NaN or Inf values; it is not a usable prompt.")
  return a


def encode_array(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  np.save(buf, array, allow_pickle=False)
  return buf.getvalue()


def make_record(file: str, array: np.ndarray, data: bytes) -> ArrayRecord:
  return ArrayRecord(file=file, shape=tuple(array.shape), dtype=array.dtype.str,
                     sha256=fs.sha256(data), size=len(data))


def decode_array(data: bytes, what: str) -> np.ndarray:
  try:
    return np.load(io.BytesIO(data), allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise CorruptEntryError(f"{what} is not a readable .npy file ({e})") from e


def read_array(entry_dir: fs.Path, record: ArrayRecord) -> np.ndarray:
  """Reads one array of an entry and checks size, checksum, shape and dtype."""
  path = entry_dir / record.file
  try:
    data = fs.read_bytes(path)
  except (FileNotFoundError, OSError) as e:
    raise CorruptEntryError(f"missing file {record.file}") from e
  if len(data) != record.size or fs.sha256(data) != record.sha256:
    raise CorruptEntryError(f"checksum mismatch in {record.file} (the file changed or was "
                            "cut after the entry was written)")
  array = decode_array(data, record.file)
  if tuple(array.shape) != record.shape or array.dtype.str != record.dtype:
    raise CorruptEntryError(f"{record.file} holds {array.dtype.str}{list(array.shape)}, "
                            f"entry.json says {record.dtype}{list(record.shape)}")
  return array
