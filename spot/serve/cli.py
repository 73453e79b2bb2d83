"""`spot serve`: one frozen base model answers every library prompt over HTTP.

    spot serve --base CHECKPOINT --vocabulary SPM --library LIB [--model NAME]
               [--host 127.0.0.1] [--port 8000] [--max-batch N] [--max-wait-ms T]

Loads the base model, compiles every batch shape, then serves until
interrupted. See docs/serving.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from spot import errors


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="spot serve", description=__doc__.split("\n\n")[0])
  p.add_argument("--base", required=True,
                 help="the frozen base model's T5X checkpoint (or 'random' with --model)")
  p.add_argument("--vocabulary", required=True, help="the base model's SentencePiece model")
  p.add_argument("--library", required=True, help="the prompt library to serve")
  p.add_argument("--model", default=None,
                 help="the base model's library name (default: from the checkpoint's shapes, "
                      "e.g. t5_1_1_tiny); only its entries are served")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--max-batch", type=int, default=32, help="examples per batch")
  p.add_argument("--max-wait-ms", type=float, default=5.0,
                 help="the longest an example waits for its batch to fill")
  p.add_argument("--max-queue", type=int, default=1024,
                 help="queued examples before requests get 503")
  p.add_argument("--max-input-length", type=int, default=512,
                 help="input tokens (with EOS); longer inputs get 413 unless truncated")
  p.add_argument("--max-target-length", type=int, default=32,
                 help="the longest /v1/score target in tokens (with EOS)")
  p.add_argument("--max-decode-length", type=int, default=32,
                 help="the default (and compiled) decoding max_length")
  p.add_argument("--cache-mb", type=float, default=256.0, help="prompt cache budget in MiB")
  p.add_argument("--one-prompt-per-batch", action="store_true",
                 help="never mix prompts in a batch (for comparison benchmarks)")
  p.add_argument("--no-warm-up", action="store_true",
                 help="compile shapes on first use instead of at start-up")
  return p


def build_service(args: argparse.Namespace):
  """The `Service` of parsed `spot serve` arguments (base loaded, shapes compiled)."""
  from spot.library import PromptLibrary
  from spot.serve import engine as engine_lib
  from spot.serve.cache import PromptCache
  from spot.serve.service import Service
  library = PromptLibrary(args.library)
  if not library.exists():
    raise errors.MissingInputError(
        f"--library={args.library!r} holds no prompt library; create one with spot library "
        f"--library {args.library} add NAME --prompt FILE.npy --model MODEL.")
  for flag, value in (("--max-wait-ms", args.max_wait_ms), ("--max-queue", args.max_queue),
                      ("--cache-mb", args.cache_mb), ("--max-decode-length",
                                                      args.max_decode_length)):
    if value < (0 if flag == "--max-wait-ms" else 1):
      raise errors.UsageError(f"{flag}={value} is out of range; give a positive value.")
  shapes = engine_lib.Shapes.create(args.max_batch, args.max_input_length,
                                    args.max_target_length)
  engine = engine_lib.load_engine(
      args.base, args.vocabulary, shapes=shapes, model_name=args.model,
      default_decoding=engine_lib.Decoding(max_length=args.max_decode_length))
  cache = PromptCache(library, engine.model_name, engine.config.emb_dim,
                      max_bytes=int(args.cache_mb * (1 << 20)), exact_model=bool(args.model))
  service = Service(engine, cache, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                    mix_prompts=not args.one_prompt_per_batch)
  servable = cache.servable()
  print(f"spot serve: base {engine.model_name}, {len(servable)} servable prompts in "
        f"{args.library}", flush=True)
  if not args.no_warm_up:
    lengths = sorted({e.prompt_shape[0] for e in servable})
    engine.warm_up(lengths, log=lambda m: print(f"spot serve: {m} (prompt lengths "
                                                f"{lengths})", flush=True))
  return service


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  from spot.serve import app
  service = build_service(args)
  sock = app.bind(args.host, args.port)
  print(f"spot serve: listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
  app.serve(service, sock)
  return 0


if __name__ == "__main__":
  sys.exit(main())
