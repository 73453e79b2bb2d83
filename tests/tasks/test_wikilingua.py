"""xGen SeqIO tasks on the local WikiLingua and Tatoeba samples of ../shared/data."""

from __future__ import annotations

import collections
import importlib.util
import json
import pathlib
import unicodedata

import pytest
import seqio

from spot.xgen import languages, sources

REPO = pathlib.Path(__file__).resolve().parents[2]
PREFIX = "t_"
LENGTHS = {"inputs": 2048, "targets": 512}
LOCAL_LANGUAGES = [c for c in languages.WIKILINGUA_CODES if c not in ("tr", "vi")]


@pytest.fixture(scope="module")
def wikilingua():
  import spot.tasks.wikilingua as module  # registers the TFDS defaults on first import
  module.register_all()  # again: an earlier test in this process may have made them local
  return module


@pytest.fixture(scope="module")
def vocabulary(shared_data, tmp_path_factory) -> seqio.SentencePieceVocabulary:
  """A small multilingual SentencePiece model with 100 sentinels."""
  spec = importlib.util.spec_from_file_location(
      "train_multilingual_spm", REPO / "tools" / "train_multilingual_spm.py")
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  model = tool.train(shared_data / "multilingual_text" / "tatoeba_laser_v1",
                     tmp_path_factory.mktemp("spm") / "multilingual")
  return seqio.SentencePieceVocabulary(model, extra_ids=100)


@pytest.fixture(scope="module")
def names(wikilingua, shared_data, vocabulary) -> list[str]:
  return wikilingua.register_all(data_dir=str(shared_data), vocabulary=vocabulary,
                                 name_prefix=PREFIX)


def rows(shared_data, lang: str) -> list[dict]:
  path = shared_data / "wikilingua" / "gem_wiki_lingua_subset" / sources.wikilingua_filename(lang)
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def examples(name: str, split: str = "train", n: int = 10, **kwargs) -> list[dict]:
  dataset = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False,
                                                        **kwargs)
  return list(dataset.take(n).as_numpy_iterator())


def test_default_registration_reads_tfds_lazily(wikilingua):
  task = seqio.get_mixture_or_task("wikilingua_th")
  assert isinstance(task.source, seqio.TfdsDataSource)
  assert task.source.tfds_dataset.name == "gem/wiki_lingua_thai_th:1.1.0"
  assert set(task.splits) == {"train", "validation", "test"}
  assert seqio.get_mixture_or_task("wikilingua0_th").splits == ("validation", "test")
  corruption = seqio.get_mixture_or_task("xgen_span_corruption_th").source
  assert corruption.tfds_dataset.name == "c4/multilingual:3.0.1"
  assert len(seqio.get_mixture_or_task("wikilingua0").tasks) == 18
  assert wikilingua.task_language("wikilingua0_ja") == "ja"
  assert seqio.get_mixture_or_task("wikilingua_th").output_features["targets"].vocabulary \
      .sentencepiece_model_file == wikilingua.MT5_SPM


def test_registers_every_local_language(names):
  for lang in LOCAL_LANGUAGES:
    assert f"{PREFIX}wikilingua_{lang}" in names
    assert f"{PREFIX}xgen_span_corruption_{lang}" in names
    if lang != "en":
      assert f"{PREFIX}wikilingua0_{lang}" in names
      assert f"{PREFIX}wikilingua0_mix_unsup_{lang}" in names
  assert f"{PREFIX}wikilingua_vi" not in names  # held out of ../shared/data


def test_supervised_thai_examples(names, shared_data, vocabulary):
  got = examples(f"{PREFIX}wikilingua_th", "train")
  want = [r for r in rows(shared_data, "th") if r["split"] == "train"]
  assert len(got) == len(want) == 2
  for ex, row in zip(got, want):
    assert ex["inputs_pretokenized"].decode() == row["src_th"]
    # SentencePiece applies NFKC (as mT5's model does): U+0E33 -> U+0E4D U+0E32.
    assert vocabulary.decode(ex["targets"].tolist()) == unicodedata.normalize("NFKC", row["tgt_th"])
    assert ex["targets"][-1] == vocabulary.eos_id
    assert ex["language"] == languages.LANGUAGE_IDS["th"] and ex["task"] == 0


def test_zero_shot_eval_task_and_metrics(names, shared_data, run_metrics):
  task = seqio.get_mixture_or_task(f"{PREFIX}wikilingua0_ja")
  got = examples(task.name, "validation")
  assert [ex["targets_pretokenized"].decode() for ex in got] == [
      r["tgt_ja"] for r in rows(shared_data, "ja") if r["split"] == "val"]
  assert all(ex["language_code"] == b"ja" for ex in got)
  targets = [ex["targets_pretokenized"].decode() for ex in got]
  scores = run_metrics(task, targets)
  assert set(scores) == {"sp_rouge1", "sp_rouge2", "sp_rougeL", "lid_en", "lid_ja", "ascii"}
  assert scores["sp_rougeL"] == pytest.approx(100) and scores["lid_ja"] > 90


@pytest.fixture
def run_metrics():
  def run(task, targets):
    merged = {}
    for fn in task.metric_fns:
      merged.update(fn(targets, targets))
    return merged
  return run


def test_wikilingua0_trains_on_english_only(names):
  mixture = seqio.get_mixture_or_task(f"{PREFIX}wikilingua0")
  assert len([t for t in mixture.tasks if "validation" in t.splits]) == len(LOCAL_LANGUAGES)
  assert [t.name for t in mixture.tasks if "train" in t.splits] == [f"{PREFIX}wikilingua_en"]
  got = examples(mixture.name, "train", n=6, passthrough_features=["language", "task"])
  assert {int(ex["language"]) for ex in got} == {languages.LANGUAGE_IDS["en"]}


def test_span_corruption_task(names, vocabulary):
  got = examples(f"{PREFIX}xgen_span_corruption_th", n=3)
  sentinel = vocabulary.vocab_size - 1
  for ex in got:
    assert ex["targets"][0] == sentinel and sentinel in ex["inputs"]
    assert ex["task"] == languages.TASK_IDS["span_corruption"] and ex["language_code"] == b"th"
  text = vocabulary.decode([t for t in got[0]["inputs"].tolist() if t < sentinel - 100])
  assert any("\u0e00" <= c <= "\u0e7f" for c in text)  # Thai script


@pytest.mark.parametrize("task", ["prefix_lm", "lead_sentence", "iid_denoising"])
def test_other_unsupervised_tasks(names, task):
  got = examples(f"{PREFIX}xgen_{task}_ru", n=2)
  assert len(got) == 2
  for ex in got:
    assert len(ex["inputs"]) > 1 and len(ex["targets"]) > 1
    assert ex["task"] == languages.TASK_IDS[task] and ex["language"] == 13


def test_factorized_mixture_covers_language_x_task(names, wikilingua):
  mixture = seqio.get_mixture_or_task(f"{PREFIX}xgen_unsup")
  # Tatoeba has text in all 18 languages, WikiLingua samples in 16.
  assert len(mixture.tasks) == 18 * len(wikilingua.FACTORIZED_TASKS)


def test_mix_unsup_rate(names, wikilingua):
  wikilingua.register_mix_unsup(["th"], rate=0.3, name_prefix=PREFIX)
  mixture = seqio.get_mixture_or_task(f"{PREFIX}wikilingua0_mix_unsup_th")
  got = examples(mixture.name, "train", n=300, passthrough_features=["task", "language"],
                 seed=0)
  counts = collections.Counter(int(ex["task"]) for ex in got)
  assert set(counts) == {0, 1}
  assert 0.2 < counts[1] / len(got) < 0.4
  assert {int(ex["language"]) for ex in got if ex["task"] == 1} == {15}
  evaluated = [t.name for t in mixture.tasks if "validation" in t.splits and t.metric_fns]
  assert evaluated == [f"{PREFIX}wikilingua0_th", f"{PREFIX}wikilingua_en"]
  wikilingua.register_mix_unsup(["th"], name_prefix=PREFIX)  # back to 1%
  assert seqio.get_mixture_or_task(mixture.name).get_rate(
      seqio.get_mixture_or_task(f"{PREFIX}xgen_span_corruption_th")) == 0.01


def test_registering_again_and_bad_input(names, wikilingua, shared_data, vocabulary, tmp_path):
  again = wikilingua.register_wikilingua(str(shared_data), vocabulary, ["th", "en"], PREFIX)
  assert f"{PREFIX}wikilingua0" in again and len(examples(f"{PREFIX}wikilingua_th")) == 2
  with pytest.raises(FileNotFoundError, match="wiki_lingua_vietnamese_vi.jsonl"):
    wikilingua.register_wikilingua(str(shared_data), vocabulary, ["vi"], PREFIX)
  with pytest.raises(FileNotFoundError, match="no WikiLingua JSONL files"):
    wikilingua.register_wikilingua(str(tmp_path), vocabulary, name_prefix="x_")
  with pytest.raises(ValueError, match="unknown language code 'klingon'"):
    wikilingua.register_wikilingua(None, vocabulary, ["klingon"], "x_")
  with pytest.raises(ValueError, match="call register_wikilingua"):
    wikilingua.register_mix_unsup(["th"], name_prefix="nothing_")
  with pytest.raises(ValueError, match=r"rate must be in \(0, 1\)"):
    wikilingua.register_mix_unsup(["th"], rate=1.5, name_prefix=PREFIX)
  with pytest.raises(FileNotFoundError, match="no Tatoeba text for 'th'"):
    wikilingua.register_unsupervised(["th"], data_dir=str(tmp_path), vocabulary=vocabulary,
                                     name_prefix="x_")


def test_jsonl_source_shards_examples(shared_data):
  source = sources.wikilingua_source("de", str(shared_data))
  def texts(shard):
    dataset = source.get_dataset("test", shuffle=False, shard_info=shard)
    return [x["target"].decode() for x in dataset.as_numpy_iterator()]
  both = texts(None)
  halves = texts(seqio.ShardInfo(0, 2)) + texts(seqio.ShardInfo(1, 2))
  assert len(both) == 2 and sorted(halves) == sorted(both)


def test_register_local_hook_keeps_vocabulary_and_rebuilds_mixtures(names, wikilingua,
                                                                      shared_data, vocabulary):
  # Back to TFDS for Thai under the prefix, then the DATA_DIR hook reads files again.
  wikilingua.register_wikilingua(None, vocabulary, ["th"], PREFIX)
  assert isinstance(seqio.get_mixture_or_task(f"{PREFIX}wikilingua_th").source,
                    seqio.TfdsDataSource)
  local = wikilingua.register_local([str(shared_data / "nothing"), str(shared_data)], PREFIX)
  task = seqio.get_mixture_or_task(f"{PREFIX}wikilingua_th")
  assert isinstance(task.source, sources.JsonlSource)
  assert task.output_features["targets"].vocabulary is vocabulary
  assert f"{PREFIX}wikilingua0" in local and f"{PREFIX}xgen_unsup" in local
  mixture = seqio.get_mixture_or_task(f"{PREFIX}wikilingua0")
  assert seqio.get_mixture_or_task(f"{PREFIX}wikilingua0_th") in mixture.tasks
  assert wikilingua.register_local(str(shared_data / "glue"), PREFIX) == []


def test_seqio_evaluator_scores_each_language(names, shared_data, vocabulary):
  """A "model" that copies the reference summary scores SP-ROUGE 100 and is
  recognised in each language; the results map back to languages."""
  from spot.xgen import report

  small = [f"{PREFIX}wikilingua_en", f"{PREFIX}wikilingua0_th", f"{PREFIX}wikilingua0_ja"]
  seqio.MixtureRegistry.remove(f"{PREFIX}eval_small")
  seqio.MixtureRegistry.add(f"{PREFIX}eval_small", [(n, 1.0) for n in small])
  evaluator = seqio.Evaluator(
      mixture_or_task_name=f"{PREFIX}eval_small", eval_split="validation",
      feature_converter=seqio.EncDecFeatureConverter(pack=False), use_cached=False,
      sequence_length={"inputs": 256, "targets": 512})

  def copy_reference(dataset, model_feature_shapes=None):
    return [(i, ex["decoder_target_tokens"].tolist()) for i, ex in dataset.as_numpy_iterator()]

  metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=copy_reference,
                                  score_fn=None)
  results = {task: {k: float(getattr(v, "value", v)) for k, v in values.items()}
             for task, values in metrics.result().items()}
  by_language = report.scores_by_language(results)
  assert sorted(by_language) == ["en", "ja", "th"]
  for lang, scores in by_language.items():
    assert scores["sp_rougeL"] == pytest.approx(100), lang
    assert scores[f"lid_{lang}"] > 90, lang
