"""`spot checkpoint inspect|convert`: look into and convert T5X / Hugging Face checkpoints.

  spot checkpoint inspect PATH [--step N] [--optimizer] [--json]
  spot checkpoint convert --from-hf DIR --to MODEL_DIR [--step N]
  spot checkpoint convert --from-t5x PATH --to-hf DIR [--step N] [--config NAME|FILE.json]

`inspect` reads metadata only (the msgpack tree, Orbax metadata or
safetensors headers), so it is instant even for an XXL checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import jax
from etils import epath

from spot.checkpoints import hf, t5x, tree
from spot.models import T5Config, config_names, get_config


def _hf_summary(directory: epath.Path) -> dict:
  config_file = directory / hf.CONFIG_FILE
  hf_config = json.loads(config_file.read_text())
  config = hf.config_from_hf(hf_config, str(config_file))
  shapes = hf.tensor_shapes(directory)
  return {"format": "hf", "path": str(directory), "config": config.to_dict(),
          "params": {n: {"shape": list(shapes[n])} for n in sorted(shapes)},
          "total_params": tree.total_size(shapes)}


def _inspect(args: argparse.Namespace) -> int:
  path = epath.Path(args.path)
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
    except ValueError as e:
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
  file = epath.Path(spec)
  if not file.exists():
    raise ValueError(f"--config {spec!r} is neither a config name ({', '.join(config_names())}) "
                     "nor an existing JSON file.")
  return T5Config.from_dict(json.loads(file.read_text()))


def _convert(args: argparse.Namespace) -> int:
  if args.from_hf:
    if not args.to:
      raise ValueError("--from-hf needs --to MODEL_DIR (the T5X model_dir to write).")
    config, params = hf.load_hf(args.from_hf)
    out = t5x.save_t5x(args.to, params, step=args.step or 0)
    print(f"wrote {out}")
    print("config: " + json.dumps(config.to_dict()))
    return 0
  if not args.to_hf:
    raise ValueError("--from-t5x needs --to-hf DIR (the Hugging Face directory to write).")
  params = t5x.load_t5x(args.from_t5x, step=args.step)
  config = _config(args.config, params)
  tree.check_shapes(params, config, source=f"T5X checkpoint {args.from_t5x}")
  out = hf.save_hf(args.to_hf, config, params)
  print(f"wrote {out}")
  return 0


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="spot checkpoint", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  inspect = sub.add_parser("inspect", help="names, shapes, dtypes and total parameters")
  inspect.add_argument("path", help="T5X model_dir / checkpoint_<step> / file, or an HF dir")
  inspect.add_argument("--step", type=int, default=None, help="step within a model_dir")
  inspect.add_argument("--optimizer", action="store_true", help="also list optimizer state")
  inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
  convert = sub.add_parser("convert", help="T5X <-> Hugging Face")
  source = convert.add_mutually_exclusive_group(required=True)
  source.add_argument("--from-hf", metavar="DIR", help="Hugging Face T5/mT5 directory")
  source.add_argument("--from-t5x", metavar="PATH", help="T5X model_dir or checkpoint")
  convert.add_argument("--to", metavar="MODEL_DIR", help="with --from-hf: T5X model_dir")
  convert.add_argument("--to-hf", metavar="DIR", help="with --from-t5x: new HF directory")
  convert.add_argument("--step", type=int, default=None,
                       help="--from-t5x: step to read; --from-hf: step to write (default 0)")
  convert.add_argument("--config", default=None,
                       help="--from-t5x: config name (e.g. t5_1_1_base) or T5Config JSON "
                       "file; inferred from shapes when omitted")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of `spot checkpoint`; returns the exit status."""
  args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  try:
    return _inspect(args) if args.command == "inspect" else _convert(args)
  except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
    print(f"spot checkpoint {args.command}: error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
