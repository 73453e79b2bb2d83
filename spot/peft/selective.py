"""Selective tuning (a subset of the frozen model's own parameters) and BitFit.

Selective tuning adds no module: it is a choice of trainable parameters,
named here as full-match regexes over '/'-joined T5X paths (`selection`).

BitFit (Ben Zaken et al., 2022) trains only biases. T5 has no biases, so
`BitFitConfig` adds a zero-initialised bias to every chosen projection (the
model starts as the base model) and trains only those.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from spot import errors
from spot.peft.base import MethodConfig
from spot.peft.lora import TARGETS, check_targets

Array = jax.Array

_LN = r"(encoder|decoder)/layers(_\d+)?/pre_{}layer_norm/scale"
SELECTIONS: dict[str, tuple[str, ...]] = {
    # LayerNorm scales: all (also the final norms), attention-side, MLP-side.
    "layernorm": (r"(encoder|decoder)/layers(_\d+)?/.*layer_norm/scale",
                  r"(encoder|decoder)/(encoder|decoder)_norm/scale"),
    "layernorm_attention": (_LN.format("(self_|cross_)?attention_"),),
    "layernorm_mlp": (_LN.format("mlp_"),),
    # Module-wise: every attention / every MLP kernel, the token embedding.
    "attention": (r"(encoder|decoder)/layers(_\d+)?/(attention|self_attention|"
                  r"encoder_decoder_attention)/.*",),
    "mlp": (r"(encoder|decoder)/layers(_\d+)?/mlp/.*",),
    "embeddings": (r"token_embedder/embedding",),
}


def selection(name: str, *, layer: Optional[int] = None, top_k: Optional[int] = None,
              num_layers: Optional[int] = None) -> tuple[str, ...]:
  """Regexes of a named selection; `layer` limits it to one layer, `top_k` to the top k.

  Args:
    name: one of `SELECTIONS` ("layernorm", "attention", "mlp", ...), or
      "layers" (every parameter of the chosen layers; needs layer or top_k).
    layer: only layer `layer` of each stack (e.g. LayerNorm of one layer).
    top_k: only the last `top_k` layers of each stack (needs `num_layers`).
    num_layers: the stack depth, for `top_k`.
  """
  if name != "layers" and name not in SELECTIONS:
    raise errors.ConfigError(f"Selective tuning {name!r} is unknown; choose one of "
                             f"{sorted(SELECTIONS) + ['layers']}.")
  if layer is None and top_k is None:
    if name == "layers":
      raise errors.ConfigError("Selective tuning 'layers' needs layer= or top_k=.")
    return SELECTIONS[name]
  if top_k is not None:
    if not num_layers or not 0 < top_k <= num_layers:
      raise errors.ConfigError(f"top_k={top_k} needs num_layers >= top_k (got {num_layers}).")
    layers = list(range(num_layers - top_k, num_layers))
  else:
    layers = [int(layer)]
  which = "layers_(" + "|".join(str(i) for i in layers) + ")"
  if name == "layers":
    return (rf"(encoder|decoder)/{which}/.*",)
  per_layer = [p for p in SELECTIONS[name] if r"layers(_\d+)?" in p]
  if not per_layer:
    raise errors.ConfigError(f"Selective tuning {name!r} has no per-layer parameters; "
                             "drop layer= / top_k=.")
  return tuple(p.replace(r"layers(_\d+)?", which) for p in per_layer)


class Bias(nn.Module):
  """A zero-initialised bias [out] added to a projection's output."""

  kernel_axes: tuple[str, str] = ("embed", "mlp")

  @nn.compact
  def __call__(self, x: Array, y: Array, kernel: Array, deterministic: bool = True) -> Array:
    del x, deterministic
    b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                        (self.kernel_axes[1],)),
                   (kernel.shape[1],), jnp.float32)
    return y + jnp.asarray(b, y.dtype)


@dataclasses.dataclass(frozen=True)
class BitFitConfig(MethodConfig):
  """BitFit: zero-initialised biases on the named projections (default: all)."""

  targets: tuple[str, ...] = TARGETS

  method = "bitfit"
  PARAM = "bitfit"

  def __post_init__(self):
    object.__setattr__(self, "targets", check_targets(self.targets, "BitFitConfig.targets"))

  def dense_adapter(self, target: str) -> Optional[Callable[[tuple[str, str]], nn.Module]]:
    if target not in self.targets:
      return None
    return lambda axes: Bias(tuple(axes), name=self.PARAM)

  def to_dict(self) -> dict[str, Any]:
    return dict(method=self.method, targets=list(self.targets))
