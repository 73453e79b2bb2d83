"""Shared pieces of the study tests: a tiny study spec, stand-in settings, and a stand-in
trainer that writes what the trainer writes (the real one is the journey)."""

from __future__ import annotations

import dataclasses
import functools
import zlib

import numpy as np

from spot.workflows import settings as settings_lib
from spot.workflows import study as study_lib

SOURCES = ("sst", "topic", "add")
TARGETS = ("sst_b", "add")  # "add" is also a source: never its own candidate
CKPT = "/checkpoints/base/checkpoint_3"


@dataclasses.dataclass(frozen=True)
class _Model:
  prompt: object = functools.partial(dict, prompt_init=None)


@dataclasses.dataclass(frozen=True)
class _Data:
  mixture_or_task_name: str = "unused"
  seed: int = 0
  module: object = None
  data_dir: object = None


def make_base(checkpoint: str = CKPT) -> settings_lib.TrainSettings:
  return settings_lib.TrainSettings(model=_Model(), train_dataset_cfg=_Data(), model_dir="unused",
                                    train_steps=1, initial_checkpoint_path=checkpoint)


def make_spec(**changes) -> study_lib.StudySpec:
  kw = dict(sources=SOURCES, targets=TARGETS, seeds=(0, 1), source_steps=4, target_steps=4,
            embedding_step=2, top_ks=(1, 2), weighted_k=2)
  kw.update(changes)
  return study_lib.StudySpec(**kw)


def unit(text: str) -> float:
  return (zlib.crc32(text.encode()) % 10_000) / 10_000


class FakeTrainer:
  """Writes what a finished run leaves: numpy prompts, a committed checkpoint, run.json,
  metrics.json. The score of a run is a fixed function of its model_dir."""

  def __init__(self, fail_at: int = -1):
    self.calls, self.fail_at = [], fail_at
    self.settings: dict[str, settings_lib.TrainSettings] = {}  # run id -> what it trained

  def __call__(self, s: settings_lib.TrainSettings) -> None:
    from spot import report
    from spot.checkpoints import run_dir
    if len(self.calls) == self.fail_at:
      raise KeyboardInterrupt("killed")
    self.calls.append(s.model_dir)
    self.settings[s.model_dir.split("/study/", 1)[1]] = s
    task = s.train_dataset_cfg.mixture_or_task_name
    rng = np.random.RandomState(zlib.crc32(task.encode()))
    for step in range(s.checkpoint_cfg.period, s.train_steps + 1, s.checkpoint_cfg.period):
      folder = run_dir.numpy_step_dir(s.model_dir, step)
      folder.mkdir(parents=True)
      prompt = rng.normal(size=(4, 8)).astype(np.float32)
      with (folder / run_dir.PROMPT_FILE).open("wb") as f:
        np.save(f, prompt)
    final = run_dir.step_dir(s.model_dir, s.train_steps)
    for item in (run_dir.STATE_ITEM, run_dir.META_ITEM):
      (final / item).mkdir(parents=True)
    (final / run_dir.COMMIT_MARKER).write_text("ok")
    run_dir.write_run_json(s.model_dir, {"base_checkpoint": s.initial_checkpoint_path})
    run_id = s.model_dir.split("/study/", 1)[1]
    score = 20 + 70 * unit(run_id.rsplit("/", 1)[0]) + 5 * unit(run_id)
    report.write_run_metrics(s.model_dir, task, s.method, s.seed, {"accuracy": score,
                                                                   "f1": score - 2})


def run_study(tmp_path, spec=None, trainer=None, study_dir=None, **kw):
  """Runs the study (default `make_spec()`) in tmp_path/study with a FakeTrainer."""
  trainer = trainer or FakeTrainer()
  lines = []
  study_lib.run_study(make_base(kw.pop("checkpoint", CKPT)), spec or make_spec(),
                      study_dir or str(tmp_path / "study"), log=lines.append, train=trainer, **kw)
  return trainer, lines


def library_with(tmp_path, dim: int):
  """A prompt library with one entry, glue_mix (task glue_mix_task), for a model of dim `dim`."""
  from spot.library import PromptLibrary
  lib = PromptLibrary(str(tmp_path / "lib"))
  prompt = np.random.RandomState(dim).normal(size=(4, dim)).astype(np.float32)
  lib.add("glue_mix", prompt, model=f"t5_1_1_d{dim}", embeddings={"step_2": prompt},
          task="glue_mix_task")
  return lib


@dataclasses.dataclass(frozen=True)
class ModelWithConfig:
  """A model settings stand-in with a T5Config (library sources check its embed dim)."""
  config: object = None
  prompt: object = functools.partial(dict, prompt_init=None)
