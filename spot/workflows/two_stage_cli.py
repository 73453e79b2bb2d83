"""`spot two-stage`: a parameter-efficient module first, then the whole model (docs/protocols.md).

    spot two-stage --dir DIR --task TASK --stage1-steps 1000 --stage2-steps 1000 \\
        [--stage2-flag=--gin.LEARNING_RATE=1e-4 ...] -- TRAIN_FLAGS

TRAIN_FLAGS are a prompt run's (models/*_prompt.gin) or a LoRA / (IA)3 run's
(peft/lora.gin, peft/ia3.gin); stage 2 trains every parameter from stage 1's
result. Both stages' scores go to DIR/two_stage.md and two_stage.json.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from spot import errors

PROG = "spot two-stage"


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  p.add_argument("--dir", required=True, metavar="DIR", help="output directory (or gs://)")
  p.add_argument("--task", required=True, metavar="TASK", help="the SeqIO task of both stages")
  p.add_argument("--stage1-steps", type=int, default=1000)
  p.add_argument("--stage2-steps", type=int, default=1000)
  p.add_argument("--stage2-flag", action="append", default=[], metavar="FLAG",
                 help="a spot train flag of stage 2 only, e.g. "
                      "--stage2-flag=--gin.LEARNING_RATE=1e-4 (repeat)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--score-metric", help="metric scoring a stage (default: mean of its metrics)")
  p.add_argument("train_flags", nargs=argparse.REMAINDER, metavar="-- TRAIN_FLAGS",
                 help="after --: spot train flags of stage 1 (and stage 2)")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  from spot.workflows import two_stage  # pylint: disable=g-import-not-at-top
  args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  flags = tuple(f for f in args.train_flags if f != "--")
  if not flags:
    raise errors.UsageError("two-stage needs spot train flags after --, e.g. -- "
                            "--gin_file=spot/gin/models/t5_1_1_base_prompt.gin "
                            "--gin_file=spot/gin/runs/prompt_finetune.gin ...")
  spec = two_stage.TwoStageSpec(task=args.task, stage1_steps=args.stage1_steps,
                                stage2_steps=args.stage2_steps, train_flags=flags,
                                stage2_flags=tuple(args.stage2_flag), seed=args.seed,
                                score_metric=args.score_metric)
  r = two_stage.run_two_stage(spec, args.dir, log=lambda m: print(m, flush=True))
  print(two_stage.markdown(r), end="")
  return 0
