"""Prefix tuning (Li & Liang, 2021): trainable key/value prefixes in every attention layer.

Each chosen attention of every layer gets P extra key and value positions
in front of its own (`spot.models.layers.prepend_prefix`): every query may
attend to them (also padding and every segment of a packed row), they get
a zero relative position bias, and the decode cache holds only the real
positions, the prefix being put in front at every step.

Targets: "encoder_self" (encoder self-attention), "decoder_self" (decoder
self-attention, cached decoding included) and "encoder_decoder" (the
decoder's cross-attention), each with its own prefixes, as in Li & Liang's
encoder-decoder setting. Parameters (T5X-style names):

- plain (`reparameterize=False`, also what `fold_prefix` writes):
  `<stack>/layers_i/<attention>/prefix/{key,value}` [P, H*K] on
  ("prefix", "joined_kv");
- reparameterised (`reparameterize=True`, for training): one MLP per stack,
  `<stack>/prefix/embedding` [P, D] and `<stack>/prefix/hidden/{kernel
  [D, h], bias [h]}`, gives a tanh hidden state [P, h] that each attention
  projects to its own prefixes with `prefix/{key,value}_out/{kernel
  [h, H*K], bias [H*K]}`. This is PEFT's `prefix_projection` MLP (embedding
  -> Linear -> tanh -> Linear to every layer's keys and values), its output
  layer split by layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from spot import errors
from spot.models import scan
from spot.peft.base import MethodConfig

Array = jax.Array

TARGETS = ("encoder_self", "decoder_self", "encoder_decoder")
STACK_TARGETS = {"encoder": ("encoder_self",), "decoder": ("decoder_self", "encoder_decoder")}

embedding_init = nn.initializers.normal(stddev=1.0)
kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class Affine(nn.Module):
  """x [P, in] @ `kernel` [in, features] + `bias` [features], in float32."""

  features: int
  kernel_axes: tuple[str, str]

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(kernel_init, self.kernel_axes),
                        (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                           self.kernel_axes[1:]),
                      (self.features,), jnp.float32)
    return jnp.dot(jnp.asarray(x, jnp.float32), kernel) + bias


class PrefixEncoder(nn.Module):
  """The reparameterisation shared by a stack's layers: tanh(E W + b) [P, h].

  Attributes:
    num_tokens: P, the prefix length.
    hidden: h, the MLP width.
    features: D, the width of the embedding E [P, D].
  """

  num_tokens: int
  hidden: int
  features: int

  @nn.compact
  def __call__(self) -> Array:
    emb = self.param("embedding", nn.with_logical_partitioning(embedding_init,
                                                               ("prefix", "embed")),
                     (self.num_tokens, self.features), jnp.float32)
    return jnp.tanh(Affine(self.hidden, ("embed", "prefix_mlp"), name="hidden")(emb))


class AttentionPrefix(nn.Module):
  """One attention's key and value prefixes, (key [P, H*K], value [P, H*K]).

  Attributes:
    num_tokens: P.
    features: H*K, the joined key width.
    reparameterize: project the stack's hidden state [P, h] (`key_out`,
      `value_out`) instead of holding `key` and `value` directly.
  """

  num_tokens: int
  features: int
  reparameterize: bool = True

  @nn.compact
  def __call__(self, hidden: Optional[Array] = None) -> tuple[Array, Array]:
    if not self.reparameterize:
      shape = (self.num_tokens, self.features)
      init = nn.with_logical_partitioning(embedding_init, ("prefix", "joined_kv"))
      return (self.param("key", init, shape, jnp.float32),
              self.param("value", init, shape, jnp.float32))
    if hidden is None:
      raise ValueError(f"The reparameterised prefix at {'/'.join(self.scope.path)} needs the "
                       "stack's hidden state; build the model with the same PrefixConfig.")
    axes = ("prefix_mlp", "joined_kv")
    return (Affine(self.features, axes, name="key_out")(hidden),
            Affine(self.features, axes, name="value_out")(hidden))


@dataclasses.dataclass(frozen=True)
class PrefixConfig(MethodConfig):
  """Prefix tuning on the chosen attentions of every encoder and decoder layer.

  Attributes:
    num_virtual_tokens: P, prefix positions per attention (PEFT's name).
    reparameterize: train through the stack MLP (Li & Liang; PEFT's
      prefix_projection); `fold_prefix` removes it for inference.
    hidden: h, the MLP width (PEFT's encoder_hidden_size).
    targets: among "encoder_self", "decoder_self", "encoder_decoder".
  """

  num_virtual_tokens: int = 20
  reparameterize: bool = True
  hidden: int = 512
  targets: tuple[str, ...] = TARGETS

  method = "prefix"
  PARAM = "prefix"

  def __post_init__(self):
    targets = tuple(self.targets)
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
      raise errors.ConfigError(f"PrefixConfig.targets={list(targets)} names no attention "
                               f"{bad}; choose from {list(TARGETS)}.")
    object.__setattr__(self, "targets", targets)
    for name in ("num_virtual_tokens", "hidden"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise errors.ConfigError(f"PrefixConfig.{name}={value!r}; it must be a positive "
                                 "integer.")

  def attention_prefix(self, target: str) -> Optional[Callable[[int], nn.Module]]:
    if target not in self.targets:
      return None
    return lambda features: AttentionPrefix(int(self.num_virtual_tokens), int(features),
                                            bool(self.reparameterize), name=self.PARAM)

  def prefix_encoder(self, stack: str) -> Optional[Callable[[int], nn.Module]]:
    """The stack MLP (created by the stack as `<stack>/prefix`), when reparameterised."""
    if not self.reparameterize or not set(STACK_TARGETS.get(stack, ())) & set(self.targets):
      return None
    return lambda features: PrefixEncoder(int(self.num_virtual_tokens), int(self.hidden),
                                          int(features))

  def folded(self) -> "PrefixConfig":
    """The config of the plain prefixes `fold_prefix` writes."""
    return dataclasses.replace(self, reparameterize=False)

  def to_dict(self) -> dict[str, Any]:
    return dict(method=self.method, num_virtual_tokens=int(self.num_virtual_tokens),
                reparameterize=bool(self.reparameterize), hidden=int(self.hidden),
                targets=list(self.targets))


def fold_prefix(params: Mapping[str, Any], config: PrefixConfig, *,
                param_scan_axis: int = 0) -> dict:
  """Replaces the MLP reparameterisation by the prefixes it computes (for inference).

  Args:
    params: a tree of a model built with `config` (reparameterised), layers
      unrolled (`layers_i`) or scanned on `param_scan_axis`.
    config: its `PrefixConfig`.
    param_scan_axis: the layer axis of scanned parameters.

  Returns:
    The tree of a model built with `config.folded()`: every
    `<attention>/prefix/{key,value}` [P, H*K], no `<stack>/prefix` MLP.
  """
  if not isinstance(config, PrefixConfig):
    raise errors.ConfigError(f"fold_prefix needs a PrefixConfig, got {type(config).__name__}.")
  if not config.reparameterize:
    return dict(params)
  scanned = scan.is_scanned(params)
  tree = scan.unscan_layers(params, param_scan_axis) if scanned else dict(params)
  flat = traverse_util.flatten_dict(tree)
  take = lambda key: np.asarray(flat.pop(key), np.float32)
  for stack in STACK_TARGETS:
    if (stack, "prefix", "embedding") not in flat:
      continue
    emb = take((stack, "prefix", "embedding"))
    hidden = np.tanh(emb @ take((stack, "prefix", "hidden", "kernel"))
                     + take((stack, "prefix", "hidden", "bias")))
    for key in [k for k in flat if k[0] == stack and k[-2:] == ("key_out", "kernel")]:
      module = key[:-2]
      for name in ("key", "value"):
        kernel = take(module + (f"{name}_out", "kernel"))
        bias = take(module + (f"{name}_out", "bias"))
        flat[module + (name,)] = (hidden @ kernel + bias).astype(np.float32)
  left = sorted("/".join(k) for k in flat if len(k) > 1 and k[-2] in ("key_out", "value_out"))
  if left:
    raise errors.ConfigError(f"fold_prefix found prefix projections {left[:2]} without their "
                             "stack's prefix/embedding; is the tree complete?")
  out = traverse_util.unflatten_dict(flat)
  return scan.scan_layers(out, param_scan_axis) if scanned else out
