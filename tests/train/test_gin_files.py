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


def _operative(argv):
  """The parsed config's model config and prompt initializer (no run)."""
  import gin
  from spot import models, prompts
  args = cli.build_parser("t").parse_args(cli.rewrite_gin_args(argv))
  cli.parse_gin(args.gin_file, args.gin_bindings, cli._search_paths(""))
  try:
    return (gin.get_configurable(models.get_config)(),
            gin.query_parameter("PROMPT_INIT/macro.value"),
            gin.query_parameter("PROMPT_LENGTH/macro.value"))
  finally:
    gin.clear_config()


@pytest.mark.parametrize("size", [["--gin.MODEL_SIZE='tiny'"],
                                  ["--gin_file=spot/gin/models/sizes/tiny.gin"]])
def test_model_size_resizes_glue_mix_keeping_its_initializer(size):
  ckpt = ["--gin.MODEL_DIR='/tmp/m'", "--gin.INITIAL_CHECKPOINT_PATH='/tmp/c'"]
  flags = ["--gin_file=spot/gin/glue_mix.gin"] + [f for f in size if f.startswith("--gin_file")]
  flags += ckpt + [f for f in size if not f.startswith("--gin_file")]
  config, init, length = _operative(flags)
  assert (config.emb_dim, config.num_encoder_layers, config.relative_attention_max_distance) == (
      4, 2, 8)
  assert init.selector.endswith("sampled_vocab")  # glue_mix's initializer, not random_uniform
  assert length == 100
  base, init, _ = _operative(["--gin_file=spot/gin/glue_mix.gin"] + ckpt)
  assert (base.emb_dim, base.num_encoder_layers) == (768, 12)
  assert init.selector.endswith("sampled_vocab")


def test_a_model_file_after_glue_mix_is_refused_not_a_silent_reset(capsys):
  """Regression: t5_1_1_tiny_prompt.gin after glue_mix.gin re-included prompt.gin and
  silently switched PROMPT_INIT from sampled vocabulary to random uniform."""
  rc = cli.main(["--gin_file=spot/gin/glue_mix.gin",
                 "--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
                 "--gin.MODEL_DIR='/tmp/m'", "--gin.INITIAL_CHECKPOINT_PATH='/tmp/c'",
                 "--print_config"], mode="train")
  err = capsys.readouterr().err
  assert rc == 2
  assert "spot/gin/models/prompt.gin again" in err
  assert "PROMPT_INIT (set by spot/gin/prompts/from_sampled_vocab.gin)" in err
  assert "--gin.MODEL_SIZE=\"'tiny'\"" in err
  assert len(err.strip().splitlines()) == 1
  # A model file before a run file (no file twice) is fine, and so is a prompts file
  # after a model file: that override is what prompts/*.gin are for.
  _parses(["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
           "--gin_file=spot/gin/prompts/from_sampled_vocab.gin",
           "--gin_file=spot/gin/runs/prompt_finetune.gin"] + REQUIRED)


def test_an_unknown_model_size_names_the_macro():
  from spot import errors
  with pytest.raises(errors.UsageError, match="MODEL_SIZE='tinyy' is not a size of t5_1_1"):
    _operative(["--gin_file=spot/gin/glue_mix.gin", "--gin.MODEL_DIR='/tmp/m'",
                "--gin.INITIAL_CHECKPOINT_PATH='/tmp/c'", "--gin.MODEL_SIZE='tinyy'"])
