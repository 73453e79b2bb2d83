"""`spot xgen score|report`: score outputs, and tabulate finished runs.

  spot xgen score --predictions FILE --targets FILE --lang th [--spm MODEL] [--json]
      [--run-dir DIR --meta size=small method=pt prompt_length=100]
  spot xgen report --runs DIR [DIR ...] [--out DIR]

`score` reads text files with one example per line (line i of --predictions
is scored against line i of --targets) and prints a table, or with --json one
object with keys sp_rouge1, sp_rouge2, sp_rougeL, lid_en, lid_<lang>, ascii.
With --run-dir it also records the scores as a finished run for `report`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from etils import epath

from spot.xgen import languages
from spot.xgen import metrics
from spot.xgen import report

PROG = "spot xgen"


def _read_lines(path: str, what: str) -> list[str]:
  file = epath.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"{what} file {path} not found (expected text, one example per line)")
  try:
    text = file.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{what} file {path} is not UTF-8 text ({e})") from e
  return text.splitlines()


def _parse_meta(items: Sequence[str]) -> dict:
  meta = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--meta takes KEY=VALUE pairs, got {item!r}")
    try:
      meta[key] = json.loads(value)
    except json.JSONDecodeError:
      meta[key] = value
  missing = [k for k in ("size", "method") if k not in meta]
  if missing:
    raise ValueError(f"--run-dir needs --meta {' '.join(k + '=...' for k in missing)} "
                     "(e.g. --meta size=small method=pt prompt_length=100)")
  return meta


def format_table(scores: dict[str, float]) -> str:
  """Two aligned columns: metric and value (0-100)."""
  width = max(len(k) for k in scores)
  lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
  lines += [f"{k:<{width}}  {v:6.2f}" for k, v in scores.items()]
  return "\n".join(lines)


def _score(args: argparse.Namespace) -> int:
  languages.check_language(args.lang)
  predictions = _read_lines(args.predictions, "--predictions")
  targets = _read_lines(args.targets, "--targets")
  meta = _parse_meta(args.meta) if args.run_dir else None
  scores = metrics.score(predictions, targets, args.lang, args.spm)
  if args.json:
    print(json.dumps(scores))
  else:
    print(f"{len(predictions)} examples, language {args.lang}, SentencePiece {args.spm}")
    print(format_table(scores))
  if args.run_dir:
    path = report.write_run_scores(args.run_dir, {args.lang: scores}, **meta)
    print(f"wrote {path}", file=sys.stderr)
  return 0


def _report(args: argparse.Namespace) -> int:
  runs, empty = report.find_runs(args.runs)
  for path in empty:
    print(f"{PROG} report: skipping {path}: no finished run ({report.SCORES_FILE}) in it",
          file=sys.stderr)
  paths = report.write_report(runs, args.out)
  print(paths["markdown"].read_text())
  for kind, path in paths.items():
    print(f"wrote {kind}: {path}", file=sys.stderr)
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)

  score = commands.add_parser("score", help="SP-ROUGE, LID and ASCII of one set of outputs")
  score.add_argument("--predictions", required=True, help="text file, one output per line")
  score.add_argument("--targets", required=True, help="text file, one reference per line")
  score.add_argument("--lang", required=True,
                     help=f"language the outputs should be in: {', '.join(languages.WIKILINGUA_CODES)}")
  score.add_argument("--spm", default=metrics.MT5_SPM,
                     help="SentencePiece model for SP-ROUGE (default: mT5's)")
  score.add_argument("--json", action="store_true", help="print one JSON object")
  score.add_argument("--run-dir", help="also record the scores as a finished run here")
  score.add_argument("--meta", nargs="*", default=[], metavar="KEY=VALUE",
                     help="run metadata for --run-dir: size=... method=... [prompt_length=...]")
  score.set_defaults(run=_score)

  rep = commands.add_parser("report", help="tabulate finished runs (Markdown, CSV, PNG)")
  rep.add_argument("--runs", nargs="+", required=True,
                   help="run directories, or folders searched for them")
  rep.add_argument("--out", default="xgen_report", help="output folder (default: ./xgen_report)")
  rep.set_defaults(run=_report)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of `spot xgen`; returns the exit status."""
  try:
    args = build_parser().parse_args(argv)
  except SystemExit as e:  # --help, or a usage error already printed
    return int(e.code or 0)
  try:
    return args.run(args)
  except (ValueError, TypeError, OSError) as e:
    print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
