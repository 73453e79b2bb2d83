"""`spot study run|plan|report`: the task-transferability study (see docs/study.md).

    spot study run --dir DIR --source A --source B --target C --seeds 0,1 \\
        --source-steps 1000 --target-steps 1000 --embedding-step 100 -- TRAIN_FLAGS
    spot study plan --dir DIR [--format shell|jsonl]   # one command per run
    spot study run --dir DIR --only transfers/A__C/seed0   # on any machine
    spot study report DIR [--out OUT]

The study's settings are written to DIR/study.json by the first `run` or
`plan`; later commands on DIR read them (and refuse other settings).
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


def _spec_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--dir", required=True, metavar="DIR", help="the study directory (or gs://)")
  p.add_argument("--source", action="append", default=[], metavar="TASK",
                 help="a source task (repeat)")
  p.add_argument("--target", action="append", default=[], metavar="TASK",
                 help="a target task (repeat)")
  p.add_argument("--library", metavar="PATH", help="prompt library of --library-source entries")
  p.add_argument("--library-source", action="append", default=[], metavar="ENTRY",
                 help="a library entry used as a source as it is (repeat; no source run)")
  p.add_argument("--seeds", type=_seeds, default=(0,), help="comma-separated (default 0)")
  p.add_argument("--source-steps", type=int, default=1000)
  p.add_argument("--target-steps", type=int, default=1000)
  p.add_argument("--embedding-step", type=int, default=100,
                 help="the early checkpoint kept as task embedding (default %(default)s)")
  p.add_argument("--top-k", type=int, action="append", metavar="K",
                 help="k of best of top-k (repeat; default 1 3 6 9 12 15, and all)")
  p.add_argument("--weighted-k", type=int, default=3, help="top-k weighted average runs (0: off)")
  p.add_argument("--mixture-k", type=int, default=0, help="top-k mixture runs (0: off)")
  p.add_argument("--metric", choices=("avg_tokens", "per_token"), default="avg_tokens",
                 help="similarity that ranks sources for retrieval")
  p.add_argument("--score-metric", help="metric scoring a run (default: mean of its metrics)")
  p.add_argument("train_flags", nargs=argparse.REMAINDER, metavar="-- TRAIN_FLAGS",
                 help="after --: spot train flags of every run (--gin_file=..., --gin.K=V)")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  run = sub.add_parser("run", help="train every unfinished run (or --only RUN_ID)")
  _spec_arguments(run)
  run.add_argument("--only", action="append", default=[], metavar="RUN_ID",
                   help="train only this run (repeat); see `plan`")
  plan = sub.add_parser("plan", help="print one command per run, in dependency order")
  _spec_arguments(plan)
  plan.add_argument("--format", choices=("shell", "jsonl"), default="shell")
  report = sub.add_parser("report", help="collect finished runs: report.md, results.json, PNGs")
  report.add_argument("dir", metavar="DIR")
  report.add_argument("--out", metavar="OUT", help="default DIR/report")
  return p


def spec_from_args(args: argparse.Namespace):
  """The study of the command line, or DIR/study.json's when no task is given."""
  from spot.workflows import study  # pylint: disable=g-import-not-at-top
  flags = tuple(f for f in args.train_flags if f != "--")
  if not args.source and not args.library_source and not args.target and not flags:
    return study.read_spec(args.dir)
  if not (args.source or args.library_source) or not args.target:
    raise errors.UsageError("a new study needs --source TASK and --target TASK (each repeatable) "
                            "and spot train flags after --; or give only --dir of a study.")
  if not flags:
    raise errors.UsageError("a new study needs spot train flags after --, e.g. -- "
                            "--gin_file=spot/gin/models/t5_1_1_base_prompt.gin "
                            "--gin_file=spot/gin/runs/prompt_finetune.gin "
                            "--gin.INITIAL_CHECKPOINT_PATH=...")
  return study.StudySpec(
      sources=tuple(args.source), targets=tuple(args.target), seeds=args.seeds,
      source_steps=args.source_steps, target_steps=args.target_steps,
      embedding_step=args.embedding_step,
      top_ks=tuple(args.top_k) if args.top_k else study.DEFAULT_TOP_KS,
      weighted_k=args.weighted_k, mixture_k=args.mixture_k, metric=args.metric,
      score_metric=args.score_metric, train_flags=flags, library=args.library,
      library_sources=tuple(args.library_source))


def _run(args: argparse.Namespace) -> int:
  from spot.workflows import settings, study  # pylint: disable=g-import-not-at-top
  spec = spec_from_args(args)
  base = settings.from_flags(list(spec.train_flags), defaults=[
      "MODEL_DIR = 'unused'", f"MIXTURE_OR_TASK_NAME = {spec.targets[0]!r}",
      f"TRAIN_STEPS = {spec.target_steps}"])
  study.run_study(base, spec, args.dir, only=args.only,
                  log=lambda m: print(m, flush=True))
  return 0


def _plan(args: argparse.Namespace) -> int:
  from spot import io as spot_io  # pylint: disable=g-import-not-at-top
  from spot.workflows import study  # pylint: disable=g-import-not-at-top
  spec = study.write_spec(args.dir, spec_from_args(args))
  for line in study.plan_commands(spec, spot_io.absolute(args.dir), fmt=args.format):
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


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  return {"run": _run, "plan": _plan, "report": _report}[args.command](args)
