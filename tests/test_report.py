"""`spot report` on fake finished runs: means, sample stds, RER, and the
Markdown / CSV / JSON outputs."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from spot import report

# (task, method) -> per-seed scores
RUNS = {
    ("spot_glue_mrpc", "prompt_tuning"): [{"f1": 85.0, "accuracy": 80.0},
                                          {"f1": 87.0, "accuracy": 82.0},
                                          {"f1": 89.0, "accuracy": 84.0}],
    ("spot_glue_mrpc", "spot_glue"): [{"f1": 90.0, "accuracy": 86.0},
                                      {"f1": 91.0, "accuracy": 87.0},
                                      {"f1": 92.0, "accuracy": 88.0}],
    ("spot_superglue_cb", "prompt_tuning"): [{"mean_3class_f1": 70.0, "accuracy": 80.0},
                                             {"mean_3class_f1": 72.0, "accuracy": 82.0}],
    ("spot_superglue_cb", "spot_glue"): [{"mean_3class_f1": 90.0, "accuracy": 94.0},
                                         {"mean_3class_f1": 92.0, "accuracy": 96.0}],
}


@pytest.fixture
def runs_dir(tmp_path):
  for (task, method), seeds in RUNS.items():
    for seed, scores in enumerate(seeds):
      report.write_run_metrics(tmp_path / "runs" / method / task / f"seed{seed}", task, method,
                               seed, scores, step=1000)
  # A run still training (no metrics.json) and a checkpoint folder are ignored.
  (tmp_path / "runs" / "spot_glue" / "unfinished" / "checkpoints").mkdir(parents=True)
  return tmp_path / "runs"


def _cell(rep, task, method):
  (cell,) = [c for c in rep["cells"] if c["task"] == task and c["method"] == method]
  return cell


def test_write_and_read_a_run(tmp_path):
  path = report.write_run_metrics(tmp_path / "r", "spot_glue_rte", "spot_glue", 3,
                                  {"accuracy": 70}, step=5, extra={"gin": "x.gin"})
  assert json.loads(path.read_text()) == {
      "task": "spot_glue_rte", "method": "spot_glue", "seed": 3,
      "scores": {"accuracy": 70.0}, "step": 5, "extra": {"gin": "x.gin"}}
  run = report.read_run(path)
  assert (run.task, run.method, run.seed, run.score) == ("spot_glue_rte", "spot_glue", 3, 70.0)
  assert [p.name for p in (tmp_path / "r").iterdir()] == ["metrics.json"]  # no temp left


@pytest.mark.parametrize("kwargs,match", [
    ({"scores": {"accuracy": math.nan}}, "finite"),
    ({"scores": {}}, "non-empty"),
    ({"seed": "0"}, "integer"),
    ({"task": ""}, "task"),
])
def test_write_rejects_bad_values(tmp_path, kwargs, match):
  args = {"task": "t", "method": "m", "seed": 0, "scores": {"accuracy": 1.0}, **kwargs}
  with pytest.raises(ValueError, match=match):
    report.write_run_metrics(tmp_path, **args)


def test_summary_values(runs_dir):
  runs = report.find_runs([runs_dir])
  assert len(runs) == 10
  rep = report.summarize(runs, baseline="prompt_tuning")
  assert rep["methods"] == ["prompt_tuning", "spot_glue"]
  assert rep["tasks"] == ["spot_glue_mrpc", "spot_superglue_cb"]
  pt = _cell(rep, "spot_glue_mrpc", "prompt_tuning")
  # per-seed scores 82.5, 84.5, 86.5 -> mean 84.5, sample std 2
  assert pt["score_mean"] == pytest.approx(84.5) and pt["score_std"] == pytest.approx(2.0)
  assert pt["metrics"]["f1"] == pytest.approx({"mean": 87.0, "std": 2.0})
  assert pt["seeds"] == [0, 1, 2] and pt["rer"] is None
  spot = _cell(rep, "spot_glue_mrpc", "spot_glue")
  assert spot["score_mean"] == pytest.approx(89.0) and spot["score_std"] == pytest.approx(1.0)
  # err 15.5 -> 11.0: (15.5 - 11) / 15.5
  assert spot["rer"] == pytest.approx(100 * 4.5 / 15.5)
  cb = _cell(rep, "spot_superglue_cb", "spot_glue")
  assert cb["score_mean"] == pytest.approx(93.0)
  assert cb["score_std"] == pytest.approx(math.sqrt(2.0))  # 92, 94
  assert cb["rer"] == pytest.approx(100 * (24 - 7) / 24)  # baseline 76
  averages = {(a["benchmark"], a["method"]): a for a in rep["averages"]}
  assert averages["All", "prompt_tuning"]["score_mean"] == pytest.approx((84.5 + 76) / 2)
  assert averages["All", "spot_glue"]["score_mean"] == pytest.approx((89 + 93) / 2)
  assert averages["All", "spot_glue"]["rer"] == pytest.approx(100 * (19.75 - 9) / 19.75)
  assert averages["GLUE", "spot_glue"]["n_tasks"] == 1


def test_single_seed_has_no_std_and_missing_baseline_task_has_no_rer():
  runs = [report.Run("t1", "base", 0, {"accuracy": 80.0}),
          report.Run("t1", "new", 0, {"accuracy": 90.0}),
          report.Run("t2", "new", 0, {"accuracy": 50.0})]
  rep = report.summarize(runs, baseline="base")
  assert _cell(rep, "t1", "new")["score_std"] is None
  assert _cell(rep, "t1", "new")["rer"] == pytest.approx(50.0)
  assert _cell(rep, "t2", "new")["rer"] is None
  assert report.relative_error_reduction(100.0, 90.0) is None
  with pytest.raises(ValueError, match="Baseline 'other' has no runs"):
    report.summarize(runs, baseline="other")


def test_cli_writes_markdown_csv_json(runs_dir, tmp_path, capsys):
  out = tmp_path / "out"
  assert report.main(["--runs", str(runs_dir), "--out", str(out)]) == 0
  markdown = capsys.readouterr().out
  assert markdown == (out / "report.md").read_text()
  assert "| spot_glue_mrpc | 84.50 ± 2.00 (n=3) | 89.00 ± 1.00 (n=3) |" in markdown
  assert "## Relative error reduction over prompt_tuning (%)" in markdown
  assert f"| spot_glue_mrpc | {100 * 4.5 / 15.5:.2f} |" in markdown
  rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
  (score,) = [r for r in rows if r["task"] == "spot_superglue_cb" and r["method"] == "spot_glue"
              and r["metric"] == "score"]
  assert float(score["mean"]) == pytest.approx(93.0) and score["n"] == "2"
  assert float(score["rer"]) == pytest.approx(100 * 17 / 24)
  data = json.loads((out / "report.json").read_text())
  assert data["baseline"] == "prompt_tuning" and len(data["runs"]) == 10


def test_cli_json_and_explicit_baseline(runs_dir, capsys):
  assert report.main(["--runs", str(runs_dir), "--json", "--baseline", "spot_glue"]) == 0
  data = json.loads(capsys.readouterr().out)
  assert data["methods"] == ["spot_glue", "prompt_tuning"]
  assert _cell(data, "spot_glue_mrpc", "prompt_tuning")["rer"] == pytest.approx(
      100 * (11 - 15.5) / 11)


def test_cli_through_spot_dispatcher(runs_dir, capsys):
  from spot import cli
  assert cli.spot_main(["report", "--runs", str(runs_dir / "spot_glue")]) == 0
  assert "spot_glue" in capsys.readouterr().out


def test_cli_errors(tmp_path, runs_dir, capsys):
  assert report.main(["--runs", str(tmp_path / "nothing")]) == 2
  assert "no such directory" in capsys.readouterr().err
  (tmp_path / "empty").mkdir()
  assert report.main(["--runs", str(tmp_path / "empty")]) == 2
  assert "No finished runs" in capsys.readouterr().err
  assert report.main(["--runs", str(runs_dir), "--baseline", "model_tuning"]) == 2
  assert "model_tuning" in capsys.readouterr().err
  bad = runs_dir / "bad"
  bad.mkdir()
  (bad / "metrics.json").write_text("{not json")
  assert report.main(["--runs", str(runs_dir)]) == 2
  assert f"{bad / 'metrics.json'}: not valid JSON" in capsys.readouterr().err


def test_duplicate_runs_are_an_error(tmp_path):
  for d in ("a", "b"):
    report.write_run_metrics(tmp_path / d, "t", "m", 0, {"accuracy": 1.0})
  with pytest.raises(ValueError, match="Two runs of task 't'"):
    report.find_runs([tmp_path])
  assert len(report.find_runs([tmp_path / "a", tmp_path / "a"])) == 1
