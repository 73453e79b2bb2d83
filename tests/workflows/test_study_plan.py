"""`spot study plan --launcher shell|tpu|slurm|multinode`: the printed commands cover exactly
the study's unfinished runs, in stages that respect every run's inputs.

Each format is parsed back as its launcher would take it: the shell lines by the study
parser, the TPU lines through `tools/tpu/tpu.py ssh --dry-run`, and the SLURM and
multi-node scripts executed by bash against fake `sbatch`, `ssh` and `spot` commands
that record what would have run, and in which order.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

from spot import errors
from spot.workflows import study as study_lib
from spot.workflows import study_cli
from spot.workflows import study_launch
from tests.workflows import study_helpers as helpers

pytestmark = pytest.mark.filterwarnings("ignore")
REPO = pathlib.Path(__file__).resolve().parents[2]
TPU = REPO / "tools" / "tpu" / "tpu.py"
# Finished before planning: one source and one baseline of seed 0.
DONE = ("sources/sst/seed0", "baselines/sst_b/seed0")


@pytest.fixture
def half_done(tmp_path):
  """A study with DONE finished; returns (spec, study dir, the unfinished run ids in order)."""
  spec = helpers.make_spec()
  helpers.run_study(tmp_path, spec, only=list(DONE))
  pending = [r.run_id for r in study_lib.plan_runs(spec) if r.run_id not in DONE]
  return spec, str(tmp_path / "study"), pending


def check_stages(spec, stages: list[list[str]], pending: list[str]) -> None:
  """Every unfinished run once; each run's unfinished inputs in an earlier stage."""
  flat = [r for s in stages for r in s]
  assert sorted(flat) == sorted(pending) and len(flat) == len(set(flat))
  runs = {r.run_id: r for r in study_lib.plan_runs(spec)}
  stage_of = {r: i for i, s in enumerate(stages) for r in s}
  for run_id, i in stage_of.items():
    for need in study_lib.needs(spec, runs[run_id]):
      assert need in DONE or stage_of[need] < i, (run_id, need)


def plan(spec, study_dir, launcher, **opts) -> list[str]:
  return study_launch.plan_lines(spec, study_dir, launcher, study_launch.LaunchOptions(**opts))


def stage_blocks(lines: list[str]) -> list[list[str]]:
  """Lines under each `# stage i of n` heading."""
  blocks: list[list[str]] = []
  for line in lines:
    if line.startswith("# stage "):
      blocks.append([])
    elif blocks and line.strip():
      blocks[-1].append(line)
  return blocks


def test_stages_start_what_is_ready_and_wait_for_the_rest(half_done):
  spec, study_dir, pending = half_done
  stages = [[r.run_id for r in s] for s in study_lib.pending_stages(spec, study_dir)]
  check_stages(spec, stages, pending)
  assert len(stages) == 2
  # A transfer from a finished source needs nothing unfinished: it starts at once...
  assert "transfers/sst__sst_b/seed0" in stages[0]
  # ...while one from an unfinished source, and every retrieval run, waits.
  assert "transfers/topic__sst_b/seed0" in stages[1]
  assert all(r in stages[1] for r in pending if r.startswith("retrieval/"))
  assert all(r in stages[0] for r in pending if r.startswith(("sources/", "baselines/")))
  # A finished study plans nothing.
  helpers.run_study(pathlib.Path(study_dir).parent, spec)
  assert study_lib.pending_stages(spec, study_dir) == []


def test_shell_lines_are_study_runs_in_stages(half_done):
  spec, study_dir, pending = half_done
  lines = plan(spec, study_dir, "shell")
  assert lines[0].startswith(f"# spot study plan {study_dir}: {len(pending)} unfinished run(s) "
                             "in 2 stage(s)")
  blocks = stage_blocks(lines)
  parser = study_cli.build_parser()
  stages = []
  for block in blocks:
    stages.append([])
    for line in block:
      argv = shlex.split(line)
      assert argv[:3] == ["spot", "study", "run"]
      args = parser.parse_args(argv[2:])
      assert args.dir == study_dir and len(args.only) == 1
      stages[-1].append(args.only[0])
  check_stages(spec, stages, pending)
  assert lines[1] == f"# stage 1 of 2: {len(stages[0])} run(s) (source, baseline, transfer)"


def test_jsonl_gives_each_unfinished_run_its_stage_and_inputs(half_done, capsys):
  spec, study_dir, pending = half_done
  assert study_cli.main(["plan", "--dir", study_dir, "--format", "jsonl"]) == 0
  rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
  stages = [[r["run_id"] for r in rows if r["stage"] == i] for i in (0, 1)]
  check_stages(spec, stages, pending)
  row = next(r for r in rows if r["run_id"] == "transfers/topic__sst_b/seed0")
  assert row["needs"] == ["sources/topic/seed0"] and row["stage"] == 1
  assert row["command"] == f"spot study run --dir {study_dir} --only transfers/topic__sst_b/seed0"


def test_tpu_lines_go_through_the_tpu_launcher(half_done):
  spec, study_dir, pending = half_done
  lines = plan(spec, study_dir, "tpu", venv="~/venvs/spot")
  stages = []
  for block in stage_blocks(lines):
    stages.append([])
    for line in block:
      argv = shlex.split(line)
      assert argv[:3] == ["python", "tools/tpu/tpu.py", "ssh"]
      assert argv[argv.index("--name") + 1] == "$TPU_NAME"  # left for the shell
      argv = [a.replace("$TPU_NAME", "vm-1").replace("$TPU_ZONE", "us-central2-b") for a in argv]
      out = subprocess.run([sys.executable, str(TPU), *argv[2:], "--dry-run"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
      assert out.returncode == 0, out.stderr
      gcloud = shlex.split(out.stdout.strip())
      assert gcloud[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "vm-1"]
      assert "--zone=us-central2-b" in gcloud and "--worker=0" in gcloud
      remote = next(a for a in gcloud if a.startswith("--command="))[len("--command="):]
      words = shlex.split(remote)
      assert words[:3] == ["cd", "$HOME/spot", "&&"]
      assert words[3:8] == ["$HOME/venvs/spot/bin/spot", "study", "run", "--dir", study_dir]
      assert words[8] == "--only" and len(words) == 10
      stages[-1].append(words[9])
  check_stages(spec, stages, pending)


def _fake_bin(tmp_path: pathlib.Path, scripts: dict[str, str]) -> dict[str, str]:
  """Fake commands on PATH and a HOME with the checkout and the venv's fake `spot`."""
  bin_dir, home = tmp_path / "bin", tmp_path / "home"
  (home / "spot").mkdir(parents=True)
  (home / "spot-venv" / "bin").mkdir(parents=True)
  scripts = dict(scripts)
  scripts[str(home / "spot-venv" / "bin" / "spot")] = (
      '#!/bin/bash\necho "$(hostname_of) $PWD $*" >> "$SPOT_LOG"\n')
  bin_dir.mkdir()
  for name, text in scripts.items():
    path = pathlib.Path(name) if "/" in name else bin_dir / name
    path.write_text(text)
    path.chmod(0o755)
  (bin_dir / "hostname_of").write_text('#!/bin/bash\necho "${FAKE_HOST:-local}"\n')
  (bin_dir / "hostname_of").chmod(0o755)
  return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home),
          "SPOT_LOG": str(tmp_path / "spot.log")}


def _logged(tmp_path) -> list[list[str]]:
  return [line.split() for line in (tmp_path / "spot.log").read_text().splitlines()]


def _only(words: list[str]) -> list[str]:
  return [words[i + 1] for i, w in enumerate(words) if w == "--only"]


def test_multinode_script_deals_stages_to_hosts_over_ssh(half_done, tmp_path):
  spec, study_dir, pending = half_done
  lines = plan(spec, study_dir, "multinode", hosts=("gpu-a", "gpu-b", "gpu-c"),
               ssh_options=("-oBatchMode=yes",))
  script = tmp_path / "multinode.sh"
  script.write_text("\n".join(lines) + "\n")
  # ssh OPTIONS HOST COMMAND: runs COMMAND here as that host.
  env = _fake_bin(tmp_path, {"ssh": '#!/bin/bash\nwhile [[ "$1" == -* ]]; do shift; done\n'
                                    'echo "$1" >> "$SSH_LOG"\nFAKE_HOST="$1" exec bash -c "$2"\n'})
  env["SSH_LOG"] = str(tmp_path / "ssh.log")
  out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert "all 2 stage(s) finished" in out.stdout
  logged = _logged(tmp_path)
  assert all(w[1] == env["HOME"] + "/spot" and w[2:6] == ["study", "run", "--dir", study_dir]
             for w in logged)  # in the checkout, on the study
  assert {w[0] for w in logged} == {"gpu-a", "gpu-b", "gpu-c"}
  # Stage 2 starts only after every run of stage 1: the log holds stage 1 first.
  n0 = len(study_lib.pending_stages(spec, study_dir)[0])
  ran = [r for w in logged for r in _only(w)]
  check_stages(spec, [ran[:n0], ran[n0:]], pending)
  assert sorted((tmp_path / "ssh.log").read_text().split()) == sorted(
      ["gpu-a", "gpu-b", "gpu-c"] * 2)  # each host once per stage
  with pytest.raises(errors.UsageError, match="--hosts"):
    plan(spec, study_dir, "multinode")


def test_a_failed_host_stops_the_multinode_script_before_the_next_stage(half_done, tmp_path):
  spec, study_dir, _ = half_done
  script = tmp_path / "multinode.sh"
  script.write_text("\n".join(plan(spec, study_dir, "multinode", hosts=("a", "b"))) + "\n")
  env = _fake_bin(tmp_path, {"ssh": '#!/bin/bash\n[[ "$1" == b ]] && exit 3\n'
                                    'FAKE_HOST="$1" exec bash -c "$2"\n'})
  out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 3
  ran = [r for w in _logged(tmp_path) for r in _only(w)]
  assert ran and not any(r.startswith("retrieval/") for r in ran)


def test_slurm_script_submits_one_array_per_stage_chained_by_afterok(half_done, tmp_path):
  spec, study_dir, pending = half_done
  lines = plan(spec, study_dir, "slurm", partition="a100", time="2:00:00", log_dir="logs")
  script = tmp_path / "submit.sh"
  script.write_text("\n".join(lines) + "\n")
  # sbatch [--parsable] [--dependency=...] < script: keeps the script, prints a job id.
  env = _fake_bin(tmp_path, {"sbatch": '#!/bin/bash\nn=$(ls "$JOBS" | wc -l)\nid=$((100 + n / 2))\n'
                                       'echo "$*" > "$JOBS/$id.args"\ncat > "$JOBS/$id.sh"\n'
                                       'echo "$id;cluster"\n'})
  jobs = tmp_path / "jobs"
  jobs.mkdir()
  env["JOBS"] = str(jobs)
  out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "submitted stage job(s): 100 101"
  assert (tmp_path / "logs").is_dir()
  assert (jobs / "100.args").read_text().split() == ["--parsable"]
  assert (jobs / "101.args").read_text().split() == ["--parsable", "--dependency=afterok:100"]
  stages = []
  for job in ("100", "101"):
    text = (jobs / f"{job}.sh").read_text()
    assert "#SBATCH --partition=a100" in text and "#SBATCH --time=2:00:00" in text
    assert "#SBATCH --nodes=1" in text and "#SBATCH --output=logs/%x-%A_%a.out" in text
    size = int(text.split("#SBATCH --array=0-")[1].split()[0]) + 1
    before = len(_logged(tmp_path)) if (tmp_path / "spot.log").exists() else 0
    for task in range(size):  # what each array task runs
      run = subprocess.run(["bash", str(jobs / f"{job}.sh")], capture_output=True, text=True,
                           env={**env, "SLURM_ARRAY_TASK_ID": str(task)}, timeout=60)
      assert run.returncode == 0, run.stderr
    logged = _logged(tmp_path)[before:]
    assert all(w[2:6] == ["study", "run", "--dir", study_dir] for w in logged)
    stages.append([r for w in logged for r in _only(w)])
    assert len(stages[-1]) == size
  check_stages(spec, stages, pending)


def test_the_command_line_plans_for_a_launcher(half_done, capsys):
  spec, study_dir, pending = half_done
  assert study_cli.main(["plan", "--dir", study_dir, "--launcher", "tpu", "--tpu-name", "vm-7",
                         "--zone", "europe-west4-a"]) == 0
  lines = [x for x in capsys.readouterr().out.splitlines() if not x.startswith("#")]
  assert len(lines) == len(pending)
  assert all(" --name vm-7 --zone europe-west4-a --worker 0 " in x for x in lines)
  assert study_cli.main(["plan", "--dir", study_dir, "--launcher", "multinode",
                         "--hosts", "h1,h2"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("#!/bin/bash\n") and out.count("ssh h1 ") == 2
