"""xGen metrics: SP-ROUGE, LID_lang and ASCII, on the paper's 0-100 scale.

Vu et al. (2022) score zero-shot cross-lingual summaries with:

- SP-ROUGE: ROUGE-1/2/L F-measure over the SentencePiece pieces of mT5's
  vocabulary instead of whitespace words, so that languages written without
  spaces (Thai, Chinese, Japanese) are scored fairly. rouge-score's default
  tokenizer would drop every non-Latin character.
- LID_lang: mean cld3 confidence that an output is in `lang`; an output that
  cld3 assigns to another language counts 0. LID_en measures how often the
  model "forgets" the target language and answers in English.
- ASCII: mean share of ASCII characters per output, a cheap script check.

Each metric is a plain function of string lists, a SeqIO metric function
factory (`fn(targets, predictions) -> dict`), and part of `score`.

Conventions: scores are arithmetic means over examples (no bootstrap), times
100. An empty prediction (nothing but whitespace) scores 0 on every metric. An
output without any letter (digits or punctuation only) is undetermined for
cld3 and scores 0 on every LID_lang.

Vocabulary coverage: SP-ROUGE is only meaningful with a vocabulary that covers
the language. Pieces a model does not know all encode as the one `<unk>`
piece, and matching `<unk>`s count as overlap: with T5's English vocabulary
on Vietnamese, 15% of the pieces are `<unk>` and SP-ROUGE-L rises by about
10 points. `unk_rate` measures the share of unknown pieces in the targets;
above `UNK_RATE_WARN` percent, SP-ROUGE warns with an `UnknownPiecesWarning`.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import sentencepiece
from etils import epath
from rouge_score import rouge_scorer
from rouge_score import tokenizers as rouge_tokenizers

from spot import errors
from spot.xgen import cld3
from spot.xgen import languages

MT5_SPM = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# Percent of the targets' pieces unknown to the vocabulary above which SP-ROUGE
# warns that the vocabulary does not cover the language.
UNK_RATE_WARN = 1.0
# cld3 reads at most this many bytes of each output (its own upper limit).
LID_MAX_BYTES = 10000

SentencePieceLike = Union[str, os.PathLike, sentencepiece.SentencePieceProcessor, Any]
MetricFn = Callable[[Sequence[str], Sequence[str]], dict[str, float]]


class UnknownPiecesWarning(UserWarning):
  """The SentencePiece model does not cover the targets' language: many of
  their pieces are `<unk>`, which inflates SP-ROUGE."""

  def __init__(self, message: str, *, rate: float, unknown: int, total: int,
               spm: str, lang: Optional[str]):
    super().__init__(message)
    self.rate, self.unknown, self.total, self.spm, self.lang = rate, unknown, total, spm, lang


# ---------------------------------------------------------------- input checks


def _as_text(value: Any, what: str, index: int) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if not isinstance(value, str):
    raise TypeError(f"{what}[{index}] is {type(value).__name__}, not a string; pass decoded "
                    "text, one string per example")
  return value


def _texts(values: Sequence[Any], what: str) -> list[str]:
  if isinstance(values, (str, bytes)):
    raise TypeError(f"{what} must be a list of strings, one per example, not a single string")
  return [_as_text(v, what, i) for i, v in enumerate(values)]


def check_pairs(predictions: Sequence[Any], targets: Sequence[Any]) -> tuple[list[str], list[str]]:
  """Validates and decodes paired outputs; raises a ValueError naming both counts."""
  predictions, targets = _texts(predictions, "predictions"), _texts(targets, "targets")
  if len(predictions) != len(targets):
    raise errors.DataError(f"got {len(predictions)} predictions but {len(targets)} targets; "
                           "they must pair up one to one (one example per line, in the same "
                           "order)")
  if not predictions:
    raise errors.DataError("no examples to score: predictions and targets are empty")
  return predictions, targets


def _is_empty(text: str) -> bool:
  return not text.strip()


# -------------------------------------------------------------------- SP-ROUGE


@functools.lru_cache(maxsize=8)
def _load_sentencepiece_file(path: str) -> sentencepiece.SentencePieceProcessor:
  model = epath.Path(path)
  is_local = "://" not in path
  if is_local and not model.is_file():
    raise errors.MissingInputError(f"SentencePiece model {path!r} not found; pass the path of "
                                   f"a .model file (mT5's is {MT5_SPM})")
  try:
    proto = model.read_bytes()
  except Exception as e:  # gs:// without credentials or network, permissions, ...
    raise OSError(f"could not read SentencePiece model {path!r} ({type(e).__name__}: {e}); "
                  "copy it locally and pass the local path") from e
  processor = sentencepiece.SentencePieceProcessor()
  try:
    processor.LoadFromSerializedProto(proto)
  except Exception as e:
    raise errors.DataError(f"{path!r} is not a SentencePiece model ({e}); pass a .model file "
                           "written by the sentencepiece trainer") from e
  return processor


def load_sentencepiece(spm: SentencePieceLike = MT5_SPM) -> sentencepiece.SentencePieceProcessor:
  """A SentencePiece processor from a path (local or gs://), a processor, or a
  `seqio.SentencePieceVocabulary` (its own processor is used)."""
  if isinstance(spm, sentencepiece.SentencePieceProcessor):
    return spm
  if isinstance(spm, (str, os.PathLike)):
    return _load_sentencepiece_file(os.fspath(spm))
  if hasattr(spm, "sentencepiece_model_file"):  # seqio.SentencePieceVocabulary
    return _load_sentencepiece_file(str(spm.sentencepiece_model_file))
  raise TypeError(f"spm must be a SentencePiece model path, a SentencePieceProcessor or a "
                  f"seqio.SentencePieceVocabulary, not {type(spm).__name__}")


def _spm_name(spm: SentencePieceLike) -> str:
  if isinstance(spm, (str, os.PathLike)):
    return os.fspath(spm)
  if hasattr(spm, "sentencepiece_model_file"):
    return str(spm.sentencepiece_model_file)
  return "the given SentencePiece model"


def unknown_pieces(texts: Sequence[str], spm: SentencePieceLike = MT5_SPM) -> tuple[int, int]:
  """(unknown, total): how many of the texts' pieces are `<unk>` under `spm`."""
  processor = load_sentencepiece(spm)
  unk = processor.unk_id()
  unknown = total = 0
  for text in _texts(texts, "texts"):
    ids = processor.encode(text)
    total += len(ids)
    unknown += sum(1 for i in ids if i == unk)
  return unknown, total


def unk_rate(texts: Sequence[str], spm: SentencePieceLike = MT5_SPM) -> float:
  """Percent (0-100) of the texts' SentencePiece pieces that are `<unk>`; 0 for no pieces."""
  unknown, total = unknown_pieces(texts, spm)
  return 100.0 * unknown / total if total else 0.0


def check_coverage(targets: Sequence[str], spm: SentencePieceLike = MT5_SPM,
                   lang: Optional[str] = None, threshold: float = UNK_RATE_WARN) -> float:
  """The targets' unknown-piece rate (percent); warns (UnknownPiecesWarning)
  above `threshold`, since SP-ROUGE then matches `<unk>` against `<unk>`."""
  unknown, total = unknown_pieces(targets, spm)
  rate = 100.0 * unknown / total if total else 0.0
  if rate > threshold:
    name = _spm_name(spm)
    where = f" for language {lang!r}" if lang else ""
    cover = f"covers {lang!r}" if lang else "covers the language"
    warnings.warn(UnknownPiecesWarning(
        f"{rate:.1f}% of the target pieces ({unknown} of {total}) are unknown to the "
        f"SentencePiece model {name}{where}; SP-ROUGE counts matching unknown pieces as "
        f"overlap and is inflated: use a model that {cover} (mT5's: {MT5_SPM})",
        rate=rate, unknown=unknown, total=total, spm=name, lang=lang), stacklevel=3)
  return rate


class PieceTokenizer(rouge_tokenizers.Tokenizer):
  """rouge-score tokenizer returning the SentencePiece pieces of a text, as is
  (no lowercasing, no stemming, the "▁" word-start marker kept)."""

  def __init__(self, processor: sentencepiece.SentencePieceProcessor):
    self._processor = processor

  def tokenize(self, text: str) -> list[str]:
    return self._processor.encode(text, out_type=str)


def sp_rouge(predictions: Sequence[str], targets: Sequence[str],
             spm: SentencePieceLike = MT5_SPM, lang: Optional[str] = None) -> dict[str, float]:
  """Mean ROUGE-1/2/L F-measure (x100) over SentencePiece pieces.

  Returns `{"sp_rouge1", "sp_rouge2", "sp_rougeL"}`; ROUGE-L is the paper's
  headline SP-ROUGE. Warns (UnknownPiecesWarning) when `spm` leaves more than
  UNK_RATE_WARN percent of the targets' pieces unknown; `lang` only names
  the language in that warning.
  """
  predictions, targets = check_pairs(predictions, targets)
  check_coverage(targets, spm, lang)
  return _sp_rouge(predictions, targets, spm)


def _sp_rouge(predictions: list[str], targets: list[str],
              spm: SentencePieceLike) -> dict[str, float]:
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES),
                                    tokenizer=PieceTokenizer(load_sentencepiece(spm)))
  totals = dict.fromkeys(ROUGE_TYPES, 0.0)
  for prediction, target in zip(predictions, targets):
    if _is_empty(prediction):
      continue
    scores = scorer.score(target, prediction)
    for name in ROUGE_TYPES:
      totals[name] += scores[name].fmeasure
  return {f"sp_{name}": 100.0 * totals[name] / len(predictions) for name in ROUGE_TYPES}


# ------------------------------------------------------------------------- LID


def detect_languages(texts: Sequence[str],
                     max_num_bytes: int = LID_MAX_BYTES) -> list[tuple[str, float]]:
  """cld3's (language, probability) for each text; ("und", 0.0) when it has no letter."""
  identifier = cld3.identifier(max_num_bytes)
  out = []
  for text in _texts(texts, "texts"):
    if not any(c.isalpha() for c in text):  # cld3 guesses on empty input; we do not
      out.append(("und", 0.0))
      continue
    result = identifier.FindLanguage(text)
    out.append((result.language, float(result.probability)))
  return out


def _lid_from_detected(detected: Sequence[tuple[str, float]], lang: str) -> float:
  target = languages.CLD3_CODES[languages.check_language(lang)]
  if not detected:
    raise errors.DataError("no predictions to score")
  return 100.0 * sum(p for code, p in detected if code == target) / len(detected)


def lid(predictions: Sequence[str], lang: str) -> float:
  """LID_lang (x100): mean cld3 confidence that each output is in `lang`,
  counting 0 for an output detected as another language."""
  languages.check_language(lang)
  return _lid_from_detected(detect_languages(predictions), lang)


# ----------------------------------------------------------------------- ASCII


def ascii_share(text: str) -> float:
  """Share of ASCII characters in `text` (x100); 0 for an empty text."""
  if not text:
    return 0.0
  return 100.0 * sum(1 for c in text if ord(c) < 128) / len(text)


def ascii_score(predictions: Sequence[str]) -> float:
  """ASCII (x100): mean share of ASCII characters per output."""
  predictions = _texts(predictions, "predictions")
  if not predictions:
    raise errors.DataError("no predictions to score")
  return sum(0.0 if _is_empty(p) else ascii_share(p) for p in predictions) / len(predictions)


# ----------------------------------------------------------------- all at once


def score_keys(lang: str) -> tuple[str, ...]:
  """The keys `score` returns for `lang`, in order."""
  keys = ("sp_rouge1", "sp_rouge2", "sp_rougeL", "lid_en", f"lid_{lang}", "ascii", "unk_rate")
  return tuple(dict.fromkeys(keys))


def score(predictions: Sequence[str], targets: Sequence[str], lang: str,
          spm: SentencePieceLike = MT5_SPM) -> dict[str, float]:
  """Every xGen metric for outputs meant to be in `lang`.

  Returns `sp_rouge1`, `sp_rouge2`, `sp_rougeL`, `lid_en`, `lid_<lang>` and
  `ascii` (one `lid_en` when `lang` is "en"), all on a 0-100 scale, and
  `unk_rate`: the percent of the targets' pieces unknown to `spm` (not a
  quality score: above UNK_RATE_WARN it warns that SP-ROUGE is inflated).
  """
  languages.check_language(lang)
  predictions, targets = check_pairs(predictions, targets)
  rate = check_coverage(targets, spm, lang)
  result = _sp_rouge(predictions, targets, spm)
  detected = detect_languages(predictions)
  for code in dict.fromkeys(("en", lang)):
    result[f"lid_{code}"] = _lid_from_detected(detected, code)
  result["ascii"] = ascii_score(predictions)
  result["unk_rate"] = rate
  return {key: result[key] for key in score_keys(lang)}


# ------------------------------------------------------ SeqIO metric functions


def sp_rouge_metric(spm: SentencePieceLike = MT5_SPM, lang: Optional[str] = None) -> MetricFn:
  """SeqIO metric `fn(targets, predictions)` for SP-ROUGE; loads `spm` lazily.
  It warns as `sp_rouge` does when `spm` does not cover the targets (`lang`
  names their language in the warning); `unk_rate` is not returned, so task
  scores stay means of quality metrics."""

  def sp_rouge_fn(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    return sp_rouge(predictions, targets, spm, lang)

  return sp_rouge_fn


def lid_metric(lang: str) -> MetricFn:
  """SeqIO metric `fn(targets, predictions)` returning `{"lid_<lang>": ...}`."""
  languages.check_language(lang)

  def lid_fn(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    check_pairs(predictions, targets)
    return {f"lid_{lang}": lid(predictions, lang)}

  lid_fn.__name__ = f"lid_{lang}"
  return lid_fn


def ascii_metric() -> MetricFn:
  """SeqIO metric `fn(targets, predictions)` returning `{"ascii": ...}`."""

  def ascii_fn(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    check_pairs(predictions, targets)
    return {"ascii": ascii_score(predictions)}

  return ascii_fn


def xgen_metrics(lang: str, spm: SentencePieceLike = MT5_SPM) -> list[MetricFn]:
  """The metric functions of a task whose outputs should be in `lang`:
  SP-ROUGE, LID_en, LID_<lang> and ASCII (together, `score`'s keys)."""
  languages.check_language(lang)
  fns = [sp_rouge_metric(spm, lang), lid_metric("en")]
  if lang != "en":
    fns.append(lid_metric(lang))
  return fns + [ascii_metric()]

