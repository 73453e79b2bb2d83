"""spot.distributed: when and how jax.distributed starts, and a two-process CPU run
that equals one process.

The two-process run starts two workers of tests/test_partitioning.py with 4
forced CPU devices each, joined by jax.distributed over localhost (gloo CPU
collectives), training on meshes 4x2 (each host reads its own data shard) and
1x8 (one model-parallel group spans both hosts, which read the same shard).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests import helpers as tp
from spot import distributed


def test_single_process_is_a_noop():
  spec = distributed.initialize()
  assert spec.kind == "single" and not spec.multiprocess
  assert distributed.is_primary()
  distributed.barrier("noop")


@pytest.mark.parametrize("env,kind,count,index", [
    ({}, "single", 1, 0),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
      "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}, "slurm", 2, 1),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1",
      "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, "single", 1, 0),
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}, "ompi", 4, 3),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3", "TPU_WORKER_ID": "2"}, "gke_tpu", 4, 2),
    ({"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}, "single", 1, 0),
])
def test_detect_from_environment(env, kind, count, index):
  spec = distributed.detect(env=env)
  assert (spec.kind, spec.num_processes, spec.process_id) == (kind, count, index)


def test_detect_explicit_and_forced():
  spec = distributed.detect("10.0.0.1:1234", 4, 2, env={})
  assert (spec.kind, spec.coordinator_address, spec.num_processes, spec.process_id) == (
      "explicit", "10.0.0.1:1234", 4, 2)
  assert distributed.detect(force=True, env={}).kind == "auto"
  assert distributed.detect(num_processes=1, force=True, env={}).kind == "single"
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
           "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
  # A coordinator given by hand; SLURM still provides the count and index.
  spec = distributed.detect("n1:4000", env=slurm)
  assert (spec.kind, spec.num_processes, spec.process_id) == ("explicit", None, None)


@pytest.mark.parametrize("kwargs,match", [
    (dict(coordinator_address="h:1"), "needs --process_count and --process_index"),
    (dict(num_processes=0), "must be >= 1"),
    (dict(num_processes=2, process_id=2), r"must be in \[0, 2\)"),
])
def test_detect_errors_name_the_flags(kwargs, match):
  with pytest.raises(ValueError, match=match):
    distributed.detect(env={}, **kwargs)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
  return tp.results(tmp_path_factory, "2x4")


@pytest.mark.parametrize("mesh", tp.TWO_PROCESS_MESHES)
def test_two_processes_match_one_process(two_processes, tmp_path_factory, mesh):
  one = tp.results(tmp_path_factory, "8")
  got = two_processes["runs"][mesh]
  tp.assert_same_run(got, one["runs"][mesh], f"2 processes, mesh {mesh}")
  tp.assert_same_run(got, one["runs"]["1"], f"2 processes, mesh {mesh} vs 1 device")
  assert np.isfinite(got["losses"][-1][1])
