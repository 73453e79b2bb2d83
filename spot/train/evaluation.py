"""Evaluation with the tasks' own SeqIO metrics (predict and score metrics).

`Evaluator` wraps one `seqio.Evaluator` per evaluation task: SeqIO caches the
targets, postprocesses predictions and runs the metric functions; spot
supplies `predict_fn` (cached decoding) and `score_fn` (target log-likelihood).
Results are flattened to {"task/metric": value}.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
import seqio

from spot import partitioning
from spot.train import data as data_lib
from spot.train import inference
from spot.train.models import EncoderDecoderModel

MODEL_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
              "decoder_loss_weights")


def eval_task_names(name: str, split: str, module: Optional[str] = None,
                    data_dir: Optional[str] = None) -> list[str]:
  """Tasks of a task or mixture that have metrics and the given split."""
  task = data_lib.get_task(name, module, data_dir)
  tasks = seqio.get_subtasks(task) if isinstance(task, seqio.Mixture) else [task]
  out = []
  for t in tasks:
    has_metrics = bool(getattr(t, "metric_fns", None) or getattr(t, "metric_objs", None))
    splits = getattr(t.source, "splits", None) or ()
    if has_metrics and (not splits or split in splits):
      out.append(t.name)
  return out


def pick_metric(results: Mapping[str, float], name: str) -> float:
  """Value of "task/metric", or of "metric" when exactly one task reports it."""
  if name in results:
    return float(results[name])
  hits = [k for k in results if k.split("/", 1)[-1] == name]
  if len(hits) == 1:
    return float(results[hits[0]])
  raise ValueError(f"best_metric {name!r} is not among the eval results {sorted(results)}; "
                   "use one of those names.")


def pad_batch(batch: Mapping[str, np.ndarray], size: int) -> tuple[dict, int]:
  """Pads a last, short batch with zero rows to `size` (fixed jit shapes); returns (batch, n)."""
  n = next(iter(batch.values())).shape[0]
  if n == size:
    return dict(batch), n
  return {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}, n


class Evaluator:
  """Runs SeqIO evaluation of `model` on the eval tasks of a run."""

  def __init__(self, model: EncoderDecoderModel, train_cfg: data_lib.DatasetConfig,
               eval_cfg: Any, partitioner: Any = None):
    self.model, self.cfg, self.partitioner = model, eval_cfg, partitioner
    names = list(eval_cfg.tasks or eval_task_names(train_cfg.mixture_or_task_name,
                                                   eval_cfg.split, train_cfg.module,
                                                   train_cfg.data_dir))
    if not names:
      raise ValueError(f"No task of {train_cfg.mixture_or_task_name!r} has metrics and a "
                       f"{eval_cfg.split!r} split; set EvalConfig.tasks or split.")
    lengths = eval_cfg.task_feature_lengths or train_cfg.task_feature_lengths
    converter = data_lib.PromptFeatureConverter(model.prompt_length,
                                               prompt_features=model.prompt_input_names)
    self.evaluators = {
        name: seqio.Evaluator(name, converter, eval_split=eval_cfg.split,
                              sequence_length=dict(lengths) if lengths else None,
                              num_examples=eval_cfg.num_examples, shuffle=False,
                              use_memory_cache=True, async_compute_metrics=False)
        for name in names}

  def _batches(self, dataset):
    size = self.cfg.batch_size
    keys = MODEL_KEYS + tuple(self.model.prompt_input_names)
    for idx, feats in dataset.batch(size).as_numpy_iterator():
      feats = {k: v for k, v in feats.items() if k in keys}
      padded, n = pad_batch(feats, size)
      yield idx, padded, n

  def _model_batch(self, padded: Mapping[str, np.ndarray]) -> dict:
    batch = {k: v for k, v in padded.items() if k in MODEL_KEYS}
    inputs = self.model.prompt_inputs(padded)
    if inputs:
      batch["prompt_inputs"] = inputs
    return batch

  def predict_fn(self, params, dataset, model_feature_shapes=None):
    decode = dict(self.cfg.decode or {})
    length = (model_feature_shapes or {}).get("decoder_target_tokens")
    out = []
    for i, (idx, padded, n) in enumerate(self._batches(dataset)):
      tokens, _ = inference.predict_batch(
          self.model.module, params, self._model_batch(padded),
          max_decode_length=length or padded["decoder_target_tokens"].shape[1],
          rng=jax.random.fold_in(jax.random.PRNGKey(0), i), **decode)
      tokens = partitioning.host_array(tokens)[:n]  # gathers multi-host shards
      out.extend((int(i), t.tolist()) for i, t in zip(idx, tokens))
    return out

  def score_fn(self, params, dataset, model_feature_shapes=None):
    del model_feature_shapes
    out = []
    for idx, padded, n in self._batches(dataset):
      scores = inference.score_batch(self.model.module, params, self._model_batch(padded))
      scores = partitioning.host_array(scores)[:n]  # gathers multi-host shards
      out.extend((int(i), float(s)) for i, s in zip(idx, scores))
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
