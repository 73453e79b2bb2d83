"""Fixtures for the checkpoint tests: real T5X checkpoints from ../shared/data and an
independent reader (raw msgpack + tensorstore, no spot code) to check files against."""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable

import msgpack
import numpy as np
import pytest
import tensorstore as ts

from spot.models import T5Config

# Flax's msgpack extension codes (flax/serialization.py): ndarray, numpy scalar.
_EXT_NDARRAY, _EXT_NPSCALAR = 1, 3


def _ext_hook(code: int, data: bytes) -> Any:
  if code == _EXT_NDARRAY:
    shape, dtype, buffer = msgpack.unpackb(data)
    return np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape)
  if code == _EXT_NPSCALAR:
    dtype, buffer = msgpack.unpackb(data)
    return np.frombuffer(buffer, dtype=np.dtype(dtype))[0]
  return msgpack.ExtType(code, data)


def raw_msgpack(file: os.PathLike) -> dict:
  """The checkpoint msgpack decoded with the msgpack package alone."""
  return msgpack.unpackb(pathlib.Path(file).read_bytes(), ext_hook=_ext_hook, raw=False)


def is_spec(leaf: Any) -> bool:
  return isinstance(leaf, dict) and {"driver", "kvstore", "metadata"} <= leaf.keys()


def flat_leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict) or is_spec(tree):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(flat_leaves(v, f"{prefix}/{k}" if prefix else k))
  return out


def reference_read(ckpt_dir: os.PathLike, subtree: str = "target") -> dict[str, np.ndarray]:
  """{name: array} of `optimizer/<subtree>`, read with msgpack + tensorstore directly."""
  ckpt_dir = pathlib.Path(ckpt_dir)
  contents = raw_msgpack(ckpt_dir / "checkpoint")
  out = {}
  for name, leaf in flat_leaves(contents["optimizer"][subtree]).items():
    if is_spec(leaf):
      path = ckpt_dir / leaf["kvstore"]["path"]
      store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(path)}},
                      open=True).result()
      out[name] = store.read().result()
    else:
      out[name] = leaf
  return out


@pytest.fixture(scope="session")
def tiny_ckpt(shared_data: pathlib.Path) -> pathlib.Path:
  """The real T5X T5 1.1 tiny checkpoint (prompt-tuning test data), step 3."""
  return shared_data / "t5x_tiny_checkpoint" / "checkpoint_3"


@pytest.fixture(scope="session")
def legacy_msgpack(shared_data: pathlib.Path) -> pathlib.Path:
  """T5X's single-file Flax msgpack test checkpoint (all arrays inline)."""
  return shared_data / "t5x_tiny_legacy_msgpack" / "test_t5_tiny.checkpoint_0"


@pytest.fixture(scope="session")
def legacy_msgpack_config() -> T5Config:
  """Config of `legacy_msgpack` (t5x/testdata): emb 8, 4 heads x 3, gated MLP 16."""
  return T5Config(vocab_size=32128, emb_dim=8, num_heads=4, head_dim=3, mlp_dim=16,
                  num_encoder_layers=2, num_decoder_layers=2,
                  relative_attention_num_buckets=32)


@pytest.fixture
def reference_reader() -> Callable[..., dict[str, np.ndarray]]:
  return reference_read


@pytest.fixture
def raw_reader() -> Callable[[os.PathLike], dict]:
  return raw_msgpack


@pytest.fixture
def flat_raw() -> Callable[[Any], dict[str, Any]]:
  """Flattens a raw msgpack tree to {'a/b': leaf}, spec dicts kept as leaves."""
  return flat_leaves


def random_params(config: T5Config, seed: int = 0) -> dict:
  """Random float32 parameters of `config`'s shapes (cheaper than init_params: no jit)."""
  from spot.checkpoints import tree
  rng = np.random.default_rng(seed)
  return tree.unflatten({name: rng.standard_normal(shape).astype(np.float32) * 0.3
                         for name, shape in tree.expected_shapes(config).items()})


@pytest.fixture(scope="session")
def make_params() -> Callable[..., dict]:
  return random_params


@pytest.fixture(scope="session")
def spot_run(shared_data: pathlib.Path, tmp_path_factory) -> dict[str, Any]:
  """A real 2-step `spot train` prompt run of the shared tiny T5X checkpoint on SST-2.

  Its model_dir holds checkpoints/1 and checkpoints/2 (trainer), and best/1
  with the step-1 prompt times -2 (written with the trainer's RunCheckpointer,
  as an evaluation would), so best and latest differ.
  Returns {"model_dir", "base", "prompts": {("checkpoints"|"best", step): [P, D]}}.
  """
  import json
  import jax.numpy as jnp
  from spot.train import checkpointing, trainer
  from spot.train.data import DatasetConfig
  from tests import helpers

  task = helpers.register_sst2(shared_data, prefix="ckpt_glue")
  model = helpers.tiny_prompt_model(shared_data, prompt_length=4)
  base = str(shared_data / helpers.TINY_CHECKPOINT)
  model_dir = tmp_path_factory.mktemp("spot_run") / "run"
  trainer.train(model=model, train_dataset_cfg=DatasetConfig(
      task, {"inputs": 16, "targets": 4}, batch_size=4, seed=0), model_dir=str(model_dir),
                train_steps=2, initial_checkpoint_path=base, log_every=1, verbose=False,
                checkpoint_cfg=trainer.CheckpointConfig(period=1, keep=3))
  # The trainer's own numpy export is an independent record of each step's prompt.
  prompts = {("checkpoints", s): np.load(model_dir / "numpy_checkpoints" / f"checkpoint_{s}"
                                         / "encoder.prompt.prompt.prompt.npy")
             for s in (1, 2)}
  best = prompts[("checkpoints", 1)] * -2.0
  meta = dict(json.loads((model_dir / "checkpoints" / "1" / "meta" / "metadata").read_text()))
  ckpt = checkpointing.RunCheckpointer(str(model_dir), keep=3)
  try:
    ckpt.save(1, {"trainable": {"encoder": {"prompt": {"prompt": {"prompt": jnp.asarray(best)}}}},
                  "opt_state": {"count": jnp.zeros((), jnp.int32)},
                  "step": jnp.asarray(1, jnp.int32)}, meta, best=True)
  finally:
    ckpt.close()
  prompts[("best", 1)] = best
  return {"model_dir": model_dir, "base": pathlib.Path(base), "prompts": prompts,
          "task": task}
