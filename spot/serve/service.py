"""`Service`: what the HTTP endpoints do, independent of the HTTP framework.

A request is checked (`spot.serve.requests`), its prompt taken from the cache,
its texts tokenized and cut to the length buckets, and its examples queued on
the `Batcher`, keyed so that examples of any prompt with the same prompt
length, input bucket and decoding share a batch (`mix_prompts=False` keys by
prompt too: one prompt per batch, as adapter-swapping servers do). The
worker runs batches on the `Engine`; the endpoint awaits its futures.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Hashable, Sequence

from spot.serve import requests as req_lib
from spot.serve.batcher import Batcher, Item, QueueFullError
from spot.serve.cache import (CachedPrompt, PromptCache, UnknownPromptError,
                              UnservableMethodError, WrongModelError)
from spot.serve.engine import Engine, bucket
from spot.serve.metrics import Metrics

RequestError = req_lib.RequestError


class Service:
  """The model server's logic: an engine, a prompt cache, a batcher and metrics.

  Args:
    engine: the frozen base model.
    cache: the prompt cache of the server's library.
    max_wait_ms: the longest an example waits for its batch to fill.
    max_queue: the most queued examples; more gives 503.
    mix_prompts: let examples of different prompts share a batch.

  Batches hold at most `engine.shapes.batch_sizes[-1]` examples (--max-batch).
  """

  def __init__(self, engine: Engine, cache: PromptCache, *, max_wait_ms: float = 5.0,
               max_queue: int = 1024, mix_prompts: bool = True):
    self.engine = engine
    self.cache = cache
    self.mix_prompts = mix_prompts
    self.max_items = max(1, min(max_queue, 256))
    self.batcher = Batcher(self._run_batch, max_batch=engine.shapes.batch_sizes[-1],
                           max_wait_s=max_wait_ms / 1000.0, max_queue=max_queue,
                           on_batch=self._on_batch)
    self.metrics = Metrics(lambda: self.batcher.depth, lambda: len(self.cache),
                           lambda: self.cache.size_bytes)
    self.started = time.time()

  def start(self) -> None:
    self.batcher.start()

  def stop(self) -> None:
    self.batcher.stop()

  # -- the worker's side ------------------------------------------------------

  def _run_batch(self, key: Hashable, payloads: Sequence[Any]) -> list:
    prompts = [p[0].array for p in payloads]
    tokens = [p[1] for p in payloads]
    self.metrics.batch_prompts.observe(len({p[0].name for p in payloads}))
    if key[0] == "generate":
      out, scores = self.engine.generate(prompts, tokens, key[3])
      return list(zip(out, scores))
    return list(self.engine.score(prompts, tokens, [p[2] for p in payloads]))

  def _on_batch(self, key: Hashable, size: int, seconds: float) -> None:
    self.metrics.batch_size.observe(size)
    self.metrics.batch_seconds.observe(seconds)
    self.metrics.examples.labels(key[0]).inc(size)

  # -- the event loop's side ----------------------------------------------------

  async def prompt(self, name: str) -> CachedPrompt:
    """The cached prompt `name` (read off the event loop on a miss): 404 / 409 otherwise."""
    try:
      return await asyncio.to_thread(self.cache.get, name)
    except UnknownPromptError as e:
      raise RequestError(404, "unknown_prompt", "prompt", str(e), close_names=e.close) from None
    except UnservableMethodError as e:
      raise RequestError(409, "unservable_method", "prompt", str(e)) from None
    except WrongModelError as e:
      raise RequestError(409, "wrong_base_model", "prompt", str(e)) from None

  def _tokens(self, texts: Sequence[str], field: str, limit: int, truncate: bool
              ) -> tuple[list[list[int]], list[bool]]:
    """Token ids (with EOS) of each text, cut to `limit` when `truncate`, else 413."""
    out, cut = [], []
    for i, text in enumerate(texts):
      ids = self.engine.tokenize(text)
      cut.append(len(ids) > limit)
      if len(ids) > limit:
        if not truncate:
          raise RequestError(
              413, "too_long", f"{field}[{i}]",
              f"{field}[{i}] is {len(ids)} tokens (with EOS) but this server takes at most "
              f"{limit}; shorten it, or send \"truncate\": true to keep its first {limit - 1} "
              "tokens.", limit=limit, tokens=len(ids))
        ids = ids[:limit - 1] + [ids[-1]]
      out.append(ids)
    return out, cut

  async def _run(self, keyed: list[tuple[Hashable, Any]]) -> list[tuple[Any, Item]]:
    loop = asyncio.get_running_loop()
    try:
      futures = self.batcher.submit(keyed, loop)
    except QueueFullError as e:
      err = RequestError(503, "queue_full", None, f"{e}; retry after {e.retry_after_s}s (or "
                         "start the server with a larger --max-queue).",
                         retry_after_s=e.retry_after_s)
      err.headers["Retry-After"] = str(e.retry_after_s)
      raise err from None
    return list(await asyncio.gather(*futures))

  def _key(self, prompt: CachedPrompt, *parts: Any) -> tuple:
    return (*parts[:1], prompt.length, *parts[1:], None if self.mix_prompts else prompt.name)

  async def generate(self, body: dict) -> dict:
    """`POST /v1/generate`: outputs (text, score, token counts) and timings."""
    start = time.perf_counter()
    shapes = self.engine.shapes
    request = req_lib.parse_generate(body, self.engine.default_decoding,
                                     self.engine.max_decode_length, self.max_items)
    prompt = await self.prompt(request.prompt)
    tokens, cut = self._tokens(request.inputs, "inputs", shapes.max_input_length,
                               request.truncate)
    keyed = [(self._key(prompt, "generate", bucket(len(t), shapes.input_lengths),
                        request.decoding), (prompt, t)) for t in tokens]
    results = await self._run(keyed)
    outputs = []
    for (value, item), ids, was_cut in zip(results, tokens, cut):
      out, score = value
      outputs.append({"text": self.engine.detokenize(out), "score": float(score),
                      "input_tokens": len(ids), "truncated": was_cut,
                      "queue_ms": _ms(item.started - item.enqueued),
                      "compute_ms": _ms(item.finished - item.started),
                      "batch_size": item.batch_size})
    return {"prompt": prompt.name, "model": self.engine.model_name,
            "outputs": outputs[0] if request.single else outputs,
            "timings": _timings(start, results)}

  async def score(self, body: dict) -> dict:
    """`POST /v1/score`: per-candidate log likelihoods and the best candidate per input."""
    start = time.perf_counter()
    shapes = self.engine.shapes
    request = req_lib.parse_score(body, self.max_items)
    prompt = await self.prompt(request.prompt)
    tokens, cut = self._tokens(request.inputs, "inputs", shapes.max_input_length,
                               request.truncate)
    targets, _ = self._tokens(request.targets, "targets", shapes.max_target_length,
                              request.truncate)
    t_bucket = bucket(max(len(t) for t in targets), shapes.target_lengths)
    keyed = [(self._key(prompt, "score", bucket(len(t), shapes.input_lengths), t_bucket),
              (prompt, t, target)) for t in tokens for target in targets]
    results = await self._run(keyed)
    n = len(targets)
    outputs = []
    for i, (ids, was_cut) in enumerate(zip(tokens, cut)):
      scores = [float(value) for value, _ in results[i * n:(i + 1) * n]]
      best = max(range(n), key=lambda j: scores[j])
      outputs.append({"scores": scores, "best": best, "label": request.targets[best],
                      "input_tokens": len(ids), "truncated": was_cut})
    return {"prompt": prompt.name, "model": self.engine.model_name,
            "targets": list(request.targets),
            "outputs": outputs[0] if request.single else outputs,
            "timings": _timings(start, results)}

  async def prompts(self) -> dict:
    """`GET /v1/prompts`: the library's prompt entries servable on this base model."""
    entries = await asyncio.to_thread(self.cache.servable)
    return {"model": self.engine.model_name, "prompts": [
        {"name": e.name, "model": e.model.name, "task": e.task,
         "prompt_shape": list(e.prompt_shape)} for e in entries]}

  def health(self) -> dict:
    return {"status": "ok", "model": self.engine.model_name,
            "queue_depth": self.batcher.depth, "cached_prompts": len(self.cache),
            "uptime_s": round(time.time() - self.started, 3)}


def _ms(seconds: float) -> float:
  return round(max(0.0, seconds) * 1000.0, 3)


def _timings(start: float, results: Sequence[tuple[Any, Item]]) -> dict:
  """Request timings: total, the longest queue wait and device time of its examples."""
  items = [item for _, item in results]
  return {"total_ms": _ms(time.perf_counter() - start),
          "queue_ms": max(_ms(i.started - i.enqueued) for i in items),
          "compute_ms": max(_ms(i.finished - i.started) for i in items),
          "batches": len({i.started for i in items})}
