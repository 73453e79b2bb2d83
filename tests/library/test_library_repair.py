"""`check` / `repair`: stale staging of killed writers, a damaged or stale index."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

from spot.library import LibraryWarning, PromptLibrary, rank, similarity
from spot.library import fs
from spot.library import index as index_lib
from spot.library.cli import main

REPO = pathlib.Path(__file__).resolve().parents[2]

# Adds entries forever; each add holds its staging folder for a while (a slow
# disk), so a kill -9 lands mid-write with a staging folder in tmp/.
WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from spot.library import PromptLibrary, fs
    path, worker = sys.argv[1], int(sys.argv[2])
    real = fs.write_synced
    def slow(p, data):
      real(p, data)
      time.sleep(0.05)
    fs.write_synced = slow
    lib = PromptLibrary(path)
    rng = np.random.default_rng(worker)
    i = 0
    while True:
      lib.add(f"k{worker}_{i:03d}", rng.normal(size=(4, 8)).astype(np.float32), model="m",
              embeddings={"step_1": rng.normal(size=(3, 8)).astype(np.float32)})
      print(f"k{worker}_{i:03d}", flush=True)
      i += 1
""")


def _env() -> dict[str, str]:
  return dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def test_writers_killed_mid_write_leave_staging_that_check_cleans(tmp_path, make_prompt):
  path = tmp_path / "lib"
  lib = PromptLibrary(path)
  lib.add("kept", make_prompt(1, 4), model="m")
  procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for w in range(2)]
  committed: list[str] = []
  for p in procs:  # let each commit a couple of entries, then kill it mid-write
    for _ in range(2):
      committed.append(p.stdout.readline().strip())
    assert all(committed), p.stderr.read()
  deadline = time.time() + 30
  while time.time() < deadline and not any(
      d.suffix == ".tmp" for d in (path / "tmp").iterdir()):
    time.sleep(0.01)
  for p in procs:
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
  stale = sorted(d.name for d in (path / "tmp").iterdir() if d.is_dir())
  assert stale and all(n.endswith(".tmp") for n in stale)

  # A live writer's staging (its lock held) is not touched.
  live = path / "tmp" / "live.0000.tmp"
  with fs.held_lock(live):
    live.mkdir()
    rc, out, err = _cli("--library", path, "--json", "check")
    assert live.is_dir()
  assert rc == 0, err
  report = json.loads(out)
  cleaned = {r["name"] for r in report if r["repaired"]}
  assert {f"tmp/{n}" for n in stale} <= cleaned and "tmp/live.0000.tmp" not in cleaned
  assert all("interrupted writer" in r["problem"] for r in report if r["name"].startswith("tmp/"))
  left = {d.name for d in (path / "tmp").iterdir()}
  assert not set(stale) & left and not any(n.endswith(".lock") for n in left - {"live.0000.tmp"})

  # Nothing committed was lost, and every entry still verifies.
  names = PromptLibrary(path).names()
  assert set(committed) | {"kept"} <= set(names)
  assert PromptLibrary(path).check() == []
  np.testing.assert_array_equal(PromptLibrary(path).prompt("kept"), make_prompt(1, 4))
  fs.rmtree(live)
  rc, out, _ = _cli("--library", path, "--json", "check")
  assert rc == 0 and json.loads(out) == []


def test_unlocked_staging_ages_out(tmp_path):
  tmp = tmp_path / "tmp"
  tmp.mkdir()
  fresh, old = tmp / "a.1.tmp", tmp / "b.2.tmp"
  fresh.mkdir()
  old.mkdir()
  stamp = time.time() - fs.STALE_UNLOCKED_S - 5
  os.utime(old, (stamp, stamp))
  assert not fs.is_stale(fresh) and fs.is_stale(old)  # no lock file: only by age
  (tmp / "c.3.tmp").mkdir()
  (tmp / "c.3.tmp.lock").write_bytes(b"")  # a lock file nobody holds: its writer died
  assert fs.is_stale(tmp / "c.3.tmp")


def _cli(*argv):
  import io
  out, err = io.StringIO(), io.StringIO()
  rc = main([str(a) for a in argv], stdout=out, stderr=err)
  return rc, out.getvalue(), err.getvalue()


def _library(tmp_path, make_prompt, n=6) -> PromptLibrary:
  lib = PromptLibrary(tmp_path / "lib")
  for i in range(n):
    lib.add(f"e{i}", make_prompt(i), model="m")
  return lib


def test_same_size_damage_to_the_index_is_caught_and_rebuilt(tmp_path, make_prompt):
  lib = _library(tmp_path, make_prompt)
  query = make_prompt(0)
  want = rank(lib, query)
  index_file = tmp_path / "lib" / "index" / "index.npz"
  data = bytearray(index_file.read_bytes())
  data[-64:-60] = np.array([7e29], "<f4").tobytes()  # one float of the last matrix row
  index_file.write_bytes(bytes(data))
  assert index_lib.load(bytes(data))[1].startswith("its checksum does not match")

  fresh = PromptLibrary(tmp_path / "lib")
  with pytest.warns(LibraryWarning, match="index cache index/index.npz is damaged"):
    got = rank(fresh, query)
  assert [n for n, _ in got] == [n for n, _ in want]
  np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-6)
  assert max(abs(s) for _, s in got) <= 1.0 + 1e-6
  assert index_lib.load(index_file.read_bytes())[1] == ""  # rewritten whole

  # `check` reports a damaged index and rebuilds it.
  index_file.write_bytes(bytes(data))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", LibraryWarning)
    rc, out, _ = _cli("--library", tmp_path / "lib", "--json", "check")
  assert rc == 0
  (problem,) = json.loads(out)
  assert problem["name"] == "index/index.npz" and problem["repaired"]
  assert "checksum" in problem["problem"] and problem["problem"].endswith("rebuilt")
  assert index_lib.load(index_file.read_bytes())[1] == ""


def test_a_prompt_rewritten_in_place_is_not_ranked_from_the_stale_row(tmp_path, make_prompt):
  lib = _library(tmp_path, make_prompt)
  query = make_prompt(3)
  assert rank(lib, query, top_k=1)[0] == ("e3", pytest.approx(1.0, abs=1e-6))
  # Rewrite e3's prompt in place with other values of the same size: its folder
  # and entry.json are untouched, so the listing cannot see it.
  target = tmp_path / "lib/entries/e3/prompt.npy"
  with open(target, "r+b") as f:
    f.seek(-32, os.SEEK_END)
    f.write(np.full(8, 9.0, np.float32).tobytes())
  fresh = PromptLibrary(tmp_path / "lib")
  with pytest.warns(LibraryWarning) as caught:
    ranked = rank(fresh, query, top_k=3)
  text = " ".join(str(w.message) for w in caught)
  assert "'e3' changed since the index was built" in text and "checksum mismatch" in text
  assert "e3" not in [n for n, _ in ranked]  # corrupt now: left out, not ranked first
  want = sorted(((f"e{i}", similarity.avg_tokens(query, make_prompt(i))) for i in range(6)
                 if i != 3), key=lambda t: -t[1])[:3]
  assert [n for n, _ in ranked] == [n for n, _ in want]
  np.testing.assert_allclose([s for _, s in ranked], [s for _, s in want], rtol=1e-5)


def test_check_rebuilds_an_index_whose_rows_disagree_with_the_entries(tmp_path, make_prompt):
  lib = _library(tmp_path, make_prompt, n=3)
  lib.names()
  index_file = tmp_path / "lib" / "index" / "index.npz"
  index = index_lib.loads(index_file.read_bytes())
  mi = index.models["m"]
  bad = {m: np.array(v) for m, v in mi.vectors.items()}
  bad["avg_tokens"][1] = -bad["avg_tokens"][1]  # a well-formed cache with wrong scores
  forged = index_lib.Index(rows=index.rows, models={"m": index_lib.ModelIndex(mi.names, bad)},
                           stamp=index.stamp)
  index_file.write_bytes(index_lib.dumps(forged))
  rc, out, _ = _cli("--library", tmp_path / "lib", "--json", "check")
  assert rc == 0
  (problem,) = json.loads(out)
  assert problem["name"] == "index/index.npz" and "e1" in problem["problem"]
  rebuilt = index_lib.loads(index_file.read_bytes()).models["m"]
  np.testing.assert_allclose(rebuilt.vectors["avg_tokens"][1],
                             similarity.avg_tokens_vector(make_prompt(1)), rtol=1e-5)
