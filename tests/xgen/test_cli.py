"""`spot xgen score` and `spot xgen report` end to end on real WikiLingua text."""

from __future__ import annotations

import json

import pytest

from spot import cli as spot_cli
from spot.xgen import cli, metrics, report


@pytest.fixture
def thai_files(shared_data, tmp_path):
  """Predictions (article leads), English "forgetful" outputs, and Thai references."""
  path = shared_data / "wikilingua" / "gem_wiki_lingua_subset" / "wiki_lingua_thai_th.jsonl"
  rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
  files = {"targets": [r["tgt_th"] for r in rows], "thai": [r["src_th"][:200] for r in rows],
           "english": [r["tgt_en"] for r in rows]}
  for name, lines in files.items():
    (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return tmp_path, files


def test_score_json_has_exactly_the_keys(thai_files, spm_model, capsys):
  folder, files = thai_files
  rc = spot_cli.spot_main(["xgen", "score", "--predictions", str(folder / "thai.txt"),
                           "--targets", str(folder / "targets.txt"), "--lang", "th",
                           "--spm", spm_model, "--json"])
  assert rc == 0
  scores = json.loads(capsys.readouterr().out)
  assert list(scores) == ["sp_rouge1", "sp_rouge2", "sp_rougeL", "lid_en", "lid_th", "ascii"]
  assert scores == pytest.approx(metrics.score(files["thai"], files["targets"], "th", spm_model))
  assert scores["lid_th"] > 90 and scores["lid_en"] == 0


def test_score_table(thai_files, spm_model, capsys):
  folder, _ = thai_files
  assert cli.main(["score", "--predictions", str(folder / "english.txt"), "--targets",
                   str(folder / "targets.txt"), "--lang", "th", "--spm", spm_model]) == 0
  out = capsys.readouterr().out
  assert "6 examples, language th" in out
  lines = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:] if line.strip()}
  assert float(lines["lid_en"]) > 90 and float(lines["lid_th"]) == 0
  assert set(lines) >= {"sp_rouge1", "sp_rougeL", "ascii"}


def test_score_bad_input(thai_files, spm_model, capsys):
  folder, _ = thai_files
  (folder / "short.txt").write_text("one line\n")
  args = ["score", "--targets", str(folder / "targets.txt"), "--spm", spm_model]
  assert cli.main(args + ["--predictions", str(folder / "short.txt"), "--lang", "th"]) == 2
  assert "1 predictions but 6 targets" in capsys.readouterr().err
  assert cli.main(args + ["--predictions", str(folder / "thai.txt"), "--lang", "xx"]) == 2
  assert "unknown language code 'xx'" in capsys.readouterr().err
  assert cli.main(args + ["--predictions", str(folder / "missing.txt"), "--lang", "th"]) == 2
  assert "--predictions file" in capsys.readouterr().err
  assert cli.main(args + ["--predictions", str(folder / "thai.txt"), "--lang", "th",
                          "--run-dir", str(folder / "run")]) == 2
  assert "--meta size=... method=..." in capsys.readouterr().err
  assert cli.main(["score"]) == 2  # argparse usage error, not an exception


def test_score_run_dir_then_report(thai_files, spm_model, tmp_path, capsys):
  folder, _ = thai_files
  for name, method in (("english", "pt"), ("thai", "mix_unsup")):
    assert cli.main(["score", "--predictions", str(folder / f"{name}.txt"), "--targets",
                     str(folder / "targets.txt"), "--lang", "th", "--spm", spm_model,
                     "--run-dir", str(tmp_path / "runs" / method),
                     "--meta", "size=small", f"method={method}", "prompt_length=100"]) == 0
  run = report.read_run(tmp_path / "runs" / "pt")
  assert run.prompt_length == 100 and run.scores["th"]["lid_en"] > 90
  (tmp_path / "runs" / "not_done").mkdir()
  capsys.readouterr()
  assert cli.main(["report", "--runs", str(tmp_path / "runs"), str(tmp_path / "runs" / "not_done"),
                   "--out", str(tmp_path / "report")]) == 0
  captured = capsys.readouterr()
  assert "## LID_target" in captured.out and "| small | mix_unsup | 100 | 1 |" in captured.out
  assert "skipping" in captured.err and "not_done" in captured.err
  assert (tmp_path / "report" / "sp_rouge_vs_lid.png").stat().st_size > 1000
  assert cli.main(["report", "--runs", str(tmp_path / "runs" / "not_done"),
                   "--out", str(tmp_path / "r2")]) == 2
  assert "no finished runs" in capsys.readouterr().err
