"""`PromptCache`: library prompts loaded on first use, kept within a memory budget.

Entries are read lazily from a `PromptLibrary`, so an entry added while the
server runs is servable at its first request, without a restart. Each entry is
checked against the server's base model once, when it is loaded; the least
recently used prompts are dropped when the cache exceeds `max_bytes`.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import threading
from typing import Optional

import numpy as np

from spot.library import PromptLibrary
from spot.library import entry as entry_lib
from spot.library import errors as library_errors


class UnknownPromptError(LookupError):
  """No library entry of that name; `close` holds similar names (best first)."""

  def __init__(self, message: str, close: list[str]):
    super().__init__(message)
    self.close = close


class WrongModelError(ValueError):
  """The entry is a prompt for another base model than the server's."""


class UnservableMethodError(ValueError):
  """The entry holds another method's parameters (LoRA, (IA)3, ...), not a prompt.

  The server batches requests of many prompts through one frozen model; an
  entry that changes the model's weights cannot share that batch, so it is
  refused (and not listed) rather than served wrongly.
  """


@dataclasses.dataclass(frozen=True)
class CachedPrompt:
  """A servable prompt: its entry name, base model, task and array [P, D] float32."""

  name: str
  model: str
  task: str
  array: np.ndarray

  @property
  def length(self) -> int:
    return int(self.array.shape[0])


class PromptCache:
  """Thread-safe LRU cache of a library's prompts for one base model.

  Args:
    library: the prompt library.
    model_name: the base model's library name (e.g. "t5_1_1_tiny"); an entry of
      another family or size, or of another embed dim, is refused.
    embed_dim: the base model's width D.
    max_bytes: memory budget of the cached arrays.
    exact_model: also refuse entries whose model name differs (--model given).
  """

  def __init__(self, library: PromptLibrary, model_name: str, embed_dim: int, *,
               max_bytes: int = 256 << 20, exact_model: bool = False):
    self.library = library
    self.model_name = model_name
    self.embed_dim = int(embed_dim)
    self.max_bytes = int(max_bytes)
    self.exact_model = exact_model
    self._items: collections.OrderedDict[str, CachedPrompt] = collections.OrderedDict()
    self._bytes = 0
    self._lock = threading.Lock()
    self.hits = 0
    self.misses = 0

  @property
  def size_bytes(self) -> int:
    return self._bytes

  def __len__(self) -> int:
    return len(self._items)

  def fits(self, entry: entry_lib.Entry) -> Optional[str]:
    """Why `entry` cannot be served on this base model, or None when it can."""
    if self.exact_model and entry.model.name != self.model_name:
      return (f"library entry {entry.name!r} is a prompt for base model {entry.model.name!r}, "
              f"but this server serves {self.model_name!r}; pick an entry listed by GET "
              f"/v1/prompts, or start a server on the entry's base model.")
    family, _, size = self.model_name.rpartition("_")
    try:
      entry_lib.check_run_model(entry, self.embed_dim, family or None,
                                size if size != "custom" else None)
    except library_errors.ModelMismatchError as e:
      return (f"{e}".replace("this run's model", "this server's model")
              .replace("or train on the entry's base model",
                       "or start a server on the entry's base model"))
    if len(entry.prompt_shape) != 2:
      return (f"library entry {entry.name!r} holds a prompt of shape {entry.prompt_shape}; "
              "a served prompt is [length, embed_dim]: re-add it as a 2-D array.")
    return None

  def get(self, name: str) -> CachedPrompt:
    """The prompt of entry `name`, loading (and checking) it on a miss.

    Raises:
      UnknownPromptError: no valid entry `name` in the library.
      UnservableMethodError: the entry is of another method than prompts.
      WrongModelError: the entry belongs to another base model.
    """
    with self._lock:
      if name in self._items:
        self._items.move_to_end(name)
        self.hits += 1
        return self._items[name]
    item = self._load(name)
    with self._lock:
      self.misses += 1
      if name not in self._items:
        self._items[name] = item
        self._bytes += item.array.nbytes
      self._items.move_to_end(name)
      while self._bytes > self.max_bytes and len(self._items) > 1:
        _, old = self._items.popitem(last=False)
        self._bytes -= old.array.nbytes
      return self._items[name]

  def _load(self, name: str) -> CachedPrompt:
    try:
      entry = self.library.entry(name)
    except library_errors.EntryNotFoundError:
      raise self._unknown(name) from None
    except library_errors.LibraryError as e:
      if "invalid entry name" in str(e):
        raise self._unknown(name) from None
      raise
    if not entry.is_prompt:
      raise UnservableMethodError(
          f"library entry {entry.name!r} holds {entry.method} parameters (method "
          f"{entry.method!r}), not a prompt; spot serve applies prompt entries only (one "
          "frozen model for every request): pick an entry listed by GET /v1/prompts, or merge the method into a "
          "checkpoint (spot.peft.merge_peft) and serve that as --base.")
    problem = self.fits(entry)
    if problem:
      raise WrongModelError(problem)
    array = np.asarray(self.library.prompt(name), np.float32)
    return CachedPrompt(name, entry.model.name, entry.task, array)

  def _unknown(self, name: str) -> UnknownPromptError:
    names = self.library.names()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = (f"did you mean {', '.join(repr(c) for c in close)}?" if close
            else "list the servable entries with GET /v1/prompts")
    return UnknownPromptError(f"no library entry {name!r} in {self.library.path}; {hint} "
                              f"(add one with spot library --library {self.library.path} "
                              "add NAME --prompt FILE.npy --model MODEL).", close)

  def servable(self) -> list[entry_lib.Entry]:
    """The library's valid prompt entries that fit this base model, sorted by name
    (entries of other methods are never servable, see `UnservableMethodError`)."""
    return [e for e in self.library.entries(method=entry_lib.PROMPT_METHOD)
            if self.fits(e) is None]
