"""One library entry: its metadata (`entry.json`) and how its arrays are stored.

An entry directory holds

  entry.json              this metadata, written last; the sha256 and size of
                          every array file
  prompt.npy              the source prompt [P, D], float32 (prompt entries)
  params/<path>.npy       the trained parameters of another method (LoRA, (IA)3,
                          adapters, BitFit, selective tuning, prefix), one file per
                          parameter path, '/' written as '.' (PEFT entries)
  embeddings/<key>.npy    task embeddings [P', D], float32 (e.g. "step_10000")

Arrays are `np.save` payloads of C-ordered little-endian float32; a float32
array is stored byte for byte, other float dtypes (float64, bfloat16) are cast.

`method` names what the entry holds: "prompt" (the default, and what an
entry.json without the field means), or a PEFT method ("lora", "ia3", ...) with
its config (`peft`, as `spot.peft.from_dict` reads it). A prompt entry's
entry.json is written exactly as before methods existed (format 1); a PEFT
entry's is format 2, which older spot versions refuse instead of misreading.
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
from spot.library.errors import (CorruptEntryError, LibraryError, MethodMismatchError,
                                 ModelMismatchError)

ENTRY_FILE = "entry.json"
PROMPT_FILE = "prompt.npy"
EMBEDDINGS_DIR = "embeddings"
PARAMS_DIR = "params"
PROMPT_FORMAT = 1  # what prompt entries write (readable by every spot version)
FORMAT_VERSION = 2  # the newest this spot reads; PEFT entries write it
PROMPT_METHOD = "prompt"
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
  prompt: Optional[ArrayRecord]  # None for a PEFT entry
  embeddings: tuple[tuple[str, ArrayRecord], ...]
  metrics: Mapping[str, Any]
  provenance: Provenance
  meta: Mapping[str, Any]
  uid: str = ""
  method: str = PROMPT_METHOD
  peft: Optional[Mapping[str, Any]] = None  # the method's config (`spot.peft.from_dict`)
  params: tuple[tuple[str, ArrayRecord], ...] = ()  # PEFT: (parameter path, array)

  @property
  def is_prompt(self) -> bool:
    """Whether the entry holds a prompt (what transfer and serving apply)."""
    return self.method == PROMPT_METHOD

  @property
  def prompt_shape(self) -> tuple[int, ...]:
    return self.prompt.shape if self.prompt is not None else ()

  @property
  def param_shapes(self) -> dict[str, tuple[int, ...]]:
    """Parameter path -> shape of a PEFT entry's arrays ({} for a prompt entry)."""
    return {path: rec.shape for path, rec in self.params}

  @property
  def array_records(self) -> list[ArrayRecord]:
    """Every stored array: the prompt (if any), the parameters, the task embeddings."""
    head = [self.prompt] if self.prompt is not None else []
    return head + [r for _, r in self.params] + [r for _, r in self.embeddings]

  @property
  def embedding_keys(self) -> tuple[str, ...]:
    return tuple(k for k, _ in self.embeddings)

  @property
  def query_key(self) -> Optional[str]:
    """The embedding queries use: the first task embedding, else the prompt; None
    for a PEFT entry without task embeddings (it is listed, never ranked)."""
    if self.embeddings:
      return self.embeddings[0][0]
    return PROMPT_KEY if self.prompt is not None else None

  def record(self, key: Optional[str] = None) -> ArrayRecord:
    """The stored array of embedding `key` (default: `query_key`; "prompt")."""
    key = self.query_key if key is None else key
    if key is None:
      raise LibraryError(f"entry {self.name!r} ({self.method}) has no task embedding; add it "
                         "again with --embedding KEY=FILE.npy to rank it.")
    if key == PROMPT_KEY:
      if self.prompt is None:
        raise MethodMismatchError(not_a_prompt(self.name, self.method))
      return self.prompt
    for k, rec in self.embeddings:
      if k == key:
        return rec
    raise LibraryError(f"entry {self.name!r} has no embedding {key!r}; it has "
                       f"{', '.join(self.embedding_keys) or 'none'} (and {PROMPT_KEY!r}).")

  def to_json(self) -> dict[str, Any]:
    """entry.json's content; a prompt entry's is byte for byte what spot wrote before
    methods existed (no method, peft or params keys)."""
    d = dataclasses.asdict(self)
    d["embeddings"] = [dict(key=k, **dataclasses.asdict(r)) for k, r in self.embeddings]
    for key in ("method", "peft", "params"):
      d.pop(key)
    if self.is_prompt:
      return {"format": PROMPT_FORMAT, **d}
    d["method"], d["peft"] = self.method, dict(self.peft) if self.peft is not None else None
    d["params"] = [dict(path=p, **dataclasses.asdict(r)) for p, r in self.params]
    return {"format": FORMAT_VERSION, **d}

  def summary(self) -> dict[str, Any]:
    """The flat record `list --json` prints (`prompt_shape` is None for a PEFT entry,
    whose `param_shapes` list its arrays)."""
    return {
        "name": self.name,
        "model": self.model.name,
        "task": self.task,
        "method": self.method,
        "prompt_shape": list(self.prompt_shape) if self.prompt is not None else None,
        "param_shapes": {p: list(s) for p, s in self.param_shapes.items()},
        "embed_dim": self.model.embed_dim,
        "embeddings": list(self.embedding_keys),
        "checkpoint": self.model.checkpoint,
        "step": self.provenance.step,
        "created": self.provenance.created,
        "metrics": dict(self.metrics),
    }


def not_a_prompt(name: str, method: str) -> str:
  """The one-line refusal of a PEFT entry where a prompt is needed."""
  return (f"library entry {name!r} holds {method} parameters, not a prompt (method "
          f"{method!r}); SPoT transfer and serving apply prompt entries only: pick an entry "
          "of method 'prompt' (spot library list --method prompt), or load this one's "
          "parameters with PromptLibrary.params().")


def check_prompt_entry(entry: "Entry") -> "Entry":
  """`entry` if it holds a prompt; else MethodMismatchError naming it and its method."""
  if not entry.is_prompt:
    raise MethodMismatchError(not_a_prompt(entry.name, entry.method))
  return entry


def param_file(path: str, suffix: str = "") -> str:
  """The file of parameter `path` ("encoder/layers_0/...") in a PEFT entry."""
  return f"{PARAMS_DIR}/{path.replace('/', '.')}{suffix}.npy"


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
    method = str(d.get("method") or PROMPT_METHOD)
    params = tuple((str(p["path"]), _record(p)) for p in d.get("params") or [])
    if method == PROMPT_METHOD and params:
      raise ValueError("a prompt entry lists params")
    if method != PROMPT_METHOD and not params:
      raise ValueError(f"a {method} entry lists no params")
    peft = d.get("peft")
    entry = Entry(
        name=str(d["name"]),
        model=ModelInfo(**d["model"]),
        task=str(d.get("task", "")),
        prompt=(_record(d["prompt"]) if method == PROMPT_METHOD or d.get("prompt")
                else None),
        embeddings=tuple((check_name(str(e["key"]), "embedding key"), _record(e))
                         for e in d.get("embeddings", [])),
        metrics=dict(d.get("metrics", {})),
        provenance=Provenance(**d.get("provenance", {})),
        meta=dict(d.get("meta", {})),
        uid=str(d.get("uid", "")),
        method=method,
        peft=dict(peft) if isinstance(peft, Mapping) else None,
        params=params,
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


def as_param_array(array: Any, what: str) -> np.ndarray:
  """A trained parameter as C-ordered native float32 (any rank), or a clear error."""
  a = np.asarray(array)
  if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
    raise ModelMismatchError(f"{what} has dtype {a.dtype}; trained parameters are float "
                             "arrays.")
  a = np.ascontiguousarray(a, dtype=np.float32)
  if not np.isfinite(a).all():
    raise ModelMismatchError(f"{what} contains NaN or Inf values; it is not usable.")
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
