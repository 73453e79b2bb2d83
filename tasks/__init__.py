"""SeqIO task and mixture registrations, installed as the sub-package `spot.tasks`.

Importing `spot.tasks` registers every task and mixture below with SeqIO's
global registry (as T5X's MIXTURE_OR_TASK_MODULE expects). The folder is
`tasks/` in a checkout and `spot/tasks` in an installed wheel, so spot never
claims a generic top-level name such as `tasks` in site-packages.

The trainer's two data settings reach the registry through the two functions
below: `register_local(DATA_DIR, vocabulary)` points the default task names at
local files, `use_vocabulary(vocabulary)` makes them tokenize with the model's
vocabulary (SPM_PATH), so one setting serves the model and the tasks.
"""

from __future__ import annotations

import importlib
from typing import Optional

import seqio

_MODULES = ("glue", "superglue", "mixtures", "wikilingua", "synthetic")
# Modules whose tasks tokenize with a SentencePiece model (SPM_PATH applies);
# the synthetic demo tasks keep their word vocabulary.
_SPM_MODULES = ("glue", "superglue", "wikilingua")

for _name in _MODULES:
  importlib.import_module(f"{__name__}.{_name}")


def register_local(data_dir, vocabulary: Optional[seqio.Vocabulary] = None) -> list[str]:
  """Re-registers spot's tasks to read local files under `data_dir` (DATA_DIR).

  Each task module may define `register_local(data_dir, vocabulary=None) ->
  list[str]`; the standard task names then read the GLUE TSV / SuperGLUE JSONL
  / WikiLingua JSONL files found there instead of TFDS. With `vocabulary` (the
  model's) they tokenize with it; without, each keeps its registered one.
  `data_dir` may be one directory or a list searched in order. Returns the
  names re-registered.
  """
  names: list[str] = []
  for name in _MODULES:
    module = importlib.import_module(f"{__name__}.{name}")
    fn = getattr(module, "register_local", None)
    if fn is not None:
      names.extend(fn(data_dir, vocabulary=vocabulary) or [])
  from spot.tasks import common
  common.refresh_mixtures(names)
  if not names:
    from spot import errors
    raise errors.DataError(f"No task could be registered from DATA_DIR={data_dir!r}: no GLUE, "
                           "SuperGLUE or WikiLingua file was found there; see docs/tasks.md "
                           "for the expected file layouts.")
  return names


def use_vocabulary(vocabulary: seqio.Vocabulary) -> list[str]:
  """Makes spot's GLUE, SuperGLUE and WikiLingua tasks tokenize with `vocabulary`.

  The trainer calls it with the model's vocabulary (SPM_PATH) so the model and
  the tasks never disagree. Sources are kept (TFDS or local files); tasks
  already on an equal vocabulary are left alone, and the default mixtures are
  rebuilt when something changed. A vocabulary that is not SentencePiece (the
  demo's word vocabulary) changes nothing. Returns the names registered again.
  """
  if not isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return []
  names: list[str] = []
  for name in _SPM_MODULES:
    names += importlib.import_module(f"{__name__}.{name}").use_vocabulary(vocabulary) or []
  if names:
    names += importlib.import_module(f"{__name__}.mixtures").use_vocabulary(vocabulary)
    from spot.tasks import common
    common.refresh_mixtures(names)
  return names
