"""Shared pieces of the launchers in tools/tpu and tools/cluster.

Launchers build commands as argument lists and hand them to a `Runner`, which
either runs them or, with `--dry-run`, prints them one per line exactly as a
shell would take them (`shlex.join`), so a dry run can be pasted and run by
hand. Nothing here imports JAX: the launchers run on a laptop with only Python.
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import subprocess
import sys
import tempfile
from typing import Callable, Iterable, Mapping, Optional, Sequence

REMOTE_DIR = "~/spot"
REMOTE_VENV = "~/spot-venv"
REMOTE_LOG = "~/spot_train.log"
REMOTE_PID = "~/spot_train.pid"
REMOTE_ARCHIVE = "~/spot.tar.gz"


class Runner:
  """Runs commands, or prints them when `dry_run`."""

  def __init__(self, dry_run: bool = False, out=None):
    self.dry_run = dry_run
    self.out = out or sys.stdout

  def run(self, cmd: Sequence[str], check: bool = True) -> int:
    """Runs `cmd` (streaming its output); returns its exit status."""
    line = shlex.join(cmd)
    if self.dry_run:
      print(line, file=self.out, flush=True)
      return 0
    print(f"+ {line}", file=sys.stderr, flush=True)
    rc = subprocess.call(list(cmd))
    if check and rc:
      raise SystemExit(f"command failed with exit status {rc}: {line}")
    return rc

  def note(self, text: str) -> None:
    """A comment line in the dry-run output (ignored by a shell)."""
    print(f"# {text}", file=self.out if self.dry_run else sys.stderr, flush=True)


def command_parser(doc: str, names: Iterable[str]
                   ) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
  """A parser with a subcommand per name, each taking --dry-run; help from `doc`."""
  p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=doc.split("\n\n", 1)[1])
  sub = p.add_subparsers(dest="cmd", required=True)
  subs = {}
  for name in names:
    subs[name] = sub.add_parser(name)
    subs[name].add_argument("--dry-run", action="store_true",
                            help="print the exact commands instead of running them")
  return p, subs


def dispatch(p: argparse.ArgumentParser, commands: Mapping[str, Callable[..., None]],
             argv: Optional[Sequence[str]], takes_extra: Iterable[str]) -> None:
  """Parses `argv` and runs the chosen command with a Runner and its extra arguments."""
  args, extra = p.parse_known_args(argv)
  if extra and args.cmd not in takes_extra:
    raise SystemExit(f"unknown arguments for {args.cmd}: {extra}")
  commands[args.cmd](args, Runner(args.dry_run), extra)


def split_train_args(extra: Sequence[str]) -> list[str]:
  """The `spot train` flags among unparsed launcher arguments.

  Accepted: --gin_file=F, --gin_bindings=B, --gin.NAME=VALUE, --gin_search_paths=P,
  --tfds_data_dir=D (the `=` form, so values never look like launcher flags).
  """
  allowed = ("--gin_file=", "--gin_bindings=", "--gin.", "--gin_search_paths=",
             "--tfds_data_dir=")
  bad = [a for a in extra if not a.startswith(allowed)]
  if bad:
    raise SystemExit(f"unknown arguments {bad}; pass `spot train` flags as --gin_file=F, "
                     "--gin.NAME=VALUE, --gin_bindings=B, --tfds_data_dir=D.")
  if not any(a.startswith("--gin_file=") for a in extra):
    raise SystemExit("train needs at least one --gin_file=... (e.g. "
                     "--gin_file=gin/prompt_tuning/t5_1_1_xxl.gin).")
  return list(extra)


def spot_train_command(venv: str, train_args: Sequence[str],
                       distributed_args: Sequence[str] = ("--multiprocess",)) -> list[str]:
  """`<venv>/bin/spot train <gin flags> <multi-process flags>`."""
  return [f"{venv}/bin/spot", "train", *train_args, *distributed_args]


def remote(*commands: Sequence[str] | str) -> str:
  """One shell line running `commands` in order (lists are quoted, strings kept)."""
  return " && ".join(c if isinstance(c, str) else shlex.join(c) for c in commands)


def home(arg: str) -> str:
  """Shell-quotes `arg`, turning a leading `~/` (also after `--flag=`) into "$HOME"/.

  The remote command runs inside quotes, where `~` would not expand.
  """
  if arg.startswith("~/"):
    return '"$HOME"' + shlex.quote(arg[1:])
  if arg.startswith("--") and "=~/" in arg:
    flag, value = arg.split("=", 1)
    return shlex.quote(flag + "=") + '"$HOME"' + shlex.quote(value[1:])
  return shlex.quote(arg)


def background(cmd: Sequence[str], workdir: str, log: str, pidfile: str = REMOTE_PID) -> str:
  """`cd workdir && nohup cmd > log 2>&1 &`, its pid saved: survives the ssh session."""
  return (f"cd {home(workdir)} && (nohup {' '.join(home(a) for a in cmd)} "
          f"> {home(log)} 2>&1 < /dev/null & echo $! > {home(pidfile)})")


def install_commands(source: str, ref: Optional[str], venv: str, workdir: str,
                     jax_extra: Optional[str], archive: Optional[str] = None) -> str:
  """Shell line that installs spot from a git URL (or an uploaded archive) into `venv`."""
  steps = []
  if archive:
    steps.append(f"rm -rf {home(workdir)} && mkdir -p {home(workdir)} && "
                 f"tar -xzf {home(archive)} -C {home(workdir)}")
  else:
    branch = f" --branch {shlex.quote(ref)}" if ref else ""
    steps.append(f"rm -rf {home(workdir)} && git clone --depth 1{branch} "
                 f"{shlex.quote(source)} {home(workdir)}")
  steps.append(f"python3 -m venv {home(venv)}")
  steps.append(f"{home(venv)}/bin/pip install -q --upgrade pip")
  steps.append(f"{home(venv)}/bin/pip install -q -e {home(workdir)}")
  if jax_extra:
    steps.append(f"{home(venv)}/bin/pip install -q --upgrade {shlex.quote(jax_extra)}")
  steps.append(f"{home(venv)}/bin/spot --help > /dev/null")
  return " && ".join(steps)


def install_plan(args: argparse.Namespace, run: Runner, repo_dir: str, venv: str,
                 workdir: str, jax_extra: Optional[str]) -> tuple[Optional[str], str]:
  """What `install` does on every worker.

  With `args.local`, packs this checkout's committed HEAD into a local archive
  that the caller copies to each worker as ~/spot.tar.gz; otherwise workers
  clone `args.repo` (default: the checkout's origin) at `args.ref`.

  Returns:
    (local archive to upload or None, the remote install command line).
  """
  if args.local:
    local = str(pathlib.Path(tempfile.gettempdir()) / "spot.tar.gz")
    run.run(git_archive(repo_dir, local))
    return local, install_commands("", None, venv, workdir, jax_extra, REMOTE_ARCHIVE)
  source = args.repo or origin_url(repo_dir)
  if not source:
    raise SystemExit("install needs --repo GIT_URL (this checkout has no `origin`) or --local.")
  return None, install_commands(source, args.ref, venv, workdir, jax_extra)


def add_install_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--repo", default=None, help="git URL (default: this checkout's origin)")
  p.add_argument("--ref", default=None, help="branch or tag to clone")
  p.add_argument("--local", action="store_true",
                 help="copy this checkout's committed HEAD instead of cloning")


def stop_training_command(pidfile: str = REMOTE_PID) -> str:
  """Stops the run started by `background` (its pid file), if any; never fails.

  A pid file rather than `pkill -f 'spot train'`, which would also match the
  remote shell running this very command line.
  """
  pid = home(pidfile)
  return (f"(if [ -f {pid} ]; then kill $(cat {pid}) 2>/dev/null; sleep 2; "
          f"kill -9 $(cat {pid}) 2>/dev/null; rm -f {pid}; fi; true)")


def origin_url(repo_dir: str) -> Optional[str]:
  """The checkout's `origin` remote, the default source to install on workers."""
  try:
    out = subprocess.run(["git", "-C", repo_dir, "remote", "get-url", "origin"],
                         capture_output=True, text=True, check=True)
  except (OSError, subprocess.CalledProcessError):
    return None
  return out.stdout.strip() or None


def git_archive(repo_dir: str, out: str) -> list[str]:
  """Packs the checkout's committed HEAD, as workers should run what is committed."""
  return ["git", "-C", repo_dir, "archive", "--format=tar.gz", "-o", out, "HEAD"]
