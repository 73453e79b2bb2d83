"""spot.checkpoints.run_dir: the run-directory layout and its numpy prompt export."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from spot import errors
from spot import io as spot_io
from spot.checkpoints import run_dir


def _trainable(value: float, length: int = 3, dim: int = 4) -> dict:
  prompt = np.full((length, dim), value, np.float32) + np.arange(dim, dtype=np.float32)
  return {"encoder": {"prompt": {"prompt": {"prompt": prompt}}},
          "decoder": {"layer_norm": {"scale": np.ones((dim,), np.float32)}}}


def test_names_are_prompt_tunings():
  assert run_dir.PROMPT_VARIABLE == "encoder/prompt/prompt/prompt"
  assert run_dir.PROMPT_FILE == "encoder.prompt.prompt.prompt"
  assert os.fspath(run_dir.numpy_step_dir("/m", 7)) == "/m/numpy_checkpoints/checkpoint_7"
  assert os.fspath(run_dir.step_dir("/m", 7, best=True)) == "/m/best/7"


def test_export_reads_back_equal_and_only_the_prompt(tmp_path):
  trainable = _trainable(0.5)
  written = run_dir.save_prompt_numpy(str(tmp_path), 10, trainable)
  final = run_dir.numpy_step_dir(str(tmp_path), 10)
  assert written == [os.fspath(final / run_dir.PROMPT_FILE)]
  assert sorted(p.name for p in final.iterdir()) == [run_dir.PROMPT_FILE,
                                                      run_dir.PROMPT_FILE + ".npy"]
  want = trainable["encoder"]["prompt"]["prompt"]["prompt"]
  np.testing.assert_array_equal(run_dir.read_numpy_variable(str(tmp_path), 10), want)
  np.testing.assert_array_equal(np.load(final / (run_dir.PROMPT_FILE + ".npy")), want)
  assert run_dir.has_prompt_numpy(str(tmp_path), 10, trainable)
  assert not run_dir.has_prompt_numpy(str(tmp_path), 20, trainable)


def test_steps_ascend_and_latest_is_the_newest(tmp_path):
  for step in (100, 20, 3):
    run_dir.save_prompt_numpy(str(tmp_path), step, _trainable(float(step)))
  (tmp_path / run_dir.NUMPY_DIR / "checkpoint_x").mkdir()  # not a step
  assert run_dir.numpy_steps(str(tmp_path)) == [3, 20, 100]
  assert run_dir.latest_numpy_prompt(str(tmp_path))[0, 0] == 100.0
  assert run_dir.remove_numpy_after(str(tmp_path), 20) == [100]
  assert run_dir.numpy_steps(str(tmp_path)) == [3, 20]
  assert run_dir.latest_numpy_prompt(str(tmp_path))[0, 0] == 20.0


def test_resaving_a_step_replaces_it(tmp_path):
  run_dir.save_prompt_numpy(str(tmp_path), 5, _trainable(1.0))
  run_dir.save_prompt_numpy(str(tmp_path), 5, _trainable(2.0))
  assert run_dir.read_numpy_variable(str(tmp_path), 5)[0, 0] == 2.0
  assert [p.name for p in (tmp_path / run_dir.NUMPY_DIR).iterdir()] == ["checkpoint_5"]


def test_no_export_is_a_missing_input(tmp_path):
  with pytest.raises(errors.MissingInputError, match="numpy_checkpoints"):
    run_dir.latest_numpy_prompt(str(tmp_path))
  with pytest.raises(errors.CheckpointError, match="encoder/prompt/prompt/prompt"):
    run_dir.read_numpy_variable(str(tmp_path), 1)


def test_stale_exports_are_cleared_and_a_lone_old_copy_restored(tmp_path):
  root = tmp_path / run_dir.NUMPY_DIR
  run_dir.save_prompt_numpy(str(tmp_path), 4, _trainable(4.0))
  (root / ".checkpoint_9.tmp1.ab").mkdir()
  os.rename(root / "checkpoint_4", root / ".checkpoint_4.old1.cd")  # killed mid-replace
  (tmp_path / ".run.json.tmp1.ef").write_text("{")
  removed = run_dir.remove_stale_exports(str(tmp_path))
  assert sorted(os.path.basename(p) for p in removed) == [".checkpoint_9.tmp1.ab",
                                                          ".run.json.tmp1.ef"]
  assert run_dir.numpy_steps(str(tmp_path)) == [4]
  assert run_dir.read_numpy_variable(str(tmp_path), 4)[0, 0] == 4.0


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
  run_dir.write_run_json(tmp_path, {"task": "rte", "seed": 1})

  def fail(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "fsync", fail)
  with pytest.raises(OSError):
    run_dir.write_run_json(tmp_path, {"task": "boolq", "seed": 2})
  assert run_dir.read_run_json(tmp_path) == {"task": "rte", "seed": 1}
  assert sorted(p.name for p in tmp_path.iterdir()) == [run_dir.RUN_JSON]


def test_run_and_metrics_json(tmp_path):
  assert run_dir.read_run_json(tmp_path) is None
  assert run_dir.read_metrics(tmp_path) is None
  assert run_dir.read_config_gin(tmp_path) == ""
  run_dir.write_config_gin(tmp_path, "x = 1\n")
  assert run_dir.read_config_gin(tmp_path) == "x = 1\n"
  spot_io.write_json_atomic(tmp_path / run_dir.METRICS_JSON, {"scores": {"acc": 0.5}})
  assert run_dir.read_metrics(tmp_path) == {"scores": {"acc": 0.5}}
  (tmp_path / run_dir.RUN_JSON).write_text("[1, 2]")
  with pytest.raises(errors.CheckpointError, match="run.json holds a list"):
    run_dir.read_run_json(tmp_path)
  (tmp_path / run_dir.METRICS_JSON).write_text('{"scores": ')
  with pytest.raises(errors.DataError, match="metrics.json is not valid JSON"):
    run_dir.read_metrics(tmp_path)


def test_read_json_names_the_file_and_fix(tmp_path):
  path = tmp_path / "x.json"
  path.write_text(json.dumps([1]))
  with pytest.raises(errors.LibraryError, match=r"index .*x.json holds a list.*; rebuild it\."):
    spot_io.read_json(path, "index", error=errors.LibraryError, fix="rebuild it")
  assert spot_io.read_json_if_exists(tmp_path / "none.json", "index") is None


def test_only_committed_step_folders_count(tmp_path):
  for step, marker in ((1, True), (2, False), (3, True)):
    folder = run_dir.step_dir(tmp_path, step)
    (folder / run_dir.STATE_ITEM).mkdir(parents=True)
    (folder / run_dir.META_ITEM).mkdir()
    if marker:
      (folder / run_dir.COMMIT_MARKER).write_text("")
  (tmp_path / run_dir.CHECKPOINTS_DIR / "4.orbax-checkpoint-tmp-9").mkdir()
  assert run_dir.committed_steps(tmp_path) == [1, 3]
  assert run_dir.committed_steps(tmp_path, run_dir.BEST_DIR) == []
  assert [p.name for p in run_dir.incomplete_steps(tmp_path / "checkpoints")] == ["2"]
