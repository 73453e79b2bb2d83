"""Turning a ranking into a target prompt's initialisation (SPoT sec. 3.3).

- TOP-1 (BEST OF TOP-k with k = 1): the best source prompt as is. BEST OF TOP-k
  trains k targets, one from each of the top-k prompts, and keeps the best on
  validation; the trainer runs those, this module only names them.
- TOP-k WEIGHTED AVERAGE: sum_r alpha_r * prompt_r with
  alpha_r = sim_r / sum_l sim_l, the similarities normalised to sum to one
  (as in the paper; not a softmax). Cosines can be negative, which the
  paper's formula does not anticipate: non-positive similarities get weight 0.
- TOP-k MULTI-TASK MIXTURE: the distinct source tasks of the top-k prompts,
  mixed with the target task (examples-proportional) to train a source prompt.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from spot.library.entry import check_prompt_entry
from spot.library.errors import LibraryError
from spot.library.store import PromptLibrary

METHODS = ("top1", "weighted_average")
Ranked = Sequence[tuple[str, float]]


def similarity_weights(scores: Sequence[float]) -> np.ndarray:
  """alpha_r = max(sim_r, 0) / sum_l max(sim_l, 0), as float64 [k]."""
  s = np.maximum(np.asarray(scores, dtype=np.float64), 0.0)
  if s.size == 0 or s.sum() <= 0:
    raise LibraryError(f"cannot weight prompts by similarities {list(scores)}: none is "
                       "positive. Initialise from the top-1 prompt instead.")
  return s / s.sum()


def weighted_average(prompts: Sequence[np.ndarray], scores: Sequence[float]) -> np.ndarray:
  """Similarity-weighted average of prompts of one shape -> float32 [P, D]."""
  if len(prompts) != len(scores):
    raise ValueError(f"{len(prompts)} prompts but {len(scores)} scores.")
  shapes = {np.shape(p) for p in prompts}
  if len(shapes) != 1:
    lengths = ", ".join(str(n) for n in sorted({s[0] for s in shapes}))
    raise LibraryError(f"cannot average prompts of different shapes {sorted(shapes)}; "
                       f"restrict the candidates to one prompt length with --prompt-length "
                       f"N (here {lengths}; Python: rank(..., prompt_length=N)), or use top1.")
  w = similarity_weights(scores)
  stacked = np.stack([np.asarray(p, dtype=np.float64) for p in prompts])
  return np.tensordot(w, stacked, axes=1).astype(np.float32)


def init_prompt(library: PromptLibrary, ranked: Ranked, method: str = "top1") -> np.ndarray:
  """A target prompt's initial value from a ranking (`retrieval.rank` output).

  Only prompt entries initialise a prompt: a ranked entry of another method
  (LoRA, ...) is refused with a MethodMismatchError naming it and its method.
  """
  if method not in METHODS:
    raise ValueError(f"unknown init method {method!r}; use one of {', '.join(METHODS)}.")
  if not ranked:
    raise LibraryError("the ranking is empty: no source prompt to initialise from.")
  for name, _ in ranked[:1] if method == "top1" else ranked:  # before any array is read
    check_prompt_entry(library.entry(name))
  if method == "top1":
    return library.prompt(ranked[0][0])
  return weighted_average([library.prompt(n) for n, _ in ranked], [s for _, s in ranked])


def mixture_tasks(library: PromptLibrary, ranked: Ranked,
                  target_task: Optional[str] = None) -> list[str]:
  """Distinct source tasks of the ranked entries, in rank order, then the target's."""
  rows = library.index().rows
  tasks = []
  for name, _ in ranked:
    if name not in rows or rows[name].problem:
      library.entry(name)  # raises the not-found or corrupt error with its fix
    task = rows[name].task
    if not task:
      raise LibraryError(f"entry {name!r} records no task, so it cannot join a mixture; "
                         "add it again with --task TASK.")
    tasks.append(task)
  if target_task:
    tasks.append(target_task)
  return list(dict.fromkeys(tasks))
