"""`evaluate()`: SeqIO metrics of a model (and prompt) on a task's split, as t5x eval."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
from etils import epath

from spot import partitioning as partitioning_lib
from spot.models import size_name
from spot.train import checkpointing, data as data_lib, progress, state as state_lib
from spot.train.config import EvalConfig, RunSummary
from spot.train.evaluation import Evaluator
from spot.train.models import EncoderDecoderModel


def evaluate(*, model: EncoderDecoderModel, dataset_cfg: data_lib.DatasetConfig,
             output_dir: str, initial_checkpoint_path: Optional[str],
             restore_model_dir: Optional[str] = None, use_best: bool = False,
             num_examples: Optional[int] = None, decode: Optional[Mapping[str, Any]] = None,
             seed: int = 0, partitioner: Optional[partitioning_lib.Partitioner] = None,
             gin_config: Optional[str] = None, method: Optional[str] = None,
             metrics_writers: Sequence[Callable[[RunSummary], Any]] = ()
             ) -> dict[str, float]:
  """Evaluates and writes `output_dir/eval_results.json` and TensorBoard scalars.

  Args:
    model: the model; its prompt initializer supplies the prompt unless
      `restore_model_dir` names a run whose trained parameters to use.
    dataset_cfg: task or mixture, split, feature lengths (None: the data's max).
    output_dir: where results go.
    initial_checkpoint_path: the frozen base checkpoint (default: the run's).
    use_best: restore the run's best checkpoint rather than its latest.
    method: label for `spot xgen report` (default "pt" with a prompt, else "mt").
    metrics_writers: called on process 0 with a `RunSummary` of the results
      (step None); `prompt_eval.gin` binds `spot.xgen.report.write_xgen_scores`,
      which writes `output_dir/xgen_scores.json` when the tasks report xGen metrics.
  """
  partitioner = partitioner or partitioning_lib.Partitioner.create()
  data_lib.get_task(dataset_cfg.mixture_or_task_name, dataset_cfg.module, dataset_cfg.data_dir,
                    dataset_cfg.vocabulary)
  out = epath.Path(output_dir)
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    if gin_config:
      checkpointing.write_text_atomic(out / "config_eval.gin", gin_config)
  params = state_lib.params_for_inference(model, initial_checkpoint_path, restore_model_dir,
                                          use_best, seed)
  eval_cfg = EvalConfig(split=dataset_cfg.split, num_examples=num_examples,
                        batch_size=dataset_cfg.batch_size,
                        task_feature_lengths=dataset_cfg.task_feature_lengths, decode=decode,
                        dev_split_seed=dataset_cfg.dev_split_seed,
                        dev_source_split=dataset_cfg.dev_source_split)
  with partitioner:
    # model_dir: SeqIO's loggers save the predictions (inference_eval/*.jsonl), as in training.
    results = Evaluator(model, dataset_cfg, eval_cfg, partitioner,
                        model_dir=str(out)).evaluate(params, 0)
  # A NaN metric (STS-B's correlation of constant predictions) is recorded as null.
  results = {k: (float(v) if v is not None and math.isfinite(v) else None)
             for k, v in results.items()}
  if jax.process_index() == 0:
    checkpointing.write_json_atomic(out / "eval_results.json", results)
    summaries = progress.Summaries(str(out / "eval"))
    summaries.scalars(0, {f"eval/{k}": v for k, v in results.items() if v is not None})
    summaries.close()
    for k, v in sorted(results.items()):
      print(f"{k}: {'null (not finite)' if v is None else f'{v:.4f}'}", flush=True)
    summary = RunSummary(model_dir=str(output_dir), task=dataset_cfg.mixture_or_task_name,
                         method=method or ("pt" if model.prompt is not None else "mt"),
                         seed=seed, step=None,
                         results={k: v for k, v in results.items() if v is not None},
                         model_size=size_name(model.config),
                         prompt_length=model.prompt_length or None)
    for write in metrics_writers:
      write(summary)
  return results
