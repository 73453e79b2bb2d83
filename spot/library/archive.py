"""Export and import of library entries as one portable `.tar.gz` archive.

The archive holds `spot-library/manifest.json` (the entry names, first) and
each entry's files verbatim under `spot-library/entries/<name>/`, so an import
reproduces them byte for byte; checksums are verified on both sides. Archives
are reproducible: fixed member times and owners, no gzip timestamp.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import posixpath
import tarfile
import uuid
from typing import Iterable, Iterator, Optional

from spot.library import entry as entry_lib
from spot.library import fs
from spot.library.errors import EntryExistsError, LibraryError
from spot.library.store import PromptLibrary

ROOT = "spot-library"
MANIFEST = f"{ROOT}/manifest.json"
FORMAT = "spot.library.archive"
VERSION = 1


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
  out_path = fs.path(out)
  local = fs.is_local(out)
  target = f"{os.fspath(out_path)}.tmp-{uuid.uuid4().hex}" if local else out_path
  try:
    with fs.path(target).open("wb") as raw, \
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz, \
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
      manifest = {"format": FORMAT, "version": VERSION, "entries": names}
      _add(tar, MANIFEST, json.dumps(manifest, indent=2).encode())
      for name in names:
        for rel, data in sorted(library.files(name).items()):
          _add(tar, f"{ROOT}/entries/{name}/{rel}", data)
    if local:
      os.replace(target, os.fspath(out_path))
  finally:
    if local and os.path.exists(target):
      os.remove(target)
  return names


def _member_path(member: tarfile.TarInfo, names: set[str]) -> tuple[str, str]:
  """(entry name, path inside the entry) of an archive member, checked."""
  parts = member.name.split("/")
  if (not member.isfile() or len(parts) < 4 or parts[:2] != [ROOT, "entries"]
      or parts[2] not in names or posixpath.normpath(member.name) != member.name
      or ".." in parts):
    raise LibraryError(f"unexpected member {member.name!r} in the archive; is it a spot "
                       "library export?")
  return parts[2], "/".join(parts[3:])


def _entries(tar: tarfile.TarFile, names: set[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
  """(name, files) of each entry after the manifest (entries are contiguous)."""
  current, files = None, {}
  while (member := tar.next()) is not None:  # iter(tar) would restart at the manifest
    name, rel = _member_path(member, names)
    if name != current and current is not None:
      yield current, files
      files = {}
    current = name
    files[rel] = tar.extractfile(member).read()
  if current is not None:
    yield current, files


def import_archive(library: PromptLibrary, archive: str, *, overwrite: bool = False) -> list[str]:
  """Adds every entry of `archive` to `library`; returns their names."""
  try:
    raw = fs.path(archive).open("rb")
  except (FileNotFoundError, OSError) as e:
    raise LibraryError(f"cannot read archive {archive}: {e}") from e
  with raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
    first = tar.next()
    if first is None or first.name != MANIFEST:
      raise LibraryError(f"{archive} is not a spot library export (no {MANIFEST} first); "
                         "create one with `spot library export FILE`.")
    manifest = json.loads(tar.extractfile(first).read())
    if manifest.get("format") != FORMAT or manifest.get("version", 0) > VERSION:
      raise LibraryError(f"{archive} has format {manifest.get('format')!r} version "
                         f"{manifest.get('version')}; this spot reads {FORMAT} <= {VERSION}.")
    names = [entry_lib.check_name(n) for n in manifest["entries"]]
    if not overwrite and library.exists():
      taken = sorted(set(names) & set(library.names()))
      if taken:
        raise EntryExistsError(f"{archive} holds entries that exist in {library.path}: "
                               f"{', '.join(taken)}; pass --overwrite to replace them.")
    done = []
    for name, files in _entries(tar, set(names)):
      library.install_files(name, files, overwrite=overwrite)
      done.append(name)
  missing = sorted(set(names) - set(done))
  if missing:
    raise LibraryError(f"{archive} is truncated: its manifest lists {', '.join(missing)} "
                       "but it holds no files for them.")
  return done
