"""Typed errors, one class per kind of failure, and how the CLI reports them.

Raise the most specific class where the problem is found, with a one-line
message that names the input (setting, file, flag) and the fix. The CLI
(`spot.cli`) prints `prog: message` on one line and exits with the class's
code; `--debug` or `SPOT_DEBUG=1` shows the traceback instead.

The kinds (a class's code is its base's, so catching a base catches its kinds):

  SpotError                       1
    UsageError                    2  a flag or setting
      ConfigError                 2  gin files, bindings, macros, run settings
      UnknownNameError            2  a task, mixture, entry or size not known (also a KeyError)
    DataError                     3  an input that cannot be used
      MissingInputError           3  a path the user gave does not exist
      CheckpointError             3  a checkpoint or run directory: unreadable, missing, mismatched
      LibraryError                3  a prompt library: entry, index or archive
    SystemResourceError           4  the machine refused a write
    DivergedError                 5  non-finite loss or parameters

Exit codes (stable, scripts rely on them):

  0  success
  1  internal error: a bug in spot (please report it with --debug output)
  2  usage: bad flags, gin configuration, macro values, unknown task or entry
  3  data: an input that cannot be used: a checkpoint, prompt file, dataset,
     library entry or archive that is missing, corrupt or does not fit
  4  system: the machine refused: disk full, read-only or unwritable path
  5  training diverged: non-finite loss or parameters (nothing was saved)
 130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from typing import Callable, Optional

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_SYSTEM = 4
EXIT_DIVERGED = 5
EXIT_INTERRUPTED = 130


class SpotError(Exception):
  """Base class of spot's errors; `exit_code` is what the CLI exits with."""

  exit_code = EXIT_INTERNAL


class UsageError(SpotError, ValueError):
  """A flag, gin binding or setting that cannot work; the message names it and the fix."""

  exit_code = EXIT_USAGE


class DataError(SpotError, ValueError):
  """An input file or dataset that is missing, corrupt or does not fit the run."""

  exit_code = EXIT_DATA


class ConfigError(UsageError):
  """A gin file, binding, macro or run setting that cannot work (exit code 2)."""


class UnknownNameError(UsageError, KeyError):
  """A name (task, mixture, entry, size) that is not known; the message lists the known ones."""

  def __str__(self) -> str:  # KeyError would print the message quoted
    return str(self.args[0]) if self.args else ""


class MissingInputError(DataError, FileNotFoundError):
  """A path the user gave (checkpoint, prompt file, model_dir, data) does not exist."""


class CheckpointError(DataError):
  """A checkpoint or run directory that is unreadable, incomplete or does not fit the model."""


class LibraryError(DataError):
  """A prompt library's entry, index or archive that cannot be used (see spot.library.errors)."""


class SystemResourceError(SpotError, OSError):
  """The machine refused a write: no space left, read-only or permission denied."""

  exit_code = EXIT_SYSTEM


class DivergedError(SpotError, FloatingPointError):
  """Training produced non-finite values; nothing non-finite was saved."""

  exit_code = EXIT_DIVERGED


_SYSTEM_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}
# gin appends "  In call to configurable 'X' (<function ...>)" (and file/line
# context) to messages of exceptions raised inside configurables.
_GIN_CONTEXT = re.compile(r"^\s+(In call to configurable|In file|in bindings string|"
                          r"No values supplied by Gin)")


def debug_enabled() -> bool:
  return os.environ.get("SPOT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def one_line(message: str) -> str:
  """The message without gin's call context, on one line."""
  lines = [ln for ln in str(message).splitlines() if ln.strip() and not _GIN_CONTEXT.match(ln)]
  return " ".join(ln.strip() for ln in lines)


def _describe_os_error(e: OSError) -> str:
  path = e.filename or ""
  where = f" {path}" if path else ""
  if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
    return f"no space left on the device holding{where or ' the output'}; free space or choose another directory."
  if e.errno == errno.EROFS:
    return f"{where.strip() or 'the output directory'} is on a read-only file system; choose a writable directory."
  if e.errno in (errno.EACCES, errno.EPERM):
    return f"permission denied for{where or ' a path'}; make it writable or choose another directory."
  return one_line(str(e))


def classify(e: BaseException) -> tuple[int, str]:
  """(exit code, one-line message) for an exception that reached the CLI."""
  if isinstance(e, SpotError):
    return e.exit_code, one_line(str(e))
  if isinstance(e, KeyboardInterrupt):
    return EXIT_INTERRUPTED, "interrupted."
  cause = e
  # gin and orbax wrap the real error; look one level down for a typed one.
  while cause.__cause__ is not None and not isinstance(cause, (SpotError, OSError)):
    cause = cause.__cause__
  if cause is not e:
    if isinstance(cause, SpotError):
      return cause.exit_code, one_line(str(cause))
  if isinstance(cause, OSError) and getattr(cause, "errno", None) in _SYSTEM_ERRNOS:
    return EXIT_SYSTEM, _describe_os_error(cause)
  if isinstance(cause, FileNotFoundError):
    name = cause.filename or one_line(str(cause))
    return EXIT_DATA, f"not found: {name}; check the path."
  if isinstance(cause, FloatingPointError):
    return EXIT_DIVERGED, one_line(str(cause))
  msg = one_line(str(e)) or type(e).__name__
  return EXIT_INTERNAL, (f"internal error ({type(e).__name__}): {msg} "
                         "(rerun with --debug for the traceback and report it).")


def run_cli(prog: str, fn: Callable[[], Optional[int]]) -> int:
  """Runs a command, turning any failure into one line on stderr and an exit code."""
  try:
    return int(fn() or 0)
  except SystemExit as e:  # argparse's usage errors and --help; SystemExit("message")
    code = e.code
    if code is None or isinstance(code, int):
      return code or 0
    text = one_line(str(code))
    print(text if text.startswith(prog.split()[0] + " ") else f"{prog}: {text}", file=sys.stderr)
    return EXIT_USAGE
  except BrokenPipeError:  # `spot library list --json | head`
    _silence_stdout()
    return EXIT_OK
  except BaseException as e:  # pylint: disable=broad-except
    if debug_enabled():
      traceback.print_exc()
    code, msg = classify(e)
    print(f"{prog}: {msg}", file=sys.stderr)
    return code


def _silence_stdout() -> None:
  """After a closed pipe, point stdout at devnull so the interpreter's flush is quiet."""
  try:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
  except (OSError, ValueError):
    pass
