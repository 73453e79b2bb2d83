"""metrics.json's protocol, seeds, PEFT method and parameter counts, and how the
report keeps protocols apart."""

from __future__ import annotations

import json

import pytest

from spot import errors, report, report_writers
from spot.train.config import RunSummary


def test_write_final_metrics_records_every_run_fact(tmp_path):
  summary = RunSummary(
      model_dir=str(tmp_path), task="spot_glue_rte", method="model_tuning", seed=4, step=30,
      results={"spot_glue_rte/accuracy": 71.0}, model_size="small", protocol="dev1/dev2",
      selection_results={"spot_glue_rte/accuracy": 75.0}, init_seed=1, data_seed=2,
      peft={"method": "lora", "rank": 4}, num_trainable=1024, num_base=1_000_000)
  report_writers.write_final_metrics(summary)
  record = json.loads((tmp_path / "metrics.json").read_text())
  assert record == {"task": "spot_glue_rte", "method": "model_tuning", "seed": 4, "step": 30,
                    "scores": {"accuracy": 71.0}, "protocol": "dev1/dev2",
                    "selection_scores": {"accuracy": 75.0}, "init_seed": 1, "data_seed": 2,
                    "peft": {"method": "lora", "rank": 4}, "num_trainable": 1024,
                    "num_base": 1_000_000}
  run = report.read_run(tmp_path / "metrics.json")
  assert (run.protocol, run.init_seed, run.data_seed, run.num_trainable) == (
      "dev1/dev2", 1, 2, 1024)
  assert run.group == "lora"  # the trainer's default label gives way to the PEFT method
  assert run.seed_label == "4 (init 1, data 2)"


def test_write_final_metrics_with_the_defaults_the_trainer_leaves(tmp_path):
  summary = RunSummary(model_dir=str(tmp_path), task="mix", method="prompt_tuning", seed=0,
                       step=3, results={"a/accuracy": 50.0, "b/f1": 40.0}, model_size="small")
  report_writers.write_final_metrics(summary)
  record = json.loads((tmp_path / "metrics.json").read_text())
  assert record == {"task": "mix", "method": "prompt_tuning", "seed": 0, "step": 3,
                    "scores": {"a/accuracy": 50.0, "b/f1": 40.0}, "protocol": "dev"}


def test_old_metrics_json_still_reads(tmp_path):
  (tmp_path / "metrics.json").write_text(
      '{"task": "t", "method": "m", "seed": 2, "scores": {"accuracy": 60}, "step": 9}')
  run = report.read_run(tmp_path / "metrics.json")
  assert (run.protocol, run.init_seed, run.data_seed, run.peft, run.num_trainable,
          run.num_base, run.selection_scores) == ("dev", None, None, None, None, None, None)
  assert run.group == "m" and run.seed_label == "2"
  rep = report.summarize([run])
  assert rep["protocols"] == ["dev"] and rep["cells"][0]["score_mean"] == 60.0


@pytest.mark.parametrize("record,match", [
    ({"protocol": ""}, "'protocol' must be"),
    ({"init_seed": "1"}, "'init_seed' must be an integer"),
    ({"num_trainable": -3}, "'num_trainable' must be a parameter count"),
    ({"peft": {"rank": 4}}, "'peft' must be"),
    ({"selection_scores": {"accuracy": "x"}}, "not a number"),
])
def test_bad_run_facts_name_the_field(tmp_path, record, match):
  base = {"task": "t", "method": "m", "seed": 0, "scores": {"accuracy": 1.0}}
  (tmp_path / "metrics.json").write_text(json.dumps({**base, **record}))
  with pytest.raises(errors.DataError, match=match):
    report.read_run(tmp_path / "metrics.json")


def test_an_explicit_label_is_kept_over_the_peft_method():
  run = report.Run("t", "lora_r8", 0, {"a": 1.0}, peft={"method": "lora", "rank": 8})
  assert run.group == "lora_r8"
