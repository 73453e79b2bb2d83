"""Where xGen's data comes from: TFDS by default, local files when given a folder.

WikiLingua: TFDS `gem/wiki_lingua_<language>_<code>` (GEM v1.1 per-language
configs, article and summary aligned with English), or local JSONL files
`wiki_lingua_<language>_<code>.jsonl` with one JSON object per example:
`{"gem_config", "split": "train"|"val"|"test", "src_<xx>", "tgt_<xx>",
"src_en", "tgt_en"}`.

Raw text: TFDS `c4/multilingual` (mC4; one split per language), or local text
files with one sentence per line (e.g. Tatoeba/LASER `tatoeba.<xxx>-eng.<xxx>`).

Constructing a source touches neither the network nor TFDS: data is read when
the dataset is iterated. Local sources check their files exist so a wrong
folder fails at registration, with the expected layout in the message.
"""

from __future__ import annotations

import json
import os
from typing import Iterator, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from spot import errors
from spot.xgen import languages

WIKILINGUA_TFDS_VERSION = "1.1.0"
MC4_TFDS_VERSION = "3.0.1"
SPLITS = ("train", "validation", "test")
# GEM's file split names for seqio's canonical ones.
_JSONL_SPLITS = {"train": "train", "validation": "val", "test": "test"}
# Sub-folders searched under a data folder, so that DATA_DIR may be the folder
# of the files or a root holding the shared-data layout.
WIKILINGUA_SUBDIRS = ("", "gem_wiki_lingua_subset", "wikilingua/gem_wiki_lingua_subset")
TEXT_SUBDIRS = ("", "tatoeba_laser_v1", "multilingual_text/tatoeba_laser_v1")


def wikilingua_filename(lang: str) -> str:
  """Local file name of a language, e.g. "th" -> "wiki_lingua_thai_th.jsonl"."""
  return languages.tfds_config(lang) + ".jsonl"


def find_wikilingua_file(data_dir: str, lang: str) -> Optional[str]:
  """The JSONL file of `lang` under `data_dir` (see WIKILINGUA_SUBDIRS), or None."""
  for sub in WIKILINGUA_SUBDIRS:
    path = os.path.join(data_dir, sub, wikilingua_filename(lang))
    if tf.io.gfile.exists(path):
      return path
  return None


def find_tatoeba_pattern(data_dir: str, lang: str) -> Optional[str]:
  """The Tatoeba/LASER file pattern of `lang` under `data_dir`, or None.

  English has no file of its own: its pattern covers the English side of every
  pair (`tatoeba.*-eng.eng`).
  """
  code = languages.TATOEBA_CODES[languages.check_language(lang)]
  name = "tatoeba.*-eng.eng" if lang == "en" else f"tatoeba.{code}-eng.{code}"
  for sub in TEXT_SUBDIRS:
    pattern = os.path.join(data_dir, sub, name)
    if tf.io.gfile.glob(pattern):
      return pattern
  return None


class JsonlSource(seqio.DataSource):
  """WikiLingua examples `{"source", "target"}` from a local (or gs://) JSONL file.

  Examples are sharded one by one (`ShardInfo`), so every host of a multi-host
  job reads a distinct part of a single file.
  """

  def __init__(self, path: str, lang: str, splits: Sequence[str] = SPLITS):
    super().__init__(splits=splits, caching_permitted=True)
    self._path = path
    self._lang = lang

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [self._path]

  def _examples(self, split: str, index: int, num_shards: int) -> Iterator[tuple[str, str]]:
    wanted = _JSONL_SPLITS[split]
    i = 0
    with tf.io.gfile.GFile(self._path) as f:
      for line_number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise errors.DataError(f"{self._path}:{line_number} is not JSON ({e}); fix or "
                                 "remove that line") from e
        if row.get("split") != wanted:
          continue
        if i % num_shards == index:
          keys = (f"src_{self._lang}", f"tgt_{self._lang}")
          missing = [k for k in keys if k not in row]
          if missing:
            raise errors.DataError(f"{self._path}:{line_number} lacks {missing}; WikiLingua "
                                   f"JSONL rows need split, src_{self._lang} and "
                                   f"tgt_{self._lang}")
          yield row[keys[0]], row[keys[1]]
        i += 1

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None,
                  *, sequence_length: Optional[Mapping[str, int]] = None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    if split not in self.splits:
      raise errors.ConfigError(f"split {split!r} not in {self.splits} for {self._path}")
    index, num_shards = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    dataset = tf.data.Dataset.from_generator(
        lambda: self._examples(split, index, num_shards),
        output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string)))
    dataset = dataset.map(lambda s, t: {"source": s, "target": t})
    if shuffle:
      dataset = dataset.shuffle(10000, seed=seed)
    return dataset


class TextLinesSource(seqio.DataSource):
  """Lines of local (or gs://) text files as scalar strings, sharded line by line."""

  def __init__(self, pattern: str):
    super().__init__(splits=("train",), caching_permitted=True)
    self._pattern = pattern

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return sorted(tf.io.gfile.glob(self._pattern))

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None,
                  *, sequence_length: Optional[Mapping[str, int]] = None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    files = self.list_shards(split)
    if not files:
      raise errors.MissingInputError(f"no text files match {self._pattern}")
    dataset = tf.data.TextLineDataset(files)
    dataset = dataset.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
    if shard_info:
      dataset = dataset.shard(shard_info.num_shards, shard_info.index)
    if shuffle:
      dataset = dataset.shuffle(10000, seed=seed)
    return dataset


def wikilingua_source(lang: str, data_dir: Optional[str] = None,
                      splits: Sequence[str] = SPLITS,
                      tfds_version: str = WIKILINGUA_TFDS_VERSION) -> seqio.DataSource:
  """WikiLingua in `lang`: TFDS GEM by default, local JSONL under `data_dir`.

  Both give `{"source": ..., "target": ...}` text after `wikilingua_fields`
  (TFDS) or directly (JSONL).
  """
  languages.check_language(lang)
  if data_dir is None:
    return seqio.TfdsDataSource(
        tfds_name=f"gem/{languages.tfds_config(lang)}:{tfds_version}",
        splits={s: s for s in splits})
  path = find_wikilingua_file(data_dir, lang)
  if path is None:
    raise errors.MissingInputError(
        f"no {wikilingua_filename(lang)} under {data_dir} (looked in "
        f"{', '.join(repr(s or '.') for s in WIKILINGUA_SUBDIRS)}); put GEM WikiLingua JSONL "
        "files there, or pass data_dir=None to read TFDS gem/wiki_lingua")
  return JsonlSource(path, lang, splits)


def text_source(lang: str, text_files: Optional[str] = None, data_dir: Optional[str] = None,
                tfds_version: str = MC4_TFDS_VERSION) -> seqio.DataSource:
  """Raw text in `lang`: TFDS mC4 by default; `text_files` (a glob pattern) or
  the Tatoeba layout under `data_dir` for local files."""
  if text_files is None and data_dir is not None:
    text_files = find_tatoeba_pattern(data_dir, lang)
    if text_files is None:
      raise errors.MissingInputError(
          f"no Tatoeba text for {lang!r} under {data_dir} (expected tatoeba."
          f"{languages.TATOEBA_CODES[lang]}-eng.{languages.TATOEBA_CODES[lang]}, one sentence "
          "per line); pass text_files={lang: pattern} or data_dir=None for mC4")
  if text_files is not None:
    if not tf.io.gfile.glob(text_files):
      raise errors.MissingInputError(f"no text files match {text_files!r} for {lang!r}")
    return TextLinesSource(text_files)
  languages.check_language(lang, languages.MC4_CODES, "mC4 language code")
  return seqio.TfdsDataSource(
      tfds_name=f"c4/multilingual:{tfds_version}",
      splits={"train": lang, "validation": f"{lang}-validation"})


def wikilingua_fields(dataset: tf.data.Dataset, lang: str) -> tf.data.Dataset:
  """TFDS GEM WikiLingua -> `{"source", "target"}` in `lang` (the aligned pair)."""
  return dataset.map(lambda x: {"source": x["source_aligned"][lang],
                                "target": x["target_aligned"][lang]},
                     num_parallel_calls=tf.data.AUTOTUNE)
