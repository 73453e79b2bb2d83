"""EncoderDecoderModel owns its computation: features, loss, scores, decoding, ranking."""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spot.models import get_config
from spot.prompts import MultiTaskPrompt, PrefixPrompt
from spot.train import batching, inference
from spot.train.models import EncoderDecoderModel
from tests import helpers as ph

EOS = 1
CONFIG = get_config("t5_1_1_tiny", dropout_rate=0.0).replace(
    vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32)
LENGTH = 5


@pytest.fixture(scope="module")
def tiny():
  """(model with a 3-position prefix prompt, params, batch of 3 with padded targets)."""
  model = EncoderDecoderModel(CONFIG, functools.partial(PrefixPrompt, length=3))
  params = model.init_params(jax.random.PRNGKey(0))
  # Boost the EOS logit so that random-weight outputs end at varying lengths.
  kernel = params["decoder"]["logits_dense"]["kernel"]
  params["decoder"]["logits_dense"]["kernel"] = kernel.at[:, EOS].multiply(1.8)
  enc = np.array(jax.random.randint(jax.random.PRNGKey(1), (3, 7), 2, CONFIG.vocab_size))
  enc[0, 5:] = 0
  targets = np.array([[5, 9, 1, 0, 0], [7, 1, 0, 0, 0], [3, 4, 8, 6, 1]], np.int32)
  batch = {"encoder_input_tokens": enc.astype(np.int32), "decoder_target_tokens": targets,
           "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
           "decoder_loss_weights": (targets > 0).astype(np.int32)}
  return model, params, batch


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  top = logits.max(-1, keepdims=True)
  return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def test_model_features_drop_unknown_keys_and_keep_prompt_and_packing_features():
  model = EncoderDecoderModel(CONFIG, functools.partial(MultiTaskPrompt, num_prompts=2, length=3))
  ones = np.ones((2, 4), np.int32)
  batch = {k: ones for k in ("encoder_input_tokens", "decoder_input_tokens",
                             "decoder_target_tokens", "decoder_loss_weights",
                             "encoder_segment_ids", "encoder_positions",
                             "decoder_segment_ids", "decoder_positions")}
  batch.update(prompt_id=np.array([0, 1]), task_id=np.array([1, 1]), inputs_pretokenized=
               np.array([b"a", b"b"]), example_id=np.array([7, 8]))
  features = model.model_features(batch)
  assert sorted(features) == sorted(
      ["encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
       "decoder_loss_weights", "encoder_segment_ids", "encoder_positions",
       "decoder_segment_ids", "decoder_positions", "prompt_id"])
  np.testing.assert_array_equal(features["prompt_id"], [0, 1])
  # A prefix prompt reads no per-example feature: prompt_id and task_id go.
  prefix = EncoderDecoderModel(CONFIG, functools.partial(PrefixPrompt, length=3))
  assert "prompt_id" not in prefix.model_features(batch)
  with pytest.raises(ValueError, match=r"needs batch features \['prompt_id'\]"):
    model.model_features({"encoder_input_tokens": ones})


def test_score_batch_is_the_hand_computed_log_softmax_sum(tiny):
  model, params, batch = tiny
  logits = np.asarray(jax.jit(model.logits)(params, batch))
  assert logits.shape == (3, LENGTH, CONFIG.vocab_size)
  lp = _log_softmax(logits)
  targets = batch["decoder_target_tokens"]
  picked = np.take_along_axis(lp, targets[..., None], -1)[..., 0]
  expected = (picked * (targets > 0)).sum(-1)
  scores = np.asarray(model.score_batch(params, batch))
  np.testing.assert_allclose(scores, expected, rtol=1e-5)
  assert (scores < 0).all() and len(set(np.round(scores, 3))) == 3
  # Decoder inputs and weights default to shifted targets and targets > 0.
  bare = {k: batch[k] for k in ("encoder_input_tokens", "decoder_target_tokens")}
  np.testing.assert_allclose(model.score_batch(params, bare), scores, rtol=1e-6)
  with_aux, intermediates = model.score_batch(params, batch, return_intermediates=True)
  np.testing.assert_allclose(with_aux, scores, rtol=1e-6)
  assert isinstance(intermediates, dict)


def test_loss_fn_is_cross_entropy_plus_z_loss_and_loss_is_its_alias(tiny):
  model, params, batch = tiny
  loss, metrics = jax.jit(model.loss_fn)(params, batch)
  logits = np.asarray(jax.jit(model.logits)(params, batch), np.float64)
  targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
  log_z = np.log(np.exp(logits).sum(-1))
  picked = np.take_along_axis(_log_softmax(logits), targets[..., None], -1)[..., 0]
  expected = ((-picked + 1e-4 * log_z ** 2) * weights).sum()
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert float(metrics["num_tokens"]) == 10.0 and float(metrics["num_examples"]) == 3.0
  np.testing.assert_allclose(-model.score_batch(params, batch).sum(),
                             expected - (1e-4 * log_z ** 2 * weights).sum(), rtol=1e-5)
  alias, _ = jax.jit(model.loss)(params, batch)
  np.testing.assert_array_equal(alias, loss)


def test_loss_fn_passes_packing_features_through():
  """A packed batch's summed loss equals the unpacked one's (multi-task prompt, 2 tasks a row)."""
  model = EncoderDecoderModel(CONFIG, functools.partial(MultiTaskPrompt, num_prompts=3, length=2))
  params = model.init_params(jax.random.PRNGKey(3))
  examples = ph.random_examples([(5, 3), (3, 2), (6, 4), (2, 2)], CONFIG.vocab_size, seed=1)
  unpacked = ph.unpacked_batch(examples, 6, 4)
  packed = ph.packed_batch([examples[:2], examples[2:]], 2, 10, 6)
  assert len(set(packed["prompt_id"][0, :11].tolist())) == 2  # two tasks in one row
  loss_fn = jax.jit(model.loss_fn)
  (a, ma), (b, mb) = loss_fn(params, unpacked), loss_fn(params, packed)
  np.testing.assert_allclose(b, a, rtol=1e-5)
  assert float(ma["num_tokens"]) == float(mb["num_tokens"]) == 11.0


def _uncached_greedy(model, params, batch, length):
  """Greedy decoding by full teacher-forced passes: one forward per output position."""
  logits_fn = jax.jit(model.logits)
  enc = batch["encoder_input_tokens"]
  out = np.zeros((enc.shape[0], length), np.int32)
  done = np.zeros(enc.shape[0], bool)
  for t in range(length):
    dec_in = np.pad(out, ((0, 0), (1, 0)))[:, :-1]
    logits = np.asarray(logits_fn(params, {"encoder_input_tokens": enc,
                                           "decoder_input_tokens": dec_in,
                                           "decoder_target_tokens": np.ones_like(out)}))
    out[:, t] = np.where(done, 0, logits[:, t].argmax(-1))
    done |= out[:, t] == EOS
  return out


def test_predict_batch_greedy_equals_uncached_argmax_and_the_module_path(tiny):
  model, params, batch = tiny
  tokens, scores = model.predict_batch(params, batch, max_decode_length=LENGTH,
                                       return_scores=True)
  tokens = np.asarray(tokens)
  np.testing.assert_array_equal(tokens, _uncached_greedy(model, params, batch, LENGTH))
  assert (tokens == EOS).any()
  # The greedy score is the log likelihood of the decoded tokens.
  np.testing.assert_allclose(scores, model.score_batch(
      params, {"encoder_input_tokens": batch["encoder_input_tokens"],
               "decoder_target_tokens": tokens}), rtol=1e-4, atol=1e-4)
  # The module-style call of spot.train.inference is the same computation.
  old_tokens, old_scores = inference.predict_batch(model.module, params, batch,
                                                   max_decode_length=LENGTH)
  np.testing.assert_array_equal(old_tokens, tokens)
  np.testing.assert_array_equal(old_scores, scores)
  np.testing.assert_array_equal(model.predict_batch(params, batch), tokens)  # length from targets
  beams, aux = model.predict_batch_with_aux(params, batch, method="beam", num_decodes=2,
                                            return_all_decodes=True)
  assert beams.shape == (3, 2, LENGTH) and aux["scores"].shape == (3, 2)
  assert (np.diff(np.asarray(aux["scores"]), axis=1) >= 0).all()


def test_rank_classification_picks_the_argmax_candidate_by_score_batch(tiny):
  model, params, batch = tiny
  candidates = np.array([[5, 9, 1, 0, 0], [7, 1, 0, 0, 0], [3, 4, 8, 6, 1], [2, 1, 0, 0, 0]])
  scores = np.asarray(model.score_candidates(params, batch, candidates))
  assert scores.shape == (3, 4)
  for c, cand in enumerate(candidates):
    one = {"encoder_input_tokens": batch["encoder_input_tokens"],
           "decoder_target_tokens": np.broadcast_to(cand, (3, LENGTH))}
    np.testing.assert_allclose(scores[:, c], model.score_batch(params, one), rtol=1e-6)
  choice = np.asarray(model.rank_classify(params, batch, candidates))
  np.testing.assert_array_equal(choice, scores.argmax(-1))
  # Each example's own target is among the candidates; the scores are not all tied.
  assert np.ptp(scores, axis=1).min() > 1e-3
  np.testing.assert_array_equal(
      np.asarray(model.rank_classify(params, batch, np.stack([candidates[::-1]] * 3))),
      3 - choice)


def test_pad_batch_pads_with_zero_rows_and_split_batches_covers_every_row():
  feats = {"a": np.arange(10).reshape(5, 2) + 1, "b": np.arange(5, dtype=np.float32) + 1}
  padded, n = batching.pad_batch({k: v[:3] for k, v in feats.items()}, 4)
  assert n == 3 and padded["a"].shape == (4, 2) and padded["b"].dtype == np.float32
  np.testing.assert_array_equal(padded["a"][3], [0, 0])
  chunks = list(batching.split_batches(feats, 2))
  assert [n for _, n in chunks] == [2, 2, 1]
  np.testing.assert_array_equal(np.concatenate([c["a"][:n] for c, n in chunks]), feats["a"])
  with pytest.raises(ValueError, match="size=2"):
    batching.pad_batch(feats, 2)


def _ragged_features(n: int = 11, inputs: int = 32, targets: int = 6, seed: int = 5):
  """n examples of encoder lengths 1..inputs-1 and target lengths 1..targets, zero-padded."""
  rng = np.random.RandomState(seed)
  enc = np.zeros((n, inputs), np.int32)
  dec = np.zeros((n, targets), np.int32)
  for i, (a, b) in enumerate(zip(rng.randint(1, inputs, n), rng.randint(1, targets + 1, n))):
    enc[i, :a] = rng.randint(2, CONFIG.vocab_size, a)
    dec[i, :b - 1], dec[i, b - 1] = rng.randint(2, CONFIG.vocab_size, b - 1), EOS
  return {"encoder_input_tokens": enc, "decoder_target_tokens": dec,
          "decoder_input_tokens": np.pad(dec, ((0, 0), (1, 0)))[:, :-1],
          "decoder_loss_weights": (dec > 0).astype(np.int32),
          "inputs_pretokenized": np.array([b"x"] * n)}


def test_length_batches_sort_cut_to_power_of_two_lengths_and_keep_every_row():
  feats = _ragged_features()
  lengths = batching.real_lengths(feats["encoder_input_tokens"])
  assert batching.bucket_lengths(32) == (8, 16, 32) and batching.bucket_lengths(20) == (8, 16, 20)
  seen, shapes = [], set()
  for rows, batch, n in batching.length_batches(feats, 4, trim_targets=True):
    assert batch["encoder_input_tokens"].shape[0] == 4 and n == len(rows)
    width = batch["encoder_input_tokens"].shape[1]
    shapes.add((width, batch["decoder_target_tokens"].shape[1]))
    assert width in (8, 16, 32) and lengths[rows].max() <= width
    np.testing.assert_array_equal(batch["encoder_input_tokens"][:n],
                                  feats["encoder_input_tokens"][rows, :width])
    seen.extend(rows.tolist())
  assert sorted(seen) == list(range(11))
  assert (np.diff(lengths[seen]) >= 0).all()  # shortest first
  assert len(shapes) <= 6 and min(w for w, _ in shapes) < 32


def test_length_bucketed_scores_and_predictions_come_back_in_input_order(tiny):
  from spot.train import evaluation
  model, params, _ = tiny
  feats = _ragged_features()
  fixed = evaluation.score_examples(model, params, feats, 4, by_length=False)
  bucketed = evaluation.score_examples(model, params, feats, 4)
  whole = np.asarray(model.score_batch(params, model.model_features(feats)))
  np.testing.assert_allclose(fixed, whole, rtol=1e-5)
  np.testing.assert_allclose(bucketed, whole, rtol=1e-4, atol=1e-5)
  assert len(set(np.round(whole, 3))) == 11
  tokens = evaluation.predict_examples(model, params, feats, 4)
  np.testing.assert_array_equal(tokens, evaluation.predict_examples(model, params, feats, 4,
                                                                    by_length=False))
  np.testing.assert_array_equal(tokens, model.predict_batch(params, feats))


def _count(targets, predictions):
  return {"n": len(predictions)}


def test_evaluator_by_length_gives_the_fixed_shape_results(tiny):
  import types
  import tensorflow as tf
  from spot.train import data as data_lib, evaluation
  from tests import helpers
  model, params, _ = tiny
  task = helpers.register_tiny_task("test_model_api_tiny", metric_fns=[_count])
  eval_cfg = types.SimpleNamespace(tasks=[task], split="validation", task_feature_lengths=None,
                                   num_examples=None, batch_size=4, decode=None)
  train_cfg = data_lib.DatasetConfig(task, {"inputs": 32, "targets": 6})
  feats = {k: v for k, v in _ragged_features().items() if k != "inputs_pretokenized"}
  dataset = tf.data.Dataset.from_tensor_slices((np.arange(11) + 100, feats))
  fixed, bucketed = (evaluation.Evaluator(model, train_cfg, eval_cfg, by_length=b)
                     for b in (False, True))
  a, b = fixed.score_fn(params, dataset), bucketed.score_fn(params, dataset)
  assert [i for i, _ in a] == [i for i, _ in b] == list(range(100, 111))
  np.testing.assert_allclose([s for _, s in b], [s for _, s in a], rtol=1e-4, atol=1e-5)
  assert bucketed.predict_fn(params, dataset) == fixed.predict_fn(params, dataset)


def test_infer_by_length_writes_the_same_lines(tmp_path):
  from spot.train import data as data_lib
  import importlib
  infer_lib = importlib.import_module("spot.train.infer")  # spot.train exports the function
  from tests import helpers
  task = helpers.register_tiny_task("test_model_api_infer", num_examples=22)
  cfg = data_lib.DatasetConfig(task, {"inputs": 32, "targets": 3}, split="validation",
                               batch_size=4, shuffle=False)
  model = helpers.tiny_random_model()
  run = lambda name, b: pathlib.Path(infer_lib.infer(
      model=model, dataset_cfg=cfg, output_dir=str(tmp_path / name),
      initial_checkpoint_path="random", by_length=b)).read_text().splitlines()
  fixed, bucketed = run("fixed", False), run("bucketed", True)
  assert len(fixed) == 11 and bucketed == fixed
  assert [json.loads(line)["index"] for line in bucketed] == list(range(11))
