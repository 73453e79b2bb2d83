"""SPoT mixtures: membership, capped examples-proportional rates, and sampling
from local GLUE / SuperGLUE tasks."""

from __future__ import annotations

import collections

import pytest


def test_default_mixtures_and_rates():
  from spot.tasks import mixtures
  assert mixtures.SPOT_MIXTURE_NAMES == [
      "spot_glue_mix", "spot_superglue_mix", "spot_nli_mix", "spot_paraphrase_mix",
      "spot_sentiment_mix", "spot_mnli_mix"]
  rates = mixtures.mixture_rates("spot_glue_mix")
  assert rates == {
      "spot_glue_cola": 8551.0, "spot_glue_sst2": 67349.0, "spot_glue_mrpc": 3668.0,
      "spot_glue_qqp": 363846.0, "spot_glue_stsb": 5749.0, "spot_glue_mnli": 392702.0,
      "spot_glue_mnli_matched": 9815.0, "spot_glue_mnli_mismatched": 9832.0,
      "spot_glue_qnli": 104743.0, "spot_glue_rte": 2490.0}
  assert set(mixtures.mixture_rates("spot_superglue_mix")) == {
      f"spot_superglue_{k}" for k in
      ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")}
  assert set(mixtures.mixture_rates("spot_nli_mix")) == {
      "spot_glue_mnli", "spot_glue_mnli_matched", "spot_glue_mnli_mismatched",
      "spot_glue_qnli", "spot_glue_rte", "spot_superglue_cb"}
  assert set(mixtures.mixture_rates("spot_paraphrase_mix")) == {
      "spot_glue_mrpc", "spot_glue_qqp", "spot_glue_stsb"}
  assert set(mixtures.mixture_rates("spot_sentiment_mix")) == {"spot_glue_sst2"}


def test_mixing_rate_cap_and_temperature():
  from spot.tasks import mixtures
  assert mixtures.mixing_rate(392_702) == 392_702.0  # under the default 2**19 cap
  assert mixtures.mixing_rate(1_000_000) == 2.0**19
  assert mixtures.mixing_rate(10_000, cap=2_500, temperature=2.0) == 50.0
  assert mixtures.mixing_rate(10_000, cap=None) == 10_000.0
  with pytest.raises(ValueError, match="temperature"):
    mixtures.mixing_rate(10, temperature=0)


def test_configurable_cap_and_reregistration():
  from spot.tasks import mixtures
  for _ in range(2):
    names = mixtures.register_spot_mixtures(name_prefix="test_cap", cap=5000, temperature=2.0)
  assert "test_cap_glue_mix" in names
  rates = mixtures.mixture_rates("test_cap_glue_mix")
  assert rates["spot_glue_qqp"] == pytest.approx(5000**0.5)
  assert rates["spot_glue_rte"] == pytest.approx(2490**0.5)


def test_missing_tasks_and_unknown_extras_are_named():
  from spot.tasks import mixtures
  with pytest.raises(ValueError, match="nope_cola"):
    mixtures.register_spot_mixtures(glue_prefix="nope", name_prefix="test_bad")
  with pytest.raises(ValueError, match="unknown mixture"):
    mixtures.register_spot_mixtures(name_prefix="test_bad", extra_members={"qa": []})


def test_extra_members_join_a_mixture():
  from spot.tasks import mixtures
  mixtures.register_spot_mixtures(name_prefix="test_extra",
                                  extra_members={"sentiment": [("spot_glue_cola", 1_000)]})
  assert mixtures.mixture_rates("test_extra_sentiment_mix") == {
      "spot_glue_sst2": 67349.0, "spot_glue_cola": 1000.0}


def _sample_tasks(mixture: str, n: int) -> collections.Counter:
  import seqio
  ds = seqio.get_mixture_or_task(mixture).get_dataset(
      sequence_length={"inputs": 128, "targets": 8}, split="train", shuffle=False, seed=0,
      num_epochs=None, passthrough_features=["task"], copy_pretokenized=True)
  counts: collections.Counter = collections.Counter()
  for ex in ds.take(n).as_numpy_iterator():
    task = ex["task"].decode()
    assert ex["inputs_pretokenized"].decode().split(" ")[0] == task.rsplit("_", 1)[-1]
    counts[task] += 1
  return counts


def test_sampling_local_glue_mixture(local_glue):
  from spot.tasks import mixtures
  mixtures.register_spot_mixtures(glue_prefix="test_glue", superglue_prefix="spot_superglue",
                                  name_prefix="test_local")
  counts = _sample_tasks("test_local_glue_mix", 300)
  # Rates follow the published train sizes: MNLI and QQP dominate, all eight can appear,
  # the MNLI evaluation tasks (no train split) never do.
  assert set(counts) <= {f"test_glue_{k}" for k in
                         ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")}
  assert len(counts) >= 4
  assert counts["test_glue_mnli"] + counts["test_glue_qqp"] > 150


def test_sampling_across_benchmarks(local_glue, local_superglue):
  from spot.tasks import mixtures
  mixtures.register_spot_mixtures(glue_prefix="test_glue", superglue_prefix="test_superglue",
                                  name_prefix="test_local2", cap=3000)
  counts = _sample_tasks("test_local2_nli_mix", 200)
  # With the cap at 3000, MNLI, QNLI and RTE weigh 3000 / 3000 / 2490 and CB 250.
  assert {"test_glue_mnli", "test_glue_qnli", "test_glue_rte"} <= set(counts)


def test_data_dir_hook_points_default_names_at_local_files(shared_data):
  import seqio
  from spot.tasks import glue, mixtures, superglue
  try:
    names = glue.register_local(str(shared_data)) + superglue.register_local(str(shared_data))
    assert mixtures.register_local(str(shared_data)) == []
    # ../shared/data/glue holds all but MNLI (only in a sub-folder) and WNLI; CB's
    # val.jsonl is held out but its train32.jsonl counts.
    assert names == [f"spot_glue_{k}" for k in
                     ("cola", "sst2", "mrpc", "qqp", "stsb", "qnli", "rte")] + [
                         f"spot_superglue_{k}" for k in superglue.SUPERGLUE_TASKS]
    rte = seqio.get_mixture_or_task("spot_glue_rte")
    assert isinstance(rte.source, seqio.FunctionDataSource)
    assert isinstance(seqio.get_mixture_or_task("spot_glue_wnli").source, seqio.TfdsDataSource)
    assert rte in seqio.get_mixture_or_task("spot_glue_mix").tasks  # mixture rebuilt
    assert glue.register_local(str(shared_data / "superglue")) == []
  finally:  # back to the import-time TFDS registrations for the other tests
    glue.register_glue()
    superglue.register_superglue()
    mixtures.register_spot_mixtures()
