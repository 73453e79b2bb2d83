"""A study's grid in gin, read at the command line's edge into a plain `StudySpec`.

    spot study run --dir DIR --gin_file=spot/gin/study/glue_small.gin \\
        --gin.DATA_DIR="'../shared/data'" --gin.study_config.seeds=[0,1,2]

A study gin file binds `study_config` (below): the grid (sources, targets,
seeds, step budgets, embedding step, top-k, weighted-k, mixture-k, ...) and
the `spot train` flags of every run as gin files, macros and bindings. Its
macros (`%DATA_DIR`, `%INITIAL_CHECKPOINT_PATH`, ...) flow into the runs'
flags through `train_macros`, so one `--gin.DATA_DIR=...` moves the whole
study. `values_from_gin` parses the files, calls `study_config` and clears gin
again; library code only ever sees the StudySpec built from its result.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import gin

from spot import errors


@gin.configurable
def study_config(sources: Sequence[str] = (), targets: Sequence[str] = (),
                 seeds: Sequence[int] = (0,), source_steps: int = 1000,
                 target_steps: int = 1000, embedding_step: int = 100,
                 top_ks: Optional[Sequence[int]] = None, weighted_k: int = 3, mixture_k: int = 0,
                 metric: str = "avg_tokens", score_metric: Optional[str] = None,
                 library: Optional[str] = None, library_sources: Sequence[str] = (),
                 train_gin_files: Sequence[str] = (),
                 train_macros: Optional[Mapping[str, Any]] = None,
                 train_bindings: Sequence[str] = ()) -> dict[str, Any]:
  """The StudySpec fields a study gin file binds (see StudySpec for each).

  Args:
    train_gin_files: `--gin_file` of every run (model and run files).
    train_macros: NAME -> value, passed as `--gin.NAME=repr(value)` (values may
      be `%MACROS` of the study file).
    train_bindings: further `spot train` bindings `NAME = VALUE`.

  Returns:
    StudySpec keyword arguments; `train_flags` are the files, then the macros,
    then the bindings.
  """
  flags = [f"--gin_file={f}" for f in train_gin_files]
  flags += [f"--gin.{k}={v!r}" for k, v in (train_macros or {}).items()]
  flags += [f"--gin_bindings={b}" for b in train_bindings]
  out = dict(sources=sources, targets=targets, seeds=seeds, source_steps=source_steps,
             target_steps=target_steps, embedding_step=embedding_step, weighted_k=weighted_k,
             mixture_k=mixture_k, metric=metric, score_metric=score_metric, library=library,
             library_sources=library_sources, train_flags=flags)
  if top_ks is not None:
    out["top_ks"] = top_ks
  return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in out.items()}


def values_from_gin(files: Sequence[str], bindings: Sequence[str]) -> dict[str, Any]:
  """Parses study gin files and bindings (spot's search paths), returns `study_config()`."""
  from spot.train import cli  # pylint: disable=g-import-not-at-top
  if not files:
    raise errors.UsageError("--gin.NAME=VALUE before -- binds the study's gin config; add its "
                            "file, e.g. --gin_file=spot/gin/study/glue_small.gin (spot train "
                            "flags of every run go after --).")
  try:
    cli.parse_gin(list(files), list(bindings),
                  cli._search_paths(""))  # pylint: disable=protected-access
    return study_config()
  finally:
    gin.clear_config()
