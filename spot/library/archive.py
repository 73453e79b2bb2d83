"""Export and import of library entries as one portable `.tar.gz` archive.

The archive holds `spot-library/manifest.json` (the entry names and each
file's size, first) and each entry's files verbatim under
`spot-library/entries/<name>/`, so an import reproduces them byte for byte;
checksums are verified on both sides. Archives are reproducible: fixed member
times and owners, no gzip timestamp.

An import reads untrusted input. Every member's size is checked from its tar
header before it is read (against the size the manifest declares, or, for
archives without sizes, a fixed maximum), members are read in bounded chunks,
and the whole archive is verified before the first entry is installed, so a
bad archive (not a .tar.gz, a zip, a malformed manifest, a path outside the
archive root, an oversized or truncated member) raises `ArchiveError` and
leaves the library as it was.
"""

from __future__ import annotations

import gzip
import io
import json
import posixpath
import tarfile
import zlib
from typing import Callable, Iterable, Iterator, Optional

from spot import io as spot_io
from spot.library import entry as entry_lib
from spot.library import fs
from spot.library.errors import ArchiveError, EntryExistsError, LibraryError
from spot.library.store import PromptLibrary

ROOT = "spot-library"
MANIFEST = f"{ROOT}/manifest.json"
FORMAT = "spot.library.archive"
VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20
# Largest member accepted from an archive whose manifest declares no sizes: a
# prompt [1000, 4096] float32 is 16 MiB.
MAX_MEMBER_BYTES = 64 << 20
_CHUNK = 1 << 20
_FIX = "create archives with `spot library export FILE`"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  info.mode = 0o644
  tar.addfile(info, io.BytesIO(data))


def export(library: PromptLibrary, out: str, names: Optional[Iterable[str]] = None) -> list[str]:
  """Writes entries `names` (default: all valid ones) to archive `out`."""
  names = library.names() if names is None else list(dict.fromkeys(names))
  for name in names:
    library.entry(name)  # not found or corrupt: fail before writing anything
  with spot_io.open_atomic(spot_io.absolute(out)) as raw, \
      gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz, \
      tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
    files = {name: library.files(name) for name in names}
    manifest = {"format": FORMAT, "version": VERSION, "entries": names,
                "sizes": {n: {rel: len(d) for rel, d in sorted(f.items())}
                          for n, f in files.items()}}
    _add(tar, MANIFEST, json.dumps(manifest, indent=2).encode())
    for name in names:
      for rel, data in sorted(files[name].items()):
        _add(tar, f"{ROOT}/entries/{name}/{rel}", data)
  return names


def _member_path(member: tarfile.TarInfo, names: set[str], archive: str) -> tuple[str, str]:
  """(entry name, path inside the entry) of an archive member, checked."""
  parts = member.name.split("/")
  if (not member.isfile() or len(parts) < 4 or parts[:2] != [ROOT, "entries"]
      or parts[2] not in names or posixpath.normpath(member.name) != member.name
      or ".." in parts):
    raise ArchiveError(f"{archive}: unexpected member {member.name!r} (a link, a path outside "
                       f"{ROOT}/entries/, or an entry the manifest does not list); is it a "
                       f"spot library export? {_FIX}.")
  return parts[2], "/".join(parts[3:])


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int,
                 archive: str) -> bytes:
  """A member's bytes, refused from its header size before reading if over `limit`,
  and read in chunks that stop at `limit` whatever the stream holds."""
  if member.size > limit:
    raise ArchiveError(f"{archive}: member {member.name!r} is {member.size} bytes, over the "
                       f"{limit} allowed for it; the archive is damaged or not a spot library "
                       f"export ({_FIX}).")
  f = tar.extractfile(member)
  if f is None:
    raise ArchiveError(f"{archive}: member {member.name!r} is not a regular file.")
  chunks, total = [], 0
  while chunk := f.read(min(_CHUNK, limit + 1 - total)):
    chunks.append(chunk)
    total += len(chunk)
    if total > limit:
      raise ArchiveError(f"{archive}: member {member.name!r} holds more than {limit} bytes.")
  if total != member.size:
    raise ArchiveError(f"{archive}: member {member.name!r} is truncated ({total} of "
                       f"{member.size} bytes).")
  return b"".join(chunks)


def _manifest(tar: tarfile.TarFile, archive: str) -> tuple[list[str], Optional[dict]]:
  """(entry names, {name: {file: size}} or None) from the first member, checked."""
  first = tar.next()
  if first is None or first.name != MANIFEST or not first.isfile():
    raise ArchiveError(f"{archive} is not a spot library export (no {MANIFEST} first); "
                       f"{_FIX}.")
  try:
    manifest = json.loads(_read_member(tar, first, MAX_MANIFEST_BYTES, archive))
  except (ValueError, UnicodeDecodeError) as e:
    raise ArchiveError(f"{archive}: malformed {MANIFEST} (not JSON: {e}); {_FIX}.") from e
  if not isinstance(manifest, dict):
    raise ArchiveError(f"{archive}: malformed {MANIFEST} (a JSON {type(manifest).__name__}, "
                       f"not an object); {_FIX}.")
  if manifest.get("format") != FORMAT or not isinstance(manifest.get("version"), int):
    raise ArchiveError(f"{archive}: {MANIFEST} has format {manifest.get('format')!r}, not "
                       f"{FORMAT!r}; {_FIX}.")
  if manifest["version"] > VERSION:
    raise ArchiveError(f"{archive} has format {FORMAT} version {manifest['version']}; this "
                       f"spot reads versions <= {VERSION}: upgrade spot.")
  names, sizes = manifest.get("entries"), manifest.get("sizes")
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise ArchiveError(f"{archive}: malformed {MANIFEST} ('entries' must be a list of entry "
                       f"names); {_FIX}.")
  try:
    names = [entry_lib.check_name(n) for n in names]
  except LibraryError as e:
    raise ArchiveError(f"{archive}: malformed {MANIFEST}: {e}") from e
  if len(set(names)) != len(names):
    raise ArchiveError(f"{archive}: malformed {MANIFEST} (an entry is listed twice).")
  if sizes is not None:
    ok = isinstance(sizes, dict) and set(sizes) == set(names) and all(
        isinstance(f, dict) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                    for v in f.values()) for f in sizes.values())
    if not ok:
      raise ArchiveError(f"{archive}: malformed {MANIFEST} ('sizes' must map each listed "
                         f"entry to {{file: bytes}}); {_FIX}.")
  return names, sizes


def _entries(tar: tarfile.TarFile, names: set[str], sizes: Optional[dict], archive: str
             ) -> Iterator[tuple[str, dict[str, bytes]]]:
  """(name, files) of each entry after the manifest (entries are contiguous)."""
  current, files, seen = None, {}, set()
  while (member := tar.next()) is not None:  # iter(tar) would restart at the manifest
    name, rel = _member_path(member, names, archive)
    if name != current:
      if current is not None:
        yield current, files
      if name in seen:
        raise ArchiveError(f"{archive}: the files of entry {name!r} are not contiguous; "
                           f"{_FIX}.")
      current, files = name, {}
      seen.add(name)
    if sizes is not None and rel not in sizes[name]:
      raise ArchiveError(f"{archive}: member {member.name!r} is not in the manifest; {_FIX}.")
    limit = sizes[name][rel] if sizes is not None else MAX_MEMBER_BYTES
    files[rel] = _read_member(tar, member, limit, archive)
  if current is not None:
    yield current, files


def _scan(archive: str, each: Callable[[list[str], str, dict[str, bytes]], None]
          ) -> list[str]:
  """Reads and checks the whole archive, calling `each(names, name, files)` per entry."""
  path = spot_io.absolute(archive)
  try:
    raw = fs.path(path).open("rb")
  except IsADirectoryError as e:
    raise ArchiveError(f"cannot read archive {archive}: it is a directory; pass the .tar.gz "
                       "file.") from e
  except (FileNotFoundError, OSError) as e:
    raise ArchiveError(f"cannot read archive {archive}: {e}") from e
  with raw:
    head = raw.read(4)
    raw.seek(0)
    if head.startswith(b"PK"):
      raise ArchiveError(f"{archive} is a zip file, not a spot library export (.tar.gz); "
                         f"{_FIX}.")
    done = []
    try:
      with tarfile.open(fileobj=raw, mode="r:*") as tar:
        names, sizes = _manifest(tar, archive)
        for name, files in _entries(tar, set(names), sizes, archive):
          if sizes is not None and set(files) != set(sizes[name]):
            raise ArchiveError(f"{archive}: entry {name!r} lacks files its manifest lists "
                               f"({', '.join(sorted(set(sizes[name]) - set(files)))}).")
          each(names, name, files)
          done.append(name)
    except tarfile.ReadError as e:
      raise ArchiveError(f"{archive} is not a spot library export: not a readable .tar.gz "
                         f"({e}); {_FIX}.") from e
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
      raise ArchiveError(f"{archive} is damaged or truncated ({type(e).__name__}: {e}); "
                         "export it again.") from e
  missing = sorted(set(names) - set(done))
  if missing:
    raise ArchiveError(f"{archive} is truncated: its manifest lists {', '.join(missing)} "
                       "but it holds no files for them.")
  return done


def import_archive(library: PromptLibrary, archive: str, *, overwrite: bool = False) -> list[str]:
  """Adds every entry of `archive` to `library`; returns their names.

  The archive is read twice: once to check everything (sizes, manifest,
  paths, each entry's checksums, name collisions), then to install; nothing
  is written unless the first pass found no problem.

  Raises:
    ArchiveError: the file is missing, not a .tar.gz spot export, malformed,
      oversized or truncated.
    CorruptEntryError: an entry's files do not match its entry.json.
    EntryExistsError: an entry exists and `overwrite` is False.
  """
  names = _scan(archive, lambda _, name, files: library.verify_files(name, files))
  if not overwrite and library.exists():
    taken = sorted(set(names) & set(library.names()))
    if taken:
      raise EntryExistsError(f"{archive} holds entries that exist in {library.path}: "
                             f"{', '.join(taken)}; pass --overwrite to replace them.")

  def install(_: list[str], name: str, files: dict[str, bytes]) -> None:
    library.install_files(name, files, overwrite=overwrite)

  return _scan(archive, install)
