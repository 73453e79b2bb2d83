"""Resume after `kill -9`: best checkpoint, early stopping and metrics.json survive.

One run goes uninterrupted; the same command is killed with SIGKILL right after
its first best checkpoint and then run again. Both must end with the same
best step, the same early-stopping step, the same metrics.json scores and the
same final prompt.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.journeys.conftest import BIN, REPO, spot

pytestmark = pytest.mark.slow


def flags(data, model_dir: pathlib.Path) -> list[str]:
  return ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
          "--gin_file=spot/gin/runs/prompt_finetune.gin",
          f"--gin.INITIAL_CHECKPOINT_PATH='{data['checkpoint']}'",
          f"--gin.SPM_PATH='{data['spm']}'", f"--gin.DATA_DIR='{data['data_dir']}'",
          "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rte'", "--gin.MIXTURE_OR_TASK_MODULE='spot.tasks'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 4}", "--gin.PROMPT_LENGTH=4",
          "--gin.TRAIN_STEPS=40", "--gin.BATCH_SIZE=4", "--gin.LEARNING_RATE=3.0",
          "--gin.CHECKPOINT_PERIOD=2", "--gin.EVAL_PERIOD=2", "--gin.EVAL_NUM_EXAMPLES=8",
          "--gin.EVAL_BATCH_SIZE=8", "--gin.BEST_METRIC='accuracy'",
          "--gin.EARLY_STOPPING_PATIENCE=3", "--gin.LOG_EVERY=1",
          f"--gin.MODEL_DIR='{model_dir}'"]


def _best_steps(model_dir: pathlib.Path) -> list[int]:
  root = model_dir / "best"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def _final_prompt(model_dir: pathlib.Path) -> np.ndarray:
  root = model_dir / "numpy_checkpoints"
  last = max(int(p.name.split("_")[1]) for p in root.glob("checkpoint_*"))
  return np.load(root / f"checkpoint_{last}" / "encoder.prompt.prompt.prompt")


def test_resume_after_kill_keeps_best_and_early_stopping(data, tmp_path):
  whole = tmp_path / "whole"
  spot("train", *flags(data, whole)).check()
  whole_metrics = json.loads((whole / "metrics.json").read_text())

  killed = tmp_path / "killed"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.Popen([str(BIN / "spot"), "train", *flags(data, killed)], cwd=str(REPO),
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  deadline = time.time() + 600
  # Kill as soon as the first evaluation made best/ and its periodic checkpoint exists.
  while time.time() < deadline and proc.poll() is None:
    ckpts = [int(p.name) for p in (killed / "checkpoints").glob("*") if p.name.isdigit()] \
        if (killed / "checkpoints").exists() else []
    if _best_steps(killed) and ckpts:
      os.killpg(proc.pid, signal.SIGSTOP)  # freeze at once, then kill
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed; make it longer"
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (killed / "metrics.json").exists()
  killed_at = max(int(p.name) for p in (killed / "checkpoints").glob("*") if p.name.isdigit())
  assert killed_at < _last_step(whole), "the kill came after the run's last checkpoint"

  spot("train", *flags(data, killed)).check()
  killed_metrics = json.loads((killed / "metrics.json").read_text())
  assert killed_metrics["step"] == whole_metrics["step"]  # the best step
  assert killed_metrics["scores"] == whole_metrics["scores"]
  assert _best_steps(killed) == _best_steps(whole)
  # Early stopping stopped both at the same step, with the same evaluations behind it.
  assert _last_step(killed) == _last_step(whole) < 40
  whole_meta, killed_meta = _meta(whole), _meta(killed)
  assert killed_meta["eval_history"] == whole_meta["eval_history"]
  assert len(whole_meta["eval_history"]) >= 3
  assert killed_meta["bad_evals"] == whole_meta["bad_evals"] >= 3
  np.testing.assert_array_equal(_final_prompt(killed), _final_prompt(whole))


def _last_step(model_dir: pathlib.Path) -> int:
  return max(int(p.name) for p in (model_dir / "checkpoints").glob("*") if p.name.isdigit())


def _meta(model_dir: pathlib.Path) -> dict:
  """The latest checkpoint's meta: eval history, best and early-stopping count."""
  from spot.train import checkpointing
  ckpt = checkpointing.RunCheckpointer(str(model_dir))
  try:
    return ckpt.read_meta()
  finally:
    ckpt.close()
