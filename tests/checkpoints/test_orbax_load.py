"""The newer T5X Orbax layout (`checkpoint_<step>/state/`), written here with orbax
exactly as T5X's OrbaxCheckpointManagerInterface writes it."""

from __future__ import annotations

import numpy as np
import pytest

from spot import checkpoints
from spot.checkpoints import tree
from spot.models import get_config


@pytest.fixture(scope="module")
def orbax_model_dir(tiny_ckpt, tmp_path_factory):
  """MODEL_DIR with checkpoint_3/state holding the tiny checkpoint's train state."""
  ocp = pytest.importorskip("orbax.checkpoint")
  params, state = checkpoints.load_t5x(tiny_ckpt, with_optimizer_state=True)
  state["param_states"]["decoder"]["decoder_norm"] = None  # a MultiOptimizer hole
  model_dir = tmp_path_factory.mktemp("orbax") / "model"
  options = ocp.CheckpointManagerOptions(step_prefix="checkpoint")
  with ocp.CheckpointManager(model_dir, options=options, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(use_ocdbt=True)}) as manager:
    manager.save(3, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave({"target": params, "state": state})))
    manager.wait_until_finished()
  return model_dir, params, state


def test_orbax_layout_loads_exactly(orbax_model_dir):
  model_dir, params, state = orbax_model_dir
  assert (model_dir / "checkpoint_3" / "state" / "_METADATA").exists()
  assert checkpoints.locate(model_dir).format is checkpoints.CheckpointFormat.ORBAX
  loaded = checkpoints.load_t5x(model_dir, get_config("t5_1_1_tiny"))
  want, got = tree.flatten(params), tree.flatten(loaded)
  assert sorted(got) == sorted(want)
  for name in want:
    assert isinstance(got[name], np.ndarray)
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  _, loaded_state = checkpoints.load_t5x(model_dir / "checkpoint_3", with_optimizer_state=True)
  assert int(loaded_state["step"]) == 3
  np.testing.assert_array_equal(
      loaded_state["param_states"]["token_embedder"]["embedding"]["v"],
      state["param_states"]["token_embedder"]["embedding"]["v"])


def test_orbax_single_variable_and_describe(orbax_model_dir):
  model_dir, params, _ = orbax_model_dir
  emb = checkpoints.load_t5x_variable(model_dir / "checkpoint_3" / "state",
                                      "token_embedder/embedding", dtype=np.float16)
  assert emb.dtype == np.float16
  np.testing.assert_array_equal(emb, params["token_embedder"]["embedding"].astype(np.float16))
  info = checkpoints.describe(model_dir)
  assert info.format == "orbax" and info.step == 3
  assert info.shapes["token_embedder/embedding"] == (32128, 4)
  assert info.total_params == 257856
  with pytest.raises(KeyError, match="Did you mean target/decoder/decoder_norm/scale"):
    checkpoints.load_t5x_variable(model_dir, "decoder/decoder_norm/scales")
