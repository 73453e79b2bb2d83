"""`spot train|eval|infer` and `t5x train|eval|infer`: gin-configured runs, T5X's flags.

Flags (as t5x/train.py): `--gin_file` (repeatable), `--gin_bindings`
(repeatable), `--gin.NAME=VALUE` (rewritten to the binding `NAME = VALUE`),
`--gin_search_paths` (comma-separated), `--tfds_data_dir`, and the
multi-process flags `--multiprocess`, `--coordinator_address`,
`--process_count`, `--process_index`. spot's own gin tree is on the search path
both as `spot/gin/...` and as `models/...`, `runs/...`.

All configuration errors (a malformed file, an unknown binding, a missing
required macro, an unknown task) are reported before any model is built.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Optional, Sequence

from spot import errors

MODES = {
    "train": ("spot.train.trainer", "train"),
    "eval": ("spot.train.evaluate", "evaluate"),
    "infer": ("spot.train.infer", "infer"),
}
GIN_ROOT = pathlib.Path(__file__).resolve().parents[1] / "gin"


class ConfigError(errors.UsageError):
  """A gin configuration that cannot run; the message names the key and the fix."""


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (t5x gin_utils convention)."""
  out = []
  for arg in argv:
    if arg.startswith("--gin."):
      key, sep, value = arg[len("--gin."):].partition("=")
      if not sep:
        raise ConfigError(f"Flag {arg!r} needs a value: --gin.{key}=VALUE.")
      out.append(f"--gin_bindings={key} = {value}")
    else:
      out.append(arg)
  return out


def build_parser(prog: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
  p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
  p.add_argument("--gin_bindings", action="append", default=[], help="gin binding (repeatable)")
  p.add_argument("--gin_search_paths", default="", help="comma-separated gin search paths")
  p.add_argument("--tfds_data_dir", default=None, help="TFDS data directory")
  p.add_argument("--multiprocess", action="store_true",
                 help="initialise jax.distributed (auto-detected on Cloud TPU / SLURM)")
  p.add_argument("--coordinator_address", default=None)
  p.add_argument("--process_count", type=int, default=None)
  p.add_argument("--process_index", type=int, default=None)
  p.add_argument("--print_config", action="store_true",
                 help="print the resolved gin config and exit without running")
  return p


def _search_paths(extra: str) -> list[str]:
  paths = [os.getcwd(), str(GIN_ROOT.parent.parent), str(GIN_ROOT)]
  paths += [p for p in extra.split(",") if p]
  return paths


def parse_gin(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str]) -> None:
  """Parses gin files and bindings with spot's search paths; errors become ConfigError."""
  import gin
  gin.clear_config()
  for path in search_paths:
    gin.add_config_file_search_path(path)
  if not files:
    raise ConfigError("No --gin_file given. A run needs at least a model and a run file, e.g. "
                      "--gin_file=spot/gin/models/t5_1_1_base_prompt.gin "
                      "--gin_file=spot/gin/runs/prompt_finetune.gin.")
  for f in files:
    found = os.path.exists(f) or any(os.path.exists(os.path.join(p, f)) for p in search_paths)
    if not found:
      raise ConfigError(f"gin file {f!r} not found (searched {', '.join(search_paths)}); "
                        "add its folder with --gin_search_paths.")
  try:
    gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=True)
  except Exception as e:  # gin raises ValueError, KeyError, SyntaxError, ImportError...
    raise ConfigError(f"Bad gin configuration: {e}") from e


def run_with_flags(flags: Sequence[str], extra_files: Sequence[str] = (),
                   extra_bindings: Sequence[str] = (), mode: str = "train", **kwargs):
  """Runs train/eval/infer in this process from CLI-style flags plus overrides.

  Used by commands that launch runs themselves (`spot library embed`,
  `spot library transfer`): `extra_files` and `extra_bindings` come after the
  user's, so they win. Returns what the configured function returns.
  """
  import gin
  import importlib
  args = build_parser(f"spot {mode}").parse_args(rewrite_gin_args(flags))
  module_name, fn_name = MODES[mode]
  fn = getattr(importlib.import_module(module_name), fn_name)
  try:
    parse_gin(list(args.gin_file) + list(extra_files),
              list(args.gin_bindings) + list(extra_bindings),
              _search_paths(args.gin_search_paths))
    return gin.get_configurable(fn)(gin_config=gin.config_str(), **kwargs)
  finally:
    gin.clear_config()


def _init_distributed(args: argparse.Namespace) -> None:
  from spot import distributed
  distributed.initialize(coordinator_address=args.coordinator_address,
                         num_processes=args.process_count, process_id=args.process_index,
                         force=args.multiprocess)


def main(argv: Optional[Sequence[str]] = None, mode: str = "train", prog: str = "spot train"
         ) -> int:
  import importlib

  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    args = build_parser(prog).parse_args(rewrite_gin_args(argv))
    if args.tfds_data_dir:
      import seqio
      seqio.set_tfds_data_dir_override(args.tfds_data_dir)
    module_name, fn_name = MODES[mode]
    module = importlib.import_module(module_name)
    fn = getattr(module, fn_name)
    parse_gin(args.gin_file, args.gin_bindings, _search_paths(args.gin_search_paths))
    import gin
    configured = gin.get_configurable(fn)
    if args.print_config:
      print(gin.config_str())
      return 0
  except ConfigError as e:
    print(f"{prog}: {e}", file=sys.stderr)
    return 2
  if args.multiprocess or args.coordinator_address:
    _init_distributed(args)
  import gin
  try:
    configured(gin_config=gin.config_str())
  except ValueError as e:
    msg = str(e)
    if "gin.REQUIRED" in msg or "Required bindings" in msg or "MIXTURE_OR_TASK_NAME" in msg:
      print(f"{prog}: {msg}", file=sys.stderr)
      return 2
    raise
  return 0


if __name__ == "__main__":
  sys.exit(main())
