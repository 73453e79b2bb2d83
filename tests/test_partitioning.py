"""spot.partitioning: rules, meshes, data layout, optimizer-state specs, and sharded
training equal to one device.

The equivalence tests run `python tests/test_partitioning.py` (the worker at
the bottom of this file) in a subprocess with 8 forced CPU devices, because the
device count is fixed when JAX starts. The worker trains a tiny prompt model
with `spot.train.trainer.train` on 1 device and on meshes 8x1, 4x2, 2x4, 1x8
and writes the loss trajectories and final prompts as JSON.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import functools
import json
import os
import pathlib
import socket
import subprocess
import sys
from typing import Optional

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# The worker jobs (started once, shared with tests/test_distributed.py) are in tests/helpers.py.
from tests.helpers import MESHES, TWO_PROCESS_MESHES, assert_same_run, results  # noqa: E402
STEPS = 3
BATCH = 8
LENGTHS = {"inputs": 8, "targets": 4}
PROMPT_LENGTH = 4

FakeDevice = collections.namedtuple("FakeDevice", "id process_index coords core_on_chip platform",
                                    defaults=((0, 0, 0), 0, "tpu"))


def object_grid(items, shape) -> np.ndarray:
  """An object array of `items` (np.asarray would unpack namedtuples)."""
  out = np.empty(len(items), dtype=object)
  out[:] = list(items)
  return out.reshape(shape)


# ------------------------------------------------------------------------------
# Unit tests (one device, in process).
# ------------------------------------------------------------------------------


def test_standard_rules_map_t5x_axes():
  from spot import partitioning as pl
  rules = dict(pl.standard_logical_axis_rules())
  assert rules["batch"] == "data" and rules["heads"] == "model" and rules["mlp"] == "model"
  assert rules["vocab"] == "model" and rules["joined_kv"] == "model"
  for name in ("embed", "kv", "prompt", "prompt_embed", "tasks", "relpos_buckets", "length"):
    assert rules[name] is None
  two = pl.standard_logical_axis_rules(2, 2, additional_rules=[("tasks", "model")])
  assert [r for r in two if r[0] == "embed"] == [("embed", "model"), ("embed", "data")]
  assert two[-1] == ("tasks", "model")
  with pytest.raises(ValueError, match="must each be 1 or 2"):
    pl.standard_logical_axis_rules(3, 1)


def test_fit_spec_replicates_indivisible_dims():
  from jax.sharding import PartitionSpec as P
  from spot import partitioning as pl
  mesh = {"data": 2, "model": 4}
  assert pl.fit_spec(P("model", None), (8, 3), mesh) == P("model")
  assert pl.fit_spec(P("model", None), (6, 3), mesh) == P()
  assert pl.fit_spec(P(None, ("data", "model")), (3, 16), mesh) == P(None, ("data", "model"))


def _adafactor_params():
  import jax
  import jax.numpy as jnp
  from jax.sharding import PartitionSpec as P
  params = {"wide": jnp.zeros((256, 512)), "square": jnp.zeros((256, 256)),
            "tall": jnp.zeros((512, 128)), "vec": jnp.zeros((256,)), "small": jnp.zeros((4, 8))}
  specs = {"wide": P(None, "model"), "square": P("model", None), "tall": P("model", None),
           "vec": P("model"), "small": P("data", "model")}
  return params, specs, jax.eval_shape(lambda: params)


def test_optimizer_state_specs_adafactor_factored_dims():
  import jax
  import optax
  from jax.sharding import PartitionSpec as P
  from spot import partitioning as pl
  params, specs, shapes = _adafactor_params()
  tx = optax.adafactor(learning_rate=0.1)
  state = jax.eval_shape(tx.init, params)
  out = pl.optimizer_state_specs(state, specs, shapes)
  fac = [s for s in jax.tree_util.tree_leaves(
      out, is_leaf=lambda x: hasattr(x, "v_row")) if hasattr(s, "v_row")][0]
  fac_shapes = [s for s in jax.tree_util.tree_leaves(
      state, is_leaf=lambda x: hasattr(x, "v_row")) if hasattr(s, "v_row")][0]
  # "wide" [256, 512]: v_row drops the largest dim (1), v_col the other (0).
  assert fac_shapes.v_row["wide"].shape == (256,) and fac.v_row["wide"] == P(None)
  assert fac_shapes.v_col["wide"].shape == (512,) and fac.v_col["wide"] == P("model")
  # Square: the shapes alone are ambiguous; optax's rule decides.
  assert fac.v_row["square"] == P("model") and fac.v_col["square"] == P(None)
  assert fac.v_row["tall"] == P(None) and fac.v_col["tall"] == P("model")
  # Unfactored: v mirrors the parameter; placeholders and counters replicate.
  assert fac.v["vec"] == P("model") and fac.v["small"] == P("data", "model")
  assert fac.v["wide"] == P() and fac.v_row["vec"] == P()


def test_optimizer_state_specs_adam_multisteps_and_injected_hyperparams():
  import jax
  import optax
  from jax.sharding import PartitionSpec as P
  from spot import partitioning as pl
  from spot.train import optimizers
  params, specs, shapes = _adafactor_params()
  tx = optax.MultiSteps(optimizers.adam(1e-3, grad_clip_norm=1.0), every_k_schedule=2)
  state = jax.eval_shape(tx.init, params)
  out = pl.optimizer_state_specs(state, specs, shapes)
  flat = dict(zip([jax.tree_util.keystr(p) for p, _ in
                   jax.tree_util.tree_flatten_with_path(state)[0]],
                  jax.tree_util.tree_leaves(out, is_leaf=lambda x: isinstance(x, P))))
  assert flat[".acc_grads['small']"] == P("data", "model")
  mu = [v for k, v in flat.items() if k.endswith(".mu['wide']")]
  assert mu == [P(None, "model")]
  scalars = [v for k, v in flat.items() if "count" in k or "learning_rate" in k]
  assert scalars and all(v == P() for v in scalars)


def test_data_layout_two_hosts_follows_model_groups():
  from spot import partitioning as pl
  devs = [FakeDevice(i, i // 4) for i in range(8)]
  grid = lambda d, m: object_grid(devs, (d, m))
  # Data split across hosts: each host reads its own shard.
  for d, m in ((8, 1), (4, 2), (2, 4)):
    layouts = [pl.data_layout_from_grid(grid(d, m), 16, p) for p in (0, 1)]
    assert [(l.shard_id, l.num_shards, l.per_host_batch_size) for l in layouts] == [
        (0, 2, 8), (1, 2, 8)]
  # A model-parallel group spanning both hosts: both read the same shard.
  layouts = [pl.data_layout_from_grid(grid(1, 8), 16, p) for p in (0, 1)]
  assert [(l.shard_id, l.num_shards, l.is_first_host_in_replica_set) for l in layouts] == [
      (0, 1, True), (0, 1, False)]
  with pytest.raises(ValueError, match="BATCH_SIZE 6"):
    pl.data_layout_from_grid(grid(4, 2), 6, 0)
  interleaved = object_grid([devs[0], devs[4], devs[1], devs[5]], (4, 1))
  with pytest.raises(ValueError, match="not an aligned block"):
    pl.data_layout_from_grid(interleaved, 8, 0)


def test_submesh_grid_groups_physical_tiles():
  from spot import partitioning as pl
  # A 2x2x1 chip slice with 2 cores per chip = 8 devices.
  devs = [FakeDevice(i, 0, (i // 2 % 2, i // 4, 0), i % 2) for i in range(8)]
  grid = pl.submesh_device_grid(devs, (1, 1, 1, 2))
  assert grid.shape == (4, 2)
  assert all({d.coords for d in row} == {row[0].coords} for row in grid)
  grid = pl.submesh_device_grid(devs, (2, 1, 1, 2))
  assert grid.shape == (2, 4) and {d.coords[1] for d in grid[0]} == {0}
  with pytest.raises(ValueError, match="does not tile"):
    pl.submesh_device_grid(devs, (3, 1, 1, 1))
  with pytest.raises(ValueError, match="physical coords"):
    pl.submesh_device_grid([object()], (1, 1, 1, 1))


def test_make_mesh_single_device_and_errors():
  import jax
  from spot import partitioning as pl
  mesh = pl.make_mesh()
  assert mesh.axis_names == ("data", "model") and mesh.devices.size == jax.device_count()
  with pytest.raises(ValueError, match="NUM_PARTITIONS"):
    pl.make_mesh(num_partitions=jax.device_count() + 1)
  with pytest.raises(ValueError, match="not both"):
    pl.make_mesh(num_partitions=3, model_parallel_submesh=(1, 1, 1, 2))


def test_cache_specs_shard_batch_and_heads():
  import jax.numpy as jnp
  from jax.sharding import PartitionSpec as P
  from spot import partitioning as pl
  cache = {"layers_0": {"self_attention": {"cached_key": jnp.zeros((2, 5, 4, 3)),
                                           "cache_index": jnp.zeros((), jnp.int32)}}}
  specs = pl.cache_specs(cache, pl.standard_logical_axis_rules())
  assert specs["layers_0"]["self_attention"]["cached_key"] == P("data", None, "model", None)
  assert specs["layers_0"]["self_attention"]["cache_index"] == P()


# ------------------------------------------------------------------------------
# Equivalence on 8 forced CPU devices (subprocess).
# ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory) -> dict:
  return results(tmp_path_factory, "8")


@pytest.mark.parametrize("mesh", MESHES[1:])
def test_mesh_matches_one_device(eight_devices, mesh):
  ref = eight_devices["runs"]["1"]
  assert len(ref["losses"]) == STEPS
  assert_same_run(eight_devices["runs"][mesh], ref, f"mesh {mesh}")


def test_model_tuning_on_2x4_matches_one_device(eight_devices):
  runs = eight_devices["runs"]
  assert_same_run(runs["model:2x4"], runs["model:1"], "model tuning 2x4")
  assert runs["model:1"]["losses"] != runs["1"]["losses"]


def test_frozen_sharded_prompt_replicated(eight_devices):
  placed = eight_devices["placement"]
  assert placed["frozen"]["decoder/layers_0/mlp/wi_0/kernel"] == [None, "model"]
  assert placed["frozen"]["token_embedder/embedding"] == ["model"]
  assert placed["trainable"]["encoder/prompt/prompt/prompt"] == []
  # Factored Adafactor statistics of a sharded kernel follow its kept dimension.
  assert placed["opt_state"]["v_col/decoder/layers_0/mlp/wo/kernel"] == ["model"]
  assert placed["opt_state"]["v_row/decoder/layers_0/mlp/wo/kernel"] == []
  # One device of a 4-way model-parallel group holds about a quarter of the weights.
  assert placed["local_frozen_bytes_ratio"] < 0.5


def test_remat_and_bfloat16_under_sharding(eight_devices):
  grads = eight_devices["grads"]
  assert grads["none"]["loss"] == pytest.approx(eight_devices["runs"]["2x4"]["losses"][0][1],
                                                rel=1e-5)
  np.testing.assert_allclose(grads["full"]["loss"], grads["none"]["loss"], rtol=1e-6)
  np.testing.assert_allclose(grads["full"]["grad"], grads["none"]["grad"], rtol=1e-4, atol=1e-6)
  # Scanned layers (with remat) under 2x4: the same loss and prompt gradient.
  np.testing.assert_allclose(grads["scan_full"]["loss"], grads["none"]["loss"], rtol=1e-5)
  np.testing.assert_allclose(grads["scan_full"]["grad"], grads["none"]["grad"], rtol=1e-4,
                             atol=1e-6)
  bf16 = np.asarray(grads["minimal_bfloat16"]["grad"])
  assert np.all(np.isfinite(bf16))
  np.testing.assert_allclose(grads["minimal_bfloat16"]["loss"], grads["none"]["loss"], rtol=0.02)
  cos = np.sum(bf16 * grads["none"]["grad"]) / (
      np.linalg.norm(bf16) * np.linalg.norm(grads["none"]["grad"]))
  assert cos > 0.95


def test_sharded_decoding_matches_one_device(eight_devices):
  dec = eight_devices["decode"]
  assert dec["2x4"] == dec["1"]
  assert dec["2x4_scan"] == dec["1"]
  assert dec["cache_spec"] == ["data", None, "model", None]
  assert dec["scanned_cache_spec"] == [None, "data", None, "model", None]


# ------------------------------------------------------------------------------
# The worker.
# ------------------------------------------------------------------------------


def _register_task(name: str = "partitioning_tiny"):
  """A SeqIO task of 64 fixed synthetic examples (copy the first inputs, shifted)."""
  import seqio
  import tensorflow as tf

  def dataset_fn(split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed
    rng = np.random.RandomState(0)
    inputs = rng.randint(2, 127, size=(64, LENGTHS["inputs"] - 1)).astype(np.int32)
    targets = (inputs[:, :LENGTHS["targets"] - 1] + 1) % 125 + 2
    return tf.data.Dataset.from_tensor_slices({"inputs": inputs, "targets": targets})

  vocab = seqio.PassThroughVocabulary(128, eos_id=1)
  features = {k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")}
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
                         preprocessors=[seqio.preprocessors.append_eos],
                         output_features=features)
  return name, vocab


def tiny_model(vocab, **changes):
  """One encoder and one decoder layer: every sharded parameter kind, little compile time."""
  from spot import models, prompts
  from spot.train.models import EncoderDecoderModel
  config = models.get_config("t5_1_1_tiny").replace(
      vocab_size=128, emb_dim=16, num_heads=4, head_dim=4, mlp_dim=32, dropout_rate=0.0,
      num_encoder_layers=1, num_decoder_layers=1, **changes)
  return EncoderDecoderModel(config, functools.partial(prompts.PrefixPrompt,
                                                       length=PROMPT_LENGTH), vocab)


def _partitioner(mesh: str):
  import jax
  from spot import partitioning as pl
  if mesh == "1":
    return pl.Partitioner.create(devices=jax.devices()[:1])
  data, model = (int(x) for x in mesh.split("x"))
  assert data * model == jax.device_count(), (mesh, jax.device_count())
  return pl.Partitioner.create(num_partitions=model)


def _dataset_cfg(name: str):
  from spot.train import data as data_lib
  return data_lib.DatasetConfig(name, LENGTHS, batch_size=BATCH, shuffle=False, seed=0)


def _train(name: str, vocab, mesh: str, workdir: pathlib.Path,
           trainable: str = "prompt") -> Optional[dict]:
  import jax
  from spot.train import checkpointing, optimizers, trainer
  model_dir = workdir / f"{trainable}_{mesh}"
  tx = None if trainable == "prompt" else optimizers.adafactor(
      learning_rate=0.01, min_dim_size_to_factor=16, weight_decay_rate=None)
  result = trainer.train(model=tiny_model(vocab), train_dataset_cfg=_dataset_cfg(name),
                         model_dir=str(model_dir), train_steps=STEPS,
                         initial_checkpoint_path="random", optimizer=tx, trainable=trainable,
                         partitioner=_partitioner(mesh), log_every=1,
                         checkpoint_cfg=trainer.CheckpointConfig(period=0), verbose=False)
  if jax.process_index() != 0:
    return None
  prompt = checkpointing.latest_numpy_prompt(str(model_dir))
  return {"losses": result.losses, "prompt": np.asarray(prompt).tolist()}


def _placement(vocab) -> dict:
  """Where the 2x4 mesh puts frozen weights, the prompt and Adafactor statistics."""
  import jax
  from flax import traverse_util
  from spot.train import optimizers, state as state_lib, trainable as trainable_lib
  model = tiny_model(vocab)
  part = _partitioner("2x4")
  params = state_lib.initial_params(model, "random", 0)
  axes = model.param_axes()
  tr, frozen = trainable_lib.split(params, "prompt")
  tr_axes, fr_axes = trainable_lib.split(axes, "prompt")
  fr_sh = part.logical_to_mesh(fr_axes, frozen)
  tr_sh = part.logical_to_mesh(tr_axes, tr)
  frozen_dev = jax.device_put(frozen, fr_sh)
  local = sum(s.data.nbytes for x in jax.tree_util.tree_leaves(frozen_dev)
              for s in x.addressable_shards if s.device == jax.devices()[0])
  total = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(frozen))
  all_tr, _ = trainable_lib.split(params, "all")
  all_sh = part.logical_to_mesh(trainable_lib.split(axes, "all")[0], all_tr)
  tx = optimizers.adafactor(min_dim_size_to_factor=16)
  opt_sh = part.optimizer_state_shardings(jax.eval_shape(tx.init, all_tr), all_sh, all_tr)
  opt_flat = {}
  for path, sh in jax.tree_util.tree_flatten_with_path(opt_sh)[0]:
    keys = [getattr(k, "name", None) or getattr(k, "key", None) for k in path]
    field = [k for k in keys if k in ("v_row", "v_col", "v")]
    if field:
      rest = [str(k) for k in keys[keys.index(field[0]) + 1:]]
      opt_flat["/".join([field[0]] + rest)] = list(sh.spec)
  flat = lambda t: {k: list(v.spec) for k, v in traverse_util.flatten_dict(t, sep="/").items()}
  return {"frozen": flat(fr_sh), "trainable": flat(tr_sh), "opt_state": opt_flat,
          "local_frozen_bytes_ratio": local / total}


def _remat_grads(name: str, vocab) -> dict:
  """Prompt loss and gradient of the first batch on 2x4, with remat and bfloat16 variants."""
  import jax
  from spot.train import data as data_lib, state as state_lib, trainable as trainable_lib
  params = state_lib.initial_params(tiny_model(vocab), "random", 0)
  part = _partitioner("2x4")
  ds = data_lib.get_dataset(_dataset_cfg(name), data_lib.PromptFeatureConverter(PROMPT_LENGTH))
  batch = next(data_lib.iterate(ds, name))
  batch = {k: v for k, v in batch.items() if k.startswith(("encoder_", "decoder_"))}
  from spot.models import scan
  out = {}
  for label, changes in (("none", {}), ("full", {"remat_policy": "full"}),
                         ("minimal_bfloat16", {"remat_policy": "minimal", "dtype": "bfloat16"}),
                         ("scan_full", {"scan_layers": True, "remat_policy": "full"})):
    model = tiny_model(vocab, **changes)
    axes = model.param_axes()
    layout = scan.to_layout(params, model.config.scan_layers)
    tr, frozen = trainable_lib.split(layout, "prompt")
    tr_axes, fr_axes = trainable_lib.split(axes, "prompt")
    tr_sh, fr_sh = part.logical_to_mesh(tr_axes, tr), part.logical_to_mesh(fr_axes, frozen)
    grad_fn = part.partition(
        jax.value_and_grad(lambda t, f, b: model.loss(trainable_lib.merge(t, f), b)[0]),
        in_shardings=(tr_sh, fr_sh, part.batch_shardings(batch)),
        out_shardings=(part.replicated, tr_sh))
    loss, grad = grad_fn(jax.device_put(tr, tr_sh), jax.device_put(frozen, fr_sh),
                         part.shard_batch(batch))
    tokens = float(np.sum(batch["decoder_loss_weights"]))
    out[label] = {"loss": float(loss) / tokens,
                  "grad": np.asarray(jax.tree_util.tree_leaves(grad)[0]).tolist()}
  return out


def _decode(vocab) -> dict:
  """Greedy decoding with params sharded 2x4 equals one device."""
  import jax
  import jax.numpy as jnp
  from spot import partitioning as pl
  from spot.train import inference, state as state_lib
  model = tiny_model(vocab)
  params = state_lib.initial_params(model, "random", 0)
  batch = {"encoder_input_tokens": np.random.RandomState(1).randint(2, 128, (8, 8)).astype(
      np.int32)}
  from spot.models import scan
  out = {}
  for mesh in ("1", "2x4", "2x4_scan"):
    part = _partitioner(mesh.split("_")[0])
    m = tiny_model(vocab, scan_layers=True) if mesh.endswith("scan") else model
    p = scan.to_layout(params, m.config.scan_layers)
    placed = jax.device_put(p, part.logical_to_mesh(m.param_axes(), p))
    with part:
      tokens, _ = inference.predict_batch(m.module, placed, batch, max_decode_length=4)
    out[mesh] = pl.host_array(tokens).tolist()
  cache = jax.eval_shape(lambda: {"k": jnp.zeros((8, 4, 4, 4)), "s": jnp.zeros((2, 8, 4, 4, 4))})
  shardings = _partitioner("2x4").cache_shardings(cache)
  for key, name, rank in (("k", "cache_spec", 4), ("s", "scanned_cache_spec", 5)):
    spec = list(shardings[key].spec)
    out[name] = spec + [None] * (rank - len(spec))
  return out


def worker_main(argv=None) -> None:
  """Trains on the given meshes and writes {"runs": {mesh: {losses, prompt}}, ...} as JSON."""
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--meshes", default=",".join(MESHES))
  p.add_argument("--checks", action="store_true",
                 help="also model tuning, placement, remat/bfloat16 and decoding")
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--port", type=int, default=0)
  args = p.parse_args(argv)
  import jax
  from spot import distributed
  workdir = pathlib.Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  # Identical computations (the random init of each run) compile once.
  jax.config.update("jax_compilation_cache_dir", str(workdir / f"jax_cache_{args.process_id}"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  distributed.initialize(coordinator_address=f"localhost:{args.port}" if args.port else None,
                         num_processes=args.num_processes, process_id=args.process_id)
  name, vocab = _register_task()
  runs = {mesh: _train(name, vocab, mesh, workdir) for mesh in args.meshes.split(",")}
  result = {"runs": runs}
  if args.checks:
    runs["model:1"] = _train(name, vocab, "1", workdir, trainable="all")
    runs["model:2x4"] = _train(name, vocab, "2x4", workdir, trainable="all")
    result["placement"] = _placement(vocab)
    result["grads"] = _remat_grads(name, vocab)
    result["decode"] = _decode(vocab)
  if jax.process_index() == 0:
    pathlib.Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  worker_main()
