"""CrossFit-style study: K-shot tasks per seed, first-order MAML and multi-task upstream on
GLUE tasks from ../shared/data, the downstream grid with its best cells and ARG."""

from __future__ import annotations

import dataclasses
import json
import zlib

import numpy as np
import pytest

from spot import errors
from spot.workflows import crossfit
from spot.workflows import fewshot
from spot.workflows import settings as settings_lib

pytestmark = pytest.mark.filterwarnings("ignore")
UPSTREAM = ("spot_glue_sst2", "spot_glue_mrpc")
DOWNSTREAM = ("spot_glue_rte", "spot_glue_sst2")


def _flags(shared_data, task="spot_glue_rte"):
  return ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
          "--gin_file=spot/gin/runs/prompt_finetune.gin",
          f"--gin.SPM_PATH='{shared_data / 't5_vocab' / 'spiece.model'}'",
          f"--gin.DATA_DIR='{shared_data}'", "--gin.PACK=False",
          f"--gin.MIXTURE_OR_TASK_NAME='{task}'", "--gin.PROMPT_LENGTH=4",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.BATCH_SIZE=4",
          "--gin.LEARNING_RATE=0.3", "--gin.TRAIN_STEPS=2", "--gin.EVAL_NUM_EXAMPLES=4",
          "--gin.EVAL_BATCH_SIZE=4", "--gin.MODEL_DIR='/unused'", "--gin.LOG_EVERY=100",
          f"--gin.INITIAL_CHECKPOINT_PATH='{shared_data / 't5x_tiny_checkpoint' / 'checkpoint_3'}'"]


def _texts(name: str) -> list[bytes]:
  import seqio
  ds = seqio.get_mixture_or_task(name).get_dataset(None, split="train", shuffle=False)
  return [ex["inputs_pretokenized"] for ex in ds.as_numpy_iterator()]


def test_kshot_samples_are_fixed_by_the_seed_and_have_exactly_k(shared_data):
  from spot.tasks import glue
  task = glue.register_glue(data_dir=str(shared_data / "glue"),
                            vocabulary=str(shared_data / "t5_vocab" / "spiece.model"),
                            name_prefix="fs_glue", tasks=["rte"])[0]
  first = _texts(fewshot.register_fewshot(task, 8, seed=0, pool=200))
  again = _texts(fewshot.register_fewshot(task, 8, seed=0, pool=200))
  other = _texts(fewshot.register_fewshot(task, 8, seed=1, pool=200))
  assert len(first) == len(set(first)) == 8 and len(other) == 8
  assert first == again and first != other
  import seqio
  pool = [ex["sentence1"] for ex in fewshot.read_pool(seqio.get_mixture_or_task(task), 200)]
  assert len(pool) == 200
  chosen = fewshot.sample_indices(200, 8, 0)
  assert all(pool[i].decode() in text.decode() for i, text in zip(chosen, first))
  np.testing.assert_array_equal(chosen, fewshot.sample_indices(200, 8, 0))
  with pytest.raises(errors.DataError, match="K=300 shots.*only 200"):
    fewshot.sample_indices(200, 300, 0)


def _fomaml(study_dir, shared_data, steps=8):
  # Without dropout, so that 8 outer steps of a width-4 model lower the loss measurably.
  base = settings_lib.from_flags(_flags(shared_data) + ["--gin.DROPOUT_RATE=0.0"])
  spec = crossfit.UpstreamSpec(tasks=UPSTREAM, algorithm="fomaml", steps=steps, inner_lr=0.1,
                               outer_lr=0.3, inner_steps=1, inner_batch_size=4,
                               tasks_per_meta_batch=2)
  lines = []
  model_dir = crossfit.run_upstream(base, spec, str(study_dir), log=lines.append)
  return base, spec, model_dir, lines


@pytest.fixture(scope="module")
def fomaml_run(shared_data, tmp_path_factory):
  """One first-order MAML upstream run (8 outer steps), shared by the tests below."""
  study_dir = tmp_path_factory.mktemp("crossfit") / "cf"
  return (study_dir,) + _fomaml(study_dir, shared_data)


def _upstream_loss(base, spec, trainable, frozen) -> float:
  """Mean per-token loss over the first support and query batches of each upstream task
  (batches MAML trained on: the upstream objective)."""
  import itertools
  from spot.train import maml
  losses = []
  for t in UPSTREAM:
    stream = crossfit.task_batches(base, t, spec.inner_batch_size, seed=spec.seed)
    losses += [maml.token_loss(base.model, trainable, frozen, b)
               for b in itertools.islice(stream, 2)]
  return float(np.mean(losses))


def test_fomaml_upstream_is_a_prompt_run_and_its_loss_falls(fomaml_run, shared_data):
  from spot.checkpoints import run_dir
  from spot.train import state as state_lib
  from spot.train import trainable as trainable_lib
  study_dir, base, spec, model_dir, lines = fomaml_run
  losses = [r["query_loss"] for r in json.loads(
      (study_dir / crossfit.UPSTREAM_JSON).read_text())["losses"]]
  assert len(losses) == spec.steps and np.all(np.isfinite(losses))
  assert lines[-1].startswith(f"[fomaml {spec.steps}/{spec.steps}] query loss")
  assert run_dir.committed_steps(model_dir) == [spec.steps]
  prompt = crossfit.upstream_prompt(model_dir)
  assert prompt.shape == (4, base.model.config.emb_dim)
  meta = run_dir.read_run_json(model_dir)
  assert meta["num_trainable"] == prompt.size and meta["num_frozen"] > 100 * prompt.size
  # A normal run: eval and transfer rebuild its parameters from the base and the checkpoint.
  params, _ = state_lib.params_from_run(base.model, str(model_dir))
  np.testing.assert_array_equal(np.asarray(params["encoder"]["prompt"]["prompt"]["prompt"]),
                                prompt)
  # The upstream loss falls: the upstream prompt beats its initial value on its batches.
  start = state_lib.initial_params(base.model, base.initial_checkpoint_path, spec.seed)
  initial, frozen = trainable_lib.split(start, "prompt")
  trained, _ = trainable_lib.split(params, "prompt")
  before = _upstream_loss(base, spec, initial, frozen)
  after = _upstream_loss(base, spec, trained, frozen)
  assert after < before - 0.005, (before, after)  # a width-4 model: a small, fixed drop
  # Finished: a rerun skips it.
  _, _, _, again = _fomaml(study_dir, shared_data)
  assert again == [f"upstream {model_dir} is finished ({spec.steps} steps); skipped"]


def test_a_killed_fomaml_upstream_resumes_and_ends_where_an_uninterrupted_run_does(
    fomaml_run, tmp_path):
  study_dir, base, spec, model_dir, _ = fomaml_run
  every4 = dataclasses.replace(base, log_every=1, checkpoint_cfg=dataclasses.replace(
      base.checkpoint_cfg, period=4))

  def killed_at_step_6(line: str) -> None:
    if line.startswith("[fomaml 6/"):
      raise KeyboardInterrupt("killed")

  with pytest.raises(KeyboardInterrupt):
    crossfit.run_upstream(every4, spec, str(tmp_path / "cf"), log=killed_at_step_6)
  from spot.checkpoints import run_dir
  resumed_dir = crossfit.upstream_dir(tmp_path / "cf")
  assert run_dir.committed_steps(resumed_dir) == [4]
  assert not (tmp_path / "cf" / crossfit.UPSTREAM_JSON).exists()  # not finished: no record
  lines = []
  crossfit.run_upstream(every4, spec, str(tmp_path / "cf"), log=lines.append)
  assert "upstream: resuming first-order MAML from outer step 4 of 8" in lines
  assert lines[-1].startswith("[fomaml 8/8]") and not any("[fomaml 4/" in l for l in lines)
  # The same tasks, batches and updates as the uninterrupted run: the same losses and prompt.
  want = json.loads((study_dir / crossfit.UPSTREAM_JSON).read_text())["losses"]
  got = json.loads((tmp_path / "cf" / crossfit.UPSTREAM_JSON).read_text())["losses"]
  assert [r["tasks"] for r in got] == [r["tasks"] for r in want]
  np.testing.assert_allclose([r["query_loss"] for r in got], [r["query_loss"] for r in want],
                             rtol=1e-5)
  np.testing.assert_allclose(crossfit.upstream_prompt(resumed_dir),
                             crossfit.upstream_prompt(model_dir), atol=1e-6)
  # Other settings in the same directory are refused, not mixed in.
  other = dataclasses.replace(spec, steps=12)
  (tmp_path / "cf" / crossfit.UPSTREAM_JSON).unlink()
  with pytest.raises(errors.ConfigError, match="upstream run of other settings"):
    crossfit.run_upstream(every4, other, str(tmp_path / "cf"), log=lines.append)


def test_upstream_seeds_follow_init_seed_and_data_seed(shared_data):
  base = settings_lib.from_flags(_flags(shared_data) + ["--gin.INIT_SEED=5", "--gin.DATA_SEED=7"])
  spec = crossfit.UpstreamSpec(tasks=UPSTREAM, seed=3)
  assert crossfit.upstream_seeds(base, spec) == (5, 7)
  assert crossfit.upstream_seeds(settings_lib.from_flags(_flags(shared_data)), spec) == (3, 3)
  assert crossfit.meta_batch_tasks(spec, 2, 7) == crossfit.meta_batch_tasks(
      dataclasses.replace(spec, seed=7), 2)
  run = crossfit.multitask_settings(base, spec, "/tmp/unused_upstream")
  assert (run.seed, run.init_seed, run.data_seed, run.train_dataset_cfg.seed) == (3, 5, 7, 7)


class StandInTrainer:
  """Writes what a finished trainer run leaves (committed checkpoint, run.json, metrics.json);
  a run's score is a fixed function of its model_dir."""

  def __init__(self):
    self.settings = []

  def __call__(self, s: settings_lib.TrainSettings) -> None:
    from spot import report
    from spot.checkpoints import run_dir
    self.settings.append(s)
    final = run_dir.step_dir(s.model_dir, s.train_steps)
    for item in (run_dir.STATE_ITEM, run_dir.META_ITEM):
      (final / item).mkdir(parents=True)
    (final / run_dir.COMMIT_MARKER).write_text("ok")
    run_dir.write_run_json(s.model_dir, {"num_trainable": 4 * 32, "num_frozen": 99_872})
    score = 30 + 60 * (zlib.crc32(s.model_dir.split("/cf/")[1].encode()) % 1000) / 1000
    report.write_run_metrics(s.model_dir, s.train_dataset_cfg.mixture_or_task_name, s.method,
                             s.seed, {"accuracy": score})


def test_a_tiny_crossfit_study_end_to_end_and_its_arg(fomaml_run, shared_data):
  from spot import report
  from spot.train import state as state_lib
  study_dir, _, _, model_dir, _ = fomaml_run
  tmp_path = study_dir.parent
  spec = crossfit.DownstreamSpec(tasks=DOWNSTREAM, learning_rates=(0.3, 1.0), batch_sizes=(4,),
                                 shots=(8,), seeds=(0, 1), steps=3, pool=100,
                                 train_flags=tuple(_flags(shared_data)))
  trainer = StandInTrainer()
  lines = []
  crossfit.run_downstream(spec, str(tmp_path / "cf"), train=trainer, log=lines.append)
  assert len(trainer.settings) == 2 * 2 * 2 * 2  # inits x tasks x seeds x learning rates
  assert lines[0].startswith("[crossfit 0/16 ETA ?] 0 of 16 cell(s) already finished")
  assert lines[-1].startswith("[crossfit 16/16 ETA 0m00s] finished")
  first = trainer.settings[0]
  assert first.train_dataset_cfg.mixture_or_task_name == "spot_glue_rte_8shot_s0"
  assert first.model_dir.endswith("downstream/upstream/spot_glue_rte/k8/lr0.3_bs4/seed0")
  assert "LEARNING_RATE = 0.3" in first.gin_config and first.train_steps == 3
  assert "LEARNING_RATE = 1.0" in trainer.settings[1].gin_config
  assert trainer.settings[2].train_dataset_cfg.mixture_or_task_name == "spot_glue_rte_8shot_s1"
  # Upstream cells start from the upstream prompt; baseline cells from their own init.
  up = crossfit.upstream_prompt(model_dir)
  start = state_lib.initial_params(first.model, first.initial_checkpoint_path, first.seed)
  np.testing.assert_array_equal(np.asarray(start["encoder"]["prompt"]["prompt"]["prompt"]), up)
  baseline = next(s for s in trainer.settings if "/baseline/" in s.model_dir)
  assert "random_uniform" in baseline.model.prompt.keywords["prompt_init"].__qualname__

  r = crossfit.write_report(tmp_path / "cf")
  assert r["missing"] == []
  block = r["results"][0]
  assert block["shots"] == 8
  # The best cell per task and seed is the better of its two learning rates.
  for task in DOWNSTREAM:
    for init in crossfit.INITS:
      best = [max(crossfit.cell_score(tmp_path / "cf", spec,
                                      crossfit.Cell(init, task, 8, lr, 4, seed))
                  for lr in (0.3, 1.0)) for seed in (0, 1)]
      cell = block["tasks"][task][init]
      assert [cell["seeds"]["0"], cell["seeds"]["1"]] == pytest.approx(best)
      assert cell["mean"] == pytest.approx(np.mean(best))
      assert cell["std"] == pytest.approx(np.std(best, ddof=1))
  # ARG by hand from the report's own per-task numbers.
  gains = [(block["tasks"][t]["upstream"]["mean"] - block["tasks"][t]["baseline"]["mean"])
           / block["tasks"][t]["baseline"]["mean"] * 100 for t in DOWNSTREAM]
  assert block["arg"] == pytest.approx(np.mean(gains))
  assert block["arg"] == pytest.approx(report.average_relative_gain(
      {t: block["tasks"][t]["upstream"]["mean"] for t in DOWNSTREAM},
      {t: block["tasks"][t]["baseline"]["mean"] for t in DOWNSTREAM}))
  md = (tmp_path / "cf" / "report" / crossfit.REPORT_MD).read_text()
  assert r["tunable"]["percent"] == pytest.approx(100 * 128 / 99_872)
  assert "Tunable parameters: 128 (0.1282% of the 99,872 of the frozen base)." in md
  assert f"ARG: {block['arg']:+.2f}%" in md and "| spot_glue_rte |" in md
  # A rerun trains nothing; another grid in the same dir is refused.
  again = StandInTrainer()
  crossfit.run_downstream(spec, str(tmp_path / "cf"), train=again, log=lines.append)
  assert again.settings == []
  with pytest.raises(errors.ConfigError, match="another downstream grid"):
    crossfit.run_downstream(crossfit.DownstreamSpec(**dict(spec.to_json(), steps=4) | {
        k: tuple(v) for k, v in spec.to_json().items() if isinstance(v, list)}),
                            str(tmp_path / "cf"), train=again)


def test_multitask_upstream_then_a_real_downstream_cell(shared_data, tmp_path):
  from spot.checkpoints import run_dir
  base = settings_lib.from_flags(_flags(shared_data))
  spec = crossfit.UpstreamSpec(tasks=UPSTREAM, algorithm="multitask", steps=2)
  model_dir = crossfit.run_upstream(base, spec, str(tmp_path / "cf"), log=lambda m: None)
  assert run_dir.committed_steps(model_dir) == [2]
  assert crossfit.upstream_prompt(model_dir).shape == (4, base.model.config.emb_dim)
  assert run_dir.read_run_json(model_dir)["task"].startswith("spot_transfer_mix_")
  down = crossfit.DownstreamSpec(tasks=("spot_glue_rte",), learning_rates=(0.3,),
                                 batch_sizes=(4,), shots=(4,), seeds=(0,), steps=2, pool=50,
                                 train_flags=tuple(_flags(shared_data)))
  crossfit.run_downstream(down, str(tmp_path / "cf"), log=lambda m: None)
  r = crossfit.write_report(tmp_path / "cf")
  assert r["missing"] == []
  row = r["results"][0]["tasks"]["spot_glue_rte"]
  for init in crossfit.INITS:
    assert 0.0 <= row[init]["mean"] <= 100.0
  assert r["tunable"]["num_trainable"] == 4 * base.model.config.emb_dim


def test_bad_settings_name_the_flag():
  with pytest.raises(errors.ConfigError, match="--algorithm 'reptile'"):
    crossfit.UpstreamSpec(tasks=UPSTREAM, algorithm="reptile")
  with pytest.raises(errors.ConfigError, match="--tasks-per-meta-batch 3 must be between 1 and"):
    crossfit.UpstreamSpec(tasks=UPSTREAM, algorithm="fomaml", tasks_per_meta_batch=3)
  with pytest.raises(errors.ConfigError, match="learning_rates .* repeat a value"):
    crossfit.DownstreamSpec(tasks=DOWNSTREAM, learning_rates=(0.3, 0.3), batch_sizes=(4,),
                            shots=(8,))
  with pytest.raises(errors.ConfigError, match="K=0 shots"):
    fewshot.sample_indices(10, 0, 0)


def test_the_commands_refuse_missing_tasks_and_flags(capsys):
  from spot import cli
  assert cli.spot_main(["crossfit", "upstream", "--dir", "/tmp/unused"]) != 0
  assert "upstream needs --task TASK" in capsys.readouterr().err
  assert cli.spot_main(["crossfit", "downstream", "--dir", "/tmp/unused", "--task", "t",
                        "--", "--gin.X=1"]) != 0
  assert "needs --task, --lr and --batch-size" in capsys.readouterr().err


def test_downstream_from_a_peft_upstream_starts_from_its_checkpoint(shared_data, tmp_path):
  flags = _flags(shared_data)
  flags[0] = "--gin_file=spot/gin/models/t5_1_1_tiny.gin"
  flags = [f for f in flags if "PROMPT_LENGTH" not in f] + ["--gin_file=spot/gin/peft/lora.gin"]
  spec = crossfit.DownstreamSpec(tasks=("spot_glue_rte",), learning_rates=(0.3,),
                                 batch_sizes=(4,), shots=(4,), steps=1, train_flags=tuple(flags))
  upstream = tmp_path / "lora_upstream"
  trainer = StandInTrainer()
  crossfit.run_downstream(dataclasses.replace(spec, upstream=str(upstream)),
                          str(tmp_path / "cf"), train=trainer, log=lambda m: None)
  by_init = {s.model_dir.split("/downstream/")[1].split("/")[0]: s for s in trainer.settings}
  assert by_init["upstream"].extra["init_trainable_from"] == str(upstream)
  assert by_init["upstream"].model.peft.method == "lora"
  assert by_init["baseline"].extra.get("init_trainable_from") is None


def test_a_downstream_task_without_a_dev_split_is_refused_before_any_cell(shared_data, tmp_path):
  # ../shared/data has MRPC's train and test files only.
  spec = crossfit.DownstreamSpec(tasks=("spot_glue_mrpc",), learning_rates=(0.3,),
                                 batch_sizes=(4,), shots=(4,), steps=1,
                                 train_flags=tuple(_flags(shared_data, task="spot_glue_mrpc")))
  trainer = StandInTrainer()
  with pytest.raises(errors.MissingInputError, match="spot_glue_mrpc.*no 'validation' split"):
    crossfit.run_downstream(dataclasses.replace(spec, upstream=str(tmp_path / "up")),
                            str(tmp_path / "cf"), train=trainer, log=lambda m: None)
  assert trainer.settings == []
