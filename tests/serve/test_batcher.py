"""`Batcher` without a model: grouping by key, batch bounds, waiting, a bounded queue."""

from __future__ import annotations

import asyncio
import threading

import pytest

from spot.serve.batcher import Batcher, QueueFullError


def run(coro):
  return asyncio.run(coro)


def test_groups_by_key_and_returns_each_result_to_its_request():
  seen = []

  def run_batch(key, payloads):
    seen.append((key, list(payloads)))
    return [f"{key}:{p * 10}" for p in payloads]

  batcher = Batcher(run_batch, max_batch=3, max_wait_s=0.05, max_queue=100)
  batcher.start()

  async def main():
    loop = asyncio.get_running_loop()
    futures = batcher.submit([("a", 1), ("b", 2), ("a", 3), ("a", 4), ("a", 5)], loop)
    return [r for r, _ in await asyncio.gather(*futures)]

  try:
    assert run(main()) == ["a:10", "b:20", "a:30", "a:40", "a:50"]
  finally:
    batcher.stop()
  assert all(len(set(p)) == len(p) and len(p) <= 3 for _, p in seen)
  assert sorted(k for k, _ in seen) == ["a", "a", "b"]
  assert [1, 3, 4] in [p for _, p in seen]  # the first full batch, in arrival order


def test_waits_at_most_max_wait_for_a_batch_to_fill():
  batcher = Batcher(lambda k, p: list(p), max_batch=64, max_wait_s=0.05, max_queue=100)
  batcher.start()

  async def main():
    (_, item), = await asyncio.gather(*batcher.submit([("k", 1)], asyncio.get_running_loop()))
    return item

  try:
    item = run(main())
  finally:
    batcher.stop()
  assert 0.04 <= item.started - item.enqueued < 2.0
  assert item.batch_size == 1


def test_full_queue_refuses_all_or_nothing():
  release = threading.Event()

  def run_batch(key, payloads):
    release.wait(10)
    return list(payloads)

  batcher = Batcher(run_batch, max_batch=2, max_wait_s=0.0, max_queue=3)
  batcher.start()

  async def main():
    loop = asyncio.get_running_loop()
    first = batcher.submit([("k", 1), ("k", 2)], loop)  # taken by the worker, blocked
    while batcher.depth:
      await asyncio.sleep(0.005)
    queued = batcher.submit([("k", 3), ("k", 4), ("k", 5)], loop)
    with pytest.raises(QueueFullError) as e:
      batcher.submit([("k", 6)], loop)
    assert e.value.retry_after_s >= 1
    assert batcher.depth == 3
    release.set()
    return [r for r, _ in await asyncio.gather(*first, *queued)]

  try:
    assert run(main()) == [1, 2, 3, 4, 5]
  finally:
    release.set()
    batcher.stop()


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on():
  def run_batch(key, payloads):
    if key == "bad":
      raise ValueError("boom")
    return list(payloads)

  batcher = Batcher(run_batch, max_batch=4, max_wait_s=0.0, max_queue=10)
  batcher.start()

  async def main():
    loop = asyncio.get_running_loop()
    bad = batcher.submit([("bad", 1)], loop)[0]
    with pytest.raises(ValueError, match="boom"):
      await bad
    (value, _), = await asyncio.gather(*batcher.submit([("good", 7)], loop))
    return value

  try:
    assert run(main()) == 7
  finally:
    batcher.stop()
