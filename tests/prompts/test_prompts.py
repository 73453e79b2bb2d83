"""Prompt modules and initializers: shapes, mixed-task and factorized recombination."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from spot import prompts
from spot.models import T5, get_config
from spot.train.models import EncoderDecoderModel

CFG = get_config("t5_1_1_tiny", dropout_rate=0.0).replace(vocab_size=64, emb_dim=16,
                                                          num_heads=2, head_dim=8, mlp_dim=32)


def _tokens(seed, b=3, t=7):
  return jax.random.randint(jax.random.PRNGKey(seed), (b, t), 2, 64).astype(jnp.int32)


def test_prefix_prompt_param_path_and_forward():
  model = EncoderDecoderModel(CFG, functools.partial(prompts.PrefixPrompt, length=5))
  params = model.init_params(jax.random.PRNGKey(0))
  p = params["encoder"]["prompt"]["prompt"]["prompt"]
  assert p.shape == (5, 16)
  assert float(p.min()) >= 0.0 and float(p.max()) < 0.5
  axes = model.param_axes()["encoder"]["prompt"]["prompt"]["prompt"]
  assert tuple(axes) == ("prompt", "prompt_embed")
  enc, valid = T5(CFG, model.prompt).apply({"params": params}, _tokens(0), enable_dropout=False,
                                          method=T5.encode)
  assert enc.shape == (3, 12, 16) and bool(valid[:, :5].all())


def test_prompt_changes_output_and_prompt_positions_are_attended():
  factory = functools.partial(prompts.PrefixPrompt, length=3)
  model = EncoderDecoderModel(CFG, factory)
  params = model.init_params(jax.random.PRNGKey(0))
  x, d = _tokens(1), _tokens(2, t=4)
  batch = {"encoder_input_tokens": x, "decoder_input_tokens": d, "decoder_target_tokens": d}
  a = jax.jit(model.logits)(params, batch)
  params2 = jax.tree_util.tree_map(lambda v: v, params)
  params2["encoder"]["prompt"]["prompt"]["prompt"] = params["encoder"]["prompt"]["prompt"][
      "prompt"] + 1.0
  b = jax.jit(model.logits)(params2, batch)
  assert float(jnp.abs(a - b).max()) > 1e-3


def _table_model(n, length=3):
  return EncoderDecoderModel(CFG, functools.partial(prompts.MultiTaskPrompt, num_prompts=n,
                                                    length=length))


def test_mixed_task_inference_equals_per_task_inference():
  """One batch mixing three tasks' prompts == each example run with its own single prompt."""
  from spot.train import inference
  single = [np.asarray(jax.random.normal(jax.random.PRNGKey(10 + i), (3, 16))) for i in range(3)]
  multi = _table_model(3)
  params = multi.init_params(jax.random.PRNGKey(0))
  params["encoder"]["prompt"]["prompts"] = jnp.stack(single)
  x = _tokens(3, b=6)
  ids = jnp.array([2, 0, 1, 1, 0, 2], jnp.int32)
  mixed_tokens, _ = inference.predict_batch(
      multi.module, params, {"encoder_input_tokens": x, "prompt_inputs": {"prompt_id": ids}},
      max_decode_length=5)
  base = {k: v for k, v in params.items()}
  base["encoder"] = {k: v for k, v in params["encoder"].items() if k != "prompt"}
  for task in range(3):
    model = EncoderDecoderModel(CFG, functools.partial(
        prompts.PrefixPrompt, length=3, prompt_init=prompts.from_array(single[task])))
    p = dict(base, encoder=dict(base["encoder"],
                                prompt={"prompt": {"prompt": jnp.asarray(single[task])}}))
    rows = np.where(np.asarray(ids) == task)[0]
    tokens, _ = inference.predict_batch(model.module, p, {"encoder_input_tokens": x[rows]},
                                        max_decode_length=5)
    np.testing.assert_array_equal(np.asarray(mixed_tokens)[rows], np.asarray(tokens))
    # and the logits agree to float precision
    d = jnp.ones((len(rows), 4), jnp.int32)
    la = jax.jit(multi.logits)(params, {"encoder_input_tokens": x[rows], "decoder_input_tokens": d,
                               "decoder_target_tokens": d, "prompt_id": ids[rows]})
    lb = jax.jit(model.logits)(p, {"encoder_input_tokens": x[rows], "decoder_input_tokens": d,
                          "decoder_target_tokens": d})
    np.testing.assert_allclose(np.asarray(la), np.asarray(lb), atol=1e-5)


def test_factorized_prompts_recombine_unseen_pairs():
  """Any language sub-prompt pairs with any task sub-prompt, as [language; task]."""
  model = EncoderDecoderModel(CFG, functools.partial(
      prompts.FactorizedPrompt, num_languages=3, num_tasks=2, language_length=2, task_length=3))
  params = model.init_params(jax.random.PRNGKey(0))
  table = params["encoder"]["prompt"]
  assert table["language_prompts"].shape == (3, 2, 16)
  assert table["task_prompts"].shape == (2, 3, 16)
  x = _tokens(4, b=3)
  emb = T5(CFG, model.prompt)
  # Pairs (lang, task): (2, 1) is "never seen" — the module does not care.
  lang, task = jnp.array([0, 2, 1]), jnp.array([0, 1, 1])
  out, valid = emb.apply({"params": params}, x, enable_dropout=False,
                         prompt_inputs={"language_id": lang, "task_id": task}, method=T5.encode)
  assert out.shape == (3, 5 + 7, 16)

  # The same encodings from a plain prefix prompt holding [language; task].
  for i in range(3):
    concat = jnp.concatenate([table["language_prompts"][lang[i]], table["task_prompts"][task[i]]])
    prefix = functools.partial(prompts.PrefixPrompt, length=5)
    p = dict(params, encoder=dict(params["encoder"], prompt={"prompt": {"prompt": concat}}))
    ref, _ = jax.jit(lambda p, x: T5(CFG, prefix).apply(
        {"params": p}, x, enable_dropout=False, method=T5.encode))(p, x[i:i + 1])
    np.testing.assert_allclose(np.asarray(out[i:i + 1]), np.asarray(ref), atol=1e-5)

  # Gradients reach only the selected rows.
  d = jnp.ones((3, 2), jnp.int32)
  batch = {"encoder_input_tokens": x, "decoder_input_tokens": d, "decoder_target_tokens": d,
           "language_id": jnp.array([0, 0, 1]), "task_id": jnp.array([1, 1, 1])}
  grads = jax.jit(jax.grad(lambda p: model.loss(p, batch)[0]))(params)["encoder"]["prompt"]
  assert float(jnp.abs(grads["language_prompts"][2]).sum()) == 0.0
  assert float(jnp.abs(grads["task_prompts"][0]).sum()) == 0.0
  assert float(jnp.abs(grads["language_prompts"][0]).sum()) > 0.0


def test_missing_prompt_feature_names_it():
  model = _table_model(2)
  params = model.init_params(jax.random.PRNGKey(0))
  d = jnp.ones((1, 2), jnp.int32)
  with pytest.raises(ValueError, match="prompt_id"):
    model.logits(params, {"encoder_input_tokens": _tokens(0, b=1), "decoder_input_tokens": d,
                          "decoder_target_tokens": d})


def test_from_array_shape_mismatch_names_both_shapes():
  init = prompts.from_array(np.zeros((5, 16), np.float32))
  with pytest.raises(ValueError, match=r"\(5, 16\).*\(4, 16\)"):
    init(jax.random.PRNGKey(0), (4, 16))


def test_from_npy_and_prompt_tuning_numpy_files(tmp_path):
  value = np.arange(32, dtype=np.float32).reshape(2, 16)
  # prompt-tuning writes np.save to a file handle without the .npy suffix.
  path = tmp_path / "encoder.prompt.prompt.prompt"
  with open(path, "wb") as f:
    np.save(f, value)
  out = prompts.from_npy(str(path))(jax.random.PRNGKey(0), (2, 16))
  np.testing.assert_array_equal(np.asarray(out), value)
  with pytest.raises(FileNotFoundError, match="missing.npy"):
    prompts.from_npy(str(tmp_path / "missing.npy"))(jax.random.PRNGKey(0), (2, 16))


def test_sampled_vocab_draws_rows_of_the_population(shared_data):
  table = np.load(shared_data / "misc" / "tiny_embeddings_32128x4.npy")
  out = np.asarray(prompts.sampled_vocab(table, population_size=5000)(jax.random.PRNGKey(0),
                                                                       (20, 4)))
  rows = {tuple(r) for r in table[:5000]}
  assert all(tuple(r) in rows for r in out)
  assert len({tuple(r) for r in out}) == 20  # without replacement
  with pytest.raises(ValueError, match="width 4"):
    prompts.sampled_vocab(table)(jax.random.PRNGKey(0), (3, 8))


def test_class_labels_average_subtokens_with_real_vocab(shared_data):
  vocab = seqio.SentencePieceVocabulary(str(shared_data / "t5_vocab" / "spiece.model"))
  table = np.load(shared_data / "misc" / "tiny_embeddings_32128x4.npy")
  labels = ["positive", "negative", "not_entailment"]
  init = prompts.class_labels(table, vocab, labels,
                              fallback=prompts.sampled_vocab(table, population_size=5000))
  out = np.asarray(init(jax.random.PRNGKey(0), (6, 4)))
  for i, label in enumerate(labels):
    ids = vocab.encode(label)
    np.testing.assert_allclose(out[i], table[ids].mean(0), rtol=1e-6)
  assert len(vocab.encode("not_entailment")) > 1
  text = prompts.from_string(table, vocab, "classify sentiment")(jax.random.PRNGKey(0), (6, 4))
  ids = vocab.encode("classify sentiment")
  np.testing.assert_allclose(np.asarray(text)[: len(ids)], table[ids], rtol=1e-6)


def test_from_t5x_reads_the_embedding_variable(shared_data):
  from spot.checkpoints import load_t5x_variable
  ckpt = str(shared_data / "t5x_tiny_checkpoint" / "checkpoint_3")
  table = load_t5x_variable(ckpt, "token_embedder/embedding")
  init = prompts.sampled_vocab(lambda: load_t5x_variable(ckpt, "token_embedder/embedding"),
                               population_size=100)
  out = np.asarray(init(jax.random.PRNGKey(1), (5, 4)))
  assert all(any(np.array_equal(r, t) for t in table[:100]) for r in out)
