"""The demo's synthetic tasks: deterministic, well-formed, and what they claim to be."""

from __future__ import annotations

import collections

import pytest
import tensorflow as tf
import seqio

from spot.tasks import synthetic
from spot.vocab import WordVocabulary

LENGTHS = {"inputs": 12, "targets": 8}


def _check_label(skill: str, inputs: str, target: str) -> None:
  """Recomputes the target of one example from its inputs."""
  words = inputs.split()
  if skill == "sentiment":
    pos = sum(w in synthetic.POSITIVE for w in words)
    neg = sum(w in synthetic.NEGATIVE for w in words)
    assert (pos + neg) % 2 == 1 and target == ("positive" if pos > neg else "negative")
  elif skill == "topic":
    counts = collections.Counter(c for w in words for c, ws in synthetic.TOPICS.items()
                                 if w in ws)
    (best, n), *rest = counts.most_common()
    assert target == best and all(m < n for _, m in rest)
  elif skill == "count":
    assert int(target) == sum(w in ws for w in words for ws in synthetic.TOPICS.values())
  elif skill in ("entail", "overlap"):
    i = words.index(synthetic.SEPARATOR)
    premise, hyp = set(words[:i]), words[i + 1:]
    assert len(hyp) == (1 if skill == "entail" else 2)
    expected = bool(set(hyp) & premise)
    assert target == ("yes" if expected else "no")
  else:
    values = [int(w) for w in words if w.isdigit()]
    expected = {"add": sum, "max": max, "diff": lambda v: max(v) - min(v)}[skill](values)
    assert int(target) == expected


@pytest.mark.parametrize("skill", list(synthetic.SKILLS))
@pytest.mark.parametrize("domain", ["a", "b", "any"])
def test_examples_are_correct_and_in_vocabulary(skill, domain):
  examples = synthetic.examples(skill, domain, "validation")
  assert len(examples) == synthetic.NUM_EXAMPLES["validation"]
  vocab = synthetic.VOCABULARY.words
  for inputs, target in examples:
    if domain == "any":
      instruction, inputs = inputs.split(" ", 1)
      assert instruction == synthetic.SKILLS[skill].instruction
    assert all(w in vocab for w in (inputs + " " + target).split())
    assert len(inputs.split()) + 2 <= LENGTHS["inputs"]  # instruction + EOS fit
    assert len(target.split()) + 1 <= LENGTHS["targets"]
    _check_label(skill, inputs, target)


@pytest.mark.parametrize("skill", ["sentiment", "topic", "entail", "overlap"])
def test_labels_are_balanced(skill):
  counts = collections.Counter(t for _, t in synthetic.examples(skill, "a", "train"))
  labels = synthetic.SKILLS[skill].labels
  assert set(counts) == set(labels)
  assert min(counts.values()) > 0.6 * len(synthetic.examples(skill, "a", "train")) / len(labels)


def test_deterministic_and_seeded():
  synthetic.examples.cache_clear()
  first = synthetic.examples("entail", "b", "train", seed=3)
  synthetic.examples.cache_clear()
  assert synthetic.examples("entail", "b", "train", seed=3) == first
  assert synthetic.examples("entail", "b", "train", seed=4) != first


def test_held_out_splits_do_not_repeat_train_inputs():
  for skill in ("sentiment", "count", "entail"):
    train = {x for x, _ in synthetic.examples(skill, "a", "train")}
    assert not train & {x for x, _ in synthetic.examples(skill, "a", "validation")}


def test_domains_differ():
  """Targets ("b") use other fillers and lexicon slices than sources ("a")."""
  a = {w for x, _ in synthetic.examples("sentiment", "a", "train") for w in x.split()}
  b = {w for x, _ in synthetic.examples("sentiment", "b", "train") for w in x.split()}
  assert not set(synthetic.FORMAL) & b and not set(synthetic.CHATTY) & a
  assert a & b  # but the skill's words overlap


def test_registered_tasks_and_mixtures():
  names = synthetic.register_synthetic(seed=0, skills=("sentiment", "add"))
  everything = synthetic.SOURCE_TASKS + synthetic.TARGET_TASKS + synthetic.PRETRAIN_TASKS
  assert set(everything) <= set(names)
  mixture = seqio.get_mixture_or_task(synthetic.SOURCES_MIXTURE)
  assert sorted(t.name for t in mixture.tasks) == ["synthetic_add_a", "synthetic_sentiment_a"]
  task = seqio.get_mixture_or_task("synthetic_sentiment_b")
  assert [fn.__name__ for fn in task.predict_metric_fns] == ["accuracy"]
  assert set(task.source.splits) == {"train", "validation", "test"}
  ex = next(task.get_dataset(LENGTHS, split="validation", shuffle=False).as_numpy_iterator())
  assert synthetic.VOCABULARY.decode(ex["inputs"]) == ex["inputs_pretokenized"].decode()
  assert ex["inputs"][-1] == synthetic.VOCABULARY.eos_id
  synthetic.register_synthetic()
  assert len(seqio.get_mixture_or_task(synthetic.SOURCES_MIXTURE).tasks) == len(synthetic.SKILLS)


def test_related_source_and_unknowns():
  assert synthetic.related_source("synthetic_add_b") == "synthetic_add_a"
  with pytest.raises(ValueError, match="not a synthetic task"):
    synthetic.skill_of("glue_rte")
  with pytest.raises(ValueError, match="choose from"):
    synthetic.register_synthetic(skills=("juggling",))
  with pytest.raises(ValueError, match="splits"):
    synthetic.examples("add", "a", "dev")


def test_word_vocabulary_round_trip():
  vocab = WordVocabulary(["the", "cat", "sat"])
  assert vocab.vocab_size == 6 and vocab.eos_id == 1 and vocab.unk_id == 2
  assert vocab.encode("the cat dog") == [3, 4, 2]
  assert vocab.decode([3, 4, 0, 5, 1, 3]) == "the cat sat"
  tf_ids = vocab.encode_tf(tf.constant("sat the"))
  assert list(tf_ids.numpy()) == [5, 3]
  assert vocab.decode_tf(tf.constant([[3, 5, 1, 4]])).numpy().tolist() == [b"the sat"]
  assert vocab == WordVocabulary(["the", "cat", "sat"]) != WordVocabulary(["cat", "the", "sat"])
  with pytest.raises(ValueError, match="duplicate"):
    WordVocabulary(["a", "a"])
  with pytest.raises(ValueError, match="whitespace"):
    WordVocabulary(["a b"])
