"""A seed sweep: one method trained over N seeds, each run its own model_dir.

The field reports parameter-efficient methods as mean ± std over seeds, and
splits the seed in two: INIT_SEED (the initial trainable values) and
DATA_SEED (data order and dropout). A sweep directory holds

    sweep.json                 the sweep's settings (SweepSpec + train flags)
    seed_<s>/                  --vary both: SEED = INIT_SEED = DATA_SEED = s
    init_<i>_data_<d>/         --vary init (data fixed) or --vary data (init fixed)

A run is finished when its model_dir holds metrics.json and a committed
checkpoint at its last step (`spot.workflows.study.is_finished`); a rerun
skips finished runs and the trainer resumes interrupted ones. `plan_commands`
lists the runs as `spot train` command lines (or JSON lines), for launchers.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from typing import Any, Callable, Iterable, Optional, Sequence

from etils import epath

from spot import errors
from spot import io as spot_io
from spot.workflows import settings as settings_lib
from spot.workflows import study as study_lib

SWEEP_FILE = "sweep.json"
VARY = ("both", "init", "data")


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  """What a sweep trains.

  Attributes:
    seeds: the seeds swept (each once).
    vary: "both" (SEED, INIT_SEED and DATA_SEED all the seed), "init" (INIT_SEED
      the seed, DATA_SEED fixed at `fixed_seed`) or "data" (the other way round).
    fixed_seed: the seed that does not vary under "init" / "data" (and SEED there).
    train_flags: `spot train` flags of every run (gin files, --gin.KEY=VALUE).
  """

  seeds: tuple[int, ...]
  vary: str = "both"
  fixed_seed: int = 0
  train_flags: tuple[str, ...] = ()

  def __post_init__(self):
    if not self.seeds:
      raise errors.ConfigError("a sweep needs seeds: pass --seeds 0,1,2 or --num-seeds N.")
    if len(set(self.seeds)) != len(self.seeds):
      raise errors.ConfigError(f"sweep seeds {list(self.seeds)} repeat a seed; list each once.")
    if self.vary not in VARY:
      raise errors.ConfigError(f"--vary {self.vary!r} is not one of {', '.join(VARY)}.")

  def to_json(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "SweepSpec":
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise errors.ConfigError(f"{SWEEP_FILE} has unknown keys {unknown}; was it written by a "
                               "newer spot?")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclasses.dataclass(frozen=True)
class SweepRun:
  """One run of a sweep; `run_id` is its model_dir relative to the sweep dir."""

  run_id: str
  seed: int
  init_seed: int
  data_seed: int
  steps: int


def plan_runs(spec: SweepSpec, steps: int) -> list[SweepRun]:
  """Every run of the sweep, in seed order; `steps` is each run's TRAIN_STEPS."""
  runs = []
  for s in spec.seeds:
    if spec.vary == "both":
      runs.append(SweepRun(f"seed_{s}", s, s, s, steps))
    else:
      init, data = (s, spec.fixed_seed) if spec.vary == "init" else (spec.fixed_seed, s)
      runs.append(SweepRun(f"init_{init}_data_{data}", spec.fixed_seed, init, data, steps))
  return runs


def find_run(runs: Sequence[SweepRun], run_id: str) -> SweepRun:
  by_id = {r.run_id: r for r in runs}
  if run_id.rstrip("/") not in by_id:
    raise errors.UnknownNameError(f"--only {run_id!r} is not a run of this sweep (its runs: "
                                  f"{', '.join(by_id)}); `spot sweep plan --dir DIR` lists them.")
  return by_id[run_id.rstrip("/")]


def read_spec(sweep_dir: epath.PathLike) -> SweepSpec:
  path = epath.Path(sweep_dir) / SWEEP_FILE
  if not path.exists():
    raise errors.MissingInputError(f"{path} not found: {sweep_dir} is not a sweep directory; "
                                   "start one with `spot sweep run --dir DIR --seeds ... -- ...`.")
  return SweepSpec.from_json(json.loads(path.read_text()))


def write_spec(sweep_dir: epath.PathLike, spec: SweepSpec) -> SweepSpec:
  """Writes sweep.json, or checks that the one there is the same sweep."""
  return study_lib.write_or_check_spec(
      epath.Path(sweep_dir) / SWEEP_FILE, spec, lambda: read_spec(sweep_dir),
      lambda diff: f"{sweep_dir} holds a sweep with other settings ({', '.join(diff)}); use a "
      "new --dir, or run it as is with `spot sweep run --dir DIR` alone.")


def run_settings(base: settings_lib.TrainSettings, sweep_dir: epath.PathLike,
                 run: SweepRun) -> settings_lib.TrainSettings:
  """`base` as the sweep run `run`: its seeds and model_dir, metrics.json written."""
  writers = base.metrics_writers
  if not writers:
    from spot import report_writers  # pylint: disable=g-import-not-at-top
    writers = report_writers.DEFAULT_WRITERS
  out = settings_lib.with_seeds(base, run.seed, run.init_seed, run.data_seed)
  return dataclasses.replace(out, model_dir=str(epath.Path(sweep_dir) / run.run_id),
                             metrics_writers=tuple(writers))


class Progress(study_lib.Progress):
  """`[sweep 1/3 ETA 0m40s] message`: runs done of the total and the time left."""

  def __call__(self, message: str) -> None:
    self.log(f"[sweep {self.done}/{self.total} {self.eta()}] {message}")


def run_sweep(base: settings_lib.TrainSettings, spec: SweepSpec, sweep_dir: str, *,
              only: Iterable[str] = (), log: Callable[[str], None] = print,
              train: Callable[[settings_lib.TrainSettings], Any] = settings_lib.run
              ) -> list[SweepRun]:
  """Trains every unfinished run of the sweep (or those in `only`); returns the runs trained.

  Args:
    base: the settings every run derives from (`settings.from_flags(spec.train_flags)`).
    spec: the sweep; written to (or checked against) SWEEP_DIR/sweep.json.
    sweep_dir: the sweep directory (local or gs://).
    only: run ids to train, e.g. from `plan_commands(..., fmt="jsonl")`.
    log: prints one progress line.
    train: trains one run (default `settings.run`).
  """
  root = epath.Path(spot_io.absolute(sweep_dir))
  spec = write_spec(root, spec)
  planned = plan_runs(spec, base.train_steps)
  runs = [find_run(planned, r) for r in only] if only else planned
  done = [r for r in runs if study_lib.is_finished(root, r)]
  prog = Progress(len(runs), len(done), log)
  prog(f"{len(done)} of {len(runs)} run(s) already finished under {root}")
  trained = []
  for run in runs:
    if run in done:
      continue
    prog(f"training {run.run_id} (INIT_SEED {run.init_seed}, DATA_SEED {run.data_seed}, "
         f"{run.steps} steps)")
    start = time.perf_counter()
    train(run_settings(base, root, run))
    prog.finished(time.perf_counter() - start)
    trained.append(run)
  prog(f"finished; `spot report {root}` reports mean ± std over the seeds")
  return trained


def run_flags(run: SweepRun, sweep_dir: str) -> list[str]:
  """The gin overrides that make a `spot train` command the sweep run `run`."""
  model_dir = str(epath.Path(sweep_dir) / run.run_id)
  return [f"--gin.MODEL_DIR={json.dumps(model_dir)}", f"--gin.SEED={run.seed}",
          f"--gin.INIT_SEED={run.init_seed}", f"--gin.DATA_SEED={run.data_seed}"]


def pending_runs(spec: SweepSpec, sweep_dir: epath.PathLike) -> list[SweepRun]:
  """The runs without metrics.json and a committed checkpoint under `sweep_dir` (a run
  writes metrics.json when it ends; the steps themselves come from the train flags)."""
  root = epath.Path(sweep_dir)
  return [r for r in plan_runs(spec, steps=0) if not study_lib.is_finished(root, r)]


def plan_commands(spec: SweepSpec, sweep_dir: str, prog: str = "spot train",
                  fmt: str = "shell", runs: Optional[Sequence[SweepRun]] = None) -> list[str]:
  """One line per run (of `runs`, default all): a `spot train TRAIN_FLAGS
  --gin.MODEL_DIR=... --gin.SEED=...` command (shell), or a JSON object {"run_id", "seed",
  "init_seed", "data_seed", "command"} (jsonl). Each command trains (or resumes) its run
  on any machine."""
  lines = []
  for run in plan_runs(spec, steps=0) if runs is None else runs:
    words = prog.split() + list(spec.train_flags) + run_flags(run, sweep_dir)
    command = " ".join(shlex.quote(w) for w in words)
    if fmt == "jsonl":
      lines.append(json.dumps({"run_id": run.run_id, "seed": run.seed,
                               "init_seed": run.init_seed, "data_seed": run.data_seed,
                               "command": command}))
    else:
      lines.append(command)
  return lines


def seeds_from(seeds: Optional[Sequence[int]], num_seeds: Optional[int],
               start: int = 0) -> tuple[int, ...]:
  """--seeds as given, or --num-seeds N as start..start+N-1."""
  if seeds and num_seeds:
    raise errors.UsageError("give --seeds or --num-seeds, not both.")
  if num_seeds is not None and num_seeds < 1:
    raise errors.UsageError(f"--num-seeds {num_seeds} must be at least 1.")
  return tuple(seeds) if seeds else tuple(range(start, start + (num_seeds or 0)))
