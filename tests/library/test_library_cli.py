"""`spot library ...`: every command, its --json output and its errors."""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

from spot.library import PromptLibrary
from spot.library.cli import main

REPO = pathlib.Path(__file__).resolve().parents[2]


def run(*argv: str) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  rc = main([str(a) for a in argv], stdout=out, stderr=err)
  return rc, out.getvalue(), err.getvalue()


def ok(*argv: str) -> str:
  rc, out, err = run(*argv)
  assert rc == 0, err
  return out


@pytest.fixture
def files(tmp_path, make_prompt) -> dict[str, pathlib.Path]:
  paths = {}
  for name, seed, tokens, dim in [("p1", 1, 5, 8), ("p2", 2, 5, 8), ("p3", 3, 5, 8),
                                  ("e1", 11, 3, 8), ("small", 4, 5, 4)]:
    paths[name] = tmp_path / f"{name}.npy"
    np.save(paths[name], make_prompt(seed, tokens, dim))
  return paths


def test_add_list_show_query_remove(tmp_path, files, model, make_prompt):
  lib = str(tmp_path / "lib")
  out = ok("--library", lib, "add", "a", "--prompt", files["p1"], "--model", model,
           "--task", "glue_mnli", "--embedding", f"step_500={files['e1']}", files["p2"],
           "--meta", "seed=3", "owner=me", "--metrics", "accuracy=91.5")
  assert "added 'a'" in out and "step_500, p2" in out
  ok("--library", lib, "add", "b", "--prompt", files["p3"], "--model", model, "--task", "glue_qnli")
  ok("add", "c", "--library", lib, "--prompt", files["p2"], "--model", model)  # --library after

  listed = json.loads(ok("--library", lib, "list", "--json"))
  assert [e["name"] for e in listed] == ["a", "b", "c"]
  assert listed[0]["model"] == model and listed[0]["task"] == "glue_mnli"
  assert listed[0]["prompt_shape"] == [5, 8] and listed[0]["embeddings"] == ["step_500", "p2"]
  assert json.loads(ok("--json", "--library", lib, "list")) == listed  # --json before
  text = ok("--library", lib, "list")
  assert "glue_mnli" in text and "5x8" in text and "3 entries" in text

  shown = json.loads(ok("--library", lib, "show", "a", "--json"))
  assert shown["meta"] == {"seed": "3", "owner": "me"} and shown["metrics"] == {"accuracy": 91.5}
  assert shown["embeddings"][0]["key"] == "step_500" and len(shown["prompt"]["sha256"]) == 64
  assert "step_500 3x8" in ok("--library", lib, "show", "a")
  stored = PromptLibrary(lib)
  assert stored.embedding("a", "step_500").tobytes() == np.load(files["e1"]).tobytes()

  ranked = json.loads(ok("--library", lib, "query", "--embedding", files["e1"], "--json"))
  assert list(ranked[0]) == ["name", "score"] and ranked[0]["name"] == "a"
  assert ranked[0]["score"] == pytest.approx(1.0, abs=1e-6)
  assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
  by_entry = json.loads(ok("--library", lib, "query", "--entry", "a", "--top-k", "1",
                           "--metric", "per_token", "--json"))
  assert len(by_entry) == 1 and by_entry[0]["name"] != "a"
  assert "RANK" in ok("--library", lib, "query", "--entry", "b")

  init = tmp_path / "init.npy"
  best = json.loads(ok("--library", lib, "query", "--entry", "c", "--top-k", "1", "--json"))
  assert "wrote top1 initialisation 5x8" in ok("--library", lib, "query", "--entry", "c",
                                               "--top-k", "1", "--init", "top1", "--init-out",
                                               init)
  np.testing.assert_array_equal(np.load(init), stored.prompt(best[0]["name"]))
  mixture = json.loads(ok("--library", lib, "query", "--entry", "c", "--top-k", "2",
                          "--mixture", "--target-task", "super_glue_cb", "--json"))
  assert sorted(mixture[:2]) == ["glue_mnli", "glue_qnli"] and mixture[2] == "super_glue_cb"

  assert json.loads(ok("--library", lib, "remove", "c", "--json")) == {"removed": "c"}
  assert [e["name"] for e in json.loads(ok("--library", lib, "list", "--json"))] == ["a", "b"]


def test_errors_name_the_fix(tmp_path, files, model):
  lib = str(tmp_path / "lib")
  rc, _, err = run("--library", lib, "list")
  assert rc == 3 and "no prompt library" in err and "add NAME --prompt" in err
  rc, _, err = run("list")
  assert rc == 2 and "--library PATH" in err
  ok("--library", lib, "add", "mnli", "--prompt", files["p1"], "--model", model)
  rc, _, err = run("--library", lib, "show", "mnl")
  assert rc == 3 and "did you mean mnli" in err
  rc, _, err = run("--library", lib, "add", "x", "--prompt", files["small"], "--model", model)
  assert rc == 3 and "another base model" in err
  bad = tmp_path / "bad.npy"
  np.save(bad, np.ones(8, np.float32))
  rc, _, err = run("--library", lib, "add", "x", "--prompt", bad, "--model", model)
  assert rc == 3 and "[tokens, embed_dim]" in err
  rc, _, err = run("--library", lib, "add", "x", "--prompt", tmp_path / "nope.npy", "--model",
                   model)
  assert rc == 3 and "cannot read --prompt" in err
  rc, _, err = run("--library", lib, "add", "mnli", "--prompt", files["p2"], "--model", model)
  assert rc == 3 and "--overwrite" in err
  ok("--library", lib, "add", "mnli", "--prompt", files["p2"], "--model", model, "--overwrite")
  rc, _, err = run("--library", lib, "query", "--embedding", files["small"])
  assert rc == 3 and "another base model" in err
  rc, _, err = run("--library", lib, "query", "--entry", "mnli", "--model", "mt5_base")
  assert rc == 3 and "belongs to model" in err
  rc, _, err = run("--library", lib, "query", "--entry", "mnli", "--init", "top1")
  assert rc == 2 and "--init-out" in err


def test_corrupt_entry_is_warned_and_checked(tmp_path, files, model):
  lib = str(tmp_path / "lib")
  ok("--library", lib, "add", "good", "--prompt", files["p1"], "--model", model)
  ok("--library", lib, "add", "bad", "--prompt", files["p2"], "--model", model)
  (tmp_path / "lib/entries/bad/prompt.npy").unlink()
  rc, out, err = run("--library", lib, "list", "--json")
  assert rc == 0 and [e["name"] for e in json.loads(out)] == ["good"]
  assert "warning:" in err and "'bad'" in err and "missing file prompt.npy" in err
  rc, out, _ = run("--library", lib, "check", "--json")
  assert rc == 3 and json.loads(out)[0]["name"] == "bad"
  ok("--library", lib, "remove", "bad")
  assert "all 1 entries are valid" in ok("--library", lib, "check")


def test_from_model_dir(tmp_path, model, make_prompt):
  run_dir = tmp_path / "run"
  for step in (100, 10000, 30000):
    ckpt = run_dir / "numpy_checkpoints" / f"checkpoint_{step}"
    ckpt.mkdir(parents=True)
    with open(ckpt / "encoder.prompt.prompt.prompt", "wb") as f:  # raw np.save, no suffix
      np.save(f, make_prompt(step))
  (run_dir / "config.gin").write_text("TRAIN_STEPS = 30000\n")
  lib = str(tmp_path / "lib")
  ok("--library", lib, "add", "run", "--from-model-dir", run_dir, "--embedding-step", "10000",
     "--model", model)
  stored = PromptLibrary(lib)
  assert stored.prompt("run").tobytes() == make_prompt(30000).tobytes()
  assert stored.embedding("run", "step_10000").tobytes() == make_prompt(10000).tobytes()
  e = stored.entry("run")
  assert e.provenance.step == 30000 and e.provenance.gin_config == "TRAIN_STEPS = 30000\n"
  ok("--library", lib, "add", "early", "--from-model-dir", run_dir, "--step", "100",
     "--model", model)
  assert stored.prompt("early").tobytes() == make_prompt(100).tobytes()
  rc, _, err = run("--library", lib, "add", "x", "--from-model-dir", run_dir, "--step", "7",
                   "--model", model)
  assert rc == 3 and "steps 100, 10000, 30000" in err
  rc, _, err = run("--library", lib, "add", "x", "--from-model-dir", tmp_path, "--model", model)
  assert rc == 3 and "numpy_checkpoints" in err


def test_from_t5x_reads_one_variable(tmp_path, model, make_prompt, monkeypatch):
  calls = []

  def load_t5x_variable(path, variable_path):
    calls.append((path, variable_path))
    return make_prompt(5)

  fake = types.ModuleType("spot.checkpoints")
  fake.load_t5x_variable = load_t5x_variable
  monkeypatch.setitem(sys.modules, "spot.checkpoints", fake)
  ckpt = tmp_path / "model_dir" / "checkpoint_1100"
  ckpt.mkdir(parents=True)
  lib = str(tmp_path / "lib")
  ok("--library", lib, "add", "t", "--from-t5x", ckpt, "--model", model)
  assert calls == [(str(ckpt), "encoder/prompt/prompt/prompt")]
  stored = PromptLibrary(lib)
  assert stored.prompt("t").tobytes() == make_prompt(5).tobytes()
  assert stored.entry("t").provenance.step == 1100


def test_from_real_t5x_checkpoint(tmp_path, shared_data):
  checkpoints = pytest.importorskip("spot.checkpoints")
  if not hasattr(checkpoints, "load_t5x_variable"):
    pytest.skip("spot.checkpoints.load_t5x_variable is not written yet")
  lib = str(tmp_path / "lib")
  ckpt = shared_data / "t5x_tiny_checkpoint" / "checkpoint_3"
  ok("--library", lib, "add", "emb", "--from-t5x", ckpt, "--variable",
     "encoder/layers_0/attention/query/kernel", "--model", "t5_1_1_tiny")
  assert PromptLibrary(lib).entry("emb").prompt_shape[1] == 4


def test_export_import_and_heatmap(tmp_path, files, model):
  lib, copy = str(tmp_path / "lib"), str(tmp_path / "copy")
  for name in ("p1", "p2", "p3"):
    ok("--library", lib, "add", name, "--prompt", files[name], "--model", model)
  archive = tmp_path / "lib.tar.gz"
  assert json.loads(ok("--library", lib, "export", archive, "--json"))["entries"] == ["p1", "p2",
                                                                                      "p3"]
  assert "imported 3 entries" in ok("--library", copy, "import", archive)
  for name in ("p1", "p2", "p3"):
    a = tmp_path / f"lib/entries/{name}"
    b = tmp_path / f"copy/entries/{name}"
    assert (a / "prompt.npy").read_bytes() == (b / "prompt.npy").read_bytes()
    assert (a / "entry.json").read_bytes() == (b / "entry.json").read_bytes()

  png = tmp_path / "plots" / "heat.png"
  payload = json.loads(ok("--library", lib, "heatmap", "--out", png, "--json"))
  assert sorted(payload["names"]) == ["p1", "p2", "p3"]
  assert np.allclose(np.diag(payload["matrix"]), 1.0, atol=1e-5)
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  image = matplotlib.image.imread(png)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_spot_entry_point_on_real_prompts(tmp_path, real_prompts, model):
  """`python -m spot.cli library ...` end to end on the released prompts."""
  lib = str(tmp_path / "lib")
  env = dict(os.environ, PYTHONPATH=str(REPO))

  def spot(*argv):
    return subprocess.run([sys.executable, "-m", "spot.cli", "library", "--library", lib,
                           *map(str, argv)], env=env, capture_output=True, text=True,
                          check=True).stdout

  for name, path in real_prompts.items():
    ok("--library", lib, "add", name, "--prompt", path, "--model", model, "--task", f"glue_{name}")
  ranked = json.loads(spot("query", "--entry", "rte", "--json"))
  want = {n: float(np.load(p).mean(0) @ np.load(real_prompts["rte"]).mean(0)
                   / np.linalg.norm(np.load(p).mean(0))
                   / np.linalg.norm(np.load(real_prompts["rte"]).mean(0)))
          for n, p in real_prompts.items() if n != "rte"}
  assert [r["name"] for r in ranked] == sorted(want, key=want.get, reverse=True)
  for r in ranked:
    assert r["score"] == pytest.approx(want[r["name"]], abs=1e-5)
  assert "mrpc" in spot("list")


def test_prompt_length_filters_candidates(tmp_path, make_prompt, model):
  lib = str(tmp_path / "lib")
  for name, seed, tokens in [("l5a", 1, 5), ("l5b", 2, 5), ("l3", 3, 3)]:
    np.save(tmp_path / f"{name}.npy", make_prompt(seed, tokens))
    ok("--library", lib, "add", name, "--prompt", tmp_path / f"{name}.npy", "--model", model)
  query = tmp_path / "q.npy"
  np.save(query, make_prompt(3, 3) + 0.01 * make_prompt(9, 3))  # closest to l3
  init = tmp_path / "init.npy"
  rc, _, err = run("--library", lib, "query", "--embedding", query, "--top-k", "3",
                   "--init", "weighted_average", "--init-out", init)
  assert rc == 3 and "--prompt-length N" in err and "here 3, 5" in err
  ranked = json.loads(ok("--library", lib, "query", "--embedding", query, "--top-k", "3",
                         "--prompt-length", "5", "--init", "weighted_average", "--init-out",
                         init, "--json"))
  assert sorted(r["name"] for r in ranked) == ["l5a", "l5b"]
  stored = PromptLibrary(lib)
  scores = np.maximum([r["score"] for r in ranked], 0)
  want = sum(w * stored.prompt(r["name"]).astype(np.float64)
             for w, r in zip(scores / scores.sum(), ranked))
  np.testing.assert_allclose(np.load(init), want, rtol=1e-5, atol=1e-6)
  assert [r["name"] for r in json.loads(ok("--library", lib, "query", "--embedding", query,
                                           "--prompt-length", "3", "--json"))] == ["l3"]


def test_list_json_into_a_closed_pipe_is_quiet(tmp_path, make_prompt, model):
  """`spot library list --json | head -1` through the console entry point: no traceback."""
  lib = PromptLibrary(tmp_path / "lib")
  for i in range(400):
    lib.add(f"entry_{i:04d}", make_prompt(i % 7), model=model, task="spot_glue_rte")
  env = dict(os.environ, PYTHONPATH=str(REPO))
  script = pathlib.Path(sys.executable).parent / "spot"  # the console script, when installed
  spot = str(script) if script.is_file() else f"{sys.executable} -m spot.cli"
  proc = subprocess.run(
      f"{spot} library --library {tmp_path / 'lib'} list --json | head -1; "
      "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", env=env,
      capture_output=True, text=True, timeout=120)
  assert proc.stdout == "[\n"
  assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
  assert proc.returncode == 0
  listed = subprocess.run([sys.executable, "-m", "spot.cli", "library", "--library",
                           str(tmp_path / "lib"), "list", "--json"], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
  assert len(json.loads(listed.stdout)) == 400
