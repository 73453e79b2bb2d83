"""Command-line entry points: `spot <command>` and the T5X-compatible `t5x <command>`.

Each command lives in its own module exposing `main(argv: list[str]) -> int`;
this file only dispatches, importing the module lazily so that `spot --help`
stays fast and one command's heavy imports do not slow another. A failure is
printed as one line and mapped to an exit code by `spot.errors`; `--debug`
(anywhere on the line) or `SPOT_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional, Sequence

from spot import errors, runtime

# command -> (module, one-line help)
SPOT_COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("spot.train.cli", "train a prompt (or a model) from gin files"),
    "eval": ("spot.train.cli", "evaluate a checkpoint on a task's SeqIO metrics"),
    "infer": ("spot.train.cli", "write predictions as JSONL"),
    "library": ("spot.workflows.cli", "the prompt library: add, list, show, query, ..."),
    "xgen": ("spot.xgen.cli", "xGen scoring (SP-ROUGE, LID, ASCII) and reports"),
    "report": ("spot.report", "turn finished runs into the papers' tables"),
    "study": ("spot.workflows.study_cli", "the transferability study: run, plan, report"),
    "sweep": ("spot.workflows.sweep_cli", "one method over N seeds: run, plan"),
    "crossfit": ("spot.workflows.crossfit_cli", "CrossFit-style upstream, few-shot grid, ARG"),
    "two-stage": ("spot.workflows.two_stage_cli", "a PEFT module, then the whole model from it"),
    "demo": ("spot.demo", "the end-to-end demo on a tiny model, on CPU"),
    "checkpoint": ("spot.checkpoints.cli", "inspect or convert T5X / Hugging Face checkpoints"),
    "serve": ("spot.serve.cli", "serve every library prompt on one frozen model over HTTP"),
}
T5X_COMMANDS = ("train", "eval", "infer")


def _usage(prog: str, commands: Sequence[str]) -> str:
  lines = [f"usage: {prog} <command> [args]", "", "commands:"]
  for name in commands:
    lines.append(f"  {name:<11} {SPOT_COMMANDS[name][1]}")
  return "\n".join(lines)


def _dispatch(prog: str, commands: Sequence[str], argv: Optional[Sequence[str]]) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--debug" in argv:  # anywhere on the line: show tracebacks (as SPOT_DEBUG=1)
    argv = [a for a in argv if a != "--debug"]
    os.environ["SPOT_DEBUG"] = "1"
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage(prog, commands))
    return 0 if argv else 2
  name, rest = argv[0], argv[1:]
  if name not in commands:
    print(f"{prog}: unknown command {name!r}.\n\n{_usage(prog, commands)}", file=sys.stderr)
    return 2
  # Before any JAX import: SPOT_HOST_MALLOC=tuned|auto keeps XLA's CPU scratch mapped.
  runtime.configure_host_memory()

  def run() -> Optional[int]:
    module = importlib.import_module(SPOT_COMMANDS[name][0])
    if name in T5X_COMMANDS and module.__name__ == "spot.train.cli":
      return module.main(rest, mode=name, prog=f"{prog} {name}")
    return module.main(rest)

  # Every failure is one line naming the input and the fix (spot.errors).
  return errors.run_cli(f"{prog} {name}", run)


def spot_main(argv: Optional[Sequence[str]] = None) -> int:
  return _dispatch("spot", list(SPOT_COMMANDS), argv)


def t5x_main(argv: Optional[Sequence[str]] = None) -> int:
  return _dispatch("t5x", T5X_COMMANDS, argv)


if __name__ == "__main__":
  sys.exit(spot_main())
