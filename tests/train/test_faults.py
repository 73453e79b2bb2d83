"""Faults: kills inside the exports, a full disk, a read-only model_dir, broken step folders,
divergence. Each ends with the same files as an uninterrupted run, or fails before compute."""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from orbax.checkpoint._src.path import atomicity

from spot import errors
from spot.train import checkpointing, optimizers, trainer

from tests import helpers

pytestmark = pytest.mark.filterwarnings("ignore")

STEPS = 12  # checkpoints (and numpy exports) every 4 steps, keep 1


class Crash(Exception):
  """Stands for a kill at an exact point (the run leaves everything as it is)."""


@pytest.fixture(scope="module")
def task():
  return helpers.register_tiny_task("faults_tiny")


@pytest.fixture(scope="module")
def reference(task, tmp_path_factory):
  """An uninterrupted run: its numpy exports and final prompt."""
  model_dir = tmp_path_factory.mktemp("reference")
  helpers.quick_train(model_dir, task, train_steps=STEPS)
  return helpers.numpy_exports(model_dir)


def _assert_like_reference(model_dir: pathlib.Path, reference):
  exports = helpers.numpy_exports(model_dir)
  assert sorted(exports) == sorted(reference) == ["checkpoint_12", "checkpoint_4", "checkpoint_8"]
  for step, files in reference.items():
    assert sorted(exports[step]) == sorted(files), step
    for name, value in files.items():
      np.testing.assert_array_equal(exports[step][name], value, err_msg=f"{step}/{name}")
  leftovers = [p.name for p in (model_dir / "numpy_checkpoints").iterdir()
               if p.name.startswith(".")]
  assert not leftovers, leftovers
  assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["12"]
  assert checkpointing.RunCheckpointer(str(model_dir)).latest_step() == STEPS


def _crash_in_numpy_rename(monkeypatch, step):
  cls = type(epath.Path("/"))
  original = cls.rename

  def rename(self, target):
    if self.name.startswith(f".checkpoint_{step}.tmp"):
      raise Crash(f"killed before the numpy export of step {step} was renamed")
    return original(self, target)

  monkeypatch.setattr(cls, "rename", rename)


def _crash_in_orbax_commit(monkeypatch, step):
  original = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self):
    if self.get_final().name == str(step) and self.get_final().parent.name == "checkpoints":
      raise Crash(f"killed before orbax renamed checkpoints/{step}")
    return await original(self)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", finalize)


def _crash_after_orbax_commit(monkeypatch, step):
  original = checkpointing.RunCheckpointer.save

  def save(self, at_step, state, meta, best=False):
    original(self, at_step, state, meta, best=best)
    if at_step == step and not best:
      raise Crash(f"killed right after checkpoints/{step} was committed")

  monkeypatch.setattr(checkpointing.RunCheckpointer, "save", save)


@pytest.mark.parametrize("inject", [_crash_in_numpy_rename, _crash_in_orbax_commit,
                                    _crash_after_orbax_commit])
def test_kill_inside_a_save_then_resume_equals_uninterrupted(task, reference, tmp_path,
                                                             monkeypatch, inject):
  with monkeypatch.context() as m:
    inject(m, 8)
    with pytest.raises(Exception) as info:
      helpers.quick_train(tmp_path, task, train_steps=STEPS)
  assert "killed" in str(info.value) or isinstance(info.value.__cause__, Crash), info.value
  assert checkpointing.RunCheckpointer(str(tmp_path)).latest_step() in (4, 8)
  result = helpers.quick_train(tmp_path, task, train_steps=STEPS)
  assert result.step == STEPS
  _assert_like_reference(tmp_path, reference)


def test_resume_reexports_a_lost_numpy_checkpoint(task, reference, tmp_path):
  """An export lost after its orbax commit (an older spot) is written again on resume."""
  helpers.quick_train(tmp_path, task, train_steps=STEPS, stop_after_steps=8)
  shutil.rmtree(tmp_path / "numpy_checkpoints" / "checkpoint_8")
  (tmp_path / "numpy_checkpoints" / ".checkpoint_8.tmp123").mkdir()
  helpers.quick_train(tmp_path, task, train_steps=STEPS)
  _assert_like_reference(tmp_path, reference)


WORKER = r"""
import os, signal, sys
from etils import epath
from tests import helpers
model_dir, step = sys.argv[1], int(sys.argv[2])
cls = type(epath.Path("/"))
original = cls.rename
def rename(self, target):
  if self.name.startswith(f".checkpoint_{step}.tmp"):
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 inside the numpy export
  return original(self, target)
cls.rename = rename
helpers.quick_train(model_dir, helpers.register_tiny_task("faults_tiny"), train_steps=12)
"""


@pytest.mark.slow
def test_sigkill_inside_numpy_export_then_resume(task, reference, tmp_path):
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  proc = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path), "8"], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
  assert list((tmp_path / "numpy_checkpoints").glob(".checkpoint_8.tmp*"))
  helpers.quick_train(tmp_path, task, train_steps=STEPS)
  _assert_like_reference(tmp_path, reference)


@pytest.fixture(scope="module")
def finished_template(task, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("finished")
  helpers.quick_train(model_dir, task, train_steps=4, gin_config="FIRST = 1\n")
  return model_dir


@pytest.fixture()
def finished_run(finished_template, tmp_path):
  """A copy of a finished 4-step run; returns (dir, {config.gin and run.json: bytes})."""
  model_dir = tmp_path / "run"
  shutil.copytree(finished_template, model_dir)
  files = {n: (model_dir / n).read_bytes() for n in ("config.gin", "run.json")}
  return model_dir, files


def _unchanged(model_dir: pathlib.Path, files) -> None:
  for name, data in files.items():
    assert (model_dir / name).read_bytes() == data, name
  assert not [p.name for p in model_dir.iterdir() if ".tmp" in p.name]


def test_run_files_are_0644_under_the_usual_umask(finished_run):
  model_dir, _ = finished_run
  umask = os.umask(0o022)
  os.umask(umask)
  for name in ("config.gin", "run.json"):
    assert (model_dir / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


@pytest.mark.parametrize("change,expected", [
    (dict(task="faults_no_such_task"), "MIXTURE_OR_TASK_NAME"),
    (dict(initial_checkpoint_path="other"), "INITIAL_CHECKPOINT_PATH"),
    (dict(prompt_length=6), "PROMPT_LENGTH=6"),
])
def test_failed_start_leaves_the_run_unchanged(finished_run, task, monkeypatch, change,
                                               expected):
  model_dir, files = finished_run
  monkeypatch.setattr(trainer.state_lib, "initial_params",
                      lambda *a, **k: pytest.fail("loaded parameters before validating"))
  if "initial_checkpoint_path" in change:  # a path that exists, so only the resume check fails
    change = dict(initial_checkpoint_path=str(model_dir / "run.json"))
    monkeypatch.setattr(trainer.state_lib, "check_base_checkpoint", lambda *a: None,
                        raising=False)
  model = helpers.tiny_random_model(change.pop("prompt_length", 4))
  with pytest.raises(errors.UsageError) as info:
    trainer.train(
        model=model,
        train_dataset_cfg=_dataset(change.get("task", task)),
        model_dir=str(model_dir), train_steps=8, verbose=False, gin_config="SECOND = 2\n",
        initial_checkpoint_path=change.get("initial_checkpoint_path", "random"))
  assert expected in str(info.value)
  assert "\n" not in str(info.value)
  _unchanged(model_dir, files)


def _dataset(task):
  from spot.train.data import DatasetConfig
  return DatasetConfig(task, {"inputs": 9, "targets": 3}, batch_size=4, seed=0)


def test_prompt_length_change_names_the_setting(finished_run, task):
  model_dir, _ = finished_run
  with pytest.raises(errors.UsageError) as info:
    helpers.quick_train(model_dir, task, train_steps=8, model=helpers.tiny_random_model(6))
  msg = str(info.value)
  assert msg.startswith("PROMPT_LENGTH=6 does not match the prompt of length 4 saved in")
  assert "resume with PROMPT_LENGTH=4 or use a new MODEL_DIR" in msg
  assert "strict" not in msg


def test_full_disk_leaves_existing_files_unchanged(finished_run, task, monkeypatch):
  model_dir, files = finished_run
  real_write = os.write

  def write(fd, data):
    if os.readlink(f"/proc/self/fd/{fd}").startswith(str(model_dir)):
      real_write(fd, bytes(data)[: len(data) // 2])
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write(fd, data)

  monkeypatch.setattr(os, "write", write)
  with pytest.raises(OSError) as info:
    helpers.quick_train(model_dir, task, train_steps=8, gin_config="SECOND = 2\n")
  assert info.value.errno == errno.ENOSPC
  assert errors.classify(info.value)[0] == errors.EXIT_SYSTEM
  _unchanged(model_dir, files)


def test_read_only_model_dir_fails_before_compute(finished_run, task, monkeypatch):
  model_dir, files = finished_run
  real_open = os.open

  def ro_open(path, flags, *args, **kwargs):
    if str(path).startswith(str(model_dir)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    return real_open(path, flags, *args, **kwargs)

  monkeypatch.setattr(os, "open", ro_open)
  monkeypatch.setattr(trainer.state_lib, "initial_params",
                      lambda *a, **k: pytest.fail("computed before checking MODEL_DIR"))
  with pytest.raises(errors.SystemResourceError) as info:
    helpers.quick_train(model_dir, task, train_steps=8, gin_config="SECOND = 2\n")
  assert str(info.value) == (f"MODEL_DIR {model_dir} is not writable (Read-only file system); "
                             "make it writable or choose another MODEL_DIR.")
  assert errors.classify(info.value)[0] == errors.EXIT_SYSTEM
  monkeypatch.undo()
  _unchanged(model_dir, files)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_unwritable_model_dir_fails_before_compute(finished_run, task):
  model_dir, files = finished_run
  os.chmod(model_dir, 0o555)
  try:
    with pytest.raises(errors.SystemResourceError, match="is not writable"):
      helpers.quick_train(model_dir, task, train_steps=8, gin_config="SECOND = 2\n")
  finally:
    os.chmod(model_dir, 0o755)
  _unchanged(model_dir, files)


def test_uncommitted_step_folder_is_ignored(finished_run, task, caplog):
  model_dir, _ = finished_run
  (model_dir / "checkpoints" / "50").mkdir()
  assert checkpointing.RunCheckpointer(str(model_dir)).latest_step() == 4
  with caplog.at_level(logging.WARNING):
    result = helpers.quick_train(model_dir, task, train_steps=8)
  assert result.step == 8
  assert any("checkpoints/50" in r.getMessage() for r in caplog.records)
  assert (model_dir / "checkpoints" / "50.incomplete").is_dir()
  assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["50.incomplete", "8"]


def test_committed_step_without_meta_is_a_data_error(finished_run, task):
  model_dir, files = finished_run
  ckpts = model_dir / "checkpoints"
  shutil.copytree(ckpts / "4", ckpts / "9")
  (ckpts / "9" / "meta" / "metadata").unlink()
  with pytest.raises(errors.DataError) as info:
    helpers.quick_train(model_dir, task, train_steps=12, gin_config="SECOND = 2\n")
  msg = str(info.value)
  assert msg.startswith(f"Checkpoint {ckpts / '9'} is incomplete or corrupt")
  assert msg.endswith("delete that step folder to resume from the previous checkpoint, or use "
                      "a new MODEL_DIR.")
  _unchanged(model_dir, files)


def _assert_diverged(info, step, last_good):
  msg = str(info.value)
  assert msg.startswith(f"Training diverged at step {step} of MODEL_DIR ")
  assert last_good in msg
  assert "lower LEARNING_RATE and use a new MODEL_DIR, or resume this MODEL_DIR with a lower " \
         "LEARNING_RATE" in msg
  assert "resume from the last checkpoint" not in msg
  assert errors.classify(info.value)[0] == errors.EXIT_DIVERGED


@pytest.mark.parametrize("lr", [1e39, 1e30])
def test_huge_learning_rate_fails_before_any_save(task, tmp_path, lr):
  """1e39 overflows to NaN; 1e30 makes the prompt ~1e30 (finite loss, zero gradient)."""
  with pytest.raises(errors.DivergedError) as info:
    helpers.quick_train(tmp_path, task, train_steps=20, optimizer=optimizers.adafactor(lr),
                        log_every=10, checkpoint_cfg=trainer.CheckpointConfig(period=5, keep=1))
  _assert_diverged(info, 1, "no checkpoint was saved before it")
  if lr == 1e30:
    assert "Rerunning with the same LEARNING_RATE=1e+30 diverges again" in str(info.value)
  assert not list((tmp_path / "checkpoints").iterdir())
  assert not (tmp_path / "numpy_checkpoints").exists()


def test_divergence_between_log_steps_keeps_the_last_good_checkpoint(task, tmp_path):
  cfg = dict(log_every=10, checkpoint_cfg=trainer.CheckpointConfig(period=5, keep=1))
  helpers.quick_train(tmp_path, task, train_steps=20, stop_after_steps=5, **cfg)
  good = np.load(tmp_path / "numpy_checkpoints" / "checkpoint_5" /
                 "encoder.prompt.prompt.prompt.npy")
  # Resuming with a huge rate: the restored state must take this config's LEARNING_RATE.
  with pytest.raises(errors.DivergedError) as info:
    helpers.quick_train(tmp_path, task, train_steps=20, optimizer=optimizers.adafactor(1e39),
                        **cfg)
  _assert_diverged(info, 6, f"the last good checkpoint is step 5 at {tmp_path}/checkpoints/5")
  assert "Rerunning with the same LEARNING_RATE (beyond float32's range) diverges" in str(
      info.value)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["5"]
  assert sorted(p.name for p in (tmp_path / "numpy_checkpoints").iterdir()) == ["checkpoint_5"]
  # ... and resuming with a sane rate carries on from the good step.
  result = helpers.quick_train(tmp_path, task, train_steps=10, **cfg)
  assert result.step == 10 and all(np.isfinite(l) for _, l in result.losses)
  np.testing.assert_array_equal(good, np.load(
      tmp_path / "numpy_checkpoints" / "checkpoint_5" / "encoder.prompt.prompt.prompt.npy"))


def test_step_is_finite_flags_overflowing_parameters():
  ok = trainer.step_is_finite(jnp.float32(1.0), {"g": jnp.ones(3)}, {"p": jnp.full(3, 1e19)})
  assert bool(ok)
  for loss, grad, param in [(jnp.nan, 1.0, 1.0), (1.0, jnp.inf, 1.0), (1.0, 1.0, jnp.nan),
                            (1.0, 0.0, 1e30), (1.0, 1.0, -2e19)]:
    flag = trainer.step_is_finite(jnp.float32(loss), {"g": jnp.full(3, grad)},
                                  {"p": jnp.full(3, param, jnp.float32)})
    assert not bool(flag), (loss, grad, param)


def test_cli_huge_learning_rate_exits_5_with_one_line(shared_data, tmp_path, capsys,
                                                      monkeypatch):
  """The issue's repro: LEARNING_RATE=1e39, LOG_EVERY=10, CHECKPOINT_PERIOD=5, KEEP 1."""
  from spot import cli
  monkeypatch.chdir(pathlib.Path(__file__).resolve().parents[2])
  monkeypatch.delenv("SPOT_DEBUG", raising=False)
  code = cli.spot_main([
      "train", "--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
      "--gin_file=spot/gin/runs/prompt_finetune.gin",
      f"--gin.SPM_PATH='{shared_data / 't5_vocab' / 'spiece.model'}'",
      f"--gin.DATA_DIR='{shared_data}'", "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rte'",
      "--gin.MIXTURE_OR_TASK_MODULE='spot.tasks'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.PROMPT_LENGTH=4",
      "--gin.TRAIN_STEPS=20", "--gin.BATCH_SIZE=4", "--gin.EVAL_PERIOD=0",
      "--gin.LEARNING_RATE=1e39", "--gin.LOG_EVERY=10", "--gin.CHECKPOINT_PERIOD=5",
      "--gin.KEEP_CHECKPOINTS=1",
      f"--gin.INITIAL_CHECKPOINT_PATH='{shared_data / helpers.TINY_CHECKPOINT}'",
      f"--gin.MODEL_DIR='{tmp_path}'"])
  err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("spot ")]
  assert code == errors.EXIT_DIVERGED
  assert len(err) == 1 and err[0].startswith(
      f"spot train: Training diverged at step 1 of MODEL_DIR {tmp_path}:"), err
  assert "no checkpoint was saved before it" in err[0]
  assert not [p for p in (tmp_path / "checkpoints").iterdir()]


def test_a_moved_aside_export_without_replacement_is_restored(tmp_path):
  """A kill between moving checkpoint_4 aside and renaming its new export in."""
  from spot.train import checkpointing as ckpt_lib
  root = tmp_path / "numpy_checkpoints"
  aside = root / ".checkpoint_4.old123.abcd"
  aside.mkdir(parents=True)
  (aside / "encoder.prompt.prompt.prompt").write_bytes(b"kept")
  (root / ".checkpoint_6.tmp123.abcd").mkdir()
  removed = ckpt_lib.remove_stale_exports(str(tmp_path))
  assert (root / "checkpoint_4" / "encoder.prompt.prompt.prompt").read_bytes() == b"kept"
  assert not aside.exists() and not (root / ".checkpoint_6.tmp123.abcd").exists()
  assert removed == [str(root / ".checkpoint_6.tmp123.abcd")]
