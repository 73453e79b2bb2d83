"""LoRA (Hu et al., 2021): a trainable low-rank update beside a frozen projection.

For a projection y = x W (W [in, out] frozen) LoRA adds
y += (alpha / r) * dropout(x) A B with A [in, r] random (HF PEFT's default,
uniform on +-1/sqrt(in)) and B [r, out] zero, so training starts from the base
model. `merge.merge_peft` folds the update into W for inference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from spot import errors
from spot.peft.base import MethodConfig

Array = jax.Array

# Projection names, as HF T5 and PEFT's `target_modules` spell them.
ATTENTION_TARGETS = ("q", "k", "v", "o")
MLP_TARGETS = ("wi", "wi_0", "wi_1", "wo")
TARGETS = ATTENTION_TARGETS + MLP_TARGETS

# PEFT's uniform(+-1/sqrt(in)) (kaiming_uniform with a=sqrt(5)) on A stored [in, r].
lora_a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def check_targets(targets: tuple[str, ...], setting: str) -> tuple[str, ...]:
  """`targets` as a tuple, after checking every one names a T5 projection."""
  targets = tuple(targets)
  bad = [t for t in targets if t not in TARGETS]
  if bad or not targets:
    raise errors.ConfigError(f"{setting}={list(targets)} names no T5 projection {bad}; "
                             f"choose from {list(TARGETS)}.")
  return targets


class LoRA(nn.Module):
  """The low-rank update of one projection: returns y + scale * drop(x) @ a @ b.

  Attributes:
    rank: r; must not exceed min(in, out) of the projection.
    scale: alpha / r (alpha / sqrt(r) with rsLoRA).
    dropout_rate: dropout on the input of the update (PEFT's lora_dropout).
    kernel_axes: the projection kernel's logical axes (in, out); `a` is
      [in, r] on (in, "lora_rank"), `b` [r, out] on ("lora_rank", out).
  """

  rank: int
  scale: float
  dropout_rate: float = 0.0
  kernel_axes: tuple[str, str] = ("embed", "mlp")

  @nn.compact
  def __call__(self, x: Array, y: Array, kernel: Array, deterministic: bool = True) -> Array:
    """x [.., in], y = x @ kernel [.., out], kernel [in, out] -> [.., out]."""
    d_in, d_out = kernel.shape
    if self.rank > min(d_in, d_out):
      raise errors.ConfigError(
          f"LoraConfig.rank={self.rank} is larger than the projection {self.name_path()} "
          f"[{d_in}, {d_out}]; use a rank of at most {min(d_in, d_out)}.")
    a = self.param("a", nn.with_logical_partitioning(lora_a_init, (self.kernel_axes[0],
                                                                   "lora_rank")),
                   (d_in, self.rank), jnp.float32)
    b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros,
                                                     ("lora_rank", self.kernel_axes[1])),
                   (self.rank, d_out), jnp.float32)
    h = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic or self.dropout_rate == 0)
    h = jnp.dot(h, jnp.asarray(a, y.dtype))
    return y + jnp.asarray(self.scale, y.dtype) * jnp.dot(h, jnp.asarray(b, y.dtype))

  def name_path(self) -> str:
    return "/".join(self.scope.path[:-1]) if self.scope is not None else "?"


@dataclasses.dataclass(frozen=True)
class LoraConfig(MethodConfig):
  """LoRA on the named projections of every encoder and decoder layer.

  Attributes:
    rank: r (PEFT's default 8).
    alpha: the update is scaled by alpha / r (PEFT's lora_alpha, default 8).
    dropout: dropout on the update's input during training.
    targets: projections among q, k, v, o (every attention: self and
      cross) and wi / wi_0, wi_1, wo (the MLP); PEFT's T5 default is q, v.
    use_rslora: scale by alpha / sqrt(r) instead (PEFT's use_rslora).
  """

  rank: int = 8
  alpha: float = 8.0
  dropout: float = 0.0
  targets: tuple[str, ...] = ("q", "v")
  use_rslora: bool = False

  method = "lora"
  PARAM = "lora"

  def __post_init__(self):
    object.__setattr__(self, "targets", check_targets(self.targets, "LoraConfig.targets"))
    if int(self.rank) <= 0:
      raise errors.ConfigError(f"LoraConfig.rank={self.rank}; it must be a positive integer.")
    if not 0.0 <= float(self.dropout) < 1.0:
      raise errors.ConfigError(f"LoraConfig.dropout={self.dropout}; use a rate in [0, 1).")

  @property
  def scale(self) -> float:
    return float(self.alpha) / (math.sqrt(self.rank) if self.use_rslora else self.rank)

  def dense_adapter(self, target: str) -> Optional[Callable[[tuple[str, str]], nn.Module]]:
    if target not in self.targets:
      return None
    return lambda axes: LoRA(int(self.rank), self.scale, float(self.dropout), tuple(axes),
                             name=self.PARAM)

  def to_dict(self) -> dict[str, Any]:
    return dict(method=self.method, rank=int(self.rank), alpha=float(self.alpha),
                dropout=float(self.dropout), targets=list(self.targets),
                use_rslora=bool(self.use_rslora))
