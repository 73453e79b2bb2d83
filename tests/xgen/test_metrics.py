"""SP-ROUGE, LID and ASCII on real multilingual text from ../shared/data."""

from __future__ import annotations

import collections
import csv
import itertools
import json
import warnings

import pytest
import sentencepiece

from spot.xgen import metrics

STSB_LANGUAGES = ("de", "ja", "zh", "ru", "fr")


def stsb_pairs(shared_data, lang: str, n: int = 25) -> tuple[list[str], list[str]]:
  """(sentence1, sentence2) columns of the translated STS-B test set."""
  path = shared_data / "multilingual_text" / "stsb_multi_mt" / f"stsb-{lang}-test.csv"
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(itertools.islice(csv.reader(f), n))
  return [r[0] for r in rows], [r[1] for r in rows]


def wikilingua_rows(shared_data, name: str) -> list[dict]:
  path = shared_data / "wikilingua" / "gem_wiki_lingua_subset" / name
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tatoeba(shared_data, name: str, min_chars: int, n: int = 20) -> list[str]:
  path = shared_data / "multilingual_text" / "tatoeba_laser_v1" / name
  lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
  return [line for line in lines if len(line) >= min_chars][:n]


# -------------------------------------------- an independent ROUGE computation


def ngram_f1(reference: list[str], candidate: list[str], n: int) -> float:
  ref = collections.Counter(tuple(reference[i:i + n]) for i in range(len(reference) - n + 1))
  cand = collections.Counter(tuple(candidate[i:i + n]) for i in range(len(candidate) - n + 1))
  overlap = sum((ref & cand).values())
  if not overlap:
    return 0.0
  precision, recall = overlap / sum(cand.values()), overlap / sum(ref.values())
  return 2 * precision * recall / (precision + recall)


def lcs_f1(reference: list[str], candidate: list[str]) -> float:
  previous = [0] * (len(candidate) + 1)
  for r in reference:
    current = [0]
    for j, c in enumerate(candidate):
      current.append(previous[j] + 1 if r == c else max(previous[j + 1], current[j]))
    previous = current
  lcs = previous[-1]
  if not lcs:
    return 0.0
  precision, recall = lcs / len(candidate), lcs / len(reference)
  return 2 * precision * recall / (precision + recall)


def reference_sp_rouge(predictions, targets, model_path) -> dict[str, float]:
  processor = sentencepiece.SentencePieceProcessor(model_file=model_path)
  totals = collections.defaultdict(float)
  for prediction, target in zip(predictions, targets):
    p, t = processor.encode(prediction, out_type=str), processor.encode(target, out_type=str)
    totals["sp_rouge1"] += ngram_f1(t, p, 1)
    totals["sp_rouge2"] += ngram_f1(t, p, 2)
    totals["sp_rougeL"] += lcs_f1(t, p)
  return {k: 100 * v / len(predictions) for k, v in totals.items()}


@pytest.mark.parametrize("lang", STSB_LANGUAGES)
def test_sp_rouge_matches_independent_computation(shared_data, spm_model, lang):
  predictions, targets = stsb_pairs(shared_data, lang)
  got = metrics.sp_rouge(predictions, targets, spm_model)
  want = reference_sp_rouge(predictions, targets, spm_model)
  assert got.keys() == want.keys()
  for key in want:
    assert got[key] == pytest.approx(want[key], abs=1e-9), key
  assert 0 < got["sp_rouge2"] < got["sp_rouge1"] < 100


def test_sp_rouge_on_thai_wikilingua(shared_data, spm_model):
  rows = wikilingua_rows(shared_data, "wiki_lingua_thai_th.jsonl")
  targets = [r["tgt_th"] for r in rows]
  predictions = [r["src_th"][:300] for r in rows]
  got = metrics.sp_rouge(predictions, targets, spm_model)
  want = reference_sp_rouge(predictions, targets, spm_model)
  assert got == pytest.approx(want)
  # Whitespace-word ROUGE sees almost nothing in Thai; pieces do.
  assert got["sp_rougeL"] > 10
  assert metrics.sp_rouge(targets, targets, spm_model)["sp_rougeL"] == pytest.approx(100)


def test_empty_prediction_scores_zero(shared_data, spm_model):
  predictions, targets = stsb_pairs(shared_data, "de", n=4)
  full = metrics.score(predictions, targets, "de", spm_model)
  predictions[0] = "   "
  partial = metrics.score(predictions, targets, "de", spm_model)
  alone = metrics.score(predictions[1:], targets[1:], "de", spm_model)
  for key in full:
    assert partial[key] == pytest.approx(alone[key] * 3 / 4), key
  assert metrics.score([""], ["Hallo Welt"], "de", spm_model) == dict.fromkeys(
      ("sp_rouge1", "sp_rouge2", "sp_rougeL", "lid_en", "lid_de", "ascii", "unk_rate"), 0.0)


def test_score_keys_and_scale(shared_data, spm_model):
  predictions, targets = stsb_pairs(shared_data, "ru", n=10)
  scores = metrics.score(predictions, targets, "ru", spm_model)
  assert list(scores) == ["sp_rouge1", "sp_rouge2", "sp_rougeL", "lid_en", "lid_ru", "ascii",
                          "unk_rate"]
  assert all(0 <= v <= 100 for v in scores.values())
  assert scores["lid_ru"] > 50 and scores["lid_en"] < 5
  assert list(metrics.score(predictions, targets, "en", spm_model)) == [
      "sp_rouge1", "sp_rouge2", "sp_rougeL", "lid_en", "ascii", "unk_rate"]


# -------------------------------------------------------------------- bad input


def test_length_mismatch_names_both_counts(spm_model):
  with pytest.raises(ValueError, match="3 predictions but 2 targets"):
    metrics.score(["a", "b", "c"], ["a", "b"], "en", spm_model)


def test_unknown_language_lists_known_codes(spm_model):
  with pytest.raises(ValueError, match=r"unknown language code 'xx'.*\bth\b.*\bvi\b"):
    metrics.score(["a"], ["a"], "xx", spm_model)
  with pytest.raises(ValueError, match="unknown language code"):
    metrics.lid_metric("thai")


def test_bad_inputs_are_clear(tmp_path, spm_model):
  with pytest.raises(FileNotFoundError, match="SentencePiece model .* not found"):
    metrics.sp_rouge(["a"], ["a"], str(tmp_path / "missing.model"))
  junk = tmp_path / "junk.model"
  junk.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="not a SentencePiece model"):
    metrics.sp_rouge(["a"], ["a"], str(junk))
  with pytest.raises(ValueError, match="no examples"):
    metrics.score([], [], "en", spm_model)
  with pytest.raises(TypeError, match=r"predictions\[1\] is int"):
    metrics.score(["a", 3], ["a", "b"], "en", spm_model)
  with pytest.raises(TypeError, match="list of strings"):
    metrics.sp_rouge("abc", "abc", spm_model)


def test_accepts_a_seqio_vocabulary_and_bytes(shared_data, spm_model):
  import seqio

  predictions, targets = stsb_pairs(shared_data, "fr", n=5)
  vocabulary = seqio.SentencePieceVocabulary(spm_model)
  by_path = metrics.sp_rouge(predictions, targets, spm_model)
  assert metrics.sp_rouge(predictions, targets, vocabulary) == by_path
  assert metrics.sp_rouge([p.encode() for p in predictions], targets, spm_model) == by_path


# -------------------------------------------------------------------------- LID


@pytest.mark.parametrize("lang, name, min_chars", [
    ("th", "tatoeba.tha-eng.tha", 20),
    ("en", "tatoeba.deu-eng.eng", 40),
    ("ru", "tatoeba.rus-eng.rus", 40),
    ("zh", "tatoeba.cmn-eng.cmn", 10),
    ("ar", "tatoeba.ara-eng.ara", 30),
])
def test_lid_recognises_scripts(shared_data, lang, name, min_chars):
  texts = tatoeba(shared_data, name, min_chars)
  assert len(texts) >= 10
  detected = metrics.detect_languages(texts)
  assert sum(code == lang for code, _ in detected) >= 0.9 * len(texts)
  assert metrics.lid(texts, lang) > 90
  other = "en" if lang != "en" else "th"
  assert metrics.lid(texts, other) < 5


def test_thai_is_thai_with_high_confidence(shared_data):
  rows = wikilingua_rows(shared_data, "wiki_lingua_thai_th.jsonl")
  summaries = [r["tgt_th"] for r in rows]
  for code, probability in metrics.detect_languages(summaries):
    assert code == "th" and probability > 0.9
  assert metrics.lid(summaries, "th") > 90
  # An English answer to a Thai article is the forgetting xGen measures.
  english = [r["tgt_en"] for r in rows]
  assert metrics.lid(english, "th") == 0
  assert metrics.lid(english, "en") > 90


def test_lid_without_letters_is_undetermined():
  assert metrics.detect_languages(["", "  ", "123 456", "?!"]) == [("und", 0.0)] * 4
  assert metrics.lid(["", "12345"], "ja") == 0  # cld3 alone would guess Japanese


# ------------------------------------------------------------------------ ASCII


def test_ascii_on_mixed_strings():
  assert metrics.ascii_share("hello") == 100
  assert metrics.ascii_share("สวัสดี") == 0
  assert metrics.ascii_share("abcไทย") == pytest.approx(50)
  assert metrics.ascii_share("Привет, мир!") == pytest.approx(100 * 3 / 12)
  assert metrics.ascii_share("東京 Tokyo") == pytest.approx(100 * 6 / 8)
  assert metrics.ascii_share("") == 0
  assert metrics.ascii_score(["hello", "สวัสดี", "abcไทย", ""]) == pytest.approx(150 / 4)


# ------------------------------------------------------------- SeqIO functions


def test_seqio_metric_functions(shared_data, spm_model):
  import inspect

  predictions, targets = stsb_pairs(shared_data, "ja", n=8)
  fns = metrics.xgen_metrics("ja", spm_model)
  for fn in fns:
    assert list(inspect.signature(fn).parameters) == ["targets", "predictions"]
  merged = {}
  for fn in fns:
    merged.update(fn(targets, predictions))
  expected = metrics.score(predictions, targets, "ja", spm_model)
  assert expected.pop("unk_rate") == 0  # not a SeqIO metric: task scores stay quality means
  assert merged == pytest.approx(expected)
  assert len(metrics.xgen_metrics("en", spm_model)) == 3
  with pytest.raises(ValueError, match="2 predictions but 1 targets"):
    metrics.lid_metric("ja")(["a"], ["b", "c"])


# --------------------------------------------------------- vocabulary coverage


def t5_vocab(shared_data):
  path = shared_data / "t5_vocab" / "spiece.model"
  if not path.is_file():
    pytest.skip(f"needs the English T5 vocabulary at {path}")
  return str(path)


def vietnamese(shared_data) -> tuple[list[str], list[str]]:
  """(predictions, targets): unrelated Vietnamese Tatoeba sentences (WikiLingua's
  Vietnamese sample is held out)."""
  path = shared_data / "multilingual_text" / "tatoeba_laser_v1" / "tatoeba.vie-eng.vie"
  if not path.is_file():
    pytest.skip(f"needs Vietnamese text at {path}")
  lines = path.read_text(encoding="utf-8").splitlines()
  return lines[20:40], lines[:20]


def test_english_vocabulary_on_vietnamese_warns_and_reports_the_rate(shared_data, spm_model):
  t5 = t5_vocab(shared_data)
  predictions, targets = vietnamese(shared_data)
  assert metrics.unknown_pieces(targets, t5) == (84, 544)
  assert metrics.unk_rate(targets, t5) == pytest.approx(100 * 84 / 544)
  with pytest.warns(metrics.UnknownPiecesWarning,
                    match=r"^15\.4% of the target pieces \(84 of 544\) are unknown to the "
                    r"SentencePiece model .*t5_vocab/spiece\.model for language 'vi'") as caught:
    inflated = metrics.score(predictions, targets, "vi", t5)
  assert len(caught) == 1 and caught[0].message.rate == pytest.approx(100 * 84 / 544)
  assert inflated["unk_rate"] == pytest.approx(15.4412, abs=1e-4)
  # Matching <unk> pieces count as overlap: SP-ROUGE-L rises by about 10 points.
  assert inflated["sp_rougeL"] == pytest.approx(30.79, abs=0.01)
  with warnings.catch_warnings():
    warnings.simplefilter("error", metrics.UnknownPiecesWarning)
    covered = metrics.score(predictions, targets, "vi", spm_model)
  assert covered["unk_rate"] == 0.0
  assert covered["sp_rougeL"] < inflated["sp_rougeL"] - 10


def test_coverage_warning_threshold_and_the_seqio_metric(shared_data):
  t5 = t5_vocab(shared_data)
  predictions, targets = vietnamese(shared_data)
  with warnings.catch_warnings():
    warnings.simplefilter("error", metrics.UnknownPiecesWarning)
    assert metrics.check_coverage(targets, t5, "vi", threshold=15.5) == pytest.approx(15.4412,
                                                                                     abs=1e-4)
    english = tatoeba(shared_data, "tatoeba.deu-eng.eng", 20)
    assert metrics.score(english, english, "en", t5)["unk_rate"] == 0.0  # T5 covers English
  with pytest.warns(metrics.UnknownPiecesWarning, match="for language 'vi'"):
    result = metrics.xgen_metrics("vi", t5)[0](targets, predictions)
  assert list(result) == ["sp_rouge1", "sp_rouge2", "sp_rougeL"]
  rows = wikilingua_rows(shared_data, "wiki_lingua_thai_th.jsonl")
  with pytest.warns(metrics.UnknownPiecesWarning, match=r"^32\.5% .* \(39 of 120\)"):
    metrics.sp_rouge([r["src_th"][:200] for r in rows], [r["tgt_th"] for r in rows], t5)
