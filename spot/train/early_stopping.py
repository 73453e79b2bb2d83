"""Best-evaluation tracking and early stopping, as one small object.

`EarlyStopping` keeps the eval history, the best (step, value) of one metric
and the evaluations since it improved. Its `to_meta()` goes into every
checkpoint's meta and `from_meta` restores it, so a resumed run keeps best/,
stops at the same step and writes the same final metrics as one never stopped.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional

logger = logging.getLogger(__name__)

Results = Mapping[str, Optional[float]]


def finite_results(results: Mapping[str, Any], step: int) -> dict[str, Optional[float]]:
  """{"task/metric": value} with non-finite values as None (logged as a warning).

  STS-B's Pearson/Spearman are NaN while early predictions are constant;
  T5X logs such a metric and carries on, and so does spot: None is JSON null.
  """
  out: dict[str, Optional[float]] = {}
  for k, v in results.items():
    value = None if v is None else float(v)
    if value is not None and not math.isfinite(value):
      logger.warning("Eval metric %s is %s at step %d; recorded as null.", k, value, step)
      value = None
    out[k] = value
  return out


def improves(value: Optional[float], best: Optional[float], mode: str) -> bool:
  """Whether `value` beats `best` under `mode` ("max" or "min"); None never does."""
  if value is None or not math.isfinite(value):
    return False
  if best is None:
    return True
  return value > best if mode == "max" else value < best


class EarlyStopping:
  """The eval history, the best step of `best_metric` and the patience left.

  Attributes:
    history: [(step, {"task/metric": value or None})], oldest first.
    best: (step, value) of the best finite `best_metric` so far, or None.
    bad_evals: evaluations since the best without improvement.
  """

  def __init__(self, best_metric: Optional[str] = None, mode: str = "max",
               patience: Optional[int] = None):
    if mode not in ("max", "min"):
      raise ValueError(f"EvalConfig.mode={mode!r}: use 'max' or 'min' (BEST_MODE).")
    self.best_metric, self.mode, self.patience = best_metric, mode, patience
    self.history: list[tuple[int, dict[str, Optional[float]]]] = []
    self.best: Optional[tuple[int, float]] = None
    self.bad_evals = 0

  @classmethod
  def from_config(cls, eval_cfg: Any) -> "EarlyStopping":
    """From an `EvalConfig` (None: nothing tracked, never stops)."""
    if eval_cfg is None:
      return cls()
    return cls(eval_cfg.best_metric, eval_cfg.mode, eval_cfg.early_stopping_patience)

  def update(self, step: int, results: Results) -> bool:
    """Records the evaluation at `step`; True when it is the new best."""
    self.history.append((step, dict(results)))
    if not self.best_metric:
      return False
    from spot.train import evaluation  # pylint: disable=g-import-not-at-top  (SeqIO)
    value = evaluation.pick_metric(results, self.best_metric)
    if improves(value, self.best[1] if self.best else None, self.mode):
      self.best, self.bad_evals = (step, value), 0
      return True
    self.bad_evals += 1
    return False

  @property
  def should_stop(self) -> bool:
    """Whether `patience` evaluations in a row did not improve `best_metric`."""
    return bool(self.best_metric and self.patience and self.bad_evals >= self.patience)

  @property
  def best_step(self) -> Optional[int]:
    return self.best[0] if self.best else None

  def evaluated(self, step: int) -> bool:
    return any(s == step for s, _ in self.history)

  def final(self) -> tuple[int, dict[str, Optional[float]]]:
    """(step, results) of the best evaluation, else of the last one."""
    if self.best is not None:
      return next((s, r) for s, r in self.history if s == self.best[0])
    return self.history[-1]

  def to_meta(self) -> dict:
    return {"eval_history": [[s, dict(r)] for s, r in self.history],
            "best": list(self.best) if self.best else None, "bad_evals": self.bad_evals}

  def restore_meta(self, meta: Mapping[str, Any]) -> "EarlyStopping":
    """Takes history, best and bad-eval count from a checkpoint's meta; returns self."""
    best = meta.get("best")
    self.history = [(int(s), dict(r)) for s, r in meta.get("eval_history") or ()]
    self.best = (int(best[0]), float(best[1])) if best else None
    self.bad_evals = int(meta.get("bad_evals") or 0)
    return self
