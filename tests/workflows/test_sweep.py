"""`spot sweep`: a tiny two-seed sweep on SST-2 from ../shared/data, end to end with the
real trainer; a rerun trains nothing; the plan's lines are `spot train` commands."""

from __future__ import annotations

import json
import shlex

import pytest

from spot import errors
from spot.workflows import sweep, sweep_cli
from tests import helpers

pytestmark = pytest.mark.filterwarnings("ignore")


def _train_flags(shared_data) -> list[str]:
  return ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
          "--gin_file=spot/gin/runs/prompt_finetune.gin",
          f"--gin.SPM_PATH='{shared_data / 't5_vocab' / 'spiece.model'}'",
          f"--gin.DATA_DIR='{shared_data}'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{shared_data / helpers.TINY_CHECKPOINT}'",
          "--gin.MIXTURE_OR_TASK_NAME='spot_glue_sst2'", "--gin.MIXTURE_OR_TASK_MODULE='spot.tasks'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.PROMPT_LENGTH=4",
          "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4", "--gin.EVAL_PERIOD=2",
          "--gin.EVAL_NUM_EXAMPLES=4", "--gin.EVAL_BATCH_SIZE=4", "--gin.LOG_EVERY=1"]


def test_a_tiny_sweep_runs_each_seed_once_and_a_rerun_skips_both(shared_data, tmp_path, capsys):
  out = tmp_path / "sweep"
  argv = ["run", "--dir", str(out), "--seeds", "0,1", "--", *_train_flags(shared_data)]
  assert sweep_cli.main(argv) == 0
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[sweep ")]
  assert lines[0].startswith("[sweep 0/2 ETA ?] 0 of 2 run(s) already finished")
  assert lines[-1].startswith("[sweep 2/2 ETA 0m00s] finished")
  for seed in (0, 1):
    metrics = json.loads((out / f"seed_{seed}" / "metrics.json").read_text())
    assert (metrics["seed"], metrics["init_seed"], metrics["data_seed"]) == (seed, seed, seed)
    assert metrics["protocol"] == "dev" and metrics["num_trainable"] > 0
    run = json.loads((out / f"seed_{seed}" / "run.json").read_text())
    assert (run["seed"], run["init_seed"], run["data_seed"]) == (seed, seed, seed)
  prompts = [json.loads((out / f"seed_{s}" / "run.json").read_text()) for s in (0, 1)]
  assert prompts[0]["task"] == prompts[1]["task"] == "spot_glue_sst2"
  # A rerun (settings from sweep.json) finds both finished and trains nothing.
  assert sweep_cli.main(["run", "--dir", str(out)]) == 0
  text = capsys.readouterr().out
  assert "2 of 2 run(s) already finished" in text and "training seed_" not in text


def test_vary_init_keeps_the_data_seed_and_the_plan_lines_train_each_run():
  spec = sweep.SweepSpec(seeds=(3, 4), vary="init", fixed_seed=7, train_flags=("--gin.X=1",))
  runs = sweep.plan_runs(spec, steps=10)
  assert [(r.run_id, r.seed, r.init_seed, r.data_seed) for r in runs] == [
      ("init_3_data_7", 7, 3, 7), ("init_4_data_7", 7, 4, 7)]
  data = sweep.plan_runs(sweep.SweepSpec(seeds=(1,), vary="data"), steps=10)[0]
  assert (data.run_id, data.init_seed, data.data_seed) == ("init_0_data_1", 0, 1)
  words = shlex.split(sweep.plan_commands(spec, "/s")[1])
  assert words == ["spot", "train", "--gin.X=1", '--gin.MODEL_DIR="/s/init_4_data_7"',
                   "--gin.SEED=7", "--gin.INIT_SEED=4", "--gin.DATA_SEED=7"]
  row = json.loads(sweep.plan_commands(spec, "/s", fmt="jsonl")[0])
  assert (row["run_id"], row["init_seed"], row["data_seed"]) == ("init_3_data_7", 3, 7)
  assert sweep.seeds_from(None, 3, start=2) == (2, 3, 4)


def test_bad_sweeps_are_named(tmp_path):
  with pytest.raises(errors.ConfigError, match="repeat a seed"):
    sweep.SweepSpec(seeds=(1, 1))
  with pytest.raises(errors.ConfigError, match="--vary"):
    sweep.SweepSpec(seeds=(1,), vary="both_ways")
  with pytest.raises(errors.UsageError, match="not both"):
    sweep.seeds_from((1,), 2)
  with pytest.raises(errors.MissingInputError, match="not a sweep directory"):
    sweep.read_spec(tmp_path)
  sweep.write_spec(tmp_path, sweep.SweepSpec(seeds=(0, 1)))
  with pytest.raises(errors.ConfigError, match="other settings"):
    sweep.write_spec(tmp_path, sweep.SweepSpec(seeds=(0, 2)))
  with pytest.raises(errors.UnknownNameError, match="seed_0"):
    sweep.find_run(sweep.plan_runs(sweep.SweepSpec(seeds=(0,)), 1), "seed_9")


def test_spot_sweep_plan_is_wired_into_the_spot_command(tmp_path, capsys):
  from spot import cli
  assert cli.spot_main(["sweep", "plan", "--dir", str(tmp_path), "--num-seeds", "2",
                        "--prog", "t5x train", "--", "--gin.X=1"]) == 0
  head, *lines = capsys.readouterr().out.splitlines()
  assert head.startswith("# spot sweep plan") and "2 of 2 run(s) unfinished" in head
  assert [shlex.split(l)[:3] for l in lines] == [["t5x", "train", "--gin.X=1"]] * 2
  assert "--gin.SEED=1" in shlex.split(lines[1])
  assert sweep.read_spec(tmp_path) == sweep.SweepSpec(seeds=(0, 1), train_flags=("--gin.X=1",))


def _finish(model_dir) -> None:
  """What a run that ended leaves for `study.is_finished`: a committed checkpoint, metrics."""
  from spot.checkpoints import run_dir
  final = run_dir.step_dir(str(model_dir), 2)
  for item in (run_dir.STATE_ITEM, run_dir.META_ITEM):
    (final / item).mkdir(parents=True)
  (final / run_dir.COMMIT_MARKER).write_text("ok")
  (model_dir / run_dir.METRICS_JSON).write_text("{}")


def test_plan_lists_only_unfinished_runs_for_every_launcher(tmp_path, capsys):
  from spot import cli
  argv = ["sweep", "plan", "--dir", str(tmp_path)]
  assert cli.spot_main(argv + ["--seeds", "0,1,2", "--", "--gin.X=1"]) == 0
  capsys.readouterr()
  _finish(tmp_path / "seed_1")
  assert cli.spot_main(argv + ["--format", "jsonl"]) == 0
  rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert [r["run_id"] for r in rows] == ["seed_0", "seed_2"]
  assert cli.spot_main(argv + ["--launcher", "slurm", "--partition", "gpu"]) == 0
  script = capsys.readouterr().out
  assert "2 unfinished run(s) in 1 stage(s)" in script and "#SBATCH --array=0-1" in script
  assert "#SBATCH --job-name=spot-sweep-1" in script and "#SBATCH --partition=gpu" in script
  assert "/bin/spot sweep run --dir " + str(tmp_path) in script
  assert "'seed_0'" not in script and "  seed_0" in script and "seed_1" not in script
  assert cli.spot_main(argv + ["--launcher", "tpu", "--tpu-name", "vm1"]) == 0
  tpu = [l for l in capsys.readouterr().out.splitlines() if not l.startswith("#")]
  assert len(tpu) == 2 and all("tools/tpu/tpu.py ssh --name vm1" in l for l in tpu)
  assert "sweep run --dir" in tpu[1] and "--only seed_2" in tpu[1]
  assert cli.spot_main(argv + ["--launcher", "multinode", "--hosts", "h1,h2"]) == 0
  multi = capsys.readouterr().out
  assert "ssh h1 " in multi and "ssh h2 " in multi and "spot report " + str(tmp_path) in multi
  for seed in (0, 2):
    _finish(tmp_path / f"seed_{seed}")
  assert cli.spot_main(argv) == 0
  assert "0 of 3 run(s) unfinished" in capsys.readouterr().out
