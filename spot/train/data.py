"""SeqIO datasets for training, evaluation and inference.

`DatasetConfig` mirrors T5X's `utils.DatasetConfig`. `PromptFeatureConverter`
is SeqIO's encoder-decoder converter that also carries the per-example prompt
features (`prompt_id`, `language_id`, `task_id`) and knows the prompt length,
so the encoder sees `prompt_length + inputs` positions; packed, it reserves
each example's prompt positions inside the row.

The split names "dev1" and "dev2" work wherever a split does: two disjoint,
seeded, label-stratified halves of a task's validation split (`dev_halves`),
for selecting checkpoints on one half and reporting on the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from spot import errors
from spot.train.config import DEV1, DEV2
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
    pack: several examples per row, each with its own prompt (PACK; T5X's
      DatasetConfig.pack). `batch_size` then counts rows, as in T5X.
    seed: the data order (DATA_SEED).
    dev_split_seed / dev_source_split: with split "dev1" or "dev2", the seed
      of the halves and the split they divide (see `dev_halves`).
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
  pack: bool = False
  dev_split_seed: int = 0
  dev_source_split: Optional[str] = None

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
  """SeqIO's enc-dec conversion plus the prompt's features, unpacked or packed.

  Unpacked (the default), each row is one example: the token features are
  SeqIO's and the model adds the P prompt positions in front of the inputs;
  `prompt_id` / `language_id` / `task_id` are scalars (rank 0).

  Packed (`pack=True`), each example's inputs first get P placeholder tokens
  in front, so the prompt counts in the example's share of the row; its ids
  become per-token features over those P + len(inputs) positions; then SeqIO
  packs (`trim_and_pack_dataset`). The rows carry SeqIO's
  `encoder_segment_ids`, `encoder_positions`, `decoder_segment_ids` and
  `decoder_positions`, encoder rows are P + TASK_FEATURE_LENGTHS["inputs"]
  long (the unpacked encoder length, so the same lengths serve both), and the
  model writes each segment's prompt over its positions 0..P-1. An example
  longer than its share is truncated as SeqIO truncates; `truncated_examples`
  counts them (and a warning is logged).

  Args:
    prompt_length: positions the model's prompt takes in front of the inputs.
    pack: pack several examples per row (SeqIO's packing, a prompt per example).
    prompt_features: the prompt's id features to carry (see PROMPT_FEATURES).
    placeholder_id: the token id written at the prompt positions of a packed
      row (any nonzero id: the prompt replaces its embedding).
    pack_window: packed only: examples are taken in windows of this many and
      put in first-fit-decreasing order before SeqIO's in-order packing, so
      short examples fill the room long ones leave (0 or 1: SeqIO's order).
      The order is a function of the input order, so a resumed run still
      builds the same rows.
    packed_targets_length: packed only: decoder positions per row. Each
      example's targets are still cut to TASK_FEATURE_LENGTHS["targets"]; a
      row holds several. Default: that length times `max_segments`, so the
      decoder does not limit how many examples share a row.
  """

  def __init__(self, prompt_length: int = 0, pack: bool = False,
               prompt_features: Sequence[str] = (), placeholder_id: int = 1,
               pack_window: int = 64, packed_targets_length: Optional[int] = None, **kwargs):
    unknown = set(prompt_features) - set(PROMPT_FEATURES)
    if unknown:
      raise ValueError(f"Unknown prompt features {sorted(unknown)}; known: {PROMPT_FEATURES}.")
    if prompt_length < 0:
      raise ValueError(f"prompt_length={prompt_length} must be 0 or more (PROMPT_LENGTH).")
    if pack and placeholder_id <= 0:
      raise ValueError(f"placeholder_id={placeholder_id} must be a nonzero token id: SeqIO's "
                       "packing reads a zero as padding.")
    super().__init__(pack=pack, **kwargs)
    self.prompt_length = prompt_length
    self.prompt_features = tuple(prompt_features)
    self.placeholder_id = placeholder_id
    if pack_window < 0 or (packed_targets_length is not None and packed_targets_length < 1):
      raise ValueError(f"pack_window={pack_window} must be 0 or more and packed_targets_length="
                       f"{packed_targets_length} positive (or None for the default).")
    self.pack_window = pack_window
    self.packed_targets_length = packed_targets_length
    self._truncated = None  # a host counter, made when packing (TF only reads data)
    # The model features this instance emits: the enc-dec ones plus the ids
    # (scalars per example, or per-token when packed).
    self.MODEL_FEATURES = dict(type(self).MODEL_FEATURES, **{
        name: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=1 if pack else 0)
        for name in self.prompt_features})

  @property
  def truncated_examples(self) -> int:
    """Examples this converter has truncated to their share of a packed row so far."""
    return 0 if self._truncated is None else int(self._truncated.numpy())

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    if not self.pack:
      return super()._convert_features(ds, task_feature_lengths)
    lengths = self._packed_lengths(task_feature_lengths)
    if self._truncated is None:
      with tf.device("/CPU:0"):
        self._truncated = tf.Variable(0, dtype=tf.int64, trainable=False)
    example_lengths = dict(lengths, targets=int(task_feature_lengths["targets"]))
    ds = ds.map(lambda ex: self._reserve_prompt(ex, example_lengths),
                num_parallel_calls=tf.data.AUTOTUNE)
    if self.pack_window > 1:
      ds = first_fit_order(ds, self.pack_window, lengths["inputs"])
    ds = seqio.utils.trim_and_pack_dataset(ds, lengths, self._use_custom_packing_ops)
    return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

  def _packed_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    """What SeqIO packs: the prompt-prefixed inputs, the targets and per-token ids."""
    encoder = self.encoder_length(task_feature_lengths)
    targets = self.packed_targets_length or (
        int(task_feature_lengths["targets"]) * self.max_segments(task_feature_lengths))
    lengths = {"inputs": encoder, "targets": targets}
    lengths.update({name: encoder for name in self.prompt_features})
    return lengths

  def max_segments(self, task_feature_lengths: Mapping[str, int]) -> int:
    """Segments a packed row makes decoder room for: as many examples of at
    least 16 input tokens as fit in the encoder row, at most 16."""
    encoder = self.encoder_length(task_feature_lengths)
    return max(1, min(16, encoder // (self.prompt_length + 16)))

  def _reserve_prompt(self, features, lengths: Mapping[str, int]):
    """One example: P placeholders before the inputs, ids as per-token features
    (shifted by one so SeqIO's packing, which drops zeros, keeps id 0)."""
    inputs = tf.cast(features["inputs"], tf.int32)
    inputs = tf.concat([tf.fill([self.prompt_length], self.placeholder_id), inputs], axis=0)
    targets = features["targets"]
    too_long = tf.logical_or(tf.size(inputs) > lengths["inputs"],
                             tf.size(targets) > lengths["targets"])
    # Each example is cut to its own share (as SeqIO trims) before a row takes several.
    inputs, targets = inputs[:lengths["inputs"]], targets[:lengths["targets"]]
    count = self._truncated.assign_add(tf.cast(too_long, tf.int64))
    count = tf.cond(too_long, lambda: tf.py_function(_warn_truncated, [count, lengths["inputs"]],
                                                     tf.int64), lambda: count)
    with tf.control_dependencies([count]):
      out = {"inputs": tf.identity(inputs), "targets": targets}
    for name in self.prompt_features:
      out[name] = tf.fill(tf.shape(inputs), self._scalar_id(features, name) + 1)
    return out

  def _scalar_id(self, features, name: str):
    source = _source_feature(features, name)
    if source is None:
      raise ValueError(f"The model's prompt needs the integer example feature {name!r} "
                       f"(or {_ALIASES.get(name)!r}); the task gives {sorted(features)}.")
    return tf.cast(tf.reshape(features[source], []), tf.int32)

  def _convert_example(self, features):
    d = super()._convert_example(features)
    for name in self.prompt_features:
      if self.pack:  # per-token, shifted by one in _reserve_prompt; padding -> 0
        d[name] = tf.maximum(tf.cast(features[name], tf.int32) - 1, 0)
      else:
        d[name] = self._scalar_id(features, name)
    return d

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    if self.pack:
      encoder = self.encoder_length(task_feature_lengths)
      packed = self._packed_lengths(task_feature_lengths)
      lengths = dict(super().get_model_feature_lengths(
          dict(task_feature_lengths, inputs=encoder, targets=packed["targets"])))
      lengths.update({name: encoder for name in self.prompt_features})
      return lengths
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    lengths.update({name: 1 for name in self.prompt_features})  # scalars: not length-checked
    return lengths

  def encoder_length(self, task_feature_lengths: Mapping[str, int]) -> int:
    """Encoder positions the model sees: P + inputs (a packed row is as long)."""
    return self.prompt_length + int(task_feature_lengths["inputs"])


def first_fit_indices(lengths: np.ndarray, row_length: int) -> np.ndarray:
  """The order that makes in-order packing first-fit decreasing.

  Examples, longest first, each go into the first row with room; the rows are
  then emitted one after the other, so SeqIO's packer (which appends while an
  example fits) rebuilds them (or fills them further).

  Args:
    lengths: [N] positions each example takes (prompt included).
    row_length: positions per packed row.
  Returns:
    [N] int64 indices into the window.
  """
  bins: list[list[int]] = []
  room: list[int] = []
  for i in np.argsort(-np.asarray(lengths), kind="stable"):
    need = min(int(lengths[i]), row_length)
    for b, free in enumerate(room):
      if need <= free:
        bins[b].append(int(i))
        room[b] -= need
        break
    else:
      bins.append([int(i)])
      room.append(row_length - need)
  return np.asarray([i for b in bins for i in b], np.int64)


def first_fit_order(ds: tf.data.Dataset, window: int, row_length: int) -> tf.data.Dataset:
  """`ds` reordered window by window so that in-order packing fills rows first-fit."""
  def reorder(batch):
    lengths = batch["inputs"].row_lengths()
    order = tf.numpy_function(lambda n: first_fit_indices(n, row_length), [lengths], tf.int64)
    order.set_shape([None])
    return tf.data.Dataset.from_tensor_slices({k: tf.gather(v, order) for k, v in batch.items()})
  return ds.ragged_batch(window).flat_map(reorder)


def _warn_truncated(count, row_length) -> int:
  """Logs how many examples packing truncated so far (at 1, 10, 100, ...)."""
  n = int(count)
  if n > 0 and 10 ** int(np.log10(n)) == n:
    logging.warning("Packing truncated %d example(s) longer than their share of a %d-position "
                    "row (prompt included); raise TASK_FEATURE_LENGTHS to keep them whole.",
                    n, int(row_length))
  return count


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
  ds = _task_dataset(cfg, task, sequence_length=dict(cfg.task_feature_lengths),
                     split=cfg.split, use_cached=cfg.use_cached, shuffle=cfg.shuffle,
                     seed=cfg.seed, shard_info=seqio.ShardInfo(shard_index, num_shards),
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
  ds = _task_dataset(cfg, task, sequence_length=None, split=cfg.split, shuffle=False,
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


# ------------------------------------------------------------------------------
# dev1 / dev2: two halves of a validation split.
# ------------------------------------------------------------------------------

DEV_SPLITS = (DEV1, DEV2)
# Targets that all read as numbers with more distinct values than this are a
# regression (STS-B): halves are stratified by the sorted value instead of by string.
_MAX_CLASSES = 20


def dev_halves(targets: Sequence[Any], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The sorted example indices of dev1 and dev2: a seeded, stratified halving.

  Classification (target strings): within each distinct target (in sorted
  order) the examples are shuffled with `seed` and dealt alternately, the
  first to the half that is smaller so far, so per label the halves differ by
  at most one example, and in total by at most one. Regression (all targets
  numeric, more than 20 distinct values): examples sorted by value are taken
  in consecutive pairs and each pair is split at random, i.e. stratified by
  sorted quantile.

  Args:
    targets: [N] one target per example (str, bytes, numbers or token tuples).
    seed: DEV_SPLIT_SEED; the same seed and targets give the same halves in
      any process.
  Returns:
    (dev1 [ceil or floor N/2], dev2) int64 index arrays, disjoint, covering 0..N-1.
  """
  rng = np.random.default_rng(seed)
  keys = [_target_key(t) for t in targets]
  values = _numeric(keys)
  halves: tuple[list[int], list[int]] = ([], [])
  if values is not None and len(set(values)) > _MAX_CLASSES:
    order = sorted(range(len(keys)), key=lambda i: (values[i], i))
    for j in range(0, len(order), 2):
      pair = order[j:j + 2]
      first = int(rng.integers(2))
      for k, i in enumerate(pair):
        halves[(first + k) % 2].append(i)
  else:
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
      groups.setdefault(k, []).append(i)
    for k in sorted(groups):
      members = list(rng.permutation(groups[k]))
      # The half that is smaller so far takes the odd one out: totals differ by <= 1.
      start = 0 if len(halves[0]) <= len(halves[1]) else 1
      for n, i in enumerate(members):
        halves[(start + n) % 2].append(int(i))
  return tuple(np.asarray(sorted(h), np.int64) for h in halves)  # type: ignore[return-value]


def _target_key(target: Any) -> str:
  if isinstance(target, bytes):
    return target.decode("utf-8", "replace")
  if isinstance(target, np.ndarray):
    return " ".join(map(str, target.tolist())) if target.ndim else str(target.item())
  if isinstance(target, (list, tuple)):
    return " ".join(map(str, target))
  return str(target)


def _numeric(keys: Sequence[str]) -> Optional[list[float]]:
  try:
    return [float(k) for k in keys]
  except ValueError:
    return None


def dev_source_split(task: Any, preferred: Optional[str] = None) -> str:
  """The split dev1/dev2 divide: `preferred` (DEV_SOURCE_SPLIT, else EVAL_SPLIT) when
  the task has it, else "validation", else its first "validation*" split
  (e.g. mnli's "validation_matched")."""
  splits = list(getattr(task, "splits", None) or ())
  for name in (preferred, "validation"):
    if name and name in splits:
      return name
  like = [s for s in splits if s.startswith("validation")]
  if like:
    return like[0]
  raise errors.UsageError(
      f"Task {getattr(task, 'name', task)!r} has no validation split to halve into dev1/dev2 "
      f"(its splits: {splits}); name one with --gin.DEV_SOURCE_SPLIT.")


def _dev_targets(task: Any, source: str, sequence_length: Optional[Mapping[str, int]],
                 use_cached: bool) -> list[Any]:
  """The target of every example of `source`, in the split's (unshuffled) order."""
  ds = task.get_dataset(sequence_length=sequence_length, split=source, shuffle=False,
                        use_cached=use_cached, num_epochs=1)
  key = "targets_pretokenized" if "targets_pretokenized" in ds.element_spec else "targets"
  return [ex for ex in ds.map(lambda ex: ex[key]).as_numpy_iterator()]


def half_dataset(task: Any, split: str, *, split_seed: int = 0,
                 source_split: Optional[str] = None,
                 sequence_length: Optional[Mapping[str, int]] = None, use_cached: bool = False,
                 shuffle: bool = False, seed: Optional[int] = None,
                 shard_info: Optional[seqio.ShardInfo] = None, num_epochs: Optional[int] = 1,
                 **kwargs) -> tf.data.Dataset:
  """The examples of dev1 or dev2 of `task` (a seqio.Task), in the source split's order.

  Reads the source split unshuffled, keeps the half's indices (`dev_halves`
  of its targets), then shards, shuffles (with `seed`) and repeats.
  """
  del kwargs  # Task-only knobs (trim_output_features, ...) keep their defaults
  if split not in DEV_SPLITS:
    raise ValueError(f"split {split!r} is not one of {DEV_SPLITS}.")
  if not isinstance(task, seqio.Task):
    raise errors.UsageError(f"split {split!r} of the mixture {task.name!r}: dev1/dev2 halve a "
                            "task's split; evaluate the mixture's tasks (EvalConfig.tasks).")
  source = dev_source_split(task, source_split)
  targets = _dev_targets(task, source, sequence_length, use_cached)
  keep = dev_halves(targets, split_seed)[DEV_SPLITS.index(split)]
  if not len(keep):
    raise errors.DataError(f"{split} of {task.name!r} is empty: its {source!r} split has "
                           f"{len(targets)} example(s); halving needs at least two.")
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(keep), tf.ones(len(keep), tf.int64)), 0)
  ds = task.get_dataset(sequence_length=sequence_length, split=source, shuffle=False,
                        use_cached=use_cached, num_epochs=1)

  def kept(i, ex):
    del ex
    return table.lookup(i) > 0

  def example(i, ex):
    del i
    return ex

  ds = ds.enumerate().filter(kept).map(example)
  if shard_info is not None and shard_info.num_shards > 1:
    ds = ds.shard(shard_info.num_shards, shard_info.index)
  if shuffle:
    ds = ds.shuffle(len(keep), seed=seed)
  return ds.repeat(num_epochs)


def _task_dataset(cfg: DatasetConfig, task: Any, *, split: str, **kwargs) -> tf.data.Dataset:
  """`task.get_dataset(split=split, ...)`, with "dev1" / "dev2" read as halves."""
  if split in DEV_SPLITS:
    kwargs.pop("passthrough_features", None)
    return half_dataset(task, split, split_seed=cfg.dev_split_seed,
                        source_split=cfg.dev_source_split, **kwargs)
  return task.get_dataset(split=split, **kwargs)


def with_dev_splits(task: seqio.Task, split_seed: int = 0,
                    source_split: Optional[str] = None) -> seqio.Task:
  """A copy of `task` that also has the splits "dev1" and "dev2" (`half_dataset`)."""
  base = type(task)

  class DevHalvesTask(base):  # pylint: disable=missing-class-docstring
    @property
    def splits(self):
      return tuple(base.splits.fget(self)) + DEV_SPLITS

    def get_dataset(self, sequence_length=None, split="train", **kw):
      if split in DEV_SPLITS:
        return half_dataset(task, split, split_seed=split_seed, source_split=source_split,
                            sequence_length=sequence_length, **kw)
      return base.get_dataset(self, sequence_length, split, **kw)

  copy = object.__new__(DevHalvesTask)
  copy.__dict__.update(task.__dict__)
  return copy


@contextlib.contextmanager
def dev_splits_registered(names: Sequence[str], split_seed: int = 0,
                          source_split: Optional[str] = None) -> Iterator[None]:
  """Within the block, the registered tasks `names` also have splits dev1 and dev2.

  For code that looks tasks up by name (seqio.Evaluator); the registry is
  restored on exit, and datasets built inside keep their halves.
  """
  registry = seqio.TaskRegistry._REGISTRY  # pylint: disable=protected-access
  saved = {n: registry[n] for n in names if n in registry}
  try:
    for n, task in saved.items():
      registry[n] = with_dev_splits(task, split_seed, source_split)
    yield
  finally:
    registry.update(saved)
