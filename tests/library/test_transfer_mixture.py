"""`spot library transfer --mode mixture`: the run's own tasks (DATA_DIR), T5's rates."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from spot.library import PromptLibrary

pytestmark = pytest.mark.filterwarnings("ignore")
REPO = pathlib.Path(__file__).resolve().parents[2]
MODULE = "tests.library.local_vocab_tasks"
# Rows of the local train files: glue/sst2/train_first10000.tsv, glue/rte/train.tsv.
SST2_TRAIN, RTE_TRAIN = 10_000, 2_490


@pytest.fixture
def registries():
  """Restores SeqIO's task and mixture registries after the test re-registers tasks."""
  import seqio
  saved = (dict(seqio.TaskRegistry._REGISTRY), dict(seqio.MixtureRegistry._REGISTRY))  # pylint: disable=protected-access
  yield
  for registry, before in zip((seqio.TaskRegistry, seqio.MixtureRegistry), saved):
    registry._REGISTRY.clear()  # pylint: disable=protected-access
    registry._REGISTRY.update(before)  # pylint: disable=protected-access


def test_register_mixture_uses_local_tasks_and_example_counts(shared_data, registries):
  import seqio
  from spot.workflows import targeted
  name, rates = targeted.register_mixture(["spot_glue_sst2", "spot_glue_rte"], module=MODULE,
                                          data_dir=str(shared_data), cap=2**19)
  assert rates == {"spot_glue_sst2": float(SST2_TRAIN), "spot_glue_rte": float(RTE_TRAIN)}
  mixture = seqio.get_mixture_or_task(name)
  assert {t.name for t in mixture.tasks} == set(rates)
  assert all(isinstance(t.source, seqio.FunctionDataSource) for t in mixture.tasks)  # local
  assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == rates
  _, capped = targeted.register_mixture(["spot_glue_sst2", "spot_glue_rte"], module=MODULE,
                                        data_dir=str(shared_data), cap=3000)
  assert capped == {"spot_glue_sst2": 3000.0, "spot_glue_rte": float(RTE_TRAIN)}
  # The run re-registers its tasks (DATA_DIR, vocabulary): the mixture follows by name.
  from spot.tasks import glue
  glue.register_glue(data_dir=str(shared_data / "glue"),
                     vocabulary=str(shared_data / "t5_vocab" / "spiece.model"), tasks=["rte"])
  assert [t for t in mixture.tasks if t.name == "spot_glue_rte"][0] is \
      seqio.TaskRegistry.get("spot_glue_rte")
  with pytest.raises(Exception, match="not registered SeqIO tasks.*--task NAME"):
    targeted.register_mixture(["glue_nope_v2", "spot_glue_rte"], module=MODULE,
                              data_dir=str(shared_data))


def test_transfer_mixture_in_a_fresh_process(shared_data, tmp_path):
  """The console command from a new process: tasks registered in order, DATA_DIR honoured."""
  lib = PromptLibrary(tmp_path / "lib")
  rng = np.random.RandomState(0)
  emb = rng.rand(4, 4).astype(np.float32)
  for i, task in enumerate(["spot_glue_sst2", "spot_glue_rte"]):
    lib.add(f"src{i}", rng.rand(4, 4).astype(np.float32), model="t5_1_1_tiny",
            embeddings={"e": emb + 0.1 * i}, task=task)
  np.save(tmp_path / "target.npy", emb)
  flags = ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
           "--gin_file=spot/gin/runs/prompt_finetune.gin",
           f"--gin.SPM_PATH='{shared_data / 't5_vocab' / 'spiece.model'}'",
           f"--gin.MIXTURE_OR_TASK_MODULE='{MODULE}'", f"--gin.DATA_DIR='{shared_data}'",
           "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rte'", "--gin.PROMPT_LENGTH=4",
           "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.BATCH_SIZE=8",
           "--gin.TRAIN_STEPS=2", "--gin.EVAL_PERIOD=2", "--gin.EVAL_NUM_EXAMPLES=4",
           "--gin.EVAL_BATCH_SIZE=4",
           f"--gin.INITIAL_CHECKPOINT_PATH='{shared_data / 't5x_tiny_checkpoint' / 'checkpoint_3'}'"]
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(
      [sys.executable, "-m", "spot.cli", "library", "--library", str(tmp_path / "lib"), "--json",
       "transfer", "--embedding", str(tmp_path / "target.npy"), "--mode", "mixture",
       "--top-k", "2", "--target-task", "spot_glue_rte", "--out-dir", "mix", "--"] + flags,
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  payload = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1:])
  chosen = payload["chosen"]
  assert chosen["source"] == "spot_glue_sst2+spot_glue_rte"
  assert chosen["rates"] == {"spot_glue_sst2": SST2_TRAIN, "spot_glue_rte": RTE_TRAIN}
  assert chosen["model_dir"] == str(tmp_path / "mix" / "mixture")  # made absolute
  run = json.loads((tmp_path / "mix" / "mixture" / "run.json").read_text())
  assert run["task"].startswith("spot_transfer_mix_")
  metrics = json.loads((tmp_path / "mix" / "mixture" / "metrics.json").read_text())
  assert metrics["task"] == "spot_glue_rte" and metrics["method"] == "spot_mixture"


def test_run_data_settings_reads_the_runs_macros():
  from spot.workflows import targeted
  flags = ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
           "--gin_file=spot/gin/runs/prompt_finetune.gin", "--gin.OTHER='my.tasks'",
           "--gin.MIXTURE_OR_TASK_MODULE=%OTHER", "--gin.DATA_DIR=['/a', '/b']"]
  required = ["MODEL_DIR = '/m'", "MIXTURE_OR_TASK_NAME = 'x'", "TRAIN_STEPS = 1",
              "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}",
              "INITIAL_CHECKPOINT_PATH = '/c'"]
  assert targeted.run_data_settings(flags, required) == ("my.tasks", ["/a", "/b"])
  assert targeted.run_data_settings(flags[:2], required) == (None, None)
