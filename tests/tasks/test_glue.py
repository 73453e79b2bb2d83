"""GLUE registry: T5's text format read from the GLUE files in ../shared/data,
the TFDS registration (never read), postprocessors and the GLUE metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

# (task key, split, first example's inputs, targets of the first examples)
LOCAL_CASES = [
    ("cola", "train",
     "cola sentence: Our friends won't buy this analysis, let alone the next one we propose.",
     ["acceptable", "acceptable", "acceptable"]),
    ("sst2", "train", "sst2 sentence: when are bears bears and ",
     ["positive", "positive", "positive"]),
    ("sst2", "validation", "sst2 sentence: it 's a charming and often affecting journey . ",
     ["positive", "negative", "positive"]),
    ("mrpc", "train",
     'mrpc sentence1: Amrozi accused his brother, whom he called "the witness", of deliberately '
     'distorting his evidence. sentence2: Referring to him as only "the witness", Amrozi '
     "accused his brother of deliberately distorting his evidence.",
     ["equivalent", "not_equivalent", "equivalent"]),
    ("mrpc", "test",
     "mrpc sentence1: PCCW's chief operating officer, Mike Butcher, and Alex Arena, the chief "
     "financial officer, will report directly to Mr So. sentence2: Current Chief Operating "
     "Officer Mike Butcher and Group Chief Financial Officer Alex Arena will report to So.",
     ["equivalent", "equivalent", "equivalent"]),
    ("qqp", "validation",
     "qqp question1: Why are African-Americans so beautiful? question2: Why are hispanics so "
     "beautiful?", ["not_duplicate", "not_duplicate", "duplicate"]),
    ("qqp", "train",
     "qqp question1: How is the life of a math student? Could you describe your own "
     "experiences? question2: Which level of prepration is enough for the exam jlpt5?",
     ["not_duplicate", "duplicate", "not_duplicate"]),
    ("stsb", "train",
     "stsb sentence1: A plane is taking off. sentence2: An air plane is taking off.",
     ["5.0", "3.8", "3.8"]),
    ("stsb", "test",  # gold 2.5 -> 2.4 (round half to even, as tf.round and T5)
     "stsb sentence1: A girl is styling her hair. sentence2: A girl is brushing her hair.",
     ["2.4", "3.6", "5.0"]),
    ("mnli", "train",
     "mnli hypothesis: Product and geography are what make cream skimming work.  premise: "
     "Conceptually cream skimming has two basic dimensions - product and geography.",
     ["neutral", "entailment", "entailment"]),
    ("mnli", "validation_matched",
     "mnli hypothesis: Everyone really likes the newest benefits  premise: The new rights are "
     "nice enough", ["neutral", "contradiction"]),
    ("mnli_matched", "validation",
     "mnli hypothesis: Everyone really likes the newest benefits  premise: The new rights are "
     "nice enough", ["neutral", "contradiction"]),
    ("mnli_mismatched", "validation",
     "mnli hypothesis: Your contributions were of no help with our students' education. "
     "premise: Your contribution helped make it possible for us to provide our students with a "
     "quality education.", ["contradiction", "contradiction"]),
    ("mnli", "test_matched",
     "mnli hypothesis: Hierbas is a name worth looking out for. premise: Hierbas, ans seco, ans "
     "dulce, and frigola are just a few names worth keeping a look-out for.", ["<unk>"]),
    ("qnli", "validation",
     "qnli question: What came into force after the new constitution was herald? sentence: As "
     "of that day, the new constitution heralding the Second Republic came into force.",
     ["entailment", "not_entailment", "not_entailment"]),
    ("rte", "train",
     "rte sentence1: No Weapons of Mass Destruction Found in Iraq Yet. sentence2: Weapons of "
     "Mass Destruction Found in Iraq.", ["not_entailment", "entailment", "entailment"]),
    ("rte", "validation",
     "rte sentence1: Dana Reeve, the widow of the actor Christopher Reeve, has died of lung "
     "cancer at age 44, according to the Christopher Reeve Foundation. sentence2: Christopher "
     "Reeve had an accident.", ["not_entailment", "entailment", "not_entailment"]),
]


@pytest.mark.parametrize("key,split,inputs,targets", LOCAL_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in LOCAL_CASES])
def test_local_files_in_t5_format(local_glue, read_examples, key, split, inputs, targets):
  name = f"test_glue_{key}"
  assert name in local_glue
  examples = read_examples(name, split, n=3)
  assert examples[0]["inputs_pretokenized"].decode() == inputs
  assert [e["targets_pretokenized"].decode() for e in examples] == targets
  assert {e["task"].decode() for e in examples} == {name}
  assert [int(e["idx"]) for e in examples] == list(range(len(examples)))
  assert examples[0]["inputs"][-1] == 1 and examples[0]["targets"][-1] == 1  # EOS


def test_tokens_decode_to_the_text(local_glue, read_examples, vocab):
  ex = read_examples("test_glue_rte", "train", n=1)[0]
  assert vocab.decode(ex["inputs"].tolist()) == ex["inputs_pretokenized"].decode()
  assert vocab.decode(ex["targets"].tolist()) == "not_entailment"


def test_missing_file_error_names_the_candidates(local_glue, glue_dirs):
  import seqio
  task = seqio.get_mixture_or_task("test_glue_wnli")
  with pytest.raises(FileNotFoundError) as e:
    task.get_dataset(sequence_length=None, split="train", shuffle=False)
  for folder in ("WNLI", "wnli"):
    assert f"{glue_dirs[0]}/{folder}/train.tsv" in str(e.value)
  assert "TFDS" in str(e.value)


def test_tfds_registration_reads_nothing_and_can_repeat(vocab):
  import seqio
  from spot.tasks import glue
  for _ in range(2):  # re-registering replaces, never raises
    names = glue.register_glue(vocabulary=vocab, name_prefix="test_tfds_glue")
  assert names == [f"test_tfds_glue_{k}" for k in glue.GLUE_TASKS]
  task = seqio.get_mixture_or_task("test_tfds_glue_mnli_mismatched")
  assert isinstance(task.source, seqio.TfdsDataSource)
  assert task.source.tfds_dataset.name == "glue/mnli:2.0.0"
  assert set(task.splits) == {"validation", "test"}
  assert set(seqio.get_mixture_or_task("test_tfds_glue_mnli").splits) == {
      "train", "validation_matched", "validation_mismatched", "test_matched",
      "test_mismatched"}
  # Import-time defaults: T5's vocabulary from GCS, loaded lazily. Checked in a
  # fresh process: a run in this one (SPM_PATH) re-registers the defaults.
  import subprocess
  import sys
  code = ("import seqio, spot.tasks; print(seqio.get_mixture_or_task('spot_glue_sst2')"
          ".output_features['targets'].vocabulary.sentencepiece_model_file)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, check=True).stdout.strip().splitlines()[-1]
  assert out == "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"


def test_unknown_task_key_is_rejected(vocab):
  from spot.tasks import glue
  with pytest.raises(ValueError, match="Unknown GLUE task"):
    glue.register_glue(vocabulary=vocab, name_prefix="x", tasks=["sst3"])


def test_text_preprocessors_on_tfds_style_examples():
  import tensorflow as tf
  from spot.tasks import common
  qqp = tf.data.Dataset.from_tensors({
      "question1": "Why do I easily get bored of my friends?",
      "question2": "Why do I get bored of friends so quickly?", "label": 1, "idx": 10})
  out = next(iter(common.classification_preprocessor(
      "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"))(qqp)))
  assert out["inputs"].numpy().decode() == (
      "qqp question1: Why do I easily get bored of my friends? question2: Why do I get bored "
      "of friends so quickly?")
  assert out["targets"].numpy() == b"duplicate" and out["idx"].numpy() == 10
  stsb = tf.data.Dataset.from_tensor_slices({
      "sentence1": ["a", "b", "c"], "sentence2": ["x", "y", "z"],
      "label": np.array([1.79, 3.05, -1.0], np.float32), "idx": [0, 1, 2]})
  targets = [ex["targets"].numpy() for ex in common.stsb_preprocessor(stsb)]
  assert targets == [b"1.8", b"3.0", b"<unk>"]


def test_postprocessors():
  from spot.tasks import common
  to_id = common.class_id_postprocessor(("negative", "positive"))
  assert to_id("positive") == 1 and to_id(b" negative ") == 0 and to_id("great") == -1
  assert common.float_postprocessor("3.8") == pytest.approx(3.8)
  assert common.float_postprocessor(b"2") == 2.0
  assert common.float_postprocessor("very similar") == -1.0


def test_task_carries_official_metrics(local_glue):
  import seqio
  from spot.tasks import common
  mrpc = seqio.get_mixture_or_task("test_glue_mrpc")
  post = mrpc.postprocessor
  targets = [post(t, is_target=True) for t in ["equivalent", "not_equivalent", "equivalent"]]
  predictions = [post(p) for p in ["equivalent", "equivalent", "banana"]]
  scores = {}
  for fn in mrpc.metric_fns:
    scores.update(fn(targets, predictions))
  # tp=1, fp=1, fn=1 (the invalid "banana" counts as wrong) -> F1 1/2; 1 of 3 right.
  assert scores == pytest.approx({"f1": 50.0, "accuracy": 100 / 3})
  stsb = seqio.get_mixture_or_task("test_glue_stsb")
  assert stsb.postprocessor is common.float_postprocessor
  assert sorted(k for fn in stsb.metric_fns for k in fn([1, 2, 3], [1, 3, 2])) == [
      "pearson_corrcoef", "spearman_corrcoef"]


# ----------------------------------------------------------------- metrics


def test_accuracy():
  from spot.tasks import metrics
  assert metrics.accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == {"accuracy": 75.0}
  with pytest.raises(ValueError, match="pair up"):
    metrics.accuracy([0, 1], [0])


def _mcc_direct(t, p):
  """Binary MCC from the 2x2 counts."""
  t, p = np.asarray(t), np.asarray(p)
  tp, tn = np.sum((t == 1) & (p == 1)), np.sum((t == 0) & (p == 0))
  fp, fn = np.sum((t == 0) & (p == 1)), np.sum((t == 1) & (p == 0))
  return (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


def test_matthews_corrcoef():
  from spot.tasks import metrics
  t, p = [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1]
  # tp = tn = 2, fp = fn = 1: (4 - 1) / sqrt(3^4) = 1/3
  assert metrics.matthews_corrcoef(t, p)["matthews_corrcoef"] == pytest.approx(100 / 3)
  rng = np.random.default_rng(0)
  t, p = rng.integers(0, 2, 50).tolist(), rng.integers(0, 2, 50).tolist()
  assert metrics.matthews_corrcoef(t, p)["matthews_corrcoef"] == pytest.approx(
      100 * _mcc_direct(t, p))
  # An invalid prediction (-1) is a class of its own: C = [[0,0,0],[0,2,0],[1,0,1]]
  # -> (3*4 - 6) / sqrt((16 - 6) * (16 - 8)) = 6 / sqrt(80)
  assert metrics.matthews_corrcoef([1, 0, 1, 0], [1, 0, -1, 0])["matthews_corrcoef"] == (
      pytest.approx(100 * 6 / math.sqrt(80)))
  assert metrics.matthews_corrcoef([1, 1], [1, 1]) == {"matthews_corrcoef": 0.0}


def test_f1_score_with_invalid():
  from spot.tasks import metrics
  # The invalid -1 (target 1) becomes a 0: tp = 2, fp = 1, fn = 1 -> 2/3
  assert metrics.f1_score_with_invalid([1, 1, 0, 0, 1], [1, -1, 0, 1, 1]) == pytest.approx(
      {"f1": 200 / 3})
  assert metrics.f1_score_with_invalid([0, 0], [0, 0]) == {"f1": 0.0}


def test_correlations():
  from spot.tasks import metrics
  assert metrics.pearson_corrcoef([1, 2, 3, 4], [2, 4, 6, 8])["pearson_corrcoef"] == (
      pytest.approx(100.0))
  # Spearman = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 12 / 60
  assert metrics.spearman_corrcoef([1, 2, 3, 4], [1, 3, 2, 4])["spearman_corrcoef"] == (
      pytest.approx(80.0))
  rng = np.random.default_rng(1)
  t, p = rng.normal(size=30), rng.normal(size=30)
  assert metrics.pearson_corrcoef(t, p)["pearson_corrcoef"] == pytest.approx(
      100 * np.corrcoef(t, p)[0, 1])
  ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731  (no ties)
  assert metrics.spearman_corrcoef(t, p)["spearman_corrcoef"] == pytest.approx(
      100 * np.corrcoef(ranks(t), ranks(p))[0, 1])


def test_glue_average_follows_t5():
  from spot.tasks import metrics, mixtures
  scores = {
      "cola": {"matthews_corrcoef": 50.0}, "sst2": {"accuracy": 90.0},
      "mrpc": {"f1": 90.0, "accuracy": 80.0}, "stsb": {"pearson_corrcoef": 80.0,
                                                       "spearman_corrcoef": 90.0},
      "qqp": {"f1": 70.0, "accuracy": 80.0}, "mnli_matched": {"accuracy": 80.0},
      "mnli_mismatched": {"accuracy": 82.0}, "qnli": {"accuracy": 88.0},
      "rte": {"accuracy": 70.0}, "wnli": {"accuracy": 10.0}}  # WNLI is not averaged
  out = metrics.glue_average(scores)
  assert out["mrpc"] == 85.0 and out["stsb"] == 85.0 and out["mnli"] == 81.0
  assert out["average"] == pytest.approx((50 + 90 + 85 + 85 + 75 + 81 + 88 + 70) / 8)
  prefixed = {f"spot_glue_{k}": v for k, v in scores.items()}
  assert mixtures.glue_average(prefixed, name_prefix="spot_glue") == out
  del scores["mnli_mismatched"]
  with pytest.raises(ValueError, match="mnli_mismatched"):
    metrics.glue_average(scores)
  assert metrics.task_score({"f1": 90.0, "accuracy": 80.0}) == 85.0
