"""Bottleneck adapters: Houlsby (after attention and MLP) and Pfeiffer (after MLP only).

Each adapter maps a sublayer's output y [B, L, D] to y + up(relu(down(y)))
with down [D, h] and up [h, D]; `up` starts at zero so training starts from
the base model. The adapter sits before the residual add, as in Houlsby et
al. (2019); parameters live at `<layer>/{attention,mlp,...}_adapter/`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from spot import errors
from spot.peft.base import MethodConfig

Array = jax.Array

KINDS = ("houlsby", "pfeiffer")
down_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class Bottleneck(nn.Module):
  """y [.., D] -> y + up(relu(down(y))); `down` [D, h], `up` [h, D] zero-initialised."""

  hidden: int

  @nn.compact
  def __call__(self, y: Array, deterministic: bool = True) -> Array:
    del deterministic
    d = y.shape[-1]
    down = self.param("down", nn.with_logical_partitioning(down_init, ("embed", "adapter")),
                      (d, self.hidden), jnp.float32)
    up = self.param("up", nn.with_logical_partitioning(nn.initializers.zeros,
                                                       ("adapter", "embed")),
                    (self.hidden, d), jnp.float32)
    h = jax.nn.relu(jnp.dot(y, jnp.asarray(down, y.dtype)))
    return y + jnp.dot(h, jnp.asarray(up, y.dtype))


@dataclasses.dataclass(frozen=True)
class AdapterConfig(MethodConfig):
  """Bottleneck adapters in every encoder and decoder layer.

  Attributes:
    kind: "houlsby" (after every attention and the MLP) or "pfeiffer" (after
      the MLP only).
    hidden: the bottleneck width h (64 in the CrossFit study).
  """

  kind: str = "houlsby"
  hidden: int = 64

  method = "adapter"

  def __post_init__(self):
    if self.kind not in KINDS:
      raise errors.ConfigError(f"AdapterConfig.kind={self.kind!r}; choose one of {list(KINDS)}.")
    if int(self.hidden) <= 0:
      raise errors.ConfigError(f"AdapterConfig.hidden={self.hidden}; it must be positive.")

  def block_adapter(self, kind: str) -> Optional[Callable[..., nn.Module]]:
    if kind == "mlp" or self.kind == "houlsby":
      return lambda name: Bottleneck(int(self.hidden), name=name)
    return None

  @property
  def trainable(self) -> tuple[str, ...]:
    return (r".*_adapter/.*",)

  def to_dict(self) -> dict[str, Any]:
    return dict(method=self.method, kind=self.kind, hidden=int(self.hidden))
