"""`spot study run|plan|report`: the task-transferability study (see docs/study.md).

    spot study run --dir DIR --source A --source B --target C --seeds 0,1 \\
        --source-steps 1000 --target-steps 1000 --embedding-step 100 -- TRAIN_FLAGS
    spot study run --dir DIR --gin_file=spot/gin/study/glue_small.gin [--gin.NAME=VALUE]
    spot study plan --dir DIR [--launcher shell|tpu|slurm|multinode] [--format jsonl]
    spot study run --dir DIR --only transfers/A__C/seed0   # on any machine
    spot study report DIR [--out OUT]

The grid comes from a study gin file (`study_config`, spot.workflows.study_gin)
and from flags; a flag given on the command line overrides the gin file's value,
and spot train flags after `--` come after the gin file's train flags (so they
win too). The study's settings are written to DIR/study.json by the first `run`
or `plan`; later commands on DIR read them (and refuse other settings).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from spot import errors

PROG = "spot study"


def _seeds(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(s) for s in text.split(",") if s.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"--seeds {text!r}: give integers, e.g. 0,1,2") from None


# (StudySpec field, argparse dest): the grid flags, each overriding a study gin file.
_FIELDS = (("sources", "source"), ("targets", "target"), ("library", "library"),
           ("library_sources", "library_source"), ("seeds", "seeds"),
           ("source_steps", "source_steps"), ("target_steps", "target_steps"),
           ("embedding_step", "embedding_step"), ("top_ks", "top_k"),
           ("weighted_k", "weighted_k"), ("mixture_k", "mixture_k"), ("metric", "metric"),
           ("score_metric", "score_metric"))


def _spec_arguments(p: argparse.ArgumentParser) -> None:
  """The study's grid flags; None (not given) leaves the gin file's value or the default."""
  p.add_argument("--dir", required=True, metavar="DIR", help="the study directory (or gs://)")
  p.add_argument("--gin_file", action="append", default=[],
                 help="a study gin file binding study_config (repeatable)")
  p.add_argument("--gin_bindings", action="append", default=[],
                 help="a study gin binding; --gin.NAME=VALUE before -- is one too")
  p.add_argument("--source", action="append", metavar="TASK", help="a source task (repeat)")
  p.add_argument("--target", action="append", metavar="TASK", help="a target task (repeat)")
  p.add_argument("--library", metavar="PATH", help="prompt library of --library-source entries")
  p.add_argument("--library-source", action="append", metavar="ENTRY",
                 help="a library entry used as a source as it is (repeat; no source run)")
  p.add_argument("--seeds", type=_seeds, help="comma-separated (default 0)")
  p.add_argument("--source-steps", type=int, help="default 1000")
  p.add_argument("--target-steps", type=int, help="default 1000")
  p.add_argument("--embedding-step", type=int,
                 help="the early checkpoint kept as task embedding (default 100)")
  p.add_argument("--top-k", type=int, action="append", metavar="K",
                 help="k of best of top-k (repeat; default 1 3 6 9 12 15, and all)")
  p.add_argument("--weighted-k", type=int, help="top-k weighted average runs (default 3; 0: off)")
  p.add_argument("--mixture-k", type=int, help="top-k mixture runs (default 0: off)")
  p.add_argument("--metric", choices=("avg_tokens", "per_token"),
                 help="similarity that ranks sources for retrieval (default avg_tokens)")
  p.add_argument("--score-metric", help="metric scoring a run (default: mean of its metrics)")
  p.add_argument("train_flags", nargs=argparse.REMAINDER, metavar="-- TRAIN_FLAGS",
                 help="after --: spot train flags of every run (--gin_file=..., --gin.K=V)")


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
  """--launcher and its settings (`study_launch.LaunchOptions`), for `spot study|sweep plan`."""
  from spot.workflows import study_launch  # pylint: disable=g-import-not-at-top
  d = study_launch.LaunchOptions()
  p.add_argument("--launcher", choices=study_launch.LAUNCHERS, default="shell",
                 help="the command lines' form (default shell; see docs/study.md)")
  p.add_argument("--venv", default=d.venv, help="remote virtualenv (default %(default)s)")
  p.add_argument("--workdir", default=d.workdir, help="remote checkout (default %(default)s)")
  p.add_argument("--tpu-name", default=d.tpu_name, help="tpu: the TPU VM (default %(default)s)")
  p.add_argument("--zone", default=d.zone, help="tpu: its zone (default %(default)s)")
  p.add_argument("--hosts", default="", help="multinode: comma-separated machines")
  p.add_argument("--ssh-option", action="append", default=[], help="multinode: ssh option")
  p.add_argument("--job-name", default=d.job_name,
                 help="slurm: job name prefix (default spot-study / spot-sweep)")
  p.add_argument("--partition", help="slurm partition")
  p.add_argument("--account", help="slurm account")
  p.add_argument("--time", default=d.time, help="slurm: time limit of one run")
  p.add_argument("--gpus-per-node", type=int, default=d.gpus_per_node, help="slurm: GPUs per run")
  p.add_argument("--log-dir", default=d.log_dir, help="slurm: where the logs go")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  run = sub.add_parser("run", help="train every unfinished run (or --only RUN_ID)")
  _spec_arguments(run)
  run.add_argument("--only", action="append", default=[], metavar="RUN_ID",
                   help="train only this run (repeat); see `plan`")
  plan = sub.add_parser("plan", help="print the unfinished runs as commands, in stages")
  _spec_arguments(plan)
  add_launch_arguments(plan)
  plan.add_argument("--format", choices=("shell", "jsonl"), default="shell",
                    help="shell: the --launcher's lines; jsonl: one {run_id, stage, needs, "
                    "command} object per unfinished run")
  report = sub.add_parser("report", help="collect finished runs: report.md, results.json, PNGs")
  report.add_argument("dir", metavar="DIR")
  report.add_argument("--out", metavar="OUT", help="default DIR/report")
  return p


def spec_from_args(args: argparse.Namespace):
  """The study of the gin files and flags (flags win), or DIR/study.json's when none is given."""
  from spot.workflows import study  # pylint: disable=g-import-not-at-top
  flags = tuple(f for f in args.train_flags if f != "--")
  given = {field: getattr(args, dest) for field, dest in _FIELDS
           if getattr(args, dest) is not None}
  if not (args.gin_file or args.gin_bindings or given or flags):
    return study.read_spec(args.dir)
  values = {}
  if args.gin_file or args.gin_bindings:
    from spot.workflows import study_gin  # pylint: disable=g-import-not-at-top
    values = study_gin.values_from_gin(args.gin_file, args.gin_bindings)
  values.update({k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
  values["train_flags"] = tuple(values.get("train_flags", ())) + flags
  if not (values.get("sources") or values.get("library_sources")) or not values.get("targets"):
    raise errors.UsageError("a new study needs --source TASK and --target TASK (each repeatable) "
                            "and spot train flags after --, or a study gin file (--gin_file="
                            "spot/gin/study/glue_small.gin); or give only --dir of a study.")
  if not values["train_flags"]:
    raise errors.UsageError("a new study needs spot train flags after --, e.g. -- "
                            "--gin_file=spot/gin/models/t5_1_1_base_prompt.gin "
                            "--gin_file=spot/gin/runs/prompt_finetune.gin "
                            "--gin.INITIAL_CHECKPOINT_PATH=... (or study_config.train_gin_files "
                            "in a study gin file)")
  return study.StudySpec(**values)


def _run(args: argparse.Namespace) -> int:
  from spot.workflows import settings, study  # pylint: disable=g-import-not-at-top
  spec = spec_from_args(args)
  base = settings.from_flags(list(spec.train_flags), defaults=[
      "MODEL_DIR = 'unused'", f"MIXTURE_OR_TASK_NAME = {spec.targets[0]!r}",
      f"TRAIN_STEPS = {spec.target_steps}"])
  study.run_study(base, spec, args.dir, only=args.only,
                  log=lambda m: print(m, flush=True))
  return 0


def launch_options(args: argparse.Namespace):
  """The LaunchOptions of `add_launch_arguments`' flags."""
  from spot.workflows import study_launch  # pylint: disable=g-import-not-at-top
  return study_launch.LaunchOptions(
      venv=args.venv, workdir=args.workdir, tpu_name=args.tpu_name, zone=args.zone,
      hosts=tuple(h for h in args.hosts.split(",") if h), ssh_options=tuple(args.ssh_option),
      job_name=args.job_name, partition=args.partition, account=args.account, time=args.time,
      gpus_per_node=args.gpus_per_node, log_dir=args.log_dir)


def _plan(args: argparse.Namespace) -> int:
  from spot import io as spot_io  # pylint: disable=g-import-not-at-top
  from spot.workflows import study, study_launch  # pylint: disable=g-import-not-at-top
  spec = study.write_spec(args.dir, spec_from_args(args))
  study_dir = spot_io.absolute(args.dir)
  if args.format == "jsonl":
    lines = study_launch.jsonl_lines(study.pending_stages(spec, study_dir), study_dir, spec)
  else:
    lines = study_launch.plan_lines(spec, study_dir, args.launcher, launch_options(args))
  for line in lines:
    print(line)
  return 0


def _report(args: argparse.Namespace) -> int:
  from spot.workflows import study_report  # pylint: disable=g-import-not-at-top
  r = study_report.write_report(args.dir, args.out)
  out = args.out or f"{args.dir.rstrip('/')}/report"
  print(study_report.retrieval_table(r))
  print(study_report.headline(r))
  if r["missing"]:
    print(f"partial: {len(r['missing'])} of {r['runs']['total']} run(s) not finished, e.g. "
          f"{r['missing'][0]}")
  print(f"wrote {out}/{study_report.REPORT_MD}, {study_report.RESULTS_JSON} and plots/")
  return 0


def study_argv(argv: Sequence[str]) -> list[str]:
  """`--gin.NAME=VALUE` before `--` as the study's gin binding; spot train flags after it kept."""
  argv = list(argv)
  cut = argv.index("--") if "--" in argv else len(argv)
  if not any(a.startswith("--gin.") for a in argv[:cut]):
    return argv
  from spot.train import cli  # pylint: disable=g-import-not-at-top
  return cli.rewrite_gin_args(argv[:cut]) + argv[cut:]


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(study_argv(sys.argv[1:] if argv is None else argv))
  return {"run": _run, "plan": _plan, "report": _report}[args.command](args)
