"""The bad-input corpus: every failure a user can cause is one line, names the
input, exits with its kind's code (spot.errors) and changes nothing on disk.

Each case runs the console entry point in this process (`spot.cli.spot_main`),
against a finished run, a library and other files that already exist; after
the command fails, their bytes and modes must be as before. With
SPOT_BAD_INPUT_TABLE=FILE, each case appends `| case | exit | message |` to FILE.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import shutil
import zipfile
from typing import Callable, Optional

import numpy as np
import pytest

from spot import cli, errors

USAGE, DATA, SYSTEM = errors.EXIT_USAGE, errors.EXIT_DATA, errors.EXIT_SYSTEM


def snapshot(*roots: pathlib.Path) -> dict[str, tuple[str, int]]:
  """Every file under `roots`: sha256 and mode (directories: mode only).

  The library's index cache (`index/`) is derived data a query may build; it
  is left out.
  """
  out = {}
  for root in roots:
    for p in sorted(root.rglob("*")):
      if "index" in p.relative_to(root).parts[:1]:
        continue
      st = p.lstat()
      digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
      out[str(p)] = (digest, st.st_mode)
  return out


@pytest.fixture(scope="module")
def world(shared_data, tmp_path_factory) -> dict:
  """A finished tiny run, a library with one entry, and assorted bad files."""
  root = tmp_path_factory.mktemp("world")
  ckpt = shared_data / "t5x_tiny_checkpoint" / "checkpoint_3"
  spm = shared_data / "t5_vocab" / "spiece.model"
  run = root / "run"
  base = ["--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
          "--gin_file=spot/gin/runs/prompt_finetune.gin",
          f"--gin.SPM_PATH='{spm}'", f"--gin.DATA_DIR='{shared_data}'",
          "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rte'", "--gin.MIXTURE_OR_TASK_MODULE='spot.tasks'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.PROMPT_LENGTH=4",
          "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4", "--gin.EVAL_PERIOD=0"]
  train = base + [f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'", f"--gin.MODEL_DIR='{run}'"]
  cwd = os.getcwd()
  os.chdir(pathlib.Path(__file__).resolve().parents[1])
  try:
    assert cli.spot_main(["train", *train]) == 0
  finally:
    os.chdir(cwd)
  shutil.copytree(ckpt, root / "ckpt_copy")
  lib = root / "library"
  prompt = np.random.RandomState(0).randn(4, 4).astype(np.float32)
  np.save(root / "prompt.npy", prompt)
  assert cli.spot_main(["library", "--library", str(lib), "add", "src", "--prompt",
                        str(root / "prompt.npy"), "--embedding", f"e={root / 'prompt.npy'}",
                        "--model", "t5_1_1_tiny"]) == 0
  files = root / "files"
  files.mkdir()
  (files / "text.npy").write_text("not numpy")
  np.save(files / "wrong_dim.npy", np.zeros((4, 7), np.float32))
  np.save(files / "nan.npy", np.full((4, 4), np.nan, np.float32))
  np.save(files / "three_d.npy", np.zeros((2, 4, 4), np.float32))
  with open(files / "pickled.npy", "wb") as f:
    np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  (files / "truncated.npy").write_bytes((root / "prompt.npy").read_bytes()[:70])
  with zipfile.ZipFile(files / "lib.zip", "w") as z:
    z.writestr("manifest.json", "{}")
  (files / "not_archive.tar.gz").write_bytes(b"hello world")
  import tarfile
  with tarfile.open(files / "bad_manifest.tar.gz", "w:gz") as t:
    data = b"{not json"
    info = tarfile.TarInfo("manifest.json")
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))
  (files / "preds.txt").write_text("a\nb\n")
  (files / "refs3.txt").write_text("a\nb\nc\n")
  (files / "empty").mkdir()
  (files / "run_empty_step" / "checkpoints" / "5").mkdir(parents=True)
  bad_run = files / "bad_metrics"
  bad_run.mkdir()
  (bad_run / "metrics.json").write_text("{oops")
  return dict(root=root, run=run, ckpt_copy=root / "ckpt_copy", lib=lib, files=files, ckpt=ckpt, spm=spm, base=base,
              shared=shared_data)


@dataclasses.dataclass
class Case:
  id: str
  argv: Callable[[dict], list[str]]
  code: int
  names: Callable[[dict], str]  # a text the message must contain (the input it names)


def T(w, *extra):  # a train command against the finished run
  return ["train", *w["base"], f"--gin.INITIAL_CHECKPOINT_PATH='{w['ckpt']}'",
          f"--gin.MODEL_DIR='{w['run']}'", *extra]


def PF(w, name):  # train a new run from a prompt file
  return ["train", *w["base"], f"--gin.INITIAL_CHECKPOINT_PATH='{w['ckpt']}'",
          f"--gin.MODEL_DIR='{w['root'] / 'new_run'}'",
          "--gin_file=spot/gin/prompts/from_file.gin",
          f"--gin.PROMPT_FILE='{w['files'] / name}'"]


def L(w, *extra):
  return ["library", "--library", str(w["lib"]), *extra]


CASES = [
    # spot train
    Case("train-no-gin-file", lambda w: ["train"], USAGE, lambda w: "--gin_file"),
    Case("train-gin-file-missing", lambda w: ["train", "--gin_file=nope/missing.gin"], USAGE,
         lambda w: "missing.gin"),
    Case("train-unquoted-string", lambda w: T(w, "--gin.MODEL_DIR=/tmp/x"), USAGE,
         lambda w: "MODEL_DIR"),
    Case("train-unknown-binding", lambda w: T(w, "--gin.trainer.train.nonsense=3"), USAGE,
         lambda w: "nonsense"),
    Case("train-unknown-task", lambda w: T(w, "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rtee'"),
         USAGE, lambda w: "spot_glue_rtee"),
    Case("train-empty-base", lambda w: ["train", *w["base"],
                                        f"--gin.MODEL_DIR='{w['run']}'",
                                        f"--gin.INITIAL_CHECKPOINT_PATH='{w['files'] / 'empty'}'"],
         DATA, lambda w: "empty"),
    Case("train-other-base", lambda w: ["train", *w["base"], f"--gin.MODEL_DIR='{w['run']}'",
                                        f"--gin.INITIAL_CHECKPOINT_PATH='{w['ckpt_copy']}'"],
         USAGE, lambda w: "INITIAL_CHECKPOINT_PATH"),
    Case("train-missing-checkpoint", lambda w: ["train", *w["base"],
                                                f"--gin.MODEL_DIR='{w['root'] / 'r2'}'",
                                                "--gin.INITIAL_CHECKPOINT_PATH='/nonexistent/ckpt'"],
         DATA, lambda w: "/nonexistent/ckpt"),
    Case("train-lengths-without-targets",
         lambda w: T(w, "--gin.TASK_FEATURE_LENGTHS={'inputs': 32}"), USAGE,
         lambda w: "TASK_FEATURE_LENGTHS"),
    Case("train-microbatches", lambda w: T(w, "--gin.NUM_MICROBATCHES=3"), USAGE,
         lambda w: "BATCH_SIZE"),
    Case("train-prompt-length-changed", lambda w: T(w, "--gin.PROMPT_LENGTH=6",
                                                    "--gin.TRAIN_STEPS=4"),
         USAGE, lambda w: "PROMPT_LENGTH"),
    Case("train-prompt-file-missing", lambda w: PF(w, "missing.npy"), DATA,
         lambda w: "missing.npy"),
    Case("train-prompt-file-text", lambda w: PF(w, "text.npy"), DATA, lambda w: "text.npy"),
    Case("train-prompt-file-pickled", lambda w: PF(w, "pickled.npy"), DATA,
         lambda w: "pickled.npy"),
    Case("train-prompt-file-truncated", lambda w: PF(w, "truncated.npy"), DATA,
         lambda w: "truncated.npy"),
    Case("train-prompt-file-nan", lambda w: PF(w, "nan.npy"), DATA, lambda w: "nan.npy"),
    Case("train-prompt-file-shape", lambda w: PF(w, "wrong_dim.npy"), DATA,
         lambda w: "wrong_dim.npy"),
    Case("train-size-mismatch", lambda w: ["train", "--gin_file=spot/gin/glue_mix.gin",
                                           f"--gin.MODEL_DIR='{w['root'] / 'r3'}'",
                                           f"--gin.INITIAL_CHECKPOINT_PATH='{w['ckpt']}'",
                                           f"--gin.SPM_PATH='{w['spm']}'"],
         USAGE, lambda w: "MODEL_SIZE"),
    # spot eval / infer
    Case("eval-missing-restore", lambda w: [
        "eval", "--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
        "--gin_file=spot/gin/runs/prompt_eval.gin", "--gin.RESTORE_MODEL_DIR='/nonexistent/run'",
        "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rte'", f"--gin.EVAL_OUTPUT_DIR='{w['root'] / 'e'}'",
        "--gin.PROMPT_LENGTH=4"], DATA, lambda w: "/nonexistent/run"),
    Case("eval-empty-step", lambda w: [
        "eval", "--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
        "--gin_file=spot/gin/runs/prompt_eval.gin",
        f"--gin.RESTORE_MODEL_DIR='{w['files'] / 'run_empty_step'}'",
        f"--gin.SPM_PATH='{w['spm']}'", f"--gin.DATA_DIR='{w['shared']}'",
        "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rte'", f"--gin.EVAL_OUTPUT_DIR='{w['root'] / 'e'}'",
        "--gin.PROMPT_LENGTH=4"], DATA, lambda w: "run_empty_step"),
    Case("infer-missing-restore", lambda w: [
        "infer", "--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
        "--gin_file=spot/gin/runs/prompt_infer.gin", "--gin.RESTORE_MODEL_DIR='/nonexistent/run'",
        "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rte'",
        f"--gin.INFER_OUTPUT_DIR='{w['root'] / 'i'}'", "--gin.PROMPT_LENGTH=4"],
         DATA, lambda w: "/nonexistent/run"),
    # spot library
    Case("library-missing", lambda w: ["library", "--library", str(w["root"] / "nolib"), "list"],
         DATA, lambda w: "nolib"),
    Case("library-show-unknown", lambda w: L(w, "show", "nosuch"), DATA, lambda w: "nosuch"),
    Case("library-remove-unknown", lambda w: L(w, "remove", "nosuch"), DATA, lambda w: "nosuch"),
    Case("library-add-missing-prompt", lambda w: L(w, "add", "x", "--prompt",
                                                   str(w["files"] / "missing.npy"),
                                                   "--model", "t5_1_1_tiny"),
         DATA, lambda w: "missing.npy"),
    Case("library-add-text-prompt", lambda w: L(w, "add", "x", "--prompt",
                                                str(w["files"] / "text.npy"),
                                                "--model", "t5_1_1_tiny"),
         DATA, lambda w: "text.npy"),
    Case("library-add-3d-prompt", lambda w: L(w, "add", "x", "--prompt",
                                              str(w["files"] / "three_d.npy"),
                                              "--model", "t5_1_1_tiny"),
         DATA, lambda w: "three_d.npy"),
    Case("library-add-exists", lambda w: L(w, "add", "src", "--prompt",
                                           str(w["root"] / "prompt.npy"), "--model", "t5_1_1_tiny"),
         DATA, lambda w: "--overwrite"),
    Case("library-query-wrong-dim", lambda w: L(w, "query", "--embedding",
                                                str(w["files"] / "wrong_dim.npy")),
         DATA, lambda w: "wrong_dim.npy"),
    Case("library-import-zip", lambda w: L(w, "import", str(w["files"] / "lib.zip")), DATA,
         lambda w: "lib.zip"),
    Case("library-import-not-archive", lambda w: L(w, "import",
                                                   str(w["files"] / "not_archive.tar.gz")),
         DATA, lambda w: "not_archive.tar.gz"),
    Case("library-import-bad-manifest", lambda w: L(w, "import",
                                                    str(w["files"] / "bad_manifest.tar.gz")),
         DATA, lambda w: "bad_manifest.tar.gz"),
    Case("library-add-from-missing-run", lambda w: L(w, "add", "y", "--from-model-dir",
                                                     "/nonexistent/run", "--model", "t5_1_1_tiny"),
         DATA, lambda w: "/nonexistent/run"),
    # spot xgen
    Case("xgen-missing-predictions", lambda w: [
        "xgen", "score", "--predictions", str(w["files"] / "nopreds.txt"), "--targets",
        str(w["files"] / "refs3.txt"), "--lang", "en", "--spm", str(w["spm"])],
         DATA, lambda w: "nopreds.txt"),
    Case("xgen-line-counts", lambda w: [
        "xgen", "score", "--predictions", str(w["files"] / "preds.txt"), "--targets",
        str(w["files"] / "refs3.txt"), "--lang", "en", "--spm", str(w["spm"])],
         DATA, lambda w: "refs3.txt"),
    Case("xgen-unknown-lang", lambda w: [
        "xgen", "score", "--predictions", str(w["files"] / "preds.txt"), "--targets",
        str(w["files"] / "preds.txt"), "--lang", "klingon", "--spm", str(w["spm"])],
         USAGE, lambda w: "klingon"),
    # spot checkpoint
    Case("checkpoint-inspect-missing", lambda w: ["checkpoint", "inspect", "/nonexistent/ckpt"],
         DATA, lambda w: "/nonexistent/ckpt"),
    Case("checkpoint-inspect-empty", lambda w: ["checkpoint", "inspect",
                                                str(w["files"] / "empty")],
         DATA, lambda w: "empty"),
    Case("checkpoint-convert-missing-run", lambda w: [
        "checkpoint", "convert", "--from-run", "/nonexistent/run", "--to",
        str(w["root"] / "out")], DATA, lambda w: "/nonexistent/run"),
    # spot report
    Case("report-no-runs", lambda w: ["report", "--runs", str(w["files"] / "empty")], DATA,
         lambda w: "empty"),
    Case("report-bad-metrics", lambda w: ["report", "--runs", str(w["files"] / "bad_metrics")],
         DATA, lambda w: "metrics.json"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_naming_the_input(world, case, capsys, monkeypatch):
  monkeypatch.chdir(pathlib.Path(__file__).resolve().parents[1])
  monkeypatch.delenv("SPOT_DEBUG", raising=False)
  watched = (world["run"], world["lib"], world["files"])
  before = snapshot(*watched)
  capsys.readouterr()
  code = cli.spot_main(case.argv(world))
  err = capsys.readouterr().err
  lines = [ln for ln in err.splitlines() if ln.startswith("spot ")]
  assert code == case.code, f"exit {code}, expected {case.code}: {err[-2000:]}"
  assert "Traceback" not in err, err[-3000:]
  assert len(lines) == 1, err[-3000:]
  assert case.names(world) in lines[0], lines[0]
  table = os.environ.get("SPOT_BAD_INPUT_TABLE")
  if table:
    shown = lines[0].replace(str(world["root"]), "$TMP").replace("|", "\\|")
    with open(table, "a", encoding="utf-8") as f:
      f.write(f"| {case.id} | {code} | {shown} |\n")
  assert snapshot(*watched) == before, "a failed command changed files on disk"
  assert not (world["root"] / "new_run" / "config.gin").exists()
