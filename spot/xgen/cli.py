"""`spot xgen score|report`: score outputs, and tabulate finished runs.

  spot xgen score --predictions FILE --targets FILE --lang th [--spm MODEL] [--json]
      [--run-dir DIR --meta size=small method=pt prompt_length=100]
  spot xgen report --runs DIR [DIR ...] [--out DIR]

`score` reads text files with one example per line (line i of --predictions
is scored against line i of --targets) and prints a table, or with --json one
object with keys sp_rouge1, sp_rouge2, sp_rougeL, lid_en, lid_<lang>, ascii,
unk_rate. With --run-dir it also records the scores as a finished run for
`report`. When --spm leaves more than 1% of the targets' pieces unknown (a
vocabulary that does not cover --lang), it warns on stderr: SP-ROUGE is then
inflated.

A failure is one line on stderr, `spot xgen <command>: <what and the fix>`,
and exit status 2 (usage: flags) or 3 (data: a missing, empty, mismatched or
malformed input), as spot.errors maps its types.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Optional, Sequence

from etils import epath

from spot import errors
from spot.xgen import languages
from spot.xgen import metrics
from spot.xgen import report

PROG = "spot xgen"


def _read_lines(path: str, what: str) -> list[str]:
  """The lines of a UTF-8 text file given as `what` (a flag); one example each."""
  file = epath.Path(path)
  if not file.is_file():
    raise errors.MissingInputError(f"{what} {path}: no such file; pass a UTF-8 text file with "
                                   "one example per line")
  try:
    text = file.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise errors.DataError(f"{what} {path}: not UTF-8 text (byte {e.start}); convert it to "
                           "UTF-8, one example per line") from e
  lines = text.splitlines()
  if not lines:
    raise errors.DataError(f"{what} {path}: the file is empty; pass one example per line (an "
                           "empty output is an empty line)")
  return lines


def _parse_meta(items: Sequence[str]) -> dict:
  meta = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise errors.UsageError(f"--meta {item!r}: not KEY=VALUE; pass pairs such as "
                              "--meta size=small method=pt prompt_length=100")
    try:
      meta[key] = json.loads(value)
    except json.JSONDecodeError:
      meta[key] = value
  missing = [k for k in ("size", "method") if k not in meta]
  if missing:
    raise errors.UsageError(f"--run-dir needs --meta {' '.join(k + '=...' for k in missing)} "
                            "(e.g. --meta size=small method=pt prompt_length=100)")
  return meta


def format_table(scores: dict[str, float]) -> str:
  """Two aligned columns: metric and value (0-100)."""
  width = max(len(k) for k in scores)
  lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
  lines += [f"{k:<{width}}  {v:6.2f}" for k, v in scores.items()]
  return "\n".join(lines)


def _lines(n: int) -> str:
  return f"{n} line" + ("" if n == 1 else "s")


def _check_spm(spm: str) -> None:
  if "://" not in spm and not epath.Path(spm).is_file():
    raise errors.MissingInputError(f"--spm {spm}: no such file; pass a SentencePiece .model "
                                   f"file that covers the language (mT5's is {metrics.MT5_SPM})")


def _coverage_warning(warning: metrics.UnknownPiecesWarning, args: argparse.Namespace) -> str:
  return (f"{PROG} score: warning: --spm {args.spm} does not cover --lang {args.lang}: "
          f"{warning.rate:.1f}% of the --targets pieces ({warning.unknown} of {warning.total}) "
          f"are unknown, which inflates SP-ROUGE; pass an --spm that covers {args.lang} "
          f"(mT5's: {metrics.MT5_SPM})")


def _score(args: argparse.Namespace) -> int:
  if args.lang not in languages.WIKILINGUA_CODES:
    raise errors.UsageError(f"--lang {args.lang!r}: not a WikiLingua language code; pass one "
                            f"of {', '.join(languages.WIKILINGUA_CODES)}")
  meta = _parse_meta(args.meta) if args.run_dir else None
  predictions = _read_lines(args.predictions, "--predictions")
  targets = _read_lines(args.targets, "--targets")
  if len(predictions) != len(targets):
    raise errors.DataError(
        f"--predictions {args.predictions} has {_lines(len(predictions))} but --targets "
        f"{args.targets} has {_lines(len(targets))}; line i of one must pair with line i of "
        "the other")
  _check_spm(args.spm)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", metrics.UnknownPiecesWarning)
    scores = metrics.score(predictions, targets, args.lang, args.spm)
  for warning in caught:
    if isinstance(warning.message, metrics.UnknownPiecesWarning):
      print(_coverage_warning(warning.message, args), file=sys.stderr)
    else:
      warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
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
  if not runs:
    raise errors.DataError(f"--runs {' '.join(args.runs)}: no finished runs "
                           f"({report.SCORES_FILE}) there; a run writes it with "
                           "spot.xgen.report.write_run_scores or spot xgen score --run-dir")
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
  """Entry point of `spot xgen`; returns the exit status (failures print one
  line, see spot.errors)."""
  try:
    args = build_parser().parse_args(argv)
  except SystemExit as e:  # --help, or a usage error already printed
    return int(e.code or 0)
  # One line naming the subcommand, e.g. "spot xgen score: --lang 'xx': ...".
  return errors.run_cli(f"{PROG} {args.command}", lambda: args.run(args))


if __name__ == "__main__":
  sys.exit(main())
