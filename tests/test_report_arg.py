"""Average relative gain (CrossFit's ARG) against hand computations."""

from __future__ import annotations

import pytest

from spot import errors, report


def test_arg_equals_hand_computation():
  scores = {"cb": 60.0, "rte": 45.0, "boolq": 80.0}
  baselines = {"cb": 50.0, "rte": 50.0, "boolq": 64.0}
  # (60-50)/50 = 20%, (45-50)/50 = -10%, (80-64)/64 = 25% -> mean 35/3
  assert report.average_relative_gain(scores, baselines) == pytest.approx(35.0 / 3)


def test_arg_is_over_the_tasks_both_have():
  assert report.average_relative_gain({"a": 60.0, "b": 1.0}, {"a": 50.0, "c": 7.0}) == (
      pytest.approx(20.0))


def test_arg_of_the_baseline_itself_is_zero():
  base = {"a": 33.0, "b": 71.5}
  assert report.average_relative_gain(base, base) == 0.0


@pytest.mark.parametrize("scores,baselines,named", [
    ({"a": 1.0, "b": 2.0}, {"a": 0.0, "b": 2.0}, "tasks a "),
    ({"a": None, "b": 2.0}, {"a": 3.0, "b": 2.0}, "tasks a "),
    ({"a": 1.0}, {"a": float("nan")}, "tasks a "),
    ({"a": 1.0}, {"b": 2.0}, "share no task"),
])
def test_arg_undefined_names_the_tasks(scores, baselines, named):
  with pytest.raises(errors.DataError, match=named):
    report.average_relative_gain(scores, baselines)
