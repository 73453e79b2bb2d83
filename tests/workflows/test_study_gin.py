"""A study's grid as gin: `spot study run|plan --gin_file=spot/gin/study/... --gin.X=Y`.

The example config parses into a plain StudySpec whose train flags are valid
`spot train` flags; command-line flags override the gin file and its bindings,
train flags after `--` come last (so they win for every run), and bad gin is
named.
"""

from __future__ import annotations

import pytest

from spot import errors
from spot.workflows import study as study_lib
from spot.workflows import study_cli
from spot.workflows import study_gin

pytestmark = pytest.mark.filterwarnings("ignore")
GLUE = "spot/gin/study/glue_small.gin"
GLUE_SOURCES = ("spot_glue_mrpc", "spot_glue_qnli", "spot_glue_sst2")


def test_the_example_config_is_a_plain_study_whose_runs_parse():
  from spot.workflows import settings
  values = study_gin.values_from_gin([GLUE], [])
  spec = study_lib.StudySpec(**values)
  assert spec.sources == GLUE_SOURCES and spec.targets == ("spot_glue_rte", "spot_glue_cola")
  assert spec.seeds == (0, 1) and (spec.source_steps, spec.target_steps) == (2000, 1000)
  assert (spec.embedding_step, spec.top_ks, spec.weighted_k, spec.mixture_k) == (100, (1, 2), 2, 2)
  assert spec.train_flags[:3] == ("--gin_file=spot/gin/models/t5_1_1.gin",
                                  "--gin_file=spot/gin/models/prompt.gin",
                                  "--gin_file=spot/gin/runs/prompt_finetune.gin")
  assert "--gin.DATA_DIR='../shared/data'" in spec.train_flags
  assert len(study_lib.plan_runs(spec)) == 2 * (3 + 2) + 2 * 2 * (3 + 1 + 1)
  # The study's gin is gone again, and the runs' flags are spot train's own.
  base = settings.from_flags(list(spec.train_flags), defaults=[
      "MODEL_DIR = 'unused'", "MIXTURE_OR_TASK_NAME = 'spot_glue_rte'", "TRAIN_STEPS = 10"])
  assert base.initial_checkpoint_path == "../shared/data/t5x_tiny_checkpoint/checkpoint_3"
  assert base.train_dataset_cfg.data_dir == "../shared/data"
  assert base.macros["MODEL_SIZE"] == "tiny" and base.model.config.emb_dim == 4
  assert base.train_dataset_cfg.module == "spot.tasks"


def test_flags_override_gin_and_train_flags_come_last(tmp_path, capsys):
  d = str(tmp_path / "study")
  assert study_cli.main(["plan", "--dir", d, f"--gin_file={GLUE}", "--seeds", "3",
                         "--gin.study_config.seeds=[5, 6]", "--gin.study_config.mixture_k=0",
                         "--gin.DATA_DIR='/data/glue'", "--target", "spot_glue_rte",
                         "--", "--gin.BATCH_SIZE=8"]) == 0
  spec = study_lib.read_spec(d)
  assert spec.seeds == (3,)  # the flag beats the binding, which beats the file
  assert spec.mixture_k == 0 and spec.weighted_k == 2  # a binding beats the file
  assert spec.targets == ("spot_glue_rte",) and spec.sources == GLUE_SOURCES
  assert "--gin.DATA_DIR='/data/glue'" in spec.train_flags  # the study's macro moved the runs
  assert spec.train_flags[-1] == "--gin.BATCH_SIZE=8"  # after the gin file's, so it wins
  assert spec.train_flags.index("--gin.BATCH_SIZE=32") < len(spec.train_flags) - 1
  from spot.workflows import settings
  base = settings.from_flags(list(spec.train_flags), defaults=[
      "MODEL_DIR = 'unused'", "MIXTURE_OR_TASK_NAME = 'spot_glue_rte'", "TRAIN_STEPS = 10"])
  assert base.train_dataset_cfg.batch_size == 8 and base.train_dataset_cfg.data_dir == "/data/glue"
  lines = [x for x in capsys.readouterr().out.splitlines() if not x.startswith("#")]
  assert len(lines) == 3 + 1 + 3 + 1  # seed 3 only: sources, baseline, transfers, weighted
  # Later commands on the directory read study.json; other gin settings are refused.
  assert study_cli.main(["plan", "--dir", d]) == 0
  with pytest.raises(errors.ConfigError, match="other settings.*seeds"):
    study_cli.main(["plan", "--dir", d, f"--gin_file={GLUE}", "--target", "spot_glue_rte",
                    "--gin.study_config.mixture_k=0", "--gin.DATA_DIR='/data/glue'", "--",
                    "--gin.BATCH_SIZE=8"])


def test_bad_study_gin_is_named(tmp_path):
  d = str(tmp_path / "study")
  with pytest.raises(errors.ConfigError, match="study_config.nope"):
    study_cli.main(["plan", "--dir", d, f"--gin_file={GLUE}", "--gin.study_config.nope=1"])
  with pytest.raises(errors.UsageError, match="--gin_file=spot/gin/study/glue_small.gin"):
    study_cli.main(["plan", "--dir", d, "--gin.study_config.seeds=[1]"])
  empty = tmp_path / "empty.gin"
  empty.write_text("import spot.workflows.study_gin\nstudy_config.seeds = [0]\n")
  with pytest.raises(errors.UsageError, match="needs --source TASK and --target TASK"):
    study_cli.main(["plan", "--dir", d, f"--gin_file={empty}"])
  with pytest.raises(errors.ConfigError, match="not found"):
    study_cli.main(["plan", "--dir", d, "--gin_file=spot/gin/study/nope.gin"])


def test_run_takes_the_same_gin_and_flags(tmp_path):
  argv = study_cli.study_argv(["run", "--dir", str(tmp_path), f"--gin_file={GLUE}",
                               "--gin.study_config.weighted_k=0", "--mixture-k", "1",
                               "--only", "sources/spot_glue_qnli/seed0", "--",
                               "--gin.TRAIN_STEPS=3"])
  assert argv[3:5] == [f"--gin_file={GLUE}", "--gin_bindings=study_config.weighted_k = 0"]
  assert argv[-1] == "--gin.TRAIN_STEPS=3"  # after --: left to spot train
  args = study_cli.build_parser().parse_args(argv)
  spec = study_cli.spec_from_args(args)
  assert (spec.weighted_k, spec.mixture_k, spec.seeds) == (0, 1, (0, 1))
  assert args.only == ["sources/spot_glue_qnli/seed0"]
  assert spec.train_flags[-1] == "--gin.TRAIN_STEPS=3"
