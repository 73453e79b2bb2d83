"""A study's (or a sweep's) unfinished runs as command lines for the launchers in tools/.

`spot study plan DIR --launcher L` prints the runs that `study.pending_stages`
groups into stages (each stage's runs are independent and need only earlier
stages); `spot sweep plan --launcher L` prints a sweep's unfinished runs as one
stage, with `spot sweep run` in place of `spot study run`. The forms:

  shell      one `spot study run --dir DIR --only RUN_ID` per line, a comment
             line heading each stage; run top to bottom, or a stage in parallel.
  tpu        one `python tools/tpu/tpu.py ssh --name NAME --zone ZONE --worker 0
             --command '...'` per run, for single-host TPU VMs set up with
             `tpu.py install`; give each line of a stage its own VM.
  slurm      a bash script submitting one sbatch array job per stage (one task
             per run, one node each), each stage `--dependency=afterok` on the
             one before; run it with `bash`.
  multinode  a bash script dealing each stage's runs round-robin to `--hosts`
             over ssh (as tools/cluster/launch_gpu.py reaches them), waiting for
             the stage before starting the next; run it with `bash`.

Remote lines `cd` into the spot checkout (`workdir`) and call the virtualenv's
`spot` (`venv`), the defaults of the launchers' `install` (~/spot, ~/spot-venv).
The study directory must be one every machine sees (gs:// or a shared file system).
Pure string building: nothing is run or read here.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from typing import Any, Optional, Sequence

from spot import errors
from spot.workflows import study as study_lib

LAUNCHERS = ("shell", "tpu", "slurm", "multinode")
TPU_SCRIPT = "tools/tpu/tpu.py"
STAGE_DELIMITER = "SPOT_STUDY_STAGE"
_VARIABLE = re.compile(r"^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$")


@dataclasses.dataclass(frozen=True)
class LaunchOptions:
  """Where the runs go; defaults match tools/tpu and tools/cluster.

  Attributes:
    venv / workdir: the virtualenv and spot checkout on the remote machines.
    tpu_name / zone: the TPU VM (a `$VARIABLE` is left for the shell to expand).
    hosts / ssh_options: machines of `multinode`, and options passed to ssh.
    job_name, partition, account, time, gpus_per_node, cpus_per_task, log_dir:
      the sbatch settings of `slurm` (one node per run; job_name None: spot-<recipe>).
  """

  venv: str = "~/spot-venv"
  workdir: str = "~/spot"
  tpu_name: str = "$TPU_NAME"
  zone: str = "$TPU_ZONE"
  hosts: tuple[str, ...] = ()
  ssh_options: tuple[str, ...] = ()
  job_name: Optional[str] = None
  partition: Optional[str] = None
  account: Optional[str] = None
  time: str = "24:00:00"
  gpus_per_node: int = 1
  cpus_per_task: int = 16
  log_dir: str = "slurm_logs"


def quote(arg: str) -> str:
  """Shell-quotes `arg`; a leading `~/` becomes "$HOME"/ and a `$VARIABLE` stays expandable."""
  if _VARIABLE.match(arg):
    return f'"{arg}"'
  if arg.startswith("~/"):
    return '"$HOME"' + shlex.quote(arg[1:])
  return shlex.quote(arg)


def run_command(study_dir: str, run_ids: Sequence[str], spot: str = "spot",
                recipe: str = "study") -> str:
  """`spot study run --dir DIR --only RUN_ID ...` (or `spot sweep run ...`) as one shell line."""
  only = " ".join(f"--only {quote(r)}" for r in run_ids)
  return f"{quote(spot)} {recipe} run --dir {quote(study_dir)} {only}"


def remote_command(study_dir: str, run_ids: Sequence[str], opts: LaunchOptions,
                   recipe: str = "study") -> str:
  """The line a remote machine runs: into the checkout, then the venv's `spot RECIPE run`."""
  return f"cd {quote(opts.workdir)} && " + run_command(study_dir, run_ids,
                                                        f"{opts.venv}/bin/spot", recipe)


def _summary(stages: Sequence[Sequence[Any]], study_dir: str, recipe: str) -> str:
  n = sum(len(s) for s in stages)
  return (f"# spot {recipe} plan {study_dir}: {n} unfinished run(s) in {len(stages)} stage(s); "
          "a stage's runs are independent and need only the stages above it.")


def _stage_head(i: int, stages: Sequence[Sequence[Any]]) -> str:
  kinds = ", ".join(dict.fromkeys(getattr(r, "kind", "train") for r in stages[i]))
  return f"# stage {i + 1} of {len(stages)}: {len(stages[i])} run(s) ({kinds})"


def shell_lines(stages, study_dir: str, opts: LaunchOptions, recipe: str = "study"
                ) -> list[str]:
  """One `spot study run --dir DIR --only RUN_ID` per run, each stage under a comment."""
  del opts
  lines = [_summary(stages, study_dir, recipe)]
  for i, stage in enumerate(stages):
    lines += [_stage_head(i, stages)] + [run_command(study_dir, [r.run_id], recipe=recipe)
                                         for r in stage]
  return lines


def tpu_lines(stages, study_dir: str, opts: LaunchOptions, recipe: str = "study"
              ) -> list[str]:
  """One `python tools/tpu/tpu.py ssh ... --command '...'` per run (worker 0 of a TPU VM)."""
  lines = [_summary(stages, study_dir, recipe),
           f"# each line runs one {recipe} run on TPU VM {opts.tpu_name} (zone {opts.zone}); "
           f"install spot there first: python {TPU_SCRIPT} install --name NAME --zone ZONE"]
  for i, stage in enumerate(stages):
    lines.append(_stage_head(i, stages))
    for r in stage:
      lines.append(f"python {TPU_SCRIPT} ssh --name {quote(opts.tpu_name)} --zone "
                   f"{quote(opts.zone)} --worker 0 --command "
                   f"{shlex.quote(remote_command(study_dir, [r.run_id], opts, recipe))}")
  return lines


def multinode_lines(stages, study_dir: str, opts: LaunchOptions, recipe: str = "study"
                    ) -> list[str]:
  """A bash script: per stage, each host's share of the runs over ssh, then wait for all."""
  if not opts.hosts:
    raise errors.UsageError("--launcher multinode needs the machines: --hosts HOST1,HOST2,...")
  ssh = " ".join(["ssh", *(quote(o) for o in opts.ssh_options)])
  lines = ["#!/bin/bash", _summary(stages, study_dir, recipe),
           f"# each stage's runs are dealt round-robin to {len(opts.hosts)} host(s); "
           "run with bash.", "set -euo pipefail"]
  for i, stage in enumerate(stages):
    lines += ["", _stage_head(i, stages), "pids=()"]
    for h, host in enumerate(opts.hosts):
      share = [r.run_id for r in stage[h::len(opts.hosts)]]
      if share:
        lines.append(f"{ssh} {quote(host)} "
                     f"{shlex.quote(remote_command(study_dir, share, opts, recipe))} & pids+=($!)")
    lines.append('for pid in "${pids[@]}"; do wait "$pid"; done')
  report = "spot study report" if recipe == "study" else "spot report"
  lines += ["", f"echo 'all {len(stages)} stage(s) finished; {report} {study_dir}'"]
  return lines


def _sbatch_job(i: int, stages, study_dir: str, opts: LaunchOptions, recipe: str
                ) -> list[str]:
  """The batch script of stage i: an array of one task per run, as a quoted here-document."""
  head = ["#!/bin/bash", f"#SBATCH --job-name={opts.job_name or 'spot-' + recipe}-{i + 1}",
          f"#SBATCH --array=0-{len(stages[i]) - 1}", "#SBATCH --nodes=1", "#SBATCH --ntasks=1",
          f"#SBATCH --gpus-per-node={opts.gpus_per_node}",
          f"#SBATCH --cpus-per-task={opts.cpus_per_task}", f"#SBATCH --time={opts.time}",
          f"#SBATCH --output={opts.log_dir}/%x-%A_%a.out"]
  head += [f"#SBATCH --partition={opts.partition}"] * bool(opts.partition)
  head += [f"#SBATCH --account={opts.account}"] * bool(opts.account)
  runs = ["RUNS=("] + [f"  {quote(r.run_id)}" for r in stages[i]] + [")"]
  body = ["set -euo pipefail", *runs, f"cd {quote(opts.workdir)}",
          f"exec {quote(opts.venv + '/bin/spot')} {recipe} run --dir {quote(study_dir)} "
          '--only "${RUNS[$SLURM_ARRAY_TASK_ID]}"']
  return head + body


def slurm_lines(stages, study_dir: str, opts: LaunchOptions, recipe: str = "study"
                ) -> list[str]:
  """A bash script: one `sbatch --parsable` array job per stage, chained by afterok."""
  lines = ["#!/bin/bash", _summary(stages, study_dir, recipe),
           "# one sbatch array job per stage (a task per run), each after the one before; "
           "run with bash.", "set -euo pipefail", f"mkdir -p {quote(opts.log_dir)}"]
  for i in range(len(stages)):
    after = f" --dependency=afterok:\"$stage{i}\"" if i else ""
    lines += ["", _stage_head(i, stages),
              f"stage{i + 1}=$(sbatch --parsable{after} <<'{STAGE_DELIMITER}'",
              *_sbatch_job(i, stages, study_dir, opts, recipe), STAGE_DELIMITER, ")",
              f"stage{i + 1}=${{stage{i + 1}%%;*}}"]
  jobs = " ".join(f"$stage{i + 1}" for i in range(len(stages)))
  lines += ["", f'echo "submitted stage job(s): {jobs}"']
  return lines


def jsonl_lines(stages, study_dir: str, spec: study_lib.StudySpec) -> list[str]:
  """One JSON object per unfinished run: {"run_id", "stage", "needs", "command"}."""
  return [json.dumps({"run_id": r.run_id, "stage": i, "needs": study_lib.needs(spec, r),
                      "command": run_command(study_dir, [r.run_id])})
          for i, stage in enumerate(stages) for r in stage]


RENDER = {"shell": shell_lines, "tpu": tpu_lines, "slurm": slurm_lines,
          "multinode": multinode_lines}


def render(stages: Sequence[Sequence[Any]], run_dir: str, launcher: str = "shell",
           opts: Optional[LaunchOptions] = None, recipe: str = "study") -> list[str]:
  """`stages` (lists of runs with a `run_id`, each stage after the one before) as the
  lines of `launcher`, each run started by `spot RECIPE run --dir RUN_DIR --only RUN_ID`."""
  if launcher not in RENDER:
    raise errors.UsageError(f"unknown launcher {launcher!r}; use one of {', '.join(LAUNCHERS)}.")
  return RENDER[launcher](stages, run_dir, opts or LaunchOptions(), recipe)


def plan_lines(spec: study_lib.StudySpec, study_dir: str, launcher: str = "shell",
               opts: Optional[LaunchOptions] = None) -> list[str]:
  """The unfinished runs of the study at `study_dir` for `launcher` (see the module doc)."""
  return render(study_lib.pending_stages(spec, study_dir), study_dir, launcher, opts)
