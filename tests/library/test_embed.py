"""`spot library embed`: a task embedding from a short prompt run, then retrieval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spot.library import PromptLibrary
from spot.workflows.cli import main as library_main
from spot.workflows.embedding import embedding_from_flags

pytestmark = pytest.mark.filterwarnings("ignore")


def _flags(shared_data, task):
  return ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
          "--gin_file=spot/gin/runs/prompt_finetune.gin",
          f"--gin.SPM_PATH='{shared_data / 't5_vocab' / 'spiece.model'}'",
          "--gin.MIXTURE_OR_TASK_MODULE='tests.train.cli_tasks'",
          f"--gin.MIXTURE_OR_TASK_NAME='{task}'", "--gin.PROMPT_LENGTH=4",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.BATCH_SIZE=8",
          "--gin.LEARNING_RATE=1.0",
          f"--gin.INITIAL_CHECKPOINT_PATH='{shared_data / 't5x_tiny_checkpoint' / 'checkpoint_3'}'"]


def test_embed_writes_embedding_and_ranks_library(shared_data, tmp_path, capsys):
  lib_path = tmp_path / "lib"
  lib = PromptLibrary(str(lib_path))
  rng = np.random.RandomState(0)
  rte = embedding_from_flags(_flags(shared_data, "cli_glue_rte"), steps=3)
  assert rte.shape == (4, 4)
  lib.add("rte_source", rng.rand(4, 4).astype(np.float32), model="t5_1_1_tiny",
          embeddings={"step_3": rte}, task="cli_glue_rte")
  lib.add("other", rng.rand(4, 4).astype(np.float32), model="t5_1_1_tiny",
          embeddings={"step_3": -rte}, task="other")

  out = tmp_path / "sst2.npy"
  rc = library_main(["--library", str(lib_path), "--json", "embed", "--steps", "3",
                     "--out", str(out), "--query", "--top-k", "2", "--"] +
                    _flags(shared_data, "cli_glue_sst2"))
  assert rc == 0
  text = capsys.readouterr().out
  payload = json.loads(text[text.rindex("\n{") + 1:])
  emb = np.load(out)
  assert emb.shape == (4, 4) and payload["shape"] == [4, 4] and payload["steps"] == 3
  assert not np.allclose(emb, rte)  # another task moves the shared init elsewhere
  names = [r["name"] for r in payload["ranking"]]
  assert set(names) == {"rte_source", "other"}
  scores = [r["score"] for r in payload["ranking"]]
  assert scores == sorted(scores, reverse=True)


def test_transfer_best_of_top_k_and_mixture(shared_data, tmp_path, capsys):
  """Targeted SPoT: k target runs from the top-k sources, the best kept; and a mixture."""
  lib_path = tmp_path / "lib"
  lib = PromptLibrary(str(lib_path))
  rng = np.random.RandomState(1)
  emb = rng.rand(4, 4).astype(np.float32)
  for i, task in enumerate(["cli_glue_rte", "cli_glue_sst2", "cli_glue_rte"]):
    lib.add(f"src{i}", rng.rand(4, 4).astype(np.float32), model="t5_1_1_tiny",
            embeddings={"e": emb + 0.1 * i}, task=task)
  np.save(tmp_path / "target.npy", emb)
  flags = _flags(shared_data, "cli_glue_sst2") + [
      "--gin.TRAIN_STEPS=2", "--gin.EVAL_PERIOD=2", "--gin.EVAL_NUM_EXAMPLES=4",
      "--gin.EVAL_BATCH_SIZE=4"]
  rc = library_main(["--library", str(lib_path), "--json", "transfer", "--embedding",
                     str(tmp_path / "target.npy"), "--mode", "best_of_top_k", "--top-k", "2",
                     "--best-metric", "accuracy", "--out-dir", str(tmp_path / "runs"), "--"]
                    + flags)
  assert rc == 0
  text = capsys.readouterr().out
  payload = json.loads(text[text.rindex("\n{") + 1:])
  assert [r["source"] for r in payload["runs"]] == ["src0", "src1"]  # most similar first
  assert payload["chosen"]["best_value"] == max(r["best_value"] for r in payload["runs"])
  # each run started from its source prompt
  import orbax.checkpoint  # noqa: F401
  from spot.train import checkpointing
  for r in payload["runs"]:
    assert (tmp_path / "runs" / r["source"] / "metrics.json").exists()
    assert checkpointing.latest_numpy_prompt(r["model_dir"]).shape == (4, 4)

  rc = library_main(["--library", str(lib_path), "--json", "transfer", "--embedding",
                     str(tmp_path / "target.npy"), "--mode", "mixture", "--top-k", "2",
                     "--target-task", "cli_glue_sst2", "--out-dir", str(tmp_path / "mix"), "--"]
                    + flags)
  assert rc == 0
  text = capsys.readouterr().out
  payload = json.loads(text[text.rindex("\n{") + 1:])
  assert set(payload["chosen"]["source"].split("+")) == {"cli_glue_rte", "cli_glue_sst2"}
  metrics = json.loads((tmp_path / "mix" / "mixture" / "metrics.json").read_text())
  assert metrics["task"] == "cli_glue_sst2"
