"""Benchmark: spot train steps, prompt tuning vs model tuning.

Each measurement runs in a fresh Python process so that its peak RSS is its
own. It builds the model at the given size, places it with
`spot.partitioning` exactly as `spot.train.trainer.train` does, and times
`spot.train.trainer.make_train_step` (jitted with the trainer's shardings and
buffer donation) on synthetic batches: no data pipeline, so the figure is the
step itself. One line per measurement:

  spot prompt tuning t5_1_1_small, batch 8, 64+20 in / 16 out: 41.2 ms/step,
      15534 tokens/s, 24.27 steps/s, peak RSS 812.3 MiB

and the ratio of prompt-tuning to model-tuning step time (target <= 0.75:
frozen weights need no weight gradients and no optimizer update).

  python tools/bench_train.py --model t5_1_1_small --batch 8 --input_length 64 \
      --target_length 16 --prompt_length 20 --steps 20

`--estimate` prints the device-memory estimate of docs/scaling.md instead;
`--scan_compile` compares compile time and program size of unrolled and
scanned layers (`--override scan_layers=true` scans any measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import resource
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spot import runtime  # noqa: E402  (no JAX import: safe before the backend starts)
MiB = 1024.0 ** 2
GiB = 1024.0 ** 3


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


@dataclasses.dataclass(frozen=True)
class Setup:
  """What one measurement trains: model, shapes, what is trainable, mesh."""

  model: str = "t5_1_1_small"
  batch: int = 8
  input_length: int = 64
  target_length: int = 16
  prompt_length: int = 20
  trainable: str = "prompt"
  steps: int = 20
  warmup: int = 2
  num_partitions: int = 1
  dtype: str = "float32"
  remat: str = "none"
  dropout: float = 0.1
  overrides: tuple = ()
  checkpoint: str = "random"

  @property
  def label(self) -> str:
    what = "prompt tuning" if self.trainable == "prompt" else "model tuning"
    extra = "" if (self.dtype, self.remat) == ("float32", "none") else (
        f", {self.dtype}, remat {self.remat}")
    extra += "".join(f", {o}" for o in self.overrides)
    mesh = "" if self.num_partitions == 1 else f", {self.num_partitions} partitions"
    return (f"spot {what} {self.model}, batch {self.batch}, {self.input_length}+"
            f"{self.prompt_length} in / {self.target_length} out{extra}{mesh}")

  def config(self):
    from spot import models
    from spot.models import config as config_lib
    return models.get_config(self.model, dropout_rate=self.dropout, dtype=self.dtype,
                             remat_policy=self.remat,
                             **config_lib.parse_overrides(self.overrides))


def synthetic_batch(batch: int, input_length: int, target_length: int, vocab: int, seed: int = 0):
  """Random token batch with no padding: every position does work."""
  import numpy as np
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab, (batch, input_length), dtype=np.int32)
  tgt = rng.integers(2, vocab, (batch, target_length), dtype=np.int32)
  dec = np.pad(tgt[:, :-1], ((0, 0), (1, 0)))
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": np.ones_like(tgt, dtype=np.float32)}


def current_rss_mib() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * resource.getpagesize() / MiB


def import_spot_step() -> float:
  """Imports what the step needs; returns the RSS after the imports (MiB)."""
  import jax  # noqa: F401
  from spot import partitioning, prompts  # noqa: F401
  from spot.train import optimizers, state, trainable, trainer  # noqa: F401
  return current_rss_mib()


def build_spot_step(setup: Setup):
  """(step function, its arguments) of prompt or model tuning (`setup.trainable`)."""
  from spot import prompts
  from spot.train.models import EncoderDecoderModel
  model = EncoderDecoderModel(setup.config(), functools.partial(
      prompts.PrefixPrompt, length=setup.prompt_length))
  return build_train_step(setup, model, setup.trainable,
                          0.3 if setup.trainable == "prompt" else 1e-3)


def build_train_step(setup: Setup, model, selection, learning_rate: float):
  """(step, trainable, opt state, frozen, batch) of `model` training `selection`, placed as
  the trainer places them (Adafactor at `learning_rate`, synthetic batch of `setup`)."""
  import jax
  from spot import partitioning
  from spot.train import optimizers, state as state_lib, trainable as trainable_lib
  from spot.train.trainer import make_train_step
  part = partitioning.Partitioner.create(num_partitions=setup.num_partitions)
  params = state_lib.initial_params(model, setup.checkpoint, 0)
  tr, frozen = trainable_lib.split(params, selection)
  del params
  axes = model.param_axes()
  tr_axes, fr_axes = trainable_lib.split(axes, selection) if frozen else (axes, {})
  tr_sh, fr_sh = part.logical_to_mesh(tr_axes, tr), part.logical_to_mesh(fr_axes, frozen)
  tr, frozen = jax.device_put(tr, tr_sh), part.put(frozen, fr_sh, in_place=True)
  tx = optimizers.adafactor(learning_rate=learning_rate)
  opt_sh = part.optimizer_state_shardings(jax.eval_shape(tx.init, tr), tr_sh, tr)
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(tr)
  batch = synthetic_batch(setup.batch, setup.input_length, setup.target_length,
                          model.config.vocab_size)
  rep = part.replicated
  step = part.partition(make_train_step(model, tx),
                        in_shardings=(tr_sh, opt_sh, fr_sh, part.batch_shardings(batch), rep, rep),
                        out_shardings=(tr_sh, opt_sh, rep), donate_argnums=(0, 1))
  return step, tr, opt_state, frozen, part.shard_batch(batch)


def xla_memory(setup: Setup) -> dict:
  """XLA's buffer assignment for the compiled step: MiB of arguments and temporaries."""
  import jax
  import jax.numpy as jnp
  step, tr, opt_state, frozen, batch = build_spot_step(setup)
  lowered = step.lower(tr, opt_state, frozen, batch, jnp.asarray(0, jnp.int32),
                       jax.random.PRNGKey(0))
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  stats = compiled.memory_analysis()
  return {"label": setup.label, "compile_s": compile_s,
          "hlo_kib": len(compiled.as_text()) / 1024.0,
          "argument_mib": stats.argument_size_in_bytes / MiB,
          "temp_mib": stats.temp_size_in_bytes / MiB,
          "estimate_activations_mib": activation_bytes(
              setup.config(), setup.batch, setup.input_length + setup.prompt_length,
              setup.target_length, setup.remat, 1, setup.num_partitions) / MiB}


def timed_steps(step, count: int) -> list[tuple[float, float]]:
  """(wall, process CPU) seconds of `count` calls of `step()`, each waited for."""
  times = []
  for _ in range(count):
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    times.append((time.perf_counter() - wall, time.process_time() - cpu))
  return times


def summarize(times: Sequence[tuple[float, float]]) -> dict:
  """Median wall and CPU seconds per step (medians resist other processes' bursts)."""
  import statistics
  return {"step_s": statistics.median(t[0] for t in times),
          "cpu_step_s": statistics.median(t[1] for t in times)}


def measure_spot(setup: Setup, build: Optional[Callable[[Setup], tuple]] = None) -> dict:
  """Times `setup.steps` steps after `setup.warmup` (compile + first runs).

  `build(setup) -> (step, trainable, opt state, frozen, batch)` makes the step
  (default `build_spot_step`: prompt or model tuning); tools/bench_methods.py
  passes one per parameter-efficient method, so every benchmark times alike.
  """
  import jax
  import jax.numpy as jnp
  imports_mib = import_spot_step()
  step, tr, opt_state, frozen, batch = (build or build_spot_step)(setup)
  rng = jax.random.PRNGKey(0)
  state = {"tr": tr, "opt": opt_state, "i": 0, "metrics": None}
  del tr, opt_state

  def one():
    state["tr"], state["opt"], state["metrics"] = step(
        state["tr"], state["opt"], frozen, batch, jnp.asarray(state["i"], jnp.int32), rng)
    state["i"] += 1
    jax.block_until_ready((state["tr"], state["metrics"]))

  warmup = timed_steps(one, setup.warmup)
  times = timed_steps(one, setup.steps)
  metrics = state["metrics"]
  stats = jax.devices()[0].memory_stats() or {}
  return {"label": setup.label, **summarize(times), "warmup_s": sum(w for w, _ in warmup),
          "tokens": setup.batch * (setup.input_length + setup.target_length),
          "peak_rss_mib": peak_rss_mib(), "imports_mib": imports_mib,
          "peak_device_mib": stats.get("peak_bytes_in_use", 0) / MiB or None,
          "loss": float(metrics["loss"]) / max(float(metrics["num_tokens"]), 1.0)}


def format_line(m: dict) -> str:
  """`<label>: <ms>/step, <tokens/s>, ..., <value> steps/s, peak RSS <value> MiB`."""
  device = f", peak device {m['peak_device_mib']:.0f} MiB" if m.get("peak_device_mib") else ""
  return (f"{m['label']}: {1000 * m['step_s']:.1f} ms/step, "
          f"{m['tokens'] / m['step_s']:.0f} tokens/s{device}, "
          f"RSS after imports {m['imports_mib']:.0f} MiB, "
          f"{1.0 / m['step_s']:.2f} steps/s, peak RSS {m['peak_rss_mib']:.1f} MiB")


def run_child(script: pathlib.Path, kind: str, setup: Setup, threads: Optional[int] = None,
              extra: Sequence[str] = (), parse: bool = True,
              malloc: str = "tuned") -> Optional[dict]:
  """Runs one measurement in a fresh process; returns its JSON result."""
  cmd = [sys.executable, str(script), "--_child", kind, "--_setup",
         json.dumps(dataclasses.asdict(setup)), "--malloc", malloc, *extra]
  if threads:
    cmd += ["--threads", str(threads)]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
  if out.returncode:
    raise RuntimeError(f"{kind} measurement failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1]) if parse else None


def child_main(kind: str, setup_json: str) -> None:
  """In the measuring process: one measurement, printed as JSON on the last line."""
  setup = Setup(**{k: tuple(v) if isinstance(v, list) else v
                   for k, v in json.loads(setup_json).items()})
  if kind not in ("spot", "xla_memory"):
    raise ValueError(f"Unknown measurement {kind!r}.")
  print(json.dumps(measure_spot(setup) if kind == "spot" else xla_memory(setup)), flush=True)


# ------------------------------------------------------------------------------
# Memory estimate (docs/scaling.md).
# ------------------------------------------------------------------------------


def param_count(config, prompt_length: int = 0) -> int:
  import math
  import jax
  from spot.models import param_shapes
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(param_shapes(config))) + (
      prompt_length * config.emb_dim)


def activation_bytes(config, batch: int, input_length: int, target_length: int, remat: str,
                     data: int = 1, model: int = 1) -> float:
  """Bytes of activations one device keeps for the backward pass.

  Prompt and model tuning keep the same activations: the prompt's gradient
  needs the backward pass through every layer. Per token and layer, no remat
  keeps the residual-width tensors (norm inputs and outputs, block outputs),
  q/k/v/context, the gated MLP's hidden states and the attention logits and
  probabilities; "minimal" keeps the matmul outputs; "full" keeps each layer's
  input plus one layer's full set while it is recomputed. The backward pass
  of a layer needs about two layers' worth more. Batch is split over
  'data'; heads, MLP and vocabulary over 'model' (T5X's standard rules).
  """
  width = 2 if config.dtype == "bfloat16" else 4
  d, f = config.emb_dim, config.mlp_dim
  hk, h = config.num_heads * config.head_dim, config.num_heads
  gates = len(config.mlp_activations)
  s, t, b = input_length, target_length, batch / data

  def layer(tokens: float, dims: float, sharded: float) -> float:
    return b * tokens * (dims + sharded / model)

  enc_full = layer(s, 6 * d, 4 * hk + (2 * gates) * f + h * s)
  dec_full = layer(t, 9 * d, 6 * hk + (2 * gates) * f + h * (s + t)) + layer(s, 0, 2 * hk)
  # The backward pass of one layer holds its activation gradients and
  # recomputed values besides what was kept: about two layers' worth (fitted
  # to XLA's buffer assignment of the compiled step, `--xla_memory`).
  working = 2 * max(enc_full, dec_full)
  if remat == "full":
    kept = (config.num_encoder_layers * layer(s, d, 0) + config.num_decoder_layers *
            layer(t, d, 0) + max(enc_full, dec_full))
  elif remat == "minimal":
    kept = (config.num_encoder_layers * layer(s, 2 * d, 4 * hk + gates * f) +
            config.num_decoder_layers * layer(t, 3 * d, 6 * hk + gates * f))
  else:
    kept = config.num_encoder_layers * enc_full + config.num_decoder_layers * dec_full
  logits = 3 * b * t * config.vocab_size / model * 4  # float32 logits, softmax, gradient
  return (kept + working) * width + logits


def estimate(config_name: str, batch: int, input_length: int, target_length: int,
             prompt_length: int, data: int = 1, model: int = 1, remat: str = "full",
             dtype: str = "bfloat16") -> dict:
  """GiB per device for prompt tuning and model tuning (Adafactor, float32 weights).

  Weights (float32, as T5X keeps them) are split over the `model` axis.
  Prompt tuning adds the prompt's gradient and optimizer state (kilobytes);
  model tuning adds a float32 gradient and an update per weight (Adafactor's
  factored second moments are rows + columns, negligible).
  """
  from spot.models import get_config
  config = get_config(config_name, dtype=dtype, remat_policy=remat)
  p = param_count(config)
  weights = 4 * p / model
  acts = activation_bytes(config, batch, input_length + prompt_length, target_length, remat,
                          data, model)
  prompt_state = 3 * 4 * prompt_length * config.emb_dim
  model_state = 2 * 4 * p / model
  return {"model": config_name, "params_billions": p / 1e9, "data": data, "partitions": model,
          "weights_gib": weights / GiB, "activations_gib": acts / GiB,
          "prompt_tuning_gib": (weights + acts + prompt_state) / GiB,
          "model_tuning_gib": (weights + acts + model_state) / GiB}


def print_estimates(args) -> None:
  sizes = args.estimate_models or ["t5_1_1_base", "t5_1_1_large", "t5_1_1_xl", "t5_1_1_xxl"]
  print(f"batch {args.batch} per data replica x {args.data}, {args.input_length}+"
        f"{args.prompt_length} in / {args.target_length} out, {args.dtype}, remat {args.remat}")
  print("| model | params | partitions | weights | activations | prompt tuning | model tuning |")
  print("|---|---|---|---|---|---|---|")
  for name in sizes:
    for model in args.estimate_partitions:
      e = estimate(name, args.batch * args.data, args.input_length, args.target_length,
                   args.prompt_length, args.data, model, args.remat, args.dtype)
      print(f"| {name} | {e['params_billions']:.2f} B | {model} | {e['weights_gib']:.2f} GiB | "
            f"{e['activations_gib']:.2f} GiB | {e['prompt_tuning_gib']:.2f} GiB | "
            f"{e['model_tuning_gib']:.2f} GiB |")


# ------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------


def add_shape_flags(p: argparse.ArgumentParser) -> None:
  """The flags shared with tools/bench_peft.py."""
  p.add_argument("--model", default="t5_1_1_small", help="spot.models config name")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--input_length", type=int, default=64)
  p.add_argument("--target_length", type=int, default=16)
  p.add_argument("--prompt_length", type=int, default=20)
  p.add_argument("--steps", type=int, default=20, help="timed steps")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps (compile)")
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--override", action="append", default=[],
                 help="T5Config field=value, e.g. num_encoder_layers=4 (repeatable)")
  p.add_argument("--checkpoint", default=None,
                 help="T5X checkpoint of the frozen model (default: random init)")
  p.add_argument("--threads", type=int, default=None,
                 help="CPU threads for each measuring process (default: all)")
  p.add_argument("--malloc", default="tuned", choices=["default", "tuned"],
                 help="glibc malloc settings of spot's measuring processes (spot.runtime)")
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--_setup", default=None, help=argparse.SUPPRESS)


def setup_from_args(args, trainable: str) -> Setup:
  return Setup(model=args.model, batch=args.batch, input_length=args.input_length,
               target_length=args.target_length, prompt_length=args.prompt_length,
               trainable=trainable, steps=args.steps, warmup=args.warmup,
               num_partitions=getattr(args, "num_partitions", 1),
               dtype=getattr(args, "dtype", "float32"), remat=getattr(args, "remat", "none"),
               dropout=args.dropout, overrides=tuple(args.override),
               checkpoint=getattr(args, "checkpoint", None) or "random")


def limit_threads(threads: Optional[int]) -> None:
  """Pins a measuring process to its first `threads` CPUs (XLA and PyTorch alike)."""
  if threads:
    import os
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  add_shape_flags(p)
  p.add_argument("--num_partitions", type=int, default=1)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--remat", default="none", choices=["none", "full", "minimal"])
  p.add_argument("--mode", default="both", choices=["prompt", "model", "both"])
  p.add_argument("--estimate", action="store_true", help="print the memory estimate table")
  p.add_argument("--xla_memory", action="store_true",
                 help="XLA's compiled memory for prompt/model tuning at each remat policy")
  p.add_argument("--scan_compile", action="store_true",
                 help="compile time, program size and XLA memory of the prompt-tuning step "
                      "with unrolled vs scanned layers")
  p.add_argument("--estimate_models", nargs="*", default=None)
  p.add_argument("--estimate_partitions", nargs="*", type=int, default=[1, 2, 4, 8])
  p.add_argument("--data", type=int, default=1, help="--estimate: data-parallel replicas")
  args = p.parse_args(argv)
  if args._child:
    limit_threads(args.threads)
    # As `SPOT_HOST_MALLOC=<--malloc> spot train` does, before JAX starts.
    runtime.configure_host_memory({"SPOT_HOST_MALLOC": args.malloc})
    child_main(args._child, args._setup)
    return
  if args.estimate:
    print_estimates(args)
    return
  script = pathlib.Path(__file__).resolve()
  if args.xla_memory:
    for trainable in ("prompt", "all"):
      for remat in ("none", "minimal", "full"):
        setup = dataclasses.replace(setup_from_args(args, trainable), remat=remat)
        m = run_child(script, "xla_memory", setup, args.threads, malloc=args.malloc)
        print(f"{m['label']}: XLA arguments {m['argument_mib']:.0f} MiB, temporaries "
              f"{m['temp_mib']:.0f} MiB (estimated activations "
              f"{m['estimate_activations_mib']:.0f} MiB)", flush=True)
    return
  if args.scan_compile:
    for scanned in (False, True):
      setup = setup_from_args(args, "prompt")
      setup = dataclasses.replace(setup, overrides=setup.overrides + (f"scan_layers={scanned}",))
      m = run_child(script, "xla_memory", setup, args.threads, malloc=args.malloc)
      print(f"{m['label']}: compile {m['compile_s']:.1f} s, optimized HLO "
            f"{m['hlo_kib']:.0f} KiB, XLA temporaries {m['temp_mib']:.0f} MiB", flush=True)
    return
  results = {}
  for trainable in (["prompt", "all"] if args.mode == "both" else
                    ["prompt" if args.mode == "prompt" else "all"]):
    results[trainable] = run_child(script, "spot", setup_from_args(args, trainable), args.threads,
                                   malloc=args.malloc)
    print(format_line(results[trainable]), flush=True)
  if len(results) == 2:
    ratio = results["prompt"]["step_s"] / results["all"]["step_s"]
    print(f"prompt tuning / model tuning step time: {ratio:.2f} (target <= 0.75)", flush=True)


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  main()
