"""spot.errors: exit codes per kind, one-line messages, --debug tracebacks."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from spot import cli, errors


@pytest.mark.parametrize("exc, code", [
    (errors.UsageError("bad flag"), errors.EXIT_USAGE),
    (errors.DataError("bad file"), errors.EXIT_DATA),
    (errors.MissingInputError("no file"), errors.EXIT_DATA),
    (errors.SystemResourceError("disk"), errors.EXIT_SYSTEM),
    (errors.DivergedError("nan"), errors.EXIT_DIVERGED),
    (OSError(errno.ENOSPC, "No space left on device", "/x/y"), errors.EXIT_SYSTEM),
    (OSError(errno.EROFS, "Read-only file system", "/ro"), errors.EXIT_SYSTEM),
    (FileNotFoundError(errno.ENOENT, "No such file", "/nope"), errors.EXIT_DATA),
    (KeyError("meta"), errors.EXIT_INTERNAL),
    (KeyboardInterrupt(), errors.EXIT_INTERRUPTED),
])
def test_classify_maps_each_kind_to_its_exit_code(exc, code):
  got, message = errors.classify(exc)
  assert got == code
  assert "\n" not in message and message


@pytest.mark.parametrize("cls, base, code", [
    (errors.ConfigError, errors.UsageError, errors.EXIT_USAGE),
    (errors.UnknownNameError, errors.UsageError, errors.EXIT_USAGE),
    (errors.CheckpointError, errors.DataError, errors.EXIT_DATA),
    (errors.LibraryError, errors.DataError, errors.EXIT_DATA),
    (errors.MissingInputError, errors.DataError, errors.EXIT_DATA),
])
def test_each_kind_keeps_its_bases_exit_code(cls, base, code):
  assert issubclass(cls, base) and cls.exit_code == code
  got, message = errors.classify(cls("TASK 'x' is unknown; choose from ['rte']."))
  assert (got, message) == (code, "TASK 'x' is unknown; choose from ['rte'].")


def test_the_library_raises_spots_library_kind():
  from spot.library import errors as library_errors
  assert library_errors.LibraryError is errors.LibraryError
  assert errors.classify(library_errors.LibraryUsageError("--a with --b"))[0] == errors.EXIT_USAGE
  assert errors.classify(library_errors.CorruptEntryError("bad"))[0] == errors.EXIT_DATA


def test_unknown_name_is_a_key_error_printed_unquoted():
  e = errors.UnknownNameError("no task 'x'; choose from ['rte'].")
  assert isinstance(e, KeyError) and str(e) == "no task 'x'; choose from ['rte']."


def test_a_typed_cause_under_a_wrapper_keeps_its_code():
  try:
    try:
      raise errors.DataError("PROMPT_FILE /p.npy is truncated; export it again.")
    except errors.DataError as e:
      raise RuntimeError("wrapped by a library") from e
  except RuntimeError as wrapped:
    code, message = errors.classify(wrapped)
  assert code == errors.EXIT_DATA and message.startswith("PROMPT_FILE /p.npy")


def test_gin_context_is_stripped_to_one_line():
  text = ("BATCH_SIZE 3 is not divisible by num_microbatches 2; choose a multiple.\n"
          "  In call to configurable 'train' (<function train at 0x7f>)")
  assert errors.one_line(text) == ("BATCH_SIZE 3 is not divisible by num_microbatches 2; "
                                   "choose a multiple.")


def test_internal_error_says_how_to_get_the_traceback():
  code, message = errors.classify(ZeroDivisionError("division by zero"))
  assert code == errors.EXIT_INTERNAL
  assert "ZeroDivisionError" in message and "--debug" in message


def _run(args, env_extra=None):
  import os
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("SPOT_DEBUG", None)
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-m", "spot.cli", *args], capture_output=True,
                        text=True, env=env, timeout=300)


def test_cli_prints_one_line_and_debug_shows_the_traceback(tmp_path):
  missing = str(tmp_path / "nolib")
  plain = _run(["library", "--library", missing, "list"])
  assert plain.returncode == errors.EXIT_DATA
  lines = [ln for ln in plain.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1 and missing in lines[0] and "Traceback" not in plain.stderr
  for extra_args, env in ((["--debug"], None), ([], {"SPOT_DEBUG": "1"})):
    debug = _run(["library", "--library", missing, "list", *extra_args], env)
    assert debug.returncode == errors.EXIT_DATA
    assert "Traceback" in debug.stderr and missing in debug.stderr.splitlines()[-1]


def test_unknown_command_is_a_usage_error(capsys):
  assert cli.spot_main(["frobnicate"]) == errors.EXIT_USAGE
  assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_system_exit_with_a_message_prints_it(capsys):
  def fail():
    raise SystemExit("spot demo: /x holds a demo with other settings; pass a new --out DIR.")
  assert errors.run_cli("spot demo", fail) == errors.EXIT_USAGE
  assert "other settings" in capsys.readouterr().err
  assert errors.run_cli("spot demo", lambda: (_ for _ in ()).throw(SystemExit(0))) == 0


def test_kinds_are_raised_where_the_problem_is_found(tmp_path):
  from spot.checkpoints import run
  from spot.library import PromptLibrary
  from spot.tasks import metrics
  (tmp_path / "run.json").write_text("[1]")
  with pytest.raises(errors.CheckpointError, match="run.json holds a list") as e:
    run.read_run_json(tmp_path)
  assert errors.classify(e.value)[0] == errors.EXIT_DATA
  with pytest.raises(errors.UnknownNameError, match="known:") as e:
    metrics.metric_fns("no_such_task")
  assert isinstance(e.value, KeyError) and errors.classify(e.value)[0] == errors.EXIT_USAGE
  with pytest.raises(errors.LibraryError) as e:
    PromptLibrary(tmp_path / "no_library").entry("x")
  assert errors.classify(e.value)[0] == errors.EXIT_DATA
