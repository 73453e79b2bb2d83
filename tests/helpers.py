"""Helpers shared by spot's tests (tests import these, never other tests).

- Trainer runs: tiny models (the shared T5X tiny checkpoint's shape, or a random
  one with a pass-through vocabulary), small real SeqIO tasks, `quick_train`.
- Packing: hand-built packed and unpacked batches of the same examples and
  their loss; the packed layout is SeqIO's (`EncDecFeatureConverter(pack=True)`)
  with the prompt's P placeholder positions in front of every encoder segment,
  as `PromptFeatureConverter(pack=True)` writes it. `python -m tests.helpers
  packing-mesh 4x2` prints a packed loss and prompt gradient under a mesh
  (tests/models/test_packing.py runs it with 8 forced CPU devices).
- Mesh jobs: the 8-device and two-process training workers of
  tests/test_partitioning.py (the worker program at its bottom), started once
  and shared with tests/test_distributed.py.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import json
import os
import pathlib
import socket
import subprocess
import sys
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spot import partitioning
from spot.models import get_config
from spot.prompts import PrefixPrompt
from spot.train import losses
from spot.train.models import EncoderDecoderModel

# seqio and TensorFlow load inside the task and model helpers that need them, so
# the mesh workers (tests/test_partitioning.py run as a program) start light.

REPO = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------
# Trainer runs.
# ------------------------------------------------------------------------------

TINY_CHECKPOINT = "t5x_tiny_checkpoint/checkpoint_3"


def register_sst2(shared_data: pathlib.Path, prefix: str = "test_glue") -> str:
  """SST-2 from ../shared/data/glue with the real T5 vocabulary; returns the task name."""
  from spot.tasks import glue
  names = glue.register_glue(data_dir=str(shared_data / "glue"),
                             vocabulary=str(shared_data / "t5_vocab" / "spiece.model"),
                             name_prefix=prefix, tasks=["sst2"])
  return names[0]


def tiny_prompt_model(shared_data: pathlib.Path, prompt_length: int = 4,
                      dropout_rate: float = 0.0, prompt_init=None) -> EncoderDecoderModel:
  """The t5_1_1_tiny shape of ../shared/data/t5x_tiny_checkpoint with a prompt."""
  import seqio  # pylint: disable=g-import-not-at-top
  vocab = seqio.SentencePieceVocabulary(str(shared_data / "t5_vocab" / "spiece.model"))
  kwargs = {} if prompt_init is None else {"prompt_init": prompt_init}
  return EncoderDecoderModel(get_config("t5_1_1_tiny", dropout_rate=dropout_rate),
                             functools.partial(PrefixPrompt, length=prompt_length, **kwargs),
                             vocab)


def register_counting_task(name: str, num_examples: int = 64, vocab_size: int = 64) -> str:
  """A deterministic token task (target = first two input tokens) needing no files."""
  return register_tiny_task(name, num_examples=num_examples, vocab_size=vocab_size, eos_id=None)


def register_tiny_task(name: str, metric_fns=(), num_examples: int = 64,
                       vocab_size: int = 64, eos_id: Optional[int] = 1) -> str:
  """A deterministic token task (target = first two input tokens, EOS `eos_id`) needing
  no files.

  `metric_fns` are SeqIO metric fns `(targets, predictions) -> {name: value}`.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  vocab = seqio.PassThroughVocabulary(size=vocab_size, eos_id=eos_id)
  rng = np.random.RandomState(0)
  inputs = rng.randint(3, vocab_size, size=(num_examples, 8)).astype(np.int32)

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    part = inputs[: num_examples // 2] if split == "train" else inputs[num_examples // 2:]
    return tf.data.Dataset.from_tensor_slices({"inputs": part, "targets": part[:, :2]})

  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=["train", "validation"]),
      preprocessors=[seqio.preprocessors.append_eos],
      output_features={"inputs": seqio.Feature(vocab, add_eos=True),
                       "targets": seqio.Feature(vocab, add_eos=True)},
      metric_fns=list(metric_fns))
  return name


def tiny_random_model(prompt_length: int = 4) -> EncoderDecoderModel:
  """t5_1_1_tiny with a prompt and a pass-through vocabulary: no files needed."""
  import seqio  # pylint: disable=g-import-not-at-top
  return EncoderDecoderModel(get_config("t5_1_1_tiny", dropout_rate=0.0),
                             functools.partial(PrefixPrompt, length=prompt_length),
                             seqio.PassThroughVocabulary(size=64, eos_id=1))


def quick_train(model_dir, task: str, *, train_steps: int = 12, model=None, **kwargs):
  """A few-second prompt run of `tiny_random_model` on a `register_tiny_task` task."""
  from spot.train import trainer
  from spot.train.data import DatasetConfig
  kwargs.setdefault("checkpoint_cfg", trainer.CheckpointConfig(period=4, keep=1))
  kwargs.setdefault("log_every", 4)
  return trainer.train(
      model=model or tiny_random_model(),
      train_dataset_cfg=DatasetConfig(task, {"inputs": 9, "targets": 3}, batch_size=4, seed=0),
      model_dir=str(model_dir), train_steps=train_steps, initial_checkpoint_path="random",
      verbose=False, **kwargs)


def numpy_exports(model_dir) -> dict:
  """{step: {file name: array}} of a run's numpy_checkpoints."""
  root = pathlib.Path(model_dir) / "numpy_checkpoints"
  out = {}
  for d in sorted(root.iterdir()) if root.exists() else []:
    out[d.name] = {f.name: np.load(f) for f in sorted(d.iterdir()) if f.is_file()}
  return out


# ------------------------------------------------------------------------------
# Packing.
# ------------------------------------------------------------------------------

ID_FEATURES = ("prompt_id", "language_id", "task_id")


@dataclasses.dataclass(frozen=True)
class Example:
  inputs: tuple[int, ...]
  targets: tuple[int, ...]
  prompt_id: int = 0
  language_id: int = 0
  task_id: int = 0


def random_examples(lengths: Sequence[tuple[int, int]], vocab: int = 96, seed: int = 0,
                    num_ids: int = 3) -> list[Example]:
  """Examples with the given (inputs, targets) lengths, tokens in [2, vocab)."""
  rng = np.random.RandomState(seed)
  tokens = lambda n: tuple(rng.randint(2, vocab, n).tolist())
  return [Example(tokens(n), tokens(m), int(rng.randint(num_ids)), int(rng.randint(num_ids)),
                  int(rng.randint(num_ids)))
          for n, m in lengths]


def unpacked_batch(examples: Sequence[Example], inputs_length: int,
                   targets_length: int) -> dict[str, np.ndarray]:
  """One example per row, right-padded; the model adds the prompt in front."""
  n = len(examples)
  batch = {k: np.zeros((n, inputs_length if k == "encoder_input_tokens" else targets_length),
                       np.int32)
           for k in ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
                     "decoder_loss_weights")}
  for i, ex in enumerate(examples):
    batch["encoder_input_tokens"][i, :len(ex.inputs)] = ex.inputs
    batch["decoder_target_tokens"][i, :len(ex.targets)] = ex.targets
    shifted = (0,) + ex.targets  # SeqIO shifts the padded row: the last target follows
    m = min(len(shifted), targets_length)
    batch["decoder_input_tokens"][i, :m] = shifted[:m]
    batch["decoder_loss_weights"][i, :len(ex.targets)] = 1
  for name in ID_FEATURES:
    batch[name] = np.array([getattr(ex, name) for ex in examples], np.int32)
  return batch


def packed_batch(rows: Sequence[Sequence[Example]], prompt_length: int, inputs_length: int,
                 targets_length: int, placeholder: int = 1) -> dict[str, np.ndarray]:
  """`rows[r]` packed into row r: encoder rows of P + inputs_length positions."""
  enc_len = prompt_length + inputs_length
  shape = {"encoder": (len(rows), enc_len), "decoder": (len(rows), targets_length)}
  batch = {k: np.zeros(shape[k.split("_")[0]], np.int32) for k in (
      "encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
      "decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
      "decoder_segment_ids", "decoder_positions")}
  for name in ID_FEATURES:
    batch[name] = np.zeros((len(rows), enc_len), np.int32)
  for r, row in enumerate(rows):
    e = d = 0
    for s, ex in enumerate(row, start=1):
      tokens = [placeholder] * prompt_length + list(ex.inputs)
      n, m = len(tokens), len(ex.targets)
      if e + n > enc_len or d + m > targets_length:
        raise ValueError(f"row {r} overflows at segment {s}")
      batch["encoder_input_tokens"][r, e:e + n] = tokens
      batch["encoder_segment_ids"][r, e:e + n] = s
      batch["encoder_positions"][r, e:e + n] = np.arange(n)
      for name in ID_FEATURES:
        batch[name][r, e:e + n] = getattr(ex, name)
      batch["decoder_target_tokens"][r, d:d + m] = ex.targets
      batch["decoder_input_tokens"][r, d + 1:d + m] = ex.targets[:-1]
      batch["decoder_loss_weights"][r, d:d + m] = 1
      batch["decoder_segment_ids"][r, d:d + m] = s
      batch["decoder_positions"][r, d:d + m] = np.arange(m)
      e, d = e + n, d + m
  return batch


PACKED_KEYS = ("encoder_segment_ids", "encoder_positions", "decoder_segment_ids",
               "decoder_positions")


def summed_loss(module, params, batch, prompt_inputs: Sequence[str] = (),
                z_loss: float = 1e-4) -> jax.Array:
  """T5 loss with z_loss, summed over target tokens, of `batch` (packed or not)."""
  packed = {k: jnp.asarray(batch[k]) for k in PACKED_KEYS if k in batch}
  inputs = {k: jnp.asarray(batch[k]) for k in prompt_inputs} or None
  logits = module.apply({"params": params}, jnp.asarray(batch["encoder_input_tokens"]),
                        jnp.asarray(batch["decoder_input_tokens"]),
                        jnp.asarray(batch["decoder_target_tokens"]), enable_dropout=False,
                        prompt_inputs=inputs, **packed)
  loss, _, _ = losses.cross_entropy(logits, jnp.asarray(batch["decoder_target_tokens"]),
                                    jnp.asarray(batch["decoder_loss_weights"]), z_loss=z_loss)
  return loss


def loss_and_grad(module, params, batch, prompt_inputs: Sequence[str] = (),
                  trainable: Optional[str] = "prompt"):
  """(summed loss, gradient) w.r.t. the prompt (`encoder/prompt`), or all params (None)."""
  if trainable is None:
    return jax.jit(jax.value_and_grad(lambda p: summed_loss(module, p, batch, prompt_inputs)))(
        params)

  def fn(prompt):
    full = dict(params, encoder=dict(params["encoder"], prompt=prompt))
    return summed_loss(module, full, batch, prompt_inputs)

  return jax.jit(jax.value_and_grad(fn))(params["encoder"]["prompt"])


def assert_trees_close(a, b, rtol: float = 1e-5, atol: float = 0.0) -> None:
  """Every leaf of `a` equals `b`'s within rtol (relative to the leaf's largest value)."""
  flat_a, tree_a = jax.tree_util.tree_flatten(a)
  flat_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b, (tree_a, tree_b)
  for x, y in zip(flat_a, flat_b):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = max(float(np.max(np.abs(y))), 1e-30)
    np.testing.assert_allclose(x, y, rtol=0, atol=atol + rtol * scale)


# ------------------------------------------------------------------ the mesh worker
# `python -m tests.helpers packing-mesh MESH` (with 8 forced CPU devices) prints the
# packed multi-task prompt loss and gradient on one device and on a
# ('data', 'model') mesh of shape MESH ("4x2"), as JSON.

MESH_ROWS = [[(5, 3), (3, 2), (2, 1)], [(16, 6)], [(7, 4), (4, 2)], [(5, 2), (4, 2), (1, 1)]]


def mesh_equivalence(mesh: str) -> dict:
  import functools
  import flax.linen as nn
  from spot import partitioning
  from spot.models import T5, get_config
  from spot.prompts import MultiTaskPrompt

  config = get_config("t5_1_1_tiny", dropout_rate=0.0).replace(
      vocab_size=96, emb_dim=16, num_heads=4, head_dim=4, mlp_dim=32,
      relative_attention_num_buckets=8, relative_attention_max_distance=16)
  module = T5(config, functools.partial(MultiTaskPrompt, num_prompts=3, length=3))
  sizes = [s for row in MESH_ROWS for s in row]
  examples = random_examples(sizes, config.vocab_size, seed=7)
  it = iter(examples)
  batch = packed_batch([[next(it) for _ in row] for row in MESH_ROWS], 3, 16, 6)
  tokens = jnp.ones((1, 2), jnp.int32)
  init = lambda r: module.init(r, tokens, tokens, tokens, enable_dropout=False,
                               prompt_inputs={"prompt_id": jnp.zeros((1,), jnp.int32)})
  params = nn.unbox(init(jax.random.PRNGKey(3)))["params"]
  axes = nn.get_partition_spec(jax.eval_shape(init, jax.random.PRNGKey(3)))["params"]
  names = ("prompt_id",)
  loss1, grad1 = loss_and_grad(module, params, batch, names)
  unpacked = unpacked_batch(examples, 16, 6)
  loss_u, _ = loss_and_grad(module, params, unpacked, names)

  data, model = (int(x) for x in mesh.split("x"))
  part = partitioning.Partitioner.create(num_partitions=model)
  assert dict(part.mesh.shape) == {"data": data, "model": model}, part.mesh.shape
  shardings = part.logical_to_mesh(axes, params)
  prompt_sh = shardings["encoder"]["prompt"]

  def fn(prompt, frozen, b):
    full = dict(frozen, encoder=dict(frozen["encoder"], prompt=prompt))
    return summed_loss(module, full, b, names)

  with part:
    step = part.partition(jax.value_and_grad(fn),
                          in_shardings=(prompt_sh, shardings, part.batch_shardings(batch)),
                          out_shardings=(part.replicated, prompt_sh))
    placed = jax.device_put(params, shardings)
    loss_m, grad_m = step(placed["encoder"]["prompt"], placed, part.shard_batch(batch))
  return {"loss_one": float(loss1), "loss_mesh": float(loss_m), "loss_unpacked": float(loss_u),
          "grad_one": np.asarray(grad1["prompts"]).tolist(),
          "grad_mesh": np.asarray(partitioning.host_array(grad_m["prompts"])).tolist(),
          "devices": jax.device_count(), "rows": int(batch["encoder_input_tokens"].shape[0])}


# ------------------------------------------------------------------------------
# Mesh jobs (tests/test_partitioning.py, tests/test_distributed.py).
# ------------------------------------------------------------------------------

MESH_WORKER = REPO / "tests" / "test_partitioning.py"  # its worker_main, run as a program
MESHES = ("1", "8x1", "4x2", "2x4", "1x8")


def run_worker(out: pathlib.Path, workdir: pathlib.Path, devices: int,
               extra: tuple = ()) -> subprocess.Popen:
  """Starts the worker below with `devices` forced CPU devices."""
  # Low LLVM optimisation: the tiny programs run in milliseconds, compiling dominates.
  flags = (f"--xla_force_host_platform_device_count={devices} "
           "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=flags,
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  cmd = [sys.executable, str(MESH_WORKER), "--out", str(out),
         "--workdir", str(workdir), *extra]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def finish(proc: subprocess.Popen, timeout: int = 900) -> str:
  """Waits for a worker; a failure shows the end of its log."""
  try:
    log, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    log, _ = proc.communicate()
  assert proc.returncode == 0, log[-4000:]
  return log


TWO_PROCESS_MESHES = ("4x2", "1x8")
_JOBS: dict = {}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(tmp_path_factory) -> dict:
  """Starts the 8-device worker and a two-process run (4 devices each) side by side.

  Both are CPU-bound with mostly single-threaded compiles, so on a 2-core CI
  machine running them together roughly halves the wall time.
  """
  if not _JOBS:
    atexit.register(_stop_jobs)
    tmp = tmp_path_factory.mktemp("mesh")
    port = str(free_port())
    _JOBS["8"] = (tmp / "eight.json", [run_worker(tmp / "eight.json", tmp / "eight", 8, (
        "--meshes", ",".join(MESHES), "--checks"))])
    _JOBS["2x4"] = (tmp / "two.json", [
        run_worker(tmp / "two.json", tmp / "two", 4, (
            "--meshes", ",".join(TWO_PROCESS_MESHES), "--num_processes", "2",
            "--process_id", str(i), "--port", port)) for i in range(2)])
  return _JOBS


def _stop_jobs() -> None:
  """Ends workers nobody waited for (e.g. when only one test module was selected)."""
  for _, procs in _JOBS.values():
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()


def results(tmp_path_factory, key: str) -> dict:
  """The JSON of a worker job ("8": 8 devices; "2x4": 2 processes x 4 devices), once."""
  out, procs = _start(tmp_path_factory)[key]
  if procs:
    for proc in procs:
      finish(proc)
    procs.clear()
  return json.loads(out.read_text())


def assert_same_run(got: dict, want: dict, what: str, rtol: float = 2e-4):
  """Same steps, losses and final prompt to float tolerance."""
  assert [s for s, _ in got["losses"]] == [s for s, _ in want["losses"]], what
  np.testing.assert_allclose([l for _, l in got["losses"]], [l for _, l in want["losses"]],
                             rtol=rtol, err_msg=f"{what}: loss trajectory")
  np.testing.assert_allclose(np.asarray(got["prompt"]), np.asarray(want["prompt"]),
                             rtol=rtol, atol=1e-5, err_msg=f"{what}: final prompt")


if __name__ == "__main__":
  if sys.argv[1:2] == ["packing-mesh"]:
    print("RESULT " + json.dumps(mesh_equivalence(sys.argv[2])))
  else:
    raise SystemExit("usage: python -m tests.helpers packing-mesh DATAxMODEL")
