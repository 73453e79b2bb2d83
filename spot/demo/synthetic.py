"""The demo on spot's synthetic tasks: everything generated, nothing downloaded."""

from __future__ import annotations

from typing import Callable

from etils import epath

from spot.demo import workflow
from spot.demo.config import DemoConfig


def suite(cfg: DemoConfig) -> workflow.Suite:
  """Sources: one task per skill of `cfg` (domain "a"); targets: `cfg.targets`."""
  from spot.tasks import synthetic
  sources = tuple(synthetic.task_name(s, synthetic.SOURCE_DOMAIN) for s in cfg.skills)
  bad = [t for t in cfg.targets if t not in synthetic.TARGET_TASKS]
  if bad:
    raise ValueError(f"Demo targets {bad} are not synthetic target tasks; choose from "
                     f"{list(synthetic.TARGET_TASKS)}.")
  return workflow.Suite(sources=sources, mixture=synthetic.SOURCES_MIXTURE,
                        targets=tuple(cfg.targets),
                        related={t: synthetic.related_source(t) for t in cfg.targets})


def run(cfg: DemoConfig, out: epath.Path, seed: int,
        log: Callable[[str], None]) -> tuple[workflow.RunRecord, list[workflow.RunRecord],
                                             list[workflow.TargetOutcome], workflow.Workflow]:
  """Pretrains the base model, trains and files the sources, runs every target."""
  from spot import vocab as vocab_lib
  from spot.models import T5Config
  from spot.tasks import synthetic

  synthetic.register_synthetic(seed, skills=cfg.skills)
  tasks = suite(cfg)
  config = T5Config(vocab_size=vocab_lib.padded_size(synthetic.VOCABULARY), **dict(cfg.model))
  flow = workflow.Workflow(out, tasks, cfg, seed, log, model_name=f"spot_demo_{cfg.name}_t5")
  log(f"base model: T5 1.1 layout, d_model {config.emb_dim}, {config.num_encoder_layers}+"
      f"{config.num_decoder_layers} layers, vocabulary {synthetic.VOCABULARY.vocab_size} words; "
      f"training it on {len(cfg.skills)} instruction tasks ({', '.join(cfg.skills)}) for "
      f"{cfg.pretrain_steps} steps")
  pretrain_tasks = [synthetic.task_name(s, "any") for s in cfg.skills] if cfg.pretrain_eval else []
  base = flow.pretrain(config, synthetic.VOCABULARY, synthetic.PRETRAIN_MIXTURE,
                       cfg.pretrain_steps, cfg.pretrain_batch_size, cfg.pretrain_lr,
                       pretrain_tasks)
  sources = flow.train_sources()
  targets = [flow.run_target(t, i, len(tasks.targets))
             for i, t in enumerate(tasks.targets, start=1)]
  return base, sources, targets, flow
