"""Which parameters train: prompt only (default), the whole model, or any regex.

Parameters are split into two explicit PyTrees, `trainable` and `frozen`, by a
full-match regex over '/'-joined paths (prompt-tuning's PROMPT_REGEX
convention). Gradients and optimizer state exist only for `trainable`; the
frozen tree is passed to the loss as a constant, so it gets no gradient
buffers and is never written to a run's checkpoints.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence, Union

from flax import traverse_util

PyTree = Any

PROMPT_REGEX = (r".*/prompt/.*", r"^prompt/.*")
ALL_REGEX = (r".*",)


def _patterns(regex: Union[str, Sequence[str]]) -> list[re.Pattern]:
  if isinstance(regex, str):
    regex = [regex]
  try:
    return [re.compile(r) for r in regex]
  except re.error as e:
    raise ValueError(f"Bad trainable-parameter regex {regex!r}: {e}.") from e


def _named(name: str) -> tuple[str, ...]:
  """The regexes of one named selection, or `(name,)` for a regex."""
  from spot import peft  # pylint: disable=g-import-not-at-top
  if name == "prompt":
    return PROMPT_REGEX
  if name in ("all", "model"):
    return ALL_REGEX
  if name in peft.METHODS:
    return peft.METHODS[name]().trainable
  if name in peft.SELECTIONS:
    return peft.SELECTIONS[name]
  return (name,)


def resolve(selection: Union[str, Sequence[str]]) -> tuple[str, ...]:
  """Maps names and regexes to a tuple of full-match regexes.

  Names: "prompt", "all" (or "model"), a PEFT method ("lora", "ia3",
  "adapter", "bitfit": its parameters) or a selective-tuning set
  ("layernorm", "layernorm_attention", "layernorm_mlp", "attention", "mlp",
  "embeddings"); anything else is a regex. A list may mix them, e.g.
  `["prompt", "lora"]` trains a prompt and LoRA together.
  """
  if isinstance(selection, str):
    return _named(selection)
  return tuple(r for item in selection for r in _named(item))


def split(params: Mapping[str, Any], selection: Union[str, Sequence[str]] = "prompt"
          ) -> tuple[dict, dict]:
  """Splits a nested parameter dict into (trainable, frozen) nested dicts."""
  pats = _patterns(resolve(selection))
  flat = traverse_util.flatten_dict(dict(params), sep="/")
  trainable = {k: v for k, v in flat.items() if any(p.fullmatch(k) for p in pats)}
  if not trainable:
    raise ValueError(
        f"No parameter matches the trainable selection {selection!r}. Parameter paths look "
        f"like {sorted(flat)[:3]}; a prompt run needs a model built with a prompt "
        "(PROMPT / prompt_factory).")
  frozen = {k: v for k, v in flat.items() if k not in trainable}
  return (traverse_util.unflatten_dict(trainable, sep="/"),
          traverse_util.unflatten_dict(frozen, sep="/") if frozen else {})


def merge(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict:
  """Inverse of `split`: one nested parameter dict."""
  flat = traverse_util.flatten_dict(dict(frozen), sep="/")
  for k, v in traverse_util.flatten_dict(dict(trainable), sep="/").items():
    if k in flat:
      raise ValueError(f"Parameter {k} is both trainable and frozen.")
    flat[k] = v
  return traverse_util.unflatten_dict(flat, sep="/")


def paths(tree: Mapping[str, Any]) -> list[str]:
  return sorted(traverse_util.flatten_dict(dict(tree), sep="/"))


def count(tree: Mapping[str, Any]) -> int:
  return int(sum(getattr(v, "size", 0) for v in
                 traverse_util.flatten_dict(dict(tree), sep="/").values()))


def matching(names: Iterable[str], selection: Union[str, Sequence[str]]) -> list[str]:
  pats = _patterns(resolve(selection))
  return [n for n in names if any(p.fullmatch(n) for p in pats)]
