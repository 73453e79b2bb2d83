"""SeqIO registrations for xGen: WikiLingua-0, SUP, unsupervised tasks, Mix-Unsup.

Registered at import with the defaults (TFDS sources, mT5's vocabulary; no
data is read until a dataset is iterated):

- `wikilingua_<xx>` for the 18 languages: article -> summary in xx; splits
  train / validation / test. Training on `wikilingua_<xx>` is the supervised
  upper bound (SUP); `wikilingua_en` is WikiLingua-0's training task.
- `wikilingua0_<xx>` (xx != en): the same data, validation / test only, so a
  mixture can evaluate on xx without ever training on it.
- mixture `wikilingua0`: trains on English only, evaluates on all 18.
- `xgen_<task>_<xx>` for task in span_corruption, prefix_lm, lead_sentence,
  iid_denoising (spot/xgen/preprocessors.py), from mC4.
- mixture `xgen_unsup`: every language x task combination of the factorized
  tasks, equally weighted, for training factorized prompts.
- mixtures `wikilingua0_mix_unsup_<xx>`: English summarization plus `rate`
  (default 1%) span corruption in xx, evaluated on xx (Mix-Unsup), and
  `wikilingua0_mix_unsup_all` with the span corruption spread over all 18.

Every example carries int32 `language` and `task` ids (fixed tables in
`spot.xgen.languages`) and their names `language_code` / `task_name`. Mixtures
keep only output features unless `get_dataset(...,
passthrough_features=["language", "task"])` asks for them.

Call the `register_*` functions again with `data_dir` (local WikiLingua JSONL
and Tatoeba text), a `vocabulary` and a `name_prefix` to get local copies, as
the tests do. Registering a name again replaces the earlier registration.
"""

from __future__ import annotations

import functools
import os
from typing import Mapping, Optional, Sequence, Union

import seqio

from spot import errors
from spot.xgen import languages as langs
from spot.xgen import metrics
from spot.xgen import preprocessors as prep
from spot.xgen import sources

MT5_SPM = metrics.MT5_SPM
UNSUPERVISED_TASKS = ("span_corruption", "prefix_lm", "lead_sentence", "iid_denoising")
# The tasks mixed for factorized prompts (language x task combinations).
FACTORIZED_TASKS = ("span_corruption", "prefix_lm", "lead_sentence")
DEFAULT_MIX_RATE = 0.01

_OBJECTIVES = {
    "span_corruption": prep.span_corruption,
    "iid_denoising": prep.iid_denoising,
    "prefix_lm": prep.prefix_lm,
}

# Registered task name -> language of its outputs (for eval bookkeeping).
TASK_LANGUAGES: dict[str, str] = {}


def default_vocabulary() -> seqio.SentencePieceVocabulary:
  """mT5's vocabulary (loaded lazily, on first use)."""
  return seqio.SentencePieceVocabulary(MT5_SPM)


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


def task_language(name: str) -> Optional[str]:
  """The output language of a registered xGen task, or None."""
  return TASK_LANGUAGES.get(name)


def _add_task(name: str, lang: str, **kwargs) -> str:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, **kwargs)
  TASK_LANGUAGES[name] = lang
  return name


def _add_mixture(name: str, tasks: Sequence) -> str:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, tasks)
  return name


def _spm_of(vocabulary: seqio.Vocabulary, spm: Optional[str]):
  if spm is not None:
    return spm
  return getattr(vocabulary, "sentencepiece_model_file", MT5_SPM)


def _wikilingua_languages(data_dir: Optional[str],
                          languages: Optional[Sequence[str]]) -> list[str]:
  if languages is not None:
    return [langs.check_language(code) for code in languages]
  if data_dir is None:
    return list(langs.WIKILINGUA_CODES)
  found = [c for c in langs.WIKILINGUA_CODES if sources.find_wikilingua_file(data_dir, c)]
  if not found:
    raise errors.MissingInputError(f"no WikiLingua JSONL files "
                                   f"(wiki_lingua_<language>_<code>.jsonl) under {data_dir}; "
                                   "put GEM WikiLingua JSONL files there")
  return found


def register_wikilingua(data_dir: Optional[str] = None,
                        vocabulary: Optional[seqio.Vocabulary] = None,
                        languages: Optional[Sequence[str]] = None, name_prefix: str = "",
                        spm: Optional[str] = None) -> list[str]:
  """Registers `wikilingua_<xx>`, `wikilingua0_<xx>` and the `wikilingua0` mixture
  (over every language registered under `name_prefix`).

  Args:
    data_dir: None for TFDS `gem/wiki_lingua_*`; else a folder of GEM JSONL files.
    vocabulary: defaults to mT5's.
    languages: defaults to all 18 (TFDS) or those with a file in `data_dir`.
    name_prefix: prepended to every name.
    spm: SentencePiece model for SP-ROUGE; defaults to the vocabulary's model.

  Returns:
    The registered task and mixture names.
  """
  vocabulary = vocabulary or default_vocabulary()
  features = output_features(vocabulary)
  codes = _wikilingua_languages(data_dir, languages)
  spm = _spm_of(vocabulary, spm)
  names = []
  for lang in codes:
    for zero_shot in (False, True):
      if zero_shot and lang == "en":
        continue
      splits = ("validation", "test") if zero_shot else sources.SPLITS
      steps = [] if data_dir else [functools.partial(sources.wikilingua_fields, lang=lang)]
      steps += [
          prep.summarization,
          seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim,
          functools.partial(prep.add_ids, language=lang, task="summarization"),
      ]
      name = f"{name_prefix}wikilingua{'0' if zero_shot else ''}_{lang}"
      names.append(_add_task(
          name, lang, source=sources.wikilingua_source(lang, data_dir, splits),
          preprocessors=steps, output_features=features,
          metric_fns=metrics.xgen_metrics(lang, spm)))
  registered = set(seqio.TaskRegistry.names())
  if f"{name_prefix}wikilingua_en" in registered:
    # Every language registered under this prefix, read from wherever it is.
    members = [f"{name_prefix}wikilingua_en"] + [
        f"{name_prefix}wikilingua0_{c}" for c in langs.WIKILINGUA_CODES
        if f"{name_prefix}wikilingua0_{c}" in registered]
    names.append(_add_mixture(f"{name_prefix}wikilingua0", [(m, 1.0) for m in members]))
  return names


def _unsupervised_languages(data_dir: Optional[str], text_files: Optional[Mapping[str, str]],
                            languages: Optional[Sequence[str]]) -> list[str]:
  if languages is not None:
    return list(languages)
  if text_files is not None:
    return list(text_files)
  if data_dir is None:
    return list(langs.WIKILINGUA_CODES)
  return [c for c in langs.WIKILINGUA_CODES if sources.find_tatoeba_pattern(data_dir, c)]


def register_unsupervised(languages: Optional[Sequence[str]] = None,
                          data_dir: Optional[str] = None,
                          text_files: Optional[Mapping[str, str]] = None,
                          vocabulary: Optional[seqio.Vocabulary] = None,
                          tasks: Sequence[str] = UNSUPERVISED_TASKS,
                          factorized_tasks: Sequence[str] = FACTORIZED_TASKS,
                          name_prefix: str = "",
                          lines_per_document: int = prep.DEFAULT_LINES_PER_DOCUMENT) -> list[str]:
  """Registers `xgen_<task>_<xx>` for every language x task, and the
  `xgen_unsup` mixture over every registered `xgen_<task>_*` of `factorized_tasks`.

  Args:
    languages: mC4 codes (default: the 18 WikiLingua languages, or those with
      local text).
    data_dir: None for TFDS mC4; else a folder in the Tatoeba/LASER layout.
    text_files: language -> glob of local text files (one sentence per line);
      wins over `data_dir`.
    vocabulary: defaults to mT5's; it needs sentinel ids at its top (extra_ids).
    tasks: which of UNSUPERVISED_TASKS to register.
    factorized_tasks: which tasks the `xgen_unsup` mixture draws from.
    name_prefix: prepended to every name.
    lines_per_document: local files are grouped into documents of this many lines.

  Returns:
    The registered task and mixture names.
  """
  vocabulary = vocabulary or default_vocabulary()
  features = output_features(vocabulary)
  for task in tasks:
    langs.check_language(task, UNSUPERVISED_TASKS, "unsupervised task")
  names = []
  for lang in _unsupervised_languages(data_dir, text_files, languages):
    langs.language_id(lang)  # fails early on an unknown code
    local = text_files is not None or data_dir is not None
    source = sources.text_source(lang, (text_files or {}).get(lang), data_dir)
    for task in tasks:
      steps = [functools.partial(prep.lines_to_documents,
                                 lines_per_document=lines_per_document)] if local else []
      if task == "lead_sentence":
        steps += [prep.lead_sentence, seqio.preprocessors.tokenize]
      else:
        steps += [prep.text_to_targets, seqio.preprocessors.tokenize, _OBJECTIVES[task]]
      steps += [seqio.preprocessors.append_eos_after_trim,
                functools.partial(prep.add_ids, language=lang, task=task)]
      names.append(_add_task(f"{name_prefix}xgen_{task}_{lang}", lang, source=source,
                             preprocessors=steps, output_features=features, metric_fns=[]))
  # Every language x factorized task registered under this prefix.
  mixed = [n for n in sorted(seqio.TaskRegistry.names()) for task in factorized_tasks
           if n.startswith(f"{name_prefix}xgen_{task}_")]
  if mixed:
    names.append(_add_mixture(f"{name_prefix}xgen_unsup", [(m, 1.0) for m in mixed]))
  return names


def register_mix_unsup(target_languages: Optional[Sequence[str]] = None,
                       rate: float = DEFAULT_MIX_RATE, name_prefix: str = "") -> list[str]:
  """Registers the Mix-Unsup mixtures over already registered tasks.

  `wikilingua0_mix_unsup_<xx>`: `wikilingua_en` at 1 - rate plus
  `xgen_span_corruption_<xx>` at `rate`, evaluated on `wikilingua0_<xx>`;
  `wikilingua0_mix_unsup_all`: the rate split evenly over every target language.
  Needs `register_wikilingua` and `register_unsupervised` (span_corruption)
  with the same `name_prefix` first.
  """
  if not 0.0 < rate < 1.0:
    raise errors.ConfigError(f"rate must be in (0, 1), got {rate}")
  tasks = set(seqio.TaskRegistry.names())
  english = f"{name_prefix}wikilingua_en"
  if english not in tasks:
    raise errors.ConfigError(f"{english} is not registered; call register_wikilingua("
                             f"name_prefix={name_prefix!r}) first")
  if target_languages is None:
    target_languages = [c for c in langs.WIKILINGUA_CODES if c != "en"
                        and f"{name_prefix}xgen_span_corruption_{c}" in tasks
                        and f"{name_prefix}wikilingua0_{c}" in tasks]
  names, everything = [], [(english, 1.0 - rate)]
  for lang in target_languages:
    corruption = f"{name_prefix}xgen_span_corruption_{lang}"
    evaluation = f"{name_prefix}wikilingua0_{lang}"
    for needed in (corruption, evaluation):
      if needed not in tasks:
        raise errors.ConfigError(f"{needed} is not registered; register the WikiLingua and "
                                 f"span-corruption tasks for {lang!r} first")
    names.append(_add_mixture(f"{name_prefix}wikilingua0_mix_unsup_{lang}",
                              [(english, 1.0 - rate), (corruption, rate), (evaluation, 1.0)]))
    everything += [(corruption, rate / len(target_languages)), (evaluation, 1.0)]
  if target_languages:
    names.append(_add_mixture(f"{name_prefix}wikilingua0_mix_unsup_all", everything))
  return names


def register_all(data_dir: Optional[str] = None, vocabulary: Optional[seqio.Vocabulary] = None,
                 languages: Optional[Sequence[str]] = None, name_prefix: str = "",
                 mix_rate: float = DEFAULT_MIX_RATE, spm: Optional[str] = None) -> list[str]:
  """Registers everything above from one data folder (None: TFDS)."""
  vocabulary = vocabulary or default_vocabulary()
  names = register_wikilingua(data_dir, vocabulary, languages, name_prefix, spm)
  names += register_unsupervised(languages, data_dir, vocabulary=vocabulary,
                                 name_prefix=name_prefix)
  names += register_factorized(name_prefix)
  return names + register_mix_unsup(None, mix_rate, name_prefix)


def register_factorized(name_prefix: str = "") -> list[str]:
  """Registers `xgen_factorized`: what factorized prompts train on.

  Every registered `xgen_<task>_<xx>` of the `xgen_unsup` mixture (each
  language x unsupervised task) plus English summarization (`wikilingua_en`),
  at equal rates. Each example carries its `language` and `task` ids, so one
  run trains every language and task sub-prompt; at inference
  `wikilingua0_<xx>` pairs language xx's sub-prompt with the summarization
  sub-prompt, a combination never seen in training.
  """
  unsup = f"{name_prefix}xgen_unsup"
  english = f"{name_prefix}wikilingua_en"
  if unsup not in seqio.MixtureRegistry.names() or english not in seqio.TaskRegistry.names():
    return []
  members = [t.name for t in seqio.get_mixture_or_task(unsup).tasks] + [english]
  return [_add_mixture(f"{name_prefix}xgen_factorized", [(m, 1.0) for m in members])]


def register_local(data_dir: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
                   name_prefix: str = "", vocabulary: Optional[seqio.Vocabulary] = None
                   ) -> list[str]:
  """The DATA_DIR hook of `spot.tasks.register_local`.

  Re-registers, under their usual names, the WikiLingua languages whose JSONL
  file and the unsupervised tasks whose Tatoeba text exists under `data_dir`
  (or several folders, the first holding a file wins; sub-folders as in
  `spot.xgen.sources`), keeping each task's vocabulary; the others keep
  reading TFDS. With `vocabulary` (the model's, SPM_PATH) they tokenize with
  it instead. The mixtures are rebuilt over the result.

  Returns:
    The names now reading local files, plus the rebuilt mixtures.
  """
  dirs = [data_dir] if isinstance(data_dir, (str, os.PathLike)) else list(data_dir)
  english = f"{name_prefix}wikilingua_en"
  if vocabulary is None and english in seqio.TaskRegistry.names():
    vocabulary = seqio.TaskRegistry.get(english).output_features["targets"].vocabulary
  names: list[str] = []
  summaries, texts = set(), set()
  for folder in map(os.fspath, dirs):
    codes = [c for c in langs.WIKILINGUA_CODES
             if c not in summaries and sources.find_wikilingua_file(folder, c)]
    if codes:
      names += register_wikilingua(folder, vocabulary, codes, name_prefix)
      summaries.update(codes)
    codes = [c for c in langs.WIKILINGUA_CODES
             if c not in texts and sources.find_tatoeba_pattern(folder, c)]
    if codes:
      names += register_unsupervised(codes, folder, vocabulary=vocabulary,
                                     name_prefix=name_prefix)
      texts.update(codes)
  if names:
    names += register_factorized(name_prefix)
    names += register_mix_unsup(None, DEFAULT_MIX_RATE, name_prefix)
  return list(dict.fromkeys(names))


def use_vocabulary(vocabulary: seqio.Vocabulary, name_prefix: str = "") -> list[str]:
  """The SPM_PATH hook of `spot.tasks.use_vocabulary`.

  The TFDS-sourced xGen tasks are registered again with `vocabulary` (and
  SP-ROUGE with its SentencePiece model) unless they already use it; tasks
  read from local files keep theirs (register them with DATA_DIR and the
  vocabulary together).

  Returns:
    The names registered again ([] when nothing changed).
  """
  english = f"{name_prefix}wikilingua_en"
  if english not in seqio.TaskRegistry.names():
    return []
  task = seqio.TaskRegistry.get(english)
  if (task.output_features["targets"].vocabulary == vocabulary
      or not isinstance(task.source, seqio.TfdsDataSource)):
    return []
  return register_all(None, vocabulary, name_prefix=name_prefix)


register_all()
