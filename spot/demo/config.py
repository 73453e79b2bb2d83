"""What a demo run trains: model size, tasks, steps and learning rates.

`QUICK` and `DEFAULT` are tuned so that on two CPU cores the whole workflow
fits in under two and about five minutes, and the prompts are still trained
far enough for the comparison between initialisations to mean something. Every
prompt run of a demo uses the same batch size, lengths and prompt length, so
one compiled train step and one compiled decoder serve them all.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """One demo preset.

  Attributes:
    name: "quick" or "default".
    skills: synthetic skills the base model learns and the sources cover
      (one source task per skill, domain "a").
    targets: held-out target tasks (domain "b").
    model: `T5Config` fields of the base model.
    feature_lengths: SeqIO task feature lengths (inputs without the prompt).
    pretrain_steps / pretrain_batch_size / pretrain_lr: training the base
      model itself (all parameters, Adam) on the instruction tasks.
    pretrain_eval: evaluate the base model on its instruction tasks (costs
      compiling a second decoder).
    prompt_length: P of every prompt.
    batch_size: batch of every prompt run.
    prompt_lr: Adafactor learning rate of every prompt run (constant).
    source_steps: steps of each single-task source prompt.
    mixture_steps: steps of the generic SPoT prompt on the source mixture.
    target_steps: steps of each target prompt, for every initialisation.
    embedding_step: the early checkpoint kept as a task embedding.
    eval_every: evaluation period of target runs (their learning curves).
    eval_examples: validation examples per evaluation.
    threshold: the score (percent) whose first crossing "steps to reach" reports.
    eval_batch_size: examples per decode call when scoring (0: all at once).
    study_skills: skills whose sources (domain "a") the transferability study
      transfers to every target (empty: no study).
  """

  name: str
  skills: tuple[str, ...]
  targets: tuple[str, ...]
  model: Mapping[str, Any]
  feature_lengths: Mapping[str, int]
  pretrain_steps: int
  pretrain_batch_size: int
  pretrain_lr: float
  pretrain_eval: bool
  prompt_length: int
  batch_size: int
  prompt_lr: float
  source_steps: int
  mixture_steps: int
  target_steps: int
  embedding_step: int
  eval_every: int
  eval_examples: int
  threshold: float
  eval_batch_size: int = 0
  study_skills: tuple[str, ...] = ()

  def __post_init__(self):
    for name in ("source_steps", "mixture_steps", "target_steps",
                 "embedding_step", "eval_every", "eval_examples", "batch_size", "prompt_length"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"DemoConfig.{name} must be positive, got {getattr(self, name)}.")
    if self.embedding_step > min(self.source_steps, self.target_steps):
      raise ValueError(f"DemoConfig.embedding_step={self.embedding_step} must not exceed "
                       "source_steps and target_steps: it is an early checkpoint of both.")


_TINY_T5 = dict(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128, num_encoder_layers=2,
                num_decoder_layers=2, relative_attention_num_buckets=16,
                relative_attention_max_distance=32, dropout_rate=0.0)
# One layer each way: half the compile and trace time; enough for four skills.
_TINIER_T5 = dict(_TINY_T5, num_encoder_layers=1, num_decoder_layers=1)

QUICK = DemoConfig(
    name="quick",
    skills=("sentiment", "topic", "add", "max"),
    targets=("synthetic_sentiment_b", "synthetic_add_b"),
    model=_TINIER_T5,
    feature_lengths={"inputs": 12, "targets": 4},
    pretrain_steps=300,
    pretrain_batch_size=32,
    pretrain_lr=3e-3,
    pretrain_eval=False,
    prompt_length=8,
    batch_size=32,
    prompt_lr=0.1,
    source_steps=80,
    mixture_steps=80,
    target_steps=40,
    embedding_step=20,
    eval_every=10,
    eval_examples=128,
    threshold=80.0,
)

DEFAULT = dataclasses.replace(
    QUICK,
    name="default",
    skills=("sentiment", "topic", "count", "entail", "overlap", "add", "max", "diff"),
    # Count and the pair skills stay sources only: this small a model learns
    # them to 60-80% in the steps the preset can afford, too weak a base for targets.
    targets=("synthetic_sentiment_b", "synthetic_topic_b", "synthetic_add_b",
             "synthetic_max_b", "synthetic_diff_b"),
    model=_TINY_T5,
    pretrain_steps=3000,
    pretrain_eval=True,
    source_steps=150,
    mixture_steps=150,
    target_steps=50,
    # A small study: the four sources related to the targets, 4 x 5 transfers.
    study_skills=("sentiment", "topic", "add", "max"),
)

PRESETS: Mapping[str, DemoConfig] = {c.name: c for c in (QUICK, DEFAULT)}
