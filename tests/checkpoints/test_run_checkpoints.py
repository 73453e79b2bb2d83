"""spot's own run checkpoints: `spot checkpoint inspect` on a run, relative paths, and
`spot checkpoint convert --from-run` to a T5X checkpoint."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from spot import checkpoints, errors
from spot.checkpoints import run, tree
from spot.cli import spot_main
from spot.models import get_config

pytestmark = pytest.mark.filterwarnings("ignore")

PROMPT = "encoder/prompt/prompt/prompt"


def _one_line_error(capsys) -> str:
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "Traceback" not in err, err
  return err


def test_inspect_run_model_dir_text(spot_run, capsys):
  model_dir = spot_run["model_dir"]
  assert spot_main(["checkpoint", "inspect", str(model_dir)]) == 0
  out = capsys.readouterr().out
  assert "format: spot run (checkpoints/)" in out
  assert "step: 2 (checkpoints/: [1, 2], best/: [1])" in out
  assert f"task: {spot_run['task']}" in out
  assert f"base checkpoint: {spot_run['base']}" in out
  assert "prompt length: 4" in out
  assert f"{PROMPT}  [4, 4]" in out and "float32" in out
  assert "total: 1 trained arrays, 16 parameters" in out


def test_inspect_run_step_and_best_folders_json(spot_run, tmp_path, capsys):
  model_dir = spot_run["model_dir"]
  assert spot_main(["checkpoint", "inspect", str(model_dir / "checkpoints" / "1"), "--json"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["format"] == "spot_run" and summary["kind"] == "checkpoints"
  assert summary["step"] == 1 and summary["steps"] == [1, 2] and summary["best_steps"] == [1]
  assert summary["params"] == {PROMPT: {"shape": [4, 4], "dtype": "float32"}}
  assert summary["base_checkpoint"] == str(spot_run["base"])
  assert summary["prompt_length"] == 4 and summary["task"] == spot_run["task"]
  assert summary["total_params"] == 16 and summary["model_config"]["emb_dim"] == 4
  assert summary["path"] == str(model_dir / "checkpoints" / "1")
  for argv in (["inspect", str(model_dir / "best" / "1"), "--json"],
               ["inspect", str(model_dir), "--best", "--json", "--optimizer"]):
    assert spot_main(["checkpoint", *argv]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "best" and summary["step"] == 1
    assert summary["params"][PROMPT]["shape"] == [4, 4]
  assert summary["params"]["opt_state/count"] == {"shape": [], "dtype": "int32"}
  # A step only best/ kept is found by --step alone (checkpoints/ keeps the latest few).
  pruned = tmp_path / "pruned"
  shutil.copytree(model_dir, pruned)
  shutil.rmtree(pruned / "checkpoints" / "1")
  assert spot_main(["checkpoint", "inspect", str(pruned), "--step", "1", "--json"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["kind"] == "best" and summary["step"] == 1
  # The step folder's state/ works too, and the reader returns the trained values.
  ckpt = run.locate_run(model_dir / "checkpoints" / "2" / "state")
  assert ckpt.step == 2
  np.testing.assert_array_equal(run.read_trained(ckpt)[PROMPT],
                                spot_run["prompts"][("checkpoints", 2)])


def test_inspect_run_missing_step_names_available(spot_run, capsys):
  assert spot_main(["checkpoint", "inspect", str(spot_run["model_dir"]), "--step", "7"]) == 3
  err = _one_line_error(capsys)
  assert "no step 7 under checkpoints/" in err
  assert "available steps: checkpoints/: [1, 2], best/: [1]" in err


def test_t5x_loader_points_runs_to_convert(spot_run):
  for path in (spot_run["model_dir"], spot_run["model_dir"] / "checkpoints" / "2"):
    with pytest.raises(errors.DataError, match="spot run checkpoint .*convert --from-run"):
      checkpoints.load_t5x(path)


def test_relative_paths_from_another_cwd(spot_run, tiny_ckpt, tmp_path, monkeypatch, capsys):
  """Orbax needs absolute paths; every user path is resolved against the cwd first."""
  model_dir = spot_run["model_dir"]
  monkeypatch.chdir(model_dir.parent)
  assert spot_main(["checkpoint", "inspect", "run/checkpoints/2", "--json"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["step"] == 2 and summary["path"] == str(model_dir / "checkpoints" / "2")
  assert spot_main(["checkpoint", "inspect", model_dir.name]) == 0
  assert "step: 2" in capsys.readouterr().out
  out = tmp_path / "work"
  out.mkdir()
  monkeypatch.chdir(out)
  rel_run = os.path.relpath(model_dir, out)
  assert spot_main(["checkpoint", "convert", "--from-run", rel_run, "--to", "t5x"]) == 0
  assert str(out / "t5x" / "checkpoint_2") in capsys.readouterr().out
  loaded = checkpoints.load_t5x("t5x")
  np.testing.assert_array_equal(loaded["encoder"]["prompt"]["prompt"]["prompt"],
                                spot_run["prompts"][("checkpoints", 2)])
  # T5X checkpoints and T5X Orbax checkpoints by relative path as well.
  monkeypatch.chdir(tiny_ckpt.parent.parent)
  located = checkpoints.locate(os.path.join(tiny_ckpt.parent.name, tiny_ckpt.name))
  # The working directory is reported with symlinks resolved (os.getcwd), as
  # ../shared may be a link: compare the files, not the spellings.
  assert located.path.is_absolute()
  assert os.path.realpath(located.path) == os.path.realpath(tiny_ckpt / "checkpoint")
  assert checkpoints.describe(tiny_ckpt.parent.name).step == 3


def test_relative_path_orbax_t5x_checkpoint(tiny_ckpt, tmp_path, monkeypatch):
  ocp = pytest.importorskip("orbax.checkpoint")
  params = checkpoints.load_t5x(tiny_ckpt)
  with ocp.CheckpointManager(tmp_path / "model", options=ocp.CheckpointManagerOptions(
      step_prefix="checkpoint"), item_handlers={
          "state": ocp.PyTreeCheckpointHandler(use_ocdbt=True)}) as manager:
    manager.save(3, args=ocp.args.Composite(state=ocp.args.PyTreeSave(
        {"target": params, "state": {"step": np.int32(3)}})))
    manager.wait_until_finished()
  monkeypatch.chdir(tmp_path)
  loaded = checkpoints.load_t5x("model", get_config("t5_1_1_tiny"))
  np.testing.assert_array_equal(loaded["token_embedder"]["embedding"],
                                params["token_embedder"]["embedding"])
  assert checkpoints.load_t5x_variable("model/checkpoint_3", "encoder/encoder_norm/scale").shape \
      == (4,)


def test_convert_run_round_trip(spot_run, tmp_path, capsys, reference_reader):
  """load_t5x(out) = the base checkpoint's weights + the run's trained prompt."""
  model_dir, base = spot_run["model_dir"], spot_run["base"]
  out = tmp_path / "t5x"
  assert spot_main(["checkpoint", "convert", "--from-run", str(model_dir),
                    "--to", str(out)]) == 0
  assert capsys.readouterr().out.strip() == f"wrote {out / 'checkpoint_2'}"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["t5x"]  # no temp directory left
  assert checkpoints.all_steps(out) == [2]
  got = tree.flatten(checkpoints.load_t5x(out, get_config("t5_1_1_tiny")))
  want = tree.flatten(checkpoints.load_t5x(base))
  assert sorted(got) == sorted([*want, PROMPT])
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  np.testing.assert_array_equal(got[PROMPT], spot_run["prompts"][("checkpoints", 2)])
  # The files are T5X's: read with raw msgpack + tensorstore, the prompt is a zarr array
  # under T5X's flattened name, as prompt-tuning checkpoints store it.
  raw = reference_reader(out / "checkpoint_2")
  np.testing.assert_array_equal(raw[PROMPT], spot_run["prompts"][("checkpoints", 2)])
  assert (out / "checkpoint_2" / "target.encoder.prompt.prompt.prompt" / ".zarray").is_file()
  assert reference_reader(out / "checkpoint_2", "state")["step"] == 2
  assert checkpoints.load_t5x_variable(out, PROMPT).shape == (4, 4)
  provenance = json.loads((out / "converted_from_run.json").read_text())
  assert provenance["source_run"] == str(model_dir) and provenance["step"] == 2


def test_convert_run_step_best_and_overwrite(spot_run, tmp_path, capsys):
  model_dir = spot_run["model_dir"]
  out = tmp_path / "t5x"
  assert spot_main(["checkpoint", "convert", "--from-run", str(model_dir), "--step", "1",
                    "--to", str(out)]) == 0
  np.testing.assert_array_equal(checkpoints.load_t5x(out)["encoder"]["prompt"]["prompt"]["prompt"],
                                spot_run["prompts"][("checkpoints", 1)])
  capsys.readouterr()
  # An existing --to is refused (usage, exit 2) and left as it was ...
  assert spot_main(["checkpoint", "convert", "--from-run", str(model_dir), "--best",
                    "--to", str(out)]) == 2
  err = _one_line_error(capsys)
  assert f"{out} already exists" in err and "pass --overwrite" in err
  assert checkpoints.all_steps(out) == [1]
  # ... unless --overwrite: then it is replaced, only once the new one is complete.
  assert spot_main(["checkpoint", "convert", "--from-run", str(model_dir), "--best",
                    "--to", str(out), "--overwrite"]) == 0
  assert checkpoints.all_steps(out) == [1]
  np.testing.assert_array_equal(checkpoints.load_t5x(out)["encoder"]["prompt"]["prompt"]["prompt"],
                                spot_run["prompts"][("best", 1)])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["t5x"]


def test_convert_run_errors(spot_run, tmp_path, capsys):
  model_dir = spot_run["model_dir"]

  def convert(source, *extra):
    code = spot_main(["checkpoint", "convert", "--from-run", str(source), "--to",
                      str(tmp_path / "out"), *extra])
    return code, _one_line_error(capsys)

  code, err = convert(tmp_path / "no_such_run")
  assert code == 3 and f"No run at {tmp_path / 'no_such_run'}" in err
  code, err = convert(model_dir, "--step", "5")
  assert code == 3 and "no step 5 under checkpoints/" in err
  assert "available steps: checkpoints/: [1, 2], best/: [1]" in err
  code, err = convert(model_dir, "--step", "1", "--best")
  assert code == 2 and "--step and --best" in err
  no_json = tmp_path / "copied_run"
  shutil.copytree(model_dir, no_json)
  (no_json / "run.json").unlink()
  code, err = convert(no_json)
  assert code == 3 and f"Run {no_json} has no run.json" in err
  moved = json.loads((no_json / "checkpoints" / "2" / "meta" / "metadata").read_text())
  moved["base_checkpoint"] = "elsewhere/checkpoint_3"
  (no_json / "checkpoints" / "2" / "meta" / "metadata").write_text(json.dumps(moved))
  shutil.copy(model_dir / "run.json", no_json / "run.json")
  code, err = convert(no_json)
  assert code == 3 and "Base checkpoint 'elsewhere/checkpoint_3' of run" in err
  assert "relative path" in err
  not_a_run = tmp_path / "plain"
  not_a_run.mkdir()
  code, err = convert(not_a_run)
  assert code == 3 and "is not a spot run" in err
  # Writing into the run itself is refused before anything is read.
  code = spot_main(["checkpoint", "convert", "--from-run", str(model_dir), "--to",
                    str(model_dir / "t5x")])
  assert code == 2 and "would overwrite the run" in _one_line_error(capsys)
  assert not (tmp_path / "out").exists() and not (model_dir / "t5x").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["copied_run", "plain"]
