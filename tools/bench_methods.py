"""Benchmark: one training step of every parameter-efficient method on the same frozen T5.

Prompt tuning, LoRA, (IA)3, Houlsby and Pfeiffer adapters, BitFit,
LayerNorm-only tuning and model tuning, on the same randomly initialised T5
1.1 (default t5_1_1_small), synthetic batches, Adafactor. Each method runs in
its own fresh process so its peak RSS is its own. One line per method, ending
in `<value> steps/s, peak RSS <value> MiB`, then each method's step time and
peak RSS relative to prompt tuning, measured side by side in this run:

  python tools/bench_methods.py                    # t5_1_1_small
  python tools/bench_methods.py --model t5_1_1_tiny --lora_rank 2 --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import subprocess
import sys
from typing import Optional, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_train  # noqa: E402  (tools/bench_train.py: shapes, timing, RSS, line format)

REPO = pathlib.Path(__file__).resolve().parents[1]
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


def build_step(setup: bench_train.Setup, method: str, lora_rank: int = 8):
  """(step, trainable, opt state, frozen, batch, trainable count), placed as the trainer does."""
  import jax
  from spot import partitioning, peft, prompts  # noqa: F401  (peft: the METHODS expressions)
  from spot.train import optimizers, state as state_lib, trainable as trainable_lib
  from spot.train.models import EncoderDecoderModel
  from spot.train.trainer import make_train_step
  spec_text, selection, lr = METHODS[method]
  spec = eval(spec_text, {"peft": peft, "RANK": lora_rank}) if spec_text else None  # pylint: disable=eval-used
  prompt = functools.partial(prompts.PrefixPrompt, length=setup.prompt_length) \
      if method == "prompt" else None
  model = EncoderDecoderModel(setup.config(), prompt, peft=spec)
  part = partitioning.Partitioner.create(num_partitions=setup.num_partitions)
  params = state_lib.initial_params(model, setup.checkpoint, 0)
  tr, frozen = trainable_lib.split(params, selection)
  del params
  axes = model.param_axes()
  tr_axes, fr_axes = trainable_lib.split(axes, selection) if frozen else (axes, {})
  tr_sh, fr_sh = part.logical_to_mesh(tr_axes, tr), part.logical_to_mesh(fr_axes, frozen)
  tr, frozen = jax.device_put(tr, tr_sh), part.put(frozen, fr_sh, in_place=True)
  tx = optimizers.adafactor(learning_rate=lr)
  opt_sh = part.optimizer_state_shardings(jax.eval_shape(tx.init, tr), tr_sh, tr)
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(tr)
  batch = bench_train.synthetic_batch(setup.batch, setup.input_length, setup.target_length,
                                      model.config.vocab_size)
  rep = part.replicated
  step = part.partition(make_train_step(model, tx),
                        in_shardings=(tr_sh, opt_sh, fr_sh, part.batch_shardings(batch), rep, rep),
                        out_shardings=(tr_sh, opt_sh, rep), donate_argnums=(0, 1))
  return step, tr, opt_state, frozen, part.shard_batch(batch), trainable_lib.count(tr)


def measure(setup: bench_train.Setup, method: str, lora_rank: int = 8) -> dict:
  import jax
  import jax.numpy as jnp
  imports_mib = bench_train.import_spot_step()
  step, tr, opt_state, frozen, batch, n_trainable = build_step(setup, method, lora_rank)
  from spot.models import param_shapes
  n_base = sum(int(x.size) for x in jax.tree_util.tree_leaves(param_shapes(setup.config())))
  rng = jax.random.PRNGKey(0)
  state = {"tr": tr, "opt": opt_state, "i": 0, "metrics": None}
  del tr, opt_state

  def one():
    state["tr"], state["opt"], state["metrics"] = step(
        state["tr"], state["opt"], frozen, batch, jnp.asarray(state["i"], jnp.int32), rng)
    state["i"] += 1
    jax.block_until_ready((state["tr"], state["metrics"]))

  bench_train.timed_steps(one, setup.warmup)
  times = bench_train.timed_steps(one, setup.steps)
  stats = jax.devices()[0].memory_stats() or {}
  return {"label": f"{setup.model} {method} ({n_trainable:,} tunable, "
                   f"{100.0 * n_trainable / n_base:.3f}% of the base {n_base:,})",
          **bench_train.summarize(times), "imports_mib": imports_mib,
          "tokens": setup.batch * (setup.input_length + setup.target_length),
          "peak_rss_mib": bench_train.peak_rss_mib(),
          "peak_device_mib": stats.get("peak_bytes_in_use", 0) / bench_train.MiB or None}


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  bench_train.add_shape_flags(p)
  p.add_argument("--methods", default=",".join(METHODS),
                 help=f"comma-separated subset of {','.join(METHODS)}")
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
  methods = [m for m in args.methods.split(",") if m]
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    p.error(f"--methods {unknown} unknown; choose from {','.join(METHODS)}")
  setup = bench_train.setup_from_args(args, "prompt")
  results = {}
  for method in methods:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--_child", "method",
           "--_method", method, "--lora_rank", str(args.lora_rank), "--_setup", json.dumps(dataclasses.asdict(setup)),
           "--malloc", args.malloc] + (["--threads", str(args.threads)] if args.threads else [])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode:
      raise RuntimeError(f"{method} measurement failed:\n{out.stderr[-3000:]}")
    results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    print(bench_train.format_line(results[method]), flush=True)
  ref = results.get("prompt")
  if ref:
    for method, m in results.items():
      print(f"{method} / prompt tuning: step time {m['step_s'] / ref['step_s']:.2f}x, "
            f"peak RSS {m['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x", flush=True)


if __name__ == "__main__":
  main()
