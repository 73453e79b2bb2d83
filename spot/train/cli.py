"""`spot train|eval|infer` and `t5x train|eval|infer`: gin-configured runs, T5X's flags.

Flags (as t5x/train.py): `--gin_file` (repeatable), `--gin_bindings`
(repeatable), `--gin.NAME=VALUE` (rewritten to the binding `NAME = VALUE`),
`--gin_search_paths` (comma-separated), `--tfds_data_dir`, and the
multi-process flags `--multiprocess`, `--coordinator_address`,
`--process_count`, `--process_index`. spot's own gin tree is on the search path
both as `spot/gin/...` and as `models/...`, `runs/...`.

All configuration errors (a malformed file, an unknown binding, a bad value,
a model file included twice, a missing required macro, an unknown task, a
checkpoint that is missing or of another size, a batch the mesh cannot
split) are reported before any model is built.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
from typing import Any, Optional, Sequence

from spot import errors

MODES = {
    "train": ("spot.train.trainer", "train"),
    "eval": ("spot.train.evaluate", "evaluate"),
    "infer": ("spot.train.infer", "infer"),
}
GIN_ROOT = pathlib.Path(__file__).resolve().parents[1] / "gin"


ConfigError = errors.ConfigError  # the name this module's callers and tests use


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


_INCLUDE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""", re.M)
_MACRO = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=", re.M)
_UNSET = object()


def _resolve(path: str, search_paths: Sequence[str]) -> Optional[str]:
  for base in ("", *search_paths):
    full = os.path.join(base, path) if base else path
    if os.path.isfile(full):
      return os.path.realpath(full)
  return None


def _shown(full: str) -> str:
  """A gin file's name as users write it (relative to the checkout or spot/gin)."""
  for root in (GIN_ROOT.parent.parent, pathlib.Path.cwd()):
    try:
      return str(pathlib.Path(full).relative_to(root.resolve()))
    except ValueError:
      continue
  return full


def check_includes(files: Sequence[str], search_paths: Sequence[str]) -> None:
  """Refuses a gin file that is included again after later files changed its macros.

  gin applies files in order, so `--gin_file=spot/gin/glue_mix.gin
  --gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin` re-includes
  `models/prompt.gin` and silently puts back its random-uniform PROMPT_INIT
  over glue_mix's sampled-vocabulary one. Sizes are chosen with MODEL_SIZE
  (`--gin.MODEL_SIZE="'tiny'"` or `models/sizes/<size>.gin`), which sets one
  macro and resets nothing.
  """
  order: list[tuple[str, str]] = []  # (file, the top-level --gin_file it came from)

  def walk(full: str, top: str, depth: int = 0) -> None:
    if depth > 20:
      return
    with open(full, encoding="utf-8") as f:
      text = f.read()
    for inc in _INCLUDE.findall(text):
      child = _resolve(inc, search_paths)
      if child:
        walk(child, top, depth + 1)
    order.append((full, top))

  for f in files:
    full = _resolve(f, search_paths)
    if full:
      walk(full, f)
  macros: dict[str, set[str]] = {}
  for full, _ in order:
    if full not in macros:
      with open(full, encoding="utf-8") as fh:
        macros[full] = set(_MACRO.findall(fh.read()))
  first: dict[str, int] = {}
  again: list[str] = []
  resets: dict[str, str] = {}
  tops: list[str] = []
  for i, (full, top) in enumerate(order):
    if full not in first:
      first[full] = i
      continue
    later = {m: f for f, _ in order[first[full] + 1:i] for m in macros[f] if f != full}
    reset = [m for m in sorted(macros[full]) if m in later]
    if reset:
      again.append(_shown(full))
      resets.update({m: _shown(later[m]) for m in reset if m not in resets})
      tops += [top] if top not in tops else []
  if again:
    what = ", ".join(f"{m} (set by {f})" for m, f in sorted(resets.items()))
    raise ConfigError(
        f"--gin_file={', '.join(tops)} includes {', '.join(again)} again, which would silently "
        f"reset {what}. Do not add a model file to a config that has one: choose the size "
        "with --gin.MODEL_SIZE=\"'tiny'\" (or --gin_file=spot/gin/models/sizes/<size>.gin) "
        "and override single macros with --gin.NAME=VALUE.")


def _binding_error(binding: str, e: Exception) -> str:
  """One line naming the failed binding, the flag it came from, and how to fix it."""
  name, sep, value = binding.partition("=")
  name, value = name.strip(), value.strip()
  reason = errors.one_line(str(e)).split(" (line ")[0] or type(e).__name__
  if not sep:
    return f"--gin_bindings={binding!r}: not a binding NAME = VALUE ({reason})."
  flag = f"--gin.{name}={value}"
  if isinstance(e, (SyntaxError, ValueError)) and "No configurable matching" in reason:
    return (f"{flag}: {reason}; import its module in a --gin_file or check the name "
            f"(binding {name} = {value}).")
  literal = value[:1] in "'\"[{(" or re.match(r"^[-+.\d]", value) or value in (
      "True", "False", "None") or value.startswith(("@", "%"))
  if literal:
    hint = "fix the Python literal (brackets, commas, quotes)"
  else:
    hint = (f"gin values are Python literals, so quote a string: "
            f"--gin.{name}=\"'{value}'\" (or --gin_bindings=\"{name} = '{value}'\")")
  return f"{flag}: cannot parse the value of {name} ({reason}); {hint}."


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
  check_includes(files, search_paths)
  try:
    gin.parse_config_files_and_bindings(list(files), None, finalize_config=False)
  except Exception as e:  # gin raises ValueError, KeyError, SyntaxError, ImportError...
    raise ConfigError(f"Bad gin configuration: {errors.one_line(str(e))}") from e
  try:
    gin.parse_config(list(bindings))
  except Exception as e:  # pylint: disable=broad-except
    for binding in bindings:  # which one: parse them one by one (we fail either way)
      try:
        gin.parse_config(binding)
      except Exception as one:  # pylint: disable=broad-except
        raise ConfigError(_binding_error(binding, one)) from e
    raise ConfigError(f"Bad gin bindings: {errors.one_line(str(e))}") from e
  try:
    gin.finalize()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"Bad gin configuration: {errors.one_line(str(e))}") from e


def check_required() -> None:
  """Refuses a parsed config whose macros are still `%gin.REQUIRED`, naming each and the flag.

  gin would only notice when the run function is called; checking here keeps
  the error a configuration error, found where the configuration is read.
  """
  import gin
  config = getattr(gin.config, "_CONFIG", {})
  missing = sorted(scope for (scope, selector), params in config.items()
                   if selector == "gin.macro" and params.get("value") is gin.config.REQUIRED)
  if missing:
    flags = " ".join(f"--gin.{name}=VALUE" for name in missing)
    raise ConfigError(f"Required gin macros are not set: {', '.join(missing)}; set them "
                      f"({flags}) or in a --gin_file.")


def macro(name: str, default: Any = _UNSET) -> Any:
  """The value of a gin macro of the parsed config (`default` if it is not defined)."""
  import gin
  try:
    value = gin.query_parameter(f"{name}/macro.value")
  except (ValueError, KeyError):
    return default
  if isinstance(value, gin.config.ConfigurableReference) or repr(value) == "%gin.REQUIRED":
    return default
  return value


def _model_config() -> Any:
  """The T5Config the parsed gin config builds (CONFIG = @models.get_config()), or None."""
  import gin
  if macro("MODEL_SIZE", None) is None:
    return None
  from spot import models
  try:
    return gin.get_configurable(models.get_config)()
  except Exception:  # pylint: disable=broad-except  (the run reports a bad model config)
    return None


def _is_local(path: Any) -> bool:
  return isinstance(path, (str, os.PathLike)) and "://" not in os.fspath(path)


def preflight(mode: str) -> None:
  """Gin-level checks before anything is built: paths exist, the mesh splits the batch.

  Remote paths (gs://) are left to the run, which reads them anyway.
  """
  for name in ("INITIAL_CHECKPOINT_PATH", "RESTORE_MODEL_DIR", "PROMPT_FILE"):
    path = macro(name, None)
    if path in (None, "random") or not _is_local(path):
      continue
    if not os.path.exists(path):
      raise errors.MissingInputError(
          f"{name}={path!r} does not exist; fix the path (--gin.{name}=\"'/path'\").")
  checkpoint = macro("INITIAL_CHECKPOINT_PATH", None)
  config = _model_config()
  if checkpoint not in (None, "random") and config is not None:
    # Before gin builds anything: prompt initializers read the checkpoint too.
    from spot.train import state
    state.check_base_checkpoint(config, checkpoint)
  data_dir = macro("DATA_DIR", None)
  for d in ([data_dir] if isinstance(data_dir, str) else list(data_dir or ())):
    if _is_local(d) and not os.path.isdir(d):
      raise errors.MissingInputError(f"DATA_DIR={d!r} is not a directory; point DATA_DIR at "
                                     "the folder holding the task files (see docs/tasks.md).")
  batch = macro("BATCH_SIZE", None)
  partitions = macro("NUM_PARTITIONS", 1) or 1
  micro = macro("NUM_MICROBATCHES", 1) or 1 if mode == "train" else 1
  if not isinstance(batch, int) or isinstance(batch, bool):
    return
  import jax
  devices = jax.device_count()
  if devices % partitions:
    raise errors.UsageError(f"NUM_PARTITIONS={partitions} does not divide the {devices} "
                            "devices; choose a divisor of the device count.")
  replicas = devices // partitions
  sizes = {"BATCH_SIZE": batch}
  if mode == "train":
    eval_batch = macro("EVAL_BATCH_SIZE", batch)
    if isinstance(eval_batch, int) and eval_batch != batch:
      sizes["EVAL_BATCH_SIZE"] = eval_batch
  for name, size in sizes.items():
    if size <= 0 or size % replicas:
      raise errors.UsageError(
          f"{name}={size} is not divisible by the {replicas} data-parallel replicas "
          f"({devices} devices / NUM_PARTITIONS={partitions}); use a multiple of {replicas}, "
          f"e.g. --gin.{name}={max(replicas, size + (-size) % replicas)}.")
  if isinstance(micro, int) and micro > 1 and (batch % micro or (batch // micro) % replicas):
    raise errors.UsageError(
        f"BATCH_SIZE={batch} does not split into NUM_MICROBATCHES={micro} microbatches of a "
        f"multiple of {replicas} examples; use a BATCH_SIZE that is a multiple of "
        f"{micro * replicas}.")


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
    check_required()
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
  """Runs `spot train|eval|infer`; each typed error becomes one line and its exit code."""
  argv = list(sys.argv[1:] if argv is None else argv)
  return errors.run_cli(prog, lambda: _run(argv, mode, prog))


def _run(argv: Sequence[str], mode: str, prog: str) -> int:
  import gin
  import importlib
  args = build_parser(prog).parse_args(rewrite_gin_args(argv))
  if args.tfds_data_dir:
    import seqio
    seqio.set_tfds_data_dir_override(args.tfds_data_dir)
  module_name, fn_name = MODES[mode]
  fn = getattr(importlib.import_module(module_name), fn_name)
  parse_gin(args.gin_file, args.gin_bindings, _search_paths(args.gin_search_paths))
  configured = gin.get_configurable(fn)
  if args.print_config:
    print(gin.config_str())
    return 0
  check_required()
  if args.multiprocess or args.coordinator_address:
    _init_distributed(args)
  preflight(mode)
  configured(gin_config=gin.config_str())
  return 0


if __name__ == "__main__":
  sys.exit(main())
