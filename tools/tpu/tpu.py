"""Cloud TPU VMs and pod slices for spot: create, install, train, logs, stop, delete.

Every subcommand is a thin wrapper around `gcloud compute tpus tpu-vm ...`;
`--dry-run` prints the exact gcloud commands instead of running them.

  TPU="--name spot-v4 --zone us-central2-b"
  python tools/tpu/tpu.py create  $TPU --accelerator-type v4-32
  python tools/tpu/tpu.py install $TPU --local            # this checkout's HEAD
  python tools/tpu/tpu.py train   $TPU --follow \\
      --gin_file=gin/prompt_tuning/t5_1_1_xxl.gin \\
      --gin.MIXTURE_OR_TASK_NAME="'spot_superglue_boolq'" \\
      --gin.MODEL_DIR="'gs://bucket/runs/boolq_xxl'" \\
      --gin.INITIAL_CHECKPOINT_PATH="'gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_xxl/checkpoint_1100000'"
  python tools/tpu/tpu.py logs    $TPU --worker 0
  python tools/tpu/tpu.py stop    $TPU                    # stray processes holding the TPU
  python tools/tpu/tpu.py delete  $TPU

`train` starts `spot train ... --multiprocess` on every worker (each one
process; jax.distributed finds the others through the TPU metadata), in the
background with its log in ~/spot_train.log, after stopping any earlier run
that still holds the chips. Gin files are paths inside the installed checkout
(~/spot); a gin file outside it is copied to the workers first.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "cluster"))

import launch_common as lc  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
JAX_TPU = "jax[tpu]"
REMOTE_GIN_DIR = "~/spot_gin"
# Processes that hold /dev/accel* (TPU v2-v4) or /dev/vfio/* (v5e and later).
FREE_TPU = ("(sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u | "
            "xargs -r sudo kill -9 || true) && sudo rm -f /tmp/libtpu_lockfile")


def _gcloud(args: argparse.Namespace, *verb: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", *verb, args.name, f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd


def ssh(args: argparse.Namespace, command: str, worker: str = "all") -> list[str]:
  return _gcloud(args, "ssh") + [f"--worker={worker}", f"--command={command}"]


def scp(args: argparse.Namespace, local: str, remote: str, worker: str = "all") -> list[str]:
  return (["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{args.name}:{remote}",
           f"--zone={args.zone}", f"--worker={worker}"] +
          ([f"--project={args.project}"] if args.project else []))


def cmd_create(args, run: lc.Runner, extra: Sequence[str]) -> None:
  cmd = _gcloud(args, "create") + [f"--accelerator-type={args.accelerator_type}",
                                   f"--version={args.version}"]
  if args.spot:
    cmd.append("--spot")
  if args.network:
    cmd.append(f"--network={args.network}")
  run.run(cmd + list(extra))


def cmd_install(args, run: lc.Runner, extra: Sequence[str]) -> None:
  del extra
  local, script = lc.install_plan(args, run, str(REPO), lc.REMOTE_VENV, lc.REMOTE_DIR, JAX_TPU)
  if local:
    run.run(scp(args, local, lc.REMOTE_ARCHIVE))
  run.run(ssh(args, script))


def _worker_gin_path(value: str) -> Optional[str]:
  """The path of a gin file on the workers, or None when it must be copied there."""
  path = pathlib.Path(value)
  if path.is_absolute():
    try:
      return str(path.resolve().relative_to(REPO))
    except ValueError:
      return None if path.exists() else value
  return value if (REPO / path).exists() or not path.exists() else None


def _remote_gin_files(args, run: lc.Runner, train_args: list[str]) -> list[str]:
  """Copies gin files that are not inside the checkout; returns the rewritten flags."""
  out, copied = [], False
  for a in train_args:
    if a.startswith("--gin_file="):
      local = a.split("=", 1)[1]
      remote = _worker_gin_path(local)
      if remote is None:
        if not copied:
          run.run(ssh(args, f"mkdir -p {lc.home(REMOTE_GIN_DIR)}"))
          copied = True
        remote = f"{REMOTE_GIN_DIR}/{pathlib.Path(local).name}"
        run.run(scp(args, local, remote))
      a = f"--gin_file={remote}"
    out.append(a)
  return out


def cmd_train(args, run: lc.Runner, extra: Sequence[str]) -> None:
  train_args = _remote_gin_files(args, run, lc.split_train_args(extra))
  distributed = ["--multiprocess"] if not args.single_host else []
  spot = lc.spot_train_command(lc.REMOTE_VENV, train_args, distributed)
  run.run(ssh(args, lc.remote(lc.stop_training_command(), FREE_TPU,
                              lc.background(spot, lc.REMOTE_DIR, lc.REMOTE_LOG))))
  if args.follow:
    cmd_logs(args, run, ())


def cmd_logs(args, run: lc.Runner, extra: Sequence[str]) -> None:
  del extra
  worker = getattr(args, "worker", "0") or "0"
  run.run(ssh(args, f"tail -n 200 -F {lc.home(lc.REMOTE_LOG)}", worker=str(worker)),
          check=False)


def cmd_stop(args, run: lc.Runner, extra: Sequence[str]) -> None:
  del extra
  run.run(ssh(args, lc.remote(lc.stop_training_command(), FREE_TPU)))


def cmd_delete(args, run: lc.Runner, extra: Sequence[str]) -> None:
  del extra
  run.run(_gcloud(args, "delete") + ["--quiet"])


def cmd_ssh(args, run: lc.Runner, extra: Sequence[str]) -> None:
  run.run(ssh(args, " ".join(extra) if extra else args.command, worker=args.worker))


COMMANDS = {"create": cmd_create, "install": cmd_install, "train": cmd_train, "logs": cmd_logs,
            "stop": cmd_stop, "delete": cmd_delete, "ssh": cmd_ssh}


def parser() -> argparse.ArgumentParser:
  p, subs = lc.command_parser(__doc__, COMMANDS)
  for name, s in subs.items():
    s.add_argument("--name", required=True, help="TPU VM / pod slice name")
    s.add_argument("--zone", required=True)
    s.add_argument("--project", default=None)
    if name == "create":
      s.add_argument("--accelerator-type", required=True, help="e.g. v3-8, v4-32, v5litepod-16")
      s.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM software version")
      s.add_argument("--spot", action="store_true", help="a preemptible Spot TPU")
      s.add_argument("--network", default=None)
    if name == "install":
      lc.add_install_flags(s)
    if name == "train":
      s.add_argument("--follow", action="store_true", help="then stream worker 0's log")
      s.add_argument("--single-host", action="store_true",
                     help="a single-host TPU VM: no jax.distributed")
    if name in ("logs", "ssh"):
      s.add_argument("--worker", default="0" if name == "logs" else "all")
    if name == "ssh":
      s.add_argument("--command", default="hostname")
  return p


def main(argv: Optional[Sequence[str]] = None) -> None:
  lc.dispatch(parser(), COMMANDS, argv, takes_extra=("train", "create", "ssh"))


if __name__ == "__main__":
  main()
