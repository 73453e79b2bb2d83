"""`spot library --library PATH <command>`: the prompt library from the shell.

Commands: add, list, show, query, remove, export, import, heatmap, check; the
training commands embed and transfer are added by `spot.workflows.cli` (the
library trains nothing).
`--json` on any command prints machine-readable output: `list` a JSON list of
entries (name, model, task, prompt_shape, ...), `query` a JSON list of
{"name", "score"} best first. Errors print one line naming the fix and exit 1;
skipped corrupt entries are reported as warnings on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from typing import Any, Callable, Optional, Sequence, TextIO

import numpy as np

from spot import errors
from spot.library import archive, fs, retrieval, similarity, sources, transfer
from spot.library.entry import ModelInfo, Provenance, encode_array
from spot.library.errors import LibraryError, ModelMismatchError, LibraryUsageError, LibraryWarning
from spot.library.store import PromptLibrary

PROG = "spot library"
_PROMPT_LENGTH_HELP = ("only entries whose prompt has N tokens (a weighted average needs "
                       "prompts of one length)")


def _key_value(text: str) -> tuple[str, str]:
  key, sep, value = text.partition("=")
  if not sep or not key:
    raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
  return key, value


def _positive(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


Handler = Callable[[PromptLibrary, argparse.Namespace], Any]
AddCommand = Callable[[str, str], argparse.ArgumentParser]


def build_parser(add_commands: Sequence[Callable[[AddCommand], None]] = ()
                 ) -> argparse.ArgumentParser:
  """The `spot library` parser; each of `add_commands` may add subcommands via
  `command(name, help) -> parser` (the training ones come from spot.workflows.cli)."""
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--library", default=argparse.SUPPRESS, metavar="PATH",
                      help="library root (local folder or gs://...)")
  common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                      help="print JSON instead of text")
  parser = argparse.ArgumentParser(prog=PROG, parents=[common],
                                   description="The SPoT prompt library.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  def command(name: str, help_: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, parents=[common], help=help_, description=help_)

  p = command("add", "add a source prompt with its task embeddings")
  p.add_argument("name", metavar="NAME")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--prompt", metavar="FILE.npy", help="the prompt [P, D] as a .npy file")
  src.add_argument("--from-model-dir", metavar="DIR",
                   help="a run's model_dir: the latest numpy_checkpoints/checkpoint_<step>")
  src.add_argument("--from-t5x", metavar="CKPT", help="a T5X checkpoint directory, or a spot "
                   "run checkpoint (MODEL_DIR/best/<step>, MODEL_DIR/checkpoints/<step>)")
  p.add_argument("--variable", default=sources.DEFAULT_VARIABLE,
                 help="prompt variable path (default %(default)s)")
  p.add_argument("--step", type=int, help="with --from-model-dir: this step, not the latest "
                 "(a numpy checkpoint, or an orbax one under best/ or checkpoints/); "
                 "otherwise: the step recorded in the provenance")
  p.add_argument("--best", action="store_true", help="with --from-model-dir: the run's best "
                 "step (its best/<step> checkpoint)")
  p.add_argument("--embedding", action="extend", nargs="+", default=[],
                 metavar="[KEY=]FILE.npy",
                 help="task embeddings [P', D]; KEY defaults to the file stem")
  p.add_argument("--embedding-step", action="extend", nargs="+", type=int, default=[],
                 metavar="STEP", help="with --from-model-dir: use the checkpoint at STEP as "
                 "task embedding 'step_STEP' (SPoT uses an early one, e.g. 10000)")
  p.add_argument("--model", required=True, help="base model name, e.g. t5_1_1_lm100k_base")
  p.add_argument("--model-checkpoint", default="", metavar="PATH",
                 help="the base model's checkpoint path (default: the run's run.json)")
  p.add_argument("--task", default="", help="the SeqIO task or mixture it was trained on "
                 "(default: the run's run.json)")
  p.add_argument("--metrics", action="extend", nargs="+", type=_key_value, default=[],
                 metavar="KEY=VALUE", help="validation scores (numbers; default: the run's "
                 "metrics.json)")
  p.add_argument("--meta", action="extend", nargs="+", type=_key_value, default=[],
                 metavar="KEY=VALUE", help="free-form metadata")
  p.add_argument("--gin-config", metavar="FILE", help="the run's gin config (default: "
                 "config.gin of the model_dir, if any)")
  p.add_argument("--overwrite", action="store_true", help="replace an entry of that name")

  p = command("list", "list the entries")
  p.add_argument("--model", help="only entries of this base model")
  p.add_argument("--task", help="only entries of this task")
  p.add_argument("--method", help="only entries of this method (prompt, lora, ia3, ...)")

  p = command("show", "show one entry")
  p.add_argument("name", metavar="NAME")

  p = command("query", "rank entries by similarity to a target task")
  q = p.add_mutually_exclusive_group(required=True)
  q.add_argument("--embedding", metavar="FILE.npy", help="the target task's embedding")
  q.add_argument("--entry", metavar="NAME", help="use this entry's task embedding")
  p.add_argument("--model", help="base model (default: the entry's, or the only one)")
  p.add_argument("--method", help="rank entries of this method only (default: the entry's, "
                 "or prompt); methods are never compared with each other")
  p.add_argument("--top-k", type=_positive, default=5, metavar="K")
  p.add_argument("--metric", choices=similarity.METRICS, default="avg_tokens")
  p.add_argument("--prompt-length", type=_positive, metavar="N", help=_PROMPT_LENGTH_HELP)
  p.add_argument("--init", choices=transfer.METHODS,
                 help="also write a target initialisation: top1 or weighted_average (SPoT)")
  p.add_argument("--init-out", metavar="FILE.npy", help="where --init writes the prompt")
  p.add_argument("--mixture", action="store_true",
                 help="print the top-k source tasks (for a multi-task mixture) instead")
  p.add_argument("--target-task", default="", help="with --mixture: append this task")

  p = command("remove", "remove an entry")
  p.add_argument("name", metavar="NAME")

  p = command("export", "write entries to one portable .tar.gz archive")
  p.add_argument("file", metavar="FILE")
  p.add_argument("--entry", action="extend", nargs="+", metavar="NAME",
                 help="only these entries (default: all)")

  p = command("import", "add the entries of an exported archive")
  p.add_argument("file", metavar="FILE")
  p.add_argument("--overwrite", action="store_true", help="replace entries of the same name")

  p = command("heatmap", "PNG of pairwise task similarities, clustered")
  p.add_argument("--out", required=True, metavar="FILE.png")
  p.add_argument("--model", help="base model (default: the only one)")
  p.add_argument("--method", help="entries of this method (default: that of --entry, or "
                 "prompt)")
  p.add_argument("--metric", choices=similarity.METRICS, default="avg_tokens")
  p.add_argument("--entry", action="extend", nargs="+", metavar="NAME",
                 help="only these entries (default: all of the model and method)")

  command("check", "verify every entry's files and checksums, clean what interrupted "
          "writers left in tmp/, rebuild a damaged index; exit 3 on entry problems")
  for add in add_commands:
    add(command)

  return parser


# -- commands ----------------------------------------------------------------


def _number(key: str, value: str) -> float:
  try:
    return float(value)
  except ValueError:
    raise LibraryUsageError(f"--metrics {key}={value}: the value must be a number.") from None


def _embeddings(args: argparse.Namespace) -> list[tuple[str, np.ndarray]]:
  out = []
  for spec in args.embedding:
    key, sep, file = spec.partition("=")
    if not sep:
      key, file = fs.path(spec).stem, spec
    out.append((key, sources.read_npy(file, "--embedding")))
  if args.embedding_step and not args.from_model_dir:
    raise LibraryUsageError("--embedding-step needs --from-model-dir DIR.")
  for step in args.embedding_step:
    array, _ = sources.model_dir_prompt(args.from_model_dir, step, args.variable)
    out.append((f"step_{step}", array))
  return out


def _add(lib: PromptLibrary, args: argparse.Namespace) -> Any:
  """A prompt entry, or for a run of another method (run.json's "method": LoRA,
  (IA)3, adapters, BitFit, selective tuning, ...) an entry of its trained
  parameters and config."""
  step, run_dir, meta, params = args.step, None, {}, None
  run = sources.RunRecord()  # what the run's files say (none for --prompt)
  if args.best and not args.from_model_dir:
    raise LibraryUsageError("--best needs --from-model-dir DIR (the run whose best step to "
                            "take).")
  if args.best and args.step is not None:
    raise LibraryUsageError("--best and --step N both pick the step; pass one of them.")
  if args.prompt:
    prompt = sources.read_npy(args.prompt, "--prompt")
    if prompt.ndim != 2:
      raise LibraryError(f"--prompt {args.prompt} holds shape {prompt.shape}; a prompt is "
                         "[tokens, embed_dim]: save the encoder prompt variable itself.")
  elif args.from_model_dir:
    run_dir = sources.absolute(args.from_model_dir)
    step = sources.best_step(run_dir) if args.best else args.step
    run = sources.read_run(run_dir)
    _refuse_model_tuning(run, args.from_model_dir)
    if run.is_prompt_run:
      prompt, step = sources.model_dir_prompt(run_dir, step, args.variable)
    else:  # another method: its whole trained (checkpointed) parameter tree
      params, step = sources.model_dir_trainable(run_dir, step)
  else:
    ckpt = sources.absolute(args.from_t5x)
    if sources.is_run_checkpoint(ckpt):  # MODEL_DIR/best/<step>: its run is two levels up
      meta = sources.run_checkpoint_meta(ckpt)
      run_dir = str(fs.path(ckpt).parent.parent)
      default_step = int(fs.path(ckpt).name)
    else:
      run_dir = str(fs.path(ckpt).parent)
      default_step = sources.checkpoint_step(ckpt)
    run = sources.read_run(run_dir, meta)
    _refuse_model_tuning(run, args.from_t5x)
    if meta and not run.is_prompt_run:
      params = sources.run_checkpoint_trainable(ckpt)
    else:
      prompt = sources.t5x_prompt(ckpt, args.variable)
    step = step if step is not None else meta.get("step", default_step)
  if args.gin_config:
    gin = fs.path(sources.absolute(args.gin_config)).read_text()
  else:
    gin = sources.gin_config(run_dir) if run_dir else ""
  metrics = ({k: _number(k, v) for k, v in args.metrics} if args.metrics
             else dict(run.scores))
  common = dict(
      model=ModelInfo(name=args.model,
                      checkpoint=args.model_checkpoint or run.base_checkpoint,
                      embed_dim=run.embed_dim),
      embeddings=_embeddings(args), task=args.task or run.task, metrics=metrics,
      provenance=Provenance(gin_config=gin, step=step), meta={**run.meta(), **dict(args.meta)},
      overwrite=args.overwrite)
  if params is None:
    entry = lib.add(args.name, prompt, **common)
    held = f"prompt {_shape(entry.prompt_shape)}"
  else:
    entry = lib.add_params(args.name, params, method=run.entry_method, peft=run.peft, **common)
    held = f"{entry.method} parameters ({len(entry.params)} arrays)"
  return entry.summary(), (f"added {entry.name!r}: {held}, model {entry.model.name}, task "
                           f"{entry.task or '-'}, embeddings "
                           f"{', '.join(entry.embedding_keys) or _no_embedding(entry)}")


def _refuse_model_tuning(run: sources.RunRecord, where: str) -> None:
  """Refuses a model-tuning run: an entry holds a prompt or PEFT module, not a whole model."""
  if run.is_model_tuning:
    raise LibraryUsageError(
        f"{where} is a model-tuning run (TRAINABLE='all'): its checkpoint is a whole T5X model, "
        "not a module a library entry holds; use the checkpoint itself (INITIAL_CHECKPOINT_PATH, "
        "`spot checkpoint inspect`), or add a prompt or PEFT run.")


def _no_embedding(entry: Any) -> str:
  return "(the prompt)" if entry.is_prompt else "none (listed, not rankable)"


def _shape(shape: Sequence[int]) -> str:
  return "x".join(map(str, shape))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _list(lib: PromptLibrary, args: argparse.Namespace) -> Any:
  entries = lib.entries(model=args.model, task=args.task, method=args.method)
  rows = [(e.name, e.model.name, e.task or "-", e.method,
           _shape(e.prompt_shape) if e.is_prompt else f"{len(e.params)} arrays",
           ",".join(e.embedding_keys) or ("(prompt)" if e.is_prompt else "-"))
          for e in entries]
  text = _table(("NAME", "MODEL", "TASK", "METHOD", "ARRAYS", "EMBEDDINGS"), rows)
  return [e.summary() for e in entries], f"{text}\n{len(entries)} entries"


def _show(lib: PromptLibrary, args: argparse.Namespace) -> Any:
  e = lib.entry(args.name)
  lines = [
      f"name:        {e.name}",
      f"model:       {e.model.name} (embed dim {e.model.embed_dim})",
      f"checkpoint:  {e.model.checkpoint or '-'}",
      f"task:        {e.task or '-'}",
      f"method:      {e.method}" + (f" {json.dumps(dict(e.peft))}" if e.peft else ""),
  ]
  if e.prompt is not None:
    lines.append(f"prompt:      {_shape(e.prompt_shape)} {e.prompt.dtype} sha256 "
                 f"{e.prompt.sha256[:12]}")
  for path, rec in e.params:
    lines.append(f"param:       {path} {_shape(rec.shape)} sha256 {rec.sha256[:12]}")
  for key, rec in e.embeddings:
    lines.append(f"embedding:   {key} {_shape(rec.shape)} sha256 {rec.sha256[:12]}")
  lines += [
      f"metrics:     {json.dumps(dict(e.metrics)) if e.metrics else '-'}",
      f"step:        {e.provenance.step if e.provenance.step is not None else '-'}",
      f"created:     {e.provenance.created} (spot {e.provenance.spot_version})",
      f"gin config:  {len(e.provenance.gin_config.splitlines())} lines",
      f"meta:        {json.dumps(dict(e.meta)) if e.meta else '-'}",
  ]
  return e.to_json(), "\n".join(lines)


def _query(lib: PromptLibrary, args: argparse.Namespace) -> Any:
  if bool(args.init) != bool(args.init_out):
    raise LibraryUsageError("--init and --init-out go together: --init weighted_average "
                            "--init-out init.npy")
  query = args.entry or sources.read_npy(args.embedding, "--embedding")
  try:
    ranked = retrieval.rank(lib, query, model=args.model, metric=args.metric, top_k=args.top_k,
                            prompt_length=args.prompt_length, method=args.method)
  except ModelMismatchError as e:
    if args.entry:
      raise
    raise ModelMismatchError(f"--embedding {args.embedding}: {e}") from None
  messages = []
  if args.init:
    init = transfer.init_prompt(lib, ranked, args.init)
    fs.write_bytes(fs.path(sources.absolute(args.init_out)), encode_array(init),
                   local=fs.is_local(args.init_out))
    messages.append(f"wrote {args.init} initialisation {_shape(init.shape)} to {args.init_out}")
  if args.mixture:
    tasks = transfer.mixture_tasks(lib, ranked, args.target_task or None)
    return tasks, "\n".join(messages + [",".join(tasks)])
  what = f"entry {args.entry}" if args.entry else args.embedding
  rows = [(i + 1, f"{score:.4f}", name) for i, (name, score) in enumerate(ranked)]
  text = _table(("RANK", "SCORE", "NAME"), rows)
  head = f"query {what} ({args.metric}, top {args.top_k} of {lib.path})"
  payload = [{"name": name, "score": score} for name, score in ranked]
  return payload, "\n".join([head, text] + messages)


def _remove(lib: PromptLibrary, args: argparse.Namespace) -> Any:
  lib.remove(args.name)
  return {"removed": args.name}, f"removed {args.name!r}"


def _export(lib: PromptLibrary, args: argparse.Namespace) -> Any:
  lib.index()  # a missing library fails here, before the archive is opened
  names = archive.export(lib, args.file, args.entry)
  return {"file": args.file, "entries": names}, f"exported {len(names)} entries to {args.file}"


def _import(lib: PromptLibrary, args: argparse.Namespace) -> Any:
  names = archive.import_archive(lib, args.file, overwrite=args.overwrite)
  return {"file": args.file, "entries": names}, f"imported {len(names)} entries from {args.file}"


def _heatmap(lib: PromptLibrary, args: argparse.Namespace) -> Any:
  from spot.library import heatmap  # pylint: disable=g-import-not-at-top  (scipy, matplotlib)
  names, matrix = retrieval.pairwise(lib, model=args.model, metric=args.metric,
                                     names=args.entry, method=args.method)
  title = f"task similarity ({args.metric})"
  names, matrix = heatmap.write_heatmap(names, matrix, args.out, title)
  payload = {"out": args.out, "metric": args.metric, "names": names,
             "matrix": np.round(matrix, 6).tolist()}
  return payload, f"wrote {args.out}: {len(names)} entries, clustered ({args.metric})"


def _check(lib: PromptLibrary, args: argparse.Namespace) -> Any:
  problems = lib.check()
  repaired = lib.repair()
  lines = [f"{name}: {problem}" for name, problem in problems + repaired]
  payload = ([{"name": n, "problem": p, "repaired": False} for n, p in problems] +
             [{"name": n, "problem": p, "repaired": True} for n, p in repaired])
  if not problems:
    lines.append(f"all {len(lib.names())} entries are valid")
  return payload, "\n".join(lines), errors.EXIT_DATA if problems else 0


COMMANDS: dict[str, Handler] = {
    "add": _add, "list": _list, "show": _show, "query": _query, "remove": _remove,
    "export": _export, "import": _import, "heatmap": _heatmap, "check": _check,
}


def _report(caught: Sequence[warnings.WarningMessage], stderr: TextIO) -> None:
  seen = set()
  for w in caught:
    if not issubclass(w.category, LibraryWarning):  # others (TF, SeqIO) go on as usual
      warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
      continue
    text = str(w.message)
    if text not in seen:
      seen.add(text)
      print(f"warning: {text}", file=stderr)


def main(argv: Optional[Sequence[str]] = None, *, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None,
         add_commands: Sequence[Callable[[AddCommand], None]] = (),
         extra_commands: Optional[dict[str, Handler]] = None) -> int:
  """Runs `spot library ...`; returns the exit status.

  `add_commands` / `extra_commands`: more subcommands (parser additions and
  their handlers), e.g. the training commands embed and transfer that
  `spot.workflows.cli` adds; the library itself trains nothing.
  """
  stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
  commands = {**COMMANDS, **(extra_commands or {})}
  parser = build_parser(add_commands)
  try:
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
  except SystemExit as e:
    return int(e.code or 0)
  if not getattr(args, "library", None):
    print(f"{PROG}: error: pass the library with --library PATH", file=stderr)
    return errors.EXIT_USAGE
  as_json = getattr(args, "json", False)
  lib = PromptLibrary(sources.absolute(args.library))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", LibraryWarning)
    try:
      payload, text, *status = commands[args.command](lib, args)
    except errors.SpotError as e:  # typed: one line and its exit code (spot.errors)
      _report(caught, stderr)
      if errors.debug_enabled():
        traceback.print_exc(file=stderr)
      print(f"{PROG} {args.command}: error: {errors.one_line(str(e))}", file=stderr)
      return e.exit_code
  _report(caught, stderr)
  print(json.dumps(payload, indent=2) if as_json else text, file=stdout)
  return status[0] if status else 0
