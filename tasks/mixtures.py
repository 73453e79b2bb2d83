"""The SPoT source mixtures (Vu et al., ACL 2022) over the GLUE and SuperGLUE tasks.

Each mixture samples its tasks with T5's examples-proportional mixing with a
limit: rate(task) = min(num_train_examples, cap) ** (1 / temperature). The
training-set sizes are the published ones (below), so registration reads no
data. MNLI's matched / mismatched evaluation tasks ride along in the mixtures
holding MNLI so an evaluation over the mixture reports both; they have no
train split and are never sampled in training.

`glue_average` and `superglue_average` (from `spot.tasks.metrics`) turn
per-task scores into the benchmark averages T5 and SPoT report.
"""

from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence

import seqio

from spot import errors
from spot.tasks import common
from spot.tasks import glue  # noqa: F401  registers the default tasks first
from spot.tasks import superglue  # noqa: F401
from spot.tasks.metrics import glue_average, superglue_average  # noqa: F401  re-exported

DEFAULT_CAP = 2**19
# Examples a model sees per epoch of each train split (ReCoRD: one per answer;
# MultiRC: one per answer option), and the MNLI evaluation sets' sizes.
NUM_EXAMPLES: dict[str, int] = {
    "glue_cola": 8_551, "glue_sst2": 67_349, "glue_mrpc": 3_668, "glue_qqp": 363_846,
    "glue_stsb": 5_749, "glue_mnli": 392_702, "glue_qnli": 104_743, "glue_rte": 2_490,
    "glue_wnli": 635, "glue_mnli_matched": 9_815, "glue_mnli_mismatched": 9_832,
    "superglue_boolq": 9_427, "superglue_cb": 250, "superglue_copa": 400,
    "superglue_multirc": 27_243, "superglue_record": 138_854, "superglue_rte": 2_490,
    "superglue_wic": 5_428, "superglue_wsc": 554,
}
_MNLI = ("glue_mnli", "glue_mnli_matched", "glue_mnli_mismatched")

# Mixture key -> members ("<benchmark>_<task>") this registry provides.
SPOT_MIXTURES: dict[str, tuple[str, ...]] = {
    "glue": ("glue_cola", "glue_sst2", "glue_mrpc", "glue_qqp", "glue_stsb", *_MNLI,
             "glue_qnli", "glue_rte"),
    "superglue": ("superglue_boolq", "superglue_cb", "superglue_copa", "superglue_multirc",
                  "superglue_record", "superglue_rte", "superglue_wic", "superglue_wsc"),
    "nli": (*_MNLI, "glue_qnli", "glue_rte", "superglue_cb"),
    "paraphrase": ("glue_mrpc", "glue_qqp", "glue_stsb"),
    "sentiment": ("glue_sst2",),
    "mnli": _MNLI,
}
# The paper's membership, for reference; tasks outside GLUE / SuperGLUE are not
# registered here (add them with `extra_members`).
PAPER_MIXTURES: dict[str, tuple[str, ...]] = {
    "glue": ("CoLA", "SST-2", "MRPC", "QQP", "STS-B", "MNLI", "QNLI", "RTE"),
    "superglue": ("BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "RTE", "WiC", "WSC"),
    "nli": ("ANLI", "CB", "DocNLI", "MNLI", "QNLI", "RTE", "SNLI"),
    "paraphrase": ("CxC", "MRPC", "QQP", "STS-B"),
    "sentiment": ("GoEmotions", "Sentiment140", "SST-2", "Yelp Polarity"),
    "mnli": ("MNLI",),
}


def mixing_rate(num_examples: int, cap: Optional[int] = DEFAULT_CAP,
                temperature: float = 1.0) -> float:
  """T5's examples-proportional rate: min(n, cap) ** (1 / temperature)."""
  if num_examples < 0 or (cap is not None and cap <= 0) or temperature <= 0:
    raise errors.ConfigError(f"Need num_examples >= 0, cap > 0 (or None) and temperature > 0; got "
                             f"{num_examples}, {cap}, {temperature}.")
  n = num_examples if cap is None else min(num_examples, cap)
  return float(n) ** (1.0 / temperature)


def member_name(member: str, glue_prefix: str, superglue_prefix: str) -> str:
  """The registered task name of a member such as "glue_sst2"."""
  benchmark, key = member.split("_", 1)
  return f"{glue_prefix if benchmark == 'glue' else superglue_prefix}_{key}"


def register_spot_mixtures(glue_prefix: str = "spot_glue",
                           superglue_prefix: str = "spot_superglue",
                           name_prefix: str = "spot", cap: Optional[int] = DEFAULT_CAP,
                           temperature: float = 1.0,
                           extra_members: Optional[Mapping[str, Sequence[tuple[str, int]]]] = None,
                           local_only: bool = False) -> list[str]:
  """Registers the SPoT mixtures over already registered tasks.

  Call it again after re-registering the tasks (e.g. from local files with
  another prefix): a mixture keeps the task objects it was built with.

  Args:
    glue_prefix / superglue_prefix: the `name_prefix` the tasks were
      registered with.
    name_prefix: mixtures are named `<name_prefix>_<key>_mix`, key in
      `SPOT_MIXTURES` (spot_glue_mix, spot_superglue_mix, spot_nli_mix,
      spot_paraphrase_mix, spot_sentiment_mix, spot_mnli_mix).
    cap: the examples-proportional limit K (None: no limit).
    temperature: T5's mixing temperature (1 = proportional).
    extra_members: mixture key -> [(registered task name, number of train
      examples)] added to that mixture, e.g. an SNLI task for "nli".
    local_only: keep only the members that read local files (DATA_DIR), in
      each mixture that has any; a mixture with none keeps all (TFDS).

  Returns:
    The registered mixture names.
  """
  extra = dict(extra_members or {})
  unknown = sorted(set(extra) - set(SPOT_MIXTURES))
  if unknown:
    raise errors.UnknownNameError(f"extra_members names unknown mixture(s) {unknown}; use keys of "
                                  f"{list(SPOT_MIXTURES)}.")
  names = []
  for key, members in SPOT_MIXTURES.items():
    rates = [(member_name(m, glue_prefix, superglue_prefix),
              mixing_rate(NUM_EXAMPLES[m], cap, temperature)) for m in members]
    rates += [(task, mixing_rate(n, cap, temperature)) for task, n in extra.get(key, ())]
    missing = [t for t, _ in rates if t not in seqio.TaskRegistry.names()]
    if missing:
      raise errors.ConfigError(f"Mixture {key!r} needs tasks {missing}, which are not registered; "
                               "register them first (register_glue / register_superglue with the "
                               "same prefixes).")
    if local_only and any(common.is_local(t) for t, _ in rates):
      dropped = [t for t, _ in rates if not common.is_local(t)]
      if dropped:
        logging.info("Mixture %s_%s_mix: no local files for %s; left out.", name_prefix, key,
                     ", ".join(dropped))
      rates = [(t, r) for t, r in rates if common.is_local(t)]
    name = f"{name_prefix}_{key}_mix"
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, rates)
    names.append(name)
  return names


def mixture_rates(name: str) -> dict[str, float]:
  """Task name -> mixing rate of a registered mixture."""
  mixture = seqio.get_mixture_or_task(name)
  if not isinstance(mixture, seqio.Mixture):
    raise errors.ConfigError(f"{name!r} is a task, not a mixture; pass a mixture name.")
  return {task.name: mixture.get_rate(task) for task in mixture.tasks}


def register_local(data_dir: str, vocabulary: Optional[seqio.Vocabulary] = None) -> list[str]:
  """The DATA_DIR hook of `spot.tasks.register_local`: rebuilds the default
  mixtures over the tasks as they are now registered (the GLUE / SuperGLUE
  hooks, which run first, pointed those with files at them). A mixture with
  local members keeps only those: DATA_DIR means "train on these files", and
  a member left on TFDS would need the network or a prepared TFDS dir.

  Returns:
    [] — a mixture reads no files itself.
  """
  del data_dir, vocabulary
  register_spot_mixtures(local_only=True)
  return []


def use_vocabulary(vocabulary: seqio.Vocabulary) -> list[str]:
  """The SPM_PATH hook of `spot.tasks.use_vocabulary`: rebuilds the default
  mixtures over the re-registered tasks. Returns [] (a mixture has no
  vocabulary of its own)."""
  del vocabulary
  local = any(common.is_local(member_name(m, "spot_glue", "spot_superglue"))
              for members in SPOT_MIXTURES.values() for m in members)
  register_spot_mixtures(local_only=local)
  return []


SPOT_MIXTURE_NAMES = register_spot_mixtures()
