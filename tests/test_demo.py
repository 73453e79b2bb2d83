"""`spot demo --quick` end to end: report, library, plots, checkpoints, and a resume.

The demo runs once per session in a subprocess (a fresh JAX, as a user gets
it); the tests below read what it left in its output directory.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _spot(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return subprocess.run([sys.executable, "-m", "spot.cli", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[pathlib.Path, str, float]:
  """(output directory, stdout, wall seconds) of `spot demo --quick`."""
  out = tmp_path_factory.mktemp("demo") / "out"
  start = time.perf_counter()
  proc = _spot("demo", "--quick", "--out", str(out))
  seconds = time.perf_counter() - start
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return out, proc.stdout, seconds


def test_prints_progress_table_and_verdict(demo):
  out, stdout, _ = demo
  assert "[demo " in stdout and "source prompt on synthetic_sentiment_a" in stdout
  assert "train step" in stdout  # the trainer's own progress lines
  assert re.search(r"target task +random score +generic SPoT score +retrieved score", stdout)
  assert "Transfer helped" in stdout or "Transfer did NOT help" in stdout
  assert f"Everything is under {out}" in stdout


def test_results_are_real(demo):
  out, _, _ = demo
  results = json.loads((out / "results.json").read_text())
  from spot.demo.config import QUICK
  assert [t["task"] for t in results["targets"]] == list(QUICK.targets)
  for t in results["targets"]:
    for init in ("random", "spot", "retrieved"):
      run = t["runs"][init]
      steps = [s for s, _ in run["curve"]]
      assert steps[0] == 0 and steps[-1] == QUICK.target_steps
      assert all(0 <= v <= 100 for _, v in run["curve"])
    # The ranking covers every single-task source, best first.
    scores = [r["score"] for r in t["ranking"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == len(QUICK.skills)
  mean = lambda init: sum(t["runs"][init]["score"] for t in results["targets"])
  assert results["transfer_helped"] == (max(mean("spot"), mean("retrieved")) > mean("random"))


def test_report_links_resolve(demo):
  out, _, _ = demo
  report = (out / "report.md").read_text()
  assert "| target task |" in report and "## The prompt library" in report
  links = re.findall(r"\]\(([^)]+)\)", report)
  assert len(links) > 10
  for link in links:
    assert not os.path.isabs(link), link
    assert (out / link).exists(), f"report.md links to missing {link}"


def test_plots_are_pngs(demo):
  out, _, _ = demo
  from PIL import Image
  from spot.demo.config import QUICK
  plots = sorted((out / "plots").glob("*.png"))
  names = {p.name for p in plots}
  assert {"library_heatmap.png", "target_similarity.png", "pretrain_loss.png"} <= names
  assert {f"curve_{t}.png" for t in QUICK.targets} <= names
  for path in plots:
    with Image.open(path) as image:
      image.verify()
      assert image.format == "PNG" and min(image.size) > 100


def test_library_holds_sources_and_answers_queries(demo):
  out, _, _ = demo
  import numpy as np
  from spot.demo.config import QUICK
  from spot.library import PromptLibrary, rank
  lib = PromptLibrary(out / "library")
  sources = [f"synthetic_{s}_a" for s in QUICK.skills]
  assert sorted(lib.names()) == sorted(sources + ["synthetic_sources"])
  for entry in lib.entries():
    assert entry.prompt_shape == (QUICK.prompt_length, QUICK.model["emb_dim"])
    assert entry.embedding_keys == (f"step_{QUICK.embedding_step}",)
    assert entry.model.checkpoint.startswith(str(out / "base"))
  listed = _spot("library", "--library", str(out / "library"), "list", "--json", timeout=300)
  assert listed.returncode == 0, listed.stderr
  assert {e["name"] for e in json.loads(listed.stdout)} == set(lib.names())
  # A target's saved task embedding ranks the sources as the demo reported.
  results = json.loads((out / "results.json").read_text())
  target = results["targets"][0]
  embedding = np.load(out / "runs" / f"target_{target['task']}_random" / "task_embedding.npy")
  ranked = rank(lib, embedding, exclude=["synthetic_sources"])
  assert [n for n, _ in ranked] == [r["name"] for r in target["ranking"]]


def test_base_model_is_a_t5x_checkpoint(demo):
  out, _, _ = demo
  from spot.checkpoints import load_t5x
  (ckpt,) = (out / "base").glob("checkpoint_*")
  params = load_t5x(str(ckpt))
  assert "token_embedder" in params and "encoder" in params and "decoder" in params


def test_runs_have_model_dirs_and_tensorboard(demo):
  out, _, _ = demo
  runs = sorted(p for p in (out / "runs").iterdir() if p.is_dir())
  assert len(runs) == 1 + 5 + 2 * 3  # pretrain, 4 sources + mixture, 2 targets x 3 inits
  for run in runs:
    assert (run / "run.json").exists() and (run / "demo_run.json").exists()
    assert list((run / "train").glob("events.out.tfevents.*")), run
  assert list((out / "runs" / "target_synthetic_add_b_retrieved" / "eval").glob("events.*"))


def test_rerun_resumes_without_training(demo):
  out, _, _ = demo
  proc = _spot("demo", "--quick", "--out", str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "already trained" in proc.stdout and "train step" not in proc.stdout


def test_refuses_foreign_or_mismatched_out(demo, tmp_path):
  out, _, _ = demo
  proc = _spot("demo", "--out", str(out))  # the default preset into the quick demo's folder
  assert proc.returncode != 0 and "other settings" in proc.stderr
  (tmp_path / "notes.txt").write_text("mine")
  proc = _spot("demo", "--quick", "--out", str(tmp_path))
  assert proc.returncode != 0 and "not a demo" in proc.stderr


def test_real_rejects_bad_arguments(capsys):
  from spot.demo import cli
  ckpt = ["--checkpoint", "/ckpt/t5/checkpoint_1"]
  assert cli.main(["--real", "--dry-run"]) == 2
  assert "--checkpoint PATH is required" in capsys.readouterr().err
  assert cli.main(["--dry-run"]) == 2  # --dry-run goes with --real
  assert cli.main(["--real", *ckpt, "--targets", "nope"]) == 2
  assert "not SuperGLUE task keys" in capsys.readouterr().err
  assert cli.main(["--real", *ckpt, "--dry-run", "--target-steps", "300"]) == 2
  assert "embedding_step=1000 must not exceed" in capsys.readouterr().err


def test_real_dry_run_plan(capsys):
  from spot.demo import cli
  assert cli.main(["--real", "--checkpoint", "/ckpt/t5/checkpoint_1", "--dry-run",
                   "--targets", "cb", "rte", "--target-steps", "300",
                   "--embedding-step", "100"]) == 0
  plan = capsys.readouterr().out
  for task in ("spot_glue_mnli", "spot_glue_sst2", "spot_glue_rte", "spot_glue_mix",
               "spot_superglue_cb", "spot_superglue_rte"):
    assert task in plan
  assert "spot_superglue_boolq" not in plan and "300 steps" in plan
