"""Ranking library entries by task-embedding similarity to a target task.

A query is a target task's embedding [P', D] (an early prompt checkpoint, as in
SPoT sec. 3.2) or the name of an entry, which stands for that entry's first
task embedding and is left out of its own ranking. Only entries of one base
model are ranked; the query's dimension must match that model's.
"""

from __future__ import annotations

from typing import Iterable, Optional, Union

import numpy as np

from spot.library import entry as entry_lib
from spot.library import index as index_lib
from spot.library import similarity
from spot.library.errors import LibraryError, ModelMismatchError
from spot.library.store import PromptLibrary

Query = Union[np.ndarray, str]


def resolve_model(library: PromptLibrary, index: index_lib.Index,
                  model: Optional[str]) -> str:
  """The base model a query runs against: `model`, or the library's only one."""
  models = sorted(index.models)
  if model is not None:
    if model not in index.models:
      raise ModelMismatchError(
          f"prompt library {library.path} has no valid entries for model {model!r}; its "
          f"models are: {', '.join(models) or 'none'}.")
    return model
  if not models:
    raise LibraryError(f"prompt library {library.path} has no valid entries to rank; add "
                       "some with `spot library add`.")
  if len(models) > 1:
    raise ModelMismatchError(
        f"prompt library {library.path} holds prompts of several base models "
        f"({', '.join(models)}); pick one with --model (model=...).")
  return models[0]


def _query_vector(library: PromptLibrary, index: index_lib.Index, query: Query,
                  model: Optional[str], metric: str) -> tuple[str, np.ndarray, tuple[str, ...]]:
  """(model, summary vector [D], names to exclude) of a query."""
  if isinstance(query, str):
    row = index.rows.get(query)
    if row is None or row.problem:
      library.entry(query)  # raises the not-found or corrupt error with its fix
      raise LibraryError(f"entry {query!r} changed while being queried; try again.")
    if model is not None and model != row.model:
      raise ModelMismatchError(f"entry {query!r} belongs to model {row.model!r}, not "
                               f"{model!r}; entries of different base models are never "
                               "compared.")
    mi = index.models[row.model]
    return row.model, mi.vectors[metric][mi.position(query)], (query,)
  model = resolve_model(library, index, model)
  dim = index.models[model].dim
  array = entry_lib.as_prompt_array(query, "the query embedding")
  if array.shape[1] != dim:
    raise ModelMismatchError(
        f"the query embedding has embed dim {array.shape[1]} but model {model!r} has "
        f"{dim}: it comes from another base model. Compute it with {model!r} or pass "
        "that model's name with --model.")
  return model, similarity.summary_vector(array, metric).astype(np.float32), ()


def rank(library: PromptLibrary, query: Query, *, model: Optional[str] = None,
         metric: str = "avg_tokens", top_k: Optional[int] = None,
         exclude: Iterable[str] = (), prompt_length: Optional[int] = None
         ) -> list[tuple[str, float]]:
  """Entries most similar to `query`, best first.

  Args:
    library: the prompt library.
    query: a task embedding [P', D], or the name of an entry (its first task
      embedding; the entry itself is excluded).
    model: base model to search; default the query entry's, or the library's
      only model.
    metric: "avg_tokens" or "per_token" (see `similarity`).
    top_k: keep the k best (None: all).
    exclude: entry names to leave out.
    prompt_length: only entries whose prompt has this many tokens (P), e.g.
      to average prompts of one shape (CLI: --prompt-length).

  Returns:
    [(name, score)], by decreasing score, ties by name. The returned entries'
    files are re-checked first; any that changed in place is re-read (and left
    out if it is now corrupt).
  """
  similarity.check_metric(metric)
  if top_k is not None and top_k < 1:
    raise ValueError(f"top_k must be at least 1, got {top_k}.")
  if prompt_length is not None and prompt_length < 1:
    raise ValueError(f"prompt_length must be at least 1, got {prompt_length}.")
  for _ in range(2):
    ranked = _rank_once(library, query, model, metric, top_k, exclude, prompt_length)
    if not library.recheck([name for name, _ in ranked]):
      return ranked
  return _rank_once(library, query, model, metric, top_k, exclude, prompt_length)


def _rank_once(library: PromptLibrary, query: Query, model: Optional[str], metric: str,
               top_k: Optional[int], exclude: Iterable[str], prompt_length: Optional[int]
               ) -> list[tuple[str, float]]:
  index = library.index()
  model, q, skip = _query_vector(library, index, query, model, metric)
  mi = index.models[model]
  scores = mi.vectors[metric] @ q
  keep = np.ones(len(mi.names), dtype=bool)
  if prompt_length is not None:
    keep &= np.array([index.rows[n].prompt_length == prompt_length for n in mi.names],
                     dtype=bool)
  for name in set(skip) | set(exclude):
    try:
      keep[mi.position(name)] = False
    except KeyError:
      pass
  candidates = np.flatnonzero(keep)
  order = candidates[np.argsort(-scores[candidates], kind="stable")]
  if top_k is not None:
    order = order[:top_k]
  return [(mi.names[i], float(scores[i])) for i in order]


def pairwise(library: PromptLibrary, *, model: Optional[str] = None,
             metric: str = "avg_tokens", names: Optional[Iterable[str]] = None
             ) -> tuple[list[str], np.ndarray]:
  """(names, [N, N] similarity matrix) of the entries of one model."""
  similarity.check_metric(metric)
  index = library.index()
  model = resolve_model(library, index, model)
  mi = index.models[model]
  chosen = list(mi.names) if names is None else list(dict.fromkeys(names))
  rows = []
  for name in chosen:
    try:
      rows.append(mi.position(name))
    except KeyError:
      library.entry(name)  # not found or corrupt: raises with the fix
      raise ModelMismatchError(f"entry {name!r} is not an entry of model {model!r}.") from None
  v = mi.vectors[metric][rows].astype(np.float64)
  return chosen, v @ v.T
