"""Benchmark: checkpoint loading and a T5 1.1 base forward pass on CPU.

Each measurement runs in a fresh Python process so that its peak RSS is its
own; one line per measurement, ending in `<value> s, peak RSS <value> MiB`:

  python tools/bench_checkpoint_load.py [--tiny PATH] [--base-checkpoint]

Measurements:
  load_t5x tiny        spot.checkpoints.load_t5x of the real T5X tiny checkpoint
                       (../shared/data/t5x_tiny_checkpoint/checkpoint_3): a cold read,
                       then a second load with the t5_1_1_tiny shape check.
  forward base         T5(t5_1_1_base) on random float32 parameters, batch 1,
                       512 input / 128 target tokens, jitted: the first call
                       (compile + run) and the mean of 3 further calls.
  load_t5x base        (--base-checkpoint) save_t5x random base parameters
                       (~0.99 GB float32) into a temp dir, then load them in a
                       fresh process: peak RSS shows the load needs ~1x the
                       weights, not 2x.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_TINY = pathlib.Path(os.environ.get("SPOT_SHARED_DATA", REPO.parent / "shared" / "data")
                            ) / "t5x_tiny_checkpoint" / "checkpoint_3"


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _report(label: str, seconds: float) -> None:
  print(f"{label}: {seconds:.3f} s, peak RSS {_peak_rss_mib():.1f} MiB", flush=True)


def _random_params(config, seed: int = 0) -> dict:
  import numpy as np
  from spot.checkpoints import tree
  rng = np.random.default_rng(seed)
  return tree.unflatten({n: (rng.standard_normal(s, dtype=np.float32) * 0.05)
                         for n, s in tree.expected_shapes(config).items()})


def bench_load_tiny(path: str) -> None:
  from spot.checkpoints import load_t5x
  from spot.models import get_config
  start = time.perf_counter()
  load_t5x(path)
  _report(f"load_t5x tiny ({path}), read only", time.perf_counter() - start)
  start = time.perf_counter()
  load_t5x(path, get_config("t5_1_1_tiny"))
  _report("load_t5x tiny again, with the t5_1_1_tiny shape check (traces the model once)",
          time.perf_counter() - start)


def bench_forward_base() -> None:
  import jax
  import jax.numpy as jnp
  from spot.models import T5, get_config
  config = get_config("t5_1_1_base", dropout_rate=0.0)
  params = jax.device_put(_random_params(config))
  rng = jax.random.PRNGKey(0)
  enc = jax.random.randint(rng, (1, 512), 2, config.vocab_size)
  tgt = jax.random.randint(jax.random.fold_in(rng, 1), (1, 128), 2, config.vocab_size)
  dec = jnp.pad(tgt[:, :-1], ((0, 0), (1, 0)))
  forward = jax.jit(lambda p, e, d, t: T5(config).apply({"params": p}, e, d, t,
                                                        enable_dropout=False))
  label = "forward t5_1_1_base CPU batch 1, 512/128 tokens"
  start = time.perf_counter()
  forward(params, enc, dec, tgt).block_until_ready()
  _report(f"{label} (first call, incl. compile)", time.perf_counter() - start)
  runs = 3
  start = time.perf_counter()
  for _ in range(runs):
    forward(params, enc, dec, tgt).block_until_ready()
  _report(f"{label} (steady state, mean of {runs})", (time.perf_counter() - start) / runs)


def bench_save_base(model_dir: str) -> None:
  from spot.checkpoints import save_t5x
  from spot.models import get_config
  params = _random_params(get_config("t5_1_1_base"))
  start = time.perf_counter()
  save_t5x(model_dir, params, step=0)
  _report("save_t5x t5_1_1_base (random, 0.99 GB float32)", time.perf_counter() - start)


def bench_load_base(model_dir: str) -> None:
  from spot.checkpoints import load_t5x
  from spot.models import get_config
  start = time.perf_counter()
  load_t5x(model_dir, get_config("t5_1_1_base"))
  _report("load_t5x t5_1_1_base (0.99 GB float32)", time.perf_counter() - start)


def _child(*args: str) -> int:
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  return subprocess.call([sys.executable, __file__, "--only", *args], env=env, cwd=REPO)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tiny", default=str(DEFAULT_TINY), help="the T5X tiny checkpoint")
  parser.add_argument("--base-checkpoint", action="store_true",
                      help="also save and load a random t5_1_1_base checkpoint (~1 GB)")
  parser.add_argument("--only", nargs="+", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.only:
    name, *rest = args.only
    {"tiny": bench_load_tiny, "forward": bench_forward_base, "save": bench_save_base,
     "load": bench_load_base}[name](*rest)
    return 0
  status = _child("tiny", args.tiny) or _child("forward")
  if args.base_checkpoint and not status:
    with tempfile.TemporaryDirectory(prefix="spot_bench_") as tmp:
      status = _child("save", tmp) or _child("load", tmp)
  return status


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  sys.exit(main())
