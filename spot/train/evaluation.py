"""Evaluation with the tasks' own SeqIO metrics (predict and score metrics).

`Evaluator` wraps one `seqio.Evaluator` per evaluation task: SeqIO caches the
targets, postprocesses predictions and runs the metric functions; spot
supplies `predict_fn` (cached decoding) and `score_fn` (target log-likelihood).
Results are flattened to {"task/metric": value}. Given a `model_dir`, SeqIO's
loggers save what T5X saves: predictions and metrics as JSONL under
`model_dir/inference_eval/` and TensorBoard scalars under
`model_dir/training_eval/<task>/`, apart from the trainer's `train/` summaries.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import numpy as np
import seqio
from etils import epath

from spot import errors, partitioning
from spot.train import data as data_lib
from spot.train import batching
from spot.train.batching import pad_batch
from spot.train.models import EncoderDecoderModel

Batch = Mapping[str, np.ndarray]


def eval_task_names(name: str, split: str, module: Optional[str] = None,
                    data_dir: Optional[str] = None) -> list[str]:
  """Tasks of a task or mixture that have metrics and the given split.

  "dev1" / "dev2" count as present where the task has a validation split to halve.
  """
  task = data_lib.get_task(name, module, data_dir)
  tasks = seqio.get_subtasks(task) if isinstance(task, seqio.Mixture) else [task]
  out = []
  for t in tasks:
    has_metrics = bool(getattr(t, "metric_fns", None) or getattr(t, "metric_objs", None))
    splits = getattr(t.source, "splits", None) or ()
    if split in data_lib.DEV_SPLITS:
      splits = data_lib.DEV_SPLITS if any(s.startswith("validation") for s in splits) else ()
    if has_metrics and (not splits or split in splits):
      out.append(t.name)
  return out


INFERENCE_EVAL_DIR = "inference_eval"
TRAINING_EVAL_DIR = "training_eval"


def _finite_or_none(value: Any) -> Optional[float]:
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


def pick_metric(results: Mapping[str, Optional[float]], name: str) -> Optional[float]:
  """Value of "task/metric", or of "metric" when exactly one task reports it.

  None when that metric is None or not finite (e.g. STS-B's Pearson of constant
  early predictions): such an evaluation never counts as the best.
  """
  if name in results:
    return _finite_or_none(results[name])
  hits = [k for k in results if k.split("/", 1)[-1] == name]
  if len(hits) == 1:
    return _finite_or_none(results[hits[0]])
  raise errors.UsageError(f"best_metric {name!r} is not among the eval results "
                          f"{sorted(results)}; use one of those names.")


def predict_rows(model: EncoderDecoderModel, params: Any, batch: Batch, n: int, *,
                 rng: jax.Array, max_decode_length: Optional[int] = None,
                 decode: Optional[Mapping[str, Any]] = None) -> np.ndarray:
  """Decoded token ids [n, L] of the n real rows of a padded batch (host numpy).

  `decode` holds keyword arguments of `EncoderDecoderModel.predict_batch`
  (method, num_decodes, ...); the length defaults to the batch's targets.
  """
  tokens = model.predict_batch(params, model.model_features(batch), rng,
                               max_decode_length=max_decode_length, **dict(decode or {}))
  return partitioning.host_array(tokens)[:n]  # gathers multi-host shards


def score_rows(model: EncoderDecoderModel, params: Any, batch: Batch, n: int) -> np.ndarray:
  """Target log-likelihoods [n] of the n real rows of a padded batch (host numpy)."""
  scores = model.score_batch(params, model.model_features(batch))
  return partitioning.host_array(scores)[:n]  # gathers multi-host shards


def predict_examples(model: EncoderDecoderModel, params: Any, features: Batch, batch_size: int,
                     *, max_decode_length: Optional[int] = None,
                     decode: Optional[Mapping[str, Any]] = None, seed: int = 0,
                     by_length: bool = True) -> np.ndarray:
  """Decoded token ids [N, L] of every example of `features` [N, ...], in input order.

  With `by_length`, batches hold examples of similar encoder length cut to a
  few fixed lengths (`batching.length_batches`); otherwise input order, fixed
  shapes. Batch i decodes with `fold_in(PRNGKey(seed), i)`.
  """
  features = model.model_features(features)
  total = len(features["encoder_input_tokens"])
  if max_decode_length is None:
    max_decode_length = features["decoder_target_tokens"].shape[1]
  batches = (batching.length_batches(features, batch_size) if by_length else
             ((np.arange(i * batch_size, i * batch_size + n), b, n) for i, (b, n) in
              enumerate(batching.split_batches(features, batch_size))))
  return batching.in_input_order(
      ((rows, predict_rows(model, params, b, n, max_decode_length=max_decode_length,
                           rng=jax.random.fold_in(jax.random.PRNGKey(seed), i), decode=decode))
       for i, (rows, b, n) in enumerate(batches)), total)


def score_examples(model: EncoderDecoderModel, params: Any, features: Batch, batch_size: int,
                   *, by_length: bool = True) -> np.ndarray:
  """Target log-likelihoods [N] of every example of `features`, in input order; with
  `by_length`, in batches of similar input and target lengths cut to a few fixed lengths."""
  features = model.model_features(features)
  total = len(features["encoder_input_tokens"])
  batches = (batching.length_batches(features, batch_size, trim_targets=True) if by_length else
             ((np.arange(i * batch_size, i * batch_size + n), b, n) for i, (b, n) in
              enumerate(batching.split_batches(features, batch_size))))
  return batching.in_input_order(
      ((rows, score_rows(model, params, b, n)) for rows, b, n in batches), total)


def _logger_at(cls: Callable[..., seqio.Logger], output_dir: str) -> Callable[..., seqio.Logger]:
  """A seqio logger class writing to `output_dir`, whatever log_dir the Evaluator passes.

  seqio.Evaluator builds every logger with its one `log_dir`; T5X keeps the JSONL
  predictions and the TensorBoard scalars in different directories.
  """
  fixed = output_dir

  def make(output_dir: Optional[str] = None) -> seqio.Logger:
    del output_dir  # the Evaluator's shared log_dir
    if jax.process_index() == 0:
      epath.Path(fixed).mkdir(parents=True, exist_ok=True)
    return cls(output_dir=fixed)

  return make


class Evaluator:
  """Runs SeqIO evaluation of `model` on the eval tasks of a run.

  With `model_dir`, each evaluation appends predictions (`<task>-<step>.jsonl`)
  and metrics (`<task>-metrics.jsonl`) to `model_dir/inference_eval` and writes
  TensorBoard scalars `eval/<metric>` to `model_dir/training_eval/<task>`.
  With `by_length`, each split is decoded and scored in batches of similar
  length cut to a few fixed lengths (`batching.length_batches`).
  """

  def __init__(self, model: EncoderDecoderModel, train_cfg: data_lib.DatasetConfig,
               eval_cfg: Any, partitioner: Any = None, model_dir: Optional[str] = None,
               by_length: bool = True):
    self.model, self.cfg, self.partitioner = model, eval_cfg, partitioner
    self.by_length = by_length
    names = list(eval_cfg.tasks or eval_task_names(train_cfg.mixture_or_task_name,
                                                   eval_cfg.split, train_cfg.module,
                                                   train_cfg.data_dir))
    if not names:
      raise errors.UsageError(f"No task of {train_cfg.mixture_or_task_name!r} has metrics and a "
                       f"{eval_cfg.split!r} split; set EvalConfig.tasks or split.")
    lengths = eval_cfg.task_feature_lengths or train_cfg.task_feature_lengths
    converter = data_lib.PromptFeatureConverter(model.prompt_length,
                                               prompt_features=model.prompt_input_names)
    loggers: dict[str, Any] = {}
    if model_dir:
      loggers = dict(
          logger_cls=[_logger_at(seqio.JSONLogger, os.path.join(model_dir, INFERENCE_EVAL_DIR)),
                      _logger_at(seqio.TensorBoardLogger,
                                 os.path.join(model_dir, TRAINING_EVAL_DIR))],
          log_dir=os.path.join(model_dir, INFERENCE_EVAL_DIR))
    halves = contextlib.nullcontext()
    if eval_cfg.split in data_lib.DEV_SPLITS:  # dev1 / dev2: halves of a validation split
      halves = data_lib.dev_splits_registered(names, getattr(eval_cfg, "dev_split_seed", 0),
                                              getattr(eval_cfg, "dev_source_split", None))
    with halves:
      self.evaluators = {
          name: seqio.Evaluator(name, converter, eval_split=eval_cfg.split,
                                sequence_length=dict(lengths) if lengths else None,
                                num_examples=eval_cfg.num_examples, shuffle=False,
                                use_memory_cache=True, async_compute_metrics=False, **loggers)
          for name in names}

  def _batches(self, dataset) -> Iterator[tuple[np.ndarray, Batch, int]]:
    """(example indices, padded model features, real rows) of each batch of `dataset`."""
    size = self.cfg.batch_size
    for idx, feats in dataset.batch(size).as_numpy_iterator():
      padded, n = pad_batch(self.model.model_features(feats), size)
      yield idx, padded, n

  def _examples(self, dataset) -> tuple[np.ndarray, Batch]:
    """(example indices [N], model features [N, ...]) of the whole of `dataset`."""
    parts = list(dataset.batch(self.cfg.batch_size).as_numpy_iterator())
    if not parts:
      return np.zeros((0,), np.int64), {}
    feats = [self.model.model_features(f) for _, f in parts]
    return (np.concatenate([i for i, _ in parts]),
            {k: np.concatenate([f[k] for f in feats]) for k in feats[0]})

  def predict_fn(self, params, dataset, model_feature_shapes=None):
    length = (model_feature_shapes or {}).get("decoder_target_tokens")
    if self.by_length:
      idx, feats = self._examples(dataset)
      if not len(idx):
        return []
      tokens = predict_examples(self.model, params, feats, self.cfg.batch_size,
                                max_decode_length=length, decode=self.cfg.decode)
      return [(int(j), t.tolist()) for j, t in zip(idx, tokens)]
    out = []
    for i, (idx, padded, n) in enumerate(self._batches(dataset)):
      tokens = predict_rows(self.model, params, padded, n, max_decode_length=length,
                            rng=jax.random.fold_in(jax.random.PRNGKey(0), i),
                            decode=self.cfg.decode)
      out.extend((int(j), t.tolist()) for j, t in zip(idx, tokens))
    return out

  def score_fn(self, params, dataset, model_feature_shapes=None):
    del model_feature_shapes
    if self.by_length:
      idx, feats = self._examples(dataset)
      if not len(idx):
        return []
      scores = score_examples(self.model, params, feats, self.cfg.batch_size)
      return [(int(j), float(s)) for j, s in zip(idx, scores)]
    out = []
    for idx, padded, n in self._batches(dataset):
      out.extend((int(j), float(s)) for j, s in zip(idx, score_rows(self.model, params, padded, n)))
    return out

  def evaluate(self, params: Any, step: int) -> dict[str, float]:
    """Returns {"task/metric": value} for every eval task."""
    results: dict[str, float] = {}
    for name, ev in self.evaluators.items():
      all_metrics, _ = ev.evaluate(
          compute_metrics=jax.process_index() == 0, step=step,
          predict_fn=lambda ds, shapes=None: self.predict_fn(params, ds, shapes),
          score_fn=lambda ds, shapes=None: self.score_fn(params, ds, shapes))
      if jax.process_index() != 0:
        continue
      for task_name, metrics in all_metrics.result().items():
        for metric, value in metrics.items():
          value = getattr(value, "value", value)
          try:
            results[f"{task_name}/{metric}"] = float(value)
          except (TypeError, ValueError):
            continue
    return results
