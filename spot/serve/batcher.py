"""`Batcher`: one worker thread owns the device and runs batches of queued examples.

The event loop submits examples (`Item`s) and awaits asyncio futures; the worker
groups compatible examples (same batch key: the computation, prompt length,
input-length bucket and decoding), waits at most `max_wait_s` for a group to
fill to `max_batch`, runs it, and resolves each example's future on its own
loop with `loop.call_soon_threadsafe`. The queue is bounded: `submit` raises
`QueueFullError` rather than letting latency grow without limit.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
from typing import Any, Callable, Hashable, Optional, Sequence


class QueueFullError(RuntimeError):
  """The batcher holds `max_queue` examples already; retry after `retry_after_s`."""

  def __init__(self, message: str, retry_after_s: int):
    super().__init__(message)
    self.retry_after_s = retry_after_s


@dataclasses.dataclass
class Item:
  """One queued example: its batch key, payload, future and timestamps (perf_counter)."""

  key: Hashable
  payload: Any
  future: asyncio.Future
  loop: asyncio.AbstractEventLoop
  enqueued: float = 0.0
  started: float = 0.0
  finished: float = 0.0
  batch_size: int = 0


def _resolve(item: Item, value: Any, error: Optional[BaseException]) -> None:
  """Sets the future's result (on its loop's thread) unless the request went away."""

  def done() -> None:
    if item.future.done():
      return
    if error is not None:
      item.future.set_exception(error)
    else:
      item.future.set_result(value)

  try:
    item.loop.call_soon_threadsafe(done)
  except RuntimeError:  # the loop is closed: nobody is waiting
    pass


# run_batch(key, payloads) -> one result per payload, in order.
RunBatch = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


class Batcher:
  """Groups queued examples by key into batches of at most `max_batch`.

  Args:
    run_batch: computes a batch; runs only on the worker thread.
    max_batch: the most examples per batch.
    max_wait_s: the longest an example waits for its batch to fill.
    max_queue: the most examples queued or running at once.
    on_batch: called after each batch with (key, size, seconds) (metrics).
  """

  def __init__(self, run_batch: RunBatch, *, max_batch: int, max_wait_s: float,
               max_queue: int, on_batch: Optional[Callable[[Hashable, int, float], None]] = None):
    if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
      raise ValueError(f"Batcher needs max_batch >= 1, max_queue >= 1 and max_wait_s >= 0; got "
                       f"{max_batch}, {max_queue}, {max_wait_s}.")
    self._run_batch = run_batch
    self.max_batch = int(max_batch)
    self.max_wait_s = float(max_wait_s)
    self.max_queue = int(max_queue)
    self._on_batch = on_batch
    self._groups: collections.OrderedDict[Hashable, collections.deque[Item]] = (
        collections.OrderedDict())
    self._queued = 0
    self._cv = threading.Condition()
    self._stop = False
    self._thread: Optional[threading.Thread] = None
    self._batch_seconds = 0.05  # running mean, for Retry-After

  @property
  def depth(self) -> int:
    """Examples waiting for a batch (not counting the one running)."""
    return self._queued

  def start(self) -> None:
    if self._thread is None:
      self._stop = False
      self._thread = threading.Thread(target=self._work, name="spot-serve-worker", daemon=True)
      self._thread.start()

  def stop(self, timeout: float = 30.0) -> None:
    """Stops the worker after its current batch; queued examples get a RuntimeError."""
    with self._cv:
      self._stop = True
      self._cv.notify_all()
    if self._thread is not None:
      self._thread.join(timeout)
      self._thread = None
    with self._cv:
      left = [item for group in self._groups.values() for item in group]
      self._groups.clear()
      self._queued = 0
    for item in left:
      _resolve(item, None, RuntimeError("the server is shutting down; retry on another one."))

  def submit(self, key_payloads: Sequence[tuple[Hashable, Any]],
             loop: asyncio.AbstractEventLoop) -> list[asyncio.Future]:
    """Queues examples (all or none) and returns their futures, in order.

    Raises:
      QueueFullError: the queue cannot take them all.
    """
    now = time.perf_counter()
    items = [Item(key, payload, loop.create_future(), loop, enqueued=now)
             for key, payload in key_payloads]
    with self._cv:
      if self._stop or self._thread is None:
        raise RuntimeError("the batcher is not running; start() it first.")
      if self._queued + len(items) > self.max_queue:
        batches = max(1, (self._queued + len(items)) // self.max_batch)
        retry = max(1, int(round(batches * self._batch_seconds + self.max_wait_s + 0.5)))
        raise QueueFullError(f"the queue holds {self._queued} of at most {self.max_queue} "
                             f"examples and cannot take {len(items)} more", retry)
      for item in items:
        self._groups.setdefault(item.key, collections.deque()).append(item)
      self._queued += len(items)
      self._cv.notify()
    return [item.future for item in items]

  def _ready(self, now: float) -> Optional[Hashable]:
    """The key to run now (a full group, else one whose oldest example waited long enough)."""
    full = [k for k, g in self._groups.items() if len(g) >= self.max_batch]
    if full:
      return min(full, key=lambda k: self._groups[k][0].enqueued)
    oldest = min(self._groups, key=lambda k: self._groups[k][0].enqueued)
    if now - self._groups[oldest][0].enqueued >= self.max_wait_s:
      return oldest
    return None

  def _next(self) -> Optional[list[Item]]:
    """Blocks until a batch is due; None when stopping."""
    with self._cv:
      while True:
        if self._stop:
          return None
        if not self._groups:
          self._cv.wait()
          continue
        now = time.perf_counter()
        key = self._ready(now)
        if key is None:
          oldest = min(g[0].enqueued for g in self._groups.values())
          self._cv.wait(max(0.0, oldest + self.max_wait_s - now))
          continue
        group = self._groups[key]
        batch = [group.popleft() for _ in range(min(self.max_batch, len(group)))]
        if not group:
          del self._groups[key]
        self._queued -= len(batch)
        return batch

  def _work(self) -> None:
    while True:
      batch = self._next()
      if batch is None:
        return
      start = time.perf_counter()
      for item in batch:
        item.started, item.batch_size = start, len(batch)
      try:
        results, error = list(self._run_batch(batch[0].key, [i.payload for i in batch])), None
        if len(results) != len(batch):
          raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)}.")
      except Exception as e:  # pylint: disable=broad-except
        results, error = [None] * len(batch), e  # the batch fails; the server goes on
      end = time.perf_counter()
      self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (end - start)
      for item, result in zip(batch, results):
        item.finished = end
        _resolve(item, (result, item), error)
      if self._on_batch is not None:
        self._on_batch(batch[0].key, len(batch), end - start)
