"""Building blocks of T5 in Flax linen, numerically matching T5X / flaxformer.

Every parameter is created with `nn.with_logical_partitioning` so that
`nn.get_partition_spec(variables)` yields the logical axis names that
`spot.partitioning` maps onto a ('data', 'model') mesh. Main activations carry
`nn.with_logical_constraint`, a no-op outside a mesh context.

Numerics (REFERENCE.md section 2): RMSNorm in float32 with eps 1e-6, no
1/sqrt(head_dim) at run time (folded into the query init), relative position
buckets computed in numpy float32, logits in float32.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Initializer = Callable[..., Array]

default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
attention_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
relpos_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")

NEG_INF = -1e10


def constrain(x: Array, axes: Sequence[Optional[str]]) -> Array:
  """Annotates an activation with logical axis names (no-op without a mesh)."""
  return nn.with_logical_constraint(x, tuple(axes))


def get_activation(name: str) -> Callable[[Array], Array]:
  if name == "linear":
    return lambda x: x
  if name == "gelu":
    return functools.partial(jax.nn.gelu, approximate=True)  # flax `nn.gelu`, HF gelu_new
  if name == "gelu_exact":
    return functools.partial(jax.nn.gelu, approximate=False)
  if name == "relu":
    return jax.nn.relu
  if name == "silu":
    return jax.nn.silu
  raise ValueError(f"Unknown MLP activation {name!r}; use gelu, gelu_exact, relu, silu or linear.")


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, computed in float32."""

  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    x32 = jnp.asarray(x, jnp.float32)
    var = jnp.mean(lax.square(x32), axis=-1, keepdims=True)
    y = jnp.asarray(x32 * lax.rsqrt(var + self.epsilon), self.dtype)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (features,), jnp.float32)
    return y * jnp.asarray(scale, self.dtype)


# Builds a parameter-efficient module for one projection from its kernel's
# logical axes (spot.peft's methods); see `Dense.adapter`.
AdapterFactory = Callable[[tuple[str, str]], nn.Module]


class Dense(nn.Module):
  """Bias-free dense layer with a 2-D float32 kernel stored [in, out].

  `adapter` (optional) adds a parameter-efficient method to this projection
  (LoRA, (IA)3, BitFit from `spot.peft`): it is built from `kernel_axes` as a
  submodule of this layer, so its parameters sit beside the kernel
  (`attention/query/lora/a`), and called as `adapter(x [.., in], y [.., out],
  kernel [in, out], deterministic)`, returning the new output [.., out].
  """

  features: int
  kernel_axes: tuple[str, str]
  dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init
  adapter: Optional[AdapterFactory] = None

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                        (x.shape[-1], self.features), jnp.float32)
    x = jnp.asarray(x, self.dtype)
    kernel = jnp.asarray(kernel, self.dtype)
    y = lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    if self.adapter is not None:
      y = self.adapter(self.kernel_axes)(x, y, kernel, deterministic)
    return y


def dense_adapter(peft: Any, target: str) -> Optional[AdapterFactory]:
  """The adapter factory a PEFT method (or None) puts on projection `target` ("q", "wo", ...)."""
  return None if peft is None else peft.dense_adapter(target)


def attention_prefix(peft: Any, target: Optional[str]) -> Optional[Callable[[int], nn.Module]]:
  """The key/value prefix factory a PEFT method puts on attention `target`, or None.

  Targets: "encoder_self", "decoder_self", "encoder_decoder". The factory takes
  the joined key width H*K and builds a module returning (key, value) [P, H*K]
  (`spot.peft.prefix`).
  """
  hook = getattr(peft, "attention_prefix", None)
  return None if hook is None or target is None else hook(target)


def prepend_prefix(key: Array, value: Array, mask: Optional[Array], bias: Optional[Array],
                   prefix_key: Array, prefix_value: Array
                   ) -> tuple[Array, Array, Optional[Array], Optional[Array]]:
  """Puts P prefix positions before the keys and values that every query may attend to.

  key, value [B, k, H, K]; prefix_key, prefix_value [P, H*K] -> key, value
  [B, P + k, H, K]. The mask [B, 1|H, q, k] gains P visible key columns (also
  for padding and every packed segment), the bias [1|B, H, q, k] P zero
  columns: a prefix has no relative position.
  """
  b, _, h, d = key.shape
  p = prefix_key.shape[0]
  expand = lambda x: jnp.broadcast_to(x.reshape(1, p, h, d), (b, p, h, d))
  key = jnp.concatenate([expand(prefix_key).astype(key.dtype), key], axis=1)
  value = jnp.concatenate([expand(prefix_value).astype(value.dtype), value], axis=1)
  pad = lambda x: [(0, 0)] * (x.ndim - 1) + [(p, 0)]
  if mask is not None:
    mask = jnp.pad(mask.astype(bool), pad(mask), constant_values=True)
  if bias is not None:
    bias = jnp.pad(bias, pad(bias))
  return key, value, mask, bias


class Embed(nn.Module):
  """Token embedding shared by encoder and decoder; `attend` gives tied logits."""

  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
        (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, ids: Array) -> Array:
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"Embed expects integer token ids, got dtype {ids.dtype}.")
    # A gather equals T5X's one-hot matmul exactly and avoids a [B, L, V] tensor.
    return jnp.take(jnp.asarray(self.embedding, self.dtype), ids, axis=0)

  def attend(self, query: Array) -> Array:
    """Logits against the embedding table, in float32 (T5X attend_dtype)."""
    q = jnp.asarray(query, jnp.float32)
    return jnp.dot(q, jnp.asarray(self.embedding, jnp.float32).T)


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> np.ndarray:
  """Maps relative positions (memory - query) to buckets as flaxformer does.

  Computed in numpy float32 with int32 truncation, which fixes the exact
  bucket boundaries checkpoints were trained with.
  """
  ret = np.zeros_like(relative_position, dtype=np.int32)
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  with np.errstate(divide="ignore"):
    val_if_large = max_exact + (
        np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
        / np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  ret += np.where(is_small, n, val_if_large)
  return ret


class RelativePositionBiases(nn.Module):
  """Per-stack relative position bias table `rel_embedding` [heads, buckets]."""

  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, qlen: int, klen: int, bidirectional: bool,
               query_positions: Optional[Array] = None,
               key_positions: Optional[Array] = None) -> Array:
    """Returns the bias [1, heads, qlen, klen], or [B, heads, qlen, klen] from positions.

    Without positions, query i and key j sit at positions i and j (one
    example per row). With `query_positions` [B, qlen] and `key_positions`
    [B, klen] (a packed row: each segment counts from 0) the bucket of every
    pair comes from its own positions. Buckets are looked up in a numpy table
    over every relative position a row of these lengths can hold, so both
    paths use the same float32 bucket boundaries.
    """
    table = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(relpos_init, ("heads", "relpos_buckets")),
        (self.num_heads, self.num_buckets), jnp.float32)
    table = jnp.asarray(table, self.dtype)
    if query_positions is None and key_positions is None:
      context = np.arange(qlen, dtype=np.int32)[:, None]
      memory = np.arange(klen, dtype=np.int32)[None, :]
      buckets = relative_position_bucket(memory - context, bidirectional,
                                         self.num_buckets, self.max_distance)
      return jnp.take(table, jnp.asarray(buckets), axis=1)[None]  # [1, H, q, k]
    if query_positions is None or key_positions is None:
      raise ValueError("RelativePositionBiases needs both query_positions and key_positions "
                       "(or neither).")
    # Relative positions memory - query lie in [-(qlen - 1), klen - 1].
    relative = np.arange(-(qlen - 1), klen, dtype=np.int32)
    lookup = jnp.asarray(relative_position_bucket(relative, bidirectional, self.num_buckets,
                                                  self.max_distance))
    rel = (jnp.asarray(key_positions, jnp.int32)[:, None, :]
           - jnp.asarray(query_positions, jnp.int32)[:, :, None])  # [B, q, k]
    buckets = jnp.take(lookup, jnp.clip(rel + (qlen - 1), 0, qlen + klen - 2))
    return jnp.moveaxis(jnp.take(table, buckets, axis=1), 0, 1)  # [B, H, q, k]


def attention_bias(mask: Optional[Array], bias: Optional[Array], dtype) -> Optional[Array]:
  """Combines a boolean mask [B, 1|H, q, k] and an additive bias into one bias."""
  out = None
  if mask is not None:
    out = lax.select(mask > 0, jnp.zeros(mask.shape, dtype), jnp.full(mask.shape, NEG_INF, dtype))
  if bias is not None:
    out = bias.astype(dtype) if out is None else out + bias.astype(dtype)
  return out


def make_attention_mask(query_valid: Array, key_valid: Array) -> Array:
  """[B, q] x [B, k] validity -> [B, 1, q, k] boolean mask."""
  return (query_valid[:, :, None] & key_valid[:, None, :])[:, None]


def make_segment_mask(query_segment_ids: Array, key_segment_ids: Array) -> Array:
  """Block-diagonal mask of packed rows, [B, q] x [B, k] segment ids -> [B, 1, q, k].

  A query attends to keys of its own segment; segment 0 (padding) attends to
  nothing and is attended by nothing.
  """
  same = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
  valid = (query_segment_ids > 0)[:, :, None] & (key_segment_ids > 0)[:, None, :]
  return (same & valid)[:, None]


def make_causal_mask(length: int) -> Array:
  idx = jnp.arange(length)
  return (idx[None, :] <= idx[:, None])[None, None]


class MultiHeadAttention(nn.Module):
  """T5 attention with kernels stored [D, H*K] and an optional decode cache.

  In decode mode the first call (with a full-length input) only creates the
  `cache` collection: `cached_key`/`cached_value` [B, L, H, K] and
  `cache_index`. Later calls take one position and attend to the cache.

  With a prefix (`prefix_target` and a PEFT method that puts one there) the
  keys and values, cached or not, get P prefix positions in front
  (`prepend_prefix`); the cache holds only the real positions.
  """

  num_heads: int
  head_dim: int
  dtype: jnp.dtype = jnp.float32
  dropout_rate: float = 0.0
  float32_logits: bool = False
  peft: Any = None  # a spot.peft method (LoRA, (IA)3, BitFit, prefix); None: none
  prefix_target: Optional[str] = None  # "encoder_self", "decoder_self", "encoder_decoder"

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Optional[Array] = None,
               bias: Optional[Array] = None, *, decode: bool = False,
               deterministic: bool = True, prefix_hidden: Optional[Array] = None) -> Array:
    """inputs_q [B, q, D], inputs_kv [B, k, D] -> [B, q, D].

    `prefix_hidden` [P, h] is the stack's prefix reparameterisation (a
    prefix method with `reparameterize=True`), None otherwise.
    """
    joined = self.num_heads * self.head_dim
    dense = functools.partial(Dense, features=joined, kernel_axes=("embed", "joined_kv"),
                              dtype=self.dtype, kernel_init=attention_kernel_init)
    b = inputs_q.shape[0]
    heads = lambda x: x.reshape(x.shape[:2] + (self.num_heads, self.head_dim))
    proj = lambda name, target, x: dense(name=name, adapter=dense_adapter(self.peft, target))(
        x, deterministic)
    query = heads(proj("query", "q", inputs_q))
    key = heads(proj("key", "k", inputs_kv))
    value = heads(proj("value", "v", inputs_kv))
    query = constrain(query, ("batch", "length", "heads", "kv"))
    key = constrain(key, ("batch", "length", "heads", "kv"))
    value = constrain(value, ("batch", "length", "heads", "kv"))

    if decode:
      initialized = self.has_variable("cache", "cached_key")
      cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
      cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
      if initialized:
        length = cached_key.value.shape[1]
        if query.shape[1] != 1:
          raise ValueError(
              f"Decode step expects one position per call, got query length {query.shape[1]}.")
        cur = cache_index.value
        key = lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype),
                                       (0, cur, 0, 0))
        value = lax.dynamic_update_slice(cached_value.value,
                                         value.astype(cached_value.value.dtype), (0, cur, 0, 0))
        cached_key.value = key
        cached_value.value = value
        cache_index.value = cur + 1
        step_mask = (jnp.arange(length) <= cur)[None, None, None, :]
        step_mask = jnp.broadcast_to(step_mask, (b, 1, 1, length))
        mask = step_mask if mask is None else jnp.logical_and(mask, step_mask)
        if bias is not None:
          bias = lax.dynamic_slice_in_dim(bias, cur, 1, axis=-2)

    prefix = attention_prefix(self.peft, self.prefix_target)
    if prefix is not None:
      prefix_key, prefix_value = prefix(joined)(prefix_hidden)
      key, value, mask, bias = prepend_prefix(key, value, mask, bias, prefix_key, prefix_value)

    attn_bias = attention_bias(mask, bias, self.dtype)
    if self.float32_logits:
      query, key = query.astype(jnp.float32), key.astype(jnp.float32)
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key)
    if attn_bias is not None:
      logits = logits + attn_bias.astype(logits.dtype)
    weights = jax.nn.softmax(logits).astype(self.dtype)
    if not deterministic and self.dropout_rate > 0.0:
      weights = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(weights, deterministic=False)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, value.astype(self.dtype))
    out = out.reshape(out.shape[:2] + (joined,))
    return Dense(features=inputs_q.shape[-1], kernel_axes=("joined_kv", "embed"),
                 dtype=self.dtype, kernel_init=attention_kernel_init,
                 adapter=dense_adapter(self.peft, "o"), name="out")(out, deterministic)


class MlpBlock(nn.Module):
  """T5 feed-forward: `wi` (one activation) or gated `wi_0`, `wi_1`, then `wo`."""

  mlp_dim: int
  activations: tuple[str, ...] = ("gelu", "linear")
  dtype: jnp.dtype = jnp.float32
  dropout_rate: float = 0.0
  peft: Any = None  # a spot.peft method for wi / wi_0, wi_1, wo; None: none

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    hidden = []
    for idx, act in enumerate(self.activations):
      name = "wi" if len(self.activations) == 1 else f"wi_{idx}"
      h = Dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype,
                adapter=dense_adapter(self.peft, name), name=name)(x, deterministic)
      hidden.append(get_activation(act)(h))
    h = functools.reduce(operator.mul, hidden)
    h = constrain(h, ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    return Dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype,
                 adapter=dense_adapter(self.peft, "wo"), name="wo")(h, deterministic)
