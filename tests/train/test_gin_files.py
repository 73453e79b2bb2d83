"""Every gin file under spot/gin parses in the combinations the docs show."""

from __future__ import annotations

import pathlib

import pytest

from spot.train import cli

GIN = pathlib.Path(cli.GIN_ROOT)
REQUIRED = ["--gin.MODEL_DIR='/tmp/m'", "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rte'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}", "--gin.TRAIN_STEPS=1",
            "--gin.INITIAL_CHECKPOINT_PATH='/tmp/ckpt'"]
PROMPT_MACROS = {"from_class_labels": ["--gin.CLASS_LABELS=['a', 'b']"],
                 "from_class_labels_numpy": ["--gin.CLASS_LABELS=['a']",
                                             "--gin.EMBEDDING_FILE='/e.npy'"],
                 "from_sampled_vocab_numpy": ["--gin.EMBEDDING_FILE='/e.npy'"],
                 "from_string": ["--gin.PROMPT_TEXT='classify'"],
                 "from_file": ["--gin.PROMPT_FILE='/p.npy'"],
                 "from_t5x": ["--gin.PROMPT_CHECKPOINT='/c'"],
                 "from_library": ["--gin.LIBRARY_PATH='/l'", "--gin.LIBRARY_ENTRY='x'"],
                 "factorized": ["--gin.NUM_LANGUAGES=3", "--gin.NUM_TASKS=2"],
                 "multitask": ["--gin.NUM_PROMPTS=3"]}


def _parses(argv, mode="train"):
  rc = cli.main(argv + ["--print_config"], mode=mode)
  assert rc == 0, argv


SIZED = [p.stem for p in (GIN / "models").glob("*.gin")
         if p.stem.removesuffix("_prompt").rsplit("_", 1)[-1] in (
             "tiny", "small", "base", "large", "xl", "xxl", "3b", "11b")]


@pytest.mark.parametrize("model", sorted(SIZED))
def test_every_model_file_with_a_run(model, capsys):
  run = "model_finetune" if not model.endswith("prompt") else "prompt_finetune"
  _parses([f"--gin_file=spot/gin/models/{model}.gin", f"--gin_file=spot/gin/runs/{run}.gin"]
          + REQUIRED)
  out = capsys.readouterr().out
  assert f"MODEL_SIZE = '{model.split('_')[-2 if model.endswith('prompt') else -1]}'" in out


@pytest.mark.parametrize("prompt", sorted(p.stem for p in (GIN / "prompts").glob("*.gin")))
def test_every_prompt_initializer(prompt):
  _parses(["--gin_file=spot/gin/models/t5_1_1_base_prompt.gin",
           f"--gin_file=spot/gin/prompts/{prompt}.gin",
           "--gin_file=spot/gin/runs/prompt_finetune.gin"] + REQUIRED +
          PROMPT_MACROS.get(prompt, []))


@pytest.mark.parametrize("decoding", sorted(p.stem for p in (GIN / "decoding").glob("*.gin")))
def test_eval_and_infer_runs_with_decoding(decoding):
  base = ["--gin_file=spot/gin/models/t5_1_1_small_prompt.gin",
          "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rte'"]
  _parses(base + ["--gin_file=spot/gin/runs/prompt_eval.gin",
                  f"--gin_file=spot/gin/decoding/{decoding}.gin",
                  "--gin.EVAL_OUTPUT_DIR='/tmp/e'"], mode="eval")
  _parses(base + ["--gin_file=spot/gin/runs/prompt_infer.gin",
                  f"--gin_file=spot/gin/decoding/{decoding}.gin",
                  "--gin.INFER_OUTPUT_DIR='/tmp/i'",
                  "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}"], mode="infer")


def test_glue_mix_and_xgen_recipes(capsys):
  ckpt = ["--gin.MODEL_DIR='/tmp/m'", "--gin.INITIAL_CHECKPOINT_PATH='/tmp/c'"]
  _parses(["--gin_file=spot/gin/glue_mix.gin"] + ckpt)
  assert "MIXTURE_OR_TASK_NAME = 'spot_glue_mix'" in capsys.readouterr().out
  pt = ["--gin_file=spot/gin/models/mt5_small_prompt.gin",
        "--gin_file=spot/gin/runs/prompt_finetune.gin",
        "--gin_file=spot/gin/xgen/wikilingua0.gin"]
  for extra in ("prompt_length_1", "prompt_length_1000", "mix_unsup"):
    _parses(pt + [f"--gin_file=spot/gin/xgen/{extra}.gin"] + ckpt)
  _parses(["--gin_file=spot/gin/models/mt5_small.gin", "--gin_file=spot/gin/runs/prompt_finetune.gin",
           "--gin_file=spot/gin/xgen/wikilingua0.gin", "--gin_file=spot/gin/xgen/model_tuning.gin"]
          + ckpt)
  _parses(["--gin_file=spot/gin/models/mt5_small_prompt.gin",
           "--gin_file=spot/gin/prompts/factorized.gin",
           "--gin_file=spot/gin/runs/prompt_finetune.gin",
           "--gin_file=spot/gin/xgen/factorized_train.gin"] + ckpt)
  _parses(["--gin_file=spot/gin/models/mt5_small_prompt.gin",
           "--gin_file=spot/gin/prompts/factorized.gin",
           "--gin_file=spot/gin/runs/prompt_eval.gin",
           "--gin_file=spot/gin/xgen/factorized_eval.gin",
           "--gin.EVAL_OUTPUT_DIR='/tmp/e'", "--gin.RESTORE_MODEL_DIR='/tmp/r'"], mode="eval")
