"""PromptFeatureConverter(pack=True) on tf.data: a prompt per segment, the same loss as unpacked."""

from __future__ import annotations

import functools
import logging

import jax
import numpy as np
import pytest
import tensorflow as tf

from spot.models import T5, get_config
from spot.prompts import FactorizedPrompt, MultiTaskPrompt, PrefixPrompt
from spot.train.data import PromptFeatureConverter, first_fit_indices
from tests import helpers as ph

CONFIG = get_config("t5_1_1_tiny", dropout_rate=0.0).replace(
    vocab_size=96, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
    relative_attention_num_buckets=8, relative_attention_max_distance=16)
P = 3
LENGTHS = {"inputs": 16, "targets": 6}
SIZES = [(5, 3), (3, 2), (2, 1), (16, 6), (7, 4), (4, 2), (9, 1)]
FEATURES = ("prompt_id", "language_id", "task_id")


def _dataset(examples):
  def gen():
    for ex in examples:
      yield {"inputs": np.array(ex.inputs, np.int32), "targets": np.array(ex.targets, np.int32),
             "prompt_id": np.int32(ex.prompt_id), "language": np.int32(ex.language_id),
             "task_id": np.int32(ex.task_id)}
  spec = {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32),
          "prompt_id": tf.TensorSpec([], tf.int32), "language": tf.TensorSpec([], tf.int32),
          "task_id": tf.TensorSpec([], tf.int32)}
  return tf.data.Dataset.from_generator(gen, output_signature=spec)


def _convert(examples, pack, prompt_length=P, lengths=LENGTHS, **kwargs):
  converter = PromptFeatureConverter(prompt_length, pack=pack, prompt_features=FEATURES, **kwargs)
  ds = converter(_dataset(examples), lengths)
  rows = list(ds.as_numpy_iterator())
  return converter, {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_packed_rows_reserve_each_examples_prompt_and_carry_its_ids():
  examples = ph.random_examples(SIZES, CONFIG.vocab_size, seed=3)
  # SeqIO's own order and decoder budget, so rows group consecutive examples.
  converter, packed = _convert(examples, pack=True, pack_window=0, packed_targets_length=6)
  assert converter.encoder_length(LENGTHS) == P + 16
  assert packed["encoder_input_tokens"].shape[1] == P + 16
  assert len(packed["encoder_input_tokens"]) < len(examples)  # several examples per row
  # Row 0 holds examples 0, 1, 2: each segment starts with P placeholders.
  seg, pos = packed["encoder_segment_ids"][0], packed["encoder_positions"][0]
  np.testing.assert_array_equal(seg[:8 + 6 + 5], [1] * 8 + [2] * 6 + [3] * 5)
  np.testing.assert_array_equal(packed["encoder_input_tokens"][0, 8:14],
                                [1, 1, 1, *examples[1].inputs])
  np.testing.assert_array_equal(pos[8:14], np.arange(6))
  for name, attr in (("prompt_id", "prompt_id"), ("language_id", "language_id"),
                     ("task_id", "task_id")):
    np.testing.assert_array_equal(packed[name][0, 8:14], getattr(examples[1], attr))
  # The converter's rows are the hand-built rows of the same grouping.
  groups, r = [], 0
  for s in range(len(packed["encoder_input_tokens"])):
    n = int(packed["encoder_segment_ids"][s].max())
    groups.append(examples[r:r + n])
    r += n
  assert r == len(examples)
  hand = ph.packed_batch(groups, P, 16, 6)
  for key, value in hand.items():
    np.testing.assert_array_equal(packed[key], value, err_msg=key)


def test_unpacked_conversion_is_unchanged():
  examples = ph.random_examples(SIZES, CONFIG.vocab_size, seed=3)
  _, unpacked = _convert(examples, pack=False)
  hand = ph.unpacked_batch(examples, 16, 6)
  assert unpacked["prompt_id"].shape == (len(examples),)
  for key, value in hand.items():
    np.testing.assert_array_equal(unpacked[key], value, err_msg=key)


PROMPTS = {
    "prefix": (functools.partial(PrefixPrompt, length=P), ()),
    "multitask": (functools.partial(MultiTaskPrompt, num_prompts=3, length=P), ("prompt_id",)),
    "factorized": (functools.partial(FactorizedPrompt, num_languages=3, num_tasks=3,
                                     language_length=1, task_length=2),
                   ("language_id", "task_id")),
}


@pytest.mark.parametrize("kind", sorted(PROMPTS))
def test_converted_packed_batch_gives_the_unpacked_loss_and_prompt_gradient(kind):
  factory, inputs = PROMPTS[kind]
  module = T5(CONFIG, factory)
  tokens = np.ones((1, 2), np.int32)
  init_inputs = {n: np.zeros((1,), np.int32) for n in inputs} or None
  params = jax.tree_util.tree_map(np.asarray, module.init(
      jax.random.PRNGKey(2), tokens, tokens, tokens, enable_dropout=False,
      prompt_inputs=init_inputs)["params"])
  params = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), params,
                                  is_leaf=lambda x: hasattr(x, "value"))
  examples = ph.random_examples(SIZES, CONFIG.vocab_size, seed=4)
  _, packed = _convert(examples, pack=True)
  _, unpacked = _convert(examples, pack=False)
  if kind == "multitask":  # rows mix prompt ids
    assert any(len(set(r[s > 0])) > 1 for r, s in zip(packed["prompt_id"],
                                                       packed["encoder_segment_ids"]))
  loss_u, grad_u = ph.loss_and_grad(module, params, unpacked, inputs)
  loss_p, grad_p = ph.loss_and_grad(module, params, packed, inputs)
  assert float(loss_u) > 1.0
  np.testing.assert_allclose(float(loss_p), float(loss_u), rtol=1e-5)
  ph.assert_trees_close(grad_p, grad_u)


def test_examples_longer_than_their_share_are_truncated_and_counted(caplog):
  examples = ph.random_examples([(20, 3), (4, 2), (5, 9), (3, 1)], CONFIG.vocab_size, seed=5)
  with caplog.at_level(logging.WARNING):
    converter, packed = _convert(examples, pack=True, apply_length_check=False)
  assert converter.truncated_examples == 2  # inputs 20 > 16 and targets 9 > 6
  assert "Packing truncated 1 example" in caplog.text
  # Truncated as SeqIO truncates: the first P + 16 positions of the first example.
  np.testing.assert_array_equal(packed["encoder_input_tokens"][0],
                                [1] * P + list(examples[0].inputs[:16]))


def test_with_the_length_check_a_long_example_is_refused_as_before():
  examples = ph.random_examples([(20, 3)], CONFIG.vocab_size, seed=5)
  with pytest.raises(tf.errors.InvalidArgumentError):
    _convert(examples, pack=True)


def test_packing_needs_a_nonzero_placeholder():
  with pytest.raises(ValueError, match="placeholder_id"):
    PromptFeatureConverter(P, pack=True, placeholder_id=0)


def test_model_loss_accepts_the_converted_packed_batch():
  from spot.train.models import EncoderDecoderModel
  factory, _ = PROMPTS["multitask"]
  model = EncoderDecoderModel(CONFIG, factory)
  params = model.init_params(jax.random.PRNGKey(5))
  examples = ph.random_examples(SIZES, CONFIG.vocab_size, seed=6)
  _, packed = _convert(examples, pack=True)
  _, unpacked = _convert(examples, pack=False)
  loss_p, metrics_p = model.loss(params, packed)
  loss_u, metrics_u = model.loss(params, unpacked)
  np.testing.assert_allclose(float(loss_p), float(loss_u), rtol=1e-5)
  assert float(metrics_p["num_tokens"]) == float(metrics_u["num_tokens"]) == sum(
      len(e.targets) for e in examples)


def test_model_tuning_packs_through_the_converter():
  module = T5(CONFIG)
  tokens = np.ones((1, 2), np.int32)
  params = module.init(jax.random.PRNGKey(2), tokens, tokens, tokens, enable_dropout=False)
  params = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), params["params"],
                                  is_leaf=lambda x: hasattr(x, "value"))
  examples = ph.random_examples(SIZES, CONFIG.vocab_size, seed=8)
  converter, packed = _convert(examples, pack=True, prompt_length=0)
  _, unpacked = _convert(examples, pack=False, prompt_length=0)
  assert packed["encoder_input_tokens"].shape[1] == 16
  assert len(packed["encoder_input_tokens"]) < len(examples)
  assert converter.truncated_examples == 0
  loss_u, grad_u = ph.loss_and_grad(module, params, unpacked, trainable=None)
  loss_p, grad_p = ph.loss_and_grad(module, params, packed, trainable=None)
  np.testing.assert_allclose(float(loss_p), float(loss_u), rtol=1e-5)
  ph.assert_trees_close(grad_p, grad_u)


def test_first_fit_indices_order_examples_into_first_fit_decreasing_rows():
  # Row of 12: 10 and 2 share a row, 8 and 3, and 5 is alone (first fit, longest first).
  order = first_fit_indices(np.array([10, 3, 8, 2, 5]), 12)
  np.testing.assert_array_equal(order, [0, 3, 2, 1, 4])
  # An example longer than the row takes a row of its own (it is truncated to it).
  np.testing.assert_array_equal(first_fit_indices(np.array([30, 4, 4]), 12), [0, 1, 2])


def test_the_first_fit_window_fills_rows_seqio_order_leaves_part_empty():
  sizes = [(13, 2), (2, 1), (13, 2), (2, 1), (13, 2), (2, 1)]  # 16 + 5 per pair with P = 3
  examples = ph.random_examples(sizes, CONFIG.vocab_size, seed=6)
  _, in_order = _convert(examples, pack=True, pack_window=0)
  _, first_fit = _convert(examples, pack=True)
  real = lambda b: float(np.mean(b["encoder_segment_ids"] > 0))
  assert len(first_fit["encoder_input_tokens"]) < len(in_order["encoder_input_tokens"])
  assert real(first_fit) > real(in_order)
  # Every example is still there once: the same multiset of segment lengths.
  lengths = lambda b: sorted(int(n) for row in b["encoder_segment_ids"]
                             for n in np.bincount(row)[1:] if n)
  assert lengths(first_fit) == lengths(in_order) == sorted(P + i for i, _ in sizes)


def test_the_packed_decoder_row_makes_room_for_several_examples_targets():
  converter = PromptFeatureConverter(P, pack=True)
  lengths = {"inputs": 64, "targets": 6}
  assert converter.max_segments(lengths) == (P + 64) // (P + 16)
  model_lengths = converter.get_model_feature_lengths(lengths)
  assert model_lengths["decoder_target_tokens"] == 6 * converter.max_segments(lengths)
  # Each example's targets are still cut to TASK_FEATURE_LENGTHS["targets"].
  examples = ph.random_examples([(4, 9), (4, 2)], CONFIG.vocab_size, seed=7)
  conv = PromptFeatureConverter(P, pack=True, prompt_features=FEATURES,
                                apply_length_check=False)
  rows = list(conv(_dataset(examples), lengths).as_numpy_iterator())
  seg = rows[0]["decoder_segment_ids"]
  assert int(np.sum(seg == 1)) == 6 and int(np.sum(seg == 2)) == 2
  assert PromptFeatureConverter(P, pack=True, packed_targets_length=10).get_model_feature_lengths(
      lengths)["decoder_target_tokens"] == 10
