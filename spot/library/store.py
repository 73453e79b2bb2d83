"""`PromptLibrary`: source prompts and task embeddings on local disk or `gs://`.

Layout under the library path:

  entries/<name>/entry.json, prompt.npy or params/<path>.npy, embeddings/<key>.npy
                          (see entry.py)
  models/<model>.json     embed_dim of each base model, fixed by its first entry
  index/index.npz         query cache, rebuilt incrementally (see index.py)
  tmp/                    staging of adds, removes and overwrites in progress

Local adds are staged in `tmp/` and renamed into `entries/` in one step, so a
reader sees a complete entry or none, and two writers of one name cannot both
win. On an object store there is no atomic rename: each add writes arrays with
names of its own (`prompt-<uid>.npy`) and then `entry.json`, so a first add in
progress reads as partial (skipped) and an overwrite switches in one step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import difflib
import json
import os
import time
import urllib.parse
import uuid
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union

import numpy as np
import spot
from spot.library import entry as entry_lib
from spot.library import fs
from spot.library import index as index_lib
from spot.library import similarity
from spot.library.entry import Entry, ModelInfo, Provenance
from spot.library.errors import (CorruptEntryError, EntryExistsError, EntryNotFoundError,
                                 LibraryError, LibraryNotFoundError, LibraryWarning,
                                 MethodMismatchError, ModelMismatchError)

ENTRIES_DIR = "entries"
MODELS_DIR = "models"
INDEX_FILE = "index/index.npz"
TMP_DIR = "tmp"
_MAX_OVERWRITE_TRIES = 20
_READ_TRIES = 3
_PARTIAL = "partial entry: entry.json is missing (an add in progress, or interrupted)"

T = TypeVar("T")
Embeddings = Union[Mapping[str, Any], Sequence[tuple[str, Any]], None]


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _dump_json(d: Mapping[str, Any]) -> bytes:
  return (json.dumps(d, indent=2, ensure_ascii=False) + "\n").encode()


class PromptLibrary:
  """A prompt library rooted at `path` (a local directory or `gs://...`).

  Nothing is read or created until a method needs it; `add` creates the
  library, every other method requires it to exist.
  """

  def __init__(self, path: fs.PathLike, *, local: Optional[bool] = None):
    """Opens the library at `path`.

    Args:
      path: library root.
      local: force the local-disk (True) or object-store (False) write
        protocol; None picks by the path's scheme.
    """
    local_path = fs.is_local(path)
    # Absolute, so the path still holds for a run started elsewhere (from_library).
    self.path = fs.path(os.path.abspath(os.fspath(path)) if local_path else path)
    self._local = local_path if local is None else local
    self._index: Optional[index_lib.Index] = None
    # (row, vectors) by name from the last `check`, reused once by `repair`.
    self._verified: dict[str, tuple[index_lib.Row, Optional[dict[str, np.ndarray]]]] = {}

  def __repr__(self) -> str:
    return f"PromptLibrary({os.fspath(self.path)!r})"

  # -- layout ---------------------------------------------------------------

  def _dir(self, name: str) -> fs.Path:
    return self.path / ENTRIES_DIR / name

  def exists(self) -> bool:
    return (self.path / ENTRIES_DIR).is_dir()

  def _require(self) -> None:
    if not self.exists():
      raise LibraryNotFoundError(
          f"no prompt library at {self.path} (it has no {ENTRIES_DIR}/ folder). Check "
          "--library, or create the library by adding a first entry: spot library "
          f"--library {self.path} add NAME --prompt FILE.npy --model MODEL")

  def create(self) -> None:
    """Creates the library's folders (idempotent)."""
    for sub in (ENTRIES_DIR, MODELS_DIR, "index", TMP_DIR):
      (self.path / sub).mkdir(parents=True, exist_ok=True)

  # -- writing --------------------------------------------------------------

  def add(self, name: str, prompt: Any, *, model: Union[str, ModelInfo],
          embeddings: Embeddings = None, task: str = "",
          metrics: Optional[Mapping[str, Any]] = None,
          provenance: Optional[Provenance] = None,
          meta: Optional[Mapping[str, Any]] = None, overwrite: bool = False) -> Entry:
    """Adds an entry atomically and returns it.

    Args:
      name: entry name (letters, digits, `._+-`).
      prompt: the source prompt [P, D]; float32 is stored byte for byte.
      model: the base model's name, or a `ModelInfo` with its checkpoint.
      embeddings: task embeddings [P', D] by key (e.g. {"step_10000": e}), in
        the order given; queries use the first. With none, the prompt serves.
      task: the SeqIO task or mixture the prompt was trained on.
      metrics: validation scores, e.g. {"accuracy": 95.1}.
      provenance: gin config, step; `created` and `spot_version` are filled in.
      meta: free-form JSON-serialisable metadata.
      overwrite: replace an existing entry of the same name.

    Raises:
      EntryExistsError: `name` is taken and `overwrite` is False.
      ModelMismatchError: bad shapes, or a dimension that differs from the
        model's earlier entries.
    """
    entry_lib.check_name(name)
    info = self._model_info(model)
    prompt = entry_lib.as_prompt_array(prompt, f"the prompt of {name!r}")
    dim = prompt.shape[1]
    if info.embed_dim not in (None, dim):
      raise ModelMismatchError(f"the prompt of {name!r} has embed dim {dim}, but model "
                               f"{info.name!r} was given embed_dim {info.embed_dim}.")
    info = dataclasses.replace(info, embed_dim=dim)
    uid = uuid.uuid4().hex
    # On an object store each write gets its own array names (see _install_remote).
    suffix = "" if self._local else f"-{uid[:12]}"
    prompt_file = entry_lib.PROMPT_FILE.replace(".npy", f"{suffix}.npy")
    files = {prompt_file: entry_lib.encode_array(prompt)}
    prompt_rec = entry_lib.make_record(prompt_file, prompt, files[prompt_file])
    return self._add_entry(
        Entry(name=name, model=info, task=task, prompt=prompt_rec, embeddings=(),
              metrics=dict(metrics or {}), provenance=provenance or Provenance(),
              meta=dict(meta or {}), uid=uid), files, embeddings, suffix, overwrite)

  def add_params(self, name: str, params: Mapping[str, Any], *, method: str,
                 peft: Optional[Mapping[str, Any]], model: Union[str, ModelInfo],
                 embeddings: Embeddings = None, task: str = "",
                 metrics: Optional[Mapping[str, Any]] = None,
                 provenance: Optional[Provenance] = None,
                 meta: Optional[Mapping[str, Any]] = None, overwrite: bool = False) -> Entry:
    """Adds an entry of another method than prompts (LoRA, (IA)3, adapters, ...).

    Args:
      name: entry name.
      params: the run's trained parameters, flat {parameter path: array}, e.g.
        {"encoder/layers_0/attention/query/lora_a": [D, r], ...} (the
        checkpointed trainable tree); each is stored as float32 with its shape.
      method: the method's name ("lora", "ia3", "adapter", "bitfit", "selective",
        "prefix"; run.json's "method"); "prompt" is refused (use `add`).
      peft: the method's config dict (run.json's "peft"), None where it has none.
      model: the base model; its `embed_dim` must be given (run.json's
        model_config.emb_dim), since no array here fixes it.
      embeddings, task, metrics, provenance, meta, overwrite: as in `add`; task
        embeddings [P', D] make the entry rankable among entries of its method.
    """
    entry_lib.check_name(name)
    if not method or method == entry_lib.PROMPT_METHOD:
      raise MethodMismatchError(f"add_params({name!r}) needs a method other than "
                                f"{entry_lib.PROMPT_METHOD!r}; add a prompt with add().")
    info = self._model_info(model)
    if info.embed_dim is None:
      raise ModelMismatchError(f"the {method} entry {name!r} needs its base model's embed dim: "
                               "pass ModelInfo(embed_dim=D) (a run's run.json records it as "
                               "model_config.emb_dim).")
    if not params:
      raise LibraryError(f"the {method} entry {name!r} has no parameters; pass the run's "
                         "trained (checkpointed trainable) parameters.")
    uid = uuid.uuid4().hex
    suffix = "" if self._local else f"-{uid[:12]}"
    files, records = {}, []
    for path in sorted(params):
      arr = entry_lib.as_param_array(params[path], f"parameter {path!r} of {name!r}")
      file = entry_lib.param_file(path, suffix)
      files[file] = entry_lib.encode_array(arr)
      records.append((path, entry_lib.make_record(file, arr, files[file])))
    if len(files) != len(records):
      raise LibraryError(f"parameter paths of {name!r} collide once '/' is written as '.'; "
                         "rename them.")
    entry = Entry(name=name, model=info, task=task, prompt=None, embeddings=(),
                  metrics=dict(metrics or {}), provenance=provenance or Provenance(),
                  meta=dict(meta or {}), uid=uid, method=str(method),
                  peft=dict(peft) if peft is not None else None, params=tuple(records))
    return self._add_entry(entry, files, embeddings, suffix, overwrite)

  @staticmethod
  def _model_info(model: Union[str, ModelInfo]) -> ModelInfo:
    info = model if isinstance(model, ModelInfo) else ModelInfo(name=str(model))
    if not info.name:
      raise ModelMismatchError("the base model name is empty; pass --model, e.g. "
                               "t5_1_1_lm100k_base.")
    return info

  def _add_entry(self, entry: Entry, files: dict[str, bytes], embeddings: Embeddings,
                 suffix: str, overwrite: bool) -> Entry:
    """Adds the task embeddings and provenance to `entry`, then installs its files."""
    name, dim, info = entry.name, entry.model.embed_dim, entry.model
    records = []
    pairs = list(embeddings.items()) if isinstance(embeddings, Mapping) else list(embeddings or [])
    for key, value in pairs:
      entry_lib.check_name(key, "embedding key")
      if key == entry_lib.PROMPT_KEY or key in dict(records):
        raise LibraryError(f"embedding key {key!r} of {name!r} is reserved or repeated; "
                           "give each task embedding its own key, e.g. step_10000.")
      arr = entry_lib.as_prompt_array(value, f"task embedding {key!r} of {name!r}")
      if arr.shape[1] != dim:
        raise ModelMismatchError(
            f"task embedding {key!r} of {name!r} has embed dim {arr.shape[1]} but the "
            f"{'prompt' if entry.is_prompt else 'base model'} has {dim}; both must come "
            "from the same base model.")
      file = f"{entry_lib.EMBEDDINGS_DIR}/{key}{suffix}.npy"
      files[file] = entry_lib.encode_array(arr)
      records.append((key, entry_lib.make_record(file, arr, files[file])))
    prov = entry.provenance
    prov = dataclasses.replace(prov, created=prov.created or _now(),
                               spot_version=prov.spot_version or spot.__version__)
    entry = dataclasses.replace(entry, embeddings=tuple(records), provenance=prov)
    try:
      files[entry_lib.ENTRY_FILE] = _dump_json(entry.to_json())
    except TypeError as e:
      raise LibraryError(f"metrics and meta of {name!r} must be JSON-serialisable: {e}") from e
    self.create()
    self._register_model(info)
    self._install(name, files, overwrite=overwrite)
    return entry

  def _exists(self, name: str) -> EntryExistsError:
    return EntryExistsError(f"entry {name!r} already exists in {self.path}; pass "
                            "overwrite=True (CLI: --overwrite) to replace it, or pick "
                            "another name.")

  def _register_model(self, info: ModelInfo) -> None:
    """Fixes a model's embed_dim on its first entry; refuses a different one later."""
    path = self.path / MODELS_DIR / (urllib.parse.quote(info.name, safe="") + ".json")
    record = {"name": info.name, "embed_dim": info.embed_dim}
    try:
      known = json.loads(fs.read_bytes(path))["embed_dim"]
    except FileNotFoundError:
      if fs.create_exclusive(path, _dump_json(record), local=self._local):
        return
      known = json.loads(fs.read_bytes(path))["embed_dim"]  # a concurrent first add won
    except (ValueError, KeyError, OSError):
      fs.write_bytes(path, _dump_json(record), local=self._local)  # repair a damaged record
      return
    if known != info.embed_dim:
      raise ModelMismatchError(
          f"model {info.name!r} has embed dim {known} in {self.path}, but this prompt has "
          f"dim {info.embed_dim}: is it from another base model? Pass that model's name "
          "with --model.")

  def _install(self, name: str, files: Mapping[str, bytes], *, overwrite: bool) -> None:
    """Writes one entry's files (`entry.json` last) and publishes it atomically."""
    if not self._local:
      self._install_remote(name, files, overwrite=overwrite)
      return
    tmp = self.path / TMP_DIR
    tmp.mkdir(parents=True, exist_ok=True)
    staging = tmp / f"{name}.{uuid.uuid4().hex}.tmp"
    # The lock tells `repair` that this folder belongs to a live writer.
    with fs.held_lock(staging):
      try:
        for rel in sorted(files, key=lambda f: f == entry_lib.ENTRY_FILE):
          path = staging / rel
          path.parent.mkdir(parents=True, exist_ok=True)
          fs.write_synced(os.fspath(path), files[rel])
        for _ in range(_MAX_OVERWRITE_TRIES):
          if fs.rename_dir(staging, self._dir(name)):
            return
          if not overwrite:
            raise self._exists(name)
          self._discard(name, ".old")
        raise LibraryError(f"could not replace entry {name!r}: other writers kept replacing "
                           "it.")
      finally:
        fs.rmtree(staging)

  def _discard(self, name: str, suffix: str) -> bool:
    """Moves entry `name` into tmp/ (under a held lock) and deletes it; False if absent."""
    gone = self.path / TMP_DIR / f"{name}.{uuid.uuid4().hex}{suffix}"
    with fs.held_lock(gone):
      try:
        os.rename(os.fspath(self._dir(name)), os.fspath(gone))
      except FileNotFoundError:
        return False  # removed, or moved by a concurrent writer
      fs.rmtree(gone)
      return True

  def _install_remote(self, name: str, files: Mapping[str, bytes], *, overwrite: bool) -> None:
    """Object-store install: arrays (uniquely named by `add`) first, entry.json last.

    Readers see the old entry.json or the new one, each with its own arrays;
    arrays no longer referenced are deleted afterwards.
    """
    target = self._dir(name)
    marker = target / entry_lib.ENTRY_FILE
    if marker.exists() and not overwrite:
      raise self._exists(name)
    for rel in sorted(files, key=lambda f: f == entry_lib.ENTRY_FILE):
      (target / rel).parent.mkdir(parents=True, exist_ok=True)
      fs.write_bytes(target / rel, files[rel], local=False)
    try:  # whoever wrote entry.json last owns the entry; drop what it does not name
      current = entry_lib.entry_from_json(fs.read_bytes(marker), name)
    except (CorruptEntryError, FileNotFoundError):
      return
    keep = {entry_lib.ENTRY_FILE} | {r.file for r in current.array_records}
    for folder in (target, target / entry_lib.EMBEDDINGS_DIR, target / entry_lib.PARAMS_DIR):
      for path in (folder.iterdir() if folder.is_dir() else []):
        if path.is_file() and str(path.relative_to(target)) not in keep:
          path.unlink()

  def remove(self, name: str) -> None:
    """Removes entry `name` (valid or corrupt)."""
    self._require()
    entry_lib.check_name(name)
    if self._local:
      (self.path / TMP_DIR).mkdir(parents=True, exist_ok=True)
      if not self._discard(name, ".removed"):
        raise self._not_found(name)
      return
    if not self._dir(name).exists():
      raise self._not_found(name)
    marker = self._dir(name) / entry_lib.ENTRY_FILE
    if marker.exists():
      marker.unlink()
    fs.rmtree(self._dir(name))

  def install_files(self, name: str, files: Mapping[str, bytes], *,
                    overwrite: bool = False) -> Entry:
    """Adds an entry from the raw files of another library (import), verified first."""
    entry_lib.check_name(name)
    entry = self._verify_files(name, files)
    self.create()
    self._register_model(entry.model)
    self._install(name, files, overwrite=overwrite)
    return entry

  def verify_files(self, name: str, files: Mapping[str, bytes]) -> Entry:
    """Checks the raw files of an entry (as `install_files` would) without writing."""
    entry_lib.check_name(name)
    return self._verify_files(name, files)

  @staticmethod
  def _verify_files(name: str, files: Mapping[str, bytes]) -> Entry:
    if entry_lib.ENTRY_FILE not in files:
      raise CorruptEntryError(f"entry {name!r}: no entry.json")
    entry = entry_lib.entry_from_json(files[entry_lib.ENTRY_FILE], name)
    expected = {r.file for r in entry.array_records}
    if set(files) != expected | {entry_lib.ENTRY_FILE}:
      raise CorruptEntryError(f"entry {name!r}: files {sorted(files)} do not match entry.json")
    for rec in entry.array_records:
      data = files[rec.file]
      if len(data) != rec.size or fs.sha256(data) != rec.sha256:
        raise CorruptEntryError(f"entry {name!r}: checksum mismatch in {rec.file}")
    return entry

  # -- reading --------------------------------------------------------------

  def _not_found(self, name: str) -> EntryNotFoundError:
    names = fs.list_dirs(self.path / ENTRIES_DIR)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = (f"; did you mean {', '.join(close)}?" if close else
            f"; it has {len(names)} entries (spot library --library {self.path} list)")
    return EntryNotFoundError(f"no entry {name!r} in prompt library {self.path}{hint}")

  def _fingerprint(self, name: str) -> Optional[str]:
    """The entry's change detector (see `_fingerprints`); None if it is absent."""
    if self._local:
      return fs.local_fingerprint(self._dir(name), entry_lib.ENTRY_FILE)
    try:
      return fs.sha256(fs.read_bytes(self._dir(name) / entry_lib.ENTRY_FILE))
    except FileNotFoundError:
      return "" if self._dir(name).exists() else None

  def _stable(self, name: str, read: Callable[[], T]) -> tuple[T, Optional[str]]:
    """(read(), fingerprint before it), retried if a writer replaced the entry meanwhile.

    Reading entry.json and then the arrays is two steps; an overwrite between
    them would look like a checksum mismatch without this check.
    """
    for attempt in range(_READ_TRIES):
      before = self._fingerprint(name)
      try:
        return read(), before
      except CorruptEntryError:
        if attempt + 1 == _READ_TRIES or self._fingerprint(name) == before:
          raise
    raise AssertionError("unreachable")

  def _read_entry(self, name: str) -> Entry:
    """Parses `entry.json` of `name`; raises CorruptEntryError or EntryNotFoundError."""
    try:
      data = fs.read_bytes(self._dir(name) / entry_lib.ENTRY_FILE)
    except FileNotFoundError:
      if self._dir(name).exists():
        raise CorruptEntryError(_PARTIAL) from None
      raise EntryNotFoundError(name) from None
    return entry_lib.entry_from_json(data, name)

  def _validate(self, name: str, entry: Optional[Entry] = None
                ) -> tuple[Entry, dict[str, np.ndarray]]:
    """Fully checks one entry; returns it and its arrays by key ("prompt", ...)."""
    entry = self._read_entry(name) if entry is None else entry
    arrays = {}
    keys = ((entry_lib.PROMPT_KEY,) if entry.prompt is not None else ()) + entry.embedding_keys
    for key in keys:
      arr = entry_lib.read_array(self._dir(name), entry.record(key))
      if arr.ndim != 2 or arr.shape[1] != entry.model.embed_dim:
        raise CorruptEntryError(f"{entry.record(key).file} has shape {arr.shape}, not "
                                f"[tokens, {entry.model.embed_dim}] (model embed dim)")
      arrays[key] = arr
    for _, rec in entry.params:  # checksums, shapes and dtypes of a PEFT entry's arrays
      entry_lib.read_array(self._dir(name), rec)
    return entry, arrays

  def _corrupt(self, name: str, problem: Any) -> CorruptEntryError:
    return CorruptEntryError(
        f"entry {name!r} in {self.path} is corrupt: {problem}. Remove it (spot library "
        f"--library {self.path} remove {name}) and add it again.")

  def _read_valid(self, name: str, read: Callable[[], T]) -> T:
    """`read()` of entry `name`, with the public errors (close names; the fix)."""
    self._require()
    entry_lib.check_name(name)
    try:
      return self._stable(name, read)[0]
    except EntryNotFoundError:
      raise self._not_found(name) from None
    except CorruptEntryError as e:
      raise self._corrupt(name, e) from None

  def entry(self, name: str) -> Entry:
    """The metadata of a valid entry (all its files are verified)."""
    return self._read_valid(name, lambda: self._validate(name)[0])

  def prompt(self, name: str) -> np.ndarray:
    """The source prompt [P, D] of entry `name`, checksum-verified.

    Raises:
      MethodMismatchError: `name` is an entry of another method (LoRA, ...),
        which holds no prompt; the message names the entry and its method.
    """
    return self.embedding(name, entry_lib.PROMPT_KEY)

  def params(self, name: str) -> dict[str, np.ndarray]:
    """The trained parameters {path: array} of entry `name`, checksum-verified.

    A prompt entry gives {the prompt variable's path: prompt [P, D]}, so the
    same call reads what any entry holds.
    """

    def read() -> dict[str, np.ndarray]:
      entry = self._read_entry(name)
      if entry.prompt is not None and not entry.params:
        return {entry_lib.run_dir.PROMPT_VARIABLE: entry_lib.read_array(self._dir(name),
                                                                        entry.prompt)}
      return {path: entry_lib.read_array(self._dir(name), rec) for path, rec in entry.params}

    return self._read_valid(name, read)

  def embedding(self, name: str, key: Optional[str] = None) -> np.ndarray:
    """A task embedding of `name` (default: the one queries use), verified."""
    return self._read_valid(name, lambda: entry_lib.read_array(
        self._dir(name), self._read_entry(name).record(key)))

  def files(self, name: str) -> dict[str, bytes]:
    """The raw files of a valid entry, verified (what `export` archives)."""

    def read() -> dict[str, bytes]:
      entry = self._read_entry(name)
      rels = [entry_lib.ENTRY_FILE] + [r.file for r in entry.array_records]
      try:
        files = {rel: fs.read_bytes(self._dir(name) / rel) for rel in rels}
      except FileNotFoundError as e:
        raise CorruptEntryError(f"missing file {e.filename}") from e
      self._verify_files(name, files)
      return files

    return self._read_valid(name, read)

  # -- index ----------------------------------------------------------------

  def _fingerprints(self) -> dict[str, str]:
    entries = self.path / ENTRIES_DIR
    if self._local:
      return fs.local_fingerprints(entries, entry_lib.ENTRY_FILE)

    def remote(name: str) -> tuple[str, str]:
      try:
        return name, fs.sha256(fs.read_bytes(entries / name / entry_lib.ENTRY_FILE))
      except FileNotFoundError:
        return name, ""

    return dict(fs.parallel_map(remote, fs.list_dirs(entries)))

  def _index_row(self, name: str, fingerprint: str
                 ) -> tuple[Optional[index_lib.Row], Optional[dict[str, np.ndarray]]]:

    def read() -> tuple[Entry, dict[str, np.ndarray], str]:
      entry = self._read_entry(name)
      files = self._files_stamp(name, entry)  # before reading: a later rewrite shows
      return (*self._validate(name, entry), files)

    try:
      entry_lib.check_name(name)
      (entry, arrays, files), seen = self._stable(name, read)
    except EntryNotFoundError:
      return None, None  # removed since it was listed
    except (LibraryError, OSError) as e:
      return index_lib.Row(name, fingerprint, problem=str(e)), None
    fingerprint = seen if seen is not None else fingerprint
    row = index_lib.Row(name, fingerprint, entry.model.name, entry.task,
                        prompt_length=int(entry.prompt_shape[0]) if entry.prompt_shape else 0,
                        files=files, method=entry.method)
    if entry.query_key is None:
      return row, {}  # a PEFT entry without task embeddings: listed, never ranked
    query = arrays[entry.query_key]
    vectors = {m: similarity.summary_vector(query, m).astype(np.float32)
               for m in similarity.METRICS}
    return row, vectors

  def _files_stamp(self, name: str, entry: Entry) -> str:
    """`fs.files_stamp` of an entry's arrays ("" on an object store, where each
    write has array names of its own and entry.json's checksum stands for them)."""
    if not self._local:
      return ""
    return fs.files_stamp(self._dir(name), [r.file for r in entry.array_records])

  def _row_change(self, row: index_lib.Row) -> str:
    """How an indexed entry changed since its row was made: "" (not at all),
    "replaced" (its folder or entry.json: an add, overwrite or remove, which
    the next listing sees anyway) or "in place" (an array file rewritten)."""
    if not self._local:
      return ""
    if fs.local_fingerprint(self._dir(row.name), entry_lib.ENTRY_FILE) != row.fingerprint:
      return "replaced"
    if fs.files_stamp(self._dir(row.name), fs.stamp_files(row.files)) != row.files:
      return "in place"
    return ""

  def recheck(self, names: Sequence[str]) -> bool:
    """Re-reads the index rows of `names` whose entries changed since they were indexed
    (an array rewritten in place leaves the listing unchanged); returns whether any did.

    Queries call it on the entries they are about to return, so a ranking never
    rests on a stale or damaged row. In-place rewrites are warned about;
    entries replaced by a concurrent writer are simply re-read.
    """
    index = self.index()
    changes = {n: self._row_change(index.rows[n]) for n in names if n in index.rows}
    changed = [n for n, how in changes.items() if how]
    if not changed:
      return False
    in_place = [n for n in changed if changes[n] == "in place"]
    if in_place:
      warnings.warn(f"prompt library {self.path}: entr{'y' if len(in_place) == 1 else 'ies'} "
                    f"{', '.join(map(repr, in_place))} changed since the index was built (a "
                    "file rewritten in place); re-reading.", LibraryWarning, stacklevel=2)
    self.index(force=changed)
    return True

  def _load_index(self) -> tuple[index_lib.Index, str]:
    """The cached index on disk and its problem ("" when absent or sound)."""
    try:
      return index_lib.load(fs.map_file(self.path / INDEX_FILE, local=self._local))
    except (FileNotFoundError, OSError):
      return index_lib.EMPTY, ""

  def index(self, force: Sequence[str] = ()) -> index_lib.Index:
    """The query index, brought up to date with the entries on disk.

    Corrupt or partial entries are reported with a `LibraryWarning` and left
    out; only new or changed entries (and those in `force`) are read. Locally,
    when no entry was added, removed or replaced since the index was made (the
    `entries/` folder's stamp is unchanged), not even the listing is re-read.
    A damaged cache (checksum mismatch) is reported and rebuilt.
    """
    self._require()
    stamp = fs.dir_stamp(self.path / ENTRIES_DIR) if self._local else ""  # before listing
    if self._index is None:
      self._index, problem = self._load_index()
      if problem:
        warnings.warn(f"prompt library {self.path}: the index cache {INDEX_FILE} is damaged "
                      f"({problem}); rebuilding it from the entries.", LibraryWarning,
                      stacklevel=2)
        stamp = ""  # a damaged cache must not skip the listing
    if stamp and stamp == self._index.stamp and not force:
      index, changed = self._index, False
    else:
      index, changed = index_lib.refresh(self._index, self._fingerprints(), self._index_row,
                                         stamp, force=force)
    if changed:
      try:
        (self.path / INDEX_FILE).parent.mkdir(parents=True, exist_ok=True)
        fs.write_bytes(self.path / INDEX_FILE, index_lib.dumps(index), local=self._local)
      except OSError as e:  # a read-only library still answers from memory
        warnings.warn(f"prompt library {self.path}: could not write the index cache ({e}).",
                      LibraryWarning, stacklevel=2)
    self._index = index
    for row in index.problems:
      warnings.warn(f"prompt library {self.path}: skipping entry {row.name!r}: {row.problem}",
                    LibraryWarning, stacklevel=2)
    return index

  def names(self, model: Optional[str] = None, method: Optional[str] = None) -> list[str]:
    """Names of the valid entries (of `model` and `method`, if given), sorted."""
    return [r.name for r in self.index().valid()
            if (model is None or r.model == model) and (method is None or r.method == method)]

  def __len__(self) -> int:
    return len(self.names())

  def __contains__(self, name: str) -> bool:
    return name in self.names()

  def models(self) -> dict[str, int]:
    """Base models with valid entries -> their embed dim."""
    return {m: mi.dim for m, mi in sorted(self.index().models.items())}

  def entries(self, model: Optional[str] = None, task: Optional[str] = None,
              method: Optional[str] = None) -> list[Entry]:
    """The valid entries (optionally of one model, task or method), sorted by name."""
    rows = [r for r in self.index().valid()
            if (model is None or r.model == model) and (task is None or r.task == task)
            and (method is None or r.method == method)]

    def read(name: str) -> Optional[Entry]:
      try:
        return self._read_entry(name)
      except (LibraryError, OSError):
        return None  # replaced or removed since the index read it

    return [e for e in fs.parallel_map(read, [r.name for r in rows]) if e is not None]

  def check(self) -> list[tuple[str, str]]:
    """Re-verifies every entry from scratch; returns (name, problem) pairs."""
    self._require()
    fingerprints = self._fingerprints()
    rows = fs.parallel_map(lambda n: self._index_row(n, fingerprints[n]), sorted(fingerprints))
    self._verified = {r.name: (r, v) for r, v in rows if r is not None}  # for repair()
    return [(r.name, r.problem) for r, _ in rows if r is not None and r.problem]

  def repair(self) -> list[tuple[str, str]]:
    """Cleans what interrupted writers left and rebuilds a bad index; returns (path, what).

    - `tmp/`: staging folders (and their lock files) of writers that are gone
      (killed mid-write: no live process holds their lock, see
      `fs.is_stale`) are deleted; those of live writers are left alone.
      Nothing committed lives there, so nothing committed is lost.
    - `index/index.npz`: a cache that fails its checksum, or whose rows
      disagree with the entries they claim to describe (same fingerprint but
      other vectors, files or prompt length), is rebuilt from the entries.
    """
    self._require()
    done = []
    if self._local:
      tmp = self.path / TMP_DIR
      now = time.time()
      for item in sorted(tmp.iterdir()) if tmp.is_dir() else []:
        if not fs.is_stale(item, now):
          continue
        with contextlib.suppress(FileNotFoundError):
          if item.is_dir():
            fs.rmtree(item)
          else:
            os.remove(item)
          if not item.name.endswith(fs.LOCK_SUFFIX):
            os.remove(os.fspath(item) + fs.LOCK_SUFFIX)
        done.append((f"{TMP_DIR}/{item.name}", "left by an interrupted writer; removed"))
    problem = self._index_problem()
    if problem:
      self._index = index_lib.EMPTY
      with contextlib.suppress(FileNotFoundError):
        (self.path / INDEX_FILE).unlink()
      self.index()
      done.append((INDEX_FILE, f"{problem}; rebuilt"))
    return done

  def _index_problem(self) -> str:
    """What is wrong with the index cache on disk, "" if nothing (stale rows are normal)."""
    cached, problem = self._load_index()
    if problem:
      return f"damaged: {problem}"
    fingerprints = self._fingerprints()
    verified, self._verified = self._verified, {}  # rows `check` just read, if any
    bad = []
    for name, row in sorted(cached.rows.items()):
      if fingerprints.get(name) != row.fingerprint:
        continue  # stale, not wrong: the next query re-reads it
      fresh, vectors = verified.get(name) or self._index_row(name, row.fingerprint)
      if fresh is None or fresh.fingerprint != row.fingerprint:
        continue  # removed or replaced meanwhile: stale, not wrong
      if fresh.problem or row.problem:
        if bool(fresh.problem) != bool(row.problem):
          bad.append(name)
        continue
      if not vectors:  # a PEFT entry without task embeddings has no vectors
        if fresh._replace(fingerprint=row.fingerprint) != row:
          bad.append(name)
        continue
      mi = cached.models.get(row.model)
      try:
        stored = {m: mi.vectors[m][mi.position(name)] for m in similarity.METRICS}
      except (AttributeError, KeyError):
        bad.append(name)
        continue
      if (fresh._replace(fingerprint=row.fingerprint) != row or not all(
          np.allclose(stored[m], vectors[m], rtol=1e-5, atol=1e-6)
          for m in similarity.METRICS)):
        bad.append(name)
    if bad:
      return (f"out of date for {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} "
              f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}): files changed in place")
    return ""

