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
