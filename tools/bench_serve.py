"""Benchmark: `spot serve` with mixed-prompt batches vs one prompt per batch, over loopback.

One frozen base (a seeded random T5 1.1 of `--model`, default tiny) and a
library of 8 prompts. Two servers run on 127.0.0.1 in this process, sharing the
base and its compiled shapes: (a) mixed batching (examples of any prompt share
a batch: each row carries its prompt), and (b) one prompt per batch (what
adapter-swapping servers do: a batch holds one task). For 1, 8 and 64
concurrent clients, each server answers `--requests` requests (a bounded
number), every request one input for a prompt drawn uniformly from the 8.
One line per measurement ends in `<value> req/s, p50 <ms> ms, p99 <ms> ms`;
the ratios (a)/(b) are the last lines.

  python tools/bench_serve.py --vocabulary ../shared/data/t5_vocab/spiece.model

Target: at 64 clients (a) >= 3x the throughput of (b), with p99 no worse. The
clients run in the same process as the servers (one event loop each), so both
sides pay the same client overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import random
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

WORDS = ("the", "cat", "sat", "on", "a", "mat", "film", "was", "witty", "and", "bright",
         "sentence", "premise", "hypothesis", "good", "bad")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--vocabulary", default=str(pathlib.Path(__file__).resolve().parents[2] /
                                             "shared" / "data" / "t5_vocab" / "spiece.model"))
  p.add_argument("--model", default="t5_1_1_tiny", help="published config of the random base")
  p.add_argument("--requests", type=int, default=512, help="requests per (server, clients)")
  p.add_argument("--clients", default="1,8,64", help="concurrency levels")
  p.add_argument("--prompts", type=int, default=8)
  p.add_argument("--prompt-length", type=int, default=20)
  p.add_argument("--max-batch", type=int, default=64)
  p.add_argument("--max-wait-ms", type=float, default=5.0)
  p.add_argument("--max-input-length", type=int, default=32)
  p.add_argument("--max-length", type=int, default=8, help="decoded tokens")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def make_library(path: pathlib.Path, model: str, dim: int, n: int, length: int, seed: int):
  from spot.library import PromptLibrary
  lib = PromptLibrary(path)
  rng = np.random.default_rng(seed)
  for i in range(n):
    lib.add(f"task_{i}", rng.uniform(-0.5, 0.5, (length, dim)).astype(np.float32), model=model)
  return lib


def texts(n: int, seed: int) -> list[str]:
  rng = random.Random(seed)
  return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(n)]


async def load(url: str, clients: int, jobs: list[tuple[str, str]]) -> tuple[float, list[float]]:
  """Runs `jobs` (prompt, text) with `clients` concurrent clients: (seconds, latencies)."""
  import httpx
  queue: asyncio.Queue = asyncio.Queue()
  for job in jobs:
    queue.put_nowait(job)
  latencies: list[float] = []
  limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

  async def client(c: "httpx.AsyncClient") -> None:
    while not queue.empty():
      prompt, text = queue.get_nowait()
      start = time.perf_counter()
      r = await c.post("/v1/generate", json={"prompt": prompt, "inputs": text,
                                                "truncate": True})
      if r.status_code != 200:
        raise RuntimeError(f"{r.status_code}: {r.text}")
      latencies.append(time.perf_counter() - start)

  async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
    start = time.perf_counter()
    await asyncio.gather(*(client(c) for _ in range(clients)))
    return time.perf_counter() - start, latencies


def main(argv=None) -> int:
  args = parse_args(argv)
  from spot.serve import PromptCache, Service, running
  from spot.serve import engine as engine_lib
  shapes = engine_lib.Shapes.create(args.max_batch, args.max_input_length, 8)
  engine = engine_lib.load_engine("random", args.vocabulary, shapes=shapes,
                                  model_name=args.model, seed=args.seed,
                                  default_decoding=engine_lib.Decoding(max_length=args.max_length))
  tmp = tempfile.TemporaryDirectory()
  lib = make_library(pathlib.Path(tmp.name) / "library", args.model, engine.config.emb_dim,
                     args.prompts, args.prompt_length, args.seed)
  start = time.perf_counter()
  count = engine.warm_up([args.prompt_length], score=False)
  print(f"compiled {count} shapes in {time.perf_counter() - start:.1f}s "
        f"(batch sizes {shapes.batch_sizes}, input lengths {shapes.input_lengths})", flush=True)
  names = lib.names()
  rng = random.Random(args.seed)
  inputs = texts(args.requests, args.seed)
  results: dict[tuple[str, int], tuple[float, float, float]] = {}
  for mode, mix in (("mixed", True), ("one-prompt-per-batch", False)):
    cache = PromptCache(lib, engine.model_name, engine.config.emb_dim)
    service = Service(engine, cache, max_wait_ms=args.max_wait_ms, max_queue=100_000,
                      mix_prompts=mix)
    with running(service) as url:
      for clients in (int(c) for c in args.clients.split(",")):
        jobs = [(rng.choice(names), t) for t in inputs]
        asyncio.run(load(url, clients, jobs[:clients]))  # connections and prompts in cache
        seconds, lat = asyncio.run(load(url, clients, jobs))
        p50, p99 = (float(np.percentile(lat, q)) * 1000 for q in (50, 99))
        results[(mode, clients)] = (len(jobs) / seconds, p50, p99)
        print(f"serve {args.model} {mode:<21} clients={clients:<3} requests={len(jobs)}: "
              f"{len(jobs) / seconds:.1f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
  for clients in (int(c) for c in args.clients.split(",")):
    a, b = results[("mixed", clients)], results[("one-prompt-per-batch", clients)]
    print(f"ratio mixed / one-prompt-per-batch clients={clients}: throughput {a[0] / b[0]:.2f}x, "
          f"p99 {a[2] / b[2]:.2f}x", flush=True)
  tmp.cleanup()
  return 0


if __name__ == "__main__":
  sys.exit(main())
