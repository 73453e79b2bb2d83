"""`add` from a spot run: run.json, metrics.json, --best, orbax run checkpoints, paths."""

from __future__ import annotations

import io
import json
import os
import pathlib

import numpy as np
import pytest

from spot import errors
from spot.library import PromptLibrary
from spot.library.cli import main

BASE = "/ckpt/t5_1_1_lm100k_base/checkpoint_1100000"


def run(*argv):
  out, err = io.StringIO(), io.StringIO()
  rc = main([str(a) for a in argv], stdout=out, stderr=err)
  return rc, out.getvalue(), err.getvalue()


def ok(*argv) -> str:
  rc, out, err = run(*argv)
  assert rc == 0, err
  return out


def _save_run_checkpoint(model_dir: pathlib.Path, kind: str, step: int, prompt: np.ndarray,
                         meta: dict) -> None:
  """What spot.train.checkpointing writes: orbax `state` + `meta` under <kind>/<step>."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  state = {"trainable": {"encoder": {"prompt": {"prompt": {"prompt": prompt}}}},
           "opt_state": {"v": np.zeros(prompt.shape[1], np.float32)},
           "step": np.asarray(step, np.int32)}
  opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                      enable_async_checkpointing=False)
  with ocp.CheckpointManager(model_dir / kind, options=opts) as mngr:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(dict(meta, step=step))),
              force=True)
    mngr.wait_until_finished()


@pytest.fixture
def model_dir(tmp_path, make_prompt) -> pathlib.Path:
  """A finished prompt run: numpy checkpoints at 10 and 40 (40 also the best), orbax
  checkpoints/40 and best/30 (best has no numpy copy), run.json and metrics.json."""
  d = tmp_path / "runs" / "rte"
  for step in (10, 40):
    ckpt = d / "numpy_checkpoints" / f"checkpoint_{step}"
    ckpt.mkdir(parents=True)
    with open(ckpt / "encoder.prompt.prompt.prompt", "wb") as f:
      np.save(f, make_prompt(step))
  run_meta = {"base_checkpoint": BASE, "task": "spot_glue_rte", "prompt_length": 5,
              "model_config": {"emb_dim": 8, "num_heads": 2}, "seed": 3,
              "trainable": ["encoder/prompt/prompt/prompt"]}
  (d / "run.json").write_text(json.dumps(run_meta))
  (d / "metrics.json").write_text(json.dumps({
      "task": "spot_glue_rte", "method": "prompt_tuning", "seed": 3, "step": 30,
      "scores": {"accuracy": 71.5, "f1": None}}))
  (d / "config.gin").write_text("PROMPT_LENGTH = 5\n")
  _save_run_checkpoint(d, "checkpoints", 40, make_prompt(40), run_meta)
  _save_run_checkpoint(d, "best", 30, make_prompt(30), run_meta)
  return d


def test_from_model_dir_records_task_checkpoint_and_scores(tmp_path, model_dir, make_prompt):
  lib = tmp_path / "lib"
  out = ok("--library", lib, "add", "rte", "--from-model-dir", model_dir,
           "--model", "t5_1_1_lm100k_base")
  assert "task spot_glue_rte" in out
  e = PromptLibrary(lib).entry("rte")
  assert e.task == "spot_glue_rte" and e.model.checkpoint == BASE
  assert e.metrics == {"accuracy": 71.5}  # the null score is left out
  assert e.meta == {"seed": 3, "method": "prompt_tuning", "metrics_step": 30}
  assert e.provenance.step == 40 and e.provenance.gin_config == "PROMPT_LENGTH = 5\n"
  assert PromptLibrary(lib).prompt("rte").tobytes() == make_prompt(40).tobytes()
  listed = json.loads(ok("--library", lib, "list", "--json"))
  assert listed[0]["task"] == "spot_glue_rte" and listed[0]["checkpoint"] == BASE
  # ... which is what `query --mixture` needs.
  np.save(tmp_path / "o.npy", make_prompt(7))
  ok("--library", lib, "add", "sst2", "--prompt", tmp_path / "o.npy", "--model",
     "t5_1_1_lm100k_base", "--task", "spot_glue_sst2")
  tasks = json.loads(ok("--library", lib, "query", "--entry", "sst2", "--mixture",
                        "--target-task", "spot_superglue_cb", "--json"))
  assert tasks == ["spot_glue_rte", "spot_superglue_cb"]
  # Explicit flags win over the run's files.
  ok("--library", lib, "add", "rte2", "--from-model-dir", model_dir, "--model",
     "t5_1_1_lm100k_base", "--task", "mine", "--metrics", "accuracy=1", "--model-checkpoint",
     "/other")
  e = PromptLibrary(lib).entry("rte2")
  assert (e.task, e.metrics, e.model.checkpoint) == ("mine", {"accuracy": 1.0}, "/other")


def test_best_step_and_orbax_steps(tmp_path, model_dir, make_prompt):
  lib = tmp_path / "lib"
  ok("--library", lib, "add", "best", "--from-model-dir", model_dir, "--best",
     "--model", "t5_1_1_lm100k_base")
  stored = PromptLibrary(lib)
  assert stored.entry("best").provenance.step == 30
  assert stored.prompt("best").tobytes() == make_prompt(30).tobytes()  # from best/30 (orbax)
  ok("--library", lib, "add", "s30", "--from-model-dir", model_dir, "--step", "30",
     "--model", "t5_1_1_lm100k_base")
  assert stored.prompt("s30").tobytes() == make_prompt(30).tobytes()
  rc, _, err = run("--library", lib, "add", "x", "--from-model-dir", model_dir, "--step", "7",
                   "--model", "t5_1_1_lm100k_base")
  assert rc == errors.EXIT_DATA and "steps 10, 30, 40" in err
  rc, _, err = run("--library", lib, "add", "x", "--prompt", tmp_path / "o.npy", "--best",
                   "--model", "m")
  assert rc == errors.EXIT_USAGE and "--best needs --from-model-dir" in err
  os.remove(model_dir / "run.json")
  (model_dir / "metrics.json").write_text("{broken")
  rc, _, err = run("--library", lib, "add", "x", "--from-model-dir", model_dir, "--model",
                   "t5_1_1_lm100k_base")
  assert rc == errors.EXIT_DATA and "metrics.json is not valid JSON" in err


def test_from_t5x_takes_a_spot_run_checkpoint_by_relative_path(tmp_path, model_dir,
                                                               make_prompt, monkeypatch):
  monkeypatch.chdir(tmp_path)
  ok("--library", "lib", "add", "b30", "--from-t5x", "runs/rte/best/30", "--model",
     "t5_1_1_lm100k_base")
  stored = PromptLibrary(tmp_path / "lib")
  e = stored.entry("b30")
  assert stored.prompt("b30").tobytes() == make_prompt(30).tobytes()
  assert e.provenance.step == 30 and e.task == "spot_glue_rte" and e.model.checkpoint == BASE
  assert e.metrics == {"accuracy": 71.5}
  ok("--library", "lib", "add", "c40", "--from-t5x", "runs/rte/checkpoints/40", "--model",
     "t5_1_1_lm100k_base")
  assert stored.prompt("c40").tobytes() == make_prompt(40).tobytes()
  rc, _, err = run("--library", "lib", "add", "x", "--from-t5x", "runs/rte/best/30",
                   "--variable", "encoder/nope", "--model", "t5_1_1_lm100k_base")
  assert rc == errors.EXIT_DATA and "has no variable 'encoder/nope'" in err
  # A relative path to a numpy prompt checkpoint works as well.
  rc, _, err = run("--library", "lib", "add", "x", "--from-model-dir", "runs/nothing",
                   "--model", "t5_1_1_lm100k_base")
  assert rc == errors.EXIT_DATA and "Checkpoint path should be absolute" not in err
