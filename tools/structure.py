"""Print spot's package import graph and its longest functions, from the source.

Usage: python tools/structure.py [--root spot] [--top 15]

The graph is read with `ast` (no imports are executed): one line per package
`spot.X -> spot.Y, spot.Z` listing the spot packages its modules import, then
the `--top` longest functions as `lines  module:function`. Layer violations
(an import that runs upward in DESIGN's order) are listed last.
"""

from __future__ import annotations

import argparse
import ast
import collections
import pathlib
import sys

# Lower index = lower floor; an import from a lower floor to a higher one is upward.
LAYERS = ["io", "errors", "runtime", "vocab", "models", "checkpoints", "prompts", "peft",
          "library", "partitioning", "distributed", "train", "xgen", "report", "workflows",
          "serve", "demo", "cli"]


def package_of(module: str) -> str:
  """`spot.train.trainer` -> `train`; `spot.io` -> `io`."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  rel = path.relative_to(root.parent).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def imports(tree: ast.AST, module: str) -> set[str]:
  """Absolute spot modules imported anywhere in `tree` (function-level imports included)."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: resolve against the importing module's package
        base = module.split(".")[:len(module.split(".")) - node.level]
        name = ".".join(base + ([node.module] if node.module else []))
      else:
        name = node.module or ""
      found.add(name)
      found.update(f"{name}.{a.name}" for a in node.names)
  return {f for f in found if f == "spot" or f.startswith("spot.")}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default="spot")
  p.add_argument("--top", type=int, default=15)
  args = p.parse_args(argv)
  root = pathlib.Path(args.root).resolve()
  graph: dict[str, set[str]] = collections.defaultdict(set)
  lengths = []
  for path in sorted(root.rglob("*.py")):
    module = module_name(path, root)
    tree = ast.parse(path.read_text(), str(path))
    src = package_of(module)
    for target in imports(tree, module):
      dst = package_of(target)
      is_spot_module = (root / dst).is_dir() or (root / f"{dst}.py").exists()
      if dst != src and is_spot_module:
        graph[src].add(dst)
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lengths.append((node.end_lineno - node.lineno + 1, f"{module}:{node.name}"))
  print("# import graph (package -> packages it imports)")
  for src in sorted(graph):
    print(f"spot.{src} -> {', '.join('spot.' + d for d in sorted(graph[src]))}")
  print(f"\n# longest functions (top {args.top})")
  for n, name in sorted(lengths, reverse=True)[:args.top]:
    print(f"{n:5d}  {name}")
  rank = {name: i for i, name in enumerate(LAYERS)}
  upward = [(s, d) for s in graph for d in graph[s]
            if s in rank and d in rank and rank[d] > rank[s]]
  print(f"\n# upward imports: {len(upward)}")
  for s, d in sorted(upward):
    print(f"spot.{s} -> spot.{d}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
