"""An invalid prediction (-1) is wrong for every metric, also on unlabelled examples."""

from spot.tasks import metrics


def test_accuracy_counts_an_invalid_prediction_as_wrong():
  # Unlabelled test rows have target -1; a prediction no class word matches is -1 too.
  assert metrics.accuracy([-1, -1, 1, 0], [-1, -1, 1, 1]) == {"accuracy": 25.0}
  assert metrics.accuracy([0, 1], [0, 1]) == {"accuracy": 100.0}
  assert metrics.accuracy([True, False], [True, True]) == {"accuracy": 50.0}
