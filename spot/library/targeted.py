"""SPoT targeted transfer: retrieve source prompts for a target task and train from them.

Given a target task's embedding, the library ranks its source prompts; then:

- `top1`: initialise the target prompt from the best source;
- `weighted_average`: from the similarity-weighted average of the top-k;
- `best_of_top_k`: train k targets, one from each of the top-k sources, and
  keep the one best on validation (the paper's oracle-free selection);
- `mixture`: train on a multi-task mixture of the top-k source tasks plus the
  target task, evaluating on the target.

Runs use the same gin flags as `spot train`; this module only adds the
initialisation, the model_dir of each run and, for `mixture`, the task.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np
from etils import epath

from spot.library import retrieval, transfer
from spot.library.store import PromptLibrary

MODES = ("top1", "weighted_average", "best_of_top_k", "mixture")


@dataclasses.dataclass
class TransferRun:
  """One target training: where it came from and how it scored."""

  source: str
  similarity: Optional[float]
  model_dir: str
  best_step: Optional[int]
  best_value: Optional[float]


def _best(result: Any) -> tuple[Optional[int], Optional[float]]:
  if result.best is not None:
    return int(result.best[0]), float(result.best[1])
  return None, None


def run_transfer(lib: PromptLibrary, train_flags: Sequence[str], query: np.ndarray, *,
                 mode: str, out_dir: str, model: Optional[str] = None, top_k: int = 3,
                 metric: str = "avg_tokens", best_metric: Optional[str] = None,
                 target_task: Optional[str] = None) -> tuple[list[TransferRun], TransferRun]:
  """Trains target prompt(s) from retrieved sources; returns (all runs, chosen run).

  Args:
    lib: the prompt library.
    train_flags: `spot train` flags for the target run (model, run file,
      MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, TRAIN_STEPS, base checkpoint).
    query: the target task's embedding [P', D] (see `spot library embed`).
    mode: one of MODES.
    out_dir: each run's model_dir goes under it.
    model: base model whose entries to consider (default: the library's only one).
    top_k / metric: retrieval settings.
    best_metric: validation metric (BEST_METRIC) that picks the best checkpoint
      and, for best_of_top_k, the best run; required for best_of_top_k.
    target_task: the target's SeqIO task (required for `mixture`).
  """
  from spot.train import cli  # JAX, SeqIO: imported only when training

  if mode not in MODES:
    raise ValueError(f"Unknown transfer mode {mode!r}; choose from {MODES}.")
  if mode == "best_of_top_k" and not best_metric:
    raise ValueError("best_of_top_k needs --best-metric (e.g. accuracy) to pick the best run.")
  ranked = retrieval.rank(lib, query, model=model, metric=metric, top_k=top_k)
  if not ranked:
    raise ValueError(f"No library entry to transfer from (model {model!r}).")
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  common = [f"BEST_METRIC = {best_metric!r}"] if best_metric else []
  runs: list[TransferRun] = []

  def train(name: str, similarity: Optional[float], files: Sequence[str],
            bindings: Sequence[str]) -> TransferRun:
    model_dir = str(out / name)
    result = cli.run_with_flags(train_flags, extra_files=files, extra_bindings=[
        f"MODEL_DIR = '{model_dir}'", f"METHOD = 'spot_{mode}'", *common, *bindings])
    step, value = _best(result)
    run = TransferRun(name, similarity, model_dir, step, value)
    runs.append(run)
    return run

  if mode in ("top1", "weighted_average"):
    init = transfer.init_prompt(lib, ranked, mode)
    path = out / f"{mode}_init.npy"
    with path.open("wb") as f:
      np.save(f, init)
    chosen = train(mode, ranked[0][1] if mode == "top1" else None,
                   ["spot/gin/prompts/from_file.gin"], [f"PROMPT_FILE = '{path}'"])
    chosen.source = ranked[0][0] if mode == "top1" else "+".join(n for n, _ in ranked)
    return runs, chosen
  if mode == "best_of_top_k":
    for name, score in ranked:
      train(name, score, ["spot/gin/prompts/from_library.gin"],
            [f"LIBRARY_PATH = '{lib.path}'", f"LIBRARY_ENTRY = '{name}'"])
    scored = [r for r in runs if r.best_value is not None]
    if not scored:
      raise ValueError(f"No run reported {best_metric!r}; check the metric name.")
    return runs, max(scored, key=lambda r: r.best_value)
  # mixture
  import seqio
  if not target_task:
    raise ValueError("mixture needs --target-task (the SeqIO task of the target).")
  tasks = transfer.mixture_tasks(lib, ranked, target_task)
  name = f"spot_transfer_mix_{abs(hash(tuple(tasks))) % 10**8}"
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(t, 1.0) for t in tasks])
  chosen = train("mixture", None, [], [f"MIXTURE_OR_TASK_NAME = '{name}'",
                                       f"trainer.EvalConfig.tasks = ['{target_task}']"])
  chosen.source = "+".join(tasks)
  return runs, chosen
