"""SeqIO datasets for training, evaluation and inference.

`DatasetConfig` mirrors T5X's `utils.DatasetConfig`. `PromptFeatureConverter`
is SeqIO's unpacked encoder-decoder converter that also carries the scalar
per-example prompt features (`prompt_id`, `language_id`, `task_id`) and knows
the prompt length, so the encoder sees `prompt_length + inputs` positions.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from spot import errors
from spot.train.models import PROMPT_FEATURES

DataDir = Union[str, Sequence[str], None]
_FEATURES = ("inputs", "targets")


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """Which SeqIO task or mixture to read and how to batch it.

  Attributes:
    task_feature_lengths: {"inputs": N, "targets": M} (TASK_FEATURE_LENGTHS);
      None only for eval / infer, which then use the data's longest example.
    data_dir: DATA_DIR, one directory or a list searched in order: spot's
      tasks read the local files found there instead of TFDS.
    vocabulary: the model's vocabulary (SPM_PATH); spot's tasks tokenize with
      it, so the model and the data never disagree. None keeps each task's.
  """

  mixture_or_task_name: str
  task_feature_lengths: Optional[Mapping[str, int]]
  split: str = "train"
  batch_size: int = 32
  shuffle: bool = True
  seed: Optional[int] = 0
  use_cached: bool = False
  module: Optional[str] = None
  data_dir: DataDir = None
  vocabulary: Optional[seqio.Vocabulary] = None

  def __post_init__(self):
    check_feature_lengths(self.task_feature_lengths)
    if not isinstance(self.batch_size, int) or self.batch_size <= 0:
      raise errors.UsageError(f"BATCH_SIZE={self.batch_size!r} must be a positive integer, "
                              "e.g. --gin.BATCH_SIZE=32.")
    if isinstance(self.data_dir, (list, tuple)):
      object.__setattr__(self, "data_dir", tuple(self.data_dir))


def check_feature_lengths(lengths: Optional[Mapping[str, int]]) -> None:
  """TASK_FEATURE_LENGTHS must give positive `inputs` and `targets` lengths (or be None)."""
  if lengths is None:
    return
  example = "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 8}\""
  if not isinstance(lengths, Mapping):
    raise errors.UsageError(f"TASK_FEATURE_LENGTHS={lengths!r} must be a dict of lengths, "
                            f"e.g. {example}.")
  missing = [k for k in _FEATURES if k not in lengths]
  if missing:
    raise errors.UsageError(
        f"TASK_FEATURE_LENGTHS={dict(lengths)!r} has no {' or '.join(map(repr, missing))} "
        f"length; the encoder-decoder needs both, e.g. {example}.")
  bad = {k: lengths[k] for k in _FEATURES
         if not isinstance(lengths[k], int) or isinstance(lengths[k], bool) or lengths[k] <= 0}
  if bad:
    raise errors.UsageError(f"TASK_FEATURE_LENGTHS={dict(lengths)!r}: {bad} must be positive "
                            f"integers, e.g. {example}.")


class PromptFeatureConverter(seqio.EncDecFeatureConverter):
  """Unpacked enc-dec conversion plus scalar prompt features.

  Args:
    prompt_length: positions the model's prompt adds in front of the inputs
      (reported by `encoder_length`; the token features are unaffected).
    pack: must be False: a prompt is prepended per example, so packing several
      examples into one row would give all but the first no prompt.
  """

  def __init__(self, prompt_length: int = 0, pack: bool = False,
               prompt_features: Sequence[str] = (), **kwargs):
    if pack:
      raise ValueError("Packing is not supported with prompts: every example needs its own "
                       "prompt prefix. Use pack=False.")
    unknown = set(prompt_features) - set(PROMPT_FEATURES)
    if unknown:
      raise ValueError(f"Unknown prompt features {sorted(unknown)}; known: {PROMPT_FEATURES}.")
    super().__init__(pack=False, **kwargs)
    self.prompt_length = prompt_length
    self.prompt_features = tuple(prompt_features)
    # The model features this instance emits: the enc-dec ones plus scalar ids.
    self.MODEL_FEATURES = dict(type(self).MODEL_FEATURES, **{
        name: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=0)
        for name in self.prompt_features})

  def _convert_example(self, features):
    d = super()._convert_example(features)
    for name in self.prompt_features:
      source = _source_feature(features, name)
      if source is None:
        raise ValueError(f"The model's prompt needs the integer example feature {name!r} "
                         f"(or {_ALIASES.get(name)!r}); the task gives {sorted(features)}.")
      d[name] = tf.cast(tf.reshape(features[source], []), tf.int32)
    return d

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    lengths.update({name: 1 for name in self.prompt_features})  # scalars: not length-checked
    return lengths

  def encoder_length(self, task_feature_lengths: Mapping[str, int]) -> int:
    return self.prompt_length + int(task_feature_lengths["inputs"])


# Integer example features that may carry a prompt id under a shorter name
# (xGen tasks give `language` and `task` ids; GLUE's `task` is a string name).
_ALIASES = {"language_id": "language", "task_id": "task"}


def _source_feature(features, name: str) -> Optional[str]:
  for key in (name, _ALIASES.get(name)):
    if key and key in features and features[key].dtype.is_integer:
      return key
  return None


def passthrough_features(names) -> list[str]:
  """Example features a mixture must keep for the prompt (ids and their aliases)."""
  out = []
  for n in names:
    out += [n] + ([_ALIASES[n]] if n in _ALIASES else [])
  return out


def get_task(name: str, module: Optional[str] = None, data_dir: DataDir = None,
             vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task | seqio.Mixture:
  """Looks up a task or mixture, importing `module` (and spot.tasks) first.

  With `data_dir` (DATA_DIR), spot's tasks are re-registered to read local
  files (GLUE TSV / SuperGLUE JSONL / WikiLingua JSONL layouts) instead of TFDS.
  With `vocabulary` (the model's, SPM_PATH), spot's tasks tokenize with it.

  Raises:
    UsageError: the name is not registered (the message lists close names).
  """
  import importlib
  if module:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise errors.UsageError(f"MIXTURE_OR_TASK_MODULE={module!r} cannot be imported ({e}); "
                              "give an importable module, e.g. 'spot.tasks'.") from e
  import spot.tasks as spot_tasks
  if data_dir:
    spot_tasks.register_local(data_dir, vocabulary)
  if vocabulary is not None:
    spot_tasks.use_vocabulary(vocabulary)
  if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
    return seqio.get_mixture_or_task(name)
  known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  raise errors.UsageError(
      f"Unknown task or mixture MIXTURE_OR_TASK_NAME={name!r}; did you mean "
      f"{', '.join(close_names(name, known)) or 'one of ' + ', '.join(known[:10])}? Import the "
      "module that registers it with MIXTURE_OR_TASK_MODULE.")


def close_names(name: str, known: Sequence[str], n: int = 5) -> list[str]:
  """Registered names close to `name` (edit distance first, then shared last word)."""
  close = difflib.get_close_matches(name, known, n=n, cutoff=0.6)
  tail = name.split("_")[-1]
  close += [k for k in known if tail and tail in k and k not in close]
  return close[:n]


def get_dataset(cfg: DatasetConfig, converter: seqio.FeatureConverter, *,
                shard_index: int = 0, num_shards: int = 1, num_epochs: Optional[int] = None,
                drop_remainder: bool = True, skip_batches: int = 0,
                prompt_features: tuple[str, ...] = ()) -> tf.data.Dataset:
  """A batched dataset of model features for this host's shard.

  The order is a function of `cfg.seed` only, so a resumed run that skips the
  batches it already consumed sees exactly the batches it would have seen.
  """
  if cfg.batch_size % num_shards:
    raise errors.UsageError(f"batch_size {cfg.batch_size} is not divisible by the {num_shards} "
                     "data shards (hosts); choose a multiple.")
  task = get_task(cfg.mixture_or_task_name, cfg.module, cfg.data_dir, cfg.vocabulary)
  if cfg.task_feature_lengths is None:
    raise errors.UsageError("TASK_FEATURE_LENGTHS is not set; give the lengths, e.g. "
                            "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 8}\".")
  kwargs = {}
  if isinstance(task, seqio.Mixture) and prompt_features:
    kwargs["passthrough_features"] = passthrough_features(prompt_features)
  ds = task.get_dataset(sequence_length=dict(cfg.task_feature_lengths), split=cfg.split,
                        use_cached=cfg.use_cached, shuffle=cfg.shuffle, seed=cfg.seed,
                        shard_info=seqio.ShardInfo(shard_index, num_shards),
                        num_epochs=num_epochs, **kwargs)
  ds = converter(ds, dict(cfg.task_feature_lengths))
  ds = ds.batch(cfg.batch_size // num_shards, drop_remainder=drop_remainder)
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.prefetch(2)


def iterate(ds: tf.data.Dataset, what: str) -> Iterator[dict[str, np.ndarray]]:
  """numpy batches; an empty dataset fails with a clear error."""
  seen = False
  for batch in ds.as_numpy_iterator():
    seen = True
    yield batch
  if not seen:
    raise ValueError(f"Dataset {what} is empty: check the split name, the data directory and "
                     "that examples fit TASK_FEATURE_LENGTHS.")


def max_feature_lengths(cfg: DatasetConfig, num_examples: Optional[int] = None
                        ) -> dict[str, int]:
  """The longest tokenized `inputs` / `targets` (EOS included) of the split's
  first `num_examples` examples (all if None): eval's default lengths, used
  when TASK_FEATURE_LENGTHS is not set."""
  task = get_task(cfg.mixture_or_task_name, cfg.module, cfg.data_dir, cfg.vocabulary)
  ds = task.get_dataset(sequence_length=None, split=cfg.split, shuffle=False,
                        use_cached=cfg.use_cached, num_epochs=1)
  if num_examples:
    ds = ds.take(num_examples)
  lengths = {k: 0 for k in _FEATURES}
  for ex in ds.as_numpy_iterator():
    for k in _FEATURES:
      if k in ex:
        lengths[k] = max(lengths[k], int(np.shape(ex[k])[0]))
  if not lengths["targets"]:
    raise errors.DataError(f"Split {cfg.split!r} of {cfg.mixture_or_task_name!r} has no "
                           "examples with targets; check SPLIT and DATA_DIR.")
  return {k: max(v, 1) for k, v in lengths.items()}
