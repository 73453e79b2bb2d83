"""SuperGLUE registry on the SuperGLUE JSONL files in ../shared/data: T5's
text format for every task, the grouped postprocessors and the metrics."""

from __future__ import annotations

import json
import pathlib

import pytest


def _rows(shared_data: pathlib.Path, folder: str, file: str) -> list[dict]:
  text = (shared_data / "superglue" / folder / file).read_text(encoding="utf-8")
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def _expected(key: str, row: dict) -> tuple[str, str]:
  """T5's inputs / target for a raw SuperGLUE row, written out by hand."""
  words = {True: "True", False: "False"}
  if key == "boolq":
    return f"boolq passage: {row['passage']} question: {row['question']}", words[row["label"]]
  if key in ("cb", "rte"):
    return f"{key} hypothesis: {row['hypothesis']} premise: {row['premise']}", row["label"]
  if key == "copa":
    return (f"copa choice1: {row['choice1']} choice2: {row['choice2']} premise: "
            f"{row['premise']} question: {row['question']}", f"choice{row['label'] + 1}")
  if key == "wic":
    return (f"wic sentence1: {row['sentence1']} sentence2: {row['sentence2']} word: "
            f"{row['word']}", words[row["label"]])
  raise KeyError(key)


@pytest.mark.parametrize("key,folder,split,file", [
    ("boolq", "BoolQ", "train", "train32.jsonl"),
    ("boolq", "BoolQ", "validation", "val.jsonl"),
    ("cb", "CB", "train", "train32.jsonl"),
    ("cb", "CB", "dev32", "dev32.jsonl"),
    ("copa", "COPA", "validation", "val.jsonl"),
    ("rte", "RTE", "train", "train32.jsonl"),
    ("wic", "WiC", "train", "train32.jsonl"),
])
def test_classification_tasks(local_superglue, read_examples, shared_data, key, folder, split,
                              file):
  name = f"test_superglue_{key}"
  examples = read_examples(name, split, n=3)
  for ex, row in zip(examples, _rows(shared_data, folder, file)):
    inputs, target = _expected(key, row)
    assert ex["inputs_pretokenized"].decode() == inputs
    assert ex["targets_pretokenized"].decode() == target
    assert int(ex["idx"]) == row["idx"] and ex["task"].decode() == name
  assert len(examples) == 3


def test_literal_first_examples(local_superglue, read_examples):
  wic = read_examples("test_superglue_wic", "train", n=1)[0]
  assert wic["inputs_pretokenized"] == (
      b"wic sentence1: You make me feel naked. sentence2: She felt small and insignificant. "
      b"word: feel")
  wsc = read_examples("test_superglue_wsc", "train", n=2)
  assert wsc[0]["inputs_pretokenized"].decode() == (
      "wsc text: The actress used to be named Terpsichore , but she changed it to * Tina * a "
      "few years ago, because she figured # it # was easier to pronounce.")
  # span1 "The demonstrators" is two words (its case differs from the text's)
  assert wsc[1]["inputs_pretokenized"].decode() == (
      "wsc text: The city councilmen refused * the demonstrators * a permit because # they # "
      "advocated violence.")
  assert [e["targets_pretokenized"] for e in wsc] == [b"True", b"True"]


def test_multirc_one_example_per_answer(local_superglue, read_examples, shared_data):
  row = _rows(shared_data, "MultiRC", "train32.jsonl")[0]
  question = row["passage"]["questions"][0]
  examples = read_examples("test_superglue_multirc", "train", n=len(question["answers"]))
  passage = row["passage"]["text"].replace("<br>", " ").replace("<b>", "").replace("</b>", "")
  for ex, answer in zip(examples, question["answers"]):
    assert ex["inputs_pretokenized"].decode() == (
        f"multirc question: {question['question']} answer: {answer['text']} paragraph: "
        f"{passage}")
    assert ex["targets_pretokenized"].decode() == str(bool(answer["label"]))
    assert (ex["idx/paragraph"], ex["idx/question"], ex["idx/answer"]) == (
        row["idx"], question["idx"], answer["idx"])


def test_record_one_example_per_answer(local_superglue, read_examples, shared_data):
  row = _rows(shared_data, "ReCoRD", "train32.jsonl")[0]
  text = row["passage"]["text"]
  entities = sorted({text[e["start"]:e["end"] + 1] for e in row["passage"]["entities"]})
  passage = text.replace("\n@highlight\n", ". ")  # no highlight follows . ? ! ' " here
  query = row["qas"][0]
  answers = sorted({a["text"] for a in query["answers"]})
  examples = read_examples("test_superglue_record", "train", n=len(answers))
  for ex, answer in zip(examples, answers):
    assert ex["inputs_pretokenized"].decode() == (
        f"record query: {query['query']} entities: {', '.join(entities)} passage: {passage}")
    assert ex["targets_pretokenized"].decode() == answer
    assert [a.decode() for a in ex["answers"]] == answers
    assert (ex["idx/passage"], ex["idx/query"]) == (row["idx"], query["idx"])
  assert examples[0]["inputs_pretokenized"].decode().startswith(
      "record query: Speaking after the game, Mourinho said: 'The important thing is to give "
      "competition to the players, the best thing was that @placeholder made it difficult. "
      "entities: Blues, Branislav Ivanovic, Cesc Fabregas, Chelsea, Costa,")


def test_record_highlights_and_unanswered_queries():
  import tensorflow as tf
  from spot.tasks import common
  ds = tf.data.Dataset.from_tensors({
      "passage": "Penguins swim.\n@highlight\nThey eat fish\n@highlight\nBirds", "query": "A "
      "@placeholder is a bird.", "entities": ["penguin", "potato"], "answers": tf.constant(
          [], tf.string), "idx": {"passage": 3, "query": 4}})
  (ex,) = list(common.record_preprocessor(ds).as_numpy_iterator())
  assert ex["inputs"] == (b"record query: A @placeholder is a bird. entities: penguin, potato "
                          b"passage: Penguins swim. They eat fish. Birds")
  assert ex["targets"] == b"<unk>" and ex["answers"].shape == (0,)


def test_missing_split_file_names_it(local_superglue, shared_data):
  import seqio
  with pytest.raises(FileNotFoundError, match="CB/val.jsonl"):
    seqio.get_mixture_or_task("test_superglue_cb").get_dataset(
        sequence_length=None, split="validation", shuffle=False)


def test_tfds_registration_names(vocab):
  import seqio
  from spot.tasks import superglue
  names = superglue.register_superglue(vocabulary=vocab, name_prefix="test_tfds_sg")
  assert names == [f"test_tfds_sg_{k}" for k in
                   ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")]
  wsc = seqio.get_mixture_or_task("test_tfds_sg_wsc")
  assert wsc.source.tfds_dataset.name == "super_glue/wsc.fixed:1.0.2"
  assert set(wsc.splits) == {"train", "validation", "test"}


# ------------------------------------------------- postprocess and metrics


def test_multirc_postprocess_and_metrics(local_superglue):
  import seqio
  task = seqio.get_mixture_or_task("test_superglue_multirc")
  post = task.postprocessor
  examples = [{"idx/paragraph": 0, "idx/question": q} for q in (0, 0, 1, 1)]
  targets = [post(t, example=e, is_target=True)
             for t, e in zip(["True", "False", "True", "True"], examples)]
  predictions = [post(p) for p in ["True", "False", "True", "False"]]
  assert targets[0] == {"value": 1, "group": (0, 0)} and predictions[1] == {"value": 0}
  scores = {}
  for fn in task.metric_fns:
    scores.update(fn(targets, predictions))
  # question 0 all right, question 1 not -> EM 50; tp = 2, fn = 1 -> F1a 4/5
  assert scores == pytest.approx({"exact_match": 50.0, "f1": 80.0})


def test_record_postprocess_and_metrics(local_superglue):
  import numpy as np
  import seqio
  task = seqio.get_mixture_or_task("test_superglue_record")
  post = task.postprocessor
  ex0 = {"answers": np.array([b"Chelsea", b"the Blues"]), "idx/passage": 0, "idx/query": 0}
  ex1 = {"answers": np.array([b"Costa"]), "idx/passage": 0, "idx/query": 1}
  targets = [post("Chelsea", example=ex0, is_target=True),
             post("the Blues", example=ex0, is_target=True),  # duplicate of query 0
             post("Costa", example=ex1, is_target=True)]
  predictions = [post(p) for p in ["chelsea.", "nonsense", "Diego Costa"]]
  (metric,) = task.metric_fns
  # query 0: "chelsea" matches; query 1: EM 0, F1 = 2 * (1/2 * 1) / (1/2 + 1) = 2/3
  assert metric(targets, predictions) == pytest.approx({"em": 50.0, "f1": 100 * (1 + 2 / 3) / 2})


def test_cb_macro_f1_and_accuracy(local_superglue):
  import seqio
  task = seqio.get_mixture_or_task("test_superglue_cb")
  post = task.postprocessor
  targets = [post(t) for t in ["entailment", "entailment", "contradiction", "neutral"]]
  predictions = [post(p) for p in ["entailment", "contradiction", "contradiction", "maybe"]]
  assert predictions == [0, 1, 1, -1]
  scores = {}
  for fn in task.metric_fns:
    scores.update(fn(targets, predictions))
  # per-class F1: entailment 2/3, contradiction 2/3, neutral 0
  assert scores == pytest.approx({"mean_3class_f1": 100 * 4 / 9, "accuracy": 50.0})


def test_squad_normalisation():
  from spot.tasks import metrics
  assert metrics.normalize_answer("The  Blues!") == "blues"
  assert metrics.squad([["An apple"]], ["apple."]) == {"em": 100.0, "f1": 100.0}
  assert metrics.squad([[]], [""]) == {"em": 100.0, "f1": 0.0}


def test_superglue_average_follows_t5():
  from spot.tasks import metrics
  scores = {"boolq": {"accuracy": 80.0}, "cb": {"mean_3class_f1": 70.0, "accuracy": 90.0},
            "copa": {"accuracy": 60.0}, "multirc": {"f1": 70.0, "exact_match": 30.0},
            "record": {"f1": 80.0, "em": 78.0}, "rte": {"accuracy": 70.0},
            "wic": {"accuracy": 65.0}, "wsc": {"accuracy": 62.0}}
  out = metrics.superglue_average(scores)
  assert (out["cb"], out["multirc"], out["record"]) == (80.0, 50.0, 79.0)
  assert out["average"] == pytest.approx((80 + 80 + 60 + 50 + 79 + 70 + 65 + 62) / 8)


@pytest.mark.parametrize("key", ["multirc", "record"])
def test_seqio_evaluator_scores_perfect_predictions(local_superglue, key):
  """The grouped postprocessors work on the examples seqio.Evaluator caches."""
  import seqio
  evaluator = seqio.Evaluator(f"test_superglue_{key}", seqio.EncDecFeatureConverter(pack=False),
                              eval_split="train", sequence_length={"inputs": 512, "targets": 16},
                              num_examples=20, shuffle=False, use_memory_cache=True)

  def predict_fn(ds):  # the target tokens, EOS and padding dropped, padded to 16
    out = []
    for i, ex in ds.as_numpy_iterator():
      tokens = [int(t) for t in ex["decoder_target_tokens"] if t > 1]
      out.append((i, tokens + [0] * (16 - len(tokens))))
    return out

  results, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn,
                                  score_fn=lambda ds: [])
  scores = results.result()[f"test_superglue_{key}"]
  assert scores == pytest.approx({"multirc": {"f1": 100.0, "exact_match": 100.0},
                                  "record": {"em": 100.0, "f1": 100.0}}[key])
