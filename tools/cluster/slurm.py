"""A multi-node GPU `spot train` as a SLURM batch job.

Writes an sbatch script that starts one `spot train --multiprocess` per node
with `srun`; jax.distributed reads the coordinator (the first node of the
step), process count and index from SLURM's environment. `--dry-run` prints
the script and the `sbatch` command instead of submitting.

  python tools/cluster/slurm.py submit --nodes 4 --gpus-per-node 8 \\
      --partition a100 --time 24:00:00 --venv ~/spot-venv --workdir ~/spot \\
      --gin_file=gin/prompt_tuning/t5_1_1_xxl.gin \\
      --gin.MIXTURE_OR_TASK_NAME="'spot_superglue_boolq'" \\
      --gin.MODEL_DIR="'/shared/runs/boolq_xxl'" --gin.INITIAL_CHECKPOINT_PATH="'/shared/t5x/xxl'"
  python tools/cluster/slurm.py logs --job-name spot --job-id 12345
  python tools/cluster/slurm.py cancel --job-id 12345

MODEL_DIR must be on storage every node sees (a shared file system or gs://):
the checkpoint is written collectively by all processes.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import launch_common as lc  # noqa: E402


def sbatch_script(args: argparse.Namespace, train_args: Sequence[str]) -> str:
  """The batch script: SBATCH header, environment, one srun step."""
  head = [
      "#!/bin/bash",
      f"#SBATCH --job-name={args.job_name}",
      f"#SBATCH --nodes={args.nodes}",
      f"#SBATCH --ntasks-per-node={args.processes_per_node}",
      f"#SBATCH --gpus-per-node={args.gpus_per_node}",
      f"#SBATCH --cpus-per-task={args.cpus_per_task}",
      f"#SBATCH --time={args.time}",
      f"#SBATCH --output={args.log_dir}/%x-%j.out",
  ]
  head += [f"#SBATCH --partition={args.partition}"] * bool(args.partition)
  head += [f"#SBATCH --account={args.account}"] * bool(args.account)
  head += [f"#SBATCH {extra}" for extra in args.sbatch]
  body = [
      "set -euo pipefail",
      "# One process per node sees all its GPUs; XLA may use most of their memory.",
      "export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}",
      f"cd {lc.home(args.workdir)}",
      "srun --kill-on-bad-exit=1 " + " ".join(
          lc.home(a) for a in lc.spot_train_command(args.venv, train_args)),
  ]
  return "\n".join(head + [""] + body) + "\n"


def cmd_submit(args, run: lc.Runner, extra: Sequence[str]) -> None:
  if args.nodes < 1:
    raise SystemExit(f"--nodes={args.nodes} must be >= 1.")
  script = sbatch_script(args, lc.split_train_args(extra))
  path = pathlib.Path(args.script or f"{args.job_name}.sbatch")
  if run.dry_run:
    run.note(f"{path}:")
    for line in script.splitlines():
      run.note(f"  {line}")
  else:
    path.write_text(script)
  run.run(["mkdir", "-p", args.log_dir])
  run.run(["sbatch", str(path)])


def cmd_logs(args, run: lc.Runner, extra: Sequence[str]) -> None:
  del extra
  run.run(["tail", "-n", "200", "-F", f"{args.log_dir}/{args.job_name}-{args.job_id}.out"],
          check=False)


def cmd_cancel(args, run: lc.Runner, extra: Sequence[str]) -> None:
  del extra
  run.run(["scancel", str(args.job_id)])


COMMANDS = {"submit": cmd_submit, "logs": cmd_logs, "cancel": cmd_cancel}


def parser() -> argparse.ArgumentParser:
  p, subs = lc.command_parser(__doc__, COMMANDS)
  for name, s in subs.items():
    s.add_argument("--job-name", default="spot")
    s.add_argument("--log-dir", default="slurm_logs")
    if name in ("logs", "cancel"):
      s.add_argument("--job-id", required=True)
    if name == "submit":
      s.add_argument("--nodes", type=int, required=True)
      s.add_argument("--gpus-per-node", type=int, default=8)
      s.add_argument("--processes-per-node", type=int, default=1,
                     help="1 (default): one JAX process drives all GPUs of a node")
      s.add_argument("--cpus-per-task", type=int, default=16)
      s.add_argument("--time", default="24:00:00")
      s.add_argument("--partition", default=None)
      s.add_argument("--account", default=None)
      s.add_argument("--sbatch", action="append", default=[],
                     help="extra #SBATCH option, e.g. --sbatch=--exclusive (repeatable)")
      s.add_argument("--venv", default=lc.REMOTE_VENV, help="virtualenv with spot and jax[cuda]")
      s.add_argument("--workdir", default=lc.REMOTE_DIR, help="spot checkout on the nodes")
      s.add_argument("--script", default=None, help="where to write the sbatch script")
  return p


def main(argv: Optional[Sequence[str]] = None) -> None:
  lc.dispatch(parser(), COMMANDS, argv, takes_extra=("submit",))


if __name__ == "__main__":
  main()
