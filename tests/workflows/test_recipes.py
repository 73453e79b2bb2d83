"""Recipes above training: settings parsed once, transfers from arrays, stable mixture
names, and a library that imports no training."""

from __future__ import annotations

import ast
import functools
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore")
REPO = pathlib.Path(__file__).resolve().parents[2]


def _flags(shared_data, task="cli_glue_rte"):
  return ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
          "--gin_file=spot/gin/runs/prompt_finetune.gin",
          f"--gin.SPM_PATH='{shared_data / 't5_vocab' / 'spiece.model'}'",
          "--gin.MIXTURE_OR_TASK_MODULE='tests.train.cli_tasks'",
          f"--gin.MIXTURE_OR_TASK_NAME='{task}'", "--gin.PROMPT_LENGTH=4",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.BATCH_SIZE=8",
          "--gin.LEARNING_RATE=1.0", "--gin.TRAIN_STEPS=2", "--gin.EVAL_NUM_EXAMPLES=4",
          "--gin.EVAL_BATCH_SIZE=4", "--gin.MODEL_DIR='/unused'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{shared_data / 't5x_tiny_checkpoint' / 'checkpoint_3'}'"]


def _name_in_fresh_process(seed: str) -> str:
  code = ("from spot.workflows.targeted import mixture_name; "
          "print(mixture_name({'glue_rte': 2490.0, 'glue_sst2': 10000.0}, module='m', "
          "data_dir=['/a', '/b']))")
  env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONHASHSEED=seed, JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=300, check=True)
  return proc.stdout.strip().splitlines()[-1]


def test_mixture_name_is_the_same_in_two_fresh_processes():
  from spot.workflows.targeted import mixture_name
  first, second = _name_in_fresh_process("1"), _name_in_fresh_process("2")
  assert first == second
  assert first.startswith("spot_transfer_mix_") and len(first) == len("spot_transfer_mix_") + 12
  # Member order does not matter; members, rates and data settings do.
  here = mixture_name({"glue_sst2": 10000.0, "glue_rte": 2490.0}, module="m",
                      data_dir=["/a", "/b"])
  assert here == first
  assert mixture_name({"glue_rte": 2490.0}, module="m", data_dir=["/a", "/b"]) != first
  assert mixture_name({"glue_rte": 2490.0, "glue_sst2": 3000.0}, module="m",
                      data_dir=["/a", "/b"]) != first


def test_settings_are_plain_values_after_gin_is_cleared(shared_data):
  import gin
  from spot.workflows import settings
  target = settings.from_flags(_flags(shared_data))
  assert gin.config_str().strip() == ""  # nothing left parsed
  assert isinstance(target.model.prompt, functools.partial)
  assert target.model.prompt_length == 4  # the bound PROMPT_LENGTH, read without gin
  assert target.train_steps == 2 and target.train_dataset_cfg.mixture_or_task_name == "cli_glue_rte"
  assert target.train_dataset_cfg.batch_size == 8 and target.eval_cfg.num_examples == 4
  assert target.macros == {"MODEL_FAMILY": "t5_1_1", "MODEL_SIZE": "tiny"}
  assert "PROMPT_LENGTH = 4" in target.gin_config
  assert len(target.metrics_writers) == 2  # final metrics (and xGen scores) still written


def test_a_transfer_starts_from_the_source_prompt_and_trains(shared_data, tmp_path):
  from spot.library import PromptLibrary
  from spot.train import checkpointing
  from spot.train import state as state_lib
  from spot.workflows import settings, targeted
  lib = PromptLibrary(str(tmp_path / "lib"))
  source = np.random.RandomState(0).uniform(-0.5, 0.5, (4, 4)).astype(np.float32)
  lib.add("src", source, model="t5_1_1_tiny", embeddings={"e": source}, task="cli_glue_rte")
  target = settings.from_flags(_flags(shared_data))

  at_step_0 = state_lib.initial_params(settings.with_prompt_init(target, source).model,
                                       target.initial_checkpoint_path, target.seed)
  np.testing.assert_array_equal(np.asarray(at_step_0["encoder"]["prompt"]["prompt"]["prompt"]),
                                source)
  runs, chosen = targeted.run_transfer(lib, target, source, mode="top1",
                                       out_dir=str(tmp_path / "runs"))
  assert [r.source for r in runs] == ["src"] and chosen.model_dir == str(tmp_path / "runs" / "top1")
  assert chosen.similarity == pytest.approx(1.0, abs=1e-6)
  np.testing.assert_array_equal(np.load(tmp_path / "runs" / "top1_init.npy"), source)
  trained = checkpointing.latest_numpy_prompt(chosen.model_dir)
  assert trained.shape == (4, 4) and not np.allclose(trained, source)  # it trained
  assert np.abs(trained - source).max() < 5.0  # from the source, not from elsewhere
  saved = (tmp_path / "runs" / "top1" / "config.gin").read_text()
  assert "# recipe override: method = 'spot_top1'" in saved


def test_a_prompt_that_takes_no_init_is_refused(shared_data):
  import dataclasses
  from spot import errors
  from spot.workflows import settings
  target = settings.from_flags(_flags(shared_data))
  no_prompt = dataclasses.replace(target, model=dataclasses.replace(target.model, prompt=None))
  with pytest.raises(errors.UsageError, match="takes no prompt_init.*prefix prompt"):
    settings.with_prompt_init(no_prompt, np.zeros((4, 4), np.float32))


def _imports(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return names


def _offending(package: str, banned: tuple[str, ...]) -> list[str]:
  out = []
  for path in sorted((REPO / "spot" / package).glob("*.py")):
    for name in sorted(_imports(path)):
      if name in banned or name.startswith(tuple(f"{b}." for b in banned)):
        out.append(f"{path.name}: {name}")
  return out


def test_the_library_imports_no_training_and_prompts_no_library():
  assert _offending("library", ("spot.train", "spot.report", "spot.workflows", "spot.xgen",
                                "spot.demo")) == []
  assert _offending("prompts", ("spot.library", "spot.workflows", "spot.train")) == []
  assert _offending("library", ("spot.train",)) == []  # the check sees ImportFrom too:
  assert "spot.train.cli" in _imports(REPO / "spot" / "workflows" / "settings.py")
