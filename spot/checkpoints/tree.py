"""Parameter-tree helpers: '/'-joined names, shape checks, config inference.

Every reader in this package returns a nested dict keyed by T5X names
(`encoder/layers_0/attention/query/kernel`, ...). These helpers compare such a
tree with the shapes `spot.models.param_shapes(config)` expects, and guess a
`T5Config` from shapes alone when a checkpoint comes without one (T5X
checkpoints carry no config; the gin file does).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping, Optional

import numpy as np
from flax import traverse_util

from spot import errors
from spot.models import T5Config, param_shapes, scan

# Parameters a spot checkpoint may hold beyond the base model: the prompt
# module lives under `encoder/prompt/...` (see spot.models.t5). The shape check
# accepts these without a config entry; everything else must match.
EXTRA_PARAM_PREFIXES = ("encoder/prompt/",)

Shape = tuple[int, ...]


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}. `None` leaves (T5X MultiOptimizer) are kept."""
  return traverse_util.flatten_dict(dict(tree), sep="/", keep_empty_nodes=False)


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dict."""
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def leaf_shape(leaf: Any) -> Shape:
  """Shape of an ndarray, jax array or `jax.ShapeDtypeStruct`."""
  return tuple(int(d) for d in np.shape(leaf))


def expected_shapes(config: T5Config) -> dict[str, Shape]:
  """The flat {name: shape} tree `spot.models.T5(config)` creates (no prompt)."""
  return dict(_expected_shapes(config))


@functools.lru_cache(maxsize=32)
def _expected_shapes(config: T5Config) -> tuple[tuple[str, Shape], ...]:
  # Tracing the model's init takes ~0.5 s; configs are frozen, so cache per config.
  return tuple((k, leaf_shape(v)) for k, v in flatten(param_shapes(config)).items())


def is_extra_param(name: str) -> bool:
  """Whether `name` is a documented extra (prompt) parameter."""
  return name.startswith(EXTRA_PARAM_PREFIXES)


def shape_problems(found: Mapping[str, Shape], expected: Mapping[str, Shape]) -> list[str]:
  """Lines describing missing, unexpected and mis-shaped parameters, sorted by name."""
  problems = []
  for name in sorted(set(found) | set(expected)):
    if name not in found:
      problems.append(f"missing parameter {name}: expected shape {list(expected[name])}")
    elif name not in expected:
      if not is_extra_param(name):
        problems.append(f"unexpected parameter {name} with shape {list(found[name])}")
    elif tuple(found[name]) != tuple(expected[name]):
      problems.append(f"shape mismatch for {name}: expected {list(expected[name])}, "
                      f"found {list(found[name])}")
  return problems


def check_shapes(params: Mapping[str, Any], config: T5Config, *, source: str = "params") -> None:
  """Raises ValueError naming every parameter whose shape differs from `config`'s.

  Args:
    params: nested dict of arrays (or anything with `.shape`), T5X names.
    config: the model configuration the parameters are meant for.
    source: what `params` came from (a path), used in the message.

  Raises:
    ValueError: listing each missing, unexpected or mis-shaped parameter with
      the expected and found shapes. Prompt parameters under `encoder/prompt/`
      are allowed extras.
  """
  found = {k: leaf_shape(v) for k, v in flatten(params).items()}
  problems = shape_problems(found, expected_shapes(config))
  if problems:
    raise errors.DataError(
        f"{source} does not match the model config ({len(problems)} problem(s)):\n  "
        + "\n  ".join(problems)
        + "\nPass the T5Config the checkpoint was trained with (e.g. "
        "spot.models.get_config('t5_1_1_base')), or spot.checkpoints.infer_config(params) "
        "to derive one from the shapes.")


def total_size(shapes: Mapping[str, Shape]) -> int:
  """Number of scalars in a flat {name: shape} tree."""
  return sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())


def _layer_count(names: set[str], stack: str) -> int:
  indices = {int(m.group(1)) for n in names if (m := re.match(rf"{stack}/layers_(\d+)/", n))}
  if indices != set(range(len(indices))):
    raise errors.DataError(f"{stack} layers are not numbered 0..N-1: found {sorted(indices)}.")
  return len(indices)


def infer_config(params: Mapping[str, Any], **overrides: Any) -> T5Config:
  """Derives a `T5Config` from parameter shapes (T5X names).

  Shapes fix the vocabulary, widths, heads, depths, bucket count, whether the
  MLP is gated (`wi_0`/`wi_1` -> T5 1.1 gated GELU, `wi` -> T5 1.0 ReLU) and
  whether logits are tied (no `decoder/logits_dense`). They cannot fix
  `relative_attention_max_distance`: it is the matching published size's (8
  for t5_1_1_tiny), else 128; nor the exact activation or the layer-norm
  epsilon: pass those as keyword overrides when they differ.
  A scanned tree (`encoder/layers/...`) gives `scan_layers=True` and its axis.

  Raises:
    ValueError: when a parameter needed to infer a field is missing.
  """
  if scan.is_scanned(params):
    # Scanned layers: find the layer axis from the width D, infer, and keep the layout.
    flat = flatten(params)
    emb = leaf_shape(flat["token_embedder/embedding"])[1]
    query = leaf_shape(flat["encoder/layers/attention/query/kernel"])
    axis = 1 if query[0] == emb else 0
    return infer_config(scan.unscan_layers(params, axis), **{
        "scan_layers": True, "param_scan_axis": axis, **overrides})
  flat = {k: leaf_shape(v) for k, v in flatten(params).items()}
  names = set(flat)

  def shape_of(name: str) -> Shape:
    if name not in flat:
      raise errors.DataError(f"Cannot infer a T5Config: parameter {name} is missing "
                       f"(found {len(flat)} parameters).")
    return flat[name]

  vocab, emb = shape_of("token_embedder/embedding")
  heads, buckets = shape_of("encoder/relpos_bias/rel_embedding")
  joined = shape_of("encoder/layers_0/attention/query/kernel")[1]
  gated = "encoder/layers_0/mlp/wi_0/kernel" in flat
  mlp_dim = shape_of("encoder/layers_0/mlp/wi_0/kernel" if gated
                     else "encoder/layers_0/mlp/wi/kernel")[1]
  fields = dict(
      vocab_size=vocab, emb_dim=emb, num_heads=heads, head_dim=joined // heads,
      mlp_dim=mlp_dim, num_encoder_layers=_layer_count(names, "encoder"),
      num_decoder_layers=_layer_count(names, "decoder"),
      mlp_activations=("gelu", "linear") if gated else ("relu",),
      logits_via_embedding="decoder/logits_dense/kernel" not in flat,
      relative_attention_num_buckets=buckets)
  fields.update(overrides)
  config = T5Config(**fields)
  if "relative_attention_max_distance" not in overrides:
    # Shapes cannot tell the distance; a published size's shapes tell its value
    # (8 for the tiny test config, 128 for the others).
    from spot.models import config as config_lib  # pylint: disable=g-import-not-at-top
    name = config_lib.match_config(config)
    if name:
      config = config.replace(relative_attention_max_distance=config_lib.get_config(
          name).relative_attention_max_distance)
  return config


def format_table(shapes: Mapping[str, Shape], dtypes: Optional[Mapping[str, str]] = None) -> str:
  """Aligned `name  [shape]  dtype` lines, sorted by name."""
  dtypes = dtypes or {}
  width = max((len(n) for n in shapes), default=0)
  lines = []
  for name in sorted(shapes):
    shape = "[" + ", ".join(str(d) for d in shapes[name]) + "]"
    lines.append(f"{name:<{width}}  {shape:<16} {dtypes.get(name, '')}".rstrip())
  return "\n".join(lines)
