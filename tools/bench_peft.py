"""Benchmark: spot prompt tuning vs Hugging Face PEFT prompt tuning (PyTorch, CPU).

Both train a prompt on the same randomly initialised T5 1.1 weights (gated
GELU, untied logits, relative position buckets 32/128), each loaded the way
its users load a model: spot from a T5X checkpoint (`load_t5x`, as `spot
train` does), PEFT from a Hugging Face directory (`from_pretrained`); both
checkpoints are written once from the same parameters. The same batch,
input, target and prompt lengths, dropout and optimizer (Adafactor, lr 0.3, no
parameter scaling, clipping 1.0, decay 0.8), on synthetic token batches with no
padding. PEFT uses `PromptTuningConfig(num_transformer_submodules=1)` (an
encoder prompt, as spot). spot also runs model tuning for its own ratio. Each
measurement runs in a fresh process so its peak RSS is its own; one line per
measurement, ending in `<value> steps/s, peak RSS <value> MiB`, then ratios:

  python tools/bench_peft.py                      # t5_1_1_small, 4 layers each
  python tools/bench_peft.py --override num_encoder_layers=8 --override num_decoder_layers=8

Targets: spot >= 1.5x PEFT's steps/s at equal or lower peak RSS, and spot's
prompt-tuning step <= 0.75x its model-tuning step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import tempfile
from typing import Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_train  # noqa: E402  (tools/bench_train.py: shared setup and the spot side)

DEFAULT_OVERRIDES = ("num_encoder_layers=4", "num_decoder_layers=4")


def hf_config(config):
  """The transformers T5Config of a spot T5Config (T5 1.1 layout)."""
  from transformers import T5Config
  if tuple(config.mlp_activations) != ("gelu", "linear") or config.logits_via_embedding:
    raise ValueError("bench_peft compares T5 1.1 configurations (gated GELU, untied logits); "
                     f"got {config.mlp_activations}, logits_via_embedding="
                     f"{config.logits_via_embedding}.")
  return T5Config(vocab_size=config.vocab_size, d_model=config.emb_dim, d_kv=config.head_dim,
                  d_ff=config.mlp_dim, num_layers=config.num_encoder_layers,
                  num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
                  relative_attention_num_buckets=config.relative_attention_num_buckets,
                  relative_attention_max_distance=config.relative_attention_max_distance,
                  dropout_rate=config.dropout_rate, layer_norm_epsilon=config.layer_norm_epsilon,
                  feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def prepare_checkpoints(setup: bench_train.Setup, directory: pathlib.Path) -> None:
  """Writes one set of random weights as a T5X checkpoint and a Hugging Face directory."""
  from spot.checkpoints import save_hf, save_t5x
  from spot.train import state as state_lib
  from spot.train.models import EncoderDecoderModel
  config = setup.config()
  params = state_lib.load_base_params(EncoderDecoderModel(config), "random", 0)
  save_t5x(directory / "t5x", params, step=0)
  save_hf(directory / "hf", config, params)


def measure_peft(setup: bench_train.Setup, hf_dir: str, threads: Optional[int] = None) -> dict:
  """PEFT prompt tuning: the same steps as spot, timed after warm-up."""
  import torch
  from peft import PromptTuningConfig, TaskType, get_peft_model
  from transformers import T5ForConditionalGeneration
  from transformers.optimization import Adafactor
  imports_mib = bench_train.current_rss_mib()
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  config = setup.config()
  hf_config(config)  # checks the configuration is one HF's T5 expresses
  model = T5ForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32,
                                                     dropout_rate=config.dropout_rate)
  model = get_peft_model(model, PromptTuningConfig(
      task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=setup.prompt_length,
      num_transformer_submodules=1))
  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  opt = Adafactor(params, lr=0.3, scale_parameter=False, relative_step=False,
                  warmup_init=False, decay_rate=-0.8, clip_threshold=1.0, weight_decay=1e-5)
  batch = bench_train.synthetic_batch(setup.batch, setup.input_length, setup.target_length,
                                      config.vocab_size)
  inputs = torch.from_numpy(batch["encoder_input_tokens"]).long()
  labels = torch.from_numpy(batch["decoder_target_tokens"]).long()
  mask = torch.ones_like(inputs)

  losses = []

  def step():
    loss = model(input_ids=inputs, attention_mask=mask, labels=labels).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(float(loss.detach()))

  warmup = bench_train.timed_steps(step, setup.warmup)
  times = bench_train.timed_steps(step, setup.steps)
  trainable = sum(p.numel() for p in params)
  return {"label": setup.label.replace("spot prompt tuning", "PEFT prompt tuning (PyTorch)"),
          **bench_train.summarize(times), "warmup_s": sum(w for w, _ in warmup),
          "tokens": setup.batch * (setup.input_length + setup.target_length),
          "peak_rss_mib": bench_train.peak_rss_mib(), "imports_mib": imports_mib,
          "peak_device_mib": None, "loss": losses[-1],
          "trainable": trainable}


def _setup(text: str) -> bench_train.Setup:
  return bench_train.Setup(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in json.loads(text).items()})


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  bench_train.add_shape_flags(p)
  p.add_argument("--repeat", type=int, default=1,
                 help="measure each this many times, interleaved; ratios use the fastest")
  p.add_argument("--peft_malloc", default="default", choices=["default", "tuned"],
                 help="glibc malloc settings of the PEFT process: its users' default, or the "
                      "ones `spot` applies on CPU (spot.runtime), to see what they do for PyTorch")
  p.add_argument("--_dir", default=None, help=argparse.SUPPRESS)
  p.set_defaults(override=None)
  args = p.parse_args(argv)
  if args.override is None:
    args.override = list(DEFAULT_OVERRIDES)
  if args._child:
    bench_train.limit_threads(args.threads)
    choice = args.peft_malloc if args._child == "peft" else args.malloc
    bench_train.runtime.configure_host_memory({"SPOT_HOST_MALLOC": choice})
    if args._child == "prepare":
      prepare_checkpoints(_setup(args._setup), pathlib.Path(args._dir))
    elif args._child == "peft":
      print(json.dumps(measure_peft(_setup(args._setup), args._dir, args.threads)), flush=True)
    else:
      bench_train.child_main(args._child, args._setup)
    return
  script = pathlib.Path(__file__).resolve()
  with tempfile.TemporaryDirectory(prefix="bench_peft_") as tmp:
    prompt = bench_train.setup_from_args(args, "prompt")
    bench_train.run_child(script, "prepare", prompt, extra=("--_dir", tmp), parse=False)
    t5x = dataclasses.replace(prompt, checkpoint=str(pathlib.Path(tmp) / "t5x"))
    results: dict = {}
    peft_extra = ("--_dir", str(pathlib.Path(tmp) / "hf"), "--peft_malloc", args.peft_malloc)
    runs = (("peft", "peft", prompt, peft_extra),
            ("spot", "spot", t5x, ()),
            ("spot_model", "spot", dataclasses.replace(t5x, trainable="all"), ()))
    for _ in range(args.repeat):  # interleaved, so a burst of load hits all alike
      for key, kind, setup, extra in runs:
        m = bench_train.run_child(script, kind, setup, args.threads, extra=extra,
                                  malloc=args.malloc)
        if (key == "peft" and args.peft_malloc == "tuned") or (
            key != "peft" and args.malloc == "tuned"):
          m["label"] += ", SPOT_HOST_MALLOC=tuned malloc"
        print(bench_train.format_line(m), flush=True)
        if key not in results or m["step_s"] < results[key]["step_s"]:
          results[key] = m
  spot, peft, model = results["spot"], results["peft"], results["spot_model"]
  above = lambda m: m["peak_rss_mib"] - m["imports_mib"]
  print(f"spot / PEFT prompt-tuning throughput: {peft['step_s'] / spot['step_s']:.2f}x "
        "(target >= 1.5x)", flush=True)
  print(f"spot / PEFT prompt-tuning CPU seconds per step: {peft['cpu_step_s'] / spot['cpu_step_s']:.2f}x "
        "(less sensitive to other load; with --threads 1 it is the work done)", flush=True)
  print(f"spot / PEFT peak RSS: {spot['peak_rss_mib'] / peft['peak_rss_mib']:.2f}x "
        "(target <= 1.0x)", flush=True)
  print(f"spot / PEFT peak RSS above the imports: {above(spot) / above(peft):.2f}x "
        f"({above(spot):.0f} vs {above(peft):.0f} MiB)", flush=True)
  print(f"spot prompt tuning / model tuning step time: {spot['step_s'] / model['step_s']:.2f} "
        "(target <= 0.75)", flush=True)


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  main()
