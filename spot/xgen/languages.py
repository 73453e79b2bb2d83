"""Language and task tables for xGen: codes, names, cld3 codes, fixed ids.

The ids are part of the data format: factorized prompts look up a language
sub-prompt by `language` id and a task sub-prompt by `task` id, so a prompt
trained today must mean the same thing tomorrow. Never reorder these tables;
only append.
"""

from __future__ import annotations

from typing import Iterable

from spot import errors

# The 18 WikiLingua languages in the paper's order (alphabetical by English
# name), as (code, GEM/TFDS language name).
WIKILINGUA_LANGUAGES: tuple[tuple[str, str], ...] = (
    ("ar", "arabic"), ("zh", "chinese"), ("cs", "czech"), ("nl", "dutch"),
    ("en", "english"), ("fr", "french"), ("de", "german"), ("hi", "hindi"),
    ("id", "indonesian"), ("it", "italian"), ("ja", "japanese"), ("ko", "korean"),
    ("pt", "portuguese"), ("ru", "russian"), ("es", "spanish"), ("th", "thai"),
    ("tr", "turkish"), ("vi", "vietnamese"),
)
WIKILINGUA_CODES: tuple[str, ...] = tuple(code for code, _ in WIKILINGUA_LANGUAGES)
LANGUAGE_NAMES: dict[str, str] = dict(WIKILINGUA_LANGUAGES)

# cld3's code for each WikiLingua code. They coincide today (cld3 reports
# Chinese as "zh" and Hebrew as "iw"); the table keeps the mapping explicit.
CLD3_CODES: dict[str, str] = {code: code for code in WIKILINGUA_CODES}

# ISO 639-3 codes of the Tatoeba/LASER files (`tatoeba.<xxx>-eng.<xxx>`).
TATOEBA_CODES: dict[str, str] = {
    "ar": "ara", "zh": "cmn", "cs": "ces", "nl": "nld", "en": "eng", "fr": "fra",
    "de": "deu", "hi": "hin", "id": "ind", "it": "ita", "ja": "jpn", "ko": "kor",
    "pt": "por", "ru": "rus", "es": "spa", "th": "tha", "tr": "tur", "vi": "vie",
}

# mC4 (TFDS `c4/multilingual`) language codes, in TFDS's order.
MC4_CODES: tuple[str, ...] = tuple("""
af am ar az be bg bg-Latn bn ca ceb co cs cy da de el el-Latn en eo es et eu fa
fi fil fr fy ga gd gl gu ha haw hi hi-Latn hmn ht hu hy id ig is it iw ja ja-Latn
jv ka kk km kn ko ku ky la lb lo lt lv mg mi mk ml mn mr ms mt my ne nl no ny pa
pl ps pt ro ru ru-Latn sd si sk sl sm sn so sq sr st su sv sw ta te tg th tr uk
ur uz vi xh yi yo zh zh-Latn zu
""".split())

# Fixed language ids: the 18 WikiLingua languages first (0-17), then every
# other mC4 language in mC4's order.
LANGUAGE_IDS: dict[str, int] = {
    code: i for i, code in enumerate(
        WIKILINGUA_CODES + tuple(c for c in MC4_CODES if c not in WIKILINGUA_CODES))
}

# Fixed task ids for factorized prompts. `summarization` is WikiLingua; the
# rest are the unsupervised tasks of spot/xgen/preprocessors.py.
TASK_IDS: dict[str, int] = {
    "summarization": 0,
    "span_corruption": 1,
    "prefix_lm": 2,
    "lead_sentence": 3,
    "iid_denoising": 4,
}


def check_language(code: str, known: Iterable[str] = WIKILINGUA_CODES,
                   what: str = "language code") -> str:
  """Returns `code` if it is in `known`, else raises a UsageError (a
  ValueError) listing them."""
  known = tuple(known)
  if code not in known:
    raise errors.UsageError(f"unknown {what} {code!r}; known: {', '.join(known)}")
  return code


def language_id(code: str) -> int:
  """The fixed id of a WikiLingua or mC4 language code."""
  return LANGUAGE_IDS[check_language(code, LANGUAGE_IDS)]


def task_id(name: str) -> int:
  """The fixed id of an xGen task name (see TASK_IDS)."""
  return TASK_IDS[check_language(name, TASK_IDS, what="xGen task")]


def tfds_config(code: str) -> str:
  """GEM's WikiLingua config for a language, e.g. "th" -> "wiki_lingua_thai_th"."""
  check_language(code)
  return f"wiki_lingua_{LANGUAGE_NAMES[code]}_{code}"
