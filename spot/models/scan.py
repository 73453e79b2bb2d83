"""Converting parameter trees between unrolled (`layers_i`) and scanned layers.

T5X checkpoints of T5 1.0 / 1.1 / mT5 store one subtree per layer
(`encoder/layers_3/mlp/wi_0/kernel` [D, F]). A model built with
`T5Config.scan_layers` holds one subtree per stack whose arrays carry the
layers on `param_scan_axis` (`encoder/layers/mlp/wi_0/kernel` [L, D, F] for
axis 0, [D, L, F] for axis 1). These functions move a tree from one layout to the other so a
checkpoint of either layout serves a model of either layout, and so exports
(`save_hf`) always see `layers_i`.

Only the two stacks' layer subtrees change; the embedding, relative position
tables, final norms, logits and prompt parameters pass through untouched.
Each stacked leaf is built and its sources dropped before the next, so the
extra host memory is one leaf group, not a second copy of the model.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

STACKS = ("encoder", "decoder")
SCANNED = "layers"
_UNROLLED = re.compile(r"^layers_(\d+)$")


def _flat(params: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
  return traverse_util.flatten_dict(dict(params))


def _stack_layout(flat: Mapping[tuple[str, ...], Any], stack: str) -> str:
  """"scanned", "unrolled" or "none" for one stack of a flat tree."""
  keys = {k[1] for k in flat if len(k) > 2 and k[0] == stack}
  if SCANNED in keys:
    return "scanned"
  if any(_UNROLLED.match(k) for k in keys):
    return "unrolled"
  return "none"


def is_scanned(params: Mapping[str, Any]) -> bool:
  """Whether any stack of `params` holds scanned (`layers`) parameters."""
  flat = _flat(params)
  return any(_stack_layout(flat, s) == "scanned" for s in STACKS)


def scan_layers(params: Mapping[str, Any], axis: int = 0) -> dict:
  """`layers_i` subtrees -> one `layers` subtree stacked on `axis`.

  Raises:
    ValueError: when a stack's layers are not numbered 0..N-1, or its layers
      do not all hold the same parameters with the same shapes.
  """
  flat = _flat(params)
  for stack in STACKS:
    if _stack_layout(flat, stack) != "unrolled":
      continue
    groups: dict[tuple[str, ...], dict[int, tuple[str, ...]]] = {}
    for key in [k for k in flat if k[0] == stack and _UNROLLED.match(k[1])]:
      index = int(_UNROLLED.match(key[1]).group(1))
      groups.setdefault(key[2:], {})[index] = key
    count = max(len(g) for g in groups.values())
    for rest, members in sorted(groups.items()):
      if sorted(members) != list(range(count)):
        raise ValueError(
            f"Cannot stack {stack}/layers_i/{'/'.join(rest)}: found it in layers "
            f"{sorted(members)} of 0..{count - 1}; every layer must hold the same parameters.")
      leaves = [np.asarray(flat.pop(members[i])) for i in range(count)]
      shapes = {leaf.shape for leaf in leaves}
      if len(shapes) != 1:
        raise ValueError(f"Cannot stack {stack}/layers_i/{'/'.join(rest)}: the layers have "
                         f"different shapes {sorted(shapes)}.")
      flat[(stack, SCANNED, *rest)] = np.stack(leaves, axis=axis)
      del leaves
  return traverse_util.unflatten_dict(flat)


def unscan_layers(params: Mapping[str, Any], axis: int = 0) -> dict:
  """One `layers` subtree stacked on `axis` -> `layers_i` subtrees (T5X layout)."""
  flat = _flat(params)
  for stack in STACKS:
    if _stack_layout(flat, stack) != "scanned":
      continue
    for key in sorted(k for k in flat if k[0] == stack and k[1] == SCANNED):
      stacked = np.asarray(flat.pop(key))
      if stacked.ndim <= axis:
        raise ValueError(f"{'/'.join(key)} has shape {list(stacked.shape)}: no layer axis "
                         f"{axis}; was it saved with another param_scan_axis?")
      for i in range(stacked.shape[axis]):
        flat[(stack, f"layers_{i}", *key[2:])] = np.take(stacked, i, axis=axis)
  return traverse_util.unflatten_dict(flat)


def to_layout(params: Mapping[str, Any], scanned: bool, axis: int = 0) -> dict:
  """`params` in the layout a model with `scan_layers=scanned` expects."""
  if scanned:
    return scan_layers(params, axis) if not is_scanned(params) else dict(params)
  return unscan_layers(params, axis) if is_scanned(params) else dict(params)


__all__ = ["is_scanned", "scan_layers", "to_layout", "unscan_layers"]
