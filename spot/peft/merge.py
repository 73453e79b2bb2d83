"""Folding LoRA and (IA)3 into the frozen kernels: one plain T5X tree for inference.

LoRA: W' = W + scale * a @ b. (IA)3: W' = W * l on the output columns, or on
the input rows for a feed-forward (`wo`) target. The result has exactly the
base model's parameter tree, so `save_t5x` writes it and `load_t5x` reads it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from spot import errors

# Dense module names -> the projection names PEFT configs use.
MODULE_TO_TARGET = {"query": "q", "key": "k", "value": "v", "out": "o",
                    "wi": "wi", "wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo"}


def mergeable(peft: Any) -> bool:
  """Whether `peft`'s method folds into the base kernels (LoRA and (IA)3 do)."""
  return getattr(peft, "method", None) in ("lora", "ia3")


def merge_peft(params: Mapping[str, Any], peft: Any) -> dict:
  """Base + method parameters (unrolled `layers_i`) -> the base tree with the method folded in.

  Raises:
    ConfigError: `peft` is a method that does not fold into the kernels, or
      the tree holds scanned layers (unscan it first, `spot.models.scan`).
  """
  if not mergeable(peft):
    raise errors.ConfigError(f"PEFT method {getattr(peft, 'method', peft)!r} cannot be merged "
                             "into the base checkpoint; only lora and ia3 can.")
  flat = {k: np.asarray(v, np.float32) if hasattr(v, "shape") else v
          for k, v in traverse_util.flatten_dict(dict(params)).items()}
  if any(len(k) > 1 and k[1] == "layers" for k in flat):
    raise errors.ConfigError("merge_peft reads unrolled layers (layers_i); convert a scanned "
                             "tree with spot.models.scan.unscan_layers first.")
  out = {}
  for key, value in flat.items():
    if peft.PARAM in key:
      continue
    module = key[:-1]
    if key[-1] == "kernel" and module + (peft.PARAM,) in {k[:len(module) + 1] for k in flat
                                                         if len(k) > len(module)}:
      value = _fold(peft, module, value, flat)
    out[key] = value
  return traverse_util.unflatten_dict(out)


def _fold(peft: Any, module: tuple[str, ...], kernel: np.ndarray,
          flat: Mapping[tuple[str, ...], np.ndarray]) -> np.ndarray:
  """The kernel [in, out] of `module` with its LoRA / (IA)3 parameters folded in."""
  if peft.method == "lora":
    a = flat[module + ("lora", "a")]
    b = flat[module + ("lora", "b")]
    return (kernel + np.float32(peft.scale) * (a @ b)).astype(np.float32)
  scale = flat[module + ("ia3", "scale")]
  if MODULE_TO_TARGET[module[-1]] in peft.feedforward:
    return (kernel * scale[:, None]).astype(np.float32)
  return (kernel * scale[None, :]).astype(np.float32)
