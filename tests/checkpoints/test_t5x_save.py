"""save_t5x writes what T5X writes: checked with an independent reader and against
the structure of the real T5X tiny checkpoint."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from spot import checkpoints
from spot.checkpoints import t5x_format, tree
from spot.models import T5Config


@pytest.fixture(scope="module")
def small_params(make_params):
  config = T5Config(vocab_size=64, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                    num_encoder_layers=1, num_decoder_layers=1)
  return config, make_params(config)


def test_round_trip_is_exact(small_params, tmp_path, reference_reader):
  config, params = small_params
  state = {"param_states": {"token_embedder": {"embedding": {
      "v": np.full((64, 8), 0.25, np.float32), "m": np.zeros((1,), np.float32)}},
      "decoder": None}}
  out = checkpoints.save_t5x(tmp_path, params, step=42, optimizer_state=state)
  assert out == epath.Path(tmp_path) / "checkpoint_42"
  assert sorted(os.listdir(tmp_path)) == ["checkpoint_42"]  # the temp dir was renamed
  loaded, loaded_state = checkpoints.load_t5x(tmp_path, config, with_optimizer_state=True)
  want, got = tree.flatten(params), tree.flatten(loaded)
  assert sorted(got) == sorted(want)
  for name in want:
    assert got[name].dtype == np.float32
    np.testing.assert_array_equal(got[name], np.asarray(want[name]), err_msg=name)
  assert int(loaded_state["step"]) == 42
  assert loaded_state["param_states"]["decoder"] is None  # MultiOptimizer's untouched states
  np.testing.assert_array_equal(
      loaded_state["param_states"]["token_embedder"]["embedding"]["v"], 0.25)
  # The independent msgpack + tensorstore reader sees the same arrays.
  independent = reference_reader(out)
  for name in want:
    np.testing.assert_array_equal(independent[name], np.asarray(want[name]), err_msg=name)


def test_files_match_the_real_t5x_checkpoint(tiny_ckpt, tmp_path, raw_reader, flat_raw,
                                             reference_reader):
  """Re-save the real checkpoint: msgpack tree, spec fields and .zarray match T5X's."""
  params = checkpoints.load_t5x(tiny_ckpt)
  out = checkpoints.save_t5x(tmp_path, params, step=3)
  ours, theirs = raw_reader(out / "checkpoint"), raw_reader(tiny_ckpt / "checkpoint")
  assert set(ours) == set(theirs) == {"version", "optimizer"}
  assert ours["version"] == theirs["version"] == 3
  assert set(ours["optimizer"]) == {"target", "state"}
  assert ours["optimizer"]["state"]["step"] == 3
  assert ours["optimizer"]["state"]["step"].dtype == theirs["optimizer"]["state"]["step"].dtype
  ours_t = flat_raw(ours["optimizer"]["target"])
  theirs_t = flat_raw(theirs["optimizer"]["target"])
  assert sorted(ours_t) == sorted(theirs_t)
  for name, their_leaf in theirs_t.items():
    our_leaf = ours_t[name]
    assert isinstance(our_leaf, dict) == isinstance(their_leaf, dict), name  # inline vs zarr
    if not isinstance(their_leaf, dict):
      assert our_leaf.dtype == their_leaf.dtype and our_leaf.shape == their_leaf.shape
      continue
    assert set(our_leaf) == set(their_leaf) == {"driver", "kvstore", "metadata"}
    assert our_leaf["driver"] == "zarr"
    assert set(our_leaf["kvstore"]) == set(their_leaf["kvstore"]) == {"driver", "path"}
    assert our_leaf["kvstore"]["path"] == their_leaf["kvstore"]["path"] == name_to_dir(name)
    assert our_leaf["kvstore"]["driver"] == "file"  # T5X's local driver ('gfile' is older)
    assert set(our_leaf["metadata"]) == set(their_leaf["metadata"])
    for key in ("compressor", "dtype", "shape"):
      assert our_leaf["metadata"][key] == their_leaf["metadata"][key], (name, key)
    ours_z = json.loads((out / our_leaf["kvstore"]["path"] / ".zarray").read_text())
    theirs_z = json.loads((tiny_ckpt / name_to_dir(name) / ".zarray").read_text())
    for key in theirs_z:
      if key != "chunks":
        assert ours_z[key] == theirs_z[key], (name, key)
  # And the arrays read back identically with the independent reader.
  want, got = reference_reader(tiny_ckpt), reference_reader(out)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def name_to_dir(name: str) -> str:
  return "target." + name.replace("/", ".")


def test_chunk_shape_rule():
  mib = 1024 * 1024
  # Small arrays are one chunk.
  assert t5x_format.choose_chunk_shape([4, 32128], 4) == [4, 32128]
  # mT5-base embedding, 768 MiB: halve the largest dimension's divisors until <= 64 MiB.
  chunk = t5x_format.choose_chunk_shape([250112, 768], 4)
  assert chunk == [15632, 768]  # 250112 = 2**8 * 977; 15632 = 2**4 * 977
  assert 15632 * 768 * 4 <= 64 * mib < 31264 * 768 * 4
  # Greedy like T5X (largest dimension first, each a divisor): [7,10] -> [7,5] -> [1,5],
  # although [1,10] would also fit.
  assert t5x_format.choose_chunk_shape([7, 10], 4, max_bytes=40) == [1, 5]
  assert t5x_format.choose_chunk_shape([], 4) == []


def test_multi_chunk_and_bfloat16_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  array = rng.standard_normal((48, 20)).astype(np.float32)
  directory = epath.Path(tmp_path) / "ckpt"
  directory.mkdir()
  t5x_format.write_checkpoint(
      directory, {"target": {"w": {"kernel": array}, "b": {"kernel": array.astype(jnp.bfloat16)}},
                  "state": {"step": np.int32(1)}},
      max_chunk_bytes=256, max_inflight_bytes=1)
  assert len([f for f in os.listdir(directory / "target.w.kernel") if not f.startswith(".")]) > 1
  params = checkpoints.load_t5x(directory)
  np.testing.assert_array_equal(params["w"]["kernel"], array)
  assert params["b"]["kernel"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(params["b"]["kernel"], array.astype(jnp.bfloat16))
  meta = json.loads((directory / "target.b.kernel" / ".zarray").read_text())
  assert meta["dtype"] == "bfloat16" and meta["compressor"] == {"id": "gzip", "level": 1}


def test_existing_step_is_not_overwritten(small_params, tmp_path):
  _, params = small_params
  checkpoints.save_t5x(tmp_path, params, step=1)
  with pytest.raises(FileExistsError, match="checkpoint_1"):
    checkpoints.save_t5x(tmp_path, params, step=1)


def test_failed_write_leaves_nothing(tmp_path):
  class Unwritable:
    shape, dtype = (2, 2), np.dtype(object)

    def __array__(self, *args, **kwargs):
      raise RuntimeError("device lost")

  with pytest.raises(RuntimeError, match="device lost"):
    checkpoints.save_t5x(tmp_path, {"a": {"kernel": np.ones((2, 2), np.float32)},
                                    "z": {"kernel": Unwritable()}}, step=5)
  assert os.listdir(tmp_path) == []
  assert checkpoints.latest_step(tmp_path) is None


def test_gcs_spec_rewriting():
  """Relative specs resolve against wherever the checkpoint is now (REFERENCE.md 1.1)."""
  stored = {"driver": "zarr", "kvstore": {"driver": "gfile", "path": "target.a.kernel"},
            "metadata": {"shape": [2, 2]}}
  local = t5x_format.absolute_spec(stored, epath.Path("/ckpts/run/checkpoint_3"), "a/kernel")
  assert local["kvstore"] == {"driver": "file", "path": "/ckpts/run/checkpoint_3/target.a.kernel"}
  dummy = {"driver": "zarr", "metadata": {"shape": [2, 2]}, "path": "target.a.kernel",
           "kvstore": {"driver": "gcs", "bucket": t5x_format.DUMMY_BUCKET}}
  remote = t5x_format.absolute_spec(dummy, "gs://my-bucket/runs/x/checkpoint_3", "a/kernel")
  assert remote["kvstore"] == {"driver": "gcs", "bucket": "my-bucket",
                               "path": "runs/x/checkpoint_3/target.a.kernel"}
  assert "path" not in remote
  written = t5x_format.stored_spec("target/a/kernel", np.zeros((2, 2), np.float32), gcs=True)
  assert written["kvstore"] == {"driver": "gcs", "bucket": "t5x-dummy-bucket",
                                "path": "target.a.kernel"}
  with pytest.raises(ValueError, match="unsupported tensorstore kvstore driver 'memory'"):
    t5x_format.absolute_spec({"driver": "zarr", "kvstore": {"driver": "memory", "path": "x"},
                              "metadata": {}}, epath.Path("/x"), "a/kernel")


def test_version_2_bfloat16_stored_as_uint16(tmp_path):
  """T5X version 2 wrote bfloat16 arrays as their uint16 bits; they load as bfloat16."""
  from flax import serialization
  array = (np.arange(24, dtype=np.float32).reshape(4, 6) / 7).astype(jnp.bfloat16)
  directory = epath.Path(tmp_path) / "checkpoint_1"
  directory.mkdir()
  t5x_format.write_checkpoint(directory, {"target": {"w": {"kernel": array.view(np.uint16)}},
                                          "state": {"step": np.int32(1)}})
  contents = serialization.msgpack_restore((directory / "checkpoint").read_bytes())
  contents["version"] = 2
  (directory / "checkpoint").write_bytes(serialization.msgpack_serialize(contents))
  loaded = checkpoints.load_t5x(directory)["w"]["kernel"]
  assert loaded.dtype == jnp.bfloat16
  np.testing.assert_array_equal(loaded, array)
  contents["version"] = 1
  (directory / "checkpoint").write_bytes(serialization.msgpack_serialize(contents))
  with pytest.raises(ValueError, match="version 1; versions below 2 are not supported"):
    checkpoints.load_t5x(directory)
