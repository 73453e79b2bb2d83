"""Errors and warnings of the prompt library; each message names the fix."""

from __future__ import annotations

from spot import errors


# The base class of the prompt library's errors (CLI exit code 3, data) is spot's own.
LibraryError = errors.LibraryError


class LibraryUsageError(LibraryError):
  """Flags of a library command that do not go together (CLI exit code 2, usage)."""

  exit_code = errors.EXIT_USAGE


class ArchiveError(LibraryError):
  """An archive to import that is not a usable spot library export."""


class LibraryNotFoundError(LibraryError, FileNotFoundError):
  """The library path holds no library."""


class EntryNotFoundError(LibraryError):
  """No valid entry of that name."""


class EntryExistsError(LibraryError):
  """An entry of that name exists and `overwrite` was not given."""


class CorruptEntryError(LibraryError):
  """An entry on disk is partial or corrupt (missing file, bad json, checksum)."""


class ModelMismatchError(LibraryError):
  """Arrays or a query do not fit the base model (dimension, model name)."""


class LibraryWarning(UserWarning):
  """A corrupt or partial entry was skipped."""


class MethodMismatchError(LibraryError):
  """An entry of another method than the operation applies (a LoRA entry given to
  prompt transfer or serving), or a query that would mix methods."""
