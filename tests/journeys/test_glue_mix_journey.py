"""The README's headline journey, offline: glue_mix -> eval -> infer -> library ->
embed/query/transfer (every mode) -> report -> checkpoint inspect/convert.

Every step is a console command in a subprocess, run from the repository root
with the flags README.md and docs/ give; later steps read what earlier ones
wrote. The tests of this module run in order and share one work folder.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from tests.journeys.conftest import spot, t5x

pytestmark = pytest.mark.slow

PROMPT_LENGTH = 4
LENGTHS = "{'inputs': 64, 'targets': 8}"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("journey")


@pytest.fixture(scope="module")
def state() -> dict:
  """What earlier steps produced (paths, steps) for later ones."""
  return {}


def offline_flags(data: dict[str, str]) -> list[str]:
  """README's offline overrides: a local checkpoint, its size, the vocabulary, DATA_DIR."""
  return [f"--gin.INITIAL_CHECKPOINT_PATH='{data['checkpoint']}'",
          "--gin.MODEL_SIZE='tiny'",
          f"--gin.SPM_PATH='{data['spm']}'",
          f"--gin.DATA_DIR='{data['data_dir']}'"]


def tiny_run(data, model_dir, task, steps=2, extra=()) -> list[str]:
  """A short prompt-tuning run of `task` (the transfer and embed train flags)."""
  return ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
          "--gin_file=spot/gin/runs/prompt_finetune.gin",
          *offline_flags(data)[:1], f"--gin.SPM_PATH='{data['spm']}'",
          f"--gin.DATA_DIR='{data['data_dir']}'",
          f"--gin.MIXTURE_OR_TASK_NAME='{task}'", "--gin.MIXTURE_OR_TASK_MODULE='spot.tasks'",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.PROMPT_LENGTH={PROMPT_LENGTH}",
          f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=4", "--gin.EVAL_PERIOD=2",
          "--gin.EVAL_NUM_EXAMPLES=4", "--gin.EVAL_BATCH_SIZE=4",
          *([f"--gin.MODEL_DIR='{model_dir}'"] if model_dir else []), *extra]


def test_headline_glue_mix_runs_offline_and_exits_zero(data, work, state):
  model_dir = work / "runs" / "glue_mix"
  r = t5x("train", "--gin_file=spot/gin/glue_mix.gin",
          f"--gin.MODEL_DIR='{model_dir}'", *offline_flags(data),
          "--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=8", f"--gin.PROMPT_LENGTH={PROMPT_LENGTH}",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.CHECKPOINT_PERIOD=2",
          "--gin.EVAL_PERIOD=2", "--gin.EVAL_NUM_EXAMPLES=4", "--gin.EVAL_BATCH_SIZE=4",
          # The shared data holds STS-B's test split with gold scores (its dev is held out).
          "--gin.EVAL_SPLIT='test'", "--gin.BEST_METRIC='spot_glue_mrpc/accuracy'").check()
  metrics = json.loads((model_dir / "metrics.json").read_text())
  scores = metrics["scores"]
  # STS-B is in the mixture; its correlation may be null (constant predictions), never NaN.
  stsb = [k for k in scores if "stsb" in k]
  assert stsb, sorted(scores)
  assert all(v is None or np.isfinite(v) for v in scores.values())
  best_steps = sorted(int(p.name) for p in (model_dir / "best").iterdir() if p.name.isdigit())
  assert best_steps and metrics["step"] == best_steps[-1]
  # The best step's prompt is exported as numpy, like periodic and final steps.
  best_npy = (model_dir / "numpy_checkpoints" / f"checkpoint_{best_steps[-1]}" /
              "encoder.prompt.prompt.prompt")
  assert np.load(best_npy).shape == (PROMPT_LENGTH, 4)
  assert (model_dir / "numpy_checkpoints" / "checkpoint_4" / "encoder.prompt.prompt.prompt"
          ).exists()
  # Training evaluations save their predictions (as T5X's inference_eval/).
  assert list((model_dir / "inference_eval").glob("*.jsonl"))
  state.update(glue_mix=model_dir, best_step=best_steps[-1])


def test_eval_and_infer_the_result(data, work, state):
  model_dir = state["glue_mix"]
  common = ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
            f"--gin.RESTORE_MODEL_DIR='{model_dir}'", f"--gin.SPM_PATH='{data['spm']}'",
            f"--gin.DATA_DIR='{data['data_dir']}'", "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rte'",
            "--gin.MIXTURE_OR_TASK_MODULE='spot.tasks'", f"--gin.PROMPT_LENGTH={PROMPT_LENGTH}",
            "--gin.EVAL_NUM_EXAMPLES=4", "--gin.BATCH_SIZE=4"]
  spot("eval", "--gin_file=spot/gin/runs/prompt_eval.gin", *common,
       f"--gin.EVAL_OUTPUT_DIR='{work / 'eval'}'").check()
  results = json.loads((work / "eval" / "eval_results.json").read_text())
  assert 0.0 <= results["spot_glue_rte/accuracy"] <= 100.0
  # infer needs no TASK_FEATURE_LENGTHS, like eval.
  spot("infer", "--gin_file=spot/gin/runs/prompt_infer.gin", *common,
       f"--gin.INFER_OUTPUT_DIR='{work / 'infer'}'").check()
  lines = [json.loads(x) for f in (work / "infer" / "inference").glob("*.jsonl")
           for x in f.read_text().splitlines() if x.strip()]
  assert len(lines) >= 4


def test_library_add_from_model_dir_records_task_base_and_scores(data, work, state):
  lib = str(work / "library")
  spot("library", "--library", lib, "add", "glue_mix", "--from-model-dir",
       str(state["glue_mix"]), "--model", "t5_1_1_tiny", "--embedding-step", "2").check()
  entry = json.loads(spot("library", "--library", lib, "--json", "show", "glue_mix")
                     .check().stdout)
  flat = json.dumps(entry)
  assert "spot_glue_mix" in flat
  assert data["checkpoint"].split("/")[-1] in flat  # the base checkpoint path
  assert entry.get("metrics"), entry
  # The best step reaches the library too.
  spot("library", "--library", lib, "add", "glue_mix_best", "--from-model-dir",
       str(state["glue_mix"]), "--step", str(state["best_step"]), "--model", "t5_1_1_tiny",
       "--embedding-step", "2").check()
  best = np.load(state["glue_mix"] / "numpy_checkpoints" / f"checkpoint_{state['best_step']}" /
                 "encoder.prompt.prompt.prompt")
  spot("library", "--library", lib, "export", str(work / "lib.tar.gz"),
       "--entry", "glue_mix_best").check()
  state["library"] = lib
  state["best_prompt"] = best


def test_embed_a_second_source_and_the_target(data, work, state):
  lib = state["library"]
  sst2_dir = work / "runs" / "sst2_source"
  spot("library", "--library", lib, "embed", "--steps", "2", "--out", str(work / "sst2.npy"),
       "--model-dir", str(sst2_dir), "--", *tiny_run(data, None, "spot_glue_sst2")).check()
  spot("library", "--library", lib, "add", "sst2", "--from-model-dir", str(sst2_dir),
       "--model", "t5_1_1_tiny", "--embedding", f"step_2={work / 'sst2.npy'}").check()
  r = spot("library", "--library", lib, "--json", "embed", "--steps", "2", "--out",
           str(work / "rte.npy"), "--query", "--", *tiny_run(data, None, "spot_glue_rte")
           ).check()
  assert np.load(work / "rte.npy").shape == (PROMPT_LENGTH, 4)
  ranked = json.loads(spot("library", "--library", lib, "--json", "query", "--embedding",
                           str(work / "rte.npy"), "--top-k", "3").check().stdout)
  assert {x["name"] for x in ranked} == {"glue_mix", "glue_mix_best", "sst2"}
  assert all(np.isfinite(x["score"]) for x in ranked)
  assert r.stdout.strip()


@pytest.mark.parametrize("mode", ["top1", "weighted_average", "best_of_top_k", "mixture"])
def test_transfer_every_mode(data, work, state, mode):
  lib = state["library"]
  out = work / "transfer" / mode
  extra = ["--target-task", "spot_glue_rte"] if mode == "mixture" else []
  spot("library", "--library", lib, "--json", "transfer", "--embedding", str(work / "rte.npy"),
       "--mode", mode, "--top-k", "2", "--out-dir", str(out), "--best-metric", "accuracy",
       *extra, "--", *tiny_run(data, None, "spot_glue_rte", extra=[
           "--gin.BEST_METRIC='accuracy'"] if mode != "mixture" else [])).check()
  finished = list(out.rglob("metrics.json"))
  assert finished, f"no finished target run under {out}"


def test_report_over_everything(work, state):
  r = spot("report", "--runs", str(work / "runs"), str(work / "transfer"), "--json").check()
  report = json.loads(r.stdout)
  methods = {c["method"] for c in report["cells"]}
  assert "spot_glue_source" in methods, methods
  assert len(report["cells"]) >= 3
  md = spot("report", "--runs", str(work / "runs"), str(work / "transfer")).check().stdout
  assert "GLUE" in md


def test_checkpoint_inspect_and_convert_the_run(work, state):
  model_dir = state["glue_mix"]
  r = spot("checkpoint", "inspect", str(model_dir), "--json").check()
  info = json.loads(r.stdout)
  assert "prompt" in json.dumps(info)
  out = work / "t5x_export"
  spot("checkpoint", "convert", "--from-run", str(model_dir), "--step",
       str(state["best_step"]), "--to", str(out)).check()
  r = spot("checkpoint", "inspect", str(out), "--json").check()
  assert "prompt" in r.stdout
  from spot.checkpoints import load_t5x
  params = load_t5x(str(out))
  flat = {"/".join(k): v for k, v in _flatten(params)}
  prompt = [v for k, v in flat.items() if "prompt" in k]
  assert len(prompt) == 1
  np.testing.assert_array_equal(np.asarray(prompt[0]), state["best_prompt"])


def _flatten(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v
