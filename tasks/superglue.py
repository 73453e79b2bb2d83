"""SuperGLUE as SeqIO text-to-text tasks (T5's format), from TFDS or JSONL.

    spot_superglue_boolq:  "boolq passage: ... question: ..."  -> "True" | "False"
    spot_superglue_copa:  "copa choice1: ... choice2: ... premise: ... question: cause" -> "choice1"
    spot_superglue_record: "record query: ... @placeholder ... entities: A, B passage: ..."  -> "A"
    spot_superglue_wsc:    "wsc text: ... * noun * ... # it # ..."  -> "True" | "False"

`register_superglue()` runs at import with TFDS sources and T5's vocabulary;
call it again with `data_dir=` to read the official SuperGLUE JSONL files
(`<data_dir>/BoolQ/train.jsonl`, `val.jsonl`, ...; see docs/tasks.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

from spot import errors
from spot.tasks import common

TFDS_VERSION = "1.0.2"
_SPLITS = {"train": ("train.jsonl", "train32.jsonl"), "validation": ("val.jsonl",),
           "test": ("test.jsonl",), "dev32": ("dev32.jsonl",)}
_BOOL = ("False", "True")
_ENTAILMENT = ("entailment", "not_entailment")


@dataclasses.dataclass(frozen=True)
class SuperGlueTask:
  """How one SuperGLUE task is read and rendered as text.

  Attributes:
    key: the task key ("boolq"); the registered name is `<prefix>_<key>`.
    folder: the official folder name ("BoolQ"); its lower-case form is an alias.
    label_names: class words by class id (None for ReCoRD's free answers).
    text_features: the fields shown in the inputs, in order (T5's order).
    fields: JSONL fields copied as they are (besides idx and label).
    tfds_config: the TFDS config name if it differs from the key.
  """

  key: str
  folder: str
  label_names: Optional[tuple[str, ...]]
  text_features: tuple[str, ...] = ()
  fields: tuple[str, ...] = ()
  tfds_config: Optional[str] = None

  @property
  def layout(self) -> common.LocalLayout:
    return common.LocalLayout((self.folder, self.folder.lower()), _SPLITS)

  @property
  def tfds_name(self) -> str:
    return f"super_glue/{self.tfds_config or self.key}:{TFDS_VERSION}"

  @property
  def tfds_splits(self) -> tuple[str, ...]:
    return ("train", "validation", "test")

  def reader(self) -> Callable[[str], list[common.Row]]:
    return lambda path: read_superglue_file(path, self)

  def text_preprocessor(self):
    special = {"multirc": common.multirc_preprocessor, "record": common.record_preprocessor,
               "wsc": common.wsc_preprocessor}
    if self.key in special:
      return special[self.key]
    return common.classification_preprocessor(self.key, self.text_features, self.label_names)

  def postprocessor(self):
    special = {"multirc": common.multirc_postprocessor, "record": common.record_postprocessor}
    return special.get(self.key) or common.class_id_postprocessor(self.label_names)


SUPERGLUE_TASKS: dict[str, SuperGlueTask] = {t.key: t for t in (
    SuperGlueTask("boolq", "BoolQ", _BOOL, ("passage", "question"), ("passage", "question")),
    SuperGlueTask("cb", "CB", ("entailment", "contradiction", "neutral"),
                  ("hypothesis", "premise"), ("hypothesis", "premise")),
    SuperGlueTask("copa", "COPA", ("choice1", "choice2"),
                  ("choice1", "choice2", "premise", "question"),
                  ("choice1", "choice2", "premise", "question")),
    SuperGlueTask("multirc", "MultiRC", _BOOL),
    SuperGlueTask("record", "ReCoRD", None),
    SuperGlueTask("rte", "RTE", _ENTAILMENT, ("hypothesis", "premise"),
                  ("hypothesis", "premise")),
    SuperGlueTask("wic", "WiC", _BOOL, ("sentence1", "sentence2", "word"),
                  ("word", "sentence1", "sentence2", "start1", "start2", "end1", "end2")),
    SuperGlueTask("wsc", "WSC", _BOOL, tfds_config="wsc.fixed"),
)}


def _multirc_rows(obj: dict[str, Any]) -> list[common.Row]:
  """One row per answer option, as TFDS flattens MultiRC."""
  passage = obj["passage"]
  return [{"paragraph": passage["text"], "question": q["question"], "answer": a["text"],
           "label": common.label_id(a.get("label"), _BOOL),
           "idx": {"paragraph": obj["idx"], "question": q["idx"], "answer": a["idx"]}}
          for q in passage["questions"] for a in q["answers"]]


def _record_rows(obj: dict[str, Any]) -> list[common.Row]:
  """One row per query; entities are the distinct passage spans (end index
  inclusive), answers the distinct answer texts, both sorted as in TFDS."""
  text = obj["passage"]["text"]
  entities = sorted({text[e["start"]:e["end"] + 1] for e in obj["passage"]["entities"]})
  return [{"passage": text, "query": qa["query"], "entities": entities,
           "answers": sorted({a["text"] for a in qa.get("answers", [])}),
           "idx": {"passage": obj["idx"], "query": qa["idx"]}}
          for qa in obj["qas"]]


def _wsc_row(obj: dict[str, Any]) -> common.Row:
  target = obj["target"]
  return {"text": obj["text"], "span1_text": target["span1_text"],
          "span2_text": target["span2_text"], "span1_index": target["span1_index"],
          "span2_index": target["span2_index"]}


def read_superglue_file(path: str, task: SuperGlueTask) -> list[common.Row]:
  """Rows of a SuperGLUE JSONL file with TFDS's feature names and labels
  (-1 where a test file has no label)."""
  rows: list[common.Row] = []
  for n, obj in enumerate(common.read_jsonl(path), start=1):
    try:
      if task.key == "multirc":
        rows += _multirc_rows(obj)
        continue
      if task.key == "record":
        rows += _record_rows(obj)
        continue
      row = _wsc_row(obj) if task.key == "wsc" else {f: obj[f] for f in task.fields}
      row["label"] = common.label_id(obj.get("label"), task.label_names)
      row["idx"] = obj["idx"]
      rows.append(row)
    except KeyError as e:
      raise errors.DataError(f"{path}:{n}: missing field {e} of a {task.folder} example; is it "
                             f"the {task.folder} JSONL file?") from e
  return rows


def register_superglue(data_dir: common.DataDirs = None,
                       vocabulary: common.VocabularyLike = None,
                       name_prefix: str = "spot_superglue", tfds_data_dir: Optional[str] = None,
                       tasks: Optional[Sequence[str]] = None) -> list[str]:
  """Registers the SuperGLUE tasks and returns their names.

  Args:
    data_dir: None to read TFDS (`super_glue/<task>:1.0.2`, WSC as
      `wsc.fixed`); otherwise a SuperGLUE data directory (or several,
      searched in order) with the official folders, e.g.
      `<data_dir>/BoolQ/train.jsonl`. Local sources also offer the FewGLUE
      split "dev32" (`dev32.jsonl`). Files are looked up only when read.
    vocabulary: a seqio vocabulary or SentencePiece model path; default T5's.
    name_prefix: task names are `<name_prefix>_<key>`, e.g. spot_superglue_cb.
    tfds_data_dir: TFDS data directory (TFDS sources only).
    tasks: task keys to register (default all, see `SUPERGLUE_TASKS`).

  Returns:
    The registered task names, in `SUPERGLUE_TASKS` order.
  """
  return common.register_specs(SUPERGLUE_TASKS, "SuperGLUE", data_dir=data_dir,
                               vocabulary=vocabulary, name_prefix=name_prefix,
                               tfds_data_dir=tfds_data_dir, tasks=tasks)


def register_local(data_dir: common.DataDirs, name_prefix: str = "spot_superglue",
                   vocabulary: common.VocabularyLike = None) -> list[str]:
  """The DATA_DIR hook of `spot.tasks.register_local`.

  Re-registers, under their usual names, the SuperGLUE tasks whose files exist
  in `data_dir` or its `superglue/` sub-folder; the others keep reading TFDS.
  They tokenize with `vocabulary` (the model's, SPM_PATH) when given, else
  with the vocabulary they were registered with.

  Returns:
    The names now reading local files.
  """
  roots, keys = common.local_task_keys(SUPERGLUE_TASKS, data_dir,
                                       ("superglue", "SuperGLUE", "super_glue"))
  if not keys:
    return []
  vocab = vocabulary or common.registered_vocabulary(f"{name_prefix}_{keys[0]}")
  return register_superglue(roots, vocab, name_prefix, tasks=keys)


def use_vocabulary(vocabulary: common.VocabularyLike, name_prefix: str = "spot_superglue"
                   ) -> list[str]:
  """The SPM_PATH hook of `spot.tasks.use_vocabulary`: every SuperGLUE task
  under `name_prefix` tokenizes with `vocabulary`, keeping its source."""
  return common.use_vocabulary([f"{name_prefix}_{key}" for key in SUPERGLUE_TASKS],
                               vocabulary)


SUPERGLUE_TASK_NAMES = register_superglue()
