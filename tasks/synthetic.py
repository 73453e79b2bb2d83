"""Synthetic text-to-text tasks for `spot demo`: generated, seeded, with real structure.

Eight *skills* over three input formats, so that the input alone does not say
what to do (a prompt, or an instruction word, has to):

    words    "the happy cat was sad and dog"
             sentiment -> "positive" | "negative"   (majority of polar words)
             topic     -> "animal" | "food" | "color" | "tool"   (majority category)
             count     -> "2"   (topic words)
    pairs    "cat rice red ; rice"  /  "cat rice red ; teal rice"
             entail    -> "yes" if the one word after ";" occurs before it
             overlap   -> "yes" if one of the two words after ";" occurs before it
    numbers  "3 7"
             add       -> "10"
             max       -> "7"
             diff      -> "4"

Classification skills are scored by accuracy, the others by exact match.

Each skill is rendered in two *domains* that differ in their words and
lengths: "a" (formal fillers, the first words of every lexicon, shorter) and
"b" (chatty fillers, the last words, longer). Registered names:

- `synthetic_<skill>_<domain>`: prompt-tuning tasks, inputs without an
  instruction. Domain "a" tasks are the demo's *sources*, domain "b" its
  held-out *targets*; each target's related source is the same skill in "a".
- `synthetic_pretrain_<skill>`: the same skill with an instruction word
  ("sentiment: ...") over both domains, for training the base model.
- mixtures `synthetic_pretrain` (all pretraining tasks) and
  `synthetic_sources` (all source tasks: the generic SPoT mixture).

Every example is a function of (seed, task, split, index): registration
reads nothing, and the same seed gives the same examples on every machine.
The vocabulary is `VOCABULARY`, a `spot.vocab.WordVocabulary` over the
closed lexicon below (T5's ids: 0 pad, 1 EOS, 2 unk).
"""

from __future__ import annotations

import dataclasses
import functools
import random
import zlib
from typing import Callable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from spot import errors
from spot import vocab as vocab_lib
from spot.tasks import common
from spot.tasks import metrics

DEFAULT_SEED = 0
NUM_EXAMPLES = {"train": 2048, "validation": 256, "test": 256}
PREFIX = "synthetic"

# ----------------------------------------------------------------- lexicon

POSITIVE = ("good", "great", "happy", "love", "nice", "fine", "superb", "bright", "fun",
            "calm", "kind", "warm")
NEGATIVE = ("bad", "awful", "sad", "hate", "poor", "dull", "grim", "broken", "boring",
            "cold", "rude", "ugly")
TOPICS: Mapping[str, tuple[str, ...]] = {
    "animal": ("cat", "dog", "horse", "bird", "fish", "cow", "lion", "wolf", "goat", "duck"),
    "food": ("bread", "apple", "rice", "cheese", "soup", "cake", "plum", "corn", "egg", "pie"),
    "color": ("red", "blue", "green", "black", "white", "pink", "gray", "gold", "brown", "teal"),
    "tool": ("hammer", "saw", "drill", "rope", "nail", "axe", "wrench", "knife", "brush",
             "spade"),
}
FORMAL = ("the", "a", "this", "that", "was", "is", "very", "of", "and", "with")
CHATTY = ("my", "our", "just", "really", "today", "lol", "now", "so", "too", "omg")
NUMBERS = tuple(str(i) for i in range(20))
SEPARATOR = ";"
YES_NO = ("no", "yes")
SENTIMENT_LABELS = ("negative", "positive")


@dataclasses.dataclass(frozen=True)
class Domain:
  """The words and lengths one rendering of the skills draws from.

  Attributes:
    name: "a", "b", or "any" (pretraining: both).
    fillers: function words mixed into "words" inputs.
    positive / negative / topics: the lexicon slices this domain uses.
    words_length: (min, max) words of a "words" input.
    premise_length: (min, max) topic words before the separator of a pair.
    numbers: how many operands a "numbers" input has, (min, max).
    chatty_numbers: probability that a "numbers" input is wrapped in words
      ("just 3 and 7") instead of bare ("3 7").
  """

  name: str
  fillers: tuple[str, ...]
  positive: tuple[str, ...]
  negative: tuple[str, ...]
  topics: Mapping[str, tuple[str, ...]]
  words_length: tuple[int, int]
  premise_length: tuple[int, int]
  numbers: tuple[int, int]
  chatty_numbers: float


def _slice_topics(lo: int, hi: int) -> dict[str, tuple[str, ...]]:
  return {k: v[lo:hi] for k, v in TOPICS.items()}


DOMAINS: Mapping[str, Domain] = {
    "a": Domain("a", FORMAL, POSITIVE[:7], NEGATIVE[:7], _slice_topics(0, 6), (4, 6), (3, 4),
                (2, 2), 0.0),
    "b": Domain("b", CHATTY, POSITIVE[5:], NEGATIVE[5:], _slice_topics(4, 10), (5, 7), (3, 5),
                (2, 2), 1.0),
    "any": Domain("any", FORMAL + CHATTY, POSITIVE, NEGATIVE, dict(TOPICS), (4, 7), (3, 5),
                  (2, 2), 0.5),
}

# ------------------------------------------------------------------ skills

Example = tuple[str, str]
Generator = Callable[[random.Random, Domain], Example]


def _pick(rng: random.Random, items: Sequence[str], n: int = 1,
          replace: bool = False) -> list[str]:
  return rng.choices(items, k=n) if replace else rng.sample(items, n)


def _words_input(rng: random.Random, d: Domain) -> tuple[list[str], str, str]:
  """A shuffled sentence with an odd number of polar words (so sentiment has a
  majority) and topic words with a strict majority category.

  Returns (words, sentiment label, topic label).
  """
  length = rng.randint(*d.words_length)
  n_polar = 1 if length <= 4 else rng.choice((1, 3))
  n_topic = rng.randint(1, min(3, length - n_polar))
  n_pos = rng.randint(0, n_polar)
  polar = _pick(rng, d.positive, n_pos) + _pick(rng, d.negative, n_polar - n_pos)
  cats = list(d.topics)
  major, minor = rng.choice(cats), rng.choice(cats)
  n_major = n_topic if n_topic == 1 or major == minor else max(n_topic - 1, (n_topic + 2) // 2)
  topical = _pick(rng, d.topics[major], n_major) + _pick(rng, d.topics[minor],
                                                         n_topic - n_major)
  fillers = _pick(rng, d.fillers, length - n_polar - n_topic, replace=True)
  words = polar + topical + fillers
  rng.shuffle(words)
  return words, SENTIMENT_LABELS[int(2 * n_pos > n_polar)], major


def sentiment(rng: random.Random, d: Domain) -> Example:
  words, label, _ = _words_input(rng, d)
  return " ".join(words), label


def topic(rng: random.Random, d: Domain) -> Example:
  words, _, label = _words_input(rng, d)
  return " ".join(words), label


def count(rng: random.Random, d: Domain) -> Example:
  """How many topic words (animals, foods, colours, tools) the sentence has."""
  words, _, _ = _words_input(rng, d)
  topical = {w for ws in d.topics.values() for w in ws}
  return " ".join(words), str(sum(w in topical for w in words))


def _pair(rng: random.Random, d: Domain, inside: int, outside: int) -> str:
  """"premise ; hypothesis" over topic words: `inside` hypothesis words are
  taken from the premise, `outside` ones are not in it."""
  pool = [w for ws in d.topics.values() for w in ws]
  n_premise = rng.randint(*d.premise_length)
  chosen = _pick(rng, pool, n_premise + outside)
  premise = chosen[:n_premise]
  hyp = _pick(rng, premise, inside) + chosen[n_premise:]
  rng.shuffle(hyp)
  return " ".join(premise + [SEPARATOR] + hyp)


def entail(rng: random.Random, d: Domain) -> Example:
  """Does the premise contain the (one-word) hypothesis?"""
  label = rng.random() < 0.5
  return _pair(rng, d, int(label), int(not label)), YES_NO[label]


def overlap(rng: random.Random, d: Domain) -> Example:
  """Does the premise share a word with the two-word hypothesis?"""
  inside = rng.choice((0, 0, 1, 2))
  return _pair(rng, d, inside, 2 - inside), YES_NO[inside > 0]


def _operands(rng: random.Random, d: Domain) -> tuple[list[int], str]:
  values = [rng.randrange(10) for _ in range(rng.randint(*d.numbers))]
  words = [str(v) for v in values]
  if d.chatty_numbers and rng.random() < d.chatty_numbers:  # "just 3 and 7"
    words = [rng.choice(CHATTY), words[0], "and", *words[1:]]
  return values, " ".join(words)


def add(rng: random.Random, d: Domain) -> Example:
  values, text = _operands(rng, d)
  return text, str(sum(values))


def maximum(rng: random.Random, d: Domain) -> Example:
  values, text = _operands(rng, d)
  return text, str(max(values))


def difference(rng: random.Random, d: Domain) -> Example:
  values, text = _operands(rng, d)
  return text, str(max(values) - min(values))


@dataclasses.dataclass(frozen=True)
class Skill:
  """One text-to-text skill.

  Attributes:
    name: the skill's name ("sentiment").
    generate: (rng, domain) -> (inputs, targets).
    labels: the class words of a classification skill; None for a sequence
      output (scored by exact match).
    input_format: "words", "pairs" or "numbers" (skills of one format read
      the same kind of input).
  """

  name: str
  generate: Generator
  labels: Optional[tuple[str, ...]]
  input_format: str

  @property
  def instruction(self) -> str:
    """The word that names the skill in pretraining inputs ("sentiment:")."""
    return f"{self.name}:"

  @property
  def metric(self) -> str:
    return "accuracy" if self.labels else "exact_match"


SKILLS: Mapping[str, Skill] = {s.name: s for s in (
    Skill("sentiment", sentiment, SENTIMENT_LABELS, "words"),
    Skill("topic", topic, tuple(TOPICS), "words"),
    Skill("count", count, None, "words"),
    Skill("entail", entail, YES_NO, "pairs"),
    Skill("overlap", overlap, YES_NO, "pairs"),
    Skill("add", add, None, "numbers"),
    Skill("max", maximum, None, "numbers"),
    Skill("diff", difference, None, "numbers"),
)}

# Every word any task can produce, in a fixed order: the vocabulary.
WORDS: tuple[str, ...] = tuple(dict.fromkeys(
    (*FORMAL, *CHATTY, SEPARATOR, *POSITIVE, *NEGATIVE, *(w for ws in TOPICS.values() for w in ws),
     *NUMBERS, *SENTIMENT_LABELS, *TOPICS, *YES_NO, *(s.instruction for s in SKILLS.values()))))
VOCABULARY = vocab_lib.WordVocabulary(WORDS)

# --------------------------------------------------------------- examples


def task_name(skill: str, domain: str) -> str:
  """`synthetic_<skill>_<domain>`; domain "any" names the pretraining task."""
  return f"{PREFIX}_pretrain_{skill}" if domain == "any" else f"{PREFIX}_{skill}_{domain}"


def _rng(seed: int, name: str, split: str) -> random.Random:
  # An integer seed (crc32 is stable across processes, unlike hash()) makes
  # Python's Mersenne Twister give the same draws on every machine.
  return random.Random(seed * 2**32 + zlib.crc32(f"{name}/{split}".encode()))


@functools.lru_cache(maxsize=256)
def examples(skill: str, domain: str, split: str, seed: int = DEFAULT_SEED,
             num_examples: Optional[int] = None) -> tuple[Example, ...]:
  """The (inputs, targets) of one task's split; pretraining inputs carry the
  instruction word.

  Validation and test inputs never repeat a train input, except for the
  "numbers" skills: their inputs are few (100 operand pairs), so every split
  asks the same facts and measures whether the skill is invoked.
  """
  if skill not in SKILLS:
    raise errors.UnknownNameError(f"Unknown synthetic skill {skill!r}; choose from "
                                  f"{list(SKILLS)}.")
  if domain not in DOMAINS:
    raise errors.UnknownNameError(f"Unknown synthetic domain {domain!r}; choose from "
                                  f"{list(DOMAINS)}.")
  if split not in NUM_EXAMPLES:
    raise errors.UnknownNameError(f"Synthetic tasks have splits {list(NUM_EXAMPLES)}, not "
                                  f"{split!r}.")
  s, d = SKILLS[skill], DOMAINS[domain]
  n = NUM_EXAMPLES[split] if num_examples is None else num_examples
  rng = _rng(seed, task_name(skill, domain), split)
  held_out = split != "train" and s.input_format != "numbers"
  seen = {x for x, _ in examples(skill, domain, "train", seed)} if held_out else set()
  out: list[Example] = []
  tries = 0
  while len(out) < n:
    tries += 1
    if tries > 50 * n:
      raise RuntimeError(f"Could not draw {n} held-out {split} examples of {skill}/{domain}; "
                         "lower NUM_EXAMPLES.")
    x, y = s.generate(rng, d)
    if x in seen:
      continue
    if held_out:
      seen.add(x)
    out.append((f"{s.instruction} {x}" if domain == "any" else x, y))
  return tuple(out)


def _source(skill: str, domain: str, data_seed: int) -> seqio.DataSource:

  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
    del shuffle_files, seed  # in-memory examples; the Task shuffles them
    pairs = examples(skill, domain, split, data_seed)
    return tf.data.Dataset.from_tensor_slices({
        "inputs": tf.constant([x for x, _ in pairs]),
        "targets": tf.constant([y for _, y in pairs]),
        "idx": tf.range(len(pairs), dtype=tf.int32)})

  return seqio.FunctionDataSource(dataset_fn, splits=tuple(NUM_EXAMPLES),
                                  num_input_examples=dict(NUM_EXAMPLES))


def _identity(dataset: tf.data.Dataset) -> tf.data.Dataset:
  return dataset


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Percentage of outputs equal to the target sequence, word for word."""
  return {"exact_match": metrics.accuracy(targets, predictions)["accuracy"]}


def _text(output, example=None, is_target=False) -> str:
  del example, is_target
  return (output.decode("utf-8") if isinstance(output, bytes) else str(output)).strip()


# ----------------------------------------------------------- registration

SOURCE_DOMAIN, TARGET_DOMAIN = "a", "b"
SOURCE_TASKS = tuple(task_name(s, SOURCE_DOMAIN) for s in SKILLS)
TARGET_TASKS = tuple(task_name(s, TARGET_DOMAIN) for s in SKILLS)
PRETRAIN_TASKS = tuple(task_name(s, "any") for s in SKILLS)
PRETRAIN_MIXTURE = f"{PREFIX}_pretrain"
SOURCES_MIXTURE = f"{PREFIX}_sources"


def skill_of(name: str) -> Skill:
  """The skill of a registered synthetic task name."""
  for s in SKILLS.values():
    if name in (task_name(s.name, d) for d in DOMAINS):
      return s
  raise errors.UnknownNameError(f"{name!r} is not a synthetic task; the tasks are "
                                f"{', '.join(SOURCE_TASKS + TARGET_TASKS + PRETRAIN_TASKS)}.")


def related_source(target: str) -> str:
  """The source task a target task was built to be related to (same skill)."""
  return task_name(skill_of(target).name, SOURCE_DOMAIN)


def register_synthetic(seed: int = DEFAULT_SEED,
                       skills: Optional[Sequence[str]] = None) -> list[str]:
  """Registers (or re-registers) every synthetic task, and the two mixtures.

  Args:
    seed: the data seed; every example is a function of it.
    skills: the skills the mixtures `synthetic_pretrain` and
      `synthetic_sources` cover (default: all); the tasks of every skill are
      registered either way.

  Returns:
    The registered task and mixture names.
  """
  skills = list(SKILLS) if skills is None else list(skills)
  unknown = [s for s in skills if s not in SKILLS]
  if unknown or not skills:
    raise errors.UnknownNameError(f"Unknown synthetic skills {unknown or skills}; choose from "
                                  f"{list(SKILLS)}.")
  names = []
  for skill in SKILLS.values():
    for domain in DOMAINS:
      names.append(common.register_task(
          task_name(skill.name, domain), _source(skill.name, domain, seed), _identity,
          VOCABULARY, _text, [metrics.accuracy if skill.labels else exact_match]))
  for mixture, domain in ((PRETRAIN_MIXTURE, "any"), (SOURCES_MIXTURE, SOURCE_DOMAIN)):
    seqio.MixtureRegistry.remove(mixture)
    seqio.MixtureRegistry.add(mixture, [(task_name(s, domain), 1.0) for s in skills])
    names.append(mixture)
  return names


SYNTHETIC_NAMES = register_synthetic()
