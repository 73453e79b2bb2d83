"""Path helpers, atomic writes and JSON reads for local and gs:// paths (the bottom
floor: imports nothing of spot; callers pass the error kind to raise).

A reader never sees half a file and a failed write (ENOSPC, a kill) leaves the
previous file as it was: local files go to a temporary sibling, are fsynced and
renamed over the target; object stores (gs://) write whole objects already.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import Any, BinaryIO, Iterator, Optional

from etils import epath


def is_remote(path: epath.PathLike) -> bool:
  """Whether `path` is a URL (gs://, s3://, ...): the one definition of "remote" in spot."""
  return "://" in os.fspath(path)


def absolute(path: epath.PathLike) -> str:
  """A local path made absolute (`~` expanded); a URL (gs://) as given.

  Orbax and tensorstore need absolute paths, and a path recorded in a run or a
  library must hold from any working directory; users type relative ones.
  """
  text = os.fspath(path)
  return text if is_remote(text) else os.path.abspath(os.path.expanduser(text))


def _temporary_sibling(path: epath.Path) -> str:
  return os.path.join(os.fspath(path.parent),
                      f".{path.name}.tmp{os.getpid()}.{secrets.token_hex(4)}")


@contextlib.contextmanager
def open_atomic(path: epath.PathLike) -> Iterator[BinaryIO]:
  """A binary file to stream into; `path` appears, whole, only when the block succeeds.

  For writes too big to hold in memory (an archive). Local: a temporary
  sibling, fsynced and renamed over `path`, removed when the block fails.
  Remote (gs://): the object itself, which its store publishes on close.
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    with path.open("wb") as f:
      yield f
    return
  tmp = _temporary_sibling(path)
  try:
    with open(tmp, "xb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, os.fspath(path))
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_bytes_atomic(path: epath.PathLike, data: bytes) -> None:
  """Writes `data` to `path` via a temporary sibling, fsync and rename.

  The temporary file is created with mode 0666 filtered by the umask (what
  `open()` gives, 0644 usually; `tempfile.mkstemp` would give 0600) and removed
  when the write fails, so the previous `path` stays as it was.
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    path.write_bytes(data)
    return
  tmp = _temporary_sibling(path)
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    try:
      view = memoryview(data)
      while view:
        view = view[os.write(fd, view):]
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(tmp, os.fspath(path))
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text_atomic(path: epath.PathLike, text: str) -> None:
  write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: epath.PathLike, obj: Any) -> None:
  """Writes JSON atomically (see `write_bytes_atomic`)."""
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def read_json(path: epath.PathLike, what: str, *, error: type[Exception] = ValueError,
              fix: str = "fix or delete it") -> dict[str, Any]:
  """The JSON object in `path`; `error` (spot passes a DataError kind) names `what`, the
  file and `fix`.

  A missing file raises FileNotFoundError (callers decide whether absence is
  fine); a file that is not JSON, or not an object, raises `error`.
  """
  path = epath.Path(path)
  try:
    value = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
    raise error(f"{what} {path} is not valid JSON ({e}); {fix}.") from e
  if not isinstance(value, dict):
    raise error(f"{what} {path} holds a {type(value).__name__}, expected a JSON object; "
                f"{fix}.")
  return value


def read_json_if_exists(path: epath.PathLike, what: str, *,
                        error: type[Exception] = ValueError,
                        fix: str = "fix or delete it") -> Optional[dict[str, Any]]:
  """`read_json`, or None when `path` does not exist."""
  try:
    return read_json(path, what, error=error, fix=fix)
  except FileNotFoundError:
    return None
