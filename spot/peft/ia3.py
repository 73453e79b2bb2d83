"""(IA)3 (Liu et al., 2022): learned vectors that rescale activations of a frozen model.

PEFT's T5 defaults: keys and values are scaled at the projection's output
(y * l, l [out]) and the MLP's `wo` at its input ((x * l) W, l [in]: the
inner activation). Vectors start at one, so training starts from the base
model; `merge.merge_peft` folds them into the kernels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from spot import errors
from spot.peft.base import MethodConfig
from spot.peft.lora import check_targets

Array = jax.Array

DEFAULT_TARGETS = ("k", "v", "wo")
DEFAULT_FEEDFORWARD = ("wo",)


class IA3(nn.Module):
  """Scales one projection's output (`feedforward=False`) or its input (True).

  Attributes:
    feedforward: scale the input [in] (PEFT's feedforward_modules) instead of
      the output [out].
    kernel_axes: the kernel's logical axes; `scale` takes the scaled side's.
  """

  feedforward: bool = False
  kernel_axes: tuple[str, str] = ("embed", "mlp")

  @nn.compact
  def __call__(self, x: Array, y: Array, kernel: Array, deterministic: bool = True) -> Array:
    """x [.., in], y = x @ kernel [.., out], kernel [in, out] -> [.., out]."""
    del deterministic
    side = 0 if self.feedforward else 1
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                             (self.kernel_axes[side],)),
                       (kernel.shape[side],), jnp.float32)
    scale = jnp.asarray(scale, y.dtype)
    if not self.feedforward:
      return y * scale
    xs = x * scale
    return lax.dot_general(xs, kernel, (((xs.ndim - 1,), (0,)), ((), ())))


@dataclasses.dataclass(frozen=True)
class IA3Config(MethodConfig):
  """(IA)3 on the named projections of every layer (PEFT's T5 defaults).

  Attributes:
    targets: projections whose activations are rescaled (k, v, wo).
    feedforward: those of `targets` scaled at their input (wo).
  """

  targets: tuple[str, ...] = DEFAULT_TARGETS
  feedforward: tuple[str, ...] = DEFAULT_FEEDFORWARD

  method = "ia3"
  PARAM = "ia3"

  def __post_init__(self):
    object.__setattr__(self, "targets", check_targets(self.targets, "IA3Config.targets"))
    ff = tuple(self.feedforward)
    if not set(ff) <= set(self.targets):
      raise errors.ConfigError(f"IA3Config.feedforward={list(ff)} must be a subset of "
                               f"IA3Config.targets={list(self.targets)}.")
    object.__setattr__(self, "feedforward", ff)

  def dense_adapter(self, target: str) -> Optional[Callable[[tuple[str, str]], nn.Module]]:
    if target not in self.targets:
      return None
    ff = target in self.feedforward
    return lambda axes: IA3(ff, tuple(axes), name=self.PARAM)

  def to_dict(self) -> dict[str, Any]:
    return dict(method=self.method, targets=list(self.targets),
                feedforward=list(self.feedforward))
