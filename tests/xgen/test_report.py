"""Finished-run files and the xGen report built from fake runs."""

from __future__ import annotations

import csv
import io
import json

import pytest

from spot.xgen import report


def fake_scores(lang: str, rouge: float, lid_target: float, lid_en: float) -> dict:
  return {"sp_rouge1": rouge + 10, "sp_rouge2": rouge - 10, "sp_rougeL": rouge,
          "lid_en": lid_en, f"lid_{lang}": lid_target, "ascii": 100 - lid_target}


def make_runs(root) -> None:
  """Four runs: prompt tuning forgets Thai, Mix-Unsup less; two seeds of one."""
  report.write_run_scores(root / "small_pt", {
      "th": fake_scores("th", 10, 20, 80), "fr": fake_scores("fr", 30, 90, 10)},
      size="small", method="pt", prompt_length=100)
  report.write_run_scores(root / "small_mix" / "seed0", {"th": fake_scores("th", 20, 60, 40)},
                          size="small", method="mix_unsup", prompt_length=100, seed=0)
  report.write_run_scores(root / "small_mix" / "seed1", {"th": fake_scores("th", 30, 80, 20)},
                          size="small", method="mix_unsup", prompt_length=100, seed=1)
  report.write_run_scores(root / "base_mt", {"th": fake_scores("th", 5, 0, 100),
                                             "en": fake_scores("en", 40, 99, 99)},
                          size="base", method="mt")


def test_write_and_read_a_run(tmp_path):
  path = report.write_run_scores(tmp_path / "run", {"th": fake_scores("th", 10, 20, 80)},
                                 size="small", method="pt", prompt_length=100, step=1200)
  data = json.loads(path.read_text())
  assert data["size"] == "small" and data["method"] == "pt" and data["prompt_length"] == 100
  assert data["step"] == 1200 and data["scores"]["th"]["lid_th"] == 20
  # A second language is merged in; the first stays.
  report.write_run_scores(tmp_path / "run", {"fr": fake_scores("fr", 1, 2, 3)},
                          size="small", method="pt", prompt_length=100)
  run = report.read_run(tmp_path / "run")
  assert sorted(run.scores) == ["fr", "th"] and run.meta["step"] == 1200
  assert not list(tmp_path.glob("run/.*.tmp"))


def test_write_run_scores_rejects_bad_input(tmp_path):
  good = {"th": fake_scores("th", 10, 20, 80)}
  report.write_run_scores(tmp_path / "run", good, size="small", method="pt")
  with pytest.raises(ValueError, match="method='pt', not 'mt'"):
    report.write_run_scores(tmp_path / "run", good, size="small", method="mt")
  with pytest.raises(ValueError, match=r"lack \['lid_th'\]"):
    report.write_run_scores(tmp_path / "x", {"th": {"sp_rougeL": 1, "lid_en": 2}},
                            size="small", method="pt")
  with pytest.raises(ValueError, match="unknown language code 'thai'"):
    report.write_run_scores(tmp_path / "x", {"thai": good["th"]}, size="small", method="pt")
  with pytest.raises(ValueError, match="not a finite number"):
    report.write_run_scores(tmp_path / "x", {"th": {**good["th"], "lid_en": float("nan")}},
                            size="small", method="pt")
  with pytest.raises(FileNotFoundError, match="not a finished run"):
    report.read_run(tmp_path / "x")
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / report.SCORES_FILE).write_text("{oops")
  with pytest.raises(ValueError, match="not valid JSON"):
    report.read_run(tmp_path / "broken")


def test_find_runs_searches_folders_and_reports_empty_ones(tmp_path):
  make_runs(tmp_path / "runs")
  (tmp_path / "unfinished" / "checkpoint_100").mkdir(parents=True)
  runs, empty = report.find_runs([tmp_path / "runs", tmp_path / "unfinished"])
  assert len(runs) == 4 and empty == [str(tmp_path / "unfinished")]
  runs, _ = report.find_runs([tmp_path / "runs" / "small_pt"])
  assert [r.method for r in runs] == ["pt"]
  with pytest.raises(FileNotFoundError, match="no such directory"):
    report.find_runs([tmp_path / "nope"])


def test_markdown_table_groups_sizes_methods_and_averages_seeds(tmp_path):
  make_runs(tmp_path)
  runs, _ = report.find_runs([tmp_path])
  header, body = report.table(runs, "sp_rougeL")
  assert header == ["size", "method", "prompt", "runs", "en", "fr", "th", "avg"]
  assert body == [
      ["small", "mix_unsup", "100", "2", "", "", "25.0", "25.0"],
      ["small", "pt", "100", "1", "", "30.0", "10.0", "20.0"],
      ["base", "mt", "", "1", "40.0", "", "5.0", "5.0"],
  ]
  _, lid_target = report.table(runs, "lid_target")
  assert lid_target[0][6] == "70.0" and lid_target[2][4] == "99.0"
  markdown = report.to_markdown(runs)
  for title in ("## SP-ROUGE", "## LID_en", "## LID_target", "## ASCII"):
    assert title in markdown
  assert "| small | mix_unsup | 100 | 2 |  |  | 25.0 | 25.0 |" in markdown


def test_write_report_files(tmp_path):
  make_runs(tmp_path / "runs")
  runs, _ = report.find_runs([tmp_path / "runs"])
  paths = report.write_report(runs, tmp_path / "out")
  rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
  assert len(rows) == 6 and list(rows[0]) == list(report.CSV_COLUMNS)
  thai_pt = [r for r in rows if r["method"] == "pt" and r["lang"] == "th"][0]
  assert thai_pt["sp_rougeL"] == "10.0" and thai_pt["lid_target"] == "20.0"
  assert thai_pt["lid_en"] == "80.0" and thai_pt["prompt_length"] == "100"
  assert paths["markdown"].read_text() == report.to_markdown(runs)

  from PIL import Image
  with Image.open(paths["plot"]) as image:
    assert image.format == "PNG" and image.size[0] > 400
  with pytest.raises(ValueError, match="no finished runs"):
    report.write_report([], tmp_path / "out2")


def test_scores_by_language_from_seqio_results():
  results = {"wikilingua0_th": fake_scores("th", 10, 20, 80),
             "wikilingua_en": fake_scores("en", 40, 99, 99),
             "xgen_span_corruption_th": {"loss": 1.0}}
  by_language = report.scores_by_language(results)
  assert sorted(by_language) == ["en", "th"] and by_language["th"]["lid_th"] == 20
  with pytest.raises(ValueError, match="two evaluated tasks are in 'th'"):
    report.scores_by_language({"a": fake_scores("th", 1, 2, 3), "b": fake_scores("th", 1, 2, 3)})
