"""load_t5x / load_t5x_variable / describe on the real T5X checkpoints in ../shared/data."""

from __future__ import annotations

import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from spot import checkpoints
from spot.checkpoints import tree
from spot.models import T5, get_config


def test_tiny_checkpoint_loads_exactly(tiny_ckpt, reference_reader):
  params = checkpoints.load_t5x(tiny_ckpt, get_config("t5_1_1_tiny"))
  got = tree.flatten(params)
  want = reference_reader(tiny_ckpt)
  assert sorted(got) == sorted(want)
  assert len(got) == 52
  for name, array in want.items():
    assert got[name].dtype == array.dtype, name
    np.testing.assert_array_equal(got[name], array, err_msg=name)
  # Spot-check values that come from each storage kind (zarr chunk 7, inline).
  emb = got["token_embedder/embedding"]
  assert emb.shape == (32128, 4)
  np.testing.assert_array_equal(emb[32127], want["token_embedder/embedding"][32127])
  assert got["encoder/relpos_bias/rel_embedding"].shape == (2, 4)


def test_model_dir_picks_latest_complete_step(tiny_ckpt, tmp_path):
  model_dir = tmp_path / "model"
  shutil.copytree(tiny_ckpt, model_dir / "checkpoint_3")
  # An unfinished T5X write and an Orbax temp dir must be ignored.
  (model_dir / "checkpoint_9.tmp-1700000000").mkdir()
  (model_dir / "checkpoint_8.orbax-checkpoint-tmp-12").mkdir()
  (model_dir / "checkpoint_7").mkdir()  # no msgpack file: incomplete
  assert checkpoints.all_steps(model_dir) == [3]
  assert checkpoints.latest_step(model_dir) == 3
  params = checkpoints.load_t5x(model_dir)
  direct = checkpoints.load_t5x(tiny_ckpt / "checkpoint")  # the msgpack file itself
  np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"],
                                direct["decoder"]["logits_dense"]["kernel"])
  with pytest.raises(FileNotFoundError, match=r"step 5 .*complete steps: \[3\]"):
    checkpoints.load_t5x(model_dir, step=5)


def test_optimizer_state_and_dtype(tiny_ckpt):
  params, state = checkpoints.load_t5x(tiny_ckpt, with_optimizer_state=True,
                                       dtype=jnp.bfloat16)
  assert int(state["step"]) == 3
  v = state["param_states"]["token_embedder"]["embedding"]["v"]
  assert v.shape == (32128, 4) and v.dtype == np.float32  # state keeps its dtype
  emb = params["token_embedder"]["embedding"]
  assert emb.dtype == jnp.bfloat16
  exact = checkpoints.load_t5x(tiny_ckpt)["token_embedder"]["embedding"]
  np.testing.assert_array_equal(emb.astype(np.float32),
                                exact.astype(jnp.bfloat16).astype(np.float32))


def test_forward_pass_on_tiny_checkpoint(tiny_ckpt):
  config = get_config("t5_1_1_tiny")
  params = checkpoints.load_t5x(tiny_ckpt, config)
  enc = jnp.array([[3, 17, 220, 9, 1, 0], [5, 6, 7, 8, 9, 1]], jnp.int32)
  dec_tgt = jnp.array([[71, 2, 1], [4, 1, 0]], jnp.int32)
  dec_in = jnp.pad(dec_tgt[:, :-1], ((0, 0), (1, 0)))
  logits = T5(config).apply({"params": params}, enc, dec_in, dec_tgt, enable_dropout=False)
  assert logits.shape == (2, 3, 32128) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  # Real numbers: the same logits as transformers' T5 on this checkpoint are checked in
  # test_hf.py::test_export_real_t5x_checkpoint_to_transformers.
  assert 0.1 < float(jnp.std(logits)) < 100.0


def test_single_file_legacy_msgpack(legacy_msgpack, legacy_msgpack_config, raw_reader):
  params, state = checkpoints.load_t5x(legacy_msgpack, legacy_msgpack_config,
                                       with_optimizer_state=True)
  flat = tree.flatten(params)
  raw = raw_reader(legacy_msgpack)
  for name, array in tree.flatten(raw["optimizer"]["target"]).items():
    np.testing.assert_array_equal(flat[name], array, err_msg=name)
  assert flat["encoder/layers_0/attention/query/kernel"].shape == (8, 12)
  assert flat["decoder/relpos_bias/rel_embedding"].shape == (4, 32)
  assert int(state["step"]) == 0
  assert set(state["param_states"]["decoder"]["logits_dense"]["kernel"]) == {
      "m", "v", "v_col", "v_row"}
  assert checkpoints.infer_config(params) == legacy_msgpack_config


def test_load_one_variable(tiny_ckpt, legacy_msgpack, reference_reader):
  want = reference_reader(tiny_ckpt)
  for name in ("token_embedder/embedding", "target/encoder/relpos_bias/rel_embedding"):
    got = checkpoints.load_t5x_variable(tiny_ckpt, name)
    np.testing.assert_array_equal(got, want[name.removeprefix("target/")])
  v = checkpoints.load_t5x_variable(tiny_ckpt, "state/param_states/decoder/decoder_norm/scale/v")
  assert v.shape == (4,)
  emb = checkpoints.load_t5x_variable(legacy_msgpack, "token_embedder/embedding")
  assert emb.shape == (32128, 8) and emb.flags.writeable
  with pytest.raises(KeyError, match="target/encoder/prompt/prompt/prompt' is not in"):
    checkpoints.load_t5x_variable(tiny_ckpt, "encoder/prompt/prompt/prompt")
  with pytest.raises(KeyError, match="Did you mean target/token_embedder/embedding"):
    checkpoints.load_t5x_variable(tiny_ckpt, "token_embedder/embeddings")


def test_describe_reads_metadata_only(tiny_ckpt):
  info = checkpoints.describe(tiny_ckpt)
  assert info.format == "t5x" and info.step == 3 and info.version == 3
  assert info.shapes["decoder/logits_dense/kernel"] == (4, 32128)
  assert info.dtypes["decoder/logits_dense/kernel"] == "float32"
  # 2 * 32128 * 4 (embedding + logits) + 2 stacks of 2 layers + norms + relpos.
  assert info.total_params == 257856
  full = checkpoints.describe(tiny_ckpt, with_optimizer_state=True)
  assert full.shapes["state/step"] == ()
  assert len(full.shapes) == 52 + 1 + 4 * 52


def test_infer_config_matches_tiny(tiny_ckpt):
  params = checkpoints.load_t5x(tiny_ckpt)
  inferred = checkpoints.infer_config(params, relative_attention_max_distance=8)
  assert inferred == get_config("t5_1_1_tiny")


def test_read_budget_serialises_without_changing_results(tiny_ckpt, reference_reader):
  from etils import epath
  from spot.checkpoints import t5x_format
  file = epath.Path(tiny_ckpt) / "checkpoint"
  contents = t5x_format.read_contents(file)
  leaves = t5x_format.flatten_leaves(contents["optimizer"]["target"])
  one_at_a_time = t5x_format.read_leaves(leaves, file.parent, file, max_inflight_bytes=1)
  want = reference_reader(tiny_ckpt)
  assert list(one_at_a_time) == list(leaves)
  for name in want:
    np.testing.assert_array_equal(one_at_a_time[name], want[name], err_msg=name)
