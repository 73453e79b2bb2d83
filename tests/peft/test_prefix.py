"""Prefix tuning: trains only its prefixes, the loss falls on SST-2, the checkpoint
round-trips, the MLP folds away exactly, cached decoding and packed rows see the prefix."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from spot import errors, peft
from spot.models import T5, get_config, init_params, layers, logical_axes
from spot.models import scan as scan_lib
from spot.prompts import PrefixPrompt
from spot.train import models as train_models
from spot.train import optimizers, state as state_lib, trainable as trainable_lib, trainer
from spot.train.data import DatasetConfig

from tests import helpers

pytestmark = pytest.mark.filterwarnings("ignore")

SPEC = peft.PrefixConfig(num_virtual_tokens=3, hidden=8)
CONFIG = get_config("t5_1_1_tiny", dropout_rate=0.0).replace(
    vocab_size=96, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
    relative_attention_num_buckets=8, relative_attention_max_distance=16)


def _flat(tree):
  return traverse_util.flatten_dict(dict(tree), sep="/")


def _tokens(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(2, CONFIG.vocab_size, shape),
                     jnp.int32)


def _logits(spec, params, enc, dec, config=CONFIG):
  return T5(config, peft=spec).apply({"params": params}, enc, dec, None, enable_dropout=False)


@pytest.fixture(scope="module")
def prefix_run(shared_data, tmp_path_factory):
  """A 30-step prefix-tuning run on a frozen T5X checkpoint and SST-2 (local TSVs)."""
  from spot.checkpoints import save_t5x
  task = helpers.register_sst2(shared_data)
  vocab = helpers.tiny_prompt_model(shared_data).vocabulary
  config = get_config("t5_1_1_tiny", dropout_rate=0.0).replace(emb_dim=32, num_heads=4,
                                                               head_dim=8, mlp_dim=64)
  spec = peft.PrefixConfig(num_virtual_tokens=4, hidden=16)
  model = train_models.EncoderDecoderModel(config, None, vocab, peft=spec)
  model_dir = tmp_path_factory.mktemp("prefix")
  base = str(save_t5x(model_dir.parent / "prefix_base",
                      train_models.EncoderDecoderModel(config).init_params(
                          jax.random.PRNGKey(0)), step=0))
  result = trainer.train(
      model=model, train_dataset_cfg=DatasetConfig(task, {"inputs": 32, "targets": 4},
                                                   batch_size=16, pack=False),
      model_dir=str(model_dir), train_steps=30, trainable="prefix",
      optimizer=optimizers.adafactor(0.1), initial_checkpoint_path=base, log_every=5,
      checkpoint_cfg=trainer.CheckpointConfig(period=10), method="prefix", verbose=False)
  return model, base, model_dir, result


def test_loss_falls(prefix_run):
  losses = [l for _, l in prefix_run[3].losses]
  assert np.mean(losses[-2:]) < losses[0] - 0.3, losses


def test_only_prefix_parameters_change(prefix_run):
  """The frozen base is bit-identical; the prefix parameters moved from their init."""
  model, base, model_dir, _ = prefix_run
  from spot.checkpoints import load_t5x
  before = _flat(load_t5x(base))
  after = _flat(state_lib.params_from_run(model, str(model_dir))[0])
  selected = set(trainable_lib.matching(after, "prefix"))
  assert selected == set(after) - set(before)
  assert all("/prefix/" in k for k in selected)
  initial = _flat(state_lib.initial_params(model, base, seed=0))
  assert all(not np.array_equal(after[k], initial[k]) for k in selected
             if not k.endswith("bias")), sorted(selected)
  for k, v in before.items():
    np.testing.assert_array_equal(np.asarray(after[k]), v, err_msg=k)


def test_checkpoint_holds_only_prefix_and_round_trips(prefix_run):
  model, _, model_dir, _ = prefix_run
  run = json.loads((model_dir / "run.json").read_text())
  assert run["trainable_params"] == sorted(trainable_lib.matching(
      _flat(model.init_params(jax.random.PRNGKey(0))), "prefix"))
  assert run["num_trainable"] < run["num_frozen"]
  assert peft.from_dict(run["peft"]) == model.peft
  a = _flat(state_lib.params_from_run(model, str(model_dir))[0])
  b = _flat(state_lib.params_from_run(model, str(model_dir), step=30)[0])
  for k, v in a.items():
    np.testing.assert_array_equal(np.asarray(v), np.asarray(b[k]), err_msg=k)


def test_trained_prefix_folds(prefix_run):
  model, _, model_dir, _ = prefix_run
  params = state_lib.params_from_run(model, str(model_dir))[0]
  folded = peft.fold_prefix(params, model.peft)
  enc, dec = _tokens((2, 9)) % 50, _tokens((2, 4), 1) % 50
  want = _logits(model.peft, params, enc, dec, model.config)
  got = _logits(model.peft.folded(), folded, enc, dec, model.config)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


def test_prefix_lives_in_every_chosen_attention_with_logical_axes():
  params = _flat(init_params(CONFIG, peft=SPEC))
  assert params["encoder/prefix/embedding"].shape == (3, 16)
  assert params["decoder/prefix/hidden/kernel"].shape == (16, 8)
  for attn in ("encoder/layers_1/attention", "decoder/layers_0/self_attention",
               "decoder/layers_1/encoder_decoder_attention"):
    assert params[f"{attn}/prefix/key_out/kernel"].shape == (8, 16)
    assert params[f"{attn}/prefix/value_out/bias"].shape == (16,)
  axes = _flat(logical_axes(CONFIG, peft=SPEC.folded()))
  assert tuple(axes["encoder/layers_0/attention/prefix/key"]) == ("prefix", "joined_kv")
  folded = _flat(init_params(CONFIG, peft=SPEC.folded()))
  assert folded["decoder/layers_1/self_attention/prefix/value"].shape == (3, 16)
  assert not any(k.startswith(("encoder/prefix", "decoder/prefix")) for k in folded)
  only_decoder = _flat(init_params(CONFIG, peft=peft.PrefixConfig(2, targets=("decoder_self",))))
  assert not any("prefix" in k for k in only_decoder if k.startswith("encoder/"))
  assert "decoder/layers_0/encoder_decoder_attention/prefix/key_out/kernel" not in only_decoder


@pytest.mark.parametrize("scanned", [False, True], ids=["unrolled", "scanned"])
def test_folded_logits_equal_unfolded(scanned):
  config = CONFIG.replace(scan_layers=scanned)
  params = init_params(config, jax.random.PRNGKey(3), peft=SPEC)
  enc, dec = _tokens((2, 7)), _tokens((2, 5), 1)
  unfolded = _logits(SPEC, params, enc, dec, config)
  folded_params = peft.fold_prefix(params, SPEC)
  assert scan_lib.is_scanned(folded_params) == scanned
  flat = _flat(folded_params)
  assert set(flat) == set(_flat(init_params(config, peft=SPEC.folded())))
  folded = _logits(SPEC.folded(), folded_params, enc, dec, config)
  base = T5(config).apply({"params": init_params(config, jax.random.PRNGKey(3))}, enc, dec,
                          None, enable_dropout=False)
  assert float(jnp.abs(unfolded - base).max()) > 1e-2  # the prefix does something
  np.testing.assert_allclose(np.asarray(folded), np.asarray(unfolded), atol=1e-5, rtol=0)


def test_prefix_positions_are_visible_and_get_no_position_bias():
  key = jnp.ones((2, 4, 2, 3))
  mask = layers.make_segment_mask(jnp.array([[1, 1, 2, 0]] * 2), jnp.array([[1, 1, 2, 0]] * 2))
  bias = jnp.full((1, 2, 4, 4), 0.5)
  pk = jnp.arange(30.0).reshape(5, 6)
  k, v, m, b = layers.prepend_prefix(key, 2 * key, mask, bias, pk, -pk)
  assert k.shape == v.shape == (2, 9, 2, 3) and m.shape == (2, 1, 4, 9) and b.shape == (1, 2, 4, 9)
  np.testing.assert_array_equal(np.asarray(k[1, :5]), np.asarray(pk).reshape(5, 2, 3))
  np.testing.assert_array_equal(np.asarray(v[0, 5:]), 2.0)
  assert bool(m[:, :, :, :5].all())  # every query, every segment, padding too
  np.testing.assert_array_equal(np.asarray(m[:, :, :, 5:]), np.asarray(mask))
  np.testing.assert_array_equal(np.asarray(b[..., :5]), 0.0)
  np.testing.assert_array_equal(np.asarray(b[..., 5:]), 0.5)


@pytest.mark.parametrize("spec", [SPEC, SPEC.folded()], ids=["reparameterized", "folded"])
def test_cached_greedy_decoding_equals_full_forward_argmax(spec):
  params = init_params(CONFIG, jax.random.PRNGKey(2), peft=spec)
  module = T5(CONFIG, peft=spec)
  enc = _tokens((3, 6), 4).at[:, 4:].set(0)
  steps = 5
  encoded, valid = train_models.encode(module, params, enc)
  cache = train_models.init_cache(module, params, encoded, valid, steps)
  step = jax.jit(train_models.make_tokens_to_logits(module, params, encoded, valid, steps))
  ids, cached, cached_logits = jnp.zeros((3, 1), jnp.int32), [], []
  for _ in range(steps):
    logits, cache = step(ids, cache)
    ids = jnp.argmax(logits, -1).astype(jnp.int32)[:, None]
    cached.append(ids[:, 0])
    cached_logits.append(logits)
  cached = jnp.stack(cached, 1)
  full = jnp.zeros((3, 0), jnp.int32)
  for t in range(steps):
    dec = train_models.shift_right(jnp.pad(full, ((0, 0), (0, steps - t))))
    logits = module.apply({"params": params}, enc, dec, None, enable_dropout=False)
    np.testing.assert_allclose(np.asarray(logits[:, t]), np.asarray(cached_logits[t]),
                               atol=1e-4, rtol=0)
    full = jnp.concatenate([full, jnp.argmax(logits[:, t], -1).astype(jnp.int32)[:, None]], 1)
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(full))
  base = T5(CONFIG).apply({"params": init_params(CONFIG, jax.random.PRNGKey(2))}, enc,
                          train_models.shift_right(full), None, enable_dropout=False)
  assert float(jnp.abs(base - module.apply({"params": params}, enc,
                                           train_models.shift_right(full), None,
                                           enable_dropout=False)).max()) > 1e-2


def test_every_packed_segment_sees_the_prefix():
  module = T5(CONFIG, peft=SPEC)
  params = init_params(CONFIG, jax.random.PRNGKey(1), peft=SPEC)
  examples = helpers.random_examples([(5, 3), (3, 2), (2, 1), (12, 6), (7, 4)], 96)
  unpacked = helpers.unpacked_batch(examples, 16, 6)
  packed = helpers.packed_batch([examples[:3], examples[3:4], examples[4:]], 0, 16, 6)
  loss_u = helpers.summed_loss(module, params, unpacked)
  loss_p = helpers.summed_loss(module, params, packed)
  np.testing.assert_allclose(float(loss_p), float(loss_u), rtol=1e-5)
  no_prefix = helpers.summed_loss(T5(CONFIG), init_params(CONFIG, jax.random.PRNGKey(1)),
                                  unpacked)
  assert abs(float(no_prefix) - float(loss_u)) > 1e-3


def test_composes_with_a_prompt():
  spec = peft.PrefixConfig(num_virtual_tokens=2, hidden=4)
  prompt = lambda: PrefixPrompt(length=3)
  params = init_params(CONFIG, peft=spec, prompt_factory=prompt)
  names = list(_flat(params))
  both = trainable_lib.matching(names, ["prompt", "prefix"])
  assert any(n.startswith("encoder/prompt/") for n in both)
  assert "encoder/prefix/embedding" in both
  enc, dec = _tokens((2, 5)), _tokens((2, 3), 1)
  out = T5(CONFIG, prompt, spec).apply({"params": params}, enc, dec, None, enable_dropout=False)
  assert out.shape == (2, 3, CONFIG.vocab_size) and bool(jnp.isfinite(out).all())


@pytest.mark.parametrize("kwargs, setting", [
    ({"num_virtual_tokens": 0}, r"PrefixConfig.num_virtual_tokens=0; it must be a positive"),
    ({"hidden": -4}, r"PrefixConfig.hidden=-4"),
    ({"num_virtual_tokens": 2.5}, r"PrefixConfig.num_virtual_tokens=2.5"),
    ({"targets": ("encoder",)}, r"PrefixConfig.targets=\['encoder'\] names no attention.*"
                                r"encoder_self"),
    ({"targets": ()}, r"PrefixConfig.targets=\[\]"),
])
def test_bad_config_fails_before_compute(kwargs, setting):
  with pytest.raises(errors.ConfigError, match=setting):
    peft.PrefixConfig(**kwargs)


def test_config_round_trips_and_names_its_parameters():
  for spec in (SPEC, SPEC.folded(), peft.PrefixConfig(targets=("encoder_self",))):
    assert peft.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
  assert peft.METHODS["prefix"] is peft.PrefixConfig
  assert trainable_lib.resolve("prefix") == (r".*/prefix/.*",)
  with pytest.raises(errors.ConfigError, match="fold_prefix needs a PrefixConfig"):
    peft.fold_prefix({}, peft.LoraConfig())
