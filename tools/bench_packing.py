"""Benchmark: packed prompt tuning vs unpacked and vs Hugging Face PEFT, on a GLUE mixture.

The examples are real: SST-2, CoLA, MRPC, QNLI, RTE and STS-B from a local
DATA_DIR (../shared/data), tokenized with the T5 vocabulary by spot's own
tasks, and drawn the way `spot_glue_mix` draws them (SeqIO's mixture with T5's
examples-proportional rates). Every side trains T5 1.1 small (full depth, 8+8
layers) from the same random weights with a 100-token prompt, Adafactor (lr
0.3), and sees the SAME examples in each step:

  (a) spot unpacked: every example padded to inputs 512 (+ the prompt), as
      `spot/gin/glue_mix.gin` runs today without packing;
  (b) spot packed: `PromptFeatureConverter(pack=True)` packs the step's
      examples into rows of prompt + 512 positions, each example with its own
      prompt (the row count follows the examples; each distinct row count is
      compiled before timing);
  (b') the same packed, with remat `full` (T5Config.remat_policy): each layer
      recomputed in the backward pass, less memory for more compute;
  (c) PEFT prompt tuning (PyTorch) with `DataCollatorForSeq2Seq` padding to
      the longest example in the batch, what a PEFT user runs.

Each side runs in its own process (its own peak RSS), all in one invocation.
One line per measurement ends in `<value> examples/s, peak RSS <value> MiB`;
the ratios are the last lines; `--json` adds a JSON object of every figure.
`--eval` also times rank classification of the same examples, fixed-length
batches vs length-bucketed ones.

  python tools/bench_packing.py --data_dir ../shared/data \
      --spm ../shared/data/t5_vocab/spiece.model

Targets: (b)/(a) >= 3x examples/s; (b)/(c) >= 1.5x examples/s at <= (c)'s peak
RSS; real-token fraction of (b) >= 85%. The same command runs on a GPU: JAX
and PyTorch use whatever accelerator they find.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

import bench_train  # noqa: E402  (shared timing, RSS and setup helpers)

GLUE_TASKS = ("sst2", "cola", "mrpc", "qnli", "rte", "stsb")


@dataclasses.dataclass(frozen=True)
class Config:
  """What every side trains on: the data, the model, the step shapes."""

  data_dir: str
  spm: str
  model: str = "t5_1_1_small"
  input_length: int = 512
  target_length: int = 8
  prompt_length: int = 100
  examples_per_step: int = 16
  steps: int = 4
  warmup: int = 1
  seed: int = 0
  overrides: tuple = ()
  remat: str = "none"
  checkpoint: str = "random"
  hf_dir: str = ""
  examples_file: str = ""

  def setup(self) -> bench_train.Setup:
    return bench_train.Setup(model=self.model, batch=self.examples_per_step,
                             input_length=self.input_length, target_length=self.target_length,
                             prompt_length=self.prompt_length, steps=self.steps,
                             warmup=self.warmup, dropout=0.0, overrides=self.overrides,
                             remat=self.remat,
                             checkpoint=self.checkpoint)


# ------------------------------------------------------------------------------
# Data: the mixture's examples, tokenized once, shared by every side.
# ------------------------------------------------------------------------------


def draw_examples(cfg: Config, count: int) -> dict[str, list]:
  """The first `count` examples of the GLUE mixture: token lists of inputs and targets.

  As SeqIO's Mixture samples `spot_glue_mix`: each task's examples shuffled,
  drawn with T5's examples-proportional rates. A task without a local train
  split (../shared/data has QNLI's dev file only) is read from its validation
  split, so it still takes its share.
  """
  import seqio
  import tensorflow as tf
  from spot import tasks
  from spot.tasks import mixtures
  vocab = seqio.SentencePieceVocabulary(cfg.spm)
  local = tasks.register_local(cfg.data_dir, vocabulary=vocab)
  names = [f"spot_glue_{t}" for t in GLUE_TASKS]
  missing = [n for n in names if n not in local]
  if missing:
    raise SystemExit(f"bench_packing: no local files for {missing} under {cfg.data_dir}; "
                     "point --data_dir at a folder with glue/<task>/ files (../shared/data).")
  lengths = {"inputs": cfg.input_length, "targets": cfg.target_length}
  datasets, rates = [], []
  for n in names:
    task = seqio.get_mixture_or_task(n)
    split = "train" if "train" in task.splits else "validation"
    ds = task.get_dataset(lengths, split=split, shuffle=True, seed=cfg.seed, num_epochs=None)
    datasets.append(ds.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]}))
    rates.append(mixtures.mixing_rate(mixtures.NUM_EXAMPLES[n.replace("spot_", "")]))
  weights = [r / sum(rates) for r in rates]
  ds = tf.data.Dataset.sample_from_datasets(datasets, weights, seed=cfg.seed)
  out = {"inputs": [], "targets": []}
  for ex in ds.take(count).as_numpy_iterator():
    out["inputs"].append([int(t) for t in ex["inputs"]])
    out["targets"].append([int(t) for t in ex["targets"]])
  return out


def convert(cfg: Config, examples: dict[str, list], pack: bool) -> list[dict]:
  """Per step, the step's examples through spot's PromptFeatureConverter (numpy batches)."""
  import numpy as np
  import tensorflow as tf
  from spot.train.data import PromptFeatureConverter
  lengths = {"inputs": cfg.input_length, "targets": cfg.target_length}
  # spot's packing as `spot train` runs it: first fit within a window of the step.
  conv = PromptFeatureConverter(prompt_length=cfg.prompt_length, pack=pack,
                                pack_window=max(64, cfg.examples_per_step))
  batches = []
  e = cfg.examples_per_step
  for s in range(cfg.warmup + cfg.steps):
    rows = [(np.asarray(i, np.int32), np.asarray(t, np.int32))
            for i, t in zip(examples["inputs"][s * e:(s + 1) * e],
                            examples["targets"][s * e:(s + 1) * e])]
    ds = tf.data.Dataset.from_generator(
        lambda rows=rows: ({"inputs": i, "targets": t} for i, t in rows),
        output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                          "targets": tf.TensorSpec([None], tf.int32)})
    converted = list(conv(ds, lengths).as_numpy_iterator())
    batches.append({k: np.stack([r[k] for r in converted]) for k in converted[0]})
  return batches


def batches_file(cfg: Config, pack: bool) -> pathlib.Path:
  return pathlib.Path(cfg.examples_file).with_name("packed.npz" if pack else "unpacked.npz")


def save_batches(cfg: Config, examples: dict[str, list]) -> None:
  """Both sides' converted batches, written once, so measuring processes load
  numpy arrays only (no TensorFlow in their memory, as no data pipeline in PEFT's)."""
  import numpy as np
  for pack in (False, True):
    arrays = {f"{i}/{k}": v for i, b in enumerate(convert(cfg, examples, pack))
              for k, v in b.items()}
    np.savez(batches_file(cfg, pack), **arrays)


def load_batches(cfg: Config, pack: bool) -> list[dict]:
  import numpy as np
  with np.load(batches_file(cfg, pack)) as z:
    out: dict[int, dict] = {}
    for key in z.files:
      i, name = key.split("/", 1)
      out.setdefault(int(i), {})[name] = z[key]
  return [out[i] for i in sorted(out)]


def real_fraction(batches: Sequence[dict], prompt_length: int, packed: bool) -> float:
  """Real positions (prompt + tokens) over all encoder positions computed."""
  import numpy as np
  real = total = 0
  for b in batches:
    tokens = b["encoder_input_tokens"]
    if packed:
      real += int(np.sum(b["encoder_segment_ids"] > 0))
      total += tokens.size
    else:
      real += int(np.sum(tokens > 0)) + prompt_length * tokens.shape[0]
      total += tokens.size + prompt_length * tokens.shape[0]
  return real / total


# ------------------------------------------------------------------------------
# The measuring processes.
# ------------------------------------------------------------------------------


def measure_spot(cfg: Config, pack: bool) -> dict:
  """Trains with spot's train step on the converted batches; times after warm-up."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from spot import partitioning, prompts
  from spot.train import optimizers, state as state_lib, trainable as trainable_lib
  from spot.train.models import EncoderDecoderModel
  from spot.train.trainer import make_train_step
  import functools
  batches = load_batches(cfg, pack)
  imports_mib = bench_train.current_rss_mib()
  setup = cfg.setup()
  model = EncoderDecoderModel(setup.config(), functools.partial(
      prompts.PrefixPrompt, length=cfg.prompt_length))
  part = partitioning.Partitioner.create()
  params = state_lib.initial_params(model, cfg.checkpoint, 0)
  tr, frozen = trainable_lib.split(params, "prompt")
  del params
  tr_axes, fr_axes = trainable_lib.split(model.param_axes(), "prompt")
  tr_sh, fr_sh = part.logical_to_mesh(tr_axes, tr), part.logical_to_mesh(fr_axes, frozen)
  tr, frozen = jax.device_put(tr, tr_sh), part.put(frozen, fr_sh, in_place=True)
  tx = optimizers.adafactor(learning_rate=0.3)
  opt_sh = part.optimizer_state_shardings(jax.eval_shape(tx.init, tr), tr_sh, tr)
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(tr)
  rep = part.replicated
  step = part.partition(make_train_step(model, tx),
                        in_shardings=(tr_sh, opt_sh, fr_sh, part.batch_shardings(batches[0]),
                                      rep, rep),
                        out_shardings=(tr_sh, opt_sh, rep), donate_argnums=(0, 1))
  rng = jax.random.PRNGKey(0)
  state = {"tr": tr, "opt": opt_state, "i": 0, "metrics": None}
  del tr, opt_state

  def run(batch):
    state["tr"], state["opt"], state["metrics"] = step(
        state["tr"], state["opt"], frozen, part.shard_batch(batch),
        jnp.asarray(state["i"], jnp.int32), rng)
    state["i"] += 1
    jax.block_until_ready((state["tr"], state["metrics"]))

  compile_start = time.perf_counter()
  seen = set()
  for b in batches:  # every distinct shape compiled (and run once) before timing
    shape = b["encoder_input_tokens"].shape
    if shape not in seen:
      seen.add(shape)
      run(b)
  compile_s = time.perf_counter() - compile_start
  rss_after_compile = bench_train.peak_rss_mib()
  timed = batches[cfg.warmup:]
  times = bench_train.timed_steps(lambda it=iter(timed): run(next(it)), len(timed))
  metrics = state["metrics"]
  label = "(b) spot packed" if pack else "(a) spot unpacked"
  if cfg.remat != "none":
    label += f", remat {cfg.remat}"
  return {"label": f"{label}, {setup.model}, prompt {cfg.prompt_length}, inputs "
                   f"{cfg.input_length}, {cfg.examples_per_step} examples/step",
          **bench_train.summarize(times), "examples_per_step": cfg.examples_per_step,
          "rows": [int(b["encoder_input_tokens"].shape[0]) for b in timed],
          "shapes_compiled": len(seen), "compile_and_first_s": compile_s,
          "peak_rss_after_compile_mib": rss_after_compile,
          "real_token_fraction": real_fraction(timed, cfg.prompt_length, pack),
          "peak_rss_mib": bench_train.peak_rss_mib(), "imports_mib": imports_mib,
          "loss": float(metrics["loss"]) / max(float(metrics["num_tokens"]), 1.0)}


def measure_peft(cfg: Config) -> dict:
  """PEFT prompt tuning on the same examples, dynamically padded per batch."""
  import numpy as np
  import torch
  from peft import PromptTuningConfig, TaskType, get_peft_model
  from transformers import DataCollatorForSeq2Seq, T5ForConditionalGeneration, T5Tokenizer
  from transformers.optimization import Adafactor
  examples = json.loads(pathlib.Path(cfg.examples_file).read_text())
  imports_mib = bench_train.current_rss_mib()
  torch.manual_seed(0)
  model = T5ForConditionalGeneration.from_pretrained(cfg.hf_dir, dtype=torch.float32,
                                                     dropout_rate=0.0)
  model = get_peft_model(model, PromptTuningConfig(
      task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=cfg.prompt_length,
      num_transformer_submodules=1))
  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  opt = Adafactor(params, lr=0.3, scale_parameter=False, relative_step=False,
                  warmup_init=False, decay_rate=-0.8, clip_threshold=1.0, weight_decay=1e-5)
  # The examples are token ids already: the collator's tokenizer only pads (id 0, right).
  collate = DataCollatorForSeq2Seq(T5Tokenizer(vocab_file=cfg.spm), model=None,
                                   padding="longest", label_pad_token_id=-100,
                                   return_tensors="pt")
  e = cfg.examples_per_step
  batches = [collate([{"input_ids": i, "attention_mask": [1] * len(i), "labels": t}
                      for i, t in zip(examples["inputs"][s * e:(s + 1) * e],
                                      examples["targets"][s * e:(s + 1) * e])])
             for s in range(cfg.warmup + cfg.steps)]
  losses = []

  def run(b):
    loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                 labels=b["labels"]).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(float(loss.detach()))

  for b in batches[:cfg.warmup]:
    run(b)
  timed = batches[cfg.warmup:]
  times = bench_train.timed_steps(lambda it=iter(timed): run(next(it)), len(timed))
  real = sum(int(b["attention_mask"].sum()) + cfg.prompt_length * b["input_ids"].shape[0]
             for b in timed)
  total = sum(b["input_ids"].numel() + cfg.prompt_length * b["input_ids"].shape[0]
              for b in timed)
  return {"label": f"(c) PEFT prompt tuning (PyTorch), dynamic padding, prompt "
                   f"{cfg.prompt_length}, {e} examples/step",
          **bench_train.summarize(times), "examples_per_step": e,
          "real_token_fraction": real / total,
          "padded_lengths": [int(b["input_ids"].shape[1]) for b in timed],
          "peak_rss_mib": bench_train.peak_rss_mib(), "imports_mib": imports_mib,
          "loss": losses[-1]}


def measure_eval(cfg: Config, bucketed: bool) -> dict:
  """Scores every example's target (rank classification's per-candidate log-likelihood)
  with `spot.train.evaluation.score_examples`: fixed-length batches in input order,
  or batches sorted by length and cut to power-of-two lengths. Timed on a second
  pass, after the first compiled every shape."""
  import functools
  import numpy as np
  from spot import prompts
  from spot.train import evaluation, state as state_lib
  from spot.train.models import EncoderDecoderModel
  batches = load_batches(cfg, pack=False)
  features = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  imports_mib = bench_train.current_rss_mib()
  setup = cfg.setup()
  model = EncoderDecoderModel(setup.config(), functools.partial(
      prompts.PrefixPrompt, length=cfg.prompt_length))
  params = state_lib.initial_params(model, cfg.checkpoint, 0)
  score = lambda: evaluation.score_examples(model, params, features, cfg.examples_per_step,
                                            by_length=bucketed)
  score()  # compiles every shape
  start = time.perf_counter()
  scores = score()
  seconds = time.perf_counter() - start
  n = len(features["encoder_input_tokens"])
  kind = "bucketed by length" if bucketed else "fixed length"
  return {"label": f"scoring (rank classification), {kind}, {n} examples, batch "
                   f"{cfg.examples_per_step}", "seconds": seconds,
          "examples_per_s": n / seconds, "scores": np.asarray(scores).tolist(),
          "peak_rss_mib": bench_train.peak_rss_mib(), "imports_mib": imports_mib}


# ------------------------------------------------------------------------------
# The parent: data once, then each side in its own process.
# ------------------------------------------------------------------------------


def _child(kind: str, cfg: Config, threads: Optional[int], malloc: str = "tuned") -> dict:
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--_child", kind,
         "--_config", json.dumps(dataclasses.asdict(cfg)), "--malloc", malloc]
  if threads:
    cmd += ["--threads", str(threads)]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
  if out.returncode:
    raise SystemExit(f"bench_packing: the {kind} measurement failed:\n{out.stderr[-4000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def _line(m: dict) -> str:
  eps = m["examples_per_step"] / m["step_s"]
  return (f"{m['label']}: {1000 * m['step_s']:.0f} ms/step, real-token fraction "
          f"{100 * m['real_token_fraction']:.1f}%, {eps:.2f} examples/s, "
          f"peak RSS {m['peak_rss_mib']:.1f} MiB")


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
  p.add_argument("--spm", default=None, help="SentencePiece model (default: "
                 "DATA_DIR/t5_vocab/spiece.model)")
  p.add_argument("--model", default="t5_1_1_small")
  p.add_argument("--examples_per_step", type=int, default=16)
  p.add_argument("--steps", type=int, default=4, help="timed steps per side")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps per side")
  p.add_argument("--input_length", type=int, default=512)
  p.add_argument("--target_length", type=int, default=8)
  p.add_argument("--prompt_length", type=int, default=100)
  p.add_argument("--override", action="append", default=[],
                 help="T5Config field=value, e.g. num_encoder_layers=2 (repeatable)")
  p.add_argument("--remat", default="none", choices=["none", "minimal", "full"],
                 help="spot's remat policy (T5Config.remat_policy) for the spot sides")
  p.add_argument("--malloc", default="tuned", choices=["default", "tuned"],
                 help="glibc malloc settings of spot's measuring processes (spot.runtime)")
  p.add_argument("--sides", default="unpacked,packed,packed_remat,peft",
                 help="comma-separated subset of unpacked,packed,packed_remat (packed with "
                      "remat full: less memory for more compute),peft")
  p.add_argument("--eval", action="store_true", help="also time fixed vs bucketed scoring")
  p.add_argument("--threads", type=int, default=None)
  p.add_argument("--json", action="store_true", help="print every figure as JSON at the end")
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--_config", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args._child:
    bench_train.limit_threads(args.threads)
    bench_train.runtime.configure_host_memory(
        {"SPOT_HOST_MALLOC": "default" if args._child == "peft" else args.malloc})
    raw = json.loads(args._config)
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    if args._child == "prepare":
      import bench_peft
      count = cfg.examples_per_step * (cfg.warmup + cfg.steps)
      examples = draw_examples(cfg, count)
      pathlib.Path(cfg.examples_file).write_text(json.dumps(examples))
      save_batches(cfg, examples)
      bench_peft.prepare_checkpoints(cfg.setup(), pathlib.Path(cfg.hf_dir).parent)
      result: Any = {"ok": True}
    elif args._child == "peft":
      result = measure_peft(cfg)
    elif args._child.startswith("eval_"):
      result = measure_eval(cfg, args._child == "eval_bucketed")
    else:
      result = measure_spot(cfg, pack=args._child == "packed")
    print(json.dumps(result), flush=True)
    return
  sides = [s for s in args.sides.split(",") if s]
  unknown = set(sides) - {"unpacked", "packed", "packed_remat", "peft"}
  if unknown:
    p.error(f"--sides: unknown {sorted(unknown)}; choose from unpacked,packed,packed_remat,peft")
  spm = args.spm or str(pathlib.Path(args.data_dir) / "t5_vocab" / "spiece.model")
  results: dict[str, Any] = {}
  with tempfile.TemporaryDirectory(prefix="bench_packing_") as tmp:
    cfg = Config(data_dir=args.data_dir, spm=spm, model=args.model,
                 input_length=args.input_length, target_length=args.target_length,
                 prompt_length=args.prompt_length, examples_per_step=args.examples_per_step,
                 steps=args.steps, warmup=args.warmup, overrides=tuple(args.override),
                 remat=args.remat,
                 checkpoint=str(pathlib.Path(tmp) / "t5x"), hf_dir=str(pathlib.Path(tmp) / "hf"),
                 examples_file=str(pathlib.Path(tmp) / "examples.json"))
    _child("prepare", cfg, args.threads)
    for side in sides:
      side_cfg = dataclasses.replace(cfg, remat="full") if side == "packed_remat" else cfg
      results[side] = _child("packed" if side == "packed_remat" else side, side_cfg,
                             args.threads, args.malloc)
      if side == "packed_remat":
        results[side]["label"] = results[side]["label"].replace("(b)", "(b')")
      print(_line(results[side]), flush=True)
    if args.eval:
      for kind in ("eval_fixed", "eval_bucketed"):
        results[kind] = _child(kind, cfg, args.threads)
        m = results[kind]
        print(f"{m['label']}: {m['examples_per_s']:.2f} examples/s, "
              f"peak RSS {m['peak_rss_mib']:.1f} MiB", flush=True)
  eps = {k: results[k]["examples_per_step"] / results[k]["step_s"] for k in sides}
  ratios = {}
  if "packed" in eps and "unpacked" in eps:
    ratios["packed_vs_unpacked"] = eps["packed"] / eps["unpacked"]
    print(f"(b)/(a) spot packed / unpacked examples/s: {ratios['packed_vs_unpacked']:.2f}x "
          "(target >= 3x)", flush=True)
  if "packed" in eps and "peft" in eps:
    ratios["packed_vs_peft"] = eps["packed"] / eps["peft"]
    ratios["packed_vs_peft_rss"] = results["packed"]["peak_rss_mib"] / results["peft"]["peak_rss_mib"]
    print(f"(b)/(c) spot packed / PEFT examples/s: {ratios['packed_vs_peft']:.2f}x "
          "(target >= 1.5x)", flush=True)
    print(f"(b)/(c) peak RSS: {ratios['packed_vs_peft_rss']:.2f}x (target <= 1.0x)", flush=True)
  if "packed_remat" in eps and "peft" in eps:
    ratios["packed_remat_vs_peft"] = eps["packed_remat"] / eps["peft"]
    ratios["packed_remat_vs_peft_rss"] = (results["packed_remat"]["peak_rss_mib"]
                                          / results["peft"]["peak_rss_mib"])
    print(f"(b')/(c) spot packed, remat full / PEFT examples/s: "
          f"{ratios['packed_remat_vs_peft']:.2f}x (target >= 1.5x)", flush=True)
    print(f"(b')/(c) peak RSS: {ratios['packed_remat_vs_peft_rss']:.2f}x (target <= 1.0x)",
          flush=True)
  if "packed" in results:
    print(f"(b) real-token fraction: {100 * results['packed']['real_token_fraction']:.1f}% "
          "(target >= 85%)", flush=True)
  if args.eval:
    a, b = results["eval_fixed"], results["eval_bucketed"]
    ratios["eval_bucketed_vs_fixed"] = b["examples_per_s"] / a["examples_per_s"]
    import numpy as np
    diff = float(np.max(np.abs(np.asarray(a["scores"]) - np.asarray(b["scores"]))))
    ratios["eval_max_score_difference"] = diff
    print(f"bucketed / fixed-length scoring examples/s: {ratios['eval_bucketed_vs_fixed']:.2f}x "
          f"(same scores: max |difference| {diff:.2e})", flush=True)
  if args.json:
    for m in results.values():
      m.pop("scores", None)
    print(json.dumps({"config": {k: v for k, v in dataclasses.asdict(cfg).items()
                                 if k not in ("checkpoint", "hf_dir", "examples_file")},
                      "results": results, "ratios": ratios}), flush=True)


if __name__ == "__main__":
  main()
