"""spot.io: one meaning of remote, atomic writes that keep the old file on failure."""

from __future__ import annotations

import os

import pytest

from spot import errors
from spot import io as spot_io
from spot.library import fs


@pytest.mark.parametrize("path, remote", [
    ("gs://bucket/run", True), ("s3://b/x", True), ("/tmp/run", False), ("run", False),
])
def test_one_definition_of_remote(path, remote):
  assert spot_io.is_remote(path) is remote
  assert fs.is_local(path) is (not remote)
  assert spot_io.absolute(path) == (path if remote else os.path.abspath(path))


def test_open_atomic_publishes_whole_and_keeps_the_old_file_on_failure(tmp_path):
  path = tmp_path / "sub" / "a.tar.gz"
  with spot_io.open_atomic(path) as f:
    f.write(b"first")
  assert path.read_bytes() == b"first"
  with pytest.raises(RuntimeError, match="killed"):
    with spot_io.open_atomic(path) as f:
      f.write(b"half of the second")
      raise RuntimeError("killed")
  assert path.read_bytes() == b"first"
  assert os.listdir(path.parent) == ["a.tar.gz"]


def test_library_writes_go_through_the_atomic_writer(tmp_path, monkeypatch):
  path = tmp_path / "index.json"
  fs.write_bytes(path, b"{}", local=True)
  monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "full")))
  with pytest.raises(OSError):
    fs.write_bytes(path, b'{"a": 1}')
  assert path.read_bytes() == b"{}" and os.listdir(tmp_path) == ["index.json"]


def test_read_json_is_a_typed_error_naming_the_file(tmp_path):
  path = tmp_path / "run.json"
  path.write_text("{")
  with pytest.raises(errors.CheckpointError, match=r"run file .*run.json is not valid JSON"):
    spot_io.read_json(path, "run file", error=errors.CheckpointError)
  with pytest.raises(FileNotFoundError):
    spot_io.read_json(tmp_path / "none.json", "run file")
