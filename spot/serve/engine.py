"""The frozen base model and its compiled computations, for rows that each carry a prompt.

`Engine` holds one frozen T5 (parameters on the device), its SentencePiece
vocabulary and the shape buckets the server compiles. A batch of B rows is
run through a `MultiTaskPrompt` of B rows: row i of the prompt table is the
prompt of example i (`prompt_id = arange(B)`), so one forward pass mixes
tasks and the prompt table is a traced argument (new prompts never
recompile). Every (batch, input length) shape the batcher can form is a
bucket; `warm_up` compiles them all before the first request.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from spot import errors
from spot.models import T5Config
from spot.models import config as config_lib
from spot.prompts import modules as prompt_modules
from spot.train.models import EncoderDecoderModel
from spot.train.batching import bucket_lengths

EOS_ID = 1


def bucket(n: int, sizes: Sequence[int]) -> int:
  """The smallest size in `sizes` (ascending) that holds `n`."""
  for size in sizes:
    if n <= size:
      return size
  raise ValueError(f"{n} exceeds the largest bucket {sizes[-1]}.")


@dataclasses.dataclass(frozen=True)
class Decoding:
  """A decoding configuration: the static part of one compiled decode.

  Attributes:
    method: "greedy", "beam" or "sample" (temperature / top-k / top-p).
    max_length: output length in tokens.
    num_decodes: beams ("beam") or samples ("sample"; the best is returned).
    alpha: beam-search brevity penalty.
    temperature / topk / topp: sampling only.
    seed: sampling only: the batch's PRNG seed.
  """

  method: str = "greedy"
  max_length: int = 32
  num_decodes: int = 1
  alpha: float = 0.6
  temperature: float = 1.0
  topk: int = 0
  topp: float = 0.0
  seed: int = 0

  def kwargs(self) -> dict:
    """Keyword arguments of `EncoderDecoderModel.predict_batch_with_aux`."""
    out: dict[str, Any] = dict(method=self.method, max_decode_length=self.max_length)
    if self.method == "beam":
      out.update(num_decodes=self.num_decodes, alpha=self.alpha)
    elif self.method == "sample":
      out.update(num_decodes=self.num_decodes, temperature=self.temperature, topk=self.topk,
                 topp=self.topp)
    return out


@dataclasses.dataclass(frozen=True)
class Shapes:
  """The buckets of a server: batch sizes, input lengths and target lengths (ascending),
  each powers of two up to its maximum (`spot.train.batching.bucket_lengths`)."""

  batch_sizes: tuple[int, ...]
  input_lengths: tuple[int, ...]
  target_lengths: tuple[int, ...]

  @classmethod
  def create(cls, max_batch: int, max_input_length: int, max_target_length: int,
             min_input_length: int = 16, min_target_length: int = 8) -> "Shapes":
    for name, value in (("--max-batch", max_batch), ("--max-input-length", max_input_length),
                        ("--max-target-length", max_target_length)):
      if int(value) < 1:
        raise errors.UsageError(f"{name}={value} must be a positive integer.")
    return cls(bucket_lengths(max_batch, 1),
               bucket_lengths(max_input_length, min(min_input_length, max_input_length)),
               bucket_lengths(max_target_length, min(min_target_length, max_target_length)))

  @property
  def max_input_length(self) -> int:
    return self.input_lengths[-1]

  @property
  def max_target_length(self) -> int:
    return self.target_lengths[-1]


@functools.lru_cache(maxsize=64)
def _model(config: T5Config, prompt_length: int, rows: int) -> EncoderDecoderModel:
  """The model whose prompt is a table of `rows` prompts [rows, prompt_length, D]."""
  prompt = functools.partial(prompt_modules.MultiTaskPrompt, num_prompts=rows,
                             length=prompt_length)
  return EncoderDecoderModel(config, prompt=prompt)


class Engine:
  """A frozen base model on the device, its vocabulary and shape buckets.

  Attributes:
    config: the base model's `T5Config`.
    model_name: the library's name for the base model (e.g. "t5_1_1_tiny").
    vocabulary: a `seqio.Vocabulary` (the base model's SentencePiece model).
    shapes: the compiled buckets.
    default_decoding: what a request without "decoding" gets (warmed up).
    max_decode_length: the longest "max_length" a request may ask for.
  """

  def __init__(self, config: T5Config, params: Mapping[str, Any], vocabulary: Any, *,
               model_name: str, shapes: Shapes, default_decoding: Decoding = Decoding(),
               max_decode_length: Optional[int] = None):
    self.config = config
    self.model_name = model_name
    self.vocabulary = vocabulary
    self.shapes = shapes
    self.default_decoding = default_decoding
    self.max_decode_length = max(int(max_decode_length or 0), default_decoding.max_length)
    base = {k: v for k, v in dict(params).items()}
    encoder = {k: v for k, v in dict(base.get("encoder", {})).items() if k != "prompt"}
    base["encoder"] = encoder
    self._params = jax.device_put(base)

  @property
  def base_params(self) -> dict:
    """The frozen base parameters on the device (no prompt)."""
    return self._params

  # -- text -----------------------------------------------------------------

  def tokenize(self, text: str) -> list[int]:
    """Token ids of `text` followed by EOS (as a SeqIO task with add_eos)."""
    return [int(i) for i in self.vocabulary.encode(text)] + [EOS_ID]

  def detokenize(self, ids: Sequence[int]) -> str:
    """Text of decoded ids, cut at the first EOS (as `spot infer` writes predictions)."""
    ids = [int(i) for i in ids]
    if EOS_ID in ids:
      ids = ids[: ids.index(EOS_ID)]
    return self.vocabulary.decode([i for i in ids if i > 0])

  # -- computation ----------------------------------------------------------

  def _with_prompts(self, prompts: np.ndarray) -> dict:
    """Base parameters with the prompt table [B, P, D] of this batch."""
    encoder = dict(self._params["encoder"], prompt={"prompts": jnp.asarray(prompts)})
    return dict(self._params, encoder=encoder)

  def _rows(self, prompts: Sequence[np.ndarray], tokens: Sequence[Sequence[int]],
            rows: int, length: int) -> tuple[np.ndarray, dict]:
    """Pads n examples to `rows` rows: (prompt table [rows, P, D], batch features)."""
    p, d = prompts[0].shape
    table = np.zeros((rows, p, d), np.float32)
    ids = np.zeros((rows, length), np.int32)
    for i, (prompt, toks) in enumerate(zip(prompts, tokens)):
      table[i] = prompt
      ids[i, :len(toks)] = toks
    return table, {"encoder_input_tokens": ids, "prompt_id": np.arange(rows, dtype=np.int32)}

  def generate(self, prompts: Sequence[np.ndarray], tokens: Sequence[Sequence[int]],
               decoding: Decoding) -> tuple[np.ndarray, np.ndarray]:
    """Decodes n examples, each with its own prompt [P, D] (one P per call).

    Returns token ids [n, max_length] and scores [n], padded to the batch and
    input-length buckets before the (cached) compiled decode.
    """
    n = len(tokens)
    rows = bucket(n, self.shapes.batch_sizes)
    length = bucket(max(len(t) for t in tokens), self.shapes.input_lengths)
    table, batch = self._rows(prompts, tokens, rows, length)
    model = _model(self.config, int(table.shape[1]), rows)
    rng = jax.random.PRNGKey(decoding.seed)
    out, aux = model.predict_batch_with_aux(self._with_prompts(table), batch, rng,
                                            **decoding.kwargs())
    return np.asarray(out)[:n], np.asarray(aux["scores"])[:n]

  def score(self, prompts: Sequence[np.ndarray], tokens: Sequence[Sequence[int]],
            targets: Sequence[Sequence[int]]) -> np.ndarray:
    """Log likelihood [n] of each example's target (T5X's `score_batch`)."""
    n = len(tokens)
    rows = bucket(n, self.shapes.batch_sizes)
    length = bucket(max(len(t) for t in tokens), self.shapes.input_lengths)
    target_length = bucket(max(len(t) for t in targets), self.shapes.target_lengths)
    table, batch = self._rows(prompts, tokens, rows, length)
    padded = np.zeros((rows, target_length), np.int32)
    for i, t in enumerate(targets):
      padded[i, :len(t)] = t
    batch["decoder_target_tokens"] = padded
    model = _model(self.config, int(table.shape[1]), rows)
    return np.asarray(model.score_batch(self._with_prompts(table), batch))[:n]

  def warm_up(self, prompt_lengths: Sequence[int],
              log: Optional[Callable[[str], None]] = None, score: bool = True) -> int:
    """Compiles every (batch, input length) decode of the default decoding and (with
    `score`) every (batch, input length, target length) score, for each prompt length.
    Returns the number of shapes compiled."""
    count, start = 0, time.perf_counter()
    d = self.config.emb_dim
    for p in sorted(set(int(x) for x in prompt_lengths)):
      for rows in self.shapes.batch_sizes:
        prompts = [np.zeros((p, d), np.float32)] * rows
        for length in self.shapes.input_lengths:
          tokens = [[EOS_ID] * length] * rows
          self.generate(prompts, tokens, self.default_decoding)
          count += 1
          for target_length in self.shapes.target_lengths if score else ():
            self.score(prompts, tokens, [[EOS_ID] * target_length] * rows)
            count += 1
    if log:
      log(f"compiled {count} shapes in {time.perf_counter() - start:.1f}s")
    return count


def model_name_of(config: T5Config) -> str:
  """The library name of a published config ("t5_1_1_tiny"), or "<family>_custom"."""
  family, size = config_lib.family_and_size(config)
  return f"{family}_{size}"


def load_engine(base: str, vocabulary: str, *, shapes: Shapes, model_name: Optional[str] = None,
                default_decoding: Decoding = Decoding(), max_decode_length: Optional[int] = None,
                seed: int = 0) -> Engine:
  """An `Engine` on a T5X checkpoint (its config read from the checkpoint's shapes).

  Args:
    base: a T5X checkpoint directory, or "random" for a seeded random base of
      `model_name`'s published config (tests, benchmarks).
    vocabulary: the base model's SentencePiece model file.
    model_name: the library's name of the base model; default: the published
      config with the checkpoint's shapes ("t5_1_1_tiny", ...).
  """
  import seqio
  from spot.checkpoints import describe, infer_config, load_t5x
  from spot.train import state as state_lib
  from flax import traverse_util
  if not epath.Path(vocabulary).exists():
    raise errors.MissingInputError(f"--vocabulary={vocabulary!r} does not exist; give the base "
                                   "model's SentencePiece model file (spiece.model).")
  vocab = seqio.SentencePieceVocabulary(vocabulary, extra_ids=100)
  if base == state_lib.RANDOM_INIT:
    if not model_name:
      raise errors.UsageError("--base random needs --model NAME (a published config such as "
                              "t5_1_1_tiny) to build the random base.")
    config = config_lib.get_config(model_name, dropout_rate=0.0)
    params = state_lib.load_base_params(EncoderDecoderModel(config), base, seed)
    return Engine(config, params, vocab, model_name=model_name, shapes=shapes,
                  default_decoding=default_decoding, max_decode_length=max_decode_length)
  if not epath.Path(base).exists():
    raise errors.MissingInputError(f"--base={base!r} does not exist; point it at the frozen base "
                                   "model's T5X checkpoint (a checkpoint_<step> directory).")
  info = describe(base)
  shapes_tree = traverse_util.unflatten_dict(
      {tuple(k.split("/")): jax.ShapeDtypeStruct(s, np.float32)
       for k, s in info.shapes.items() if not k.startswith("state/")})
  found = infer_config(shapes_tree)
  published = config_lib.match_config(found)
  config = config_lib.get_config(published, dropout_rate=0.0) if published else found
  params = load_t5x(base, config)
  return Engine(config, params, vocab, model_name=model_name or model_name_of(config),
                shapes=shapes, default_decoding=default_decoding,
                max_decode_length=max_decode_length)
