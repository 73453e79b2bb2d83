"""The store: byte-for-byte round trip, atomic adds, corrupt entries, the index."""

from __future__ import annotations

import json
import re
import time
import os
import pathlib
import warnings

import numpy as np
import pytest

import spot
from spot.library import (CorruptEntryError, EntryExistsError, EntryNotFoundError,
                          LibraryError, LibraryNotFoundError, LibraryWarning, ModelInfo,
                          ModelMismatchError, PromptLibrary, Provenance)
from spot.library import fs
from spot.library import index as index_lib


def _add_full(lib, make_prompt, model, name="sst2", **kw):
  return lib.add(
      name, make_prompt(1), model=ModelInfo(model, checkpoint="gs://b/ckpt/checkpoint_1100000"),
      embeddings={"step_500": make_prompt(2, tokens=3), "step_10000": make_prompt(3)},
      task="glue_sst2_v2", metrics={"accuracy": 95.07, "f1": 0.5},
      provenance=Provenance(gin_config="PROMPT_LENGTH = 5\n", step=30000),
      meta={"seed": 7, "note": "größer"}, **kw)


def test_round_trip_is_byte_for_byte(lib, make_prompt, model):
  added = _add_full(lib, make_prompt, model)
  again = PromptLibrary(lib.path)
  assert again.entry("sst2") == added
  assert again.prompt("sst2").tobytes() == make_prompt(1).tobytes()
  assert again.prompt("sst2").dtype == np.float32 and again.prompt("sst2").shape == (5, 8)
  assert again.embedding("sst2", "step_500").tobytes() == make_prompt(2, tokens=3).tobytes()
  assert again.embedding("sst2").tobytes() == make_prompt(2, tokens=3).tobytes()  # the first
  assert again.embedding("sst2", "step_10000").tobytes() == make_prompt(3).tobytes()
  e = again.entry("sst2")
  assert e.model == ModelInfo(model, "gs://b/ckpt/checkpoint_1100000", 8)
  assert e.task == "glue_sst2_v2" and e.embedding_keys == ("step_500", "step_10000")
  assert e.metrics == {"accuracy": 95.07, "f1": 0.5}
  assert e.meta == {"seed": 7, "note": "größer"}
  assert e.provenance.gin_config == "PROMPT_LENGTH = 5\n" and e.provenance.step == 30000
  assert e.provenance.spot_version == spot.__version__ and e.provenance.created
  # The files on disk: entry.json carries each array's sha256.
  meta = json.loads((lib.path / "entries/sst2/entry.json").read_text())
  assert meta["prompt"]["file"] == "prompt.npy" and len(meta["prompt"]["sha256"]) == 64
  assert np.load(lib.path / "entries/sst2/embeddings/step_10000.npy").tobytes() == \
      make_prompt(3).tobytes()


def test_other_float_dtypes_are_stored_as_float32(lib, make_prompt, model):
  lib.add("f64", make_prompt(1).astype(np.float64), model=model)
  assert lib.prompt("f64").dtype == np.float32
  np.testing.assert_array_equal(lib.prompt("f64"), make_prompt(1))


def test_collision_and_overwrite(lib, make_prompt, model):
  lib.add("a", make_prompt(1), model=model)
  with pytest.raises(EntryExistsError, match="overwrite"):
    lib.add("a", make_prompt(2), model=model)
  np.testing.assert_array_equal(lib.prompt("a"), make_prompt(1))
  lib.add("a", make_prompt(2), model=model, overwrite=True)
  np.testing.assert_array_equal(lib.prompt("a"), make_prompt(2))
  assert lib.names() == ["a"]
  assert list((lib.path / "tmp").iterdir()) == []  # staging cleaned up


def test_remove(lib, make_prompt, model):
  lib.add("a", make_prompt(1), model=model)
  lib.add("b", make_prompt(2), model=model)
  lib.remove("a")
  assert lib.names() == ["b"] and "a" not in lib and len(lib) == 1
  with pytest.raises(EntryNotFoundError, match="no entry 'a'"):
    lib.remove("a")


def test_bad_input_errors(lib, make_prompt, model, tmp_path):
  with pytest.raises(LibraryNotFoundError, match="no prompt library.*add NAME"):
    PromptLibrary(tmp_path / "nowhere").names()
  with pytest.raises(LibraryError, match="invalid entry name"):
    lib.add("../x", make_prompt(1), model=model)
  with pytest.raises(ModelMismatchError, match=r"shape \(8,\).*\[tokens, embed_dim\]"):
    lib.add("x", np.ones(8, np.float32), model=model)
  with pytest.raises(ModelMismatchError, match="NaN"):
    lib.add("x", np.full((2, 8), np.nan, np.float32), model=model)
  with pytest.raises(ModelMismatchError, match="same base model"):
    lib.add("x", make_prompt(1), model=model, embeddings={"e": make_prompt(2, dim=4)})
  lib.add("ok", make_prompt(1), model=model)
  with pytest.raises(ModelMismatchError, match="embed dim 8.*dim 4.*another base model"):
    lib.add("x", make_prompt(1, dim=4), model=model)
  lib.add("x", make_prompt(1, dim=4), model="t5_1_1_small")  # another model is fine
  with pytest.raises(EntryNotFoundError, match="did you mean ok"):
    lib.entry("okk")


def _corrupt_library(lib, make_prompt, model):
  for i, name in enumerate(["good", "no_prompt", "bad_json", "bad_sum", "partial", "renamed"]):
    lib.add(name, make_prompt(i), model=model, embeddings={"e": make_prompt(10 + i)})
  entries = lib.path / "entries"
  (entries / "no_prompt/prompt.npy").unlink()
  (entries / "bad_json/entry.json").write_text("{not json")
  data = bytearray((entries / "bad_sum/embeddings/e.npy").read_bytes())
  data[-1] ^= 0xFF
  (entries / "bad_sum/embeddings/e.npy").write_bytes(bytes(data))
  (entries / "partial/entry.json").unlink()
  os.rename(entries / "renamed", entries / "other")


def test_corrupt_entries_are_skipped_and_reported(lib, make_prompt, model):
  lib.add("warm", make_prompt(99), model=model)
  lib.names()  # an index exists before the damage: it must notice
  _corrupt_library(lib, make_prompt, model)
  with pytest.warns(LibraryWarning) as caught:
    assert PromptLibrary(lib.path).names() == ["good", "warm"]
  text = "\n".join(str(w.message) for w in caught)
  for name, problem in [("no_prompt", "missing file prompt.npy"), ("bad_json", "bad entry.json"),
                        ("bad_sum", "checksum mismatch in embeddings/e.npy"),
                        ("partial", "partial entry: entry.json is missing"), ("other", "not its directory")]:
    assert re.search(f"skipping entry {name!r}: [^\n]*{problem}", text), (name, text)
  problems = dict(lib.check())
  assert sorted(problems) == ["bad_json", "bad_sum", "no_prompt", "other", "partial"]
  with pytest.raises(CorruptEntryError, match="'bad_sum'.*checksum.*remove bad_sum"):
    lib.entry("bad_sum")
  with pytest.raises(CorruptEntryError, match="checksum"):
    lib.embedding("bad_sum", "e")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", LibraryWarning)
    assert [e.name for e in lib.entries()] == ["good", "warm"]
  lib.remove("bad_sum")  # the fix the error names
  assert "bad_sum" not in dict(lib.check())


def test_in_place_damage_is_caught_on_read_and_by_check(lib, make_prompt, model):
  lib.add("a", make_prompt(1), model=model)
  lib.names()
  path = lib.path / "entries/a/prompt.npy"
  data = bytearray(path.read_bytes())
  data[-1] ^= 0xFF
  with open(path, "r+b") as f:  # rewrite in place: the directory does not change
    f.write(bytes(data))
  with pytest.raises(CorruptEntryError, match="checksum"):
    lib.prompt("a")
  assert [n for n, _ in lib.check()] == ["a"]


def test_index_is_incremental_and_survives_a_bad_cache(lib, make_prompt, model, monkeypatch):
  for i in range(5):
    lib.add(f"e{i}", make_prompt(i), model=model)
  assert len(lib.names()) == 5
  loaded = []
  original = PromptLibrary._index_row

  def spy(self, name, fingerprint):
    loaded.append(name)
    return original(self, name, fingerprint)

  monkeypatch.setattr(PromptLibrary, "_index_row", spy)
  fresh = PromptLibrary(lib.path)
  fresh.names()
  assert loaded == []  # everything came from index/index.npz
  lib.add("e5", make_prompt(5), model=model)
  lib.add("e1", make_prompt(11), model=model, overwrite=True)
  assert fresh.names() == [f"e{i}" for i in range(6)]
  assert sorted(loaded) == ["e1", "e5"]
  mi = fresh.index().models[model]
  np.testing.assert_allclose(mi.vectors["avg_tokens"][mi.position("e1")] @
                             mi.vectors["avg_tokens"][mi.position("e1")], 1.0, rtol=1e-6)
  (lib.path / "index/index.npz").write_bytes(b"garbage")
  assert PromptLibrary(lib.path).names() == [f"e{i}" for i in range(6)]
  assert index_lib.loads(b"garbage") == index_lib.EMPTY


def test_object_store_protocol(tmp_path, make_prompt, model):
  """The gs:// write order (arrays, then entry.json), exercised on local disk."""
  lib = PromptLibrary(tmp_path / "remote", local=False)
  added = lib.add("a", make_prompt(1), model=model, embeddings={"e": make_prompt(2)})
  assert lib.entry("a") == added and lib.names() == ["a"]
  with pytest.raises(EntryExistsError):
    lib.add("a", make_prompt(3), model=model)
  lib.add("a", make_prompt(3), model=model, overwrite=True)
  assert lib.prompt("a").tobytes() == make_prompt(3).tobytes()
  left = sorted(str(p.relative_to(lib.path / "entries/a"))
                for p in pathlib.Path(lib.path / "entries/a").rglob("*") if p.is_file())
  assert left == ["entry.json", lib.entry("a").prompt.file]  # the old arrays are gone
  assert lib.entry("a").prompt.file.startswith("prompt-")
  # An add in progress (arrays written, entry.json not yet) reads as partial.
  (lib.path / "entries/b").mkdir()
  (lib.path / "entries/b/prompt.npy").write_bytes(b"x")
  with pytest.warns(LibraryWarning, match="'b'.*entry.json is missing"):
    assert lib.names() == ["a"]
  lib.remove("a")
  with pytest.warns(LibraryWarning):
    assert lib.names() == []


def test_entries_of_other_models_are_listed_apart(lib, make_prompt, model):
  lib.add("a", make_prompt(1), model=model, task="t1")
  lib.add("b", make_prompt(2, dim=4), model="mt5_base", task="t2")
  assert lib.models() == {"mt5_base": 4, model: 8}
  assert lib.names(model="mt5_base") == ["b"]
  assert [e.name for e in lib.entries(task="t1")] == ["a"]
  assert lib.entry("a").summary()["prompt_shape"] == [5, 8]


def test_path_may_be_a_string(tmp_path: pathlib.Path, make_prompt, model):
  lib = PromptLibrary(str(tmp_path / "s"))
  lib.add("a", make_prompt(1), model=model)
  assert repr(lib).startswith("PromptLibrary(") and lib.names() == ["a"]


def test_unchanged_listing_is_not_rescanned(lib, make_prompt, model, monkeypatch):
  monkeypatch.setattr(fs, "RACY_NS", 0)  # trust even fresh timestamps in this test
  for i in range(3):
    lib.add(f"e{i}", make_prompt(i), model=model)
  old = time.time_ns() - 10**10
  os.utime(os.fspath(lib.path / "entries"), ns=(old, old))
  assert lib.names() == ["e0", "e1", "e2"]
  scans = []
  original = PromptLibrary._fingerprints
  monkeypatch.setattr(PromptLibrary, "_fingerprints",
                      lambda self: scans.append(1) or original(self))
  assert PromptLibrary(lib.path).names() == ["e0", "e1", "e2"]  # stamp read from index.npz
  assert lib.names() == ["e0", "e1", "e2"] and scans == []
  lib.add("e3", make_prompt(3), model=model)
  assert lib.names() == ["e0", "e1", "e2", "e3"] and scans == [1]
  lib.remove("e0")
  assert lib.names() == ["e1", "e2", "e3"]


def test_gs_paths_use_etils_and_the_object_store_protocol():
  lib = PromptLibrary("gs://some-bucket/prompt-library")  # nothing is read yet
  assert not lib._local and os.fspath(lib.path) == "gs://some-bucket/prompt-library"
  assert type(lib.path).__module__.startswith("etils.")
  assert fs.is_local("/tmp/x") and fs.is_local("relative/dir") and not fs.is_local("gs://b/x")
