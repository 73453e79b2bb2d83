"""`spot sweep run|plan`: one method over N seeds, each run its own model_dir.

    spot sweep run --dir DIR --seeds 0,1,2 [--vary both|init|data] -- TRAIN_FLAGS
    spot sweep run --dir DIR --num-seeds 5 -- TRAIN_FLAGS
    spot sweep plan --dir DIR [--format shell|jsonl]   # a `spot train` line per unfinished run
    spot sweep plan --dir DIR --launcher tpu|slurm|multinode [launcher flags]
    spot sweep run --dir DIR --only seed_1             # one run, on any machine

The sweep's settings are written to DIR/sweep.json by the first `run` or
`plan`; later commands on DIR read them (and refuse other settings). See
docs/protocols.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from spot import errors
from spot.workflows import study_cli

PROG = "spot sweep"


def _seeds(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(s) for s in text.split(",") if s.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"--seeds {text!r}: give integers, e.g. 0,1,2") from None


def _spec_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--dir", required=True, metavar="DIR", help="the sweep directory (or gs://)")
  p.add_argument("--seeds", type=_seeds, help="comma-separated seeds, e.g. 0,1,2")
  p.add_argument("--num-seeds", type=int, metavar="N", help="seeds 0..N-1 (or from --first-seed)")
  p.add_argument("--first-seed", type=int, default=0, metavar="S",
                 help="with --num-seeds: the first seed (default %(default)s)")
  p.add_argument("--vary", choices=("both", "init", "data"), default="both",
                 help="both: SEED=INIT_SEED=DATA_SEED; init / data: only that seed varies, the "
                 "other stays --fixed-seed (default %(default)s)")
  p.add_argument("--fixed-seed", type=int, default=0, metavar="S",
                 help="with --vary init|data: the seed that stays (default %(default)s)")
  p.add_argument("train_flags", nargs=argparse.REMAINDER, metavar="-- TRAIN_FLAGS",
                 help="after --: spot train flags of every run (--gin_file=..., --gin.K=V)")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  run = sub.add_parser("run", help="train every unfinished run (or --only RUN_ID)")
  _spec_arguments(run)
  run.add_argument("--only", action="append", default=[], metavar="RUN_ID",
                   help="train only this run (repeat); see `plan`")
  plan = sub.add_parser("plan", help="print the unfinished runs as commands")
  _spec_arguments(plan)
  study_cli.add_launch_arguments(plan)
  plan.add_argument("--format", choices=("shell", "jsonl"), default="shell",
                    help="with --launcher shell: a `spot train` line per run (shell) or a "
                    "{run_id, seed, init_seed, data_seed, command} object (jsonl)")
  plan.add_argument("--prog", default="spot train",
                    help="with --launcher shell: the command the lines start with "
                    "(e.g. 't5x train')")
  return p


def spec_from_args(args: argparse.Namespace):
  """The sweep of the command line, or DIR/sweep.json's when neither seeds nor flags are given."""
  from spot.workflows import sweep  # pylint: disable=g-import-not-at-top
  flags = tuple(f for f in args.train_flags if f != "--")
  if not args.seeds and args.num_seeds is None and not flags:
    return sweep.read_spec(args.dir)
  if not flags:
    raise errors.UsageError("a new sweep needs spot train flags after --, e.g. -- "
                            "--gin_file=spot/gin/models/t5_1_1_base_prompt.gin "
                            "--gin_file=spot/gin/runs/prompt_finetune.gin "
                            "--gin.MIXTURE_OR_TASK_NAME=... --gin.INITIAL_CHECKPOINT_PATH=...")
  seeds = sweep.seeds_from(args.seeds, args.num_seeds, args.first_seed)
  return sweep.SweepSpec(seeds=seeds, vary=args.vary, fixed_seed=args.fixed_seed,
                         train_flags=flags)


def _run(args: argparse.Namespace) -> int:
  from spot.workflows import settings, sweep  # pylint: disable=g-import-not-at-top
  spec = spec_from_args(args)
  base = settings.from_flags(list(spec.train_flags), defaults=["MODEL_DIR = 'unused'"])
  sweep.run_sweep(base, spec, args.dir, only=args.only, log=lambda m: print(m, flush=True))
  return 0


def _plan(args: argparse.Namespace) -> int:
  from spot import io as spot_io  # pylint: disable=g-import-not-at-top
  from spot.workflows import sweep  # pylint: disable=g-import-not-at-top
  from spot.workflows import study_launch  # pylint: disable=g-import-not-at-top
  spec = sweep.write_spec(args.dir, spec_from_args(args))
  sweep_dir = spot_io.absolute(args.dir)
  pending = sweep.pending_runs(spec, sweep_dir)
  if args.launcher == "shell":
    if args.format == "shell":
      print(f"# spot sweep plan {sweep_dir}: {len(pending)} of {len(spec.seeds)} run(s) "
            "unfinished; each line trains (or resumes) one run on any machine.")
    lines = sweep.plan_commands(spec, sweep_dir, prog=args.prog, fmt=args.format, runs=pending)
  else:
    lines = study_launch.render([pending] if pending else [], sweep_dir, args.launcher,
                                study_cli.launch_options(args), recipe="sweep")
  for line in lines:
    print(line)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  return {"run": _run, "plan": _plan}[args.command](args)
