"""`spot library`: the library's commands plus the two that train, embed and transfer.

The library package trains nothing; this module adds its training commands
to the library's parser (`spot.library.cli.main(add_commands=...)`) and runs
them through the recipes: the target's `spot train` flags (after `--`) are
parsed once into a `TrainSettings`, from which each run is derived.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Optional, Sequence, TextIO

from spot import errors
from spot.library import cli as library_cli
from spot.library import fs, retrieval, similarity, sources
from spot.library.entry import encode_array
from spot.library.errors import LibraryUsageError
from spot.library.store import PromptLibrary

MIXTURE_CAP = 2**19  # T5's examples-proportional limit (spot.tasks.mixtures.DEFAULT_CAP)
_positive = library_cli._positive  # pylint: disable=protected-access
_shape = library_cli._shape  # pylint: disable=protected-access
_table = library_cli._table  # pylint: disable=protected-access


def add_commands(command: library_cli.AddCommand) -> None:
  """Adds `embed` and `transfer` to the `spot library` parser."""
  p = command("embed", "compute a task embedding: train a prompt briefly from a fixed init, "
              "then optionally rank the library against it")
  p.add_argument("--steps", type=_positive, default=1000,
                 help="training steps of the early checkpoint (default %(default)s)")
  p.add_argument("--seed", type=int, default=0, help="the fixed seed shared by all embeddings")
  p.add_argument("--out", metavar="FILE.npy", help="write the embedding here")
  p.add_argument("--model-dir", metavar="DIR", help="keep the short run here")
  p.add_argument("--query", action="store_true", help="also rank the library entries")
  p.add_argument("--model", help="with --query: base model of the entries")
  p.add_argument("--top-k", type=_positive, default=5, metavar="K")
  p.add_argument("--metric", choices=similarity.METRICS, default="avg_tokens")
  p.add_argument("train_flags", nargs=argparse.REMAINDER, metavar="-- TRAIN_FLAGS",
                 help="after --: spot train flags (--gin_file=..., --gin.KEY=VALUE)")

  p = command("transfer", "train target prompt(s) from retrieved source prompts (SPoT "
              "targeted): top1, weighted_average, best_of_top_k or mixture")
  p.add_argument("--embedding", required=True, metavar="FILE.npy",
                 help="the target task's embedding (spot library embed --out)")
  p.add_argument("--mode", choices=("top1", "weighted_average", "best_of_top_k", "mixture"),
                 default="top1")
  p.add_argument("--out-dir", required=True, metavar="DIR", help="model_dirs go under DIR")
  p.add_argument("--model", help="base model of the entries (default: the only one)")
  p.add_argument("--top-k", type=_positive, default=3, metavar="K")
  p.add_argument("--metric", choices=similarity.METRICS, default="avg_tokens")
  p.add_argument("--prompt-length", type=_positive, metavar="N",
                 help=library_cli._PROMPT_LENGTH_HELP)  # pylint: disable=protected-access
  p.add_argument("--mixture-cap", type=_positive, default=MIXTURE_CAP, metavar="K",
                 help="mixture mode: examples-proportional rates min(train examples, K) "
                 "(default %(default)s, T5's limit)")
  p.add_argument("--best-metric", help="validation metric that picks checkpoints and, for "
                 "best_of_top_k, the run (e.g. accuracy)")
  p.add_argument("--target-task", help="the target's SeqIO task (mixture mode)")
  p.add_argument("train_flags", nargs=argparse.REMAINDER, metavar="-- TRAIN_FLAGS",
                 help="after --: spot train flags of the target run")


def _train_flags(args: argparse.Namespace) -> list[str]:
  return [f for f in args.train_flags if f != "--"]


def _embed(lib: PromptLibrary, args: argparse.Namespace) -> Any:
  from spot.workflows import embedding  # pylint: disable=g-import-not-at-top  (JAX, SeqIO)
  flags = _train_flags(args)
  if not flags:
    raise LibraryUsageError("embed needs spot train flags after --, e.g. -- "
                            "--gin_file=spot/gin/models/t5_1_1_base_prompt.gin "
                            "--gin_file=spot/gin/runs/prompt_finetune.gin "
                            "--gin.MIXTURE_OR_TASK_NAME=... --gin.INITIAL_CHECKPOINT_PATH=...")
  if not (args.out or args.query):
    raise LibraryUsageError("embed writes nothing without --out FILE.npy or --query.")
  emb = embedding.embedding_from_flags(flags, args.steps, args.model_dir, args.seed)
  payload: dict[str, Any] = {"shape": list(emb.shape), "steps": args.steps}
  lines = [f"task embedding {_shape(emb.shape)} after {args.steps} steps"]
  if args.out:
    fs.write_bytes(fs.path(args.out), encode_array(emb), local=fs.is_local(args.out))
    payload["out"] = args.out
    lines.append(f"wrote {args.out}")
  if args.query:
    ranked = retrieval.rank(lib, emb, model=args.model, metric=args.metric, top_k=args.top_k)
    payload["ranking"] = [{"name": n, "score": s} for n, s in ranked]
    lines.append(_table(("RANK", "SCORE", "NAME"),
                        [(i + 1, f"{s:.4f}", n) for i, (n, s) in enumerate(ranked)]))
  return payload, "\n".join(lines)


def _transfer(lib: PromptLibrary, args: argparse.Namespace) -> Any:
  from spot.workflows import settings, targeted  # pylint: disable=g-import-not-at-top
  flags = _train_flags(args)
  if not flags:
    raise LibraryUsageError("transfer needs the target's spot train flags after --.")
  query = sources.read_npy(args.embedding, "--embedding")
  # Each run gets its own model_dir (and, in mixture mode, its task): placeholders here.
  defaults = ["MODEL_DIR = 'unused'"]
  if args.mode == "mixture" and args.target_task:
    defaults.append(f"MIXTURE_OR_TASK_NAME = {args.target_task!r}")
  target = settings.from_flags(flags, defaults=defaults)
  try:
    runs, chosen = targeted.run_transfer(
        lib, target, query, mode=args.mode, out_dir=args.out_dir, model=args.model,
        top_k=args.top_k, metric=args.metric, best_metric=args.best_metric,
        target_task=args.target_task, prompt_length=args.prompt_length,
        mixture_cap=args.mixture_cap)
  except errors.SpotError:
    raise
  except ValueError as e:
    raise LibraryUsageError(str(e)) from e
  fmt = lambda v: "-" if v is None else f"{v:.4f}"
  rows = [(r.source, fmt(r.similarity), r.best_step if r.best_step is not None else "-",
           fmt(r.best_value), r.model_dir) for r in runs]
  text = _table(("SOURCE", "SIMILARITY", "BEST_STEP", "BEST", "MODEL_DIR"), rows)
  payload = {"mode": args.mode, "runs": [dataclasses.asdict(r) for r in runs],
             "chosen": dataclasses.asdict(chosen)}
  lines = [text, f"chosen: {chosen.source} ({chosen.model_dir})"]
  if chosen.rates:
    lines.append("mixture rates (examples-proportional): " + ", ".join(
        f"{t} {r:g}" for t, r in chosen.rates.items()))
  return payload, "\n".join(lines)


COMMANDS = {"embed": _embed, "transfer": _transfer}


def main(argv: Optional[Sequence[str]] = None, *, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None) -> int:
  """Runs `spot library ...` with the training commands; returns the exit status."""
  return library_cli.main(argv, stdout=stdout, stderr=stderr, add_commands=[add_commands],
                          extra_commands=COMMANDS)
