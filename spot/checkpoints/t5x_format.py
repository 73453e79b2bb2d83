"""The legacy T5X checkpoint format: one msgpack file plus tensorstore zarr arrays.

Layout (REFERENCE.md 1.1, T5X VERSION 3):

  checkpoint_<step>/checkpoint           msgpack {"version": 3, "optimizer":
                                           {"target": params, "state": {...}}}
  checkpoint_<step>/target.a.b.kernel/   zarr v2 array (gzip level 1), one per
                                           partitioned leaf; chunks <= 64 MiB

Each msgpack leaf is either an inline array (flax msgpack ext type) or a
tensorstore spec dict whose kvstore path is relative to the checkpoint
directory. Specs may name the 'file', 'gfile' or 'gcs' kvstore driver and, on
GCS, the dummy bucket "t5x-dummy-bucket": both are rewritten to wherever the
checkpoint lives now, so a checkpoint can be copied between disks and buckets.

Reads run in parallel in tensorstore with at most MAX_INFLIGHT_BYTES (256 MiB)
outstanding; each array is read once into its final (optionally cast) buffer,
so loading needs one copy of the weights plus that budget, not two copies.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import tensorstore as ts
from etils import epath
from flax import serialization, traverse_util

from spot import errors

DUMMY_BUCKET = "t5x-dummy-bucket"
VERSION = 3
MAX_CHUNK_BYTES = 64 * 1024 * 1024
MAX_INFLIGHT_BYTES = 256 * 1024 * 1024
_SPEC_KEYS = frozenset({"driver", "kvstore", "metadata"})
_KNOWN_KVSTORES = ("file", "gfile", "gcs")
_TS_CONTEXT_SPEC = {"file_io_concurrency": {"limit": 128}}


def is_spec(leaf: Any) -> bool:
  """Whether a msgpack leaf is a serialized tensorstore spec (as T5X tests it)."""
  return isinstance(leaf, dict) and leaf.keys() >= _SPEC_KEYS


def flatten_leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Flattens a msgpack tree to {'a/b': leaf}, treating spec dicts as leaves."""
  if not isinstance(tree, dict) or is_spec(tree) or (prefix and not tree):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(flatten_leaves(value, f"{prefix}/{key}" if prefix else str(key)))
  return out


def read_contents(file: epath.Path) -> dict[str, Any]:
  """Parses the msgpack file: inline arrays become ndarrays, specs stay dicts.

  Raises:
    DataError (a ValueError): the file is not a msgpack T5X checkpoint, or is
      truncated (the message names it and the fix).
  """
  try:
    contents = serialization.msgpack_restore(file.read_bytes())
  except Exception as e:  # msgpack raises several unrelated types.
    raise errors.DataError(
        f"{file} is not a msgpack T5X checkpoint file, or it is truncated "
        f"({type(e).__name__}: {errors.one_line(str(e))}); copy the complete "
        "checkpoint_<step> directory again.") from e
  if not isinstance(contents, dict):
    raise errors.DataError(f"{file} is not a T5X checkpoint: its msgpack root is a "
                           f"{type(contents).__name__}, not a dict.")
  return contents


def optimizer_tree(contents: Mapping[str, Any], file: epath.Path) -> tuple[dict, int]:
  """Returns (contents['optimizer'], version), validating the T5X envelope."""
  if "optimizer" not in contents:
    raise errors.DataError(f"{file} is not a T5X checkpoint: top-level keys are "
                     f"{sorted(contents)}, expected 'version' and 'optimizer'.")
  version = int(contents.get("version", 0))
  if version < 2:
    raise errors.DataError(f"{file} has T5X checkpoint version {version}; versions below 2 are "
                     "not supported (re-save it with a current T5X).")
  optimizer = contents["optimizer"]
  if not isinstance(optimizer, dict) or "target" not in optimizer:
    raise errors.DataError(f"{file}: 'optimizer' has no 'target' (the parameters); keys: "
                     f"{sorted(optimizer) if isinstance(optimizer, dict) else optimizer!r}.")
  return optimizer, version


def _split_gcs(directory: str) -> tuple[str, str]:
  m = re.fullmatch(r"gs://([^/]+)/?(.*)", directory, re.DOTALL)
  if m is None:
    raise errors.UsageError(f"Malformed GCS path {directory!r}; expected gs://BUCKET/PATH.")
  return m.group(1), m.group(2)


def absolute_spec(spec: Mapping[str, Any], directory: epath.Path, name: str) -> dict[str, Any]:
  """Rewrites a stored (relative) spec to open the array under `directory`.

  The stored kvstore driver ('file', 'gfile', 'gcs') and bucket are ignored:
  what counts is where the checkpoint is now. Local directories get the
  'file' driver; `gs://bucket/dir` gets 'gcs' with that bucket (replacing
  T5X's "t5x-dummy-bucket").
  """
  relative = spec_path(spec)
  spec = {k: v for k, v in spec.items() if k != "path"}
  driver = spec["kvstore"].get("driver")
  if driver not in _KNOWN_KVSTORES:
    raise errors.DataError(f"{name}: unsupported tensorstore kvstore driver {driver!r} in the "
                     f"checkpoint spec; T5X writes one of {_KNOWN_KVSTORES}.")
  base = os.fspath(directory)
  if base.startswith("gs://"):
    bucket, prefix = _split_gcs(base)
    spec["kvstore"] = {"driver": "gcs", "bucket": bucket,
                       "path": f"{prefix.rstrip('/')}/{relative}" if prefix else relative}
  elif "://" in base:
    raise errors.UsageError(f"{name}: cannot read tensorstore arrays from {base}; local paths "
                     "and gs:// are supported.")
  else:
    spec["kvstore"] = {"driver": "file", "path": os.path.join(base, relative)}
  return spec


def spec_path(spec: Mapping[str, Any]) -> str:
  """The array path a spec names (kvstore path, or the pre-0.1.14 top-level path)."""
  path = spec.get("kvstore", {}).get("path") or spec.get("path")
  if not path:
    raise errors.DataError(f"Malformed tensorstore spec without a path: {dict(spec)!r}.")
  return path


def _ts_error(e: Exception, name: str, spec: Mapping[str, Any], file: epath.Path) -> Exception:
  where = spec["kvstore"].get("path", "")
  detail = errors.one_line(str(e))
  if "NOT_FOUND" in str(e):
    return errors.MissingInputError(
        f"Parameter {name} of {file}: its array files are missing under {where} ({detail}). "
        "The checkpoint is incomplete, or its directory was copied without the array "
        "subdirectories; copy the whole checkpoint_<step> directory.")
  return errors.DataError(f"Parameter {name} of {file}: cannot read the array at {where} "
                          f"({detail}); the checkpoint is damaged, copy the whole "
                          "checkpoint_<step> directory again.")


def _open(spec: dict, strict: bool, context: ts.Context) -> ts.Future:
  if strict and spec.get("driver") in ("zarr", "n5", "zarr3"):
    # Missing chunks must not silently read as zeros; only an array with an
    # explicit fill value (checked in _read_one) may omit chunks.
    spec = {**spec, "fill_missing_data_reads": False}
  return ts.open(spec, open=True, read=True, context=context)


def read_leaves(leaves: Mapping[str, Any], directory: epath.Path, file: epath.Path, *,
                dtype: Optional[Any] = None, version: int = VERSION,
                max_inflight_bytes: int = MAX_INFLIGHT_BYTES) -> dict[str, Any]:
  """Materialises {name: leaf} where leaves are ndarrays, specs or None.

  All arrays are opened in parallel, then read in parallel with at most
  `max_inflight_bytes` of reads outstanding (at least one): tensorstore
  decodes each chunk into a buffer before copying it into the result, so the
  budget bounds that transient memory on top of the loaded weights. `dtype`
  casts inside tensorstore while reading (no second full copy).
  """
  context = ts.Context(_TS_CONTEXT_SPEC)
  specs = {n: absolute_spec(v, directory, n) for n, v in leaves.items() if is_spec(v)}
  opening = {n: _open(s, True, context) for n, s in specs.items()}
  stores = {}
  for name, future in opening.items():
    try:
      stores[name] = future.result()
    except ValueError as e:
      raise _ts_error(e, name, specs[name], file) from e
    if dtype is not None:
      stores[name] = ts.cast(stores[name], ts.dtype(np.dtype(dtype).name))
  out: dict[str, Any] = {}
  inflight: collections.deque = collections.deque()
  inflight_bytes = 0
  for name, store in stores.items():
    nbytes = int(np.prod(store.shape, dtype=np.int64)) * store.dtype.numpy_dtype.itemsize
    while inflight and inflight_bytes + nbytes > max_inflight_bytes:
      done, future, done_bytes = inflight.popleft()
      out[done] = _await_read(future, done, specs[done], file, dtype, context)
      inflight_bytes -= done_bytes
    inflight.append((name, store.read(), nbytes))
    inflight_bytes += nbytes
  for done, future, _ in inflight:
    out[done] = _await_read(future, done, specs[done], file, dtype, context)
  for name, leaf in leaves.items():
    if name in out:
      if version < 3 and out[name].dtype == np.uint16:
        out[name] = out[name].view(_bfloat16())  # v2 stored bfloat16 bits as uint16.
    elif leaf is None:
      out[name] = None
    else:  # inline: copy out of the (read-only) msgpack buffer, casting if asked
      out[name] = np.array(leaf, dtype=dtype)
  return {name: out[name] for name in leaves}


def _await_read(future: ts.Future, name: str, spec: dict, file: epath.Path,
                dtype: Optional[Any], context: ts.Context) -> np.ndarray:
  try:
    return future.result()
  except ValueError as e:
    if "NOT_FOUND" not in str(e):
      raise _ts_error(e, name, spec, file) from e
    # A missing chunk is legitimate only where zarr declares a fill value.
    store = _open(spec, False, context).result()
    if store.fill_value is None:
      raise _ts_error(e, name, spec, file) from e
    if dtype is not None:
      store = ts.cast(store, ts.dtype(np.dtype(dtype).name))
    return store.read().result()


def _bfloat16():
  import ml_dtypes  # a jax dependency
  return ml_dtypes.bfloat16


# --- writing ----------------------------------------------------------------


def choose_chunk_shape(shape: Iterable[int], itemsize: int,
                       max_bytes: int = MAX_CHUNK_BYTES) -> list[int]:
  """The largest chunk shape (greedily shrinking the largest dimension) dividing
  `shape` with at most `max_bytes` per chunk, the rule T5X writes with."""
  shape = [int(d) for d in shape]
  limit = max(1, max_bytes // max(1, itemsize))
  divisors = [[d for d in range(1, n + 1) if n % d == 0] or [1] for n in shape]
  chunk = [ds[-1] for ds in divisors]
  while int(np.prod(chunk, dtype=np.int64)) > limit:
    axis = int(np.argmax(chunk))
    divisors[axis].pop()
    chunk[axis] = divisors[axis][-1]
  return chunk


def zarr_dtype(dtype: np.dtype) -> str:
  """The zarr v2 dtype string tensorstore writes ('<f4', 'bfloat16', ...)."""
  dtype = np.dtype(dtype)
  return "bfloat16" if dtype.name == "bfloat16" else dtype.str


def is_inline(name: str, array: np.ndarray) -> bool:
  """Whether T5X keeps a leaf inside the msgpack file rather than as a zarr array.

  T5X writes a leaf inline when it has no partitioned axis: norm scales,
  scalars and the relative-position tables (replicated in T5X's rules), and
  the optimizer state of those.
  """
  return np.ndim(array) < 2 or "relpos_bias" in name.split("/")


def stored_spec(name: str, array: np.ndarray, *, gcs: bool,
                max_chunk_bytes: int = MAX_CHUNK_BYTES) -> dict[str, Any]:
  """The relative spec T5X stores in the msgpack for the leaf `name`."""
  path = name.replace("/", ".")
  kvstore = ({"driver": "gcs", "bucket": DUMMY_BUCKET, "path": path} if gcs
             else {"driver": "file", "path": path})
  return {
      "driver": "zarr",
      "kvstore": kvstore,
      "metadata": {
          "chunks": choose_chunk_shape(array.shape, array.dtype.itemsize, max_chunk_bytes),
          "compressor": {"id": "gzip", "level": 1},
          "dtype": zarr_dtype(array.dtype),
          "shape": [int(d) for d in array.shape],
      },
  }


def write_checkpoint(directory: epath.Path, optimizer: Mapping[str, Any], *,
                     version: int = VERSION, max_chunk_bytes: int = MAX_CHUNK_BYTES,
                     max_inflight_bytes: int = MAX_INFLIGHT_BYTES) -> None:
  """Writes `{"version", "optimizer"}` into an existing, empty `directory`.

  Args:
    directory: the (temporary) checkpoint directory; arrays go into
      subdirectories named after their flattened path with '.' separators.
    optimizer: {"target": params, "state": {...}} of numpy-convertible leaves
      (None leaves are kept, as T5X keeps untouched MultiOptimizer states).
    version: the T5X format version; only 3 is written.
    max_chunk_bytes: upper bound of one zarr chunk.
    max_inflight_bytes: bound on array bytes being written at once (at least
      one array), which bounds tensorstore's staging memory.

  The msgpack file is written last, after every array write has completed.
  """
  if version != VERSION:
    raise errors.UsageError(f"Only T5X checkpoint version {VERSION} can be written, got {version}.")
  gcs = os.fspath(directory).startswith("gs://")
  context = ts.Context(_TS_CONTEXT_SPEC)
  leaves = flatten_leaves(optimizer)
  stored: dict[str, Any] = {}
  writes: collections.deque = collections.deque()  # (future, bytes), oldest first
  inflight_bytes = 0
  try:
    for name, leaf in leaves.items():
      if leaf is None:
        stored[name] = None
        continue
      array = np.asarray(leaf)
      if is_inline(name, array):
        stored[name] = array
        continue
      spec = stored_spec(name, array, gcs=gcs, max_chunk_bytes=max_chunk_bytes)
      stored[name] = spec
      # Like reads, writes stage chunks in tensorstore buffers: bound what is in flight.
      while writes and inflight_bytes + array.nbytes > max_inflight_bytes:
        future, nbytes = writes.popleft()
        future.result()
        inflight_bytes -= nbytes
      store = ts.open(absolute_spec(spec, directory, name), create=True, open=True,
                      context=context).result()
      writes.append((store.write(array), array.nbytes))
      inflight_bytes += array.nbytes
  finally:
    # Never return (or raise) while tensorstore still writes into `directory`.
    for future, _ in writes:
      future.exception()
  for future, _ in writes:
    future.result()
  contents = {"version": version, "optimizer": traverse_util.unflatten_dict(stored, sep="/")}
  (directory / "checkpoint").write_bytes(serialization.msgpack_serialize(contents))
