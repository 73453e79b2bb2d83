"""Benchmark: one training step of every parameter-efficient method on the same frozen T5.

Prompt tuning, LoRA, (IA)3, Houlsby and Pfeiffer adapters, BitFit,
LayerNorm-only tuning, prefix tuning (when `spot.peft.METHODS` has it) and
model tuning, on the same T5 1.1 (default small; a random base unless
--checkpoint names one), synthetic batches, Adafactor. Each method runs in its
own fresh process so its peak RSS is its own, timed by tools/bench_train.py's
`measure_spot`. One line per method, ending in `<value> steps/s, peak RSS
<value> MiB`, then each method's step time and peak RSS relative to prompt
tuning, measured side by side in this run:

  python tools/bench_methods.py --size small       # t5_1_1_small, every method
  python tools/bench_methods.py --size tiny --lora_rank 2 --steps 1 --warmup 1
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
from typing import Optional, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_train  # noqa: E402  (tools/bench_train.py: shapes, timing, RSS, line format)

# name -> (spot.peft config expression or None, trainable, learning rate)
METHODS = {
    "prompt": (None, "prompt", 0.3),
    "lora": ("peft.LoraConfig(rank=RANK, targets=('q', 'k', 'v', 'o', 'wi_0', 'wi_1', 'wo'))",
             "lora", 1e-3),
    "ia3": ("peft.IA3Config()", "ia3", 3e-3),
    "adapter_houlsby": ("peft.AdapterConfig('houlsby', hidden=64)", "adapter", 1e-3),
    "adapter_pfeiffer": ("peft.AdapterConfig('pfeiffer', hidden=64)", "adapter", 1e-3),
    "bitfit": ("peft.BitFitConfig()", "bitfit", 1e-3),
    "layernorm": (None, "layernorm", 1e-3),
    "model": (None, "all", 1e-3),
}
# Measured only where spot.peft has them (prefix tuning lands in its own change).
OPTIONAL = {"prefix": ("peft.METHODS['prefix']()", "prefix", 1e-3)}
SIZES = ("tiny", "small", "base", "large", "xl", "xxl")


def available_methods() -> dict:
  """METHODS, plus the OPTIONAL ones that `spot.peft.METHODS` has in this checkout."""
  from spot import peft
  extra = {k: v for k, v in OPTIONAL.items() if k in peft.METHODS}
  return {**{k: v for k, v in METHODS.items() if k != "model"}, **extra,
          "model": METHODS["model"]}


def build_step(setup: bench_train.Setup, method: str, lora_rank: int = 8):
  """(step, trainable, opt state, frozen, batch) of `method`, and its tunable count."""
  from spot import peft, prompts  # noqa: F401  (peft: the METHODS expressions)
  from spot.train import trainable as trainable_lib
  from spot.train.models import EncoderDecoderModel
  spec_text, selection, lr = available_methods()[method]
  # pylint: disable-next=eval-used
  spec = eval(spec_text, {"peft": peft, "RANK": lora_rank}) if spec_text else None
  prompt = functools.partial(prompts.PrefixPrompt, length=setup.prompt_length) \
      if method == "prompt" else None
  model = EncoderDecoderModel(setup.config(), prompt, peft=spec)
  built = bench_train.build_train_step(setup, model, selection, lr)
  return built, trainable_lib.count(built[1])


def measure(setup: bench_train.Setup, method: str, lora_rank: int = 8) -> dict:
  """`bench_train.measure_spot` of one method's step, labelled with its tunable share."""
  import jax
  from spot.models import param_shapes
  counted = {}

  def build(s: bench_train.Setup) -> tuple:
    built, counted["n"] = build_step(s, method, lora_rank)
    return built

  result = bench_train.measure_spot(setup, build)
  n_base = sum(int(x.size) for x in jax.tree_util.tree_leaves(param_shapes(setup.config())))
  n = counted["n"]
  result["label"] = (f"{setup.model} {method} ({n:,} tunable, {100.0 * n / n_base:.3f}% of "
                     f"the base {n_base:,})")
  return result


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  bench_train.add_shape_flags(p)
  p.add_argument("--size", choices=SIZES, default=None,
                 help="T5 1.1 size (sets --model t5_1_1_SIZE), e.g. small")
  p.add_argument("--methods", default=None,
                 help=f"comma-separated subset of {','.join(METHODS)} (and "
                      f"{','.join(OPTIONAL)} where spot.peft has it); default all")
  p.add_argument("--lora_rank", type=int, default=8, help="LoRA rank r (alpha = r)")
  p.add_argument("--_method", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args._child:
    bench_train.limit_threads(args.threads)
    bench_train.runtime.configure_host_memory({"SPOT_HOST_MALLOC": args.malloc})
    setup = bench_train.Setup(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in json.loads(args._setup).items()})
    print(json.dumps(measure(setup, args._method, args.lora_rank)), flush=True)
    return
  if args.size:
    args.model = f"t5_1_1_{args.size}"
  known = available_methods()
  methods = [m for m in (args.methods or ",".join(known)).split(",") if m]
  unknown = [m for m in methods if m not in known]
  if unknown:
    p.error(f"--methods {unknown} unknown; choose from {','.join(known)}")
  setup = bench_train.setup_from_args(args, "prompt")
  script = pathlib.Path(__file__).resolve()
  results = {}
  for method in methods:
    results[method] = bench_train.run_child(
        script, "method", setup, args.threads, malloc=args.malloc,
        extra=["--_method", method, "--lora_rank", str(args.lora_rank)])
    print(bench_train.format_line(results[method]), flush=True)
  ref = results.get("prompt")
  if ref:
    for method, m in results.items():
      print(f"{method} / prompt tuning: step time {m['step_s'] / ref['step_s']:.2f}x, "
            f"peak RSS {m['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x", flush=True)


if __name__ == "__main__":
  main()
