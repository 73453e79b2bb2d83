"""`--mixture-k`: the study's top-k multi-task mixture runs.

Each (target, seed) trains once on a mixture of its k most similar sources (by
the task embeddings on disk) and itself; a library source enters the mixture as
its recorded task; the report's mixture row is the mean over seeds of the mean
over targets of those runs, partial when one is missing.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from spot.library import similarity
from spot.workflows import study as study_lib
from spot.workflows import study_report
from tests.workflows import study_helpers as helpers

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def mixtures(monkeypatch):
  """Records every mixture the study registers (tasks, module, data_dir) instead of SeqIO."""
  from spot.workflows import targeted
  registered = {}

  def register(tasks, *, module, data_dir, cap=None):
    del cap
    name = "mix:" + "+".join(tasks)
    registered[name] = (tuple(tasks), module, data_dir)
    return name, {t: 1.0 for t in tasks}

  monkeypatch.setattr(targeted, "register_mixture", register)
  return registered


def _base_with_data():
  base = helpers.make_base()
  data = dataclasses.replace(base.train_dataset_cfg, module="spot.tasks.synthetic",
                             data_dir="/data")
  return dataclasses.replace(base, train_dataset_cfg=data)


def _score(study, run_id):
  scores = json.loads((study / run_id / "metrics.json").read_text())["scores"]
  return np.mean(list(scores.values()))


def test_mixture_runs_train_on_the_top_k_sources_and_the_target(tmp_path, mixtures):
  spec = helpers.make_spec(mixture_k=2)
  study = tmp_path / "study"
  trainer = helpers.FakeTrainer()
  study_lib.run_study(_base_with_data(), spec, str(study), log=lambda m: None, train=trainer)
  mixture_runs = [r for r in study_lib.plan_runs(spec) if r.kind == "mixture"]
  assert [r.run_id for r in mixture_runs] == [f"retrieval/mixture/{t}/seed{k}"
                                               for k in (0, 1) for t in ("sst_b", "add")]
  assert len(trainer.calls) == 24 + 4
  emb = {t: np.load(study / "embeddings" / f"{t}.npy") for t in ("sst", "topic", "add", "sst_b")}
  for run in mixture_runs:
    # The k most similar candidates (never the target itself), recomputed from the files.
    top = sorted(spec.candidates(run.task),
                 key=lambda s: (-similarity.avg_tokens(emb[run.task], emb[s]), s))[:2]
    s = trainer.settings[run.run_id]
    name = s.train_dataset_cfg.mixture_or_task_name
    assert mixtures[name] == ((*top, run.task), "spot.tasks.synthetic", "/data")
    assert (s.seed, s.train_dataset_cfg.seed, s.train_steps) == (run.seed, run.seed, 4)
    assert s.eval_cfg.tasks == [run.task]  # trained on the mixture, scored on the target
    assert study_lib.needs(spec, run) == sorted(
        {study_lib.embedding_owner(spec, t) for t in (run.task, *spec.candidates(run.task))}
        | {f"sources/{c}/seed{run.seed}" for c in spec.candidates(run.task)})
  # The report's mixture row, by hand: per seed the mean over targets, then over seeds.
  r = study_report.write_report(study)
  row = r["retrieval"]["rows"]["mixture"]
  per_seed = [np.mean([_score(study, f"retrieval/mixture/{t}/seed{k}") for t in spec.targets])
              for k in spec.seeds]
  assert row["value"]["mean"] == pytest.approx(np.mean(per_seed))
  assert row["value"]["std"] == pytest.approx(np.std(per_seed)) and row["value"]["n"] == 2
  assert row["per_target"]["add"][1] == pytest.approx(_score(study, "retrieval/mixture/add/seed1"))
  assert not row["partial"] and study_report.check_consistency(r) == []
  md = (study / "report" / "report.md").read_text()
  assert "| top-2 multi-task mixture | " in md
  # One mixture run missing: the row is partial and keeps only the finished runs.
  (study / "retrieval/mixture/add/seed1/metrics.json").unlink()
  r = study_report.write_report(study)
  row = r["retrieval"]["rows"]["mixture"]
  assert row["partial"] and 1 not in row["per_target"]["add"]
  assert r["missing"] == ["retrieval/mixture/add/seed1"]
  assert row["value"]["mean"] == pytest.approx(np.mean(
      [per_seed[0], _score(study, "retrieval/mixture/sst_b/seed1")]))
  assert not r["retrieval"]["rows"]["weighted_average"]["partial"]


def test_without_mixture_k_there_are_no_mixture_runs_nor_row(tmp_path, mixtures):
  spec = helpers.make_spec(seeds=(0,))
  trainer, _ = helpers.run_study(tmp_path, spec)
  assert not any("retrieval/mixture" in c for c in trainer.calls) and mixtures == {}
  r = study_report.write_report(tmp_path / "study")
  assert "mixture" not in r["retrieval"]["rows"]


def test_a_library_source_enters_the_mixture_as_its_task(tmp_path, mixtures):
  from spot.models import T5Config
  lib = helpers.library_with(tmp_path, 8)
  spec = helpers.make_spec(seeds=(0,), weighted_k=0, mixture_k=4, library=str(lib.path),
                           library_sources=("glue_mix",))
  base = dataclasses.replace(_base_with_data(), model=helpers.ModelWithConfig(config=T5Config(
      vocab_size=32, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16)))
  trainer = helpers.FakeTrainer()
  study_lib.run_study(base, spec, str(tmp_path / "study"), log=lambda m: None, train=trainer)
  tasks = mixtures[trainer.settings["retrieval/mixture/sst_b/seed0"]
                   .train_dataset_cfg.mixture_or_task_name][0]
  # k = 4 takes every candidate: the three trained sources and the entry's recorded task.
  assert sorted(tasks[:-1]) == ["add", "glue_mix_task", "sst", "topic"] and tasks[-1] == "sst_b"
  tasks = mixtures[trainer.settings["retrieval/mixture/add/seed0"]
                   .train_dataset_cfg.mixture_or_task_name][0]
  assert sorted(tasks[:-1]) == ["glue_mix_task", "sst", "topic"]  # never "add" itself
