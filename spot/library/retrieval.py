"""Ranking library entries by task-embedding similarity to a target task.

A query is a target task's embedding [P', D] (an early prompt checkpoint, as in
SPoT sec. 3.2) or the name of an entry, which stands for that entry's first
task embedding and is left out of its own ranking. Only entries of one base
model and one method are ranked; the query's dimension must match that model's.

Methods are never mixed in one similarity computation: an entry query ranks
the entries of its own method; an embedding query ranks those of `method`
(default "prompt", what SPoT transfer initialises from), so a LoRA entry's
task embedding is compared with other LoRA entries only. `pairwise` takes the
method of the entries it is given and refuses a list that mixes methods.
"""

from __future__ import annotations

from typing import Iterable, Optional, Union

import numpy as np

from spot.library import entry as entry_lib
from spot.library import index as index_lib
from spot.library import similarity
from spot.library.errors import LibraryError, MethodMismatchError, ModelMismatchError
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


def _methods(index: index_lib.Index, model: str) -> list[str]:
  """The methods of the rankable entries of `model`, sorted."""
  return sorted({index.rows[n].method for n in index.models[model].names})


def check_method(index: index_lib.Index, model: str, method: str) -> str:
  """`method` if `model` has rankable entries of it, else a MethodMismatchError."""
  methods = _methods(index, model)
  if method not in methods:
    raise MethodMismatchError(
        f"model {model!r} has no rankable entries of method {method!r} (it has "
        f"{', '.join(methods) or 'none'}); entries of different methods are never compared: "
        "pass the method to rank with --method (method=...).")
  return method


def _query_vector(library: PromptLibrary, index: index_lib.Index, query: Query,
                  model: Optional[str], method: Optional[str], metric: str
                  ) -> tuple[str, str, np.ndarray, tuple[str, ...]]:
  """(model, method, summary vector [D], names to exclude) of a query."""
  if isinstance(query, str):
    row = index.rows.get(query)
    if row is None or row.problem:
      library.entry(query)  # raises the not-found or corrupt error with its fix
      raise LibraryError(f"entry {query!r} changed while being queried; try again.")
    if model is not None and model != row.model:
      raise ModelMismatchError(f"entry {query!r} belongs to model {row.model!r}, not "
                               f"{model!r}; entries of different base models are never "
                               "compared.")
    if method is not None and method != row.method:
      raise MethodMismatchError(f"entry {query!r} is of method {row.method!r}, not "
                                f"{method!r}; entries of different methods are never "
                                "compared.")
    mi = index.models.get(row.model)
    if mi is None or query not in mi.names:
      raise LibraryError(f"entry {query!r} ({row.method}) has no task embedding to query "
                         "with; add it again with --embedding KEY=FILE.npy.")
    return row.model, row.method, mi.vectors[metric][mi.position(query)], (query,)
  model = resolve_model(library, index, model)
  method = check_method(index, model, method or entry_lib.PROMPT_METHOD)
  dim = index.models[model].dim
  array = entry_lib.as_prompt_array(query, "the query embedding")
  if array.shape[1] != dim:
    raise ModelMismatchError(
        f"the query embedding has embed dim {array.shape[1]} but model {model!r} has "
        f"{dim}: it comes from another base model. Compute it with {model!r} or pass "
        "that model's name with --model.")
  return model, method, similarity.summary_vector(array, metric).astype(np.float32), ()


def rank(library: PromptLibrary, query: Query, *, model: Optional[str] = None,
         metric: str = "avg_tokens", top_k: Optional[int] = None,
         exclude: Iterable[str] = (), prompt_length: Optional[int] = None,
         method: Optional[str] = None) -> list[tuple[str, float]]:
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
    method: rank entries of this method only ("prompt", "lora", ...); default
      the query entry's method, or "prompt" for an embedding query. A query
      entry of another method is refused (MethodMismatchError).

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
    ranked = _rank_once(library, query, model, method, metric, top_k, exclude, prompt_length)
    if not library.recheck([name for name, _ in ranked]):
      return ranked
  return _rank_once(library, query, model, method, metric, top_k, exclude, prompt_length)


def _rank_once(library: PromptLibrary, query: Query, model: Optional[str],
               method: Optional[str], metric: str, top_k: Optional[int],
               exclude: Iterable[str], prompt_length: Optional[int]
               ) -> list[tuple[str, float]]:
  index = library.index()
  model, method, q, skip = _query_vector(library, index, query, model, method, metric)
  mi = index.models[model]
  scores = mi.vectors[metric] @ q
  keep = np.array([index.rows[n].method == method for n in mi.names], dtype=bool)
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
             metric: str = "avg_tokens", names: Optional[Iterable[str]] = None,
             method: Optional[str] = None) -> tuple[list[str], np.ndarray]:
  """(names, [N, N] similarity matrix) of the entries of one model and one method.

  `method` defaults to that of `names` (which must agree), else "prompt".
  """
  similarity.check_metric(metric)
  index = library.index()
  model = resolve_model(library, index, model)
  mi = index.models[model]
  if names is not None:
    names = list(dict.fromkeys(names))
    given = sorted({index.rows[n].method for n in names if n in index.rows})
    if len(given) > 1 or (method is not None and given and given != [method]):
      raise MethodMismatchError(
          f"entries {', '.join(map(repr, names))} are of methods {', '.join(given)}"
          f"{f' (asked: {method})' if method else ''}; entries of different methods are "
          "never compared: pick entries of one method.")
    method = method or (given[0] if given else None)
  method = check_method(index, model, method or entry_lib.PROMPT_METHOD)
  chosen = ([n for n in mi.names if index.rows[n].method == method] if names is None
            else names)
  rows = []
  for name in chosen:
    try:
      rows.append(mi.position(name))
    except KeyError:
      library.entry(name)  # not found or corrupt: raises with the fix
      raise ModelMismatchError(f"entry {name!r} is not an entry of model {model!r}.") from None
  v = mi.vectors[metric][rows].astype(np.float64)
  return chosen, v @ v.T
