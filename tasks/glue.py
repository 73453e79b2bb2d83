"""GLUE as SeqIO text-to-text tasks (T5's format), from TFDS or local TSVs.

    spot_glue_sst2:  "sst2 sentence: it 's a charming ... journey ."  -> "positive"
    spot_glue_mnli:  "mnli hypothesis: ... premise: ..."  -> "entailment" | "neutral" | ...
    spot_glue_stsb:  "stsb sentence1: ... sentence2: ..."  -> "3.8"  (score rounded to 0.2)

`register_glue()` runs at import with TFDS sources and T5's vocabulary;
call it again with `data_dir=` to read the official GLUE files instead (see
docs/tasks.md for the folder and file names it looks for).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Sequence, Union

from spot import errors
from spot.tasks import common

TFDS_VERSION = "2.0.0"
_SPLITS = {"train": ("train.tsv",), "validation": ("dev.tsv",), "test": ("test.tsv",)}


@dataclasses.dataclass(frozen=True)
class GlueTask:
  """How one GLUE task is read and rendered as text.

  Attributes:
    key: the task key ("sst2"); the registered name is `<prefix>_<key>`.
    prefix: the first word of the inputs (MNLI's eval tasks say "mnli").
    features: TFDS feature name -> column name in the official TSV header.
    text_features: the features shown in the inputs, in order.
    label_column: the label's TSV column.
    label_names: class words by class id; None for STS-B's float score.
    folders: folder names tried under a data directory.
    split_files: split -> file names tried in the folder.
    positions: feature -> column index for header-less files (CoLA's raw
      TSVs, the STS-B CSVs); "label" is the label's column.
    tfds_splits: split names (or canonical -> TFDS split) of the TFDS source.
  """

  key: str
  prefix: str
  features: Mapping[str, str]
  text_features: tuple[str, ...]
  label_column: str
  label_names: Optional[tuple[str, ...]]
  folders: tuple[str, ...]
  split_files: Mapping[str, tuple[str, ...]] = dataclasses.field(
      default_factory=lambda: dict(_SPLITS))
  positions: Optional[Mapping[str, int]] = None
  tfds_splits: Union[Sequence[str], Mapping[str, str]] = ("train", "validation", "test")
  tfds_config: Optional[str] = None

  @property
  def layout(self) -> common.LocalLayout:
    return common.LocalLayout(self.folders, self.split_files)

  @property
  def tfds_name(self) -> str:
    return f"glue/{self.tfds_config or self.key}:{TFDS_VERSION}"

  def reader(self) -> Callable[[str], list[common.Row]]:
    return lambda path: read_glue_file(path, self)

  def text_preprocessor(self):
    if self.key == "stsb":
      return common.stsb_preprocessor
    return common.classification_preprocessor(self.prefix, self.text_features, self.label_names)

  def postprocessor(self):
    if self.label_names is None:
      return common.float_postprocessor
    return common.class_id_postprocessor(self.label_names)


_MNLI = dict(prefix="mnli", features={"premise": "sentence1", "hypothesis": "sentence2"},
             text_features=("hypothesis", "premise"), label_column="gold_label",
             label_names=("entailment", "neutral", "contradiction"), folders=("MNLI", "mnli"),
             tfds_config="mnli")
_PAIR = {"sentence1": "sentence1", "sentence2": "sentence2"}
_ENTAILMENT = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {t.key: t for t in (
    GlueTask("cola", "cola", {"sentence": "sentence"}, ("sentence",), "label",
             ("unacceptable", "acceptable"), ("CoLA", "cola"),
             {"train": ("train.tsv", "in_domain_train.tsv"),
              "validation": ("dev.tsv", "in_domain_dev.tsv"), "test": ("test.tsv",)},
             positions={"sentence": 3, "label": 1}),
    GlueTask("sst2", "sst2", {"sentence": "sentence"}, ("sentence",), "label",
             ("negative", "positive"), ("SST-2", "sst2", "SST2"),
             {"train": ("train.tsv", "train_first10000.tsv"), "validation": ("dev.tsv",),
              "test": ("test.tsv",)}),
    GlueTask("mrpc", "mrpc", {"sentence1": "#1 String", "sentence2": "#2 String"},
             ("sentence1", "sentence2"), "Quality", ("not_equivalent", "equivalent"),
             ("MRPC", "mrpc"),
             {"train": ("train.tsv", "msr_paraphrase_train.txt"), "validation": ("dev.tsv",),
              "test": ("test.tsv", "msr_paraphrase_test.txt")}),
    GlueTask("qqp", "qqp", {"question1": "question1", "question2": "question2"},
             ("question1", "question2"), "is_duplicate", ("not_duplicate", "duplicate"),
             ("QQP", "qqp"),
             {"train": ("train.tsv",), "validation": ("dev.tsv", "dev_first10.tsv"),
              "test": ("test.tsv",)}),
    GlueTask("stsb", "stsb", _PAIR, ("sentence1", "sentence2"), "score", None,
             ("STS-B", "stsb", "STSB"),
             {"train": ("train.tsv", "stsb-en-train.csv"),
              "validation": ("dev.tsv", "stsb-en-dev.csv"),
              "test": ("test.tsv", "stsb-en-test.csv")},
             positions={"sentence1": 0, "sentence2": 1, "label": 2}),
    GlueTask(key="mnli", split_files={
        "train": ("train.tsv",), "validation_matched": ("dev_matched.tsv",),
        "validation_mismatched": ("dev_mismatched.tsv",),
        "test_matched": ("test_matched.tsv",), "test_mismatched": ("test_mismatched.tsv",)},
             tfds_splits=("train", "validation_matched", "validation_mismatched",
                          "test_matched", "test_mismatched"), **_MNLI),
    GlueTask(key="mnli_matched", split_files={"validation": ("dev_matched.tsv",),
                                          "test": ("test_matched.tsv",)},
             tfds_splits={"validation": "validation_matched", "test": "test_matched"},
             **_MNLI),
    GlueTask(key="mnli_mismatched", split_files={"validation": ("dev_mismatched.tsv",),
                                             "test": ("test_mismatched.tsv",)},
             tfds_splits={"validation": "validation_mismatched", "test": "test_mismatched"},
             **_MNLI),
    GlueTask("qnli", "qnli", {"question": "question", "sentence": "sentence"},
             ("question", "sentence"), "label", _ENTAILMENT, ("QNLI", "qnli")),
    GlueTask("rte", "rte", _PAIR, ("sentence1", "sentence2"), "label", _ENTAILMENT,
             ("RTE", "rte")),
    GlueTask("wnli", "wnli", _PAIR, ("sentence1", "sentence2"), "label",
             ("not_entailment", "entailment"), ("WNLI", "wnli")),
)}


def read_glue_file(path: str, task: GlueTask) -> list[common.Row]:
  """Rows of a GLUE file with TFDS's features: text fields, `label`, `idx`.

  Header columns are matched by name, so the official TSVs, the original MSRP
  files and the MNLI files with extra columns all read the same way. A file
  without the header (CoLA's raw TSVs, the STS-B CSVs) is read by column
  position. A test file without labels gets label -1; a row with too few
  fields is skipped, as TFDS does.
  """
  lines = common.read_csv(path) if path.endswith(".csv") else common.read_tsv(path)
  if not lines:
    return []
  header = lines[0]
  if all(col in header for col in task.features.values()):
    columns = {f: header.index(col) for f, col in task.features.items()}
    if task.label_column in header:
      columns["label"] = header.index(task.label_column)
    body = lines[1:]
  elif task.positions is not None:
    columns, body = dict(task.positions), lines
  else:
    raise errors.DataError(f"{path}: expected a header with columns "
                           f"{sorted(task.features.values())}, got {header}; is it a "
                           f"{task.key.upper()} file?")
  width = max(columns.values()) + 1
  rows = []
  for fields in body:
    if len(fields) < width:
      continue
    row: common.Row = {f: fields[i] for f, i in columns.items() if f != "label"}
    raw = fields[columns["label"]] if "label" in columns else None
    if task.label_names is None:
      row["label"] = float(raw) if raw not in (None, "") else -1.0
    else:
      row["label"] = common.label_id(raw, task.label_names)
    row["idx"] = len(rows)
    rows.append(row)
  return rows


def register_glue(data_dir: common.DataDirs = None, vocabulary: common.VocabularyLike = None,
                  name_prefix: str = "spot_glue", tfds_data_dir: Optional[str] = None,
                  tasks: Optional[Sequence[str]] = None) -> list[str]:
  """Registers the GLUE tasks and returns their names.

  Args:
    data_dir: None to read TFDS (`glue/<task>:2.0.0`); otherwise a GLUE data
      directory (or several, searched in order) holding the official task
      folders, e.g. `<data_dir>/SST-2/train.tsv`. Files are looked up only
      when a split is read.
    vocabulary: a seqio vocabulary or SentencePiece model path; default T5's.
    name_prefix: task names are `<name_prefix>_<key>`, e.g. spot_glue_sst2.
    tfds_data_dir: TFDS data directory (TFDS sources only).
    tasks: task keys to register (default all, see `GLUE_TASKS`).

  Returns:
    The registered task names, in `GLUE_TASKS` order.
  """
  return common.register_specs(GLUE_TASKS, "GLUE", data_dir=data_dir, vocabulary=vocabulary,
                               name_prefix=name_prefix, tfds_data_dir=tfds_data_dir, tasks=tasks)


def register_local(data_dir: common.DataDirs, name_prefix: str = "spot_glue",
                   vocabulary: common.VocabularyLike = None) -> list[str]:
  """The DATA_DIR hook of `spot.tasks.register_local`.

  Re-registers, under their usual names, the GLUE tasks whose files exist in
  `data_dir` or its `glue/` sub-folder; the others keep reading TFDS. They
  tokenize with `vocabulary` (the model's, SPM_PATH) when given, else with
  the vocabulary they were registered with.

  Returns:
    The names now reading local files.
  """
  roots, keys = common.local_task_keys(GLUE_TASKS, data_dir, ("glue", "GLUE"))
  if not keys:
    return []
  vocab = vocabulary or common.registered_vocabulary(f"{name_prefix}_{keys[0]}")
  return register_glue(roots, vocab, name_prefix, tasks=keys)


def use_vocabulary(vocabulary: common.VocabularyLike, name_prefix: str = "spot_glue"
                   ) -> list[str]:
  """The SPM_PATH hook of `spot.tasks.use_vocabulary`: every GLUE task under
  `name_prefix` tokenizes with `vocabulary`, keeping its source."""
  return common.use_vocabulary([f"{name_prefix}_{key}" for key in GLUE_TASKS], vocabulary)


GLUE_TASK_NAMES = register_glue()
