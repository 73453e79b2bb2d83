"""Console-command journeys: what a user types, run in subprocesses, chained.

Each journey module runs the installed console scripts (`spot`, `t5x`) from the
repository root, offline, on the shared tiny T5X checkpoint, the T5 vocabulary
and local GLUE/SuperGLUE files, exactly as README.md and docs/ show them. A
step's output is the next step's input, so a broken hand-off fails the chain.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
from typing import Optional, Sequence

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
# Messages that mean a step tried the network (this suite is offline).
NETWORK_SIGNS = ("Could not resolve host", "gs://t5-data", "Couldn't resolve host")


@dataclasses.dataclass
class Result:
  args: list[str]
  returncode: int
  stdout: str
  stderr: str

  def check(self, code: int = 0) -> "Result":
    assert self.returncode == code, (
        f"{' '.join(self.args)} exited {self.returncode}, expected {code}\n"
        f"--- stdout (tail)\n{self.stdout[-3000:]}\n--- stderr (tail)\n{self.stderr[-6000:]}")
    for sign in NETWORK_SIGNS:
      assert sign not in self.stderr, f"{' '.join(self.args)} touched the network: {sign!r}"
    return self


def console(script: str, *args: str, env: Optional[dict] = None, timeout: int = 900,
            cwd: pathlib.Path = REPO) -> Result:
  """Runs `script args...` (a console script of this venv) and captures its output."""
  full_env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
                  PYTHONUNBUFFERED="1")
  full_env.pop("SPOT_DEBUG", None)
  full_env.update(env or {})
  argv = [str(BIN / script), *args]
  proc = subprocess.run(argv, cwd=str(cwd), env=full_env, capture_output=True, text=True,
                        timeout=timeout, stdin=subprocess.DEVNULL)
  return Result([script, *args], proc.returncode, proc.stdout, proc.stderr)


def spot(*args: str, **kwargs) -> Result:
  return console("spot", *args, **kwargs)


def t5x(*args: str, **kwargs) -> Result:
  return console("t5x", *args, **kwargs)


def relative(path: pathlib.Path) -> str:
  """`path` as a user in the repo root would type it (relative where possible)."""
  try:
    return os.path.relpath(path, REPO)
  except ValueError:
    return str(path)


@pytest.fixture(scope="module")
def data(shared_data) -> dict[str, str]:
  """The shared files as paths relative to the repo root (`../shared/data/...`)."""
  return {
      "checkpoint": relative(shared_data / "t5x_tiny_checkpoint" / "checkpoint_3"),
      "spm": relative(shared_data / "t5_vocab" / "spiece.model"),
      "data_dir": relative(shared_data),
  }
