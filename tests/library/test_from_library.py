"""The `from_library` prompt initializer (resolved above prompts, in spot.workflows)
refuses an entry of another base model."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from spot import prompts
from spot.library import ModelMismatchError, PromptLibrary
from spot.workflows import library_init


@pytest.fixture
def lib(tmp_path, make_prompt) -> PromptLibrary:
  lib = PromptLibrary(tmp_path / "lib")
  lib.add("base_rte", make_prompt(1, 5, 8), model="t5_1_1_lm100k_base")
  lib.add("custom", make_prompt(2, 5, 8), model="my_model")
  return lib


def test_an_entry_of_another_model_is_refused(lib):
  rng = jax.random.PRNGKey(0)
  init = library_init.from_library(str(lib.path), "base_rte", model_family="t5_1_1",
                              model_size="tiny")
  with pytest.raises(ModelMismatchError) as caught:
    init(rng, (5, 8))  # same shape: only the model name tells them apart
  message = str(caught.value)
  for part in ("'base_rte'", "'t5_1_1_lm100k_base'", "t5_1_1_tiny", "--model t5_1_1_tiny"):
    assert part in message
  with pytest.raises(ModelMismatchError, match="embed dim 8.*embed dim 4"):
    library_init.from_library(str(lib.path), "base_rte")(rng, (5, 4))


def test_an_entry_of_the_run_model_initialises_it(lib, make_prompt):
  rng = jax.random.PRNGKey(0)
  got = library_init.from_library(str(lib.path), "base_rte", model_family="t5_1_1",
                             model_size="base")(rng, (5, 8))
  np.testing.assert_array_equal(np.asarray(got), make_prompt(1, 5, 8))
  # A model name outside the known families is checked by its embed dim only.
  got = library_init.from_library(str(lib.path), "custom", "t5_1_1", "base")(rng, (5, 8))
  np.testing.assert_array_equal(np.asarray(got), make_prompt(2, 5, 8))
  with pytest.raises(ValueError, match="PROMPT_LENGTH=5"):
    library_init.from_library(str(lib.path), "base_rte", "t5_1_1", "base")(rng, (4, 8))


def test_the_gin_file_binds_the_run_model(tmp_path, lib):
  import gin
  from spot.train import cli
  flags = ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
           "--gin_file=spot/gin/prompts/from_library.gin",
           "--gin_file=spot/gin/runs/prompt_finetune.gin",
           f"--gin.LIBRARY_PATH='{lib.path}'", "--gin.LIBRARY_ENTRY='base_rte'",
           "--gin.MODEL_DIR='/tmp/m'", "--gin.MIXTURE_OR_TASK_NAME='x'",
           "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}", "--gin.TRAIN_STEPS=1",
           "--gin.INITIAL_CHECKPOINT_PATH='/tmp/ckpt'"]
  args = cli.build_parser("t").parse_args(cli.rewrite_gin_args(flags))
  try:
    cli.parse_gin(args.gin_file, args.gin_bindings, cli._search_paths(""))  # pylint: disable=protected-access
    init = gin.get_configurable(library_init.from_library)()
    with pytest.raises(ModelMismatchError, match="t5_1_1_tiny"):
      init(jax.random.PRNGKey(0), (5, 8))
  finally:
    gin.clear_config()


def test_the_prompts_initializer_takes_a_resolved_loader(make_prompt):
  """spot.prompts gets a loader from the edge: it is given the run's embed dim."""
  seen = []

  def load(embed_dim):
    seen.append(embed_dim)
    return make_prompt(3, 5, 8)

  got = prompts.from_library(load, "entry 'x'")(jax.random.PRNGKey(0), (5, 8))
  np.testing.assert_array_equal(np.asarray(got), make_prompt(3, 5, 8))
  assert seen == [8]
  with pytest.raises(ValueError, match="entry 'x'.*PROMPT_LENGTH=5"):
    prompts.from_library(load, "entry 'x'")(jax.random.PRNGKey(0), (4, 8))
