"""The official GLUE / SuperGLUE metrics as SeqIO metric functions.

Each function takes postprocessed `targets` and `predictions` (lists) and
returns `{name: value}` on a 0-100 scale, under T5's metric names so scores
compare with published T5 / prompt-tuning numbers. Plain numpy and scipy:
no TensorFlow, no scikit-learn.

`task_score`, `glue_average` and `superglue_average` combine them the way
T5 reports a benchmark: the metrics of one task are averaged first (MRPC's F1
and accuracy, STS-B's Pearson and Spearman, MNLI's matched and mismatched
accuracy, ...), then the tasks are averaged with equal weight.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import scipy.stats

from spot import errors

MetricFn = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]


def _check_lengths(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
  if len(targets) != len(predictions):
    raise errors.DataError(f"Got {len(targets)} targets but {len(predictions)} predictions; "
                           "they must pair up one to one.")


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """Percentage of predictions equal to their target; an invalid prediction (-1)
  is wrong even against an unlabelled (-1) target."""
  _check_lengths(targets, predictions)
  right = [t == p and not _invalid(p) for t, p in zip(targets, predictions)]
  return {"accuracy": 100.0 * float(np.mean(right))}


def _invalid(prediction: Any) -> bool:
  return isinstance(prediction, (int, np.integer)) and not isinstance(prediction, bool) \
      and int(prediction) == -1


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Matthews correlation (CoLA), multi-class form; an invalid prediction (-1)
  counts as a class of its own, so it is always wrong."""
  _check_lengths(targets, predictions)
  labels = sorted(set(targets) | set(predictions))
  index = {label: i for i, label in enumerate(labels)}
  confusion = np.zeros((len(labels), len(labels)))
  for t, p in zip(targets, predictions):
    confusion[index[t], index[p]] += 1
  true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
  total, correct = confusion.sum(), np.trace(confusion)
  cov_tp = correct * total - pred_counts @ true_counts
  cov_pp = total**2 - pred_counts @ pred_counts
  cov_tt = total**2 - true_counts @ true_counts
  denom = np.sqrt(cov_pp * cov_tt)
  return {"matthews_corrcoef": 100.0 * float(cov_tp / denom) if denom else 0.0}


def _binary_f1(targets: np.ndarray, predictions: np.ndarray) -> float:
  tp = float(np.sum((predictions == 1) & (targets == 1)))
  fp = float(np.sum((predictions == 1) & (targets != 1)))
  fn = float(np.sum((predictions != 1) & (targets == 1)))
  return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def f1_score_with_invalid(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """F1 of the positive class (1); a prediction other than 0/1 counts as wrong."""
  _check_lengths(targets, predictions)
  t, p = np.asarray(targets), np.array(predictions)
  invalid = (p != 0) & (p != 1)
  p[invalid] = 1 - t[invalid]
  return {"f1": 100.0 * _binary_f1(t, p)}


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """Pearson correlation of predicted and gold scores (STS-B)."""
  _check_lengths(targets, predictions)
  return {"pearson_corrcoef": 100.0 * float(scipy.stats.pearsonr(targets, predictions)[0])}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """Spearman rank correlation of predicted and gold scores (STS-B)."""
  _check_lengths(targets, predictions)
  return {"spearman_corrcoef": 100.0 * float(scipy.stats.spearmanr(targets, predictions)[0])}


def mean_multiclass_f1(num_classes: int) -> MetricFn:
  """Macro F1 over classes 0..num_classes-1 (CB); other predictions are
  misses of their target class, never hits of another."""
  key = f"mean_{num_classes}class_f1"

  def metric(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    _check_lengths(targets, predictions)
    t, p = np.asarray(targets), np.asarray(predictions)
    f1s = [_binary_f1((t == c).astype(int), (p == c).astype(int)) for c in range(num_classes)]
    return {key: 100.0 * float(np.mean(f1s))}

  metric.__name__ = key
  return metric


def multirc_f1a(targets: Sequence[Mapping[str, Any]],
                predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """MultiRC F1a: binary F1 over every answer option of every question."""
  return f1_score_with_invalid([t["value"] for t in targets], [p["value"] for p in predictions])


def multirc_exact_match(targets: Sequence[Mapping[str, Any]],
                        predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """MultiRC EM: percentage of questions whose options are all right."""
  _check_lengths(targets, predictions)
  right: dict[Any, bool] = {}
  for t, p in zip(targets, predictions):
    right[t["group"]] = right.get(t["group"], True) and t["value"] == p["value"]
  return {"exact_match": 100.0 * float(np.mean(list(right.values())))}


def normalize_answer(text: str) -> str:
  """SQuAD's answer normalisation: lower case, no punctuation, no articles,
  single spaces."""
  text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
  pred_tokens, target_tokens = prediction.split(), target.split()
  common = sum((collections.Counter(pred_tokens) & collections.Counter(target_tokens)).values())
  if not common:
    return 0.0
  precision, recall = common / len(pred_tokens), common / len(target_tokens)
  return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """Exact match and token F1, each the max over the gold answers."""
  _check_lengths(targets, predictions)
  em, f1 = [], []
  for answers, prediction in zip(targets, predictions):
    answers = [normalize_answer(a) for a in answers] or [""]
    prediction = normalize_answer(prediction)
    em.append(max(float(a == prediction) for a in answers))
    f1.append(max(_token_f1(a, prediction) for a in answers))
  return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


def record_em_f1(targets: Sequence[Mapping[str, Any]],
                 predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """ReCoRD EM / F1: SQuAD scores, once per query (training duplicates a
  query per answer; only its first copy is scored)."""
  _check_lengths(targets, predictions)
  seen, answers, preds = set(), [], []
  for t, p in zip(targets, predictions):
    if t["group"] not in seen:
      seen.add(t["group"])
      answers.append(t["value"])
      preds.append(p["value"])
  return squad(answers, preds)


# ------------------------------------------------------------ per task


_BINARY_PAIR = (f1_score_with_invalid, accuracy)
TASK_METRICS: dict[str, tuple[MetricFn, ...]] = {
    # GLUE
    "cola": (matthews_corrcoef,),
    "sst2": (accuracy,),
    "mrpc": _BINARY_PAIR,
    "qqp": _BINARY_PAIR,
    "stsb": (pearson_corrcoef, spearman_corrcoef),
    "mnli": (accuracy,),
    "mnli_matched": (accuracy,),
    "mnli_mismatched": (accuracy,),
    "qnli": (accuracy,),
    "rte": (accuracy,),
    "wnli": (accuracy,),
    # SuperGLUE
    "boolq": (accuracy,),
    "cb": (mean_multiclass_f1(3), accuracy),
    "copa": (accuracy,),
    "multirc": (multirc_f1a, multirc_exact_match),
    "record": (record_em_f1,),
    "wic": (accuracy,),
    "wsc": (accuracy,),
}


def metric_fns(task_key: str) -> list[MetricFn]:
  """The metric functions of a task key such as "mrpc" or "cb"."""
  if task_key not in TASK_METRICS:
    raise errors.UnknownNameError(f"No metrics for task {task_key!r}; known: "
                                  f"{sorted(TASK_METRICS)}.")
  return list(TASK_METRICS[task_key])


# ------------------------------------------------------- benchmark scores


# Task -> the metric keys (of which task key) averaged into its score.
GLUE_SCORE_PARTS: dict[str, tuple[tuple[str, str], ...]] = {
    "cola": (("cola", "matthews_corrcoef"),),
    "sst2": (("sst2", "accuracy"),),
    "mrpc": (("mrpc", "f1"), ("mrpc", "accuracy")),
    "stsb": (("stsb", "pearson_corrcoef"), ("stsb", "spearman_corrcoef")),
    "qqp": (("qqp", "f1"), ("qqp", "accuracy")),
    "mnli": (("mnli_matched", "accuracy"), ("mnli_mismatched", "accuracy")),
    "qnli": (("qnli", "accuracy"),),
    "rte": (("rte", "accuracy"),),
}
SUPERGLUE_SCORE_PARTS: dict[str, tuple[tuple[str, str], ...]] = {
    "boolq": (("boolq", "accuracy"),),
    "cb": (("cb", "mean_3class_f1"), ("cb", "accuracy")),
    "copa": (("copa", "accuracy"),),
    "multirc": (("multirc", "f1"), ("multirc", "exact_match")),
    "record": (("record", "f1"), ("record", "em")),
    "rte": (("rte", "accuracy"),),
    "wic": (("wic", "accuracy"),),
    "wsc": (("wsc", "accuracy"),),
}


def task_score(scores: Mapping[str, float]) -> float:
  """One task's score: the mean of its metrics (T5's grouping, e.g. MRPC =
  (F1 + accuracy) / 2, STS-B = (Pearson + Spearman) / 2)."""
  if not scores:
    raise errors.DataError("No metrics to average; a task score needs at least one.")
  return float(np.mean([float(v) for v in scores.values()]))


def _benchmark_average(parts: Mapping[str, tuple[tuple[str, str], ...]],
                       scores: Mapping[str, Mapping[str, float]], name_prefix: Optional[str],
                       benchmark: str) -> dict[str, float]:
  def key(task):
    return f"{name_prefix}_{task}" if name_prefix else task

  missing = sorted({key(t) for p in parts.values() for t, m in p
                    if key(t) not in scores or m not in scores[key(t)]})
  if missing:
    raise errors.DataError(f"The {benchmark} average needs scores of {missing} (with their "
                           f"official metrics); got tasks {sorted(scores)}.")
  out = {task: float(np.mean([scores[key(t)][m] for t, m in p])) for task, p in parts.items()}
  out["average"] = float(np.mean(list(out.values())))
  return out


def glue_average(scores: Mapping[str, Mapping[str, float]],
                 name_prefix: Optional[str] = None) -> dict[str, float]:
  """Per-task GLUE scores and their mean, as T5 reports "Average GLUE Score".

  Args:
    scores: task -> {metric: value} for cola, sst2, mrpc, stsb, qqp,
      mnli_matched, mnli_mismatched, qnli and rte (WNLI is left out, as T5
      does). Keys are the bare task keys, or `<name_prefix>_<task>`.
    name_prefix: the registration prefix of the keys, e.g. "spot_glue".

  Returns:
    {task: score} for the 8 GLUE tasks (MNLI = mean of matched and
    mismatched) plus "average".
  """
  return _benchmark_average(GLUE_SCORE_PARTS, scores, name_prefix, "GLUE")


def superglue_average(scores: Mapping[str, Mapping[str, float]],
                      name_prefix: Optional[str] = None) -> dict[str, float]:
  """Per-task SuperGLUE scores and their mean ("Average SuperGLUE Score");
  `scores` as for `glue_average`, keyed by boolq, cb, copa, multirc, record,
  rte, wic, wsc."""
  return _benchmark_average(SUPERGLUE_SCORE_PARTS, scores, name_prefix, "SuperGLUE")
