"""The Cloud TPU, SLURM and ssh launchers: their --dry-run prints the exact commands.

Beyond the expected gcloud / sbatch / ssh lines, the remote command lines are
checked with `bash -n`, and the ssh launcher's train line is executed locally
against a fake `spot` to prove the gin flags arrive intact through two levels
of shell quoting.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TPU = REPO / "tools" / "tpu" / "tpu.py"
SLURM = REPO / "tools" / "cluster" / "slurm.py"
GPU = REPO / "tools" / "cluster" / "launch_gpu.py"
GIN = ["--gin_file=gin/prompt_tuning/t5_1_1_xxl.gin", "--gin.MODEL_DIR='gs://b/run 1'",
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 8}"]
TPU_ID = ["--name", "spot-v4", "--zone", "us-central2-b", "--project", "p"]


def dry(script: pathlib.Path, *args: str, cwd: pathlib.Path = REPO) -> list[list[str]]:
  """Runs a launcher with --dry-run; returns its printed commands, split as a shell would."""
  out = subprocess.run([sys.executable, str(script), *args, "--dry-run"], capture_output=True,
                       text=True, cwd=cwd, timeout=60)
  assert out.returncode == 0, out.stderr
  return [shlex.split(line) for line in out.stdout.splitlines() if not line.startswith("#")]


def fails(script: pathlib.Path, *args: str) -> str:
  out = subprocess.run([sys.executable, str(script), *args, "--dry-run"], capture_output=True,
                       text=True, cwd=REPO, timeout=60)
  assert out.returncode != 0
  return out.stderr


def remote_command(cmd: list[str]) -> str:
  """The --command=... of a gcloud ssh, or the last argument of a plain ssh."""
  for arg in cmd:
    if arg.startswith("--command="):
      return arg[len("--command="):]
  return cmd[-1]


def assert_bash_parses(script: str):
  out = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
  assert out.returncode == 0, (script, out.stderr)


def test_tpu_create_delete_logs():
  (create,) = dry(TPU, "create", *TPU_ID, "--accelerator-type", "v4-32", "--spot")
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "spot-v4"]
  assert {"--zone=us-central2-b", "--project=p", "--accelerator-type=v4-32", "--spot",
          "--version=tpu-ubuntu2204-base"} <= set(create)
  (delete,) = dry(TPU, "delete", *TPU_ID)
  assert delete[4:6] == ["delete", "spot-v4"] and "--quiet" in delete
  (logs,) = dry(TPU, "logs", *TPU_ID, "--worker", "3")
  assert "--worker=3" in logs and "spot_train.log" in remote_command(logs)


def test_tpu_install_from_checkout_on_every_worker():
  archive, copy, install = dry(TPU, "install", *TPU_ID, "--local")
  assert archive[:2] == ["git", "-C"] and archive[-1] == "HEAD"
  assert copy[4] == "scp" and copy[6] == "spot-v4:~/spot.tar.gz" and "--worker=all" in copy
  script = remote_command(install)
  assert "--worker=all" in install and "tar -xzf" in script and "jax[tpu]" in script
  assert_bash_parses(script)
  (clone,) = dry(TPU, "install", *TPU_ID, "--repo", "https://example.org/spot.git", "--ref", "v1")
  assert "git clone --depth 1 --branch v1 https://example.org/spot.git" in remote_command(clone)
  origin = subprocess.run(["git", "-C", str(REPO), "remote", "get-url", "origin"],
                          capture_output=True, text=True)
  if origin.returncode == 0:  # a clone: the default source is its origin
    (default,) = dry(TPU, "install", *TPU_ID)
    assert f"git clone --depth 1" in remote_command(default)
    assert origin.stdout.strip() in remote_command(default)
  else:
    assert "--local" in fails(TPU, "install", *TPU_ID)


def test_tpu_train_stops_strays_then_starts_every_worker():
  train, logs = dry(TPU, "train", *TPU_ID, "--follow", *GIN)
  script = remote_command(train)
  assert "--worker=all" in train and "--worker=0" in logs
  assert_bash_parses(script)
  stop, start = script.index("lsof -t /dev/accel*"), script.index("nohup")
  assert stop < start and "libtpu_lockfile" in script
  launched = shlex.split(script[start:].split(">")[0])[1:]
  assert launched[1:] == ["train", *GIN, "--multiprocess"]


def test_tpu_train_copies_gin_files_outside_the_checkout(tmp_path):
  own = tmp_path / "my_run.gin"
  own.write_text("TRAIN_STEPS = 10\n")
  mkdir, copy, train = dry(TPU, "train", *TPU_ID, f"--gin_file={own}", GIN[1])
  assert "mkdir -p" in remote_command(mkdir)
  assert copy[4] == "scp" and copy[5] == str(own) and copy[6] == "spot-v4:~/spot_gin/my_run.gin"
  assert '--gin_file="$HOME"/spot_gin/my_run.gin' in remote_command(train)


def test_tpu_stop_frees_the_chips():
  (stop,) = dry(TPU, "stop", *TPU_ID)
  script = remote_command(stop)
  assert "spot_train.pid" in script and "/dev/vfio/*" in script
  assert "pkill -f" not in script  # would match the remote shell's own command line
  assert_bash_parses(script)


def test_tpu_train_needs_a_gin_file():
  assert "--gin_file" in fails(TPU, "train", *TPU_ID, "--gin.X=1")
  assert "unknown arguments" in fails(TPU, "train", *TPU_ID, "--oops", GIN[0])


def test_slurm_script_runs_one_process_per_node(tmp_path):
  script_path = tmp_path / "job.sbatch"
  out = subprocess.run([sys.executable, str(SLURM), "submit", "--nodes", "4", "--partition",
                        "a100", "--sbatch=--exclusive", "--script", str(script_path),
                        "--dry-run", *GIN], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[-2:] == ["mkdir -p slurm_logs", f"sbatch {script_path}"]
  script = "\n".join(l[4:] for l in lines if l.startswith("#   ")) + "\n"
  for option in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=a100",
                 "--exclusive"):
    assert f"#SBATCH {option}" in script
  assert_bash_parses(script)
  srun = shlex.split([l for l in script.splitlines() if l.startswith("srun")][0])
  assert srun[2:] == ["$HOME/spot-venv/bin/spot", "train", *GIN, "--multiprocess"]
  assert not script_path.exists()  # a dry run writes nothing


def test_slurm_logs_and_cancel():
  (logs,) = dry(SLURM, "logs", "--job-id", "42")
  assert logs[-1] == "slurm_logs/spot-42.out"
  assert dry(SLURM, "cancel", "--job-id", "42") == [["scancel", "42"]]


def test_gpu_launcher_sets_coordinator_count_and_index():
  cmds = dry(GPU, "train", "--hosts", "gpu-a,gpu-b,gpu-c", "--port", "9999", *GIN)
  assert [c[1] for c in cmds] == ["gpu-a", "gpu-b", "gpu-c"]
  for i, cmd in enumerate(cmds):
    script = remote_command(cmd)
    assert_bash_parses(script)
    for flag in ("--coordinator_address=gpu-a:9999", "--process_count=3",
                 f"--process_index={i}"):
      assert flag in script
  (single,) = dry(GPU, "train", "--hosts", "solo", *GIN)
  assert "--coordinator_address" not in remote_command(single)


def test_gpu_launcher_train_line_delivers_the_flags(tmp_path):
  """Runs the remote line locally against a fake `spot` that records its argv."""
  home = tmp_path / "home"
  (home / "spot").mkdir(parents=True)
  fake = home / "spot-venv" / "bin" / "spot"
  fake.parent.mkdir(parents=True)
  fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "$HOME/argv.txt"\n')
  fake.chmod(0o755)
  cmd = dry(GPU, "train", "--hosts", "h0,h1", *GIN)[1]
  env = dict(os.environ, HOME=str(home))
  subprocess.run(["bash", "-c", remote_command(cmd)], env=env, check=True, timeout=30)
  argv_file = home / "argv.txt"
  for _ in range(100):
    if argv_file.exists() and argv_file.read_text().endswith("--process_index=1\n"):
      break
    time.sleep(0.05)
  assert argv_file.read_text().splitlines() == [
      "train", *GIN, "--coordinator_address=h0:8476", "--process_count=2", "--process_index=1"]
  assert (home / "spot_train.pid").read_text().strip().isdigit()


def test_gpu_install_and_stop():
  archive, copy_a, install_a, copy_b, install_b = dry(GPU, "install", "--hosts", "a,b", "--local")
  assert copy_a == ["scp", archive[-2], "a:spot.tar.gz"] and install_a[1] == "a"
  assert "jax[cuda12]" in remote_command(install_b)
  stops = dry(GPU, "stop", "--hosts", "a,b")
  assert [s[1] for s in stops] == ["a", "b"]
  assert all("nvidia-smi" in remote_command(s) for s in stops)
  assert_bash_parses(remote_command(stops[0]))


def test_launchers_need_no_jax():
  code = ("import sys, runpy; sys.argv = ['x', 'delete', '--name', 'n', '--zone', 'z', "
          f"'--dry-run']; runpy.run_path({str(TPU)!r}, run_name='__main__'); "
          "assert 'jax' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize("script", [TPU, SLURM, GPU])
def test_help(script):
  out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
  assert out.returncode == 0 and "--dry-run" not in out.stdout.split("\n")[0]
