"""Progress lines and TensorBoard summaries for long jobs (process 0 only)."""

from __future__ import annotations

import math
import sys
import time
from typing import Mapping, Optional, TextIO

import jax


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_metrics(values: Mapping[str, Optional[float]]) -> str:
  """"a 0.5, b nan" sorted by name; None (a non-finite metric recorded as null) shows as nan."""
  return ", ".join(f"{k} {float('nan') if v is None else v:.4g}"
                   for k, v in sorted(values.items()))


class Progress:
  """Prints `step N/T | loss x | lr y | r steps/s | ETA t` every `every` steps."""

  def __init__(self, total_steps: int, start_step: int = 0, every: int = 10,
               stream: Optional[TextIO] = None, prefix: str = "train"):
    self.total, self.start, self.every = total_steps, start_step, max(1, every)
    self.stream = stream or sys.stdout
    self.prefix = prefix
    self._t0 = time.perf_counter()
    self._last_t, self._last_step = self._t0, start_step
    self.steps_per_sec = 0.0

  def should_log(self, step: int) -> bool:
    return step % self.every == 0 or step == self.total

  def log(self, step: int, scalars: Mapping[str, float]) -> str:
    now = time.perf_counter()
    done = step - self._last_step
    if done > 0:
      self.steps_per_sec = done / max(now - self._last_t, 1e-9)
    self._last_t, self._last_step = now, step
    eta = (self.total - step) / self.steps_per_sec if self.steps_per_sec else float("inf")
    parts = [f"{self.prefix} step {step}/{self.total}"]
    for k, v in scalars.items():
      parts.append(f"{k} {v:.4g}")
    parts += [f"{self.steps_per_sec:.2f} steps/s", f"ETA {format_duration(eta)}"]
    line = " | ".join(parts)
    if jax.process_index() == 0:
      print(line, file=self.stream, flush=True)
    return line

  @property
  def elapsed(self) -> float:
    return time.perf_counter() - self._t0


class Summaries:
  """TensorBoard scalars under `model_dir/<name>` (written by process 0 only)."""

  def __init__(self, log_dir: str):
    self._writer = None
    if jax.process_index() == 0:
      from flax.metrics import tensorboard
      self._writer = tensorboard.SummaryWriter(log_dir)

  def scalars(self, step: int, values: Mapping[str, Optional[float]]) -> None:
    """Writes the finite values; None and NaN/inf are skipped (a gap, not a spike)."""
    if self._writer is None:
      return
    for k, v in values.items():
      try:
        value = float(v)
      except (TypeError, ValueError):
        continue
      if math.isfinite(value):
        self._writer.scalar(k, value, step)
    self._writer.flush()

  def text(self, step: int, tag: str, value: str) -> None:
    if self._writer is not None:
      self._writer.text(tag, value, step)
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
