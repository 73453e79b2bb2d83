"""Hand-built packed and unpacked batches of the same examples, and their loss.

Shared by tests/models/test_packing.py and tests/train/test_packing.py (tests
import helpers, never other tests). The packed layout is SeqIO's
(`EncDecFeatureConverter(pack=True)`) with the prompt's P placeholder
positions at the front of every encoder segment, as
`PromptFeatureConverter(pack=True)` writes it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spot.train import losses

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
# `python -m tests.packing_helpers MESH` (with 8 forced CPU devices) prints the
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


if __name__ == "__main__":
  import json
  import sys
  print("RESULT " + json.dumps(mesh_equivalence(sys.argv[1])))
