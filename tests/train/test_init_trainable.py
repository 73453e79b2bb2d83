"""INIT_TRAINABLE_FROM: a fresh LoRA run starts from another run's trained LoRA
parameters (the base unchanged); a shape mismatch fails before compute."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from spot import errors, peft
from spot.models import get_config
from spot.train import models as train_models
from spot.train import optimizers, state as state_lib, trainer
from spot.train.data import DatasetConfig

from tests import helpers

pytestmark = pytest.mark.filterwarnings("ignore")

CONFIG = get_config("t5_1_1_tiny", dropout_rate=0.0).replace(emb_dim=32, num_heads=4,
                                                             head_dim=8, mlp_dim=64)


def _flat(tree):
  return traverse_util.flatten_dict(dict(tree), sep="/")


def _model(shared_data, rank):
  vocab = helpers.tiny_prompt_model(shared_data).vocabulary
  spec = peft.LoraConfig(rank=rank, alpha=4.0, targets=peft.TARGETS)
  return train_models.EncoderDecoderModel(CONFIG, None, vocab, peft=spec)


def _train(shared_data, model, model_dir, base, steps, init_from=None):
  task = helpers.register_sst2(shared_data)
  return trainer.train(
      model=model, train_dataset_cfg=DatasetConfig(task, {"inputs": 32, "targets": 4},
                                                   batch_size=8, pack=False),
      model_dir=str(model_dir), train_steps=steps, trainable="lora",
      optimizer=optimizers.adafactor(0.1), initial_checkpoint_path=base, log_every=5,
      method="lora", verbose=False, init_trainable_from=init_from)


@pytest.fixture(scope="module")
def upstream(shared_data, tmp_path_factory):
  from spot.checkpoints import save_t5x
  root = tmp_path_factory.mktemp("init_trainable")
  base = str(save_t5x(root / "base", train_models.EncoderDecoderModel(CONFIG).init_params(
      jax.random.PRNGKey(0)), step=0))
  model = _model(shared_data, rank=2)
  _train(shared_data, model, root / "up", base, steps=5)
  return model, base, root


def test_downstream_starts_from_upstream_lora(shared_data, upstream):
  model, base, root = upstream
  up = _flat(state_lib.trainable_from_run(str(root / "up")))
  assert up and all("lora" in k for k in up)
  # Zero steps: the committed step-0 checkpoint holds exactly the initial values.
  _train(shared_data, model, root / "down", base, steps=0, init_from=str(root / "up"))
  down = _flat(state_lib.trainable_from_run(str(root / "down")))
  assert set(down) == set(up)
  for k, v in up.items():
    np.testing.assert_array_equal(down[k], v, err_msg=k)
  fresh = _flat(state_lib.initial_params(model, base, seed=0))
  assert any(not np.allclose(fresh[k], v) for k, v in up.items())
  params, _ = state_lib.params_from_run(model, str(root / "down"))
  from spot.checkpoints import load_t5x
  for k, v in _flat(load_t5x(base)).items():
    np.testing.assert_array_equal(np.asarray(_flat(params)[k]), v, err_msg=k)
  run = json.loads((root / "down" / "run.json").read_text())
  assert run["init_trainable_from"] == str(root / "up")


def test_shape_mismatch_fails_before_compute(shared_data, upstream):
  _, base, root = upstream
  with pytest.raises(errors.UsageError, match=r"INIT_TRAINABLE_FROM=.*up.* has parameter "
                     r".*lora.* with shape \[.*2.*\] but this run trains \[.*3.*\]"):
    _train(shared_data, _model(shared_data, rank=3), root / "bad", base, steps=1,
           init_from=str(root / "up"))
  assert not (root / "bad" / "run.json").exists()
