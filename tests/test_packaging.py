"""The wheel ships every package, the gin files and the task registry as `spot.tasks`."""

from __future__ import annotations

import pathlib
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
  config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
  listed = set(config["packages"])
  found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "spot").rglob("__init__.py")}
  assert found - listed == set(), f"add to pyproject packages: {sorted(found - listed)}"
  assert config["package-dir"]["spot.tasks"] == "tasks"
  assert "spot.tasks" in listed


def test_task_registry_is_a_spot_subpackage():
  import spot.tasks
  assert pathlib.Path(spot.tasks.__file__).resolve().parent == REPO / "tasks"
  import seqio
  assert "spot_glue_sst2" in seqio.TaskRegistry.names()


def test_console_scripts():
  config = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
  assert config == {"spot": "spot.cli:spot_main", "t5x": "spot.cli:t5x_main"}
  from spot.cli import spot_main, t5x_main
  assert spot_main(["--help"]) == 0 and t5x_main(["--help"]) == 0
  assert spot_main(["nope"]) == 2
