"""T5 1.0 / T5 1.1 / mT5 configurations and the published size table.

A `T5Config` is a frozen dataclass of plain values so it can be hashed, put in
gin, compared and written next to a checkpoint. Sizes follow the public T5X /
flaxformer gin files (see REFERENCE.md, section 1.4).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from spot import errors

T5_1_1_VOCAB = 32128
MT5_VOCAB = 250112

_DTYPES = ("float32", "bfloat16", "float16")
_REMAT = ("none", "full", "minimal")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of an encoder-decoder T5.

  Attributes:
    vocab_size: rows of `token_embedder/embedding` (32128 T5, 250112 mT5).
    emb_dim: model width D.
    num_heads: attention heads H.
    head_dim: per-head width K; attention kernels are stored [D, H*K].
    mlp_dim: feed-forward width F.
    num_encoder_layers / num_decoder_layers: stack depths.
    mlp_activations: ("gelu", "linear") is T5 1.1's gated GELU (`wi_0`,
      `wi_1`); ("relu",) is T5 1.0 (a single `wi`).
    logits_via_embedding: T5 1.0 ties the output layer to the input embedding
      and rescales by 1/sqrt(D); T5 1.1 / mT5 use `decoder/logits_dense`.
    relative_attention_num_buckets / relative_attention_max_distance: the
      relative position buckets, one table per stack shared by its layers.
    dropout_rate: dropout after embeddings, attention, MLP and each block.
    dtype: activation dtype; parameters stay float32, logits are float32.
    float32_attention_logits: compute attention softmax in float32.
    remat_policy: "none", "full" (recompute each layer in the backward pass),
      or "minimal" (save matmul outputs, recompute the rest).
    layer_norm_epsilon: RMSNorm epsilon.
    scan_layers: run each stack as one `nn.scan` over a single layer whose
      parameters are stacked (`encoder/layers/...`, logical axis "layers"):
      compile time and program size stop growing with depth (XL/XXL). The
      checkpoint readers convert `layers_i` trees to this layout and back
      (`spot.models.scan`), so T5X checkpoints load either way.
    param_scan_axis: the axis of the stacked parameters that indexes layers.
      0 (the default) is the axis `lax.scan` slices; 1 is T5X scalable_t5's
      layout, but the scan must then transpose every stacked weight each step
      (a full temporary copy of the layer weights, measured in
      tools/bench_train.py --scan_compile).
  """

  vocab_size: int = T5_1_1_VOCAB
  emb_dim: int = 768
  num_heads: int = 12
  head_dim: int = 64
  mlp_dim: int = 2048
  num_encoder_layers: int = 12
  num_decoder_layers: int = 12
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  logits_via_embedding: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  dtype: str = "float32"
  float32_attention_logits: bool = False
  remat_policy: str = "none"
  layer_norm_epsilon: float = 1e-6
  scan_layers: bool = False
  param_scan_axis: int = 0

  def __post_init__(self):
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
    if self.dtype not in _DTYPES:
      raise ValueError(f"T5Config.dtype={self.dtype!r}; expected one of {_DTYPES}.")
    if self.remat_policy not in _REMAT:
      raise ValueError(
          f"T5Config.remat_policy={self.remat_policy!r}; expected one of {_REMAT}.")
    for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                 "num_encoder_layers", "num_decoder_layers"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)}.")
    if self.param_scan_axis not in (0, 1):
      raise ValueError(f"T5Config.param_scan_axis={self.param_scan_axis}; expected 0 or 1 "
                       "(every layer parameter has at least one axis).")
    if not self.mlp_activations:
      raise ValueError("T5Config.mlp_activations must name at least one activation.")

  def replace(self, **changes: Any) -> "T5Config":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["mlp_activations"] = list(self.mlp_activations)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "T5Config":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"Unknown T5Config fields {sorted(unknown)}; known: {sorted(known)}.")
    return cls(**d)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
  """`field=value` strings ("num_encoder_layers=2", "scan_layers=true") as typed T5Config
  changes for `get_config(name, **changes)`: each value takes its field's type.

  Raises:
    UsageError: an item without '=', an unknown field, or a value of the wrong type.
  """
  fields = {f.name: f.default for f in dataclasses.fields(T5Config)}
  out: dict[str, Any] = {}
  for item in items:
    name, sep, text = str(item).partition("=")
    if not sep or name not in fields:
      raise errors.UsageError(f"T5Config override {item!r} is not field=value of a known field "
                              f"({', '.join(sorted(fields))}), e.g. num_encoder_layers=2.")
    out[name] = _typed(name, fields[name], text)
  return out


def _typed(name: str, default: Any, text: str) -> Any:
  """`text` as the type of the field's default ("true" -> True, "gelu,linear" -> tuple)."""
  try:
    if isinstance(default, bool):
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
      return text.lower() in ("true", "1")
    if isinstance(default, tuple):
      return tuple(t.strip() for t in text.split(",") if t.strip())
    return type(default)(text)
  except ValueError:
    raise errors.UsageError(f"T5Config override {name}={text!r}: expected a "
                            f"{type(default).__name__} like {default!r}.") from None


# (layers, heads, head_dim, emb_dim, mlp_dim) from the T5X size gins.
_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "small": (8, 6, 64, 512, 1024),
    "base": (12, 12, 64, 768, 2048),
    "large": (24, 16, 64, 1024, 2816),
    "xl": (24, 32, 64, 2048, 5120),
    "xxl": (24, 64, 64, 4096, 10240),
}

# T5 1.0 sizes (ReLU, tied embeddings): (layers, heads, head_dim, emb_dim, mlp_dim).
_T5_1_0_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "small": (6, 8, 64, 512, 2048),
    "base": (12, 12, 64, 768, 3072),
    "large": (24, 16, 64, 1024, 4096),
    "3b": (24, 32, 128, 1024, 16384),
    "11b": (24, 128, 128, 1024, 65536),
}


def _tiny(vocab: int, **kw) -> T5Config:
  # The prompt-tuning test config (configs/test/t5_1_1_tiny.gin): the shape of
  # ../shared/data/t5x_tiny_checkpoint.
  return T5Config(vocab_size=vocab, emb_dim=4, num_heads=2, head_dim=2, mlp_dim=8,
                  num_encoder_layers=2, num_decoder_layers=2,
                  relative_attention_num_buckets=4, relative_attention_max_distance=8,
                  **kw)


def get_config(name: str | None = None, *, family: str | None = None, size: str | None = None,
               **overrides: Any) -> T5Config:
  """Returns a named config such as "t5_1_1_base", "mt5_xl" or "t5_1_0_small".

  The name may also be given in parts (`family="mt5", size="xl"`), which is how
  the gin files compose a model file with a size file.

  Families: t5_1_1 (vocab 32128), mt5 (vocab 250112), t5_1_0 (ReLU, tied).
  Sizes: tiny, small, base, large, xl, xxl (t5_1_0: small, base, large, 3b, 11b).
  Keyword overrides replace fields, e.g. `get_config("t5_1_1_xl", dtype="bfloat16")`.
  """
  if name is None:
    if not (family and size):
      raise ValueError("get_config needs a name such as 't5_1_1_base' or family= and size=.")
    name = f"{family}_{size}"
  overrides = {k: v for k, v in overrides.items() if v is not None}
  family, _, size = name.rpartition("_")
  if family in ("t5_1_1", "mt5"):
    vocab = T5_1_1_VOCAB if family == "t5_1_1" else MT5_VOCAB
    if size == "tiny":
      return _tiny(vocab).replace(**overrides)
    if size in _SIZES:
      l, h, k, d, f = _SIZES[size]
      return T5Config(vocab_size=vocab, emb_dim=d, num_heads=h, head_dim=k, mlp_dim=f,
                      num_encoder_layers=l, num_decoder_layers=l).replace(**overrides)
  elif family == "t5_1_0":
    if size == "tiny":
      return _tiny(T5_1_1_VOCAB, mlp_activations=("relu",),
                   logits_via_embedding=True).replace(**overrides)
    if size in _T5_1_0_SIZES:
      l, h, k, d, f = _T5_1_0_SIZES[size]
      return T5Config(vocab_size=T5_1_1_VOCAB, emb_dim=d, num_heads=h, head_dim=k,
                      mlp_dim=f, num_encoder_layers=l, num_decoder_layers=l,
                      mlp_activations=("relu",), logits_via_embedding=True
                      ).replace(**overrides)
  sizes = sorted({n.rpartition("_")[2] for n in config_names() if n.startswith(family + "_")})
  if sizes:
    raise errors.UsageError(f"MODEL_SIZE={size!r} is not a size of {family}; choose one of "
                            f"{', '.join(sizes)}, e.g. --gin.MODEL_SIZE=\"'{sizes[0]}'\".")
  raise errors.UsageError(f"Unknown model config {name!r} (MODEL_FAMILY / MODEL_SIZE); known: "
                          f"{', '.join(sorted(config_names()))}.")


def config_names() -> list[str]:
  names = [f"{fam}_{s}" for fam in ("t5_1_1", "mt5") for s in ("tiny", *_SIZES)]
  names += [f"t5_1_0_{s}" for s in ("tiny", *_T5_1_0_SIZES)]
  return names


# The fields parameter shapes fix (spot.checkpoints.infer_config reads them);
# the others (relative_attention_max_distance, dropout, dtype, ...) leave no
# trace in a checkpoint's shapes.
SHAPE_FIELDS = ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                "num_encoder_layers", "num_decoder_layers", "mlp_activations",
                "logits_via_embedding", "relative_attention_num_buckets")


def shape_fields(config: T5Config) -> dict[str, Any]:
  """The `SHAPE_FIELDS` of `config`: what two configs must share to load the same weights."""
  return {f: getattr(config, f) for f in SHAPE_FIELDS}


def match_config(config: T5Config) -> str | None:
  """The published config ("t5_1_1_tiny", "mt5_base", ...) with `config`'s shapes, or None.

  Shapes cannot tell `relative_attention_max_distance`; a checkpoint of a
  published size takes that size's value (e.g. 8 for the tiny test config,
  128 otherwise) from `get_config(match_config(inferred))`.
  """
  fields = shape_fields(config)
  for name in config_names():
    if shape_fields(get_config(name)) == fields:
      return name
  return None


def family_and_size(config: T5Config) -> tuple[str, str]:
  """(family, size) of the published config with `config`'s shapes, else (family, "custom")."""
  name = match_config(config)
  if name:
    family, _, size = name.rpartition("_")
    return family, size
  if config.logits_via_embedding or tuple(config.mlp_activations) == ("relu",):
    return "t5_1_0", "custom"
  return ("mt5" if config.vocab_size == MT5_VOCAB else "t5_1_1"), "custom"


def size_name(config: T5Config) -> str:
  """The published size whose shapes `config` has ("base", "xl", ...), else "custom"."""
  for name in config_names():
    family, _, size = name.rpartition("_")
    ref = get_config(name)
    if (ref.emb_dim, ref.num_heads, ref.head_dim, ref.mlp_dim, ref.num_encoder_layers,
        ref.mlp_activations) == (config.emb_dim, config.num_heads, config.head_dim,
                                 config.mlp_dim, config.num_encoder_layers,
                                 config.mlp_activations):
      return size
  return "custom"
