"""Scoring many prompts of one frozen model on small validation sets, fast.

A learning curve needs one evaluation per saved prompt checkpoint, for every
run. `seqio.Evaluator` rebuilds its TensorFlow input pipeline on each call;
`PromptScorer` reads each task's validation examples once into numpy, then
scores a prompt through the evaluator's own decoding path
(`spot.train.evaluation.predict_examples`, i.e. `EncoderDecoderModel.predict_batch`)
and the task's own postprocessor and metric functions, as the evaluator would.
One model object serves every prompt, so the decoder is traced and compiled
once per demo.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import numpy as np
import seqio

from spot.train import data as data_lib
from spot.train import evaluation


class PromptScorer:
  """Validation scores of `model` (frozen `base_params` + a prompt) on SeqIO tasks.

  Args:
    model: an `EncoderDecoderModel` with a `PrefixPrompt` (its initial value
      is irrelevant: the prompt is passed in at each call).
    base_params: the frozen parameters (without the prompt).
    feature_lengths: SeqIO task feature lengths.
    num_examples: validation examples per task (the first ones, unshuffled).
    batch_size: examples per decode call (default: all at once).
  """

  def __init__(self, model: Any, base_params: Mapping[str, Any],
               feature_lengths: Mapping[str, int], num_examples: int,
               batch_size: Optional[int] = None):
    self.model, self.lengths, self.num_examples = model, dict(feature_lengths), num_examples
    self.batch_size = batch_size or num_examples
    self.base_params = jax.device_put(base_params)
    self._data: dict[str, tuple[dict[str, np.ndarray], list[Any], list[dict]]] = {}

  def _task_data(self, name: str):
    """(model batch, postprocessed targets, raw examples) of a task, read once."""
    if name not in self._data:
      task = seqio.get_mixture_or_task(name)
      ds = task.get_dataset(self.lengths, split="validation", shuffle=False, num_epochs=1)
      ds = ds.take(self.num_examples)
      examples = list(ds.as_numpy_iterator())
      if not examples:
        raise ValueError(f"Task {name!r} has no validation examples to score.")
      converter = data_lib.PromptFeatureConverter(self.model.prompt_length)
      batch = next(converter(ds, self.lengths).batch(len(examples)).as_numpy_iterator())
      targets = [task.postprocess_fn(ex["targets_pretokenized"].decode("utf-8"), example=ex,
                                     is_target=True) for ex in examples]
      self._data[name] = (self.model.model_features(batch), targets, examples)
    return self._data[name]

  def params(self, prompt: np.ndarray) -> dict:
    """The base parameters with `prompt` at `encoder/prompt/prompt/prompt`."""
    params = dict(self.base_params)
    params["encoder"] = dict(params["encoder"], prompt={"prompt": {"prompt": np.asarray(prompt)}})
    return params

  def predictions(self, name: str, prompt: np.ndarray) -> list[str]:
    """Greedy decodes of the task's validation inputs, as text."""
    batch, _, _ = self._task_data(name)
    # Input order in full batches (the last one padded), so one compile serves all.
    rows = evaluation.predict_examples(self.model, self.params(prompt), batch, self.batch_size,
                                       max_decode_length=self.lengths["targets"],
                                       by_length=False)
    vocab = self.model.vocabulary
    return [vocab.decode([int(i) for i in row]) for row in rows]

  def score(self, name: str, prompt: np.ndarray) -> dict[str, float]:
    """{"task/metric": value} of the task's predict metrics for `prompt`."""
    _, targets, examples = self._task_data(name)
    task = seqio.get_mixture_or_task(name)
    preds = [task.postprocess_fn(p, example=ex, is_target=False)
             for p, ex in zip(self.predictions(name, prompt), examples)]
    results: dict[str, float] = {}
    for fn in task.predict_metric_fns:
      for metric, value in fn(targets, preds).items():
        results[f"{name}/{metric}"] = float(getattr(value, "value", value))
    return results

