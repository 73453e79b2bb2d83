"""Benchmark: prompt-library queries over N entries (default 10,000).

Builds a library of N random entries (prompt and one task embedding each,
added concurrently from a thread pool through the ordinary `add`), then times
`spot.library.rank`:

  build   the first query, which builds the index from the entries;
  cold    a fresh `PromptLibrary` (index read from index/index.npz);
  warm    the same object again (index in memory);
  CLI     `spot library query --entry ...` in a new process (start-up included);
  warm, listing re-checked
          as right after an add: every entry's fingerprint is re-read (one
          scandir and two stats per entry) before the index is trusted.

Query time does not depend on the prompt length (the index keeps one summary
vector per entry and metric), so short prompts keep the library small on disk.
Prints one line per measurement:

  query 10000 entries avg_tokens warm: 41.2 ms, peak RSS 212.0 MiB

Usage: python tools/bench_library_query.py [--entries N] [--dim D] [--library PATH]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from typing import Callable

import numpy as np

from spot.library import PromptLibrary, fs, rank, similarity

MODEL = "bench_model"


def peak_rss_mib() -> float:
  kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return kib / 1024.0 if sys.platform != "darwin" else kib / 2**20


def build(path: str, entries: int, tokens: int, dim: int, threads: int) -> float:
  """Adds `entries` random entries; returns the seconds it took."""
  lib = PromptLibrary(path)

  def add(i: int) -> None:
    rng = np.random.default_rng(i)
    lib.add(f"task_{i:06d}", rng.normal(size=(tokens, dim)).astype(np.float32), model=MODEL,
            embeddings={"step_10000": rng.normal(size=(tokens, dim)).astype(np.float32)},
            task=f"task_{i:06d}")

  start = time.perf_counter()
  with futures.ThreadPoolExecutor(threads) as pool:
    list(pool.map(add, range(entries)))
  return time.perf_counter() - start


def timed(fn: Callable[[], object], repeats: int) -> float:
  """Median milliseconds of `repeats` calls."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def report(what: str, ms: float) -> None:
  print(f"{what}: {ms:.1f} ms, peak RSS {peak_rss_mib():.1f} MiB", flush=True)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--entries", type=int, default=10_000)
  parser.add_argument("--tokens", type=int, default=8, help="prompt length of the entries")
  parser.add_argument("--dim", type=int, default=768, help="embed dim (768: T5 base)")
  parser.add_argument("--top-k", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--threads", type=int, default=8, help="threads adding entries")
  parser.add_argument("--library", help="reuse or keep this library (default: a temp dir)")
  args = parser.parse_args()

  path = args.library or tempfile.mkdtemp(prefix="spot_bench_library_")
  try:
    lib = PromptLibrary(path)
    have = len(lib.names()) if lib.exists() else 0
    if have < args.entries:
      seconds = build(path, args.entries, args.tokens, args.dim, args.threads)
      print(f"add {args.entries} entries: {seconds / args.entries * 1e3:.2f} ms per entry "
            f"({seconds:.1f} s, {args.threads} threads), peak RSS {peak_rss_mib():.1f} MiB",
            flush=True)
    n = len(PromptLibrary(path).names()) if have >= args.entries else args.entries
    query = np.random.default_rng(12345).normal(size=(args.tokens, args.dim))
    if have < args.entries:
      fresh = PromptLibrary(path)
      report(f"query {n} entries avg_tokens build (index from scratch)",
             timed(lambda: rank(fresh, query, top_k=args.top_k), 1))
    time.sleep(fs.RACY_NS / 1e9)  # let the entries/ stamp settle, as it has in normal use
    rank(PromptLibrary(path), query)  # records the settled stamp in index/index.npz
    for metric in similarity.METRICS:
      report(f"query {n} entries {metric} cold",
             timed(lambda: rank(PromptLibrary(path), query, metric=metric, top_k=args.top_k),
                   args.repeats))
      warm = PromptLibrary(path)
      rank(warm, query, metric=metric)
      report(f"query {n} entries {metric} warm",
             timed(lambda: rank(warm, query, metric=metric, top_k=args.top_k), args.repeats))
      report(f"query {n} entries {metric} by entry, warm",
             timed(lambda: rank(warm, "task_000000", metric=metric, top_k=args.top_k),
                   args.repeats))
      cli = [sys.executable, "-m", "spot.cli", "library", "--library", path, "query",
             "--entry", "task_000000", "--metric", metric, "--top-k", str(args.top_k)]
      report(f"query {n} entries {metric} CLI, new process",
             timed(lambda: subprocess.run(cli, check=True, capture_output=True), 3))
      racy, fs.RACY_NS = fs.RACY_NS, 2**62  # never trust the stamp: re-check every entry
      try:
        report(f"query {n} entries {metric} warm, listing re-checked",
               timed(lambda: rank(warm, query, metric=metric, top_k=args.top_k), args.repeats))
      finally:
        fs.RACY_NS = racy
  finally:
    if not args.library:
      shutil.rmtree(path, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
