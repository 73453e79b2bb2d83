"""Export / import: one .tar.gz that reproduces the entries byte for byte."""

from __future__ import annotations

import io
import pathlib
import tarfile

import pytest

from spot.library import EntryExistsError, LibraryError, PromptLibrary
from spot.library import archive


def _files(lib: PromptLibrary) -> dict[str, bytes]:
  root = pathlib.Path(lib.path) / "entries"
  return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_round_trip_byte_for_byte(lib, make_prompt, model, tmp_path):
  lib.add("a", make_prompt(1), model=model, embeddings={"s1": make_prompt(2), "s2": make_prompt(3)},
          metrics={"acc": 1.0}, meta={"k": "v"})
  lib.add("b", make_prompt(4, dim=4), model="small")
  out = tmp_path / "lib.tar.gz"
  assert archive.export(lib, str(out)) == ["a", "b"]
  copy = PromptLibrary(tmp_path / "copy")
  assert archive.import_archive(copy, str(out)) == ["a", "b"]
  assert _files(copy) == _files(lib)
  assert copy.entry("a") == lib.entry("a") and copy.check() == []
  # Reproducible: the same entries give the same archive bytes.
  again = tmp_path / "again.tar.gz"
  archive.export(copy, str(again))
  assert again.read_bytes() == out.read_bytes()

  with pytest.raises(EntryExistsError, match="a, b.*--overwrite"):
    archive.import_archive(copy, str(out))
  assert archive.import_archive(copy, str(out), overwrite=True) == ["a", "b"]
  only = tmp_path / "only.tar.gz"
  archive.export(lib, str(only), ["b"])
  assert archive.import_archive(PromptLibrary(tmp_path / "c3"), str(only)) == ["b"]


def test_bad_archives(lib, make_prompt, model, tmp_path):
  with pytest.raises(LibraryError, match="cannot read archive"):
    archive.import_archive(lib, str(tmp_path / "missing.tar.gz"))
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    info = tarfile.TarInfo("../../etc/evil")
    info.size = 1
    tar.addfile(info, io.BytesIO(b"x"))
  (tmp_path / "evil.tar.gz").write_bytes(buf.getvalue())
  with pytest.raises(LibraryError, match="not a spot library export"):
    archive.import_archive(lib, str(tmp_path / "evil.tar.gz"))
  lib.add("a", make_prompt(1), model=model)
  with pytest.raises(LibraryError, match="no entry 'zz'"):
    archive.export(lib, str(tmp_path / "x.tar.gz"), ["zz"])
  assert not (tmp_path / "x.tar.gz").exists()
