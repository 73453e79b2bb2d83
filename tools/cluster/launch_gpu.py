"""A multi-node GPU `spot train` over plain ssh (no scheduler).

Starts one `spot train` per host with the coordinator address, the process
count and each host's process index (`--coordinator_address HOST0:PORT
--process_count N --process_index I`), in the background with its log in
~/spot_train.log. `--dry-run` prints the exact ssh commands.

  HOSTS="--hosts gpu-a,gpu-b,gpu-c,gpu-d"
  python tools/cluster/launch_gpu.py install $HOSTS --local
  python tools/cluster/launch_gpu.py train   $HOSTS --follow \\
      --gin_file=gin/prompt_tuning/t5_1_1_xl.gin --gin.MODEL_DIR="'/shared/runs/xl'" ...
  python tools/cluster/launch_gpu.py logs    $HOSTS --host gpu-c
  python tools/cluster/launch_gpu.py stop    $HOSTS

The hosts reach process 0 (the first host) on `--port`; MODEL_DIR must be on
storage all hosts see. `stop` ends the run's processes and any stray process
still holding a GPU of this user.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import launch_common as lc  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
JAX_CUDA = "jax[cuda12]"
FREE_GPUS = ("(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | "
             "xargs -r kill -9 2>/dev/null || true)")


def hosts_of(args: argparse.Namespace) -> list[str]:
  hosts = [h for h in args.hosts.split(",") if h]
  if not hosts:
    raise SystemExit("--hosts needs at least one host name (comma-separated).")
  return hosts


def ssh(host: str, command: str, ssh_options: Sequence[str] = ()) -> list[str]:
  return ["ssh", *ssh_options, host, command]


def cmd_install(args, run: lc.Runner, extra: Sequence[str]) -> None:
  del extra
  local, script = lc.install_plan(args, run, str(REPO), args.venv, args.workdir, JAX_CUDA)
  for host in hosts_of(args):
    if local:
      run.run(["scp", *args.ssh_option, local, f"{host}:{lc.REMOTE_ARCHIVE[2:]}"])
    run.run(ssh(host, script, args.ssh_option))


def distributed_flags(hosts: Sequence[str], index: int, port: int,
                      coordinator: Optional[str] = None) -> list[str]:
  """The flags that make host `index` process `index` of a len(hosts)-process run."""
  return [f"--coordinator_address={coordinator or hosts[0]}:{port}",
          f"--process_count={len(hosts)}", f"--process_index={index}"]


def cmd_train(args, run: lc.Runner, extra: Sequence[str]) -> None:
  train_args = lc.split_train_args(extra)
  hosts = hosts_of(args)
  for i, host in enumerate(hosts):
    flags = distributed_flags(hosts, i, args.port, args.coordinator) if len(hosts) > 1 else []
    spot = lc.spot_train_command(args.venv, train_args, flags)
    run.run(ssh(host, lc.remote(lc.stop_training_command(),
                                lc.background(spot, args.workdir, lc.REMOTE_LOG)),
                args.ssh_option))
  if args.follow:
    run.run(ssh(hosts[0], f"tail -n 200 -F {lc.home(lc.REMOTE_LOG)}", args.ssh_option),
            check=False)


def cmd_logs(args, run: lc.Runner, extra: Sequence[str]) -> None:
  del extra
  host = args.host or hosts_of(args)[0]
  run.run(ssh(host, f"tail -n 200 -F {lc.home(lc.REMOTE_LOG)}", args.ssh_option), check=False)


def cmd_stop(args, run: lc.Runner, extra: Sequence[str]) -> None:
  del extra
  for host in hosts_of(args):
    run.run(ssh(host, lc.remote(lc.stop_training_command(), FREE_GPUS), args.ssh_option))


COMMANDS = {"install": cmd_install, "train": cmd_train, "logs": cmd_logs, "stop": cmd_stop}


def parser() -> argparse.ArgumentParser:
  p, subs = lc.command_parser(__doc__, COMMANDS)
  for name, s in subs.items():
    s.add_argument("--hosts", required=True, help="comma-separated; the first is process 0")
    s.add_argument("--ssh-option", action="append", default=[],
                   help="passed to ssh/scp, e.g. --ssh-option=-oBatchMode=yes (repeatable)")
    s.add_argument("--venv", default=lc.REMOTE_VENV)
    s.add_argument("--workdir", default=lc.REMOTE_DIR)
    if name == "install":
      lc.add_install_flags(s)
    if name == "train":
      s.add_argument("--port", type=int, default=8476, help="coordinator port on the first host")
      s.add_argument("--coordinator", default=None,
                     help="address the hosts reach the first host at (default: its name)")
      s.add_argument("--follow", action="store_true", help="then stream the first host's log")
    if name == "logs":
      s.add_argument("--host", default=None)
  return p


def main(argv: Optional[Sequence[str]] = None) -> None:
  lc.dispatch(parser(), COMMANDS, argv, takes_extra=("train",))


if __name__ == "__main__":
  main()
