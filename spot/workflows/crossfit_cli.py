"""`spot crossfit upstream|downstream|report`: a CrossFit-style study (docs/protocols.md).

    spot crossfit upstream --dir DIR --task A --task B --algorithm multitask --steps 1000 \\
        -- TRAIN_FLAGS
    spot crossfit upstream --dir DIR --task A --task B --algorithm fomaml --steps 1000 \\
        --inner-lr 0.1 --outer-lr 0.1 --inner-steps 1 --inner-batch-size 8 \\
        --tasks-per-meta-batch 2 -- TRAIN_FLAGS
    spot crossfit downstream --dir DIR --task C --lr 0.3 --lr 1.0 --batch-size 8 \\
        --shots 16 --seeds 0,1,2 --steps 500 -- TRAIN_FLAGS
    spot crossfit report DIR [--out OUT]

Upstream trains TRAINABLE only (a prompt or a PEFT method; the base stays
frozen) and saves it as the run DIR/upstream. Downstream trains every grid
cell (DIR/downstream/...) from the upstream prompt and, as the baseline, from
the run's own initialisation; finished cells are skipped. The report keeps the
best cell per task, K and seed by dev score and writes ARG and the tunable ratio.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from spot import errors

PROG = "spot crossfit"


def _ints(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(s) for s in text.split(",") if s.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: give integers, e.g. 0,1,2") from None


def _common(p: argparse.ArgumentParser) -> None:
  p.add_argument("--dir", required=True, metavar="DIR", help="the study directory (or gs://)")
  p.add_argument("--task", action="append", default=[], metavar="TASK",
                 help="a SeqIO task (repeat)")
  p.add_argument("--steps", type=int, default=1000, help="training (or outer) steps")
  p.add_argument("train_flags", nargs=argparse.REMAINDER, metavar="-- TRAIN_FLAGS",
                 help="after --: spot train flags (--gin_file=..., --gin.K=V)")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  up = sub.add_parser("upstream", help="train the upstream prompt or PEFT module")
  _common(up)
  up.add_argument("--algorithm", choices=("multitask", "fomaml"), default="multitask")
  up.add_argument("--seed", type=int, default=0)
  up.add_argument("--inner-lr", type=float, default=0.1, help="fomaml: inner SGD rate")
  up.add_argument("--outer-lr", type=float, default=0.1, help="fomaml: outer Adam rate")
  up.add_argument("--inner-steps", type=int, default=1, help="fomaml: SGD steps per task")
  up.add_argument("--inner-batch-size", type=int, default=8,
                  help="fomaml: examples per support (and query) batch")
  up.add_argument("--tasks-per-meta-batch", type=int, default=2, help="fomaml: tasks per step")
  down = sub.add_parser("downstream", help="train the few-shot grid (finished cells skipped)")
  _common(down)
  down.add_argument("--lr", type=float, action="append", default=[], metavar="LR",
                    help="a learning rate of the grid (repeat)")
  down.add_argument("--batch-size", type=int, action="append", default=[], metavar="B",
                    help="a batch size of the grid (repeat)")
  down.add_argument("--shots", type=_ints, default=(16,), help="K values, comma-separated")
  down.add_argument("--seeds", type=_ints, default=(0,), help="comma-separated (default 0)")
  down.add_argument("--pool", type=int, default=None,
                    help="train examples the K are drawn from (default 10000)")
  down.add_argument("--upstream", metavar="MODEL_DIR", help="upstream run (default DIR/upstream)")
  down.add_argument("--score-metric", help="metric scoring a cell (default: mean of its metrics)")
  report = sub.add_parser("report", help="best cells, ARG, tunable ratio: crossfit.md / .json")
  report.add_argument("dir", metavar="DIR")
  report.add_argument("--out", metavar="OUT", help="default DIR/report")
  return p


def _flags(args: argparse.Namespace) -> tuple[str, ...]:
  return tuple(f for f in args.train_flags if f != "--")


def _upstream(args: argparse.Namespace) -> int:
  from spot.workflows import crossfit, settings  # pylint: disable=g-import-not-at-top
  flags = _flags(args)
  if not args.task or not flags:
    raise errors.UsageError("upstream needs --task TASK (repeat) and spot train flags after --, "
                            "e.g. -- --gin_file=spot/gin/models/t5_1_1_base_prompt.gin "
                            "--gin_file=spot/gin/runs/prompt_finetune.gin ...")
  spec = crossfit.UpstreamSpec(
      tasks=tuple(args.task), algorithm=args.algorithm, steps=args.steps, seed=args.seed,
      inner_lr=args.inner_lr, outer_lr=args.outer_lr, inner_steps=args.inner_steps,
      inner_batch_size=args.inner_batch_size, tasks_per_meta_batch=args.tasks_per_meta_batch)
  base = settings.from_flags(list(flags), defaults=[
      "MODEL_DIR = 'unused'", f"MIXTURE_OR_TASK_NAME = {spec.tasks[0]!r}",
      f"TRAIN_STEPS = {spec.steps}"])
  model_dir = crossfit.run_upstream(base, spec, args.dir, log=lambda m: print(m, flush=True))
  print(f"upstream run: {model_dir}")
  return 0


def _downstream(args: argparse.Namespace) -> int:
  from spot.workflows import crossfit, fewshot  # pylint: disable=g-import-not-at-top
  flags = _flags(args)
  if not args.task and not flags:
    spec = crossfit.read_downstream_spec(args.dir)
  else:
    if not args.task or not flags or not args.lr or not args.batch_size:
      raise errors.UsageError("a new downstream grid needs --task, --lr and --batch-size (each "
                              "repeatable) and spot train flags after --; or give only --dir.")
    spec = crossfit.DownstreamSpec(
        tasks=tuple(args.task), learning_rates=tuple(args.lr), batch_sizes=tuple(args.batch_size),
        shots=tuple(args.shots), seeds=tuple(args.seeds), steps=args.steps,
        pool=args.pool or fewshot.DEFAULT_POOL, score_metric=args.score_metric,
        train_flags=flags, upstream=args.upstream)
  crossfit.run_downstream(spec, args.dir, log=lambda m: print(m, flush=True))
  return 0


def _report(args: argparse.Namespace) -> int:
  from spot.workflows import crossfit  # pylint: disable=g-import-not-at-top
  r = crossfit.write_report(args.dir, args.out)
  print(crossfit.markdown(r), end="")
  out = args.out or f"{args.dir.rstrip('/')}/report"
  print(f"wrote {out}/{crossfit.REPORT_MD} and {crossfit.RESULTS_JSON}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  return {"upstream": _upstream, "downstream": _downstream, "report": _report}[args.command](args)
