"""The statistics of reports, each against an independent computation on hand-made data."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from convnet import analysis, records, stats

# Student's t, 97.5th percentile, with 2 and 4 degrees of freedom (table values).
T_975_2 = 4.302652729911275
T_975_4 = 2.7764451051977987


def _logistic(x):
  return 1 / (1 + math.exp(-x))


def test_paired_difference_is_scipys_paired_t_over_the_shared_seeds():
  a = {0: 0.95, 1: 0.97, 2: 0.96}
  b = {0: 0.90, 1: 0.93, 2: 0.91, 3: 0.50}  # seed 3 has no partner: left out
  paired = stats.paired_difference(a, b)
  assert paired["seeds"] == 3
  # By hand: differences 0.05, 0.04, 0.05; mean 0.14 / 3; sample variance 1 / 30000.
  d = [0.05, 0.04, 0.05]
  mean = sum(d) / 3
  std = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
  assert std == pytest.approx(math.sqrt(1 / 30000))
  half = T_975_2 * std / math.sqrt(3)
  assert paired["difference"] == pytest.approx(mean)
  assert (paired["ci_low"], paired["ci_high"]) == pytest.approx((mean - half, mean + half))
  # The two-sided p-value of t = mean / (std / sqrt(3)) with 2 degrees of freedom, as scipy's.
  t = mean / (std / math.sqrt(3))
  assert paired["p"] == pytest.approx(2 * scipy_stats.t.sf(t, 2))
  reference = scipy_stats.ttest_rel([0.95, 0.97, 0.96], [0.90, 0.93, 0.91])
  assert paired["p"] == pytest.approx(reference.pvalue)


def test_paired_difference_needs_two_shared_seeds_and_handles_no_spread():
  one = stats.paired_difference({0: 0.9, 1: 0.8}, {1: 0.7, 2: 0.6})
  assert one["seeds"] == 1 and one["difference"] == pytest.approx(0.1)
  assert math.isnan(one["ci_low"]) and math.isnan(one["p"])
  none = stats.paired_difference({0: 0.9}, {1: 0.7})
  assert none["seeds"] == 0 and math.isnan(none["difference"])
  same = stats.paired_difference({0: 0.9, 1: 0.8}, {0: 0.85, 1: 0.75})
  assert (same["ci_low"], same["ci_high"]) == pytest.approx((0.05, 0.05))
  assert same["p"] == 0.0
  tie = stats.paired_difference({0: 0.9, 1: 0.8}, {0: 0.9, 1: 0.8})
  assert (tie["difference"], tie["p"]) == (0.0, 1.0)


def test_welch_difference_is_scipys():
  a, b = [0.95, 0.97, 0.96, 0.99], [0.90, 0.93, 0.91]
  welch = stats.welch_difference(a, b)
  reference = scipy_stats.ttest_ind(a, b, equal_var=False)
  ci = reference.confidence_interval(0.95)
  assert welch["difference"] == pytest.approx(np.mean(a) - np.mean(b))
  assert (welch["ci_low"], welch["ci_high"]) == pytest.approx((ci.low, ci.high))
  assert welch["p"] == pytest.approx(reference.pvalue)
  assert math.isnan(stats.welch_difference([0.9], b)["p"])


def test_intervals_of_differences_stay_within_plus_and_minus_100_points():
  # Wildly spread seeds: the t intervals would reach past +-1.
  welch = stats.welch_difference([1.0, 0.0, 1.0], [0.0, 0.0, 0.1])
  paired = stats.paired_difference({0: 1.0, 1: 0.0, 2: 1.0}, {0: 0.0, 1: 0.9, 2: 0.0})
  for d in (welch, paired):
    assert -1 <= d["ci_low"] <= d["difference"] <= d["ci_high"] <= 1
  assert welch["ci_high"] == 1.0 and paired["ci_low"] == -1.0


def test_holm_against_a_worked_example():
  # Sorted: 0.005, 0.01, 0.03, 0.04, times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04; the last is
  # raised to 0.06, so that the adjusted values keep the raw ones' order.
  adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
  assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
  # NaN (a comparison without a p-value) is outside the family of 3: 0.01 x 3, then 0.6 x 2
  # capped at 1, then 0.7 raised to 1.
  adjusted = stats.holm([0.6, math.nan, 0.01, 0.7])
  assert math.isnan(adjusted[1])
  assert adjusted[[0, 2, 3]] == pytest.approx([1.0, 0.03, 1.0])
  assert len(stats.holm([])) == 0
  rows = stats.with_holm([{"p": 0.01}, {"p": 0.04}, {"p": 0.03}, {"p": 0.005}, {"p": math.nan}])
  assert [r["survives"] for r in rows] == [True, False, False, True, None]


def test_holm_is_monotone_in_the_raw_p_values():
  p = np.random.default_rng(0).uniform(0, 0.2, size=12)
  adjusted = stats.holm(p)
  order = np.argsort(p)
  assert np.all(np.diff(adjusted[order]) >= 0)
  assert np.all(adjusted >= p) and np.all(adjusted <= 1)


def test_accuracy_interval_is_t_on_the_logit_scale():
  values = [0.90, 0.95, 0.97, 0.93, 0.96]
  logits = [math.log(v / (1 - v)) for v in values]
  mean = sum(logits) / 5
  std = math.sqrt(sum((x - mean) ** 2 for x in logits) / 4)
  half = T_975_4 * std / math.sqrt(5)
  low, high = stats.accuracy_interval(values)
  assert (low, high) == pytest.approx((_logistic(mean - half), _logistic(mean + half)))
  assert low < np.mean(values) < high


def test_accuracy_interval_known_answers():
  # Equal seeds: the zero-width interval at their value.
  assert stats.accuracy_interval([0.9, 0.9, 0.9]) == pytest.approx((0.9, 0.9))
  assert stats.accuracy_interval([1.0] * 5) == (1.0, 1.0)
  # Data symmetric about one half: so is the interval.
  low, high = stats.accuracy_interval([0.4, 0.5, 0.6])
  assert low + high == pytest.approx(1.0) and low < 0.4
  # One seed says nothing of the spread.
  assert all(math.isnan(x) for x in stats.accuracy_interval([0.1]))
  with pytest.raises(ValueError, match="in \\[0, 1\\]"):
    stats.accuracy_interval([0.5, 1.2])


@pytest.mark.parametrize(
  "values",
  [
    [0.1],  # one seed at chance
    [1.0] * 5,  # five seeds at 100%
    [1.0, 1.0, 0.99, 1.0, 1.0],
    [0.0, 0.0, 0.01],
    [0.1, 0.97, 0.97, 0.96, 0.98],  # one seed collapsed to chance
    [0.0, 1.0],
    [0.99, 0.999, 0.9999],
  ],
)
def test_accuracy_intervals_never_leave_0_to_1(values):
  low, high = stats.accuracy_interval(values)
  if len(values) < 2:
    assert math.isnan(low) and math.isnan(high)
  else:
    assert 0 <= low <= high <= 1
  row = analysis.accuracy_interval(values)
  assert math.isnan(row["ci_low"]) or 0 <= row["ci_low"] <= row["ci_high"] <= 1


def _run(status="done", **fields):
  return {"status": status, "config": {"data": {"source": "embedded", "name": "mnist"}}} | fields


def test_a_run_whose_training_loss_stays_at_chance_is_collapsed():
  chance = math.log(10)
  assert records.chance_loss(10) == pytest.approx(2.302585)
  assert records.collapsed(_run(train_loss=2.3055), 10)  # the embedded digits' collapsed seed
  assert records.collapsed(_run(train_loss=chance * 0.981), 10)  # within 2%
  assert not records.collapsed(_run(train_loss=chance * 0.97), 10)
  # Above chance is worse than guessing: collapsed too (a rate whose loss ran away).
  assert records.collapsed(_run(train_loss=chance * 1.03), 10)
  assert records.collapsed(_run(train_loss=6.108), 10)
  assert not records.collapsed(_run(train_loss=0.26), 10)
  assert records.collapsed(_run(train_loss=math.log(3)), 3)
  # Nothing to tell by: no loss, no number of classes, or a run that did not finish.
  assert not records.collapsed(_run(), 10)
  assert not records.collapsed(_run(train_loss=2.3055), None)
  assert not records.collapsed(_run("failed", train_loss=2.3055), 10)
  # The embedded digits' source says 10 classes; a record may say so itself.
  assert analysis.num_classes(_run()) == 10
  assert analysis.num_classes(_run(num_classes=3) | {"config": {}}) == 3
  assert analysis.num_classes({"config": {"model": {"name": "convnet"}}}) is None
  assert analysis.collapsed(_run(train_loss=2.3055)) and not analysis.counted(
    _run(train_loss=2.3055)
  )


def test_a_run_whose_best_epoch_is_its_last_is_still_improving():
  assert records.still_improving(_run(best_epoch=10, epoch=10)) is True
  assert records.still_improving(_run(best_epoch=7, epoch=10)) is False
  assert records.still_improving(_run(epoch=10)) is None
  assert records.still_improving(_run("failed", best_epoch=3, epoch=3)) is None
