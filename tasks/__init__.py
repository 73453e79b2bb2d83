"""SeqIO task and mixture registrations, installed as the sub-package `spot.tasks`.

Importing `spot.tasks` registers every task and mixture below with SeqIO's
global registry (as T5X's MIXTURE_OR_TASK_MODULE expects). The folder is
`tasks/` in a checkout and `spot/tasks` in an installed wheel, so spot never
claims a generic top-level name such as `tasks` in site-packages.
"""

import importlib

_MODULES = ("glue", "superglue", "mixtures", "wikilingua", "synthetic")

for _name in _MODULES:
  importlib.import_module(f"{__name__}.{_name}")


def register_local(data_dir: str) -> list[str]:
  """Re-registers spot's tasks to read local files under `data_dir` (DATA_DIR).

  Each task module may define `register_local(data_dir) -> list[str]`; the
  standard task names then read the GLUE TSV / SuperGLUE JSONL / WikiLingua
  JSONL files found there instead of TFDS. Returns the names re-registered.
  """
  names: list[str] = []
  for name in _MODULES:
    module = importlib.import_module(f"{__name__}.{name}")
    fn = getattr(module, "register_local", None)
    if fn is not None:
      names.extend(fn(data_dir) or [])
  if not names:
    raise ValueError(f"No task could be registered from DATA_DIR={data_dir!r}; see "
                     "docs/tasks.md for the expected file layouts.")
  return names
