"""File operations the prompt library needs, on local disk and object stores.

Plain atomic writes and the meaning of "remote" are `spot.io`'s; this module
keeps what the library needs beyond them: exclusive creation, directory renames
that refuse to replace, staging writes, locks and change stamps.

Local paths are `pathlib.Path`s and use `os` directly: a directory rename is
atomic and refuses to replace a non-empty directory, which is what makes
concurrent adds safe. Object stores (`gs://...`) are `etils.epath.Path`s
(imported only then: it is slow to import); they have no atomic directory
rename, so callers order their writes instead (arrays first, `entry.json` last).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import pathlib
import shutil
import time
import uuid
from concurrent import futures
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, TypeVar, Union

from spot import io as spot_io

if TYPE_CHECKING:
  from etils import epath

PathLike = Union[str, os.PathLike]
Path = Union[pathlib.Path, "epath.Path"]
T = TypeVar("T")
R = TypeVar("R")

_THREADS = 16
_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
# File times are coarse (a clock tick), so a directory changed this recently may
# change again without its times moving: its stamp is not trusted.
RACY_NS = 2_000_000_000
LOCK_SUFFIX = ".lock"
# A staging folder without a lock file, or a lock file without its folder, is
# left alone this long: its writer may be between creating one and the other.
STALE_UNLOCKED_S = 60.0


def is_local(path: PathLike) -> bool:
  """True for a path on this machine's file system (not a URL; see `spot.io.is_remote`)."""
  return not spot_io.is_remote(path)


def path(p: PathLike) -> Path:
  """`p` as a `pathlib.Path` when local, else as an `etils.epath.Path`."""
  if is_local(p):
    return pathlib.Path(p)
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(p)


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def read_bytes(p: PathLike) -> bytes:
  return path(p).read_bytes()


def map_file(path: Path, *, local: bool) -> Union[bytes, mmap.mmap]:
  """A read-only memory map of a local file (bytes if empty or remote).

  The map keeps reading the file it opened even if a writer replaces it.
  """
  if not local:
    return read_bytes(path)
  with open(os.fspath(path), "rb") as f:
    if os.fstat(f.fileno()).st_size == 0:
      return b""
    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def write_synced(path: str, data: bytes) -> None:
  """Writes a local file and flushes it to disk (before it is renamed into place)."""
  with open(path, "wb") as f:
    f.write(data)
    f.flush()
    _datasync(f.fileno())


def write_bytes(path: Path, data: bytes, *, local: Optional[bool] = None) -> None:
  """Writes `data` at `path` atomically: `spot.io.write_bytes_atomic`.

  `local` is accepted for older callers; the path itself says where it lives.
  """
  del local
  spot_io.write_bytes_atomic(path, data)


def create_exclusive(path: Path, data: bytes, *, local: bool) -> bool:
  """Writes `data` at `path` unless it exists; returns whether this call wrote it.

  Atomic on local disk (a hard link of a complete temp file fails if the name
  is taken); best effort (check, then write) on an object store.
  """
  if not local:
    if path.exists():
      return False
    path.write_bytes(data)
    return True
  tmp = f"{os.fspath(path)}.tmp-{uuid.uuid4().hex}"
  write_synced(tmp, data)
  try:
    os.link(tmp, os.fspath(path))
    return True
  except FileExistsError:
    return False
  finally:
    os.remove(tmp)


def rename_dir(src: Path, dst: Path) -> bool:
  """Renames local directory `src` to `dst`; False if `dst` is taken (not empty)."""
  try:
    os.rename(os.fspath(src), os.fspath(dst))
    return True
  except OSError as e:
    if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
      return False
    raise


def rmtree(path: Path) -> None:
  """Deletes a folder tree, if present."""
  if isinstance(path, pathlib.Path):
    shutil.rmtree(path, ignore_errors=True)
  elif path.exists():
    path.rmtree()


def list_dirs(path: Path) -> list[str]:
  """Names of the sub-directories of `path` (not hidden), sorted; [] if absent."""
  if isinstance(path, pathlib.Path):
    try:
      with os.scandir(path) as it:
        names = [d.name for d in it if d.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
      return []
  else:
    if not path.exists():
      return []
    names = [p.name for p in path.iterdir() if p.is_dir()]
  return sorted(n for n in names if not n.startswith("."))


def _fingerprint(dir_stat: os.stat_result, marker_stat: os.stat_result) -> str:
  return (f"{dir_stat.st_ino}:{dir_stat.st_mtime_ns}:{dir_stat.st_ctime_ns}:"
          f"{marker_stat.st_ino}:{marker_stat.st_mtime_ns}:{marker_stat.st_size}")


def local_fingerprint(path: Path, marker: str) -> Optional[str]:
  """Change detector of one local directory: None if absent, "" without `marker`.

  It combines the directory's inode and times with the stat of its `marker`
  file, so a replaced, removed or rewritten entry gets a new value without
  reading any file.
  """
  try:
    st = os.stat(os.fspath(path), follow_symlinks=False)
  except FileNotFoundError:
    return None
  try:
    return _fingerprint(st, os.stat(os.path.join(os.fspath(path), marker)))
  except FileNotFoundError:
    return ""


def local_fingerprints(path: Path, marker: str) -> dict[str, str]:
  """`local_fingerprint` of each sub-directory of a local `path` (one scandir)."""
  out = {}
  try:
    it = os.scandir(os.fspath(path))
  except FileNotFoundError:
    return out
  with it:
    for d in it:
      if d.name.startswith(".") or not d.is_dir(follow_symlinks=False):
        continue
      try:
        st = d.stat(follow_symlinks=False)
        out[d.name] = _fingerprint(st, os.stat(os.path.join(d.path, marker)))
      except FileNotFoundError:
        out[d.name] = ""
  return out


def dir_stamp(path: Path) -> str:
  """A local directory's identity and times: equal stamps mean no entry was
  added, removed or renamed in it. "" when it changed too recently to tell.
  """
  st = os.stat(os.fspath(path))
  if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS:
    return ""
  return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_nlink}:{st.st_size}"


def parallel_map(fn: Callable[[T], R], items: Iterable[T],
                 threads: Optional[int] = None) -> list[R]:
  """`[fn(x) for x in items]` on a thread pool (I/O and hashing release the GIL)."""
  items = list(items)
  if len(items) < 8:
    return [fn(x) for x in items]
  with futures.ThreadPoolExecutor(threads or _THREADS) as pool:
    return list(pool.map(fn, items))


def files_stamp(folder: Path, rels: Iterable[str]) -> str:
  """Identity, time and size of files `rels` under a local `folder`, as one string.

  A file rewritten in place, replaced or removed changes it (a rewrite of the
  same size within one clock tick aside), without reading the file.
  """
  parts = []
  for rel in rels:
    try:
      st = os.stat(os.path.join(os.fspath(folder), rel))
      parts.append(f"{rel}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
    except FileNotFoundError:
      parts.append(f"{rel}:-")
  return ";".join(parts)


def stamp_files(stamp: str) -> list[str]:
  """The file names a `files_stamp` covers."""
  return [part.split(":", 1)[0] for part in stamp.split(";") if part]


@contextlib.contextmanager
def held_lock(folder: Path) -> Iterator[None]:
  """Holds an exclusive lock on `<folder>.lock` while the block stages `folder`.

  The lock is an advisory `flock`, which the kernel releases when its holder
  dies (even by kill -9): a staging folder whose lock nobody holds belongs to
  a writer that is gone (see `is_stale`). The lock file is removed on exit,
  after the block has removed or renamed `folder`.
  """
  lock = os.fspath(folder) + LOCK_SUFFIX
  fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(lock)
    os.close(fd)


def lock_is_held(lock: str) -> Optional[bool]:
  """Whether a live process holds `lock` (see `held_lock`); None if it does not exist."""
  try:
    fd = os.open(lock, os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    return True
  finally:
    os.close(fd)  # closing releases a lock this call took
  return False


def is_stale(path: Path, now: Optional[float] = None) -> bool:
  """Whether a staging item in a local tmp/ folder was left by a writer that is gone.

  A folder is stale when nobody holds its `.lock` (its writer died), or, with
  no lock file at all, once it is older than STALE_UNLOCKED_S; a lock file
  alone (its folder gone) likewise once it is that old and unheld.
  """
  p = os.fspath(path)
  now = time.time() if now is None else now
  try:
    age = now - os.stat(p, follow_symlinks=False).st_mtime
  except FileNotFoundError:
    return False
  if p.endswith(LOCK_SUFFIX):
    return not lock_is_held(p) and age > STALE_UNLOCKED_S
  held = lock_is_held(p + LOCK_SUFFIX)
  return held is False or (held is None and age > STALE_UNLOCKED_S)
