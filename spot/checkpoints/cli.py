"""`spot checkpoint inspect|convert`: look into and convert T5X / Hugging Face checkpoints
and spot's own run checkpoints.

  spot checkpoint inspect PATH [--step N | --best] [--optimizer] [--json]
  spot checkpoint convert --from-hf DIR [--peft ADAPTER_DIR] --to MODEL_DIR [--step N]
  spot checkpoint convert --from-t5x PATH --to-hf DIR [--step N] [--config NAME|FILE.json]
  spot checkpoint convert --from-run MODEL_DIR [--step N | --best] --to OUT_DIR [--overwrite]

`inspect` reads metadata only (the msgpack tree, Orbax metadata or
safetensors headers), so it is instant even for an XXL checkpoint. PATH may
be a T5X model_dir / checkpoint_<step> / file, a Hugging Face directory, or a
spot run (its model_dir, `checkpoints/<step>` or `best/<step>`).
Failures raise spot.errors' typed errors; `spot checkpoint` (spot.cli) prints
them as one line and exits 2 (usage), 3 (data) or 4 (system).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import jax
from etils import epath

from spot import errors
from spot import io as spot_io
from spot.checkpoints import hf, layout, run, t5x, tree
from spot.models import T5Config, config_names, get_config


def _hf_summary(directory: epath.Path) -> dict:
  config_file = directory / hf.CONFIG_FILE
  hf_config = spot_io.read_json(config_file, "Hugging Face config", error=errors.CheckpointError,
                               fix="copy the model directory again")
  config = hf.config_from_hf(hf_config, str(config_file))
  shapes = hf.tensor_shapes(directory)
  return {"format": "hf", "path": str(directory), "config": config.to_dict(),
          "params": {n: {"shape": list(shapes[n])} for n in sorted(shapes)},
          "total_params": tree.total_size(shapes)}


def _print_run(summary: dict) -> None:
  """The text form of a run step: where it is, its settings, then the parameter table."""
  lines = [f"format: spot run ({summary['kind']}/)", f"path: {summary['path']}",
           f"model_dir: {summary['model_dir']}",
           f"step: {summary['step']} (checkpoints/: {summary['steps'] or 'none'}, "
           f"best/: {summary['best_steps'] or 'none'})",
           f"task: {summary['task']}", f"base checkpoint: {summary['base_checkpoint']}",
           f"prompt length: {summary['prompt_length']}"]
  print("\n".join(lines))
  shapes = {n: tuple(v["shape"]) for n, v in summary["params"].items()}
  dtypes = {n: v["dtype"] for n, v in summary["params"].items()}
  print(tree.format_table(shapes, dtypes))
  trained = [n for n in shapes if not n.startswith("opt_state/")]
  print(f"total: {len(trained)} trained arrays, {summary['total_params']:,} parameters "
        "(the frozen base is not in a run checkpoint)")


def _inspect(args: argparse.Namespace) -> int:
  path = layout.resolve(args.path)
  if layout.is_run_path(path):
    summary = run.describe_run(path, step=args.step, best=args.best,
                               with_optimizer_state=args.optimizer).to_json()
    if args.json:
      print(json.dumps(summary, indent=2))
    else:
      _print_run(summary)
    return 0
  if args.best:
    raise errors.UsageError(f"--best applies to spot runs (model_dir/best/<step>), but {path} "
                            "is not a spot run; drop --best.")
  if path.is_dir() and (path / hf.CONFIG_FILE).exists():
    summary = _hf_summary(path)
    shapes = {n: tuple(v["shape"]) for n, v in summary["params"].items()}
    dtypes = {}
  else:
    info = t5x.describe(path, step=args.step, with_optimizer_state=args.optimizer)
    summary, shapes, dtypes = info.to_json(), info.shapes, info.dtypes
    try:
      summary["inferred_config"] = tree.infer_config(
          {n: jax.ShapeDtypeStruct(s, dtypes[n]) for n, s in shapes.items()
           if not n.startswith("state/")}).to_dict()
    except ValueError as e:  # e.g. a prompt-only T5X checkpoint
      summary["inferred_config"] = None
      summary["inferred_config_error"] = str(e)
  if args.json:
    print(json.dumps(summary, indent=2))
    return 0
  header = [f"format: {summary['format']}", f"path: {summary['path']}"]
  for key in ("step", "version"):
    if summary.get(key) is not None:
      header.append(f"{key}: {summary[key]}")
  print("\n".join(header))
  print(tree.format_table(shapes, dtypes))
  print(f"total: {len(shapes)} arrays, {summary['total_params']:,} parameters")
  config = summary.get("config") or summary.get("inferred_config")
  if config:
    label = "config" if "config" in summary else "config inferred from shapes"
    print(f"{label}: {json.dumps(config)}")
  return 0


def _config(spec: Optional[str], params: dict) -> T5Config:
  """--config: a get_config name, a T5Config JSON file, or None to infer from shapes."""
  if spec is None:
    config = tree.infer_config(params)
    print("note: no --config given; inferred from shapes (relative_attention_max_distance="
          f"{config.relative_attention_max_distance}, activations {config.mlp_activations}). "
          "Pass --config if the model used other values.", file=sys.stderr)
    return config
  if spec in config_names():
    return get_config(spec)
  file = layout.resolve(spec)
  if not file.is_file():
    raise errors.ConfigError(f"--config {spec!r} is neither a config name "
                            f"({', '.join(config_names())}) nor an existing JSON file; pass "
                            "one of those names or a T5Config JSON file.")
  try:
    return T5Config.from_dict(json.loads(file.read_text()))
  except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as e:
    raise errors.ConfigError(f"--config {file} is not a T5Config JSON file "
                            f"({errors.one_line(str(e))}); write it with "
                            "json.dumps(T5Config.to_dict()) or pass a config name.") from e


def _check_config(params: dict, config: T5Config, spec: Optional[str], source: str) -> None:
  """--config must describe the checkpoint: a mismatch is a usage error naming the fix."""
  found = {k: tree.leaf_shape(v) for k, v in tree.flatten(params).items()}
  problems = tree.shape_problems(found, tree.expected_shapes(config))
  if problems:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    given = f"--config {spec}" if spec else "the inferred config"
    raise errors.ConfigError(
        f"{given} does not match {source}: {'; '.join(problems[:3])}{more}; pass the config "
        "the checkpoint was trained with, or omit --config to infer it from the shapes.")


def _only_with(args: argparse.Namespace, source: str, allowed: Sequence[str]) -> None:
  for flag in ("to", "to_hf", "best", "overwrite", "config", "peft"):
    if getattr(args, flag) and flag not in allowed:
      raise errors.UsageError(f"--{flag.replace('_', '-')} does not apply to {source}; "
                              "see `spot checkpoint convert --help`.")


def _convert(args: argparse.Namespace) -> int:
  if args.from_run:
    _only_with(args, "--from-run", ("to", "best", "overwrite"))
    if not args.to:
      raise errors.UsageError("--from-run needs --to OUT_DIR (the T5X model_dir to write).")
    if args.best and args.step is not None:
      raise errors.UsageError("--step and --best both choose the run step; pass one of them.")
    out = run.convert_run(args.from_run, args.to, step=args.step, best=args.best,
                          overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
  if args.from_hf:
    _only_with(args, "--from-hf", ("to", "peft"))
    if not args.to:
      raise errors.UsageError("--from-hf needs --to MODEL_DIR (the T5X model_dir to write).")
    config, params = hf.load_hf(args.from_hf)
    if args.peft:  # LoRA / (IA)3 folded into the kernels: one plain T5X checkpoint
      params = hf.merge_peft_adapter(args.peft, config, params)
    out = t5x.save_t5x(args.to, params, step=args.step or 0)
    print(f"wrote {out}")
    print("config: " + json.dumps(config.to_dict()))
    return 0
  _only_with(args, "--from-t5x", ("to_hf", "config"))
  if not args.to_hf:
    raise errors.UsageError("--from-t5x needs --to-hf DIR (the Hugging Face directory to "
                            "write).")
  out_dir = layout.resolve(args.to_hf)
  if out_dir.exists():  # before reading a large checkpoint
    raise layout.OutputExistsError(f"{out_dir} already exists; remove it or choose another "
                                   "--to-hf.")
  config = _config(args.config, None) if args.config else None  # a bad flag fails first
  params = t5x.load_t5x(args.from_t5x, step=args.step)
  config = config or _config(None, params)
  _check_config(params, config, args.config, f"T5X checkpoint {layout.resolve(args.from_t5x)}")
  out = hf.save_hf(out_dir, config, params)
  print(f"wrote {out}")
  return 0


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="spot checkpoint", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  inspect = sub.add_parser("inspect", help="names, shapes, dtypes and total parameters")
  inspect.add_argument("path", help="T5X model_dir / checkpoint_<step> / file, an HF dir, or a "
                       "spot run (model_dir, checkpoints/<step>, best/<step>)")
  inspect.add_argument("--step", type=int, default=None, help="step within a model_dir")
  inspect.add_argument("--best", action="store_true",
                       help="spot run model_dir: the step under best/ instead of checkpoints/")
  inspect.add_argument("--optimizer", action="store_true", help="also list optimizer state")
  inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
  convert = sub.add_parser("convert", help="T5X <-> Hugging Face; spot run -> T5X")
  source = convert.add_mutually_exclusive_group(required=True)
  source.add_argument("--from-hf", metavar="DIR", help="Hugging Face T5/mT5 directory")
  source.add_argument("--from-t5x", metavar="PATH", help="T5X model_dir or checkpoint")
  source.add_argument("--from-run", metavar="MODEL_DIR",
                      help="spot run: its frozen base + trained prompt as a T5X checkpoint")
  convert.add_argument("--to", metavar="MODEL_DIR",
                       help="with --from-hf / --from-run: the T5X model_dir to write")
  convert.add_argument("--to-hf", metavar="DIR", help="with --from-t5x: new HF directory")
  convert.add_argument("--peft", metavar="ADAPTER_DIR", default=None,
                       help="with --from-hf: a Hugging Face PEFT LoRA or (IA)3 adapter "
                       "directory, merged into the written T5X checkpoint")
  convert.add_argument("--step", type=int, default=None,
                       help="--from-t5x / --from-run: step to read (default: latest); "
                       "--from-hf: step to write (default 0)")
  convert.add_argument("--best", action="store_true",
                       help="--from-run: the run's best/ step instead of the latest")
  convert.add_argument("--overwrite", action="store_true",
                       help="--from-run: replace an existing --to directory")
  convert.add_argument("--config", default=None,
                       help="--from-t5x: config name (e.g. t5_1_1_base) or T5Config JSON "
                       "file; inferred from shapes when omitted")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of `spot checkpoint`; returns the exit status.

  Failures propagate as spot.errors' typed errors; `spot checkpoint ...`
  (spot.cli.spot_main) prints them as one line with their exit code.
  """
  args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  if args.command == "inspect" and args.best and args.step is not None:
    raise errors.UsageError("--step and --best both choose the run step; pass one of them.")
  return _inspect(args) if args.command == "inspect" else _convert(args)


if __name__ == "__main__":
  sys.exit(errors.run_cli("spot checkpoint", main))
