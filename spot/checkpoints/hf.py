"""Hugging Face T5 / mT5 directories <-> spot parameter trees.

A `T5ForConditionalGeneration` directory holds `config.json` and the weights
as `model.safetensors`, sharded safetensors with `model.safetensors.index.json`,
or a PyTorch state dict (`pytorch_model.bin`, optionally sharded). The
mapping onto T5X names is one table (`name_map`) used in both directions:

  shared.weight [V, D]                               token_embedder/embedding
  {enc,dec}oder.block.0.layer.0.SelfAttention
      .relative_attention_bias.weight [B, H]         {stack}/relpos_bias/rel_embedding [H, B]
  encoder.block.i.layer.0.SelfAttention.{q,k,v,o}    encoder/layers_i/attention/{query,...,out}
  decoder.block.i.layer.1.EncDecAttention.*          decoder/layers_i/encoder_decoder_attention/*
  *.DenseReluDense.{wi | wi_0, wi_1, wo}             */mlp/{wi | wi_0, wi_1, wo}
  *.layer_norm / final_layer_norm                    pre_*_layer_norm / {stack}_norm
  lm_head.weight [V, D]                              decoder/logits_dense/kernel [D, V]

Linear weights are stored [out, in] by PyTorch and [in, out] by T5X, so they
are transposed. Logits: HF scales the decoder output by 1/sqrt(D) when
`tie_word_embeddings` is true (transformers 5 stores this as
`scale_decoder_outputs`); that is spot's `logits_via_embedding`. Unscaled
logits become `decoder/logits_dense`, from `lm_head.weight` or, when the
directory ties it, from `shared.weight`.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator, Mapping, Optional

import numpy as np
from etils import epath
from flax import traverse_util

from spot import errors
from spot.checkpoints import layout, tree
from spot.checkpoints.layout import PathLike
from spot.models import T5Config, scan

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
# (file, index file) pairs in the order transformers prefers them.
_WEIGHT_FILES = (("model.safetensors", "model.safetensors.index.json"),
                 ("pytorch_model.bin", "pytorch_model.bin.index.json"))
_MODEL_TYPES = ("t5", "mt5")
# HF activation name -> spot name (spot "gelu" is the tanh form, HF "gelu_new").
_ACT_FROM_HF = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact",
                "relu": "relu", "silu": "silu", "swish": "silu"}
_ACT_TO_HF = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu", "silu": "silu"}
# Tensors transformers itself ignores or ties; reading them would add nothing.
_TIED_EMBEDDINGS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
# HF T5Config defaults, used for keys a config.json leaves out (as transformers does).
_HF_DEFAULTS = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                    num_heads=8, relative_attention_num_buckets=32,
                    relative_attention_max_distance=128, dropout_rate=0.1,
                    layer_norm_epsilon=1e-6, feed_forward_proj="relu")


# --- configuration ----------------------------------------------------------


def _activations_from_hf(proj: str, source: str) -> tuple[str, ...]:
  parts = proj.split("-")
  gated = len(parts) == 2 and parts[0] == "gated"
  if len(parts) > 2 or (len(parts) == 2 and not gated):
    raise errors.DataError(f"{source}: feed_forward_proj={proj!r} is not 'ACT' or 'gated-ACT'.")
  act = "gelu_new" if proj == "gated-gelu" else parts[-1]  # transformers' special case
  if act not in _ACT_FROM_HF:
    raise errors.DataError(f"{source}: feed_forward_proj={proj!r} uses activation {act!r}; "
                     f"spot supports {sorted(_ACT_FROM_HF)}.")
  return (_ACT_FROM_HF[act], "linear") if gated else (_ACT_FROM_HF[act],)


def scales_logits(hf_config: Mapping[str, Any]) -> bool:
  """Whether HF multiplies the decoder output by 1/sqrt(d_model) before lm_head."""
  if "scale_decoder_outputs" in hf_config:  # transformers >= 5
    return bool(hf_config["scale_decoder_outputs"])
  return bool(hf_config.get("tie_word_embeddings", True))


def config_from_hf(hf_config: Mapping[str, Any], source: str = CONFIG_FILE) -> T5Config:
  """Maps a Hugging Face T5/mT5 `config.json` dict onto a `T5Config`.

  Raises:
    ValueError: another architecture (`model_type` other than t5/mt5), or an
      activation spot does not implement; the message names `source`.
  """
  model_type = hf_config.get("model_type")
  if model_type not in _MODEL_TYPES:
    raise errors.DataError(
        f"{source}: model_type={model_type!r} is not a T5 or mT5 model (expected one of "
        f"{list(_MODEL_TYPES)}); spot reads T5ForConditionalGeneration / "
        "MT5ForConditionalGeneration checkpoints.")
  c = {**_HF_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None}}
  return T5Config(
      vocab_size=int(c["vocab_size"]), emb_dim=int(c["d_model"]), num_heads=int(c["num_heads"]),
      head_dim=int(c["d_kv"]), mlp_dim=int(c["d_ff"]), num_encoder_layers=int(c["num_layers"]),
      num_decoder_layers=int(c.get("num_decoder_layers", c["num_layers"])),
      mlp_activations=_activations_from_hf(str(c["feed_forward_proj"]), source),
      logits_via_embedding=scales_logits(hf_config),
      relative_attention_num_buckets=int(c["relative_attention_num_buckets"]),
      relative_attention_max_distance=int(c["relative_attention_max_distance"]),
      dropout_rate=float(c["dropout_rate"]), layer_norm_epsilon=float(c["layer_norm_epsilon"]))


def config_to_hf(config: T5Config) -> dict[str, Any]:
  """The `config.json` dict of a T5ForConditionalGeneration equivalent to `config`."""
  acts = config.mlp_activations
  gated = len(acts) == 2 and acts[1] == "linear"
  if not (len(acts) == 1 or gated) or acts[0] not in _ACT_TO_HF or (
      gated and acts[0] == "gelu_exact"):
    raise errors.DataError(f"mlp_activations={acts} has no Hugging Face T5 equivalent; HF supports "
                     "('ACT',) and gated ('ACT', 'linear') with ACT in gelu, relu, silu "
                     "(gated exact GELU is not expressible).")
  proj = "gated-gelu" if gated and acts[0] == "gelu" else (
      ("gated-" if gated else "") + _ACT_TO_HF[acts[0]])
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
      "vocab_size": config.vocab_size, "d_model": config.emb_dim, "d_kv": config.head_dim,
      "d_ff": config.mlp_dim, "num_heads": config.num_heads,
      "num_layers": config.num_encoder_layers, "num_decoder_layers": config.num_decoder_layers,
      "feed_forward_proj": proj,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "layer_norm_epsilon": config.layer_norm_epsilon, "dropout_rate": config.dropout_rate,
      "tie_word_embeddings": config.logits_via_embedding,
      "scale_decoder_outputs": config.logits_via_embedding,
      "is_encoder_decoder": True, "decoder_start_token_id": 0, "pad_token_id": 0,
      "eos_token_id": 1, "initializer_factor": 1.0,
  }


# --- the name table -----------------------------------------------------------


def name_map(config: T5Config) -> list[tuple[str, str, bool]]:
  """(T5X name, HF name, transposed) for every parameter of `config`."""
  rows = [("token_embedder/embedding", "shared.weight", False)]
  mlp_names = (["wi"] if len(config.mlp_activations) == 1
               else [f"wi_{j}" for j in range(len(config.mlp_activations))]) + ["wo"]
  stacks = (
      ("encoder", config.num_encoder_layers,
       [("attention", 0, "SelfAttention", "pre_attention_layer_norm")], 1),
      ("decoder", config.num_decoder_layers,
       [("self_attention", 0, "SelfAttention", "pre_self_attention_layer_norm"),
        ("encoder_decoder_attention", 1, "EncDecAttention", "pre_cross_attention_layer_norm")],
       2),
  )
  for stack, depth, attentions, mlp_index in stacks:
    rows.append((f"{stack}/relpos_bias/rel_embedding",
                 f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True))
    rows.append((f"{stack}/{stack}_norm/scale", f"{stack}.final_layer_norm.weight", False))
    for i in range(depth):
      ours, theirs = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
      for attention, index, module, norm in attentions:
        for proj, short in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
          rows.append((f"{ours}/{attention}/{proj}/kernel",
                       f"{theirs}.{index}.{module}.{short}.weight", True))
        rows.append((f"{ours}/{norm}/scale", f"{theirs}.{index}.layer_norm.weight", False))
      for name in mlp_names:
        rows.append((f"{ours}/mlp/{name}/kernel",
                     f"{theirs}.{mlp_index}.DenseReluDense.{name}.weight", True))
      rows.append((f"{ours}/pre_mlp_layer_norm/scale", f"{theirs}.{mlp_index}.layer_norm.weight",
                   False))
  if not config.logits_via_embedding:
    rows.append(("decoder/logits_dense/kernel", "lm_head.weight", True))
  return rows


# --- reading weights ------------------------------------------------------------


class _Weights:
  """The tensors of an HF directory: names, shapes and per-tensor reads."""

  def __init__(self, directory: epath.Path, stack: contextlib.ExitStack):
    self.files: dict[str, epath.Path] = {}  # tensor name -> file
    self._handles: dict[epath.Path, Any] = {}
    for single, index in _WEIGHT_FILES:
      if (directory / single).exists():
        shards = [directory / single]
      elif (directory / index).exists():
        weight_map = json.loads((directory / index).read_text())["weight_map"]
        shards = sorted({directory / f for f in weight_map.values()})
      else:
        continue
      for shard in shards:
        if not shard.exists():
          raise errors.MissingInputError(f"Weight shard {shard} named in {directory / index} is "
                                  "missing; download the complete checkpoint.")
        handle = self._open(shard, stack)
        self._handles[shard] = handle
        for name in handle.keys():
          self.files[name] = shard
      return
    raise errors.MissingInputError(
        f"No weights in {directory}: expected one of "
        f"{[f for pair in _WEIGHT_FILES for f in pair]}.")

  @staticmethod
  def _open(shard: epath.Path, stack: contextlib.ExitStack) -> Any:
    if shard.name.endswith(".safetensors"):
      from safetensors import safe_open
      return stack.enter_context(safe_open(os.fspath(shard), framework="np"))
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"Reading {shard} needs PyTorch (pip install torch), or convert the "
                        "directory to safetensors.") from e
    return torch.load(os.fspath(shard), map_location="cpu", weights_only=True, mmap=True)

  def shape(self, name: str) -> tuple[int, ...]:
    handle = self._handles[self.files[name]]
    if isinstance(handle, dict):
      return tuple(handle[name].shape)
    return tuple(handle.get_slice(name).get_shape())

  def read(self, name: str, dtype: Any) -> np.ndarray:
    shard = self.files[name]
    handle = self._handles[shard]
    if isinstance(handle, dict):  # a torch state dict
      return handle[name].float().numpy().astype(dtype)
    if handle.get_slice(name).get_dtype() == "BF16":  # numpy has no bfloat16
      from safetensors import safe_open
      with safe_open(os.fspath(shard), framework="flax") as f:
        return np.asarray(f.get_tensor(name), dtype=dtype)
    return np.asarray(handle.get_tensor(name), dtype=dtype)


@contextlib.contextmanager
def _open_weights(directory: epath.Path) -> Iterator[_Weights]:
  with contextlib.ExitStack() as stack:
    yield _Weights(directory, stack)


def tensor_shapes(path: PathLike) -> dict[str, tuple[int, ...]]:
  """{HF tensor name: shape} of a directory's weights, from headers only."""
  with _open_weights(layout.resolve(path)) as weights:
    return {name: weights.shape(name) for name in weights.files}


def _first_present(weights: _Weights, names: tuple[str, ...]) -> Optional[str]:
  return next((n for n in names if n in weights.files), None)


def _resolve_sources(config: T5Config, weights: _Weights, directory: epath.Path
                     ) -> list[tuple[str, str, bool]]:
  """The name table with tied tensors resolved; raises on missing/mis-shaped ones."""
  expected = tree.expected_shapes(config)
  problems, rows, used = [], [], set(_IGNORED)
  embedding = _first_present(weights, ("shared.weight",) + _TIED_EMBEDDINGS)
  for ours, theirs, transposed in name_map(config):
    if ours == "token_embedder/embedding" and embedding:
      theirs = embedding
    elif ours == "decoder/logits_dense/kernel" and theirs not in weights.files and embedding:
      theirs = embedding  # lm_head tied to the input embedding, logits unscaled
    want = expected[ours][::-1] if transposed else expected[ours]
    if theirs not in weights.files:
      problems.append(f"missing tensor {theirs} (for {ours}): expected shape {list(want)}")
      continue
    used.add(theirs)
    found = weights.shape(theirs)
    if found != tuple(want):
      problems.append(f"tensor {theirs} in {weights.files[theirs].name} (for {ours}): "
                      f"expected shape {list(want)}, found {list(found)}")
    rows.append((ours, theirs, transposed))
  used.update(n for n in _TIED_EMBEDDINGS if n in weights.files)
  if config.logits_via_embedding and "lm_head.weight" in weights.files:
    used.add("lm_head.weight")  # checked against the embedding in load_hf
  problems += [f"unexpected tensor {n} in {weights.files[n].name} with shape "
               f"{list(weights.shape(n))}" for n in sorted(set(weights.files) - used)]
  if problems:
    raise errors.DataError(f"{directory} does not hold the T5 described by its {CONFIG_FILE} "
                     f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
  return rows


def load_hf(path: PathLike, *, dtype: Any = np.float32) -> tuple[T5Config, dict[str, Any]]:
  """Reads a Hugging Face T5/mT5 directory as `(T5Config, params)` under T5X names.

  Args:
    path: directory with `config.json` and `model.safetensors`, sharded
      safetensors (`model.safetensors.index.json`) or `pytorch_model.bin`
      (needs torch).
    dtype: dtype of the returned arrays (T5X keeps parameters in float32).

  Raises:
    FileNotFoundError: no directory, no config.json or no weights file.
    ValueError: a config of another architecture, or any missing, unexpected
      or mis-shaped tensor (named with its file and the expected shape).
      Nothing is skipped or initialised at random.
  """
  directory = layout.resolve(path)
  config_file = directory / CONFIG_FILE
  if not config_file.exists():
    raise errors.MissingInputError(f"{config_file} does not exist; load_hf needs a Hugging Face "
                            "model directory (config.json + model.safetensors).")
  try:
    hf_config = json.loads(config_file.read_text())
  except json.JSONDecodeError as e:
    raise errors.DataError(f"{config_file} is not valid JSON: {e}") from e
  config = config_from_hf(hf_config, str(config_file))
  with _open_weights(directory) as weights:
    rows = _resolve_sources(config, weights, directory)
    flat = {}
    for ours, theirs, transposed in rows:
      array = weights.read(theirs, dtype)
      flat[ours] = np.ascontiguousarray(array.T) if transposed else array
    if config.logits_via_embedding and "lm_head.weight" in weights.files:
      if not np.array_equal(weights.read("lm_head.weight", dtype),
                            flat["token_embedder/embedding"]):
        raise errors.DataError(
            f"{config_file} ties the output layer to the embedding (tie_word_embeddings / "
            "scale_decoder_outputs true) but lm_head.weight differs from shared.weight; set "
            "tie_word_embeddings to false if this model was trained with untied logits.")
  return config, tree.unflatten(flat)


def save_hf(path: PathLike, config: T5Config, params: Mapping[str, Any]) -> epath.Path:
  """Writes `config.json` + `model.safetensors` that transformers loads as T5.

  Arrays are written as float32. The directory is written under a temporary
  name and renamed when complete.

  Raises:
    FileExistsError: `path` exists.
    ValueError: shapes that do not match `config`, prompt parameters (a HF
      T5 has no place for them; export the prompt separately), or activations
      HF cannot express.
  """
  from safetensors.numpy import save_file

  if config.scan_layers:  # Hugging Face T5 keeps one block per layer
    params = scan.unscan_layers(params, config.param_scan_axis)
    config = config.replace(scan_layers=False)
  tree.check_shapes(params, config)
  flat = tree.flatten(params)
  extras = sorted(n for n in flat if tree.is_extra_param(n))
  if extras:
    raise errors.DataError(f"params hold prompt parameters {extras} that a Hugging Face T5 cannot "
                     "store; save the prompt on its own and pass only the base parameters.")
  hf_config = config_to_hf(config)
  tensors = {}
  for ours, theirs, transposed in name_map(config):
    array = np.asarray(flat[ours], dtype=np.float32)
    tensors[theirs] = np.ascontiguousarray(array.T if transposed else array)
  with layout.atomic_directory(path) as tmp:
    (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, os.fspath(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
  return layout.resolve(path)


# --- Hugging Face PEFT adapters merged into the base (spot checkpoint convert --peft) ----

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


def merge_peft_adapter(adapter_dir: PathLike, config: T5Config,
                       params: Mapping[str, Any]) -> dict[str, Any]:
  """`params` (T5X names, from `load_hf`) with a PEFT LoRA or (IA)3 adapter folded in.

  LoRA: W += (lora_alpha / r) * B A (alpha / sqrt(r) with use_rslora); (IA)3:
  W scaled by `ia3_l` on its output, or its input for a feed-forward module.
  The result is a plain T5X tree that `save_t5x` writes and `load_t5x` reads.

  Raises:
    MissingInputError: the directory lacks adapter_config.json or the weights.
    ConfigError: another PEFT method, or settings spot does not merge.
    CheckpointError: a tensor is missing, extra or of the wrong shape (an
      adapter of another base model or architecture).
  """
  cfg, weights, weights_file = _read_peft_adapter(adapter_dir)
  flat = dict(traverse_util.flatten_dict(dict(params), sep="/"))
  targets = set(cfg.get("target_modules") or ())
  for ours, theirs, _ in name_map(config):
    module = theirs[:-len(".weight")]
    if ours.endswith("/kernel") and module.rsplit(".", 1)[-1] in targets:
      flat[ours] = _fold_peft(cfg, weights, _PEFT_PREFIX + module, flat[ours], weights_file)
  if weights:
    raise errors.CheckpointError(f"{weights_file} holds tensors this T5 has no place for, e.g. "
                                 f"{sorted(weights)[:2]}: an adapter of another architecture.")
  return traverse_util.unflatten_dict(flat, sep="/")


def _read_peft_adapter(adapter_dir: PathLike) -> tuple[dict, dict[str, np.ndarray], epath.Path]:
  """(adapter_config, tensors, weights file) of a LoRA / (IA)3 directory spot can merge."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  directory = epath.Path(adapter_dir)
  cfg_file, weights_file = directory / PEFT_CONFIG_FILE, directory / PEFT_WEIGHTS_FILE
  for f in (cfg_file, weights_file):
    if not f.exists():
      raise errors.MissingInputError(f"{f} does not exist; --peft needs a PEFT adapter "
                                     f"directory ({PEFT_CONFIG_FILE} + {PEFT_WEIGHTS_FILE}).")
  cfg = json.loads(cfg_file.read_text())
  kind = cfg.get("peft_type")
  if kind not in ("LORA", "IA3"):
    raise errors.ConfigError(f"{cfg_file}: peft_type {kind!r} cannot be merged into a T5X "
                             "checkpoint; --peft merges LORA and IA3 adapters.")
  if (cfg.get("layers_to_transform") or cfg.get("rank_pattern") or cfg.get("alpha_pattern")
      or cfg.get("use_dora") or cfg.get("bias", "none") != "none"):
    raise errors.ConfigError(f"{cfg_file}: per-layer patterns, DoRA and LoRA biases are not "
                             "merged; --peft merges plain LORA and IA3 adapters.")
  weights = {k: np.asarray(v, np.float32) for k, v in load_file(str(weights_file)).items()}
  return cfg, weights, weights_file


def _fold_peft(cfg: Mapping[str, Any], weights: dict, key: str, kernel: np.ndarray,
               file: Any) -> np.ndarray:
  """`kernel` [in, out] of HF module `key` with its LoRA / (IA)3 tensors (popped) folded in."""
  kernel = np.asarray(kernel, np.float32)
  if cfg["peft_type"] == "LORA":
    a = _adapter_tensor(weights, f"{key}.lora_A.weight", None, file)  # [r, in]
    b = _adapter_tensor(weights, f"{key}.lora_B.weight", None, file)  # [out, r]
    if a.shape[1] != kernel.shape[0] or b.shape[0] != kernel.shape[1]:
      raise errors.CheckpointError(
          f"{file}: {key} LoRA is [{b.shape[0]}, {a.shape[1]}], expected "
          f"[{kernel.shape[1]}, {kernel.shape[0]}]: an adapter of another model size.")
    r = a.shape[0]
    scale = float(cfg["lora_alpha"]) / (np.sqrt(r) if cfg.get("use_rslora") else r)
    return (kernel + np.float32(scale) * (a.T @ b.T)).astype(np.float32)
  if key.rsplit(".", 1)[-1] in set(cfg.get("feedforward_modules") or ()):
    l = _adapter_tensor(weights, f"{key}.ia3_l", (1, kernel.shape[0]), file)
    return kernel * l[0][:, None]
  l = _adapter_tensor(weights, f"{key}.ia3_l", (kernel.shape[1], 1), file)
  return kernel * l[:, 0][None, :]


def _adapter_tensor(weights: dict, key: str, shape: Optional[tuple[int, ...]],
                    file: Any) -> np.ndarray:
  if key not in weights:
    raise errors.CheckpointError(f"{file} lacks {key}: the adapter was saved for another base "
                                 "model or architecture than this T5.")
  value = weights.pop(key)
  if shape is not None and value.shape != shape:
    raise errors.CheckpointError(f"{file}: {key} has shape {list(value.shape)}, expected "
                                 f"{list(shape)}: an adapter of another model size.")
  return value
