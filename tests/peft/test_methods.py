"""Every PEFT method on a frozen T5X checkpoint and SST-2: only its parameters
change, the loss falls, the checkpoint round-trips; LoRA / (IA)3 merge exactly."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from spot import errors, peft
from spot.models import T5, get_config, init_params
from spot.train import optimizers, state as state_lib, trainable as trainable_lib, trainer
from spot.train.data import DatasetConfig
from spot.train.models import EncoderDecoderModel

from tests import helpers

pytestmark = pytest.mark.filterwarnings("ignore")

METHODS = {
    "lora": (peft.LoraConfig(rank=2, alpha=4.0, targets=peft.TARGETS), "lora", 0.1),
    "ia3": (peft.IA3Config(), "ia3", 0.1),
    "adapter_houlsby": (peft.AdapterConfig("houlsby", hidden=4), "adapter", 0.3),
    "adapter_pfeiffer": (peft.AdapterConfig("pfeiffer", hidden=4), "adapter", 0.3),
    "bitfit": (peft.BitFitConfig(), "bitfit", 0.1),
    "layernorm": (None, "layernorm", 0.1),
    "attention": (None, "attention", 0.02),
}


def _flat(tree):
  return traverse_util.flatten_dict(dict(tree), sep="/")


@pytest.fixture(scope="module", params=sorted(METHODS))
def method_run(request, shared_data, tmp_path_factory):
  """A 30-step run of one method on a frozen T5X checkpoint and SST-2 (local TSVs)."""
  spec, trainable, lr = METHODS[request.param]
  from spot.checkpoints import save_t5x
  task = helpers.register_sst2(shared_data)
  vocab = helpers.tiny_prompt_model(shared_data).vocabulary
  # The tiny checkpoint's width 4 leaves a frozen model too narrow to move the loss, so the
  # base is a width-32 random T5 1.1 saved as a T5X checkpoint (as the prompt tests do).
  config = get_config("t5_1_1_tiny", dropout_rate=0.0).replace(emb_dim=32, num_heads=4,
                                                               head_dim=8, mlp_dim=64)
  model = EncoderDecoderModel(config, None, vocab, peft=spec)
  model_dir = tmp_path_factory.mktemp(request.param)
  base = str(save_t5x(model_dir.parent / f"{request.param}_base",
                      EncoderDecoderModel(config).init_params(jax.random.PRNGKey(0)), step=0))
  result = trainer.train(
      model=model, train_dataset_cfg=DatasetConfig(task, {"inputs": 32, "targets": 4},
                                                   batch_size=16, pack=False),
      model_dir=str(model_dir), train_steps=30, trainable=trainable,
      optimizer=optimizers.adafactor(lr), initial_checkpoint_path=base, log_every=5,
      checkpoint_cfg=trainer.CheckpointConfig(period=10), method=request.param, verbose=False)
  return request.param, model, trainable, base, model_dir, result


def test_loss_falls(method_run):
  name, _, _, _, _, result = method_run
  losses = [l for _, l in result.losses]
  assert np.mean(losses[-2:]) < losses[0] - 0.3, (name, losses)


def test_only_method_parameters_change(method_run):
  """The frozen base is bit-identical; the method's parameters moved from their init."""
  name, model, trainable, base, model_dir, _ = method_run
  from spot.checkpoints import load_t5x
  before = _flat(load_t5x(base))
  after, _ = state_lib.params_from_run(model, str(model_dir))
  after = _flat(after)
  selected = set(trainable_lib.matching(after, trainable))
  assert selected, name
  initial = _flat(state_lib.initial_params(model, base, seed=0))
  moved = [k for k in selected if not np.array_equal(after[k], initial[k])]
  assert moved, name
  for k, v in before.items():
    if k not in selected:
      np.testing.assert_array_equal(np.asarray(after[k]), v, err_msg=f"{name}: {k}")
  assert set(after) - set(before) <= selected


def test_checkpoint_holds_only_method_and_round_trips(method_run):
  name, model, trainable, base, model_dir, _ = method_run
  run = json.loads((model_dir / "run.json").read_text())
  assert run["trainable_params"] == sorted(trainable_lib.matching(
      _flat(model.init_params(jax.random.PRNGKey(0))), trainable)), name
  assert run["num_trainable"] < run["num_frozen"]
  # Restored twice, the same values: the checkpoint is what later runs read.
  a, _ = state_lib.params_from_run(model, str(model_dir))
  b, _ = state_lib.params_from_run(model, str(model_dir), step=30)
  for k, v in _flat(a).items():
    np.testing.assert_array_equal(np.asarray(v), np.asarray(_flat(b)[k]), err_msg=k)


def _random_method_params(config, spec, seed=1):
  """Base + method parameters with the method's values random (not their identity init)."""
  params = _flat(init_params(config, jax.random.PRNGKey(0), peft=spec))
  rng = np.random.default_rng(seed)
  for k in params:
    if f"/{spec.PARAM}/" in k:
      params[k] = (1.0 + 0.3 * rng.standard_normal(params[k].shape)).astype(np.float32)
  return traverse_util.unflatten_dict(params, sep="/")


@pytest.mark.parametrize("spec", [peft.LoraConfig(rank=2, alpha=3.0, targets=peft.TARGETS),
                                  peft.IA3Config()], ids=["lora", "ia3"])
def test_merged_logits_equal_unmerged(spec):
  config = get_config("t5_1_1_tiny", dropout_rate=0.0).replace(emb_dim=16, num_heads=2,
                                                               head_dim=8, mlp_dim=32)
  params = _random_method_params(config, spec)
  tokens = jnp.asarray(np.random.default_rng(0).integers(2, 100, (2, 7)), jnp.int32)
  unmerged = T5(config, peft=spec).apply({"params": params}, tokens, tokens, tokens,
                                         enable_dropout=False)
  merged_params = peft.merge_peft(params, spec)
  assert set(_flat(merged_params)) == set(_flat(init_params(config)))
  merged = T5(config).apply({"params": merged_params}, tokens, tokens, tokens,
                            enable_dropout=False)
  base = T5(config).apply({"params": init_params(config, jax.random.PRNGKey(0))}, tokens,
                          tokens, tokens, enable_dropout=False)
  assert float(jnp.abs(unmerged - base).max()) > 1e-2  # the method does something
  np.testing.assert_allclose(np.asarray(merged), np.asarray(unmerged), atol=1e-5, rtol=0)


def test_methods_start_at_the_base_model():
  config = get_config("t5_1_1_tiny", dropout_rate=0.0)
  tokens = jnp.asarray([[5, 6, 7, 1]], jnp.int32)
  base_params = init_params(config)
  base = T5(config).apply({"params": base_params}, tokens, tokens, tokens, enable_dropout=False)
  for spec, _, _ in METHODS.values():
    if spec is None:
      continue
    params = init_params(config, peft=spec)
    out = T5(config, peft=spec).apply({"params": params}, tokens, tokens, tokens,
                                      enable_dropout=False)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(base), err_msg=spec.method)


def test_bad_lora_target_and_rank_fail_before_compute():
  with pytest.raises(errors.ConfigError, match=r"LoraConfig.targets=\['q', 'query'\].*choose"):
    peft.LoraConfig(targets=("q", "query"))
  config = get_config("t5_1_1_tiny")
  with pytest.raises(errors.ConfigError, match=r"LoraConfig.rank=8 is larger than the "
                     r"projection .*query \[4, 4\]; use a rank of at most 4"):
    init_params(config, peft=peft.LoraConfig(rank=8, targets=("q",)))


def test_selections_and_method_names_resolve():
  config = get_config("t5_1_1_tiny")
  names = list(_flat(init_params(config)))
  ln = trainable_lib.matching(names, "layernorm")
  assert len(ln) == 2 * 2 + 2 * 3 + 2  # encoder 2/layer, decoder 3/layer, 2 final norms
  assert trainable_lib.matching(names, "layernorm_mlp") == [
      n for n in names if n.endswith("pre_mlp_layer_norm/scale")]
  top = trainable_lib.matching(names, peft.selection("layers", top_k=1, num_layers=2))
  assert top and all("layers_1/" in n for n in top)
  one = trainable_lib.matching(names, peft.selection("layernorm", layer=0))
  assert len(one) == 2 + 3 and all("layers_0/" in n for n in one)
  assert trainable_lib.matching(names, "embeddings") == ["token_embedder/embedding"]
  assert trainable_lib.resolve(["prompt", "lora"]) == trainable_lib.PROMPT_REGEX + (
      r".*/lora/.*",)


def test_config_round_trips_through_dict():
  for spec, _, _ in METHODS.values():
    if spec is not None:
      assert peft.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
  with pytest.raises(errors.ConfigError, match="PEFT method 'prompt_x' is unknown"):
    peft.from_dict({"method": "prompt_x"})
