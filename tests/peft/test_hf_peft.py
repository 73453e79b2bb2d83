"""Hugging Face PEFT interop: spot's logits after import equal the peft library's
(LoRA, (IA)3, prompt tuning on a random T5 1.1), and spot's exports load in peft."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from spot import errors, peft
from spot.checkpoints import load_hf
from spot.models import T5
from spot.peft import hf_peft
from spot.train import trainable as trainable_lib

PARITY_ATOL = 1e-4
VOCAB = 64


@pytest.fixture(scope="module")
def hf():
  pytest.importorskip("torch", reason="PEFT parity needs PyTorch (pip install torch)")
  pytest.importorskip("transformers", reason="PEFT parity needs transformers")
  return pytest.importorskip("peft", reason="PEFT parity needs peft (pip install '.[test]')")


@pytest.fixture(scope="module")
def base_dir(hf, tmp_path_factory):
  """A randomly initialised HF T5 1.1 (gated GELU, untied) saved as a directory."""
  import torch
  import transformers
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=VOCAB, d_model=32, num_heads=4, d_kv=8, d_ff=64,
                                 num_layers=2, num_decoder_layers=2,
                                 feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                 dropout_rate=0.0)
  model = transformers.T5ForConditionalGeneration(config).eval()
  path = tmp_path_factory.mktemp("hf_base")
  model.save_pretrained(path)
  return path


def _inputs():
  rng = np.random.default_rng(0)
  enc = rng.integers(2, VOCAB, (2, 12))
  dec_tgt = rng.integers(2, VOCAB, (2, 6))
  dec_in = np.concatenate([np.zeros((2, 1), np.int64), dec_tgt[:, :-1]], axis=1)
  return enc, dec_in, dec_tgt


def _peft_model(base_dir, peft_config, seed=1):
  """The PEFT-wrapped HF model with every adapter tensor random (non-zero, non-identity)."""
  import torch
  import transformers
  import peft as hf_peft_lib
  model = transformers.T5ForConditionalGeneration.from_pretrained(base_dir).eval()
  model = hf_peft_lib.get_peft_model(model, peft_config).eval()
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "lora_" in name or "ia3_l" in name or "prompt" in name:
        p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "ia3_l" in name else 0.0))
  return model


def _torch_logits(model, enc, dec_in):
  import torch
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc), attention_mask=torch.ones_like(torch.tensor(enc)),
                 decoder_input_ids=torch.tensor(dec_in)).logits.numpy()


def _spot_logits(config, params, spec, enc, dec_in, dec_tgt, prompt_factory=None):
  return np.asarray(T5(config, prompt_factory, spec).apply(
      {"params": params}, jnp.asarray(enc), jnp.asarray(dec_in), jnp.asarray(dec_tgt),
      enable_dropout=False))


def _lora(hf):
  return hf.LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, lora_alpha=8,
                       target_modules=["q", "k", "v", "o", "wi_0", "wi_1", "wo"])


def _ia3(hf):
  return hf.IA3Config(task_type="SEQ_2_SEQ_LM", target_modules=["k", "v", "wo"],
                      feedforward_modules=["wo"])


@pytest.mark.parametrize("make", [_lora, _ia3], ids=["lora", "ia3"])
def test_import_matches_peft_and_export_loads_in_peft(hf, base_dir, tmp_path, make):
  model = _peft_model(base_dir, make(hf))
  model.save_pretrained(tmp_path / "adapter")
  enc, dec_in, dec_tgt = _inputs()
  want = _torch_logits(model, enc, dec_in)
  config, base = load_hf(base_dir)
  spec, adapter = hf_peft.load_adapter(tmp_path / "adapter", config)
  params = trainable_lib.merge(
      {k: v for k, v in _unflatten(adapter).items()}, base)
  got = _spot_logits(config, params, spec, enc, dec_in, dec_tgt)
  diff = float(np.max(np.abs(got - want)))
  print(f"PEFT parity {spec.method}: max |logit diff| {diff:.2e} (max |logit| {np.abs(want).max():.1f})")
  assert diff < PARITY_ATOL
  # Merged into the base tree: the same logits from a plain T5.
  merged = peft.merge_peft(params, spec)
  np.testing.assert_allclose(_spot_logits(config, merged, None, enc, dec_in, dec_tgt), want,
                             atol=PARITY_ATOL, rtol=0)
  # spot's export (changed values) loads in peft and gives spot's logits.
  changed = {k: v * 0.5 + 0.1 for k, v in adapter.items()}
  hf_peft.save_adapter(tmp_path / "export", config, spec, changed)
  import peft as hf_peft_lib
  import transformers
  reloaded = hf_peft_lib.PeftModel.from_pretrained(
      transformers.T5ForConditionalGeneration.from_pretrained(base_dir).eval(),
      str(tmp_path / "export")).eval()
  ours = _spot_logits(config, trainable_lib.merge(_unflatten(changed), base), spec, enc,
                      dec_in, dec_tgt)
  np.testing.assert_allclose(_torch_logits(reloaded, enc, dec_in), ours, atol=PARITY_ATOL,
                             rtol=0)


def test_prompt_tuning_import_matches_peft(hf, base_dir, tmp_path):
  import functools
  from spot.prompts import PrefixPrompt
  cfg = hf.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3,
                              num_transformer_submodules=1)
  model = _peft_model(base_dir, cfg)
  model.save_pretrained(tmp_path / "adapter")
  enc, dec_in, dec_tgt = _inputs()
  want = _torch_logits(model, enc, dec_in)
  config, base = load_hf(base_dir)
  spec, adapter = hf_peft.load_adapter(tmp_path / "adapter", config)
  assert spec is None and adapter[hf_peft.PROMPT_PATH].shape == (3, 32)
  params = trainable_lib.merge(_unflatten(adapter), base)
  got = _spot_logits(config, params, None, enc, dec_in, dec_tgt,
                     functools.partial(PrefixPrompt, length=3))
  diff = float(np.max(np.abs(got - want)))
  print(f"PEFT parity prompt_tuning: max |logit diff| {diff:.2e}")
  assert diff < PARITY_ATOL
  hf_peft.save_adapter(tmp_path / "export", config, None, adapter)
  spec2, again = hf_peft.load_adapter(tmp_path / "export", config)
  np.testing.assert_array_equal(again[hf_peft.PROMPT_PATH], adapter[hf_peft.PROMPT_PATH])


def test_bad_adapter_directories_fail_with_the_file(hf, base_dir, tmp_path):
  config, _ = load_hf(base_dir)
  (tmp_path / "loha").mkdir()
  (tmp_path / "loha" / "adapter_config.json").write_text(json.dumps({"peft_type": "LOHA"}))
  with pytest.raises(errors.ConfigError, match=r"loha/adapter_config.json: peft_type 'LOHA' "
                     r"is not supported"):
    hf_peft.load_adapter(tmp_path / "loha", config)
  model = _peft_model(base_dir, _lora(hf))
  model.save_pretrained(tmp_path / "lora")
  with pytest.raises(errors.CheckpointError, match=r"adapter_model.safetensors: .*lora_A.weight "
                     r"has shape \[4, 32\], expected \[4, 16\]"):
    hf_peft.load_adapter(tmp_path / "lora", config.replace(emb_dim=16))
  with pytest.raises(errors.MissingInputError, match="adapter_config.json does not exist"):
    hf_peft.load_adapter(tmp_path / "nothing", config)


def _unflatten(flat):
  from flax import traverse_util
  return traverse_util.unflatten_dict(dict(flat), sep="/")


@pytest.mark.parametrize("make", [_lora, _ia3], ids=["lora", "ia3"])
def test_convert_from_hf_with_peft_writes_merged_t5x(hf, base_dir, tmp_path, make):
  """`spot checkpoint convert --from-hf DIR --peft ADAPTER --to OUT`: plain load_t5x reads it
  and its logits equal PEFT's merged model."""
  from spot.checkpoints import cli, load_t5x
  model = _peft_model(base_dir, make(hf))
  model.save_pretrained(tmp_path / "adapter")
  enc, dec_in, dec_tgt = _inputs()
  merged_hf = model.merge_and_unload()
  want = _torch_logits(merged_hf, enc, dec_in)
  assert cli.main(["convert", "--from-hf", str(base_dir), "--peft", str(tmp_path / "adapter"),
                   "--to", str(tmp_path / "t5x")]) == 0
  config, _ = load_hf(base_dir)
  params = load_t5x(tmp_path / "t5x", config)
  diff = float(np.max(np.abs(_spot_logits(config, params, None, enc, dec_in, dec_tgt) - want)))
  print(f"convert --peft {make.__name__}: max |logit diff| vs PEFT merged {diff:.2e}")
  assert diff < PARITY_ATOL


def test_convert_refuses_prompt_tuning_adapter(hf, base_dir, tmp_path):
  from spot.checkpoints import cli
  model = _peft_model(base_dir, hf.PromptTuningConfig(task_type="SEQ_2_SEQ_LM",
                                                      num_virtual_tokens=2,
                                                      num_transformer_submodules=1))
  model.save_pretrained(tmp_path / "prompt")
  with pytest.raises(errors.ConfigError, match=r"prompt/adapter_config.json: peft_type "
                     r"'PROMPT_TUNING' cannot be merged"):
    cli.main(["convert", "--from-hf", str(base_dir), "--peft", str(tmp_path / "prompt"),
              "--to", str(tmp_path / "t5x")])
