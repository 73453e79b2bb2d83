"""`infer()`: decode a task's inputs and write predictions as JSONL, as t5x infer."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

import jax
import numpy as np
from etils import epath

from spot import partitioning as partitioning_lib
from spot.train import data as data_lib, evaluation, progress, state as state_lib
from spot.train.batching import pad_batch
from spot.train.models import EncoderDecoderModel


def _text(vocab: Any, ids: np.ndarray) -> str:
  ids = [int(i) for i in ids]
  if 1 in ids:  # EOS
    ids = ids[: ids.index(1)]
  return vocab.decode([i for i in ids if i > 0]) if vocab is not None else " ".join(map(str, ids))


def _whole(batches: list[Mapping[str, np.ndarray]]) -> list[dict]:
  """The batches of a split as one batch (an empty list for an empty split)."""
  if not batches:
    return []
  return [{k: np.concatenate([b[k] for b in batches]) for k in batches[0]}]


def _write(f: Any, model: EncoderDecoderModel, raw: Mapping[str, np.ndarray],
           tokens: np.ndarray, start: int) -> None:
  """One JSONL record per predicted row of `raw`, indexed from `start`."""
  vocab, pin = model.vocabulary, model.prompt_inputs(raw)
  for i in range(len(tokens)):
    rec = {"index": start + i, "inputs": _text(vocab, raw["encoder_input_tokens"][i]),
           "prediction": _text(vocab, tokens[i])}
    if "decoder_target_tokens" in raw:
      rec["targets"] = _text(vocab, raw["decoder_target_tokens"][i])
    if pin:
      rec["prompt_inputs"] = {k: int(raw[k][i]) for k in pin}
    f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def infer(*, model: EncoderDecoderModel, dataset_cfg: data_lib.DatasetConfig, output_dir: str,
          initial_checkpoint_path: Optional[str], restore_model_dir: Optional[str] = None,
          use_best: bool = False, num_examples: Optional[int] = None,
          decode: Optional[Mapping[str, Any]] = None, max_decode_length: Optional[int] = None,
          seed: int = 0, partitioner: Optional[partitioning_lib.Partitioner] = None,
          gin_config: Optional[str] = None, by_length: bool = True) -> str:
  """Writes `output_dir/inference/<task>-<split>.jsonl` and returns its path.

  Without `dataset_cfg.task_feature_lengths` (TASK_FEATURE_LENGTHS), the
  lengths are the longest tokenized example of the split (of the first
  `num_examples`), as eval does.

  Each line: {"index", "inputs", "prediction", "targets" (when the split has
  them), "prompt_inputs" (per-example prompt ids, when the model uses them)}.
  With `by_length`, the split is read whole and decoded in batches of similar
  input length cut to a few fixed lengths; lines stay in input order.
  """
  partitioner = partitioner or partitioning_lib.Partitioner.create()
  data_lib.get_task(dataset_cfg.mixture_or_task_name, dataset_cfg.module, dataset_cfg.data_dir,
                    dataset_cfg.vocabulary)
  params = state_lib.params_for_inference(model, initial_checkpoint_path, restore_model_dir,
                                          use_best, seed)
  cfg = dataset_cfg
  if cfg.task_feature_lengths is None:  # as eval: the longest example of the split
    cfg = dataclasses.replace(cfg, task_feature_lengths=data_lib.max_feature_lengths(
        cfg, num_examples))
  converter = data_lib.PromptFeatureConverter(model.prompt_length,
                                               prompt_features=model.prompt_input_names)
  ds = data_lib.get_dataset(cfg, converter, num_epochs=1, drop_remainder=False,
                            prompt_features=tuple(model.prompt_input_names))
  if num_examples:
    ds = ds.unbatch().take(num_examples).batch(cfg.batch_size)
  out_dir = epath.Path(output_dir) / "inference"
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / f"{cfg.mixture_or_task_name}-{cfg.split}.jsonl"
  tmp = out_dir / f".{path.name}.tmp{os.getpid()}"
  length = max_decode_length or int(cfg.task_feature_lengths.get("targets", 64))
  total = num_examples or 0
  prog = progress.Progress(total or 1, 0, every=1, prefix="infer")
  n_done = 0
  with partitioner, tmp.open("w") as f:
    batches = data_lib.iterate(ds, cfg.mixture_or_task_name)
    if by_length:
      batches = _whole(list(batches))
    for raw in batches:
      if by_length:
        tokens = evaluation.predict_examples(model, params, raw, cfg.batch_size,
                                             max_decode_length=length, decode=decode, seed=seed)
        n = len(tokens)
      else:
        padded, n = pad_batch(model.model_features(raw), cfg.batch_size)
        tokens = evaluation.predict_rows(
            model, params, padded, n, max_decode_length=length,
            rng=jax.random.fold_in(jax.random.PRNGKey(seed), n_done), decode=decode)
      _write(f, model, raw, tokens, n_done)
      n_done += n
      if total:
        prog.log(min(n_done, total), {})
  tmp.replace(path)  # a re-run overwrites the previous predictions
  if jax.process_index() == 0:
    print(f"Wrote {n_done} predictions to {path}", flush=True)
  return str(path)
