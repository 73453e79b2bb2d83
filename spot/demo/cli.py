"""`spot demo [--quick] [--out DIR] [--seed N]`: the SPoT workflow end to end.

Without `--real`, on one CPU in minutes: a small T5 trained on generated
tasks, frozen; source prompts and a prompt library; retrieval and transfer to
held-out target tasks; a table, plots and a Markdown report. With `--real`,
the same workflow on GLUE (sources) and SuperGLUE (targets) from a T5X
checkpoint. See docs/demo.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Any, Optional, Sequence

PROG = "spot demo"


def build_parser() -> argparse.ArgumentParser:
  from spot.demo import real
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="the small preset (under two minutes on two CPU cores)")
  p.add_argument("--out", metavar="DIR",
                 help="output directory (default ./spot-demo-<preset>-<time>); running again "
                      "with the same DIR continues an interrupted demo")
  p.add_argument("--seed", type=int, default=0, help="seed of the data, the initialisations "
                 "and the data order (default %(default)s)")
  real.add_arguments(p.add_argument_group(
      "--real: GLUE sources, SuperGLUE targets, a given T5X checkpoint (not run in CI)"))
  return p


class Log:
  """Progress lines with the wall and CPU time so far: `[demo 01:23 cpu 95s] message`."""

  def __init__(self):
    self.start, self.cpu_start = time.perf_counter(), time.process_time()

  @property
  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  @property
  def cpu(self) -> float:
    return time.process_time() - self.cpu_start

  def __call__(self, message: str) -> None:
    m, s = divmod(int(self.elapsed), 60)
    print(f"[demo {m:02d}:{s:02d} cpu {self.cpu:.0f}s] {message}", flush=True)


def quiet() -> None:
  """Hides TensorFlow's and absl's start-up chatter (before TF is imported); keeps errors."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import logging

  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.getLogger("tensorflow").setLevel(logging.ERROR)


def prepare(out, cfg: Any, seed: int) -> None:
  """Claims `out` for this demo (or finds this demo's earlier output) and sets up JAX.

  Compiled programs are cached under OUT/jax_cache (unless
  JAX_COMPILATION_CACHE_DIR names another place): every prompt run has the
  same shapes, so after the first one its train step loads instead of compiling.
  """
  settings = {"preset": cfg.name, "seed": seed,
              "config": json.loads(json.dumps(dataclasses.asdict(cfg)))}
  marker = out / "demo.json"
  if marker.exists():
    if json.loads(marker.read_text()) != settings:
      raise SystemExit(f"{PROG}: {out} holds a demo with other settings; pass a new --out DIR "
                       "or delete that directory.")
  elif out.exists() and any(out.iterdir()):
    raise SystemExit(f"{PROG}: {out} exists and is not a demo's output directory; pass a new "
                     "--out DIR.")
  out.mkdir(parents=True, exist_ok=True)
  marker.write_text(json.dumps(settings, indent=2, sort_keys=True))
  import jax
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str(out / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # TF only reads data; JAX owns accelerators


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  real_only = [f"--{k.replace('_', '-')}" for k in ("checkpoint", "data_dir", "vocabulary",
                                                     "dry_run") if getattr(args, k)]
  if real_only and not args.real:
    print(f"{PROG}: {', '.join(real_only)} go(es) with --real.", file=sys.stderr)
    return 2
  if args.quick and args.real:
    print(f"{PROG}: --quick is for the synthetic demo; --real has its own step options.",
          file=sys.stderr)
    return 2
  quiet()
  log = Log()
  if args.real:
    from spot.demo import real
    return real.main(args, log, prepare)
  from etils import epath

  from spot.demo import config as config_lib
  cfg = config_lib.QUICK if args.quick else config_lib.DEFAULT
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  out = epath.Path(args.out or f"spot-demo-{cfg.name}-{stamp}").absolute()
  log(f"spot demo ({cfg.name} preset, seed {args.seed}) -> {out}")
  prepare(out, cfg, args.seed)
  from spot.demo import report, synthetic
  base, sources, targets, flow = synthetic.run(cfg, out, args.seed, log)
  study = None
  if cfg.study_skills:
    from spot.demo import study as study_lib
    study = study_lib.write(out, study_lib.run(flow, cfg, args.seed, sources, targets, log))
    log(f"transferability study: {study_lib.headline(study[0])}")
  print(report.write(out, cfg, args.seed, base, sources, targets, flow, log.elapsed, log.cpu,
                     study=study), flush=True)
  log(f"done. Everything is under {out}; open {out / 'report.md'}")
  return 0
