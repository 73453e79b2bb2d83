"""`import` of bad archives: a typed one-line error, exit code 3, the library unchanged."""

from __future__ import annotations

import gzip
import io
import json
import pathlib
import resource
import tarfile
import time
import zipfile

import pytest

from spot import errors
from spot.library import ArchiveError, CorruptEntryError, PromptLibrary
from spot.library import archive
from spot.library.cli import main


def _snapshot(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
          if p.is_file() and "index" not in p.parts}


def _tar(members: list[tuple[str, bytes]], *, sizes: dict | None = None) -> bytes:
  buf = io.BytesIO()
  with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
      tarfile.open(fileobj=gz, mode="w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def _manifest(entries, **extra) -> tuple[str, bytes]:
  return archive.MANIFEST, json.dumps({"format": archive.FORMAT, "version": 1,
                                       "entries": entries, **extra}).encode()


@pytest.fixture
def target(tmp_path, make_prompt) -> PromptLibrary:
  lib = PromptLibrary(tmp_path / "target")
  lib.add("existing", make_prompt(1), model="m")
  return lib


@pytest.fixture
def good(tmp_path, make_prompt) -> pathlib.Path:
  src = PromptLibrary(tmp_path / "src")
  src.add("a", make_prompt(2), model="m", embeddings={"s": make_prompt(3)})
  src.add("b", make_prompt(4), model="m")
  out = tmp_path / "good.tar.gz"
  archive.export(src, str(out))
  return out


def _members(path: pathlib.Path) -> list[tuple[str, bytes]]:
  with tarfile.open(path) as tar:
    return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _cases(tmp_path: pathlib.Path, good: pathlib.Path) -> dict[str, tuple[bytes, str]]:
  members = _members(good)
  manifest = json.loads(members[0][1])
  zbuf = io.BytesIO()
  with zipfile.ZipFile(zbuf, "w") as z:
    z.writestr("spot-library/manifest.json", members[0][1])
  forged = dict(manifest, sizes={n: {r: s for r, s in f.items()} for n, f in
                                 manifest["sizes"].items()})
  forged["sizes"]["b"]["prompt.npy"] = 10  # the header says more than the manifest allows
  return {
      "not an archive": (b"this is not an archive at all\n" * 10, "not a readable .tar.gz"),
      "zip": (zbuf.getvalue(), "is a zip file"),
      "manifest not json": (_tar([(archive.MANIFEST, b"{not json")]), "malformed"),
      "manifest a list": (_tar([(archive.MANIFEST, b"[1, 2]")]), "malformed"),
      "manifest entries not names": (_tar([_manifest([1, "../x"])]), "malformed"),
      "manifest bad sizes": (_tar([_manifest(["a"], sizes={"a": {"prompt.npy": "big"}})]),
                             "malformed"),
      "foreign format": (_tar([(archive.MANIFEST, b'{"format": "x", "version": 1}')]),
                         "format 'x'"),
      "no manifest": (_tar(members[1:]), "no spot-library/manifest.json first"),
      "traversal": (_tar([members[0], ("spot-library/entries/a/../../../evil", b"x")]
                         + members[1:]), "unexpected member"),
      "absolute path": (_tar([members[0], ("/etc/evil", b"x")]), "unexpected member"),
      "oversized member": (_tar([(archive.MANIFEST, json.dumps(forged).encode())]
                                + members[1:]), "over the 10 allowed"),
      "truncated": (good.read_bytes()[:len(good.read_bytes()) // 2], "damaged or truncated"),
      "entry missing": (_tar([_manifest(["a", "b", "c"])] + members[1:]), "truncated"),
      "checksum": (_tar(members[:-1] + [(members[-1][0], b"\x93NUMPY" + members[-1][1][6:-1]
                                                   + b"!")]), "checksum mismatch"),
  }


def test_bad_archives_raise_typed_errors_and_change_nothing(tmp_path, good, target):
  before = _snapshot(target.path)
  for label, (data, message) in _cases(tmp_path, good).items():
    path = tmp_path / f"{label.replace(' ', '_')}.tar.gz"
    path.write_bytes(data)
    with pytest.raises((ArchiveError, CorruptEntryError), match=message) as caught:
      archive.import_archive(target, str(path))
    assert isinstance(caught.value, errors.DataError), label
    out, err = io.StringIO(), io.StringIO()
    rc = main(["--library", str(target.path), "import", str(path)], stdout=out, stderr=err)
    assert rc == errors.EXIT_DATA, (label, err.getvalue())
    assert err.getvalue().count("\n") == 1 and "Traceback" not in err.getvalue(), label
    assert _snapshot(target.path) == before, label
  assert target.names() == ["existing"]
  # The good archive still imports, byte for byte.
  assert archive.import_archive(target, str(good)) == ["a", "b"]
  assert target.check() == []


def test_an_oversized_member_is_refused_before_it_is_read(tmp_path, target, monkeypatch):
  """A 256 MB member in a tiny .tar.gz is refused from its header: fast, no memory."""
  monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 1 << 20)  # archives without sizes
  size = 256 << 20
  buf = io.BytesIO()
  with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=1) as gz, \
      tarfile.open(fileobj=gz, mode="w") as tar:
    data = json.dumps({"format": archive.FORMAT, "version": 1, "entries": ["a"]}).encode()
    info = tarfile.TarInfo(archive.MANIFEST)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    info = tarfile.TarInfo("spot-library/entries/a/prompt.npy")
    info.size = size

    class Zeros(io.RawIOBase):
      left = size

      def readable(self):
        return True

      def readinto(self, b):
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n

    tar.addfile(info, io.BufferedReader(Zeros(), 1 << 20))
  bomb = tmp_path / "bomb.tar.gz"
  bomb.write_bytes(buf.getvalue())
  assert bomb.stat().st_size < 2 << 20  # about 1 MB
  before = _snapshot(target.path)
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  start = time.perf_counter()
  with pytest.raises(ArchiveError, match=f"is {size} bytes, over the {1 << 20} allowed"):
    archive.import_archive(target, str(bomb))
  assert time.perf_counter() - start < 2.0
  assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100 << 10  # KiB: < 100 MB
  assert _snapshot(target.path) == before
