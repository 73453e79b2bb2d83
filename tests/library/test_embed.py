"""`spot library embed`: a task embedding from a short prompt run, then retrieval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spot.library import PromptLibrary
from spot.library.cli import main as library_main
from spot.library.embedding import compute_task_embedding

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
  rte = compute_task_embedding(_flags(shared_data, "cli_glue_rte"), steps=3)
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
