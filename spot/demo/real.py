"""`spot demo --real`: the demo's workflow on GLUE (sources) and SuperGLUE (targets).

The base model is a given T5X checkpoint (e.g. T5 1.1 LM-adapted base), so
there is no pretraining step. Sources are the eight GLUE tasks of SPoT's GLUE
mixture, each trained alone, plus the generic SPoT prompt on the mixture
`spot_glue_mix`; targets are SuperGLUE tasks. Data comes from TFDS, or from
the GLUE TSV / SuperGLUE JSONL files under `--data-dir`. Steps are scaled down
from the paper's (2^18 source steps, task embeddings at step 10,000) so that a
run takes hours on one accelerator, not days; `--source-steps`,
`--target-steps` and `--embedding-step` restore them.

Not run in CI: it needs the checkpoint, the data and an accelerator.
`--dry-run` prints the plan without reading either.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Optional, Sequence

from spot.demo.config import DemoConfig

PROG = "spot demo --real"
# SPoT's low-resource SuperGLUE targets (record and multirc need long inputs).
DEFAULT_TARGETS = ("boolq", "cb", "copa", "rte", "wic")
GLUE_MIXTURE = "spot_glue_mix"

REAL = DemoConfig(
    name="real",
    skills=(),
    targets=tuple(f"spot_superglue_{t}" for t in DEFAULT_TARGETS),
    model={},
    feature_lengths={"inputs": 512, "targets": 16},
    pretrain_steps=0,
    pretrain_batch_size=0,
    pretrain_lr=0.0,
    pretrain_eval=False,
    prompt_length=100,
    batch_size=32,
    prompt_lr=0.3,
    source_steps=20_000,
    mixture_steps=50_000,
    target_steps=5_000,
    embedding_step=1_000,
    eval_every=500,
    eval_examples=512,
    threshold=70.0,
    eval_batch_size=64,
)


def add_arguments(group: argparse._ArgumentGroup) -> None:  # pylint: disable=protected-access
  """The `--real` options of `spot demo`."""
  group.add_argument("--real", action="store_true",
                     help="run the workflow on GLUE/SuperGLUE instead of the synthetic tasks")
  group.add_argument("--checkpoint", metavar="PATH",
                     help="T5X checkpoint of the frozen base model (e.g. T5 1.1 LM-adapted)")
  group.add_argument("--data-dir", metavar="DIR",
                     help="GLUE TSV / SuperGLUE JSONL files (default: TFDS)")
  group.add_argument("--vocabulary", metavar="SPM",
                     help="SentencePiece model of the checkpoint (default: T5's, from gs://)")
  group.add_argument("--targets", nargs="+", metavar="TASK", default=list(DEFAULT_TARGETS),
                     help="SuperGLUE target keys (default: %(default)s)")
  group.add_argument("--source-steps", type=int, default=REAL.source_steps)
  group.add_argument("--target-steps", type=int, default=REAL.target_steps)
  group.add_argument("--embedding-step", type=int, default=REAL.embedding_step)
  group.add_argument("--dry-run", action="store_true",
                     help="print the planned runs and exit, reading no checkpoint or data")


def settings(args: argparse.Namespace) -> DemoConfig:
  """`REAL` with the command line's targets and steps."""
  from spot.tasks import superglue
  unknown = [t for t in args.targets if t not in superglue.SUPERGLUE_TASKS]
  if unknown:
    raise ValueError(f"--targets {unknown} are not SuperGLUE task keys; choose from "
                     f"{list(superglue.SUPERGLUE_TASKS)}.")
  return dataclasses.replace(
      REAL, targets=tuple(f"spot_superglue_{t}" for t in args.targets),
      source_steps=args.source_steps, target_steps=args.target_steps,
      mixture_steps=max(REAL.mixture_steps, args.source_steps),
      embedding_step=args.embedding_step,
      eval_every=max(1, min(REAL.eval_every, args.target_steps // 10)))


def suite(cfg: DemoConfig):
  """GLUE sources (the tasks of SPoT's GLUE mixture that have a train split) and
  SuperGLUE targets; MNLI is scored on its matched and mismatched sets."""
  from spot.demo import workflow
  from spot.tasks import mixtures
  members = [mixtures.member_name(m, "spot_glue", "spot_superglue")
             for m in mixtures.SPOT_MIXTURES["glue"]]
  sources = tuple(m for m in members if not m.endswith(("_matched", "_mismatched")))
  return workflow.Suite(
      sources=sources, mixture=GLUE_MIXTURE, targets=tuple(cfg.targets),
      eval_tasks={"spot_glue_mnli": ("spot_glue_mnli_matched", "spot_glue_mnli_mismatched")})


def plan(cfg: DemoConfig, tasks, checkpoint: str, out: str) -> str:
  """The runs `--real` would make, as text."""
  lines = [f"{PROG}: plan", f"  base model (frozen): {checkpoint}",
           f"  output: {out}",
           f"  prompt length {cfg.prompt_length}, batch {cfg.batch_size}, Adafactor lr "
           f"{cfg.prompt_lr}, lengths {dict(cfg.feature_lengths)}"]
  for task in tasks.sources:
    lines.append(f"  source   {task}: {cfg.source_steps} steps, task embedding = step "
                 f"{cfg.embedding_step}")
  lines.append(f"  mixture  {tasks.mixture}: {cfg.mixture_steps} steps (the generic SPoT prompt)")
  for task in tasks.targets:
    lines.append(f"  target   {task}: {cfg.target_steps} steps each from random, generic "
                 f"SPoT and retrieved initialisations (eval every {cfg.eval_every})")
  return "\n".join(lines)


def register(data_dir: Optional[str], vocabulary: Optional[str]) -> None:
  """GLUE / SuperGLUE with the checkpoint's vocabulary, from files when given."""
  import spot.tasks
  from spot.tasks import glue, mixtures, superglue
  if vocabulary:
    glue.register_glue(vocabulary=vocabulary)
    superglue.register_superglue(vocabulary=vocabulary)
  if data_dir:
    spot.tasks.register_local(data_dir)
  mixtures.register_spot_mixtures()


def main(args: argparse.Namespace, log, setup) -> int:
  """Runs (or with --dry-run, plans) the real workflow; `setup(out)` prepares JAX."""
  from etils import epath
  try:
    cfg = settings(args)
  except ValueError as e:
    print(f"{PROG}: {e}", file=sys.stderr)
    return 2
  tasks = suite(cfg)
  if not args.checkpoint:
    print(f"{PROG}: --checkpoint PATH is required: the T5X checkpoint of the frozen base model "
          "(e.g. gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000).",
          file=sys.stderr)
    return 2
  out = epath.Path(args.out or os.path.abspath("spot-demo-real")).absolute()
  if args.dry_run:
    print(plan(cfg, tasks, args.checkpoint, str(out)))
    return 0
  from spot.checkpoints import infer_config, load_t5x
  from spot.demo import report, workflow
  setup(out, cfg, args.seed)
  register(args.data_dir, args.vocabulary)
  log(plan(cfg, tasks, args.checkpoint, str(out)))
  params = load_t5x(args.checkpoint)
  config = infer_config(params)
  import seqio
  vocab = seqio.get_mixture_or_task(tasks.sources[0]).output_features["targets"].vocabulary
  name = os.path.basename(os.path.normpath(os.path.dirname(args.checkpoint))) or "t5x_base"
  flow = workflow.Workflow(out, tasks, cfg, args.seed, log, model_name=name)
  flow.use_base(args.checkpoint, config, vocab, params=params)
  del params
  sources = flow.train_sources()
  targets = [flow.run_target(t, i, len(tasks.targets))
             for i, t in enumerate(tasks.targets, start=1)]
  print(report.write(out, cfg, args.seed, None, sources, targets, flow, log.elapsed, log.cpu,
                     title="spot demo --real"), flush=True)
  log(f"done. Everything is under {out}; open {out / 'report.md'}")
  return 0

