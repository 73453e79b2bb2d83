"""`spot report` over hand-built run trees with several seeds, two methods and two
protocols: per-seed statistics, protocols kept apart, the per-method table (tunable
parameters, ARG, RER) and the PNGs."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from spot import cli, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASKS = ("spot_glue_rte", "spot_superglue_cb")
BASE_PARAMS = 76_961_152
LORA = {"method": "lora", "rank": 4}
# (method label, PEFT method, trainable count) -> {(task, protocol): per-seed accuracy}
SCORES = {
    ("prompt_tuning", None, 51_200): {
        ("spot_glue_rte", "dev"): [60.0, 63.0, 58.0, 61.0],
        ("spot_superglue_cb", "dev"): [80.0, 84.0, 79.0, 85.0],
        ("spot_glue_rte", "dev1/dev2"): [50.0, 52.0, 57.0, 49.0],
        ("spot_superglue_cb", "dev1/dev2"): [70.0, 71.0, 77.0, 74.0],
    },
    ("model_tuning", "lora", 40_960): {
        ("spot_glue_rte", "dev"): [66.0, 70.0, 65.0, 69.0],
        ("spot_superglue_cb", "dev"): [78.0, 76.0, 81.0, 77.0],
        ("spot_glue_rte", "dev1/dev2"): [55.0, 59.0, 54.0, 60.0],
        ("spot_superglue_cb", "dev1/dev2"): [72.0, 79.0, 75.0, 70.0],
    },
}


def _history(task, final):
  return [[step, {f"{task}/accuracy": final - 10 + step / 10}] for step in (20, 50, 100)]


def _write_checkpoint_meta(run_dir: pathlib.Path, step: int, history) -> None:
  """What the trainer's last checkpoint leaves: a committed step with its meta JSON."""
  step_dir = run_dir / "checkpoints" / str(step)
  (step_dir / "state").mkdir(parents=True)
  (step_dir / "meta").mkdir()
  (step_dir / "commit_success.txt").write_text("")
  (step_dir / "meta" / "metadata").write_text(json.dumps({"eval_history": history}))


@pytest.fixture
def tree(tmp_path):
  for (label, peft_method, trainable), cells in SCORES.items():
    name, peft = (peft_method, LORA) if peft_method else (label, None)
    for (task, protocol), seeds in cells.items():
      for seed, accuracy in enumerate(seeds):
        run_dir = tmp_path / "runs" / protocol.replace("/", "_") / name / task / f"seed{seed}"
        report.write_run_metrics(
            run_dir, task, label, seed, {"accuracy": accuracy}, step=100, protocol=protocol,
            selection_scores={"accuracy": accuracy + 1} if protocol == "dev1/dev2" else None,
            init_seed=seed, data_seed=100 + seed, peft=peft, num_trainable=trainable,
            num_base=BASE_PARAMS)
        _write_checkpoint_meta(run_dir, 100, _history(task, accuracy))
  return tmp_path / "runs"


def _cell(rep, task, method, protocol):
  (cell,) = [c for c in rep["cells"]
             if (c["task"], c["method"], c["protocol"]) == (task, method, protocol)]
  return cell


def _scores(method, task, protocol):
  key = next(k for k in SCORES if (k[1] or k[0]) == method)
  return np.array(SCORES[key][task, protocol])


@pytest.mark.parametrize("protocol", ["dev", "dev1/dev2"])
@pytest.mark.parametrize("method", ["prompt_tuning", "lora"])
@pytest.mark.parametrize("task", TASKS)
def test_per_seed_statistics_equal_numpys(tree, task, method, protocol):
  rep = report.summarize(report.find_runs([tree]), baseline="prompt_tuning")
  cell = _cell(rep, task, method, protocol)
  values = _scores(method, task, protocol)
  assert cell["n"] == len(values) == 4
  assert cell["score_mean"] == pytest.approx(np.mean(values))
  assert cell["score_std"] == pytest.approx(np.std(values, ddof=1))
  assert cell["score_min"] == np.min(values) and cell["score_max"] == np.max(values)
  assert [s["score"] for s in cell["per_seed"]] == list(values)
  assert [(s["init_seed"], s["data_seed"]) for s in cell["per_seed"]] == [
      (i, 100 + i) for i in range(4)]


def test_protocols_are_never_averaged_together(tree):
  rep = report.summarize(report.find_runs([tree]), baseline="prompt_tuning")
  assert rep["protocols"] == ["dev", "dev1/dev2"]
  assert len(rep["cells"]) == 2 * 2 * 2  # task x method x protocol
  for avg in rep["averages"]:
    expected = np.mean([np.mean(_scores(avg["method"], t, avg["protocol"]))
                        for t in avg["tasks"]])
    assert avg["score_mean"] == pytest.approx(expected)
  # RER compares with the baseline of the same protocol only.
  lora = _cell(rep, "spot_glue_rte", "lora", "dev1/dev2")
  base = np.mean(_scores("prompt_tuning", "spot_glue_rte", "dev1/dev2"))
  mine = np.mean(_scores("lora", "spot_glue_rte", "dev1/dev2"))
  assert lora["rer"] == pytest.approx(100 * ((100 - base) - (100 - mine)) / (100 - base))


def test_rer_signs(tree):
  rep = report.summarize(report.find_runs([tree]), baseline="prompt_tuning")
  # LoRA beats prompt tuning on RTE and loses on CB (dev): positive, then negative RER.
  assert _cell(rep, "spot_glue_rte", "lora", "dev")["rer"] > 0
  assert _cell(rep, "spot_superglue_cb", "lora", "dev")["rer"] < 0
  assert _cell(rep, "spot_glue_rte", "prompt_tuning", "dev")["rer"] is None


def test_method_rows_give_parameters_arg_and_rer(tree):
  rep = report.summarize(report.find_runs([tree]), baseline="prompt_tuning")
  rows = {(r["method"], r["protocol"]): r for r in rep["method_rows"]}
  assert set(rows) == {(m, p) for m in ("prompt_tuning", "lora") for p in ("dev", "dev1/dev2")}
  lora = rows["lora", "dev"]
  assert lora["peft"] == ["lora"] and lora["num_trainable"] == 40_960
  assert lora["num_base"] == BASE_PARAMS
  assert lora["trainable_pct"] == pytest.approx(100 * 40_960 / BASE_PARAMS)
  # ARG by hand: RTE (67.5 - 60.5) / 60.5, CB (78 - 82) / 82, mean of the two, in percent.
  assert lora["arg"] == pytest.approx(50 * (7.0 / 60.5 - 4.0 / 82.0))
  rers = [_cell(rep, t, "lora", "dev")["rer"] for t in TASKS]
  assert lora["rer_mean"] == pytest.approx(np.mean(rers))
  assert rows["prompt_tuning", "dev"]["arg"] is None
  assert rows["lora", "dev"]["tasks"]["spot_glue_rte"]["mean"] == pytest.approx(67.5)


def test_markdown_names_the_protocol_of_every_table(tree, capsys):
  assert report.main([str(tree), "--baseline", "prompt_tuning"]) == 0
  markdown = capsys.readouterr().out
  assert "**dev1/dev2**: checkpoint selected (and early stopping) on dev1" in markdown
  assert "| Task (dev) | prompt_tuning | lora |" in markdown
  assert "| Task (dev1/dev2) | prompt_tuning | lora |" in markdown
  assert "| spot_glue_rte | 60.50 ± 2.08 (n=4) | 67.50 ± 2.38 (n=4) |" in markdown
  assert "## Relative error reduction over prompt_tuning (%), protocol dev1/dev2" in markdown
  assert ("| spot_glue_rte | lora | dev1/dev2 | 4/4 | 57.00 | 2.94 | 54.00 | 60.00 | "
          "0 (data 100): 55.00 (selected at 56.00), ") in markdown
  assert (f"| lora | dev | lora | 40,960 | {100 * 40_960 / BASE_PARAMS:.3g}% | "
          f"{50 * (7.0 / 60.5 - 4.0 / 82.0):.2f} |") in markdown
  assert "![per-seed scores]" not in markdown  # no PNGs without --out


def _assert_png(path: pathlib.Path) -> None:
  data = path.read_bytes()
  assert data[:8] == PNG_MAGIC and len(data) > 5_000, path


def test_out_writes_markdown_json_and_valid_pngs(tree, tmp_path, capsys):
  out = tmp_path / "out" / "REPORT.md"
  assert report.main(["--runs", str(tree), "--out", str(out)]) == 0
  markdown = capsys.readouterr().out
  assert out.read_text() == markdown
  folder = out.parent
  _assert_png(folder / "REPORT_seeds.png")
  _assert_png(folder / "REPORT_box.png")
  assert "![per-seed scores](REPORT_seeds.png)" in markdown
  assert "![box plot per method and task](REPORT_box.png)" in markdown
  curves = sorted((folder / "REPORT_curves").iterdir())
  assert len(curves) == 8  # one per (task, method, protocol), every seed on it
  for png in curves:
    _assert_png(png)
    assert f"](REPORT_curves/{png.name})" in markdown
  data = json.loads((folder / "REPORT.json").read_text())
  (curve,) = [c for c in data["curves"] if (c["task"], c["method"], c["protocol"]) == (
      "spot_glue_rte", "lora", "dev")]
  assert [s["label"] for s in curve["seeds"]] == [f"seed {i} (data {100 + i})" for i in range(4)]
  assert curve["seeds"][1]["points"] == [[20, 62.0], [50, 65.0], [100, 70.0]]
  assert (folder / "REPORT.csv").read_text().startswith(
      "task,method,metric,mean,std,n,rer,of,protocol,min,max\n")


def test_out_folder_keeps_the_old_names(tree, tmp_path, capsys):
  assert report.main(["--runs", str(tree), "--out", str(tmp_path / "o")]) == 0
  capsys.readouterr()
  names = {p.name for p in (tmp_path / "o").iterdir()}
  assert {"report.md", "report.csv", "report.json", "report_seeds.png",
          "report_box.png", "report_curves"} == names


def test_eval_history_of_a_run_without_checkpoints_is_empty(tmp_path):
  report.write_run_metrics(tmp_path, "t", "m", 0, {"accuracy": 1.0})
  assert report.eval_history(tmp_path) == []
  assert report.read_curves(report.find_runs([tmp_path])) == []


def test_same_seed_under_two_protocols_is_not_a_duplicate(tmp_path):
  for protocol in ("dev", "dev1/dev2"):
    report.write_run_metrics(tmp_path / protocol.replace("/", "_"), "t", "m", 0,
                             {"accuracy": 1.0}, protocol=protocol)
  assert [r.protocol for r in report.find_runs([tmp_path])] == ["dev", "dev1/dev2"]


def test_arg_in_the_report_skips_unscored_tasks_and_notes_a_zero_baseline():
  runs = [report.Run("a", "base", 0, {"accuracy": 50.0}),
          report.Run("a", "new", 0, {"accuracy": 60.0}),
          report.Run("b", "base", 0, {"accuracy": None}),
          report.Run("b", "new", 0, {"accuracy": 10.0})]
  (_, new) = report.summarize(runs, "base")["method_rows"]
  assert new["arg"] == pytest.approx(20.0) and new["arg_tasks"] == ["a"]
  runs[0] = report.Run("a", "base", 0, {"accuracy": 0.0})
  rep = report.summarize(runs, "base")
  assert rep["method_rows"][1]["arg"] is None
  assert any("no ARG over base: ARG: tasks a have a baseline score of 0" in n
             for n in rep["notes"])


def test_no_directories_is_a_usage_error(capsys):
  assert cli.spot_main(["report"]) == 2
  assert capsys.readouterr().err == ("spot report: no run directories given; pass them as "
                                     "DIR... or --runs DIR...\n")
