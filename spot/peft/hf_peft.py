"""Hugging Face PEFT adapter directories for T5: LoRA, (IA)3 and prompt tuning, both ways.

A PEFT directory holds `adapter_config.json` and `adapter_model.safetensors`
with keys such as `base_model.model.encoder.block.0.layer.0.SelfAttention.q.
lora_A.weight` [r, in] (spot's `.../attention/query/lora/a` [in, r]
transposed), `...lora_B.weight` [out, r], `...k.ia3_l` [out, 1] (or [1, in]
for a feed-forward module) and `prompt_embeddings` [N, D] (spot's
`encoder/prompt/prompt/prompt`). Projection names come from
`spot.checkpoints.hf.name_map`, so the layout is the one `load_hf` reads.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional

import numpy as np
from etils import epath

from spot import errors
from spot.models.config import T5Config
from spot.peft.ia3 import IA3Config
from spot.peft.lora import LoraConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
PROMPT_PATH = "encoder/prompt/prompt/prompt"
SUPPORTED = ("LORA", "IA3", "PROMPT_TUNING")


def _modules(config: T5Config) -> dict[str, str]:
  """T5X Dense module path (`encoder/layers_0/attention/query`) -> HF module (`encoder.block.0.layer.0.SelfAttention.q`)."""
  from spot.checkpoints.hf import name_map  # pylint: disable=g-import-not-at-top
  return {ours[:-len("/kernel")]: theirs[:-len(".weight")]
          for ours, theirs, _ in name_map(config)
          if ours.endswith("/kernel") and "/layers_" in ours}


def _target(module: str) -> str:
  return module.rsplit(".", 1)[-1]


def read_config(path: Any) -> dict:
  """adapter_config.json of a PEFT directory, after checking its method is one spot reads."""
  file = epath.Path(path) / CONFIG_FILE
  if not file.exists():
    raise errors.MissingInputError(f"{file} does not exist; --peft needs a PEFT adapter "
                                   f"directory ({CONFIG_FILE} + {WEIGHTS_FILE}).")
  cfg = json.loads(file.read_text())
  kind = cfg.get("peft_type")
  if kind not in SUPPORTED:
    raise errors.ConfigError(f"{file}: peft_type {kind!r} is not supported; spot reads "
                             f"{list(SUPPORTED)} adapters of T5.")
  return cfg


def spec_from_config(cfg: Mapping[str, Any], source: str = CONFIG_FILE) -> Any:
  """The spot method config of a PEFT adapter_config (None for prompt tuning)."""
  kind = cfg["peft_type"]
  if kind == "PROMPT_TUNING":
    if int(cfg.get("num_transformer_submodules") or 1) != 1:
      raise errors.ConfigError(f"{source}: num_transformer_submodules="
                               f"{cfg['num_transformer_submodules']}; spot prompts only the "
                               "encoder (Lester et al.), so it reads adapters saved with 1.")
    return None
  targets = cfg.get("target_modules")
  if isinstance(targets, str) or not targets:
    raise errors.ConfigError(f"{source}: target_modules={targets!r}; spot reads a list of T5 "
                             "projection names (q, k, v, o, wi, wi_0, wi_1, wo).")
  if cfg.get("layers_to_transform") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
    raise errors.ConfigError(f"{source}: per-layer settings (layers_to_transform, rank_pattern, "
                             "alpha_pattern) are not supported; spot applies one rank to all "
                             "layers.")
  if kind == "LORA":
    if cfg.get("bias", "none") != "none" or cfg.get("use_dora"):
      raise errors.ConfigError(f"{source}: bias={cfg.get('bias')!r}, use_dora="
                               f"{cfg.get('use_dora')}; spot reads plain LoRA (bias 'none').")
    return LoraConfig(rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]),
                      dropout=float(cfg.get("lora_dropout") or 0.0), targets=tuple(targets),
                      use_rslora=bool(cfg.get("use_rslora", False)))
  ff = cfg.get("feedforward_modules") or []
  return IA3Config(targets=tuple(targets), feedforward=tuple(ff))


def _load_weights(path: Any) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  file = epath.Path(path) / WEIGHTS_FILE
  if not file.exists():
    raise errors.MissingInputError(f"{file} does not exist; spot reads PEFT adapters saved "
                                   "with safe_serialization (the default).")
  return {k: np.asarray(v, np.float32) for k, v in load_file(str(file)).items()}


def _take(weights: dict, key: str, shape: tuple[int, ...], file: Any) -> np.ndarray:
  if key not in weights:
    raise errors.CheckpointError(f"{file} lacks {key}: the adapter was saved for another base "
                                 "model or architecture than the T5 it is loaded on.")
  value = weights.pop(key)
  if value.shape != shape:
    raise errors.CheckpointError(f"{file}: {key} has shape {list(value.shape)}, expected "
                                 f"{list(shape)} for this base model; the adapter belongs to "
                                 "another model size.")
  return value


def load_adapter(path: Any, config: T5Config) -> tuple[Any, dict[str, np.ndarray]]:
  """Reads a PEFT adapter directory for `config`: (method config or None, flat params).

  The params are '/'-joined T5X paths (`.../attention/query/lora/a`) of the
  method only, ready to merge with the base tree.

  Raises:
    MissingInputError / ConfigError: no adapter there, or a method or
      setting spot does not read.
    CheckpointError: a tensor is missing, extra or of the wrong shape (an
      adapter for another base model or architecture).
  """
  cfg = read_config(path)
  file = epath.Path(path) / WEIGHTS_FILE
  spec = spec_from_config(cfg, str(epath.Path(path) / CONFIG_FILE))
  weights = _load_weights(path)
  out: dict[str, np.ndarray] = {}
  if spec is None:
    n = int(cfg["num_virtual_tokens"])
    out[PROMPT_PATH] = _take(weights, "prompt_embeddings", (n, config.emb_dim), file)
  else:
    for ours, theirs in _modules(config).items():
      target = _target(theirs)
      if target not in spec.targets:
        continue
      d_in, d_out = _kernel_shape(config, ours)
      key = PREFIX + theirs
      if spec.method == "lora":
        out[f"{ours}/lora/a"] = _take(weights, f"{key}.lora_A.weight", (spec.rank, d_in), file).T
        out[f"{ours}/lora/b"] = _take(weights, f"{key}.lora_B.weight", (d_out, spec.rank),
                                      file).T
      elif target in spec.feedforward:
        out[f"{ours}/ia3/scale"] = _take(weights, f"{key}.ia3_l", (1, d_in), file)[0]
      else:
        out[f"{ours}/ia3/scale"] = _take(weights, f"{key}.ia3_l", (d_out, 1), file)[:, 0]
  if weights:
    raise errors.CheckpointError(f"{file} holds tensors this T5 has no place for, e.g. "
                                 f"{sorted(weights)[:2]}: an adapter of another architecture.")
  return spec, {k: np.ascontiguousarray(v) for k, v in out.items()}


def _kernel_shape(config: T5Config, module: str) -> tuple[int, int]:
  joined = config.num_heads * config.head_dim
  name = module.rsplit("/", 1)[-1]
  if name in ("query", "key", "value"):
    return config.emb_dim, joined
  if name == "out":
    return joined, config.emb_dim
  if name == "wo":
    return config.mlp_dim, config.emb_dim
  return config.emb_dim, config.mlp_dim


def config_for(spec: Any, config: T5Config, *, prompt_length: Optional[int] = None,
               base_model_name_or_path: Optional[str] = None) -> dict:
  """The adapter_config.json PEFT writes for `spec` (None: prompt tuning) on T5."""
  common = dict(base_model_name_or_path=base_model_name_or_path, revision=None,
                task_type="SEQ_2_SEQ_LM", inference_mode=True, auto_mapping=None)
  if spec is None:
    return dict(common, peft_type="PROMPT_TUNING", num_virtual_tokens=int(prompt_length),
                token_dim=config.emb_dim, num_transformer_submodules=1,
                num_attention_heads=config.num_heads, num_layers=config.num_encoder_layers,
                prompt_tuning_init="RANDOM", prompt_tuning_init_text=None,
                tokenizer_name_or_path=None, tokenizer_kwargs=None, modules_to_save=None)
  if spec.method == "lora":
    return dict(common, peft_type="LORA", r=int(spec.rank), lora_alpha=float(spec.alpha),
                lora_dropout=float(spec.dropout), target_modules=sorted(spec.targets),
                use_rslora=bool(spec.use_rslora), bias="none", fan_in_fan_out=False,
                init_lora_weights=True, modules_to_save=None, layers_to_transform=None,
                layers_pattern=None, rank_pattern={}, alpha_pattern={})
  if spec.method == "ia3":
    return dict(common, peft_type="IA3", target_modules=sorted(spec.targets),
                feedforward_modules=sorted(spec.feedforward), fan_in_fan_out=False,
                init_ia3_weights=True, modules_to_save=None)
  raise errors.ConfigError(f"PEFT method {spec.method!r} has no Hugging Face PEFT format; "
                           "spot writes lora, ia3 and prompt-tuning adapters.")


def save_adapter(path: Any, config: T5Config, spec: Any, params: Mapping[str, Any], *,
                 base_model_name_or_path: Optional[str] = None) -> epath.Path:
  """Writes the method's (or, spec None, the prompt's) parameters as a PEFT directory.

  `params` may be the full nested tree or flat '/'-joined paths; only the
  method's (or the prompt's) parameters are written.
  """
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  flat = dict(params) if all(isinstance(k, str) and "/" in k for k in params) else \
      traverse_util.flatten_dict(dict(params), sep="/")
  tensors: dict[str, np.ndarray] = {}
  if spec is None:
    prompt = np.asarray(flat[PROMPT_PATH], np.float32)
    tensors["prompt_embeddings"] = prompt
    cfg = config_for(None, config, prompt_length=prompt.shape[0],
                     base_model_name_or_path=base_model_name_or_path)
  else:
    cfg = config_for(spec, config, base_model_name_or_path=base_model_name_or_path)
    for ours, theirs in _modules(config).items():
      target, key = _target(theirs), PREFIX + theirs
      if target not in spec.targets:
        continue
      if spec.method == "lora":
        tensors[f"{key}.lora_A.weight"] = np.asarray(flat[f"{ours}/lora/a"], np.float32).T
        tensors[f"{key}.lora_B.weight"] = np.asarray(flat[f"{ours}/lora/b"], np.float32).T
      elif target in spec.feedforward:
        tensors[f"{key}.ia3_l"] = np.asarray(flat[f"{ours}/ia3/scale"], np.float32)[None, :]
      else:
        tensors[f"{key}.ia3_l"] = np.asarray(flat[f"{ours}/ia3/scale"], np.float32)[:, None]
  out = epath.Path(path)
  out.mkdir(parents=True, exist_ok=True)
  tmp = out / (WEIGHTS_FILE + ".tmp")
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
  tmp.rename(out / WEIGHTS_FILE)
  from spot import io  # pylint: disable=g-import-not-at-top
  io.write_text_atomic(out / CONFIG_FILE, json.dumps(cfg, indent=2, sort_keys=True))
  return out
