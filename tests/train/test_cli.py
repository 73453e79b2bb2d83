"""`spot train|eval|infer` and `t5x ...` through gin, and their configuration errors."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from spot.train import cli

GIN = ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin"]


def _common(shared_data):
  spm = shared_data / "t5_vocab" / "spiece.model"
  return [f"--gin.SPM_PATH='{spm}'", "--gin.MIXTURE_OR_TASK_MODULE='tests.train.cli_tasks'",
          "--gin.MIXTURE_OR_TASK_NAME='cli_glue_sst2'", "--gin.PROMPT_LENGTH=3",
          "--gin.DROPOUT_RATE=0.0",
          f"--gin.INITIAL_CHECKPOINT_PATH='{shared_data / 't5x_tiny_checkpoint' / 'checkpoint_3'}'"]


def test_rewrite_gin_args():
  assert cli.rewrite_gin_args(["--gin.TRAIN_STEPS=5", "--x"]) == [
      "--gin_bindings=TRAIN_STEPS = 5", "--x"]
  with pytest.raises(cli.ConfigError, match="--gin.MODEL_DIR=VALUE"):
    cli.rewrite_gin_args(["--gin.MODEL_DIR"])


def test_missing_required_macro_names_it(capsys):
  rc = cli.main(GIN + ["--gin_file=spot/gin/runs/prompt_finetune.gin",
                       "--gin.MODEL_DIR='/tmp/x'"], mode="train")
  assert rc == 2
  assert "MIXTURE_OR_TASK_NAME" in capsys.readouterr().err


def test_bad_binding_and_missing_file_fail_before_compute(capsys):
  rc = cli.main(GIN + ["--gin_file=spot/gin/runs/prompt_finetune.gin",
                       "--gin.trainer.train.no_such_arg=3"], mode="train")
  assert rc == 2 and "no_such_arg" in capsys.readouterr().err
  rc = cli.main(["--gin_file=spot/gin/models/nope.gin"], mode="train")
  assert rc == 2 and "nope.gin" in capsys.readouterr().err


def test_unknown_task_names_it(shared_data, tmp_path, capsys):
  rc = cli.main(GIN + ["--gin_file=spot/gin/runs/prompt_finetune.gin"] + _common(shared_data) + [
      "--gin.MIXTURE_OR_TASK_NAME='cli_glue_sst3'", f"--gin.MODEL_DIR='{tmp_path}'",
      "--gin.TRAIN_STEPS=2", "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}"],
                mode="train")
  assert rc == 2
  err = capsys.readouterr().err
  assert "cli_glue_sst3" in err and "cli_glue_sst2" in err
  assert not (tmp_path / "checkpoints").exists()


def test_train_eval_infer_end_to_end(shared_data, tmp_path):
  """t5x train -> spot eval (restoring the run) -> spot infer writing JSONL."""
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  model_dir = tmp_path / "run"
  common = _common(shared_data) + ["--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
                                   "--gin.BATCH_SIZE=4"]
  train = subprocess.run(
      [sys.executable, "-m", "spot.cli", "train"] + GIN +
      ["--gin_file=spot/gin/runs/prompt_finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
       "--gin.TRAIN_STEPS=4", "--gin.EVAL_PERIOD=0", "--gin.LOG_EVERY=2"] + common,
      env=env, capture_output=True, text=True, timeout=600)
  assert train.returncode == 0, train.stderr[-3000:]
  assert "train step 4/4" in train.stdout
  assert (model_dir / "config.gin").exists()
  assert "PROMPT_LENGTH = 3" in (model_dir / "config.gin").read_text()

  from spot.cli import t5x_main, spot_main
  os.environ.setdefault("SPOT_SHARED_DATA", str(shared_data))
  eval_dir = tmp_path / "eval"
  rc = t5x_main(["eval"] + GIN + ["--gin_file=spot/gin/runs/prompt_eval.gin"] + common + [
      f"--gin.EVAL_OUTPUT_DIR='{eval_dir}'", f"--gin.RESTORE_MODEL_DIR='{model_dir}'",
      "--gin.EVAL_NUM_EXAMPLES=8"])
  assert rc == 0
  results = json.loads((eval_dir / "eval_results.json").read_text())
  assert 0.0 <= results["cli_glue_sst2/accuracy"] <= 100.0

  infer_dir = tmp_path / "infer"
  # No TASK_FEATURE_LENGTHS: infer defaults it as eval does (the longest example).
  rc = spot_main(["infer"] + GIN + ["--gin_file=spot/gin/runs/prompt_infer.gin",
                                    "--gin_file=spot/gin/decoding/beam_search.gin"] +
                 _common(shared_data) + ["--gin.BATCH_SIZE=4",
      f"--gin.INFER_OUTPUT_DIR='{infer_dir}'", f"--gin.RESTORE_MODEL_DIR='{model_dir}'",
      "--gin.INFER_NUM_EXAMPLES=6"])
  assert rc == 0
  lines = (infer_dir / "inference" / "cli_glue_sst2-validation.jsonl").read_text().splitlines()
  rows = [json.loads(l) for l in lines]
  assert len(rows) == 6
  assert rows[0]["inputs"].startswith("sst2 sentence:")
  assert rows[0]["targets"] in ("positive", "negative")
  assert isinstance(rows[0]["prediction"], str)


RUN = GIN + ["--gin_file=spot/gin/runs/prompt_finetune.gin"]


def _err_line(capsys) -> str:
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err  # one line, no traceback
  return err


@pytest.mark.parametrize("flag,binding,fix", [
    ("--gin.MODEL_DIR=/tmp/x", "--gin.MODEL_DIR=/tmp/x", "--gin.MODEL_DIR=\"'/tmp/x'\""),
    ("--gin_bindings=DATA_DIR = /data/glue", "--gin.DATA_DIR=/data/glue",
     "--gin.DATA_DIR=\"'/data/glue'\""),
    ("--gin.TASK_FEATURE_LENGTHS={'inputs': 16", "TASK_FEATURE_LENGTHS", "Python literal"),
])
def test_a_bad_gin_value_names_the_binding_and_the_fix(flag, binding, fix, capsys):
  """Regression: `--gin.MODEL_DIR=/tmp/x` said only "Unable to parse value. (line 1)"."""
  rc = cli.main(RUN + ["--gin.TRAIN_STEPS=2", flag], mode="train")
  err = _err_line(capsys)
  assert rc == 2
  assert binding in err and fix in err


def test_size_mismatch_is_found_from_metadata_before_loading(shared_data, tmp_path, capsys,
                                                            monkeypatch):
  """glue_mix (base) on the tiny checkpoint: one line naming the setting, the detected
  size and the gin fix, before any weight is read or MODEL_DIR is made."""
  from spot import checkpoints
  from spot.checkpoints import t5x
  def no_load(*a, **k):
    raise AssertionError("weights were read")
  # The package binds its names on first use (gin registers them by object): bind
  # the real ones first, so the patch below stays inside this test.
  assert checkpoints.load_t5x is t5x.load_t5x
  assert checkpoints.load_t5x_variable is t5x.load_t5x_variable
  monkeypatch.setattr(t5x, "load_t5x", no_load)
  monkeypatch.setattr(t5x, "load_t5x_variable", no_load)
  ckpt = shared_data / "t5x_tiny_checkpoint" / "checkpoint_3"
  rc = cli.main(["--gin_file=spot/gin/glue_mix.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                 f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'"], mode="train")
  err = _err_line(capsys)
  assert rc == 2
  assert f"INITIAL_CHECKPOINT_PATH='{ckpt}' holds a t5_1_1 tiny model" in err
  assert "builds t5_1_1 base" in err and "emb_dim 4 (model 768)" in err
  assert "add --gin.MODEL_SIZE=\"'tiny'\"" in err
  assert not (tmp_path / "run").exists()


def test_infer_config_max_distance_comes_from_the_matching_published_config(shared_data):
  """Shapes cannot give relative_attention_max_distance (T5Config's default is 128);
  the tiny checkpoint's shapes match t5_1_1_tiny, whose value is 8."""
  import jax
  import numpy as np
  from flax import traverse_util
  from spot import checkpoints
  from spot.models import config as config_lib
  info = checkpoints.describe(shared_data / "t5x_tiny_checkpoint" / "checkpoint_3")
  tree = traverse_util.unflatten_dict({tuple(k.split("/")): jax.ShapeDtypeStruct(v, np.float32)
                                       for k, v in info.shapes.items()})
  inferred = checkpoints.infer_config(tree)
  name = config_lib.match_config(inferred)
  assert name == "t5_1_1_tiny"
  assert config_lib.get_config(name).relative_attention_max_distance == 8
  assert config_lib.shape_fields(config_lib.get_config(name)) == config_lib.shape_fields(inferred)


def test_missing_checkpoint_or_run_dir_is_a_missing_input(shared_data, tmp_path, capsys):
  rc = cli.main(RUN + _common(shared_data) + [
      f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEPS=2",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
      f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'nope'}'"], mode="train")
  err = _err_line(capsys)
  assert rc == 3 and f"INITIAL_CHECKPOINT_PATH='{tmp_path / 'nope'}' does not exist" in err
  rc = cli.main(GIN + ["--gin_file=spot/gin/runs/prompt_eval.gin"] + _common(shared_data) + [
      f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'",
      f"--gin.RESTORE_MODEL_DIR='{tmp_path / 'no_run'}'"], mode="eval")
  err = _err_line(capsys)
  assert rc == 3 and f"RESTORE_MODEL_DIR='{tmp_path / 'no_run'}' does not exist" in err


def test_feature_lengths_without_targets_is_a_usage_error(shared_data, tmp_path, capsys):
  rc = cli.main(RUN + _common(shared_data) + [
      f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEPS=2",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16}"], mode="train")
  err = _err_line(capsys)
  assert rc == 2
  assert "TASK_FEATURE_LENGTHS={'inputs': 16} has no 'targets' length" in err
  assert "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 8}\"" in err


def test_a_batch_the_mesh_cannot_split_names_batch_size(shared_data, tmp_path, capsys,
                                                       monkeypatch):
  import jax
  monkeypatch.setattr(jax, "device_count", lambda *a: 8)
  rc = cli.main(RUN + _common(shared_data) + [
      f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}"], mode="train")
  err = _err_line(capsys)
  assert rc == 2
  assert "BATCH_SIZE=4 is not divisible by the 8 data-parallel replicas" in err
  assert "--gin.BATCH_SIZE=8" in err
  assert not (tmp_path / "run").exists()


def _readme_offline_command(shared_data, model_dir) -> list[str]:
  """The offline `t5x train` command of README.md, with this machine's paths."""
  import re
  import shlex
  readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
  blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
  block = next(b for b in blocks if "t5x train" in b and "../shared/data" in b)
  argv = shlex.split(block.replace("\\\n", " "))
  assert argv[:2] == [".venv/bin/t5x", "train"], argv[:2]
  out = []
  for a in argv[2:]:
    a = a.replace("../shared/data", str(shared_data))
    if a.startswith("--gin.MODEL_DIR="):
      a = f"--gin.MODEL_DIR='{model_dir}'"
    out.append(a)
  return out


def test_readme_headline_runs_offline(shared_data, tmp_path, capsys):
  """README's offline form of `t5x train --gin_file=spot/gin/glue_mix.gin`: only flag
  overrides (checkpoint, size, vocabulary, DATA_DIR); exits 0 with the STS-B evaluation,
  and every task of the mixture tokenizes with the local vocabulary (no gs:// access)."""
  import seqio
  from spot.cli import t5x_main
  model_dir = tmp_path / "gm"
  argv = _readme_offline_command(shared_data, model_dir)
  assert "--gin_file=spot/gin/glue_mix.gin" in argv
  assert [a for a in argv if a.startswith("--gin_file")] == ["--gin_file=spot/gin/glue_mix.gin"]
  rc = t5x_main(["train"] + argv)
  out = capsys.readouterr()
  assert rc == 0, out.err[-3000:]
  assert "Could not resolve host" not in out.err
  spm = str(shared_data / "t5_vocab" / "spiece.model")
  mixture = seqio.get_mixture_or_task("spot_glue_mix")
  assert {t.output_features["targets"].vocabulary.sentencepiece_model_file
          for t in mixture.tasks} == {spm}
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert "spot_glue_stsb/pearson_corrcoef" in metrics["scores"]
  assert metrics["task"] == "spot_glue_mix"
  run = json.loads((model_dir / "run.json").read_text())
  assert run["model_config"]["emb_dim"] == 4 and run["prompt_length"] == 4
  from spot.tasks import glue, mixtures, superglue, wikilingua
  glue.register_glue()
  superglue.register_superglue()
  mixtures.register_spot_mixtures()
  wikilingua.register_all()
