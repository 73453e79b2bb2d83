"""Concurrent writers from several processes: nothing lost, the index consistent."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

from spot.library import PromptLibrary, similarity
from spot.library import index as index_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
WORKERS, ADDS = 4, 25

WORKER = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np
    from spot.library import EntryExistsError, PromptLibrary, rank
    path, worker, adds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    lib = PromptLibrary(path)
    rng = np.random.default_rng(worker)
    won = []
    for i in range(adds):
      lib.add(f"w{worker}_{i:02d}", rng.normal(size=(4, 8)).astype(np.float32),
              model="m", embeddings={"step_1": rng.normal(size=(3, 8)).astype(np.float32)})
      if i % 5 == 0:  # readers rebuild and rewrite the index while others add
        rank(lib, rng.normal(size=(3, 8)), top_k=3)
      if i == adds // 2:
        try:
          lib.add("shared", np.full((4, 8), worker, np.float32), model="m")
          won.append("shared")
        except EntryExistsError:
          pass
        lib.add("contended", np.full((4, 8), worker, np.float32), model="m", overwrite=True)
    print(json.dumps(won))
""")


def test_concurrent_adds_lose_nothing(tmp_path):
  path = tmp_path / "lib"
  env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(path), str(w), str(ADDS)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for w in range(WORKERS)]
  results = [p.communicate(timeout=120) for p in procs]
  for p, (out, err) in zip(procs, results):
    assert p.returncode == 0, err
    assert "Warning" not in err, err  # no reader ever saw a partial entry
  wins = sum(len(json.loads(out)) for out, _ in results)
  assert wins == 1  # exactly one writer created "shared"; the others were refused

  lib = PromptLibrary(path)
  expected = {f"w{w}_{i:02d}" for w in range(WORKERS) for i in range(ADDS)}
  assert set(lib.names()) == expected | {"shared", "contended"}
  assert lib.check() == []
  assert set(np.unique(lib.prompt("contended"))) <= set(range(WORKERS))
  assert list((path / "tmp").iterdir()) == []

  # The index on disk now matches the listing and the arrays exactly.
  index = index_lib.loads((path / "index/index.npz").read_bytes())
  assert set(index.rows) == expected | {"shared", "contended"}
  assert not index.problems
  mi = index.models["m"]
  for name in ("w0_00", "w3_24", "contended"):
    for metric in similarity.METRICS:
      want = similarity.summary_vector(lib.embedding(name), metric)
      np.testing.assert_allclose(mi.vectors[metric][mi.position(name)], want, rtol=1e-5,
                                 atol=1e-6)
