"""SPM_PATH is the one vocabulary setting: spot's tasks tokenize with the model's vocabulary.

Regression: `register_local(DATA_DIR)` kept the registered gs:// vocabulary
and SPM_PATH reached only the model, so offline runs failed inside
TensorFlow with "Could not resolve host".
"""

from __future__ import annotations

import pytest
import seqio

import spot.tasks  # noqa: F401  registers the default tasks
from spot.train import data as data_lib

DEFAULT = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
GLUE_KEYS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_matched", "mnli_mismatched",
             "qnli", "rte", "wnli")


def _file(name: str) -> str:
  return seqio.get_mixture_or_task(name).output_features["targets"].vocabulary \
      .sentencepiece_model_file


@pytest.fixture
def default_registry():
  """Puts the default registrations back after a test changed them."""
  yield
  from spot.tasks import glue, mixtures, superglue, wikilingua
  glue.register_glue()
  superglue.register_superglue()
  mixtures.register_spot_mixtures()
  wikilingua.register_all()


def test_data_dir_tasks_tokenize_with_the_model_vocabulary(shared_data, vocab,
                                                           default_registry):
  spm = str(shared_data / "t5_vocab" / "spiece.model")
  assert _file("spot_glue_rte") == DEFAULT
  task = data_lib.get_task("spot_glue_rte", data_dir=str(shared_data), vocabulary=vocab)
  assert _file("spot_glue_rte") == spm
  ex = next(task.get_dataset({"inputs": 64, "targets": 8}, split="validation",
                             shuffle=False).as_numpy_iterator())
  # Real ids of the T5 SentencePiece model: "rte sentence1: ..." -> "not_entailment" + EOS.
  assert ex["inputs_pretokenized"].decode().startswith("rte sentence1: Dana Reeve")
  assert list(ex["inputs"][:4]) == vocab.encode("rte sentence1:")[:4]
  assert list(ex["targets"]) == vocab.encode("not_entailment") + [1]
  assert vocab.decode(list(ex["targets"])) == "not_entailment"
  # The tasks without files there (TFDS) and the mixtures follow the vocabulary too.
  assert _file("spot_glue_wnli") == spm
  assert _file("spot_superglue_record") == spm
  mixture = seqio.get_mixture_or_task("spot_glue_mix")
  assert {t.output_features["targets"].vocabulary.sentencepiece_model_file
          for t in mixture.tasks} == {spm}


def test_spm_path_reaches_the_default_tasks_keeping_their_sources(vocab, default_registry):
  import spot.tasks as spot_tasks
  before = {k: type(seqio.get_mixture_or_task(f"spot_glue_{k}").source) for k in GLUE_KEYS}
  changed = spot_tasks.use_vocabulary(vocab)
  assert {f"spot_glue_{k}" for k in GLUE_KEYS} <= set(changed)
  for k in GLUE_KEYS:
    task = seqio.get_mixture_or_task(f"spot_glue_{k}")
    assert task.output_features["inputs"].vocabulary == vocab
    assert type(task.source) is before[k]  # still TFDS: only the vocabulary changed
  assert _file("spot_superglue_cb") == vocab.sentencepiece_model_file
  # Equal vocabulary again: nothing is registered again.
  assert spot_tasks.use_vocabulary(vocab) == []


def test_local_splits_are_the_files_present(shared_data, vocab, default_registry):
  """A mixture over partial local data trains and evaluates on the files that exist."""
  data_lib.get_task("spot_glue_mix", data_dir=str(shared_data), vocabulary=vocab)
  # STS-B has train and test CSVs (its dev set is held out); RTE train and dev.
  assert tuple(seqio.get_mixture_or_task("spot_glue_stsb").splits) == ("train", "test")
  assert tuple(seqio.get_mixture_or_task("spot_glue_rte").splits) == ("train", "validation")
  assert tuple(seqio.get_mixture_or_task("spot_glue_qnli").splits) == ("validation",)


def test_data_dir_may_be_a_list(shared_data, vocab, glue_dirs, default_registry):
  cfg = data_lib.DatasetConfig("spot_glue_mnli", {"inputs": 64, "targets": 4},
                               data_dir=glue_dirs, vocabulary=vocab)
  assert cfg.data_dir == tuple(glue_dirs)
  task = data_lib.get_task(cfg.mixture_or_task_name, data_dir=cfg.data_dir,
                           vocabulary=cfg.vocabulary)
  assert "validation_matched" in task.splits
  assert _file("spot_glue_mnli") == vocab.sentencepiece_model_file


def test_spm_path_reaches_the_xgen_tasks(vocab, default_registry):
  import spot.tasks as spot_tasks
  from spot.tasks import wikilingua
  assert _file("wikilingua_en").startswith("gs://")
  spot_tasks.use_vocabulary(vocab)
  assert _file("wikilingua_en") == vocab.sentencepiece_model_file
  assert wikilingua.use_vocabulary(vocab) == []  # already on it


def test_with_data_dir_a_mixture_keeps_its_local_members(shared_data, vocab, default_registry):
  """DATA_DIR alone runs the GLUE mixture offline: MNLI has no file there, so it is left
  out rather than read from TFDS (which needs the network or a prepared TFDS dir)."""
  mixture = data_lib.get_task("spot_glue_mix", data_dir=str(shared_data), vocabulary=vocab)
  assert sorted(t.name for t in mixture.tasks) == [
      "spot_glue_cola", "spot_glue_mrpc", "spot_glue_qnli", "spot_glue_qqp", "spot_glue_rte",
      "spot_glue_sst2", "spot_glue_stsb"]
  # The task itself keeps reading TFDS, and its mixture has all members again without DATA_DIR.
  from spot.tasks import common, glue, mixtures
  assert not common.is_local("spot_glue_mnli")
  glue.register_glue()
  mixtures.register_spot_mixtures()
  assert "spot_glue_mnli" in {t.name for t in seqio.get_mixture_or_task("spot_glue_mix").tasks}


def test_an_unreadable_tfds_dataset_is_a_data_error_naming_it(monkeypatch):
  from spot import errors
  from spot.tasks import common

  def not_prepared(self, *a, **k):
    raise KeyError("Trying to access `splits['train']` but `splits` is empty.")

  monkeypatch.setattr(seqio.TfdsDataSource, "get_dataset", not_prepared)
  source = common.tfds_source("glue/mnli:2.0.0", ("train",))
  with pytest.raises(errors.DataError, match=r"glue/mnli:2.0.0 \(split 'train'\) cannot be "
                     r"read: .*--tfds_data_dir.*DATA_DIR"):
    source.get_dataset("train")


def test_a_mixture_of_your_own_follows_the_re_registered_tasks(shared_data, vocab,
                                                               default_registry):
  """SeqIO mixtures keep task objects; one over spot's tasks is rebuilt with them."""
  seqio.MixtureRegistry.remove("my_pair_mix")
  seqio.MixtureRegistry.add("my_pair_mix", [("spot_glue_rte", 2.0), ("spot_glue_sst2", 1.0)])
  try:
    data_lib.get_task("my_pair_mix", vocabulary=vocab)
    mix = seqio.get_mixture_or_task("my_pair_mix")
    assert {t.output_features["targets"].vocabulary.sentencepiece_model_file
            for t in mix.tasks} == {vocab.sentencepiece_model_file}
    assert mix.get_rate(seqio.get_mixture_or_task("spot_glue_rte")) == 2.0
    data_lib.get_task("my_pair_mix", data_dir=str(shared_data))
    mix = seqio.get_mixture_or_task("my_pair_mix")
    assert all(isinstance(t.source, spot.tasks.common.LocalDataSource) for t in mix.tasks)
  finally:
    seqio.MixtureRegistry.remove("my_pair_mix")
