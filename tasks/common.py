"""Shared pieces of the GLUE / SuperGLUE registrations.

Every task is read either from TFDS or from local files in the official
layouts. Both sources yield the same raw features (TFDS's names and dtypes), so
one text-to-text preprocessor per task serves both. The text formats are the
T5 paper's (Raffel et al., 2020): "<task> <field>: <text> ..." -> label word.

Nothing here reads data or touches the network at import or registration
time: local files are located and parsed when a dataset is requested, and the
default vocabulary loads lazily.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import os
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from spot import errors
from spot.tasks import metrics

DEFAULT_VOCABULARY_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
UNKNOWN_LABEL = "<unk>"

VocabularyLike = Union[seqio.Vocabulary, str, None]
DataDirs = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], None]
Row = dict[str, Any]


# ---------------------------------------------------------------- vocabulary


def get_vocabulary(vocabulary: VocabularyLike = None) -> seqio.Vocabulary:
  """A seqio vocabulary: the given one, a SentencePiece model path, or T5's.

  The default is the T5 English vocabulary with its 100 sentinel ids built in
  (the one T5X's T5 1.1 configs use). SentencePiece loads the file on first
  use, so building the default needs no network.
  """
  if vocabulary is None:
    return seqio.SentencePieceVocabulary(DEFAULT_VOCABULARY_PATH)
  if isinstance(vocabulary, (str, os.PathLike)):
    return seqio.SentencePieceVocabulary(os.fspath(vocabulary))
  if not isinstance(vocabulary, seqio.Vocabulary):
    raise TypeError(f"vocabulary must be a seqio.Vocabulary or a SentencePiece model path, "
                    f"got {type(vocabulary).__name__}.")
  return vocabulary


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """T5's encoder-decoder features: `inputs` and `targets`, both ending in EOS."""
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


# ------------------------------------------------------- text-to-text format


def label_text(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  """The label's word, or "<unk>" for an unlabelled (test) example (-1)."""
  names = tf.constant(list(label_names) + [UNKNOWN_LABEL])
  label = tf.cast(label, tf.int32)
  return tf.gather(names, tf.where(label < 0, len(label_names), label))


def _int32(value: tf.Tensor) -> tf.Tensor:
  """Ids as int32 whichever source they come from (TFDS: int32, files: int64)."""
  return tf.cast(value, tf.int32)


def fields_text(prefix: str, example: Mapping[str, tf.Tensor],
                feature_names: Sequence[str]) -> tf.Tensor:
  """"<prefix> name1: text1 name2: text2 ..." (T5's GLUE input format)."""
  parts: list[Any] = [prefix]
  for name in feature_names:
    parts += [f"{name}:", example[name]]
  return tf.strings.join(parts, separator=" ")


def classification_preprocessor(prefix: str, feature_names: Sequence[str],
                                label_names: Sequence[str]) -> Callable[..., tf.data.Dataset]:
  """Inputs are the named fields in order; the target is the label's word."""

  def convert(ex):
    return {"inputs": fields_text(prefix, ex, feature_names),
            "targets": label_text(ex["label"], label_names), "idx": _int32(ex["idx"])}

  return seqio.map_over_dataset(convert)


@seqio.map_over_dataset
def stsb_preprocessor(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """STS-B as text: the score rounded to the nearest 0.2, e.g. "3.8".

  Rounding turns the regression into a 26-way choice of short strings; the
  postprocessor reads the string back as a float for the correlations.
  """
  score = tf.cast(ex["label"], tf.float32)
  rounded = tf.strings.as_string(tf.round(score * 5.0) / 5.0, precision=1)
  return {"inputs": fields_text("stsb", ex, ("sentence1", "sentence2")),
          "targets": tf.where(score < 0, UNKNOWN_LABEL, rounded), "idx": _int32(ex["idx"])}


@seqio.map_over_dataset
def multirc_preprocessor(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """One example per answer option, HTML markup removed; keeps the ids the
  metrics group by (a question's options are scored together)."""
  text = fields_text("multirc", ex, ("question", "answer", "paragraph"))
  text = tf.strings.regex_replace(text, "<br>", " ")
  text = tf.strings.regex_replace(text, "</?b>", "")
  return {"inputs": text, "targets": label_text(ex["label"], ("False", "True")),
          **{f"idx/{k}": _int32(ex["idx"][k]) for k in ("paragraph", "question", "answer")}}


def _mark_words(words: tf.Tensor, start: tf.Tensor, span: tf.Tensor, mark: str) -> tf.Tensor:
  """Puts `mark` around the words [start, start + len(span words))."""
  pos = tf.range(tf.size(words))
  start = tf.cast(start, tf.int32)
  end = start + tf.maximum(tf.size(tf.strings.split(span)), 1) - 1
  words = tf.where(tf.equal(pos, start), tf.strings.join([mark, words], " "), words)
  return tf.where(tf.equal(pos, end), tf.strings.join([words, mark], " "), words)


@seqio.map_over_dataset
def wsc_preprocessor(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """WSC as classification: the noun span between "*", the pronoun between
  "#"; the target says whether the pronoun refers to the noun."""
  words = tf.strings.split(ex["text"])
  words = _mark_words(words, ex["span1_index"], ex["span1_text"], "*")
  words = _mark_words(words, ex["span2_index"], ex["span2_text"], "#")
  text = tf.strings.join(["wsc text:", tf.strings.reduce_join(words, separator=" ")], " ")
  return {"inputs": text, "targets": label_text(ex["label"], ("False", "True")),
          "idx": _int32(ex["idx"])}


def record_preprocessor(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD: one training example per correct answer (all answers kept for
  the metric); an unanswered query gets the target "<unk>"."""

  def per_query(ex):
    passage = tf.strings.regex_replace(ex["passage"], "([.?!\"'])\n@highlight\n", "\\1 ")
    passage = tf.strings.regex_replace(passage, "\n@highlight\n", ". ")
    inputs = tf.strings.join([
        "record query:", ex["query"], "entities:",
        tf.strings.reduce_join(ex["entities"], separator=", "), "passage:", passage], " ")
    answers = ex["answers"]
    targets = tf.cond(tf.size(answers) > 0, lambda: answers,
                      lambda: tf.constant([UNKNOWN_LABEL]))
    n = tf.size(targets)
    return tf.data.Dataset.from_tensor_slices({
        "inputs": tf.fill([n], inputs),
        "targets": targets,
        "answers": tf.broadcast_to(answers[tf.newaxis], [n, tf.size(answers)]),
        "idx/passage": tf.fill([n], _int32(ex["idx"]["passage"])),
        "idx/query": tf.fill([n], _int32(ex["idx"]["query"])),
    })

  return dataset.flat_map(per_query)


def add_task_feature(dataset: tf.data.Dataset, task_name: str) -> tf.data.Dataset:
  """Adds the scalar string feature `task` (the registered task name), so a
  multi-task prompt can tell the tasks of a mixture apart."""
  return dataset.map(lambda ex: {**ex, "task": tf.constant(task_name)},
                     num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------------------------------------ postprocessors


def _text(output: Any) -> str:
  return (output.decode("utf-8") if isinstance(output, bytes) else str(output)).strip()


def class_id_postprocessor(label_names: Sequence[str]) -> Callable[..., int]:
  """Maps a predicted (or target) label word to its class id; -1 if unknown."""
  names = tuple(label_names)

  def postprocess(output, example=None, is_target=False) -> int:
    del example, is_target
    text = _text(output)
    return names.index(text) if text in names else -1

  return postprocess


def float_postprocessor(output, example=None, is_target=False) -> float:
  """Reads a predicted score ("3.8") as a float; -1.0 if it is not a number."""
  del example, is_target
  try:
    return float(_text(output))
  except ValueError:
    return -1.0


def multirc_postprocessor(output, example=None, is_target=False) -> dict[str, Any]:
  """{"value": class id}; targets also carry the question they belong to."""
  value = class_id_postprocessor(("False", "True"))(output)
  if not is_target:
    return {"value": value}
  group = (int(example["idx/paragraph"]), int(example["idx/question"]))
  return {"value": value, "group": group}


def record_postprocessor(output, example=None, is_target=False) -> dict[str, Any]:
  """Predictions: {"value": answer}; targets: all answers plus the query id."""
  if not is_target:
    return {"value": _text(output)}
  answers = [_text(a) for a in example["answers"]]
  group = (int(example["idx/passage"]), int(example["idx/query"]))
  return {"value": answers, "group": group}


# -------------------------------------------------------------- registration


def register_task(name: str, source: seqio.DataSource, text_preprocessor: Callable[..., Any],
                  vocabulary: seqio.Vocabulary, postprocess_fn: Callable[..., Any],
                  metric_fns: Sequence[Callable[..., Mapping[str, float]]]) -> str:
  """Registers (or re-registers) a text-to-text task and returns its name.

  Re-registering replaces the old task, so tests and notebooks can call the
  register functions again with another data directory or vocabulary.
  """
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=source,
      preprocessors=[
          text_preprocessor,
          functools.partial(add_task_feature, task_name=name),
          seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=output_features(vocabulary),
      postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns),
  )
  return name


class TfdsSource(seqio.TfdsDataSource):
  """A `TfdsDataSource` whose read failures name the dataset and the ways out."""

  def get_dataset(self, split: Optional[str] = None, *args, **kwargs) -> tf.data.Dataset:
    try:
      return super().get_dataset(split, *args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except  (TFDS raises many kinds)
      from spot import errors
      if isinstance(e, errors.SpotError):
        raise
      reason = " ".join(str(e).split()) or type(e).__name__
      raise errors.DataError(
          f"TFDS dataset {self.tfds_dataset.name} (split {split!r}) cannot be read: {reason} "
          "Prepare it in the TFDS data dir (--tfds_data_dir), or put the task's files under "
          "DATA_DIR (layouts in docs/tasks.md).") from e


def tfds_source(tfds_name: str, splits: Union[Sequence[str], Mapping[str, str]],
                tfds_data_dir: Optional[str] = None) -> seqio.TfdsDataSource:
  """A TFDS source with explicit splits, so nothing is looked up until read."""
  return TfdsSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir, splits=splits)


def is_local(task_name: str) -> bool:
  """Whether a registered task reads local files (DATA_DIR) rather than TFDS."""
  return (task_name in seqio.TaskRegistry.names()
          and isinstance(seqio.TaskRegistry.get(task_name).source, LocalDataSource))


# --------------------------------------------------------------- local files


@dataclasses.dataclass(frozen=True)
class LocalLayout:
  """Where a task's files live under a data directory.

  Attributes:
    folders: folder names tried in order under each data directory (the
      official name first, e.g. "SST-2", then aliases such as "sst2").
    split_files: split -> file names tried in order inside the folder (the
      official name first, then known published copies).
  """

  folders: tuple[str, ...]
  split_files: Mapping[str, tuple[str, ...]]

  def candidates(self, data_dirs: Sequence[str], split: str) -> list[str]:
    """Every path that may hold `split`, in the order they are tried."""
    return [os.path.join(d, folder, f) for d in data_dirs for folder in self.folders
            for f in self.split_files[split]]


def as_data_dirs(data_dir: DataDirs) -> tuple[str, ...]:
  """One directory or several (searched in order) as a tuple of strings."""
  if data_dir is None:
    return ()
  if isinstance(data_dir, (str, os.PathLike)):
    return (os.fspath(data_dir),)
  return tuple(os.fspath(d) for d in data_dir)


def local_roots(data_dir: DataDirs, subfolders: Sequence[str]) -> tuple[str, ...]:
  """`data_dir` itself, then its benchmark sub-folders (e.g. `<data_dir>/glue`),
  so one DATA_DIR can hold GLUE, SuperGLUE and other data side by side."""
  dirs = as_data_dirs(data_dir)
  return dirs + tuple(os.path.join(d, sub) for d in dirs for sub in subfolders)


def has_local_files(data_dirs: Sequence[str], layout: LocalLayout) -> bool:
  """Whether any split file of `layout` exists (folders are checked first, so
  a data directory on GCS costs one listing per folder, not per file)."""
  folders = [os.path.join(d, f) for d in data_dirs for f in layout.folders]
  return any(tf.io.gfile.exists(os.path.join(folder, name))
             for folder in folders if tf.io.gfile.isdir(folder)
             for names in layout.split_files.values() for name in names)


def registered_vocabulary(name: str) -> Optional[seqio.Vocabulary]:
  """The vocabulary of a registered task, or None if it is not registered."""
  if name not in seqio.TaskRegistry.names():
    return None
  return seqio.TaskRegistry.get(name).output_features["targets"].vocabulary


def find_split_file(data_dirs: Sequence[str], layout: LocalLayout, split: str,
                    task_name: str) -> str:
  """The first existing candidate file for `split`, or an error naming them."""
  if split not in layout.split_files:
    raise errors.ConfigError(f"Task {task_name!r} has no split {split!r} in local files; "
                             f"use one of {sorted(layout.split_files)}.")
  paths = layout.candidates(data_dirs, split)
  for path in paths:
    if tf.io.gfile.exists(path):
      return path
  raise errors.MissingInputError(
      f"Task {task_name!r}, split {split!r}: none of the expected files exists: "
      f"{', '.join(paths)}. Put the file there (see docs/tasks.md for the layout), "
      "or register the task without a data directory to read it from TFDS.")


def read_text(path: str) -> str:
  """A whole UTF-8 file, without a byte-order mark (gfile, so gs:// works)."""
  with tf.io.gfile.GFile(path, "rb") as f:
    return f.read().decode("utf-8-sig")


def read_tsv(path: str) -> list[list[str]]:
  """Tab-separated lines, quotes kept as text (GLUE's files are unquoted)."""
  return [line.rstrip("\r").split("\t") for line in read_text(path).split("\n") if line.strip()]


def read_csv(path: str) -> list[list[str]]:
  """Comma-separated lines with CSV quoting (the STS-B CSV copies)."""
  return [row for row in csv.reader(io.StringIO(read_text(path))) if row]


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """One JSON object a line; a bad line is reported with its number."""
  out = []
  for n, line in enumerate(read_text(path).split("\n"), start=1):
    if line.strip():
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise errors.DataError(f"{path}:{n}: not a JSON object ({e}).") from e
  return out


def _column(values: list[Any]) -> Any:
  """A column of raw values as a tensor-friendly array (ragged for lists)."""
  first = values[0]
  if isinstance(first, dict):
    return {k: _column([v[k] for v in values]) for k in first}
  if isinstance(first, (list, tuple)):
    return tf.ragged.constant([list(v) for v in values], dtype=tf.string,
                              row_splits_dtype=tf.int64)
  if isinstance(first, str):
    return np.array(values, dtype=object)
  if isinstance(first, float):
    return np.array(values, dtype=np.float32)
  return np.array(values, dtype=np.int64 if first is not None else object)


def rows_to_dataset(rows: list[Row], path: str) -> tf.data.Dataset:
  """Parsed rows (dicts with TFDS's feature names) as a tf.data.Dataset."""
  if not rows:
    raise errors.DataError(f"{path} holds no examples; check that it is the right file.")
  return tf.data.Dataset.from_tensor_slices({k: _column([r[k] for r in rows]) for k in rows[0]})


class LocalDataSource(seqio.FunctionDataSource):
  """A `FunctionDataSource` whose `splits` are those with a file.

  The files are looked for on the first use of `splits` (a mixture asking
  which members have a "train" split, evaluation asking which have its
  split), so registering reads nothing and a mixture over partial local data
  trains and evaluates on the tasks whose files exist. Reading a split with no
  file still fails with the list of paths tried.
  """

  def __init__(self, dataset_fn: Callable[..., tf.data.Dataset], data_dirs: Sequence[str],
               layout: LocalLayout):
    super().__init__(dataset_fn, splits=tuple(layout.split_files))
    self._data_dirs, self._layout = tuple(data_dirs), layout
    self._present: Optional[tuple[str, ...]] = None

  @property
  def splits(self) -> Sequence[str]:
    if self._present is None:
      self._present = tuple(
          split for split in self._layout.split_files
          if any(tf.io.gfile.exists(p) for p in self._layout.candidates(self._data_dirs, split)))
    return self._present


def local_source(data_dirs: Sequence[str], layout: LocalLayout,
                 reader: Callable[[str], list[Row]], task_name: str) -> seqio.DataSource:
  """A source reading `layout`'s files with `reader` when a split is requested."""

  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
    del shuffle_files, seed  # one file per split; the Task shuffles examples
    path = find_split_file(data_dirs, layout, split, task_name)
    return rows_to_dataset(reader(path), path)

  return LocalDataSource(dataset_fn, data_dirs, layout)


def label_id(value: Any, label_names: Optional[Sequence[str]]) -> int:
  """A raw label (a word, "0"/"1", a bool, or missing) as TFDS's class id."""
  if value is None or value == "":
    return -1
  if isinstance(value, bool):
    return int(value)
  if label_names and value in label_names:
    return list(label_names).index(value)
  return int(value)


# ------------------------------------------------------ benchmark registries


class TaskSpec(Protocol):
  """What `register_specs` needs of a task description (GlueTask, ...)."""

  key: str
  layout: LocalLayout
  tfds_name: str
  tfds_splits: Union[Sequence[str], Mapping[str, str]]

  def reader(self) -> Callable[[str], list[Row]]: ...
  def text_preprocessor(self) -> Callable[..., Any]: ...
  def postprocessor(self) -> Callable[..., Any]: ...


def register_specs(specs: Mapping[str, TaskSpec], benchmark: str, *, data_dir: DataDirs,
                   vocabulary: VocabularyLike, name_prefix: str, tfds_data_dir: Optional[str],
                   tasks: Optional[Sequence[str]]) -> list[str]:
  """Registers `<name_prefix>_<key>` for the chosen specs (default all), from
  local files when `data_dir` is given and TFDS otherwise; returns the names."""
  vocab = get_vocabulary(vocabulary)
  data_dirs = as_data_dirs(data_dir)
  keys = list(specs) if tasks is None else list(tasks)
  unknown = sorted(set(keys) - set(specs))
  if unknown:
    raise errors.UnknownNameError(f"Unknown {benchmark} task(s) {unknown}; choose from "
                                  f"{list(specs)}.")
  names = []
  for key in keys:
    spec, name = specs[key], f"{name_prefix}_{key}"
    if data_dirs:
      source = local_source(data_dirs, spec.layout, spec.reader(), name)
    else:
      source = tfds_source(spec.tfds_name, spec.tfds_splits, tfds_data_dir)
    names.append(register_task(name, source, spec.text_preprocessor(), vocab,
                               spec.postprocessor(), metrics.metric_fns(key)))
    _REGISTRATIONS[name] = _Registration(spec, data_dirs, tfds_data_dir)
  return names


@dataclasses.dataclass(frozen=True)
class _Registration:
  """How a name was last registered by `register_specs` (to change only its vocabulary)."""

  spec: Any
  data_dirs: tuple[str, ...]
  tfds_data_dir: Optional[str]


_REGISTRATIONS: dict[str, _Registration] = {}


def use_vocabulary(names: Sequence[str], vocabulary: VocabularyLike) -> list[str]:
  """Re-registers the named `register_specs` tasks with `vocabulary`, keeping
  their sources (TFDS or local files); returns the names that changed.

  A task already on an equal vocabulary (same SentencePiece file and extra
  ids; compared without loading either file) is left alone.
  """
  vocab = get_vocabulary(vocabulary)
  changed = []
  for name in names:
    reg = _REGISTRATIONS.get(name)
    if reg is None or registered_vocabulary(name) == vocab:
      continue
    prefix = name[: -len(reg.spec.key) - 1]
    register_specs({reg.spec.key: reg.spec}, "", data_dir=reg.data_dirs or None,
                   vocabulary=vocab, name_prefix=prefix, tfds_data_dir=reg.tfds_data_dir,
                   tasks=None)
    changed.append(name)
  return changed


def local_task_keys(specs: Mapping[str, TaskSpec], data_dir: DataDirs,
                    subfolders: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
  """The directories a DATA_DIR hook searches and the task keys with files there."""
  roots = local_roots(data_dir, subfolders)
  return roots, [key for key, spec in specs.items() if has_local_files(roots, spec.layout)]


def refresh_mixtures(changed: Sequence[str]) -> list[str]:
  """Re-registers every mixture holding one of the `changed` tasks (or a mixture
  refreshed here), so it uses their new registrations.

  A SeqIO mixture keeps the task objects it was built with; after DATA_DIR or
  SPM_PATH re-registered spot's tasks, a mixture of your own module would still
  read TFDS or tokenize with the old vocabulary. Names, rates and the sampling
  function are kept. Returns the refreshed mixture names.
  """
  stale, refreshed = set(changed), []
  for _ in range(4):  # mixtures of mixtures: a few passes reach a fixed point
    todo = [name for name in sorted(seqio.MixtureRegistry.names()) if name not in refreshed
            and stale & set(seqio.MixtureRegistry.get(name)._task_map)]  # pylint: disable=protected-access
    if not todo:
      break
    for name in todo:
      old = seqio.MixtureRegistry.get(name)
      rates = list(old._task_to_rate.items())  # pylint: disable=protected-access
      seqio.MixtureRegistry.remove(name)
      # mixture_cls keeps a subclass's behaviour (e.g. the library's by-name mixtures).
      seqio.MixtureRegistry.add(name, rates, sample_fn=old._sample_fn,  # pylint: disable=protected-access
                                mixture_cls=type(old))
      refreshed.append(name)
      stale.add(name)
  return refreshed
