"""Evaluation protocols on the training side: INIT_SEED / DATA_SEED vary initialisation
and data order apart (checked on the trainer's own initial state and batches), the
dev1/dev2 halves, and a tiny run under dev1/dev2 that reports dev2 for the dev1 pick."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from spot import errors
from spot.train import data, evaluation, state as state_lib, trainer
from spot.train.config import RunSummary
from tests import helpers

pytestmark = pytest.mark.filterwarnings("ignore")


def _flat(tree) -> dict:
  from flax import traverse_util
  return traverse_util.flatten_dict(dict(tree), sep="/")


# ------------------------------------------------------------------ seeds


@pytest.fixture()
def recorded(monkeypatch):
  """Each train() call's initial trainable values and the batches it trained on."""
  runs: list[dict] = []
  init_state, train_data = trainer._init_state, trainer._train_data

  def record_init(*args, **kwargs):
    out = init_state(*args, **kwargs)
    runs.append({"init": {k: np.asarray(v) for k, v in _flat(out[0].trainable).items()},
                 "batches": []})
    return out

  def record_data(*args, **kwargs):
    for batch in train_data(*args, **kwargs):
      runs[-1]["batches"].append({k: np.array(v) for k, v in batch.items()})
      yield batch

  monkeypatch.setattr(trainer, "_init_state", record_init)
  monkeypatch.setattr(trainer, "_train_data", record_data)
  return runs


def _same_trees(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _same_batches(a: list, b: list) -> bool:
  return len(a) == len(b) and all(_same_trees(x, y) for x, y in zip(a, b))


def test_init_seed_changes_only_the_initial_values_and_data_seed_only_the_order(
    tmp_path, recorded):
  task = helpers.register_tiny_task("protocols_seeds")
  for name, kwargs in (("base", {}), ("init", {"init_seed": 1}), ("data", {"data_seed": 1})):
    helpers.quick_train(tmp_path / name, task, train_steps=3, **kwargs)
  base, init, data_run = recorded
  assert len(base["batches"]) == 3
  assert not _same_trees(base["init"], init["init"])
  assert _same_batches(base["batches"], init["batches"])
  assert _same_trees(base["init"], data_run["init"])
  assert not _same_batches(base["batches"], data_run["batches"])
  meta = json.loads((tmp_path / "init" / "run.json").read_text())
  assert (meta["seed"], meta["init_seed"], meta["data_seed"]) == (0, 1, 0)
  # A resume with another INIT_SEED or DATA_SEED is refused before anything changes.
  with pytest.raises(errors.UsageError, match="INIT_SEED=2 but MODEL_DIR"):
    helpers.quick_train(tmp_path / "init", task, train_steps=3, init_seed=2)
  with pytest.raises(errors.UsageError, match="DATA_SEED=0 but MODEL_DIR"):
    helpers.quick_train(tmp_path / "data", task, train_steps=3)


def test_a_run_saved_before_the_split_seeds_resumes_under_its_seed_and_protocol():
  trainer._check_resume_seeds({"seed": 3}, {"init_seed": 3, "data_seed": 3}, "d", 1)
  with pytest.raises(errors.UsageError, match="DATA_SEED=4 .* DATA_SEED=3"):
    trainer._check_resume_seeds({"seed": 3}, {"init_seed": 3, "data_seed": 4}, "d", 1)
  with pytest.raises(errors.UsageError, match="PROTOCOL='dev1/dev2' .* PROTOCOL='dev'"):
    trainer._check_resume_seeds({"seed": 3}, {"protocol": "dev1/dev2"}, "d", 1)


def test_initial_params_seed_the_prompt_by_init_seed_and_the_random_base_by_seed():
  model = helpers.tiny_random_model()
  a = _flat(state_lib.initial_params(model, "random", seed=0))
  b = _flat(state_lib.initial_params(model, "random", seed=0, init_seed=5))
  c = _flat(state_lib.initial_params(model, "random", seed=5))
  prompt = [k for k in a if k.startswith("encoder/prompt/")]
  base = [k for k in a if k not in prompt]
  assert prompt and all(not np.array_equal(a[k], b[k]) for k in prompt)
  assert all(np.array_equal(a[k], b[k]) for k in base)
  assert all(np.array_equal(b[k], c[k]) for k in prompt)


def test_the_run_files_bind_the_seeds_and_the_protocol(shared_data):
  from spot.workflows import settings
  flags = ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
           "--gin_file=spot/gin/runs/prompt_finetune.gin",
           f"--gin.SPM_PATH='{shared_data / 't5_vocab' / 'spiece.model'}'",
           "--gin.MODEL_DIR='/tmp/unused'", "--gin.MIXTURE_OR_TASK_NAME='x'",
           "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}", "--gin.TRAIN_STEPS=1",
           "--gin.INITIAL_CHECKPOINT_PATH='random'", "--gin.SEED=3"]
  s = settings.from_flags(flags)
  assert (s.seed, s.init_seed, s.data_seed, s.train_dataset_cfg.seed) == (3, None, None, 3)
  assert s.protocol == "dev" and s.eval_cfg.dev_split_seed == 0
  s = settings.from_flags(flags + ["--gin.DATA_SEED=5", "--gin.PROTOCOL='dev1/dev2'",
                                   "--gin.DEV_SPLIT_SEED=2"])
  assert (s.seed, s.init_seed, s.data_seed, s.train_dataset_cfg.seed) == (3, None, 5, 5)
  assert s.protocol == "dev1/dev2" and s.eval_cfg.dev_split_seed == 2
  one = settings.with_seeds(s, 7, init_seed=8)
  assert (one.seed, one.init_seed, one.data_seed, one.train_dataset_cfg.seed) == (7, 8, None, 7)


# ------------------------------------------------------------------ dev1 / dev2

LABELS = ["b"] * 7 + ["a"] * 10 + ["c"] * 4 + ["b"] * 2


def _halves_in_a_new_process(labels, seed) -> list:
  code = ("import json, sys; from spot.train import data; "
          "h = data.dev_halves(json.loads(sys.argv[1]), int(sys.argv[2])); "
          "print(json.dumps([x.tolist() for x in h]))")
  out = subprocess.run([sys.executable, "-c", code, json.dumps(labels), str(seed)], check=True,
                       capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_dev_halves_are_disjoint_cover_the_split_are_stable_and_stratified():
  dev1, dev2 = data.dev_halves(LABELS, seed=0)
  assert not set(dev1) & set(dev2)
  assert sorted(set(dev1) | set(dev2)) == list(range(len(LABELS)))
  assert abs(len(dev1) - len(dev2)) <= 1
  for label in set(LABELS):
    n1 = sum(LABELS[i] == label for i in dev1)
    n2 = sum(LABELS[i] == label for i in dev2)
    assert abs(n1 - n2) <= 1, label
  again = data.dev_halves(LABELS, seed=0)
  assert np.array_equal(again[0], dev1) and np.array_equal(again[1], dev2)
  assert _halves_in_a_new_process(LABELS, 0) == [dev1.tolist(), dev2.tolist()]
  other = data.dev_halves(LABELS, seed=1)
  assert not np.array_equal(other[0], dev1)


def test_a_regression_target_is_halved_by_sorted_value_pairs():
  values = np.random.RandomState(0).uniform(0, 5, size=41).round(3)
  dev1, dev2 = data.dev_halves([str(v) for v in values], seed=0)
  assert sorted(set(dev1) | set(dev2)) == list(range(41)) and not set(dev1) & set(dev2)
  order = np.argsort(values, kind="stable")
  for j in range(0, 40, 2):  # each pair of neighbours in value goes one to each half
    assert (order[j] in dev1) != (order[j + 1] in dev1)


def test_dev_source_is_the_eval_split_or_the_first_validation_split():
  class Task:
    name, splits = "mnli_like", ("train", "validation_matched", "validation_mismatched")
  assert data.dev_source_split(Task()) == "validation_matched"
  assert data.dev_source_split(Task(), "validation_mismatched") == "validation_mismatched"
  Task.splits = ("train", "test")
  with pytest.raises(errors.UsageError, match="DEV_SOURCE_SPLIT"):
    data.dev_source_split(Task())


def test_sst2_halves_cover_its_validation_split_stratified(shared_data):
  import seqio
  task = seqio.get_mixture_or_task(helpers.register_sst2(shared_data, prefix="protocols"))
  read = lambda split: [(ex["inputs_pretokenized"], ex["targets_pretokenized"]) for ex in
                        data.half_dataset(task, split).as_numpy_iterator()]
  dev1, dev2 = read("dev1"), read("dev2")
  whole = [(ex["inputs_pretokenized"], ex["targets_pretokenized"]) for ex in
           task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator()]
  assert sorted(dev1 + dev2) == sorted(whole) and abs(len(dev1) - len(dev2)) <= 1
  for label in {t for _, t in whole}:
    assert abs(sum(t == label for _, t in dev1) - sum(t == label for _, t in dev2)) <= 1
  assert read("dev1") == dev1  # the same halves, in the split's order, every time


def _mixed(targets, predictions):
  """A score that depends on the split's targets and on the predictions."""
  return {"mixed": float(np.mean([(sum(map(ord, str(p))) * 7 + sum(map(ord, str(t)))) % 101
                                  for t, p in zip(targets, predictions)]))}


def test_a_dev1_dev2_run_reports_dev2_scores_of_the_step_dev1_selected(tmp_path):
  task = helpers.register_tiny_task("protocols_dev", metric_fns=[_mixed])
  eval_cfg = trainer.EvalConfig(period=2, batch_size=8, best_metric="mixed")
  summaries: list[RunSummary] = []
  result = helpers.quick_train(tmp_path, task, train_steps=6, eval_cfg=eval_cfg,
                               protocol="dev1/dev2", metrics_writers=[summaries.append])
  (summary,) = summaries
  dev1 = {s: r[f"{task}/mixed"] for s, r in result.eval_history}
  best = max(dev1, key=lambda s: (dev1[s], -s))  # the first of the best
  assert summary.protocol == "dev1/dev2" and summary.step == best
  assert summary.selection_results == {f"{task}/mixed": dev1[best]}
  model = helpers.tiny_random_model()
  params, _ = state_lib.params_from_run(model, str(tmp_path), best=True)
  cfg = data.DatasetConfig(task, {"inputs": 9, "targets": 3})
  scored = lambda half: evaluation.Evaluator(model, cfg, trainer.EvalConfig(
      split=half, batch_size=8, dev_source_split="validation")).evaluate(params, best)
  assert summary.results == pytest.approx(scored("dev2"))
  assert summary.selection_results == pytest.approx(scored("dev1"))
  # `spot eval` of the best checkpoint with SPLIT='dev2' scores the same half.
  from spot.train import evaluate as evaluate_lib
  got = evaluate_lib.evaluate(
      model=model, dataset_cfg=data.DatasetConfig(task, {"inputs": 9, "targets": 3}, split="dev2",
                                                  batch_size=8, shuffle=False),
      output_dir=str(tmp_path / "eval"), initial_checkpoint_path=None,
      restore_model_dir=str(tmp_path), use_best=True)
  assert got == pytest.approx(summary.results)
  run = json.loads((tmp_path / "run.json").read_text())
  assert (summary.init_seed, summary.data_seed, summary.peft) == (0, 0, None)
  assert (summary.num_trainable, summary.num_base) == (run["num_trainable"], run["num_frozen"])


def test_dev1_dev2_needs_an_evaluation_and_a_known_protocol(tmp_path):
  task = helpers.register_tiny_task("protocols_dev_bad")
  with pytest.raises(errors.UsageError, match="selects checkpoints by evaluation"):
    helpers.quick_train(tmp_path, task, protocol="dev1/dev2")
  with pytest.raises(errors.UsageError, match="PROTOCOL='dev12'"):
    helpers.quick_train(tmp_path, task, protocol="dev12", eval_cfg=trainer.EvalConfig())
  assert not (tmp_path / "run.json").exists()
