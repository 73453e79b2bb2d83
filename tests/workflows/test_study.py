"""The transferability study: its plan, resumption, bad input, and a report whose tables
agree with each other (a tiny study, 3 sources x 2 targets x 2 seeds, end to end with
a stand-in trainer that writes what the trainer writes; the real one is the journey)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from spot import errors
from spot.workflows import study as study_lib
from spot.workflows import study_report
from tests.workflows import study_helpers as helpers

pytestmark = pytest.mark.filterwarnings("ignore")
SOURCES, TARGETS, CKPT = helpers.SOURCES, helpers.TARGETS, helpers.CKPT
_base, _spec, FakeTrainer = helpers.make_base, helpers.make_spec, helpers.FakeTrainer
_run = helpers.run_study


def test_the_plan_has_every_run_once_and_no_self_transfer():
  runs = study_lib.plan_runs(_spec())
  ids = [r.run_id for r in runs]
  assert len(ids) == len(set(ids)) == 3 * 2 + 2 * 2 + (2 + 3 + 2) * 2
  assert "transfers/add__add/seed0" not in ids and "transfers/add__sst_b/seed1" in ids
  assert max(i for i, r in enumerate(runs) if r.stage == 0) < min(
      i for i, r in enumerate(runs) if r.stage == 1)  # sources and baselines first
  assert _spec().excluded() == ["add"] and _spec().candidates("add") == ("sst", "topic")
  lines = study_lib.plan_commands(_spec(), "/s", fmt="jsonl")
  first_transfer = next(json.loads(x) for x in lines if "transfers/" in x)
  assert first_transfer["run_id"] == "transfers/sst__sst_b/seed0"
  assert first_transfer["needs"] == ["sources/sst/seed0"] and first_transfer["stage"] == 1
  shell = study_lib.plan_commands(_spec(), "/s")
  assert shell[0] == "spot study run --dir /s --only sources/sst/seed0"


def test_a_tiny_study_end_to_end_tables_agree(tmp_path):
  trainer, lines = _run(tmp_path)
  assert len(trainer.calls) == 24
  assert lines[-1].startswith("[study 24/24 ETA 0m00s]")
  r = study_report.write_report(tmp_path / "study")
  assert r["missing"] == [] and r["excluded"] == ["add"]
  assert study_report.check_consistency(r) == []
  ret = r["retrieval"]
  assert ret["ks"] == [1, 2, 3]
  rows = ret["rows"]
  oracle = rows["oracle"]["value"]["mean"]
  assert rows["best_of_top_1"]["value"]["mean"] <= rows["best_of_top_2"]["value"]["mean"] <= oracle
  assert rows["best_of_top_3"]["value"] == rows["oracle"]["value"]
  assert rows["baseline"]["value"]["n"] == 2 and not rows["weighted_average"]["partial"]
  # One transfer recomputed by hand: the mean of accuracy and f1, RER from the means.
  scores = [json.loads((tmp_path / "study" / f"transfers/topic__sst_b/seed{k}/metrics.json")
                       .read_text())["scores"] for k in (0, 1)]
  base = [json.loads((tmp_path / "study" / f"baselines/sst_b/seed{k}/metrics.json")
                     .read_text())["scores"] for k in (0, 1)]
  t_mean = np.mean([np.mean(list(s.values())) for s in scores])
  b_mean = np.mean([np.mean(list(s.values())) for s in base])
  cell = r["grid"]["sst_b"]["sources"]["topic"]
  assert cell["score"]["mean"] == pytest.approx(t_mean)
  assert cell["rer"] == pytest.approx(((100 - b_mean) - (100 - t_mean)) / (100 - b_mean))
  # Retrieval ranks by the embeddings on disk.
  ranked = study_lib.ranking(tmp_path / "study", _spec(), "sst_b")
  emb = {t: np.load(tmp_path / "study" / "embeddings" / f"{t}.npy") for t in SOURCES + ("sst_b",)}
  from spot.library import similarity
  assert [n for n, _ in ranked] == sorted(SOURCES, key=lambda s: -similarity.avg_tokens(
      emb["sst_b"], emb[s]))
  top1 = r["retrieval"]["rows"]["best_of_top_1"]["per_target"]["sst_b"]
  collected = study_report.collect(tmp_path / "study")
  assert top1[0] == collected.score(f"transfers/{ranked[0][0]}__sst_b/seed0")
  for name in ("report.md", "results.json", "plots/rer_heatmap.png",
               "plots/similarity_per_token_sst_b.png"):
    assert (tmp_path / "study" / "report" / name).exists()
  assert json.loads((tmp_path / "study" / "report" / "results.json").read_text())["grid"]


def test_a_killed_study_resumes_and_a_rerun_trains_nothing(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    _run(tmp_path, trainer=FakeTrainer(fail_at=7))
  trainer, lines = _run(tmp_path)
  assert len(trainer.calls) == 24 - 7
  assert lines[0].startswith("[study 7/24 ETA ?] 7 of 24 run(s) already finished")
  again, _ = _run(tmp_path)
  assert again.calls == []
  only, _ = _run(tmp_path, only=["transfers/sst__add/seed1"])
  assert only.calls == []  # finished
  with pytest.raises(errors.UnknownNameError, match="plan"):
    _run(tmp_path, only=["transfers/add__add/seed0"])


def test_a_partial_study_reports_what_is_missing(tmp_path):
  _run(tmp_path)
  (tmp_path / "study" / "transfers/topic__sst_b/seed1/metrics.json").unlink()
  r = study_report.write_report(tmp_path / "study")
  assert r["missing"] == ["transfers/topic__sst_b/seed1"]
  assert r["grid"]["sst_b"]["partial"] and not r["grid"]["add"]["partial"]
  assert r["grid"]["sst_b"]["sources"]["topic"]["score"]["n"] == 1
  assert r["retrieval"]["rows"]["oracle"]["partial"]
  assert 1 not in r["retrieval"]["rows"]["oracle"]["per_target"]["sst_b"]  # seed 1 left out
  assert study_report.check_consistency(r) == []
  md = (tmp_path / "study" / "report" / "report.md").read_text()
  assert "**Partial report**: 1 run(s) not finished: `transfers/topic__sst_b/seed1`" in md


def test_bad_input(tmp_path):
  _run(tmp_path, spec=_spec(seeds=(0,), weighted_k=0))
  with pytest.raises(errors.ConfigError, match=r"sources/sst/seed0 \(/checkpoints/base"):
    _run(tmp_path, spec=_spec(seeds=(0,), weighted_k=0), checkpoint="/other/checkpoint_9")
  with pytest.raises(errors.ConfigError, match="seeds"):
    _run(tmp_path, spec=_spec(seeds=(0, 1), weighted_k=0))
  with pytest.raises(errors.ConfigError, match="no source other than itself"):
    _spec(sources=("add",), targets=("add",))
  with pytest.raises(errors.ConfigError, match="embedding_step"):
    _spec(embedding_step=9)
  with pytest.raises(errors.ConfigError, match="repeat"):
    _spec(sources=("a", "a"))
  with pytest.raises(errors.MissingInputError, match="not a study directory"):
    study_lib.read_spec(tmp_path / "nowhere")


def test_rer_and_the_paper_headline_numbers():
  # SPoT: baseline 74.7, oracle 80.7, best of top-3 77.5 (of 16 sources).
  assert study_report.rer(74.7, 80.7) == pytest.approx((25.3 - 19.3) / 25.3)
  assert study_report.rer(80.0, 70.0) == pytest.approx(-0.5)
  assert study_report.rer(100.0, 90.0) is None
  e = study_report.eliminated_fraction(74.7, 80.7, {1: 76.0, 3: 80.2, 6: 80.5}, 16)
  assert e["k"] == 3 and e["fraction"] == pytest.approx(13 / 16)
  assert e["gain_kept"] == pytest.approx(5.5 / 6.0)
  assert study_report.eliminated_fraction(74.7, 80.7, {1: 76.0}, 16) is None
  assert study_report.eliminated_fraction(80.0, 80.0, {1: 80.0}, 16) is None
  p = study_report.pearson([0.1, 0.2, 0.3, 0.4], [1.0, 2.1, 2.9, 4.2])
  expected = np.corrcoef([0.1, 0.2, 0.3, 0.4], [1.0, 2.1, 2.9, 4.2])[0, 1]
  assert p["r"] == pytest.approx(expected) and 0 < p["p"] < 0.01 and p["n"] == 4
  assert study_report.pearson([0.1, 0.2], [1.0, 2.0]) is None
  assert study_report.best_of_top_k(["a", "b", "c"], {"a": 50.0, "b": 70.0, "c": 90.0}, 2) == 70.0


def test_the_command_line_plan_writes_the_study_and_report_needs_one(tmp_path, capsys):
  from spot.workflows import study_cli
  d = str(tmp_path / "s")
  args = ["plan", "--dir", d, "--source", "a", "--source", "b", "--target", "c",
          "--seeds", "0,1", "--source-steps", "4", "--target-steps", "4", "--embedding-step",
          "2", "--", "--gin_file=x.gin"]
  assert study_cli.main(args) == 0
  out = capsys.readouterr().out.strip().splitlines()
  lines = [x for x in out if not x.startswith("#")]  # the rest: a summary and stage headings
  assert len(lines) == 2 * 2 + 1 * 2 + 2 * 2 + 1 * 2 and len(out) == len(lines) + 3
  assert study_lib.read_spec(d).train_flags == ("--gin_file=x.gin",)
  assert study_cli.main(["plan", "--dir", d]) == 0  # the study's own settings
  assert capsys.readouterr().out.strip().splitlines() == out
  with pytest.raises(errors.UsageError, match="--source TASK and --target TASK"):
    study_cli.main(["plan", "--dir", str(tmp_path / "t"), "--source", "a", "--", "--x"])


def test_retrieval_runs_need_every_candidate_and_both_embeddings():
  runs = {r.run_id: r for r in study_lib.plan_runs(_spec())}
  assert study_lib.needs(_spec(), runs["retrieval/weighted_average/add/seed1"]) == [
      "sources/add/seed0", "sources/sst/seed0", "sources/sst/seed1",
      "sources/topic/seed0", "sources/topic/seed1"]
  assert study_lib.needs(_spec(), runs["retrieval/weighted_average/sst_b/seed0"]) == [
      "baselines/sst_b/seed0", "sources/add/seed0", "sources/sst/seed0", "sources/topic/seed0"]
  assert study_lib.needs(_spec(), runs["baselines/add/seed1"]) == []


_library_with, _ModelWithConfig = helpers.library_with, helpers.ModelWithConfig


def test_library_entries_are_sources_without_a_source_run(tmp_path):
  from spot.models import T5Config
  lib = _library_with(tmp_path, 8)
  spec = _spec(seeds=(0,), weighted_k=0, library=str(lib.path), library_sources=("glue_mix",))
  base = dataclasses.replace(_base(), model=_ModelWithConfig(config=T5Config(
      vocab_size=32, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16)))
  trainer = FakeTrainer()
  study_lib.run_study(base, spec, str(tmp_path / "study"), log=lambda m: None, train=trainer)
  assert not any("sources/glue_mix" in c for c in trainer.calls)
  assert any(c.endswith("transfers/glue_mix__sst_b/seed0") for c in trainer.calls)
  r = study_report.write_report(tmp_path / "study")
  assert "glue_mix" in r["grid"]["sst_b"]["sources"] and r["retrieval"]["ks"] == [1, 2, 4]
  assert study_report.check_consistency(r) == []
  np.testing.assert_array_equal(study_lib.task_embedding(tmp_path / "study", spec, "glue_mix"),
                                lib.embedding("glue_mix"))
  # An entry of another base model (embed dim 16) is refused, named.
  other = _library_with(tmp_path / "o", 16)
  bad = _spec(seeds=(0,), weighted_k=0, library=str(other.path), library_sources=("glue_mix",))
  with pytest.raises(errors.ConfigError, match=r"library source\(s\) glue_mix \(t5_1_1_d16"):
    study_lib.run_study(base, bad, str(tmp_path / "study2"), log=lambda m: None, train=trainer)
  # An entry of another method (LoRA) is refused, named, before any run trains.
  from spot.library.errors import MethodMismatchError
  lib.add_params("lora_mix", {"encoder/layers_0/attention/query/lora_a": np.ones((8, 2))},
                 method="lora", peft={"rank": 2}, model=lib.entry("glue_mix").model)
  lora = _spec(seeds=(0,), weighted_k=0, library=str(lib.path),
               library_sources=("glue_mix", "lora_mix"))
  calls = len(trainer.calls)
  with pytest.raises(MethodMismatchError, match=r"library source\(s\) lora_mix \(lora\) hold "):
    study_lib.run_study(base, lora, str(tmp_path / "study3"), log=lambda m: None, train=trainer)
  assert len(trainer.calls) == calls


def test_a_transfer_waits_for_its_source_to_finish(tmp_path):
  _run(tmp_path, spec=_spec(seeds=(0,), weighted_k=0), only=["sources/sst/seed0"])
  (tmp_path / "study" / "sources/sst/seed0/metrics.json").unlink()  # as if killed before the end
  with pytest.raises(errors.MissingInputError, match="sources/sst/seed0 is not finished"):
    _run(tmp_path, spec=_spec(seeds=(0,), weighted_k=0), only=["transfers/sst__sst_b/seed0"])
