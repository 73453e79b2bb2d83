"""Trainer: loss falls on a real task, only the prompt changes, resume equals uninterrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import traverse_util

from spot.train import checkpointing, state as state_lib, trainer
from spot.train.data import DatasetConfig

from tests import helpers

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def sst2_run(shared_data, tmp_path_factory):
  """A 30-step prompt run of the real tiny T5X checkpoint on SST-2 (local TSVs)."""
  task = helpers.register_sst2(shared_data)
  model = helpers.tiny_prompt_model(shared_data)
  base = str(shared_data / helpers.TINY_CHECKPOINT)
  model_dir = tmp_path_factory.mktemp("sst2_run")
  result = trainer.train(
      model=model, train_dataset_cfg=DatasetConfig(task, {"inputs": 32, "targets": 4},
                                                   batch_size=16, seed=0),
      model_dir=str(model_dir), train_steps=30, initial_checkpoint_path=base, log_every=5,
      checkpoint_cfg=trainer.CheckpointConfig(period=10))
  return task, model, base, model_dir, result


def test_prompt_tuning_loss_falls_on_real_task(shared_data, tmp_path):
  """Prompt tuning of a small frozen T5 (saved as a T5X checkpoint) on SST-2 TSVs."""
  import jax
  from spot.checkpoints import save_t5x
  from spot.train.models import EncoderDecoderModel
  task = helpers.register_sst2(shared_data)
  small = helpers.tiny_prompt_model(shared_data, prompt_length=8)
  config = small.config.replace(emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64)
  model = EncoderDecoderModel(config, small.prompt, small.vocabulary)
  base = EncoderDecoderModel(config).init_params(jax.random.PRNGKey(0))
  ckpt = save_t5x(tmp_path / "base", base, step=0)
  result = trainer.train(
      model=model, train_dataset_cfg=DatasetConfig(task, {"inputs": 32, "targets": 4},
                                                   batch_size=16),
      model_dir=str(tmp_path / "run"), train_steps=30, initial_checkpoint_path=str(ckpt),
      log_every=5)
  losses = [l for _, l in result.losses]
  assert len(losses) == 6
  assert np.mean(losses[-2:]) < losses[0] - 0.8, losses


def test_model_tuning_loss_falls_on_real_checkpoint(shared_data, tmp_path):
  """Full fine-tuning of the real tiny T5X checkpoint (the papers' baseline)."""
  from spot.train import optimizers
  from spot.train.models import EncoderDecoderModel
  task = helpers.register_sst2(shared_data)
  vocab = helpers.tiny_prompt_model(shared_data).vocabulary
  model = EncoderDecoderModel(helpers.get_config("t5_1_1_tiny", dropout_rate=0.0), None, vocab)
  result = trainer.train(
      model=model, train_dataset_cfg=DatasetConfig(task, {"inputs": 32, "targets": 4},
                                                   batch_size=16),
      model_dir=str(tmp_path), train_steps=30, trainable="all",
      optimizer=optimizers.adafactor(0.01),
      initial_checkpoint_path=str(shared_data / helpers.TINY_CHECKPOINT), log_every=5)
  losses = [l for _, l in result.losses]
  assert np.mean(losses[-2:]) < losses[0] - 1.0, losses
  run = json.loads((tmp_path / "run.json").read_text())
  assert run["num_frozen"] == 0 and run["num_trainable"] > 250_000


def test_only_prompt_changes_frozen_bit_identical(sst2_run):
  _, model, base, model_dir, _ = sst2_run
  from spot.checkpoints import load_t5x
  before = traverse_util.flatten_dict(load_t5x(base), sep="/")
  after, meta = state_lib.params_from_run(model, str(model_dir))
  after = traverse_util.flatten_dict(after, sep="/")
  assert meta["base_checkpoint"] == base
  assert set(after) - set(before) == {"encoder/prompt/prompt/prompt"}
  for k, v in before.items():
    np.testing.assert_array_equal(np.asarray(after[k]), v, err_msg=k)
  initial = state_lib.initial_params(model, base, seed=0)["encoder"]["prompt"]["prompt"]["prompt"]
  assert not np.allclose(after["encoder/prompt/prompt/prompt"], initial)


def test_checkpoint_holds_only_trainable_state(sst2_run):
  _, _, _, model_dir, result = sst2_run
  run = json.loads((model_dir / "run.json").read_text())
  assert run["trainable_params"] == ["encoder/prompt/prompt/prompt"]
  assert run["num_trainable"] == 4 * 4
  size = sum(f.stat().st_size for f in (model_dir / "checkpoints").rglob("*") if f.is_file())
  assert size < 200_000, size  # the frozen tiny model alone is 2 MB
  npy = checkpointing.latest_numpy_prompt(str(model_dir))
  assert npy.shape == (4, 4)
  assert (model_dir / "numpy_checkpoints" / "checkpoint_30" /
          "encoder.prompt.prompt.prompt.npy").exists()
  assert list((model_dir / "train").glob("events.out.tfevents.*"))
  assert result.step == 30


WORKER = r"""
import sys
from tests import helpers
from spot.train import trainer
from spot.train.data import DatasetConfig
import pathlib
shared, model_dir, stop = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
task = helpers.register_sst2(shared)
model = helpers.tiny_prompt_model(shared, dropout_rate=0.1)
trainer.train(model=model, train_dataset_cfg=DatasetConfig(task, {"inputs": 32, "targets": 4},
              batch_size=8, seed=3), model_dir=model_dir, train_steps=60,
              initial_checkpoint_path=str(shared / helpers.TINY_CHECKPOINT), seed=3, log_every=1,
              checkpoint_cfg=trainer.CheckpointConfig(period=10, keep=2),
              stop_after_steps=None if stop == "none" else int(stop))
"""


def _worker(shared_data, model_dir, stop="none"):
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  return subprocess.Popen([sys.executable, "-c", WORKER, str(shared_data), str(model_dir), stop],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_resume_after_kill_equals_uninterrupted(shared_data, tmp_path):
  full, killed = tmp_path / "full", tmp_path / "killed"
  p_full = _worker(shared_data, full)
  p_kill = _worker(shared_data, killed)
  # kill -9 the second run as soon as its step-20 checkpoint is complete.
  deadline = time.time() + 240
  while time.time() < deadline and p_kill.poll() is None:
    if (killed / "checkpoints" / "20").exists():
      break
    time.sleep(0.05)
  assert p_kill.poll() is None, p_kill.communicate()[0]
  p_kill.send_signal(signal.SIGKILL)
  p_kill.wait()
  latest = checkpointing.RunCheckpointer(str(killed)).latest_step()
  assert latest is not None and 20 <= latest < 60, latest
  out = _worker(shared_data, killed).communicate(timeout=300)[0]
  assert "Resuming" in out, out
  assert p_full.wait(timeout=300) == 0, p_full.communicate()[0]
  a = checkpointing.latest_numpy_prompt(str(full))
  b = checkpointing.latest_numpy_prompt(str(killed))
  np.testing.assert_array_equal(a, b)


def test_early_stop_and_best_checkpoint(shared_data, tmp_path):
  task = helpers.register_sst2(shared_data)
  model = helpers.tiny_prompt_model(shared_data)
  result = trainer.train(
      model=model, train_dataset_cfg=DatasetConfig(task, {"inputs": 32, "targets": 4},
                                                   batch_size=8),
      model_dir=str(tmp_path), train_steps=40,
      initial_checkpoint_path=str(shared_data / helpers.TINY_CHECKPOINT), log_every=10,
      eval_cfg=trainer.EvalConfig(period=4, num_examples=16, batch_size=8,
                                  best_metric="accuracy", mode="max",
                                  early_stopping_patience=2))
  assert result.eval_history, "no evaluation ran"
  assert all(f"{task}/accuracy" in r for _, r in result.eval_history)
  assert result.best is not None
  assert (tmp_path / "best" / str(result.best[0])).exists()
  if result.stopped_early:
    assert result.step < 40


def test_early_stopping_min_and_max_and_meta_roundtrip():
  from spot.train.early_stopping import EarlyStopping
  losses = {2: 3.0, 4: 2.5, 6: 2.7, 8: 2.6}
  stop = EarlyStopping("loss", mode="min", patience=2)
  improved = [stop.update(s, {"t/loss": v}) for s, v in losses.items()]
  assert improved == [True, True, False, False]
  assert stop.best == (4, 2.5) and stop.should_stop and stop.final() == (4, {"t/loss": 2.5})
  up = EarlyStopping("loss", mode="max", patience=4)
  assert [up.update(s, {"t/loss": v}) for s, v in losses.items()] == [True, False, False, False]
  assert up.best == (2, 3.0) and up.bad_evals == 3 and not up.should_stop
  again = EarlyStopping("loss", mode="min", patience=2).restore_meta(stop.to_meta())
  assert (again.history, again.best, again.bad_evals) == (stop.history, stop.best, 2)
  assert again.should_stop and again.evaluated(8) and not again.evaluated(10)
  assert not EarlyStopping().update(2, {"t/loss": 1.0})  # no best_metric: history only
  with pytest.raises(ValueError, match="'max' or 'min'"):
    EarlyStopping("loss", mode="lowest")


def test_state_step_and_eval_step_through_the_partitioner():
  """TrainState init, its shardings, and both steps compiled by Partitioner.partition."""
  import jax
  import jax.numpy as jnp
  import optax
  from spot import partitioning
  from spot.train import train_state, trainable as trainable_lib
  model = helpers.tiny_random_model()
  params = model.init_params(jax.random.PRNGKey(0))
  tr, frozen = trainable_lib.split(params, "prompt")
  tr_axes, fr_axes = trainable_lib.split(model.param_axes(), "prompt")
  part = partitioning.Partitioner.create()
  tx = optax.sgd(0.01)  # small enough that one step lowers this batch's loss
  state, shardings = train_state.create_state(part, tx, tr, tr_axes)
  assert int(state.step) == 0 and isinstance(shardings, train_state.TrainState)
  fr_sh = part.logical_to_mesh(fr_axes, frozen)
  rng = np.random.default_rng(0)
  batch = {"encoder_input_tokens": rng.integers(2, 64, (4, 6), dtype=np.int32),
           "decoder_input_tokens": rng.integers(2, 64, (4, 3), dtype=np.int32),
           "decoder_target_tokens": rng.integers(2, 64, (4, 3), dtype=np.int32),
           "decoder_loss_weights": np.ones((4, 3), np.float32)}
  eval_step = trainer.compile_eval_step(part, model, shardings, fr_sh, batch)
  before = eval_step(state, frozen, batch)
  loss, _ = model.loss(trainable_lib.merge(tr, frozen), batch)
  np.testing.assert_allclose(float(before["loss"]), float(loss), rtol=1e-6)
  step = trainer.compile_train_step(part, trainer.make_state_step(model, tx), shardings, fr_sh,
                                    batch)
  expected, _, _ = trainer.make_train_step(model, tx)(
      tr, tx.init(tr), frozen, batch, jnp.int32(0), jax.random.PRNGKey(0))
  state, metrics = step(state, frozen, batch, jax.random.PRNGKey(0))
  assert int(state.step) == 1 and bool(metrics["finite"])
  for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(state.trainable)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)  # jit vs eager
  assert float(eval_step(state, frozen, batch)["loss"]) < float(before["loss"])
