"""The defaults every PEFT method config shares (`MethodConfig`).

A method config tells `spot.models.T5` which module each place of the model
gets; a method overrides only the hooks it uses:

- `dense_adapter(target)`: a module on projection `target` (q, k, v, o, wi,
  wi_0, wi_1, wo), or None;
- `block_adapter(kind)`: a module on a sublayer's output ("attention",
  "mlp"), or None;
- `attention_prefix(target)`: key/value prefixes of one attention
  ("encoder_self", "decoder_self", "encoder_decoder"), or None;
- `prefix_encoder(stack)`: a stack-level module ("encoder", "decoder")
  whose output every layer's `attention_prefix` reads, or None.

`trainable` names the method's parameters as full-match regexes over
'/'-joined paths: by default every parameter under a `{PARAM}` submodule.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn


class MethodConfig:
  """Base of the frozen method dataclasses: no module anywhere, `.*/{PARAM}/.*` trains.

  Subclasses set the class attributes `method` (the name in `spot.peft.METHODS`,
  run.json and checkpoints) and `PARAM` (the submodule name of their parameters).
  """

  method = ""
  PARAM = ""

  def dense_adapter(self, target: str) -> Optional[Callable[[tuple[str, str]], nn.Module]]:
    del target
    return None

  def block_adapter(self, kind: str) -> Optional[Callable[..., nn.Module]]:
    del kind
    return None

  def attention_prefix(self, target: str) -> Optional[Callable[..., nn.Module]]:
    del target
    return None

  def prefix_encoder(self, stack: str) -> Optional[Callable[..., nn.Module]]:
    del stack
    return None

  @property
  def trainable(self) -> tuple[str, ...]:
    """Full-match regexes of this method's parameters ('/'-joined paths)."""
    return (rf".*/{self.PARAM}/.*",)

  def to_dict(self) -> dict[str, Any]:
    raise NotImplementedError(f"{type(self).__name__} must define to_dict.")
