"""Multi-process set-up: `jax.distributed` when a run spans several processes.

One process (a laptop, one GPU box, a single-host TPU VM) needs nothing: every
function here is then a no-op. A run over several hosts (a TPU pod slice, a
SLURM job, N GPU nodes started by `tools/cluster/launch_gpu.py`) calls
`initialize()` once, before any other JAX call, in every process; afterwards
`jax.devices()` lists all processes' devices and the trainer's mesh spans them.

Where the coordinator, process count and index come from, in order:

1. explicit arguments (`--coordinator_address --process_count --process_index`);
2. the environment: SLURM (`srun`), Open MPI (`mpirun`), GKE TPU
   (`TPU_WORKER_HOSTNAMES`), all of which `jax.distributed` reads itself;
3. `force=True` (`--multiprocess`): let `jax.distributed` auto-detect the
   cluster, which on a Cloud TPU VM pod slice asks the metadata server.

On CPU the cross-process collectives need an implementation (gloo), which is
selected here before JAX starts its backend.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Mapping, Optional, Sequence, Union

import jax

SINGLE = "single"
EXPLICIT = "explicit"
AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """How this process joins a run.

  Attributes:
    kind: "single" (no jax.distributed), "explicit" (coordinator given),
      "slurm", "ompi", "gke_tpu" (detected from the environment) or "auto"
      (jax.distributed detects, e.g. Cloud TPU VMs through the metadata server).
    coordinator_address: host:port of process 0's coordinator, if known.
    num_processes / process_id: if known (otherwise jax.distributed finds them).
  """

  kind: str
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None

  @property
  def multiprocess(self) -> bool:
    return self.kind != SINGLE


def _int(env: Mapping[str, str], key: str) -> Optional[int]:
  value = env.get(key)
  try:
    return int(value) if value not in (None, "") else None
  except ValueError:
    return None


def _detect_env(env: Mapping[str, str]) -> Optional[ClusterSpec]:
  """A multi-process cluster described by environment variables, if any."""
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
           "SLURM_LOCALID")
  if all(k in env for k in slurm) and (_int(env, "SLURM_NTASKS") or 1) > 1:
    return ClusterSpec("slurm", None, _int(env, "SLURM_NTASKS"), _int(env, "SLURM_PROCID"))
  if (_int(env, "OMPI_COMM_WORLD_SIZE") or 1) > 1:
    return ClusterSpec("ompi", None, _int(env, "OMPI_COMM_WORLD_SIZE"),
                       _int(env, "OMPI_COMM_WORLD_RANK"))
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if len(hosts) > 1:
    return ClusterSpec("gke_tpu", None, len(hosts), _int(env, "TPU_WORKER_ID"))
  return None


def detect(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
           process_id: Optional[int] = None, force: bool = False,
           env: Optional[Mapping[str, str]] = None) -> ClusterSpec:
  """Decides whether and how to start jax.distributed, without starting it.

  Args:
    coordinator_address: "host:port" of process 0 (every process gives the same).
    num_processes: total processes (`--process_count`).
    process_id: this process's index in [0, num_processes) (`--process_index`).
    force: join a multi-process run even if nothing else says so
      (`--multiprocess`; Cloud TPU VM pod slices).
    env: the environment (default `os.environ`).
  """
  env = os.environ if env is None else env
  if num_processes is not None and int(num_processes) < 1:
    raise ValueError(f"--process_count={num_processes} must be >= 1.")
  if num_processes is not None and process_id is not None and not (
      0 <= int(process_id) < int(num_processes)):
    raise ValueError(f"--process_index={process_id} must be in [0, {num_processes}).")
  if num_processes == 1:
    return ClusterSpec(SINGLE, None, 1, 0)
  detected = _detect_env(env)
  if coordinator_address:
    if detected is None and (num_processes is None or process_id is None):
      raise ValueError(f"--coordinator_address={coordinator_address} needs --process_count and "
                       "--process_index unless SLURM / MPI / TPU provide them.")
    return ClusterSpec(EXPLICIT, coordinator_address, num_processes, process_id)
  if detected is not None:
    return dataclasses.replace(
        detected,
        num_processes=num_processes if num_processes is not None else detected.num_processes,
        process_id=process_id if process_id is not None else detected.process_id)
  if force or (num_processes or 1) > 1:
    return ClusterSpec(AUTO, None, num_processes, process_id)
  return ClusterSpec(SINGLE, None, 1, 0)


def _use_cpu_collectives(implementation: str) -> None:
  """Cross-process collectives on CPU devices (tests, CPU clusters)."""
  platforms = str(jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", ""))
  if platforms and not platforms.split(",")[0].startswith("cpu"):
    return
  current = getattr(jax.config, "jax_cpu_collectives_implementation", None)
  if current in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", implementation)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, force: bool = False,
               local_device_ids: Optional[Union[int, Sequence[int]]] = None,
               cpu_collectives: str = "gloo",
               initialization_timeout: int = 300) -> ClusterSpec:
  """Starts jax.distributed when several processes take part; else does nothing.

  Call it once per process before any other JAX call. Arguments as `detect`;
  `local_device_ids` restricts this process to some local accelerators (one
  process per GPU). Returns the `ClusterSpec` used.
  """
  spec = detect(coordinator_address, num_processes, process_id, force)
  if not spec.multiprocess or jax.distributed.is_initialized():
    return spec
  _use_cpu_collectives(cpu_collectives)
  kwargs = dict(coordinator_address=spec.coordinator_address, num_processes=spec.num_processes,
                process_id=spec.process_id, local_device_ids=local_device_ids,
                initialization_timeout=initialization_timeout)
  try:
    jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})
  except (RuntimeError, ValueError) as e:
    raise RuntimeError(
        f"jax.distributed could not start ({spec.kind}): {e}. Give --coordinator_address "
        "HOST:PORT --process_count N --process_index I (the same address on every process), "
        "or run under srun / mpirun / a Cloud TPU pod slice.") from e
  if jax.process_index() == 0:
    logging.info("jax.distributed: %d processes, %d devices (%d local).", jax.process_count(),
                 jax.device_count(), jax.local_device_count())
  return spec


def is_primary() -> bool:
  """True in the process that writes logs, summaries and single-copy files."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches `name` (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
