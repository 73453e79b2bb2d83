"""Parameter-efficient methods beside prompts: LoRA, (IA)3, bottleneck adapters, prefix
tuning, BitFit, selective tuning, and Hugging Face PEFT adapter import/export
(`spot.peft.hf_peft`).

A method is a frozen, hashable config (`LoraConfig`, `IA3Config`,
`AdapterConfig`, `PrefixConfig`, `BitFitConfig`; all `MethodConfig`s) that
`spot.models.T5(config, peft=...)` asks for the module each projection
(`dense_adapter(target)`), each sublayer output (`block_adapter(kind)`) and
each attention (`attention_prefix(target)`, with `prefix_encoder(stack)`)
gets. Its `trainable` regexes select its parameters, so only they train and
only they are checkpointed.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from spot import errors
from spot.peft.adapters import AdapterConfig, Bottleneck
from spot.peft.base import MethodConfig
from spot.peft.ia3 import IA3, IA3Config
from spot.peft.lora import LoRA, LoraConfig, TARGETS
from spot.peft.merge import merge_peft, mergeable
from spot.peft.prefix import PrefixConfig, fold_prefix
from spot.peft.selective import SELECTIONS, Bias, BitFitConfig, selection

METHODS = {"lora": LoraConfig, "ia3": IA3Config, "adapter": AdapterConfig,
           "prefix": PrefixConfig, "bitfit": BitFitConfig}


def from_dict(d: Optional[Mapping[str, Any]]) -> Any:
  """The method config `to_dict` wrote ({"method": "lora", ...}), or None for None."""
  if d is None:
    return None
  d = dict(d)
  method = d.pop("method", None)
  if method not in METHODS:
    raise errors.ConfigError(f"PEFT method {method!r} is unknown; spot has {sorted(METHODS)}.")
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
  return METHODS[method](**fields)


__all__ = ["AdapterConfig", "Bias", "BitFitConfig", "Bottleneck", "IA3", "IA3Config", "LoRA",
           "LoraConfig", "METHODS", "MethodConfig", "PrefixConfig", "SELECTIONS", "TARGETS",
           "fold_prefix", "from_dict", "merge_peft", "mergeable", "selection"]
