"""Loads cld3 (`gcld3`, from the cld3-py wheel) safely next to TensorFlow.

TensorFlow loads its libraries with RTLD_GLOBAL, protobuf included; cld3-py's
extension carries and exports its own protobuf. Imported after TensorFlow,
the extension's protobuf calls bind to TensorFlow's copy and constructing a
language identifier segfaults. Importing with RTLD_DEEPBIND makes the
extension prefer its own symbols, so the import order no longer matters.
"""

from __future__ import annotations

import functools
import os
import sys
from types import ModuleType


@functools.lru_cache(maxsize=1)
def gcld3() -> ModuleType:
  """The `gcld3` module, imported so that it binds to its own protobuf."""
  if "gcld3" in sys.modules:
    return sys.modules["gcld3"]
  flags = sys.getdlopenflags()
  sys.setdlopenflags(flags | getattr(os, "RTLD_DEEPBIND", 0))
  try:
    import gcld3 as module  # pylint: disable=g-import-not-at-top
  finally:
    sys.setdlopenflags(flags)
  return module


def identifier(max_num_bytes: int):
  """A cld3 `NNetLanguageIdentifier` reading up to `max_num_bytes` of a text."""
  return gcld3().NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=max_num_bytes)
