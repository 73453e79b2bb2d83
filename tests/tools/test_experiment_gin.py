"""Every experiment config under gin/ parses with `spot train --print_config`, leaves
no required macro but the documented ones, and its mesh fits the devices it names.
"""

from __future__ import annotations

import math
import pathlib
import sys

import pytest

from spot.train import cli

REPO = pathlib.Path(__file__).resolve().parents[2]
GIN = REPO / "gin"
EXPERIMENTS = sorted(p.relative_to(REPO).as_posix() for p in GIN.glob("*/*.gin")
                     if p.parent.name != "topologies")
TOPOLOGIES = sorted(p.relative_to(REPO).as_posix() for p in (GIN / "topologies").glob("*.gin"))
# Macros a user always gives: where the run goes and, for per-task setups, the task.
USER = ["--gin.MODEL_DIR='/tmp/spot_gin_test'",
        "--gin.MIXTURE_OR_TASK_NAME='spot_superglue_boolq'"]
DEVICE_GIB = 16  # TPU v3 core / v5e chip: what the experiment files' meshes assume


def parse(files, extra=()):
  """Parses gin files as `spot train` does; returns the operative config text."""
  import gin
  argv = [f"--gin_file={f}" for f in files] + USER + list(extra)
  assert cli.main(argv + ["--print_config"], mode="train") == 0, files
  return gin.config_str()


def macro(name: str):
  import gin
  return gin.query_parameter(f"%{name}")


def test_there_are_experiments_for_every_paper():
  names = set(EXPERIMENTS)
  for size in ("base", "large", "xl", "xxl"):
    assert f"gin/prompt_tuning/t5_1_1_{size}.gin" in names
    assert f"gin/spot/glue_mix_source_{size}.gin" in names
    assert f"gin/xgen/mt5_{size}_wikilingua0.gin" in names


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_experiment_parses_with_only_user_macros(path):
  text = parse([path])
  assert "gin.REQUIRED" not in text, f"{path} leaves a required macro unset"
  assert int(macro("NUM_PARTITIONS")) >= 1


def _per_device_gib(path: str, devices: int) -> dict:
  """The memory estimate of tools/bench_train.py for the parsed experiment."""
  sys.path.insert(0, str(REPO / "tools"))
  import bench_train
  lengths = macro("TASK_FEATURE_LENGTHS")
  partitions = int(macro("NUM_PARTITIONS"))
  data = max(1, devices // partitions)
  batch = max(1, int(macro("BATCH_SIZE")) // data)
  prompt = 0
  try:
    prompt = int(macro("PROMPT_LENGTH"))
  except ValueError:
    pass
  name = f"{macro('MODEL_FAMILY')}_{macro('MODEL_SIZE')}"
  return bench_train.estimate(name, batch * data, lengths["inputs"], lengths["targets"], prompt,
                              data, partitions, macro("REMAT_POLICY"), macro("ACTIVATION_DTYPE"))


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if "xxl" in p or "xl" in p])
def test_large_experiments_fit_16_gib_devices(path):
  parse([path])
  model_tuning = "model_tuning" in path
  est = _per_device_gib(path, devices=64 if model_tuning else 32)  # v3-64 / v3-32
  key = "model_tuning_gib" if model_tuning else "prompt_tuning_gib"
  assert est[key] < 0.9 * DEVICE_GIB, (path, est)


@pytest.mark.parametrize("path", TOPOLOGIES)
def test_topology_composes_with_its_experiment(path):
  name = pathlib.Path(path).stem
  size = "xxl" if name.endswith("xxl") else "xl" if name.endswith("xl") else "base"
  text = parse([f"gin/prompt_tuning/t5_1_1_{size}.gin", path])
  assert "gin.REQUIRED" not in text
  import gin
  try:
    submesh = gin.query_parameter("partitioning.Partitioner.create.model_parallel_submesh")
  except ValueError:
    submesh = None
  if submesh is not None:
    assert math.prod(submesh) == int(macro("NUM_PARTITIONS")), path


def test_topology_overrides_the_experiment_mesh():
  parse(["gin/prompt_tuning/t5_1_1_xxl.gin"])
  assert macro("NUM_PARTITIONS") == 8
  parse(["gin/prompt_tuning/t5_1_1_xxl.gin", "gin/topologies/tpu_v4_32_xxl.gin"])
  assert macro("NUM_PARTITIONS") == 4
