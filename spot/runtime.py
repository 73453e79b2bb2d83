"""Process set-up for the CPU backend: keep XLA's scratch memory mapped across steps.

On the CPU backend XLA allocates each step's temporaries (148 MiB for the
T5 1.1 small prompt step of tools/bench_peft.py) with `posix_memalign` from a
worker thread. glibc serves any block above its mmap threshold (at most 32 MiB)
with a fresh `mmap` and unmaps it on free, so every step page-faults the whole
buffer in again: about 38,000 minor faults and 130-160 ms of kernel time per
step there, 13-25% of the step. Three `mallopt` settings stop that: one arena
(thread arenas cannot grow past 64 MiB, so large blocks in them always fall
back to mmap), no mmap for large blocks, and a 1 GiB trim threshold so freed
memory stays in the heap for the next step. Results are bit-identical; only
where memory comes from changes. (T5X's TPU VM guides preload tcmalloc for a
similar reason.)

The settings are process-wide and must be made before JAX starts its thread
pools, so they are made at the edges: `spot` / `t5x` command lines and the
benchmarks call `configure_host_memory()` first thing. Library code never
calls it. They are opt-in: SPOT_HOST_MALLOC=tuned always, =auto only where JAX
can only run on the CPU (JAX_PLATFORMS=cpu, or no GPU/TPU plugin installed),
=default (the default) never. One arena serialises the mallocs of every
thread, so runs dominated by input pipelines and short steps (the tiny demo:
131 s against 105 s in one measurement) lose more than long compute-bound
steps gain; on accelerators the temporaries live on the device anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import platform
from typing import Mapping, Optional

# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD_BYTES = 1 << 30

# Packages that give JAX a GPU or TPU backend.
# (`jax_plugins` is the namespace every PJRT plugin package installs into.)
ACCELERATOR_PLUGINS = ("jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin",
                       "jax_rocm7_plugin", "libtpu", "libtpu_nightly")
ENV_SWITCH = "SPOT_HOST_MALLOC"


def _has_module(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


def cpu_only(environ: Optional[Mapping[str, str]] = None) -> bool:
  """Whether JAX in this process can only use the CPU backend (without starting it)."""
  environ = os.environ if environ is None else environ
  platforms = environ.get("JAX_PLATFORMS", environ.get("JAX_PLATFORM_NAME", "")).strip().lower()
  if platforms:
    return all(p.strip() == "cpu" for p in platforms.split(","))
  return not any(_has_module(name) for name in ACCELERATOR_PLUGINS)


def tune_host_malloc() -> bool:
  """Applies the three glibc settings; False (and no change) off glibc Linux."""
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  ok = libc.mallopt(M_ARENA_MAX, 1) == 1
  ok &= libc.mallopt(M_MMAP_MAX, 0) == 1
  ok &= libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
  return bool(ok)


def configure_host_memory(environ: Optional[Mapping[str, str]] = None) -> bool:
  """Tunes malloc as SPOT_HOST_MALLOC says: tuned, auto (CPU-only JAX) or default (no).

  Returns whether the settings were applied. Call before importing JAX's
  backends (first thing in a command-line entry point).
  """
  environ = os.environ if environ is None else environ
  choice = environ.get(ENV_SWITCH, "default").strip().lower()
  if choice not in ("auto", "tuned", "default"):
    raise ValueError(f"{ENV_SWITCH}={choice!r}; expected default (glibc's settings), "
                     "auto (tune on CPU-only JAX) or tuned (always).")
  if choice == "default" or (choice == "auto" and not cpu_only(environ)):
    return False
  return tune_host_malloc()


__all__ = ["configure_host_memory", "cpu_only", "tune_host_malloc"]
