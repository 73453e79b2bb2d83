"""`spot report` on fake finished runs: means, sample stds, RER, and the
Markdown / CSV / JSON outputs."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from spot import cli, errors, report

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
      "scores": {"accuracy": 70.0}, "step": 5, "extra": {"gin": "x.gin"}, "protocol": "dev"}
  run = report.read_run(path)
  assert (run.task, run.method, run.seed, run.score) == ("spot_glue_rte", "spot_glue", 3, 70.0)
  assert [p.name for p in (tmp_path / "r").iterdir()] == ["metrics.json"]  # no temp left


@pytest.mark.parametrize("kwargs,match", [
    ({"scores": {"accuracy": "high"}}, "not a number"),
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
  assert pt["metrics"]["f1"] == pytest.approx({"mean": 87.0, "std": 2.0, "n": 3})
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
  assert averages["GLUE", "spot_glue"]["of_tasks"] == 8
  assert averages["SuperGLUE", "spot_glue"]["missing"] == [
      "boolq", "copa", "multirc", "record", "rte", "wic", "wsc"]
  assert averages["All", "spot_glue"]["of_tasks"] == 16


def test_single_seed_has_no_std_and_missing_baseline_task_has_no_rer():
  runs = [report.Run("t1", "base", 0, {"accuracy": 80.0}),
          report.Run("t1", "new", 0, {"accuracy": 90.0}),
          report.Run("t2", "new", 0, {"accuracy": 50.0})]
  rep = report.summarize(runs, baseline="base")
  assert _cell(rep, "t1", "new")["score_std"] is None
  assert _cell(rep, "t1", "new")["rer"] == pytest.approx(50.0)
  assert _cell(rep, "t2", "new")["rer"] is None
  assert report.relative_error_reduction(100.0, 90.0) is None
  with pytest.raises(ValueError, match="--baseline 'other' has no runs"):
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
  assert cli.spot_main(["report", "--runs", str(runs_dir / "spot_glue")]) == 0
  assert "spot_glue" in capsys.readouterr().out


def test_duplicate_runs_are_an_error(tmp_path):
  for d in ("a", "b"):
    report.write_run_metrics(tmp_path / d, "t", "m", 0, {"accuracy": 1.0})
  with pytest.raises(errors.DataError, match="Two runs of task 't'"):
    report.find_runs([tmp_path])
  assert len(report.find_runs([tmp_path / "a", tmp_path / "a"])) == 1


# ------------------------------------------------ non-finite metrics (NaN STS-B)


def _strict_json(text):
  def refuse(name):
    raise AssertionError(f"{name} is not JSON")
  return json.loads(text, parse_constant=refuse)


def test_nan_metric_is_written_as_null_with_a_warning(tmp_path):
  old_umask = os.umask(0o022)
  try:
    with pytest.warns(report.NonFiniteMetricWarning) as caught:
      path = report.write_run_metrics(
          tmp_path / "r", "spot_glue_stsb", "prompt_tuning", 0,
          {"pearson_corrcoef": math.nan, "spearman_corrcoef": 12.5},
          extra={"loss": math.inf})
  finally:
    os.umask(old_umask)
  messages = [str(w.message) for w in caught]
  assert len(messages) == 2
  assert "metric 'pearson_corrcoef' of task 'spot_glue_stsb' is nan" in messages[0]
  assert "extra.loss is inf" in messages[1]
  record = _strict_json(path.read_text())
  assert record["scores"] == {"pearson_corrcoef": None, "spearman_corrcoef": 12.5}
  assert record["extra"] == {"loss": None}
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # not mkstemp's 0600
  assert [p.name for p in (tmp_path / "r").iterdir()] == ["metrics.json"]
  run = report.read_run(path)
  assert run.scores == {"pearson_corrcoef": None, "spearman_corrcoef": 12.5}
  assert run.score is None and run.null_metrics == ["pearson_corrcoef"]


def test_a_bare_nan_in_a_file_reads_as_no_score(tmp_path):
  (tmp_path / "metrics.json").write_text(
      '{"task": "t", "method": "m", "seed": 0, "scores": {"a": NaN, "b": 1}}')
  assert report.read_run(tmp_path / "metrics.json").scores == {"a": None, "b": 1.0}


def test_report_leaves_null_scores_out_with_a_note(tmp_path, capsys):
  stsb = "spot_glue_stsb"
  with pytest.warns(report.NonFiniteMetricWarning):
    report.write_run_metrics(tmp_path / "s0", stsb, "prompt_tuning", 0,
                             {"pearson_corrcoef": math.nan, "spearman_corrcoef": math.nan})
  report.write_run_metrics(tmp_path / "s1", stsb, "prompt_tuning", 1,
                           {"pearson_corrcoef": 80.0, "spearman_corrcoef": 82.0})
  report.write_run_metrics(tmp_path / "s2", stsb, "prompt_tuning", 2,
                           {"pearson_corrcoef": 84.0, "spearman_corrcoef": 86.0})
  with pytest.warns(report.NonFiniteMetricWarning):
    report.write_run_metrics(tmp_path / "rte", "spot_glue_rte", "prompt_tuning", 0,
                             {"accuracy": math.nan})
  report.write_run_metrics(tmp_path / "mrpc", "spot_glue_mrpc", "prompt_tuning", 0,
                           {"f1": 90.0, "accuracy": 86.0})
  rep = report.summarize(report.find_runs([tmp_path]), "prompt_tuning")
  cell = _cell(rep, stsb, "prompt_tuning")
  assert cell["score_mean"] == pytest.approx(83.0) and cell["score_std"] == pytest.approx(
      math.sqrt(8))  # 81, 85
  assert (cell["n"], cell["n_runs"], cell["null_seeds"]) == (2, 3, [0])
  assert cell["metrics"]["pearson_corrcoef"] == pytest.approx({"mean": 82.0, "std": math.sqrt(8),
                                                               "n": 2})
  rte = _cell(rep, "spot_glue_rte", "prompt_tuning")
  assert rte["score_mean"] is None and rte["metrics"]["accuracy"]["mean"] is None
  (glue,) = rep["averages"]
  assert glue["tasks"] == ["spot_glue_mrpc", "spot_glue_stsb"]  # RTE has no score
  assert glue["score_mean"] == pytest.approx((88.0 + 83.0) / 2)
  assert (glue["n_tasks"], glue["of_tasks"]) == (2, 8)
  assert report.main(["--runs", str(tmp_path)]) == 0
  markdown = capsys.readouterr().out
  assert "| spot_glue_stsb | 83.00 ± 2.83 (n=2/3) |" in markdown
  assert "| spot_glue_rte | - (n=0/1) |" in markdown
  assert "- spot_glue_stsb / prompt_tuning seed 0: no score (pearson_corrcoef, " \
         "spearman_corrcoef not finite); left out of the mean." in markdown
  assert "| spot_glue_rte | prompt_tuning | accuracy | - | - | 0 |" in markdown
  assert "| **GLUE avg (2/8 tasks)** | **85.50** |" in markdown
  assert report.main(["--runs", str(tmp_path), "--json"]) == 0
  data = _strict_json(capsys.readouterr().out)
  assert _cell(data, "spot_glue_rte", "prompt_tuning")["score_mean"] is None


# -------------------------------------------------- partial averages, seed counts


def test_partial_benchmark_average_is_labelled_and_seeds_are_counted(runs_dir, capsys):
  assert report.main(["--runs", str(runs_dir)]) == 0
  markdown = capsys.readouterr().out
  assert "| **GLUE avg (1/8 tasks)** | **84.50** | **89.00** |" in markdown
  assert "| **SuperGLUE avg (1/8 tasks)** | **76.00** | **93.00** |" in markdown
  assert "| **All avg (2/16 tasks)** | **80.25** | **91.00** |" in markdown
  assert ("- GLUE average of prompt_tuning covers 1 of 8 tasks; missing: cola, sst2, stsb, "
          "qqp, mnli, qnli, rte.") in markdown
  assert "GLUE average**" not in markdown  # no unlabelled "full" average
  # Seeds is how many seeds were aggregated, not a seed id.
  assert "| spot_glue_mrpc | prompt_tuning | f1 | 87.00 | 2.00 | 3 |" in markdown
  assert "| spot_superglue_cb | spot_glue | accuracy | 95.00 | 1.41 | 2 |" in markdown


def test_full_benchmark_average_has_no_partial_label():
  glue = [report.Run(f"spot_glue_{t}", "pt", 0, {"accuracy": 50.0 + i})
          for i, t in enumerate(report.BENCHMARK_TASKS["GLUE"])]
  rep = report.summarize(glue + [report.Run("spot_glue_mnli_mismatched", "pt", 0,
                                            {"accuracy": 70.0})])
  (avg,) = rep["averages"]
  assert (avg["n_tasks"], avg["of_tasks"], avg["missing"]) == (8, 8, [])
  assert not rep["notes"]
  assert "| **GLUE avg** |" in report.render_markdown(rep)


def test_average_rer_needs_the_same_tasks():
  runs = [report.Run("spot_glue_rte", "prompt_tuning", 0, {"accuracy": 60.0}),
          report.Run("spot_glue_rte", "spot", 0, {"accuracy": 80.0}),
          report.Run("spot_glue_mrpc", "spot", 0, {"accuracy": 90.0})]
  rep = report.summarize(runs, "prompt_tuning")
  averages = {a["method"]: a for a in rep["averages"]}
  assert averages["spot"]["rer"] is None  # 2 tasks against 1
  markdown = report.render_markdown(rep)
  assert "| **GLUE avg (partial)** | **60.00** (1/8 tasks) | **85.00** (2/8 tasks) |" in markdown


# ------------------------------------------------ best-of-top-k candidate runs


def _candidates(root, selected=None, metric="accuracy"):
  """Three candidates of one (task, method, seed), as best_of_top_k writes them."""
  values = {"src_rte": (70.0, 60.0), "src_mnli": (75.0, 90.0), "src_qnli": (72.0, 80.0)}
  for name, (accuracy, f1) in values.items():
    selection = {"rule": "best_of_top_k", "metric": metric}
    if selected is not None:
      selection["selected"] = name == selected
    report.write_run_metrics(root / name, "spot_glue_mrpc", "spot_best_of_top_k", 0,
                             {"accuracy": accuracy, "f1": f1}, candidate=name,
                             selection=selection)


def test_candidates_report_the_best_by_the_selection_metric(tmp_path, capsys):
  _candidates(tmp_path / "runs")
  report.write_run_metrics(tmp_path / "runs" / "pt", "spot_glue_mrpc", "prompt_tuning", 0,
                           {"accuracy": 70.0, "f1": 70.0})
  record = json.loads((tmp_path / "runs" / "src_mnli" / "metrics.json").read_text())
  assert record["candidate"] == "src_mnli"
  assert record["selection"] == {"rule": "best_of_top_k", "metric": "accuracy"}
  runs = report.find_runs([tmp_path / "runs"])
  (best,) = [r for r in runs if r.method == "spot_best_of_top_k"]
  assert best.candidate == "src_mnli" and best.score == pytest.approx(82.5)
  assert best.selected_by == "best_of_top_k: highest accuracy"
  assert [(c["candidate"], c["value"], c["selected"]) for c in best.candidates] == [
      ("src_mnli", 75.0, True), ("src_qnli", 72.0, False), ("src_rte", 70.0, False)]
  rep = report.summarize(runs, "prompt_tuning")
  cell = _cell(rep, "spot_glue_mrpc", "spot_best_of_top_k")
  assert cell["n"] == 1 and cell["score_mean"] == pytest.approx(82.5)
  assert cell["rer"] == pytest.approx(100 * (30 - 17.5) / 30)
  assert report.main(["--runs", str(tmp_path / "runs")]) == 0
  markdown = capsys.readouterr().out
  assert ("| spot_glue_mrpc | spot_best_of_top_k | 0 | src_mnli | 3 | best_of_top_k: highest "
          "accuracy | src_mnli (75.00), src_qnli (72.00), src_rte (70.00) |") in markdown


def test_a_recorded_selection_wins_over_the_scores(tmp_path):
  _candidates(tmp_path, selected="src_rte")
  (run,) = report.find_runs([tmp_path])
  assert run.candidate == "src_rte" and run.selected_by == "best_of_top_k: recorded selection"
  assert run.scores == {"accuracy": 70.0, "f1": 60.0}


def test_mark_candidate_after_the_runs_finished(tmp_path):
  """What targeted transfer does: candidates written by the trainer, marked after."""
  for name, accuracy in (("src0", 60.0), ("src1", 65.0)):
    report.write_run_metrics(tmp_path / name, "t_glue_rte", "spot_best_of_top_k", 1,
                             {"accuracy": accuracy}, step=10, extra={"gin": "a.gin"})
  for name in ("src0", "src1"):
    report.mark_candidate(tmp_path / name, name, metric="accuracy", selected=name == "src0")
  record = json.loads((tmp_path / "src0" / "metrics.json").read_text())
  assert record == {"task": "t_glue_rte", "method": "spot_best_of_top_k", "seed": 1,
                    "scores": {"accuracy": 60.0}, "step": 10, "extra": {"gin": "a.gin"},
                    "candidate": "src0", "protocol": "dev",
                    "selection": {"rule": "best_of_top_k", "metric": "accuracy",
                                  "selected": True}}
  (run,) = report.find_runs([tmp_path])
  assert run.candidate == "src0" and run.score == 60.0


def test_unmarked_best_of_top_k_runs_are_candidates_named_by_directory(tmp_path):
  for name, accuracy in (("src0", 60.0), ("src1", 65.0)):
    report.write_run_metrics(tmp_path / name, "t_glue_rte", "spot_best_of_top_k", 0,
                             {"accuracy": accuracy})
  (run,) = report.find_runs([tmp_path])
  assert run.candidate == "src1" and run.score == 65.0
  assert run.selected_by == "highest task score"


def test_candidate_conflicts_are_errors(tmp_path):
  _candidates(tmp_path / "a", selected="src_rte")
  report.write_run_metrics(tmp_path / "a" / "again", "spot_glue_mrpc", "spot_best_of_top_k", 0,
                           {"accuracy": 1.0}, candidate="src_rte")
  with pytest.raises(errors.DataError, match="both candidate 'src_rte'"):
    report.find_runs([tmp_path / "a"])
  for d in ("x", "y"):
    report.write_run_metrics(tmp_path / "b" / d, "t", "m", 0, {"accuracy": 1.0}, candidate=d,
                             selection={"selected": True})
  with pytest.raises(errors.DataError, match="x, y of task 't'.* all marked selected"):
    report.find_runs([tmp_path / "b"])
  with pytest.raises(errors.DataError, match="'selection' must be"):
    report.write_run_metrics(tmp_path / "c", "t", "m", 0, {"a": 1.0}, selection={"best": 1})


# ------------------------------------------------- errors: one line, exit code


def _metrics_file(tmp_path, text):
  (tmp_path / "bad").mkdir(exist_ok=True)
  (tmp_path / "bad" / "metrics.json").write_text(text)
  return tmp_path / "bad" / "metrics.json"


REPORT_ERRORS = [
    # (name, setup(tmp_path) -> (argv, the input the message must name), exit code, text)
    ("missing_dir", lambda p: (["--runs", str(p / "nope")], str(p / "nope")), 3,
     "no such directory"),
    ("no_runs", lambda p: (p.joinpath("empty").mkdir() or ["--runs", str(p / "empty")],
                           str(p / "empty")), 3, "no finished runs"),
    ("bad_json", lambda p: (["--runs", str(p)], str(_metrics_file(p, "{not json"))), 3,
     "not valid JSON"),
    ("bad_seed", lambda p: (["--runs", str(p)], str(_metrics_file(
        p, '{"task": "t", "method": "m", "seed": "0", "scores": {"a": 1}}'))), 3,
     "'seed' must be an integer"),
    ("not_an_object", lambda p: (["--runs", str(p)], str(_metrics_file(p, "[1, 2]"))), 3,
     "expected a JSON object"),
    ("a_file", lambda p: (p.joinpath("notes.txt").write_text("x") and
                          ["--runs", str(p / "notes.txt")], str(p / "notes.txt")), 2,
     "a file, not a directory"),
]


@pytest.mark.parametrize("name,setup,code,text", REPORT_ERRORS, ids=[e[0] for e in REPORT_ERRORS])
def test_report_errors_are_one_line(tmp_path, capsys, name, setup, code, text):
  argv, named = setup(tmp_path)
  assert cli.spot_main(["report", *argv]) == code
  captured = capsys.readouterr()
  assert captured.out == ""
  assert captured.err.count("\n") == 1 and captured.err.startswith("spot report: ")
  assert named in captured.err and text in captured.err
  assert "Traceback" not in captured.err


def test_report_usage_and_duplicate_errors(runs_dir, tmp_path, capsys):
  assert cli.spot_main(["report", "--runs", str(runs_dir), "--baseline", "model_tuning"]) == 2
  err = capsys.readouterr().err
  assert err == ("spot report: --baseline 'model_tuning' has no runs; pass one of the methods "
                 "found: prompt_tuning, spot_glue.\n")
  for d in ("a", "b"):
    report.write_run_metrics(tmp_path / "dup" / d, "t", "m", 0, {"accuracy": 1.0})
  assert cli.spot_main(["report", "--runs", str(tmp_path / "dup")]) == 3
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and str(tmp_path / "dup" / "a" / "metrics.json") in err
  assert "Two runs of task 't', method 'm', seed 0" in err


def test_console_script_error_in_a_subprocess(tmp_path):
  spot = pathlib.Path(sys.executable).parent / "spot"
  if not spot.exists():
    pytest.skip(f"no console script at {spot} (package not installed in this environment)")
  result = subprocess.run([str(spot), "report", "--runs", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 3 and result.stdout == ""
  assert result.stderr == (f"spot report: --runs {tmp_path / 'nope'}: no such directory; pass "
                           "run directories (holding metrics.json) or folders of them.\n")
