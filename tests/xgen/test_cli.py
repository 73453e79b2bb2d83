"""`spot xgen score` and `spot xgen report` end to end on real WikiLingua text."""

from __future__ import annotations

import json
import sys

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
  assert list(scores) == ["sp_rouge1", "sp_rouge2", "sp_rougeL", "lid_en", "lid_th", "ascii",
                          "unk_rate"]
  assert scores == pytest.approx(metrics.score(files["thai"], files["targets"], "th", spm_model))
  assert scores["lid_th"] > 90 and scores["lid_en"] == 0
  assert scores["unk_rate"] == 0.0 and capsys.readouterr().err == ""  # the model covers Thai


def test_score_table(thai_files, spm_model, capsys):
  folder, _ = thai_files
  assert cli.main(["score", "--predictions", str(folder / "english.txt"), "--targets",
                   str(folder / "targets.txt"), "--lang", "th", "--spm", spm_model]) == 0
  out = capsys.readouterr().out
  assert "6 examples, language th" in out
  lines = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:] if line.strip()}
  assert float(lines["lid_en"]) > 90 and float(lines["lid_th"]) == 0
  assert set(lines) >= {"sp_rouge1", "sp_rougeL", "ascii"}


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
  assert spot_cli.spot_main(["xgen", "report", "--runs", str(tmp_path / "runs" / "not_done"),
                             "--out", str(tmp_path / "r2")]) == 3
  assert "no finished runs" in capsys.readouterr().err


# ------------------------------------------------------ vocabulary coverage


def test_score_warns_when_the_vocabulary_does_not_cover_the_language(shared_data, tmp_path,
                                                                     capsys):
  t5 = shared_data / "t5_vocab" / "spiece.model"
  vie = shared_data / "multilingual_text" / "tatoeba_laser_v1" / "tatoeba.vie-eng.vie"
  if not (t5.is_file() and vie.is_file()):
    pytest.skip(f"needs {t5} and {vie}")
  lines = vie.read_text(encoding="utf-8").splitlines()
  (tmp_path / "targets.txt").write_text("\n".join(lines[:20]) + "\n", encoding="utf-8")
  (tmp_path / "predictions.txt").write_text("\n".join(lines[20:40]) + "\n", encoding="utf-8")
  assert spot_cli.spot_main(["xgen", "score", "--predictions", str(tmp_path / "predictions.txt"),
                             "--targets", str(tmp_path / "targets.txt"), "--lang", "vi",
                             "--spm", str(t5), "--json"]) == 0
  captured = capsys.readouterr()
  scores = json.loads(captured.out)
  assert scores["unk_rate"] == pytest.approx(100 * 84 / 544)
  assert scores["sp_rougeL"] == pytest.approx(30.79, abs=0.01)
  assert captured.err == (
      f"spot xgen score: warning: --spm {t5} does not cover --lang vi: 15.4% of the --targets "
      "pieces (84 of 544) are unknown, which inflates SP-ROUGE; pass an --spm that covers vi "
      f"(mT5's: {metrics.MT5_SPM})\n")
  assert spot_cli.spot_main(["xgen", "score", "--predictions", str(tmp_path / "predictions.txt"),
                             "--targets", str(tmp_path / "targets.txt"), "--lang", "vi",
                             "--spm", str(t5)]) == 0
  captured = capsys.readouterr()
  assert "\nunk_rate    15.44\n" in captured.out and captured.err.count("\n") == 1


# ---------------------------------------------- errors: one line, exit code


def _xgen_error_cases(folder, spm):
  """(id, argv, the input named, exit code, text) for each bad input."""
  (folder / "empty.txt").write_text("")
  (folder / "short.txt").write_text("one line\n")
  (folder / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
  (folder / "runs" / "bad").mkdir(parents=True)
  (folder / "runs" / "bad" / "xgen_scores.json").write_text("{oops")
  (folder / "nothing").mkdir()
  pred, tgt = str(folder / "thai.txt"), str(folder / "targets.txt")

  def score(**flags):
    args = {"--predictions": pred, "--targets": tgt, "--lang": "th", "--spm": spm, **flags}
    return ["xgen", "score"] + [x for kv in args.items() for x in kv]

  return [
      ("missing_predictions", score(**{"--predictions": str(folder / "no.txt")}),
       str(folder / "no.txt"), 3, "--predictions"),
      ("empty_predictions", score(**{"--predictions": str(folder / "empty.txt")}),
       str(folder / "empty.txt"), 3, "the file is empty"),
      ("line_counts", score(**{"--predictions": str(folder / "short.txt")}),
       str(folder / "short.txt"), 3, "has 1 line but --targets"),
      ("unknown_lang", score(**{"--lang": "xx"}), "'xx'", 2, "not a WikiLingua language code"),
      ("missing_spm", score(**{"--spm": str(folder / "no.model")}), str(folder / "no.model"), 3,
       "--spm"),
      ("not_utf8", score(**{"--targets": str(folder / "latin1.txt")}),
       str(folder / "latin1.txt"), 3, "not UTF-8"),
      ("run_dir_without_meta", score(**{"--run-dir": str(folder / "run")}), "--meta", 2,
       "--run-dir needs --meta size=... method=..."),
      ("bad_meta", score(**{"--run-dir": str(folder / "run")}) + ["--meta", "size"], "'size'", 2,
       "not KEY=VALUE"),
      ("report_missing_dir", ["xgen", "report", "--runs", str(folder / "gone"), "--out",
                              str(folder / "out")], str(folder / "gone"), 3, "no such directory"),
      ("report_no_runs", ["xgen", "report", "--runs", str(folder / "nothing"), "--out",
                          str(folder / "out")], str(folder / "nothing"), 3, "no finished runs"),
      ("report_bad_json", ["xgen", "report", "--runs", str(folder / "runs"), "--out",
                           str(folder / "out")], str(folder / "runs" / "bad" / "xgen_scores.json"),
       3, "not valid JSON"),
  ]


XGEN_ERROR_IDS = ["missing_predictions", "empty_predictions", "line_counts", "unknown_lang",
                  "missing_spm", "not_utf8", "run_dir_without_meta", "bad_meta",
                  "report_missing_dir", "report_no_runs", "report_bad_json"]


@pytest.mark.parametrize("case", XGEN_ERROR_IDS)
def test_xgen_errors_are_one_line(thai_files, spm_model, capsys, case):
  folder, _ = thai_files
  cases = {c[0]: c[1:] for c in _xgen_error_cases(folder, spm_model)}
  assert list(cases) == XGEN_ERROR_IDS
  argv, named, code, text = cases[case]
  assert spot_cli.spot_main(argv) == code
  captured = capsys.readouterr()
  assert captured.out == ""
  assert captured.err.startswith(f"spot xgen {argv[1]}: ") and captured.err.count("\n") == 1
  print(code, captured.err, file=sys.stderr)  # shown with -rA: the message of each case
  assert named in captured.err and text in captured.err, captured.err
  assert "Traceback" not in captured.err
