"""spot.runtime: the CPU-only malloc settings keep large blocks mapped across frees."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from spot import runtime

# In a fresh process: optionally tune, then from a worker thread (as XLA's
# step runs) allocate, touch and free a 192 MiB block five times; report the
# minor page faults of the last four rounds.
_PROBE = r"""
import json, resource, sys, threading
import numpy as np
from spot import runtime
applied = runtime.configure_host_memory({"SPOT_HOST_MALLOC": sys.argv[1]})
faults = []
def work():
  for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.empty(192 << 20, np.uint8)
    block.fill(1)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=work); t.start(); t.join()
print(json.dumps({"applied": applied, "faults": sum(faults[1:])}))
"""


def _probe(choice: str) -> dict:
  out = subprocess.run([sys.executable, "-c", _PROBE, choice], capture_output=True, text=True,
                       check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the malloc settings are glibc's")
def test_tuned_malloc_reuses_freed_large_blocks():
  default, tuned = _probe("default"), _probe("tuned")
  assert not default["applied"] and tuned["applied"]
  # glibc's default maps a fresh block each round and faults every page in again.
  assert default["faults"] > 50  # 4 KiB pages: ~200k; transparent huge pages: ~400
  assert tuned["faults"] < default["faults"] / 20


def test_only_cpu_only_processes_are_tuned():
  assert runtime.cpu_only({"JAX_PLATFORMS": "cpu"})
  assert not runtime.cpu_only({"JAX_PLATFORMS": "cuda,cpu"})
  assert not runtime.cpu_only({"JAX_PLATFORMS": "tpu"})
  assert not runtime.configure_host_memory({"SPOT_HOST_MALLOC": "auto", "JAX_PLATFORMS": "tpu"})
  assert not runtime.configure_host_memory({"JAX_PLATFORMS": "cpu"})  # opt-in
  assert not runtime.configure_host_memory({"SPOT_HOST_MALLOC": "default",
                                            "JAX_PLATFORMS": "cpu"})
  with pytest.raises(ValueError, match="SPOT_HOST_MALLOC='fast'.*default"):
    runtime.configure_host_memory({"SPOT_HOST_MALLOC": "fast"})
