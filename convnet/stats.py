"""Statistics over a sweep's seeds: bounded intervals, paired and Welch differences, Holm.

Pure functions of numbers, for `convnet.analysis` and `convnet.report`.
Accuracies are fractions in [0, 1]; a difference of two is in [-1, 1].

- `accuracy_interval`: a 95% interval for the mean accuracy over seeds that
  stays within [0, 1]: Student's t on the logit scale, mapped back.
- `paired_difference`: the difference over the seeds two settings share (a
  seed fixes the validation split, the data order and the initialization of
  every arm), with the paired t interval and p-value (`scipy.stats.ttest_rel`).
- `welch_difference`: the difference of the two means with Welch's interval and
  p-value (unequal variances), for settings that share no seeds.
- `holm`: Holm's step-down adjustment of a family's p-values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import special, stats

CONFIDENCE = 0.95
# The family-wise error rate Holm's correction holds a report's comparisons to.
ALPHA = 0.05
# An accuracy of exactly 0 or 1 has no logit: it is read as this far inside [0, 1] instead.
EDGE = 1e-4

# What a report says of its intervals and its comparisons, in its own words.
INTERVAL_METHOD = (
  "Intervals of an accuracy are 95% Student's t intervals over seeds on the logit scale, mapped "
  "back to percent, so they stay within [0, 100] (an accuracy of exactly 0 or 100% counts as "
  f"{100 * EDGE:g}% from it there); one seed gives none."
)
DIFFERENCE_METHOD = (
  "A difference of two settings' test accuracies is paired over the seeds they share (a seed "
  "fixes the validation split, the data order and the initialization of both): its 95% "
  "interval and p-value are the paired t test's over the per-seed differences; Welch's "
  "interval over all seeds of each stands beside it. Intervals of differences are clipped to "
  "[-100, +100] points."
)
POLICY = (
  f"Multiple comparisons: each table of differences is one family, and its p-values (paired "
  f"where two or more seeds are shared, else Welch's) are adjusted by Holm's step-down "
  f"correction; a comparison survives when its adjusted p-value is below {ALPHA:g}."
)


def _clean(values: Sequence[float]) -> np.ndarray:
  return np.asarray(values, np.float64).reshape(-1)


def accuracy_interval(
  values: Sequence[float], confidence: float = CONFIDENCE, edge: float = EDGE
) -> tuple[float, float]:
  """A `confidence` interval, (low, high) within [0, 1], for the mean of accuracies over seeds.

  Student's t interval of the mean logit, log(a / (1 - a)), mapped back by the
  logistic function: it keeps t's allowance for few seeds and can never leave
  [0, 1]. An accuracy of exactly 0 or 1 is read as `edge` or 1 - `edge`.
  Equal values give the zero-width interval at that value; fewer than 2 give
  (NaN, NaN).

  Args:
    values: (n,) accuracies in [0, 1], one per seed.

  Raises:
    ValueError: a value outside [0, 1] (or NaN).
  """
  values = _clean(values)
  if not np.all((values >= 0) & (values <= 1)):
    raise ValueError(f"accuracies must lie in [0, 1]; got {values.tolist()}")
  if len(values) < 2:
    return math.nan, math.nan
  if np.all(values == values[0]):
    return float(values.mean()), float(values.mean())  # the mean, to the last bit
  logits = special.logit(np.clip(values, edge, 1 - edge))
  center, spread = logits.mean(), logits.std(ddof=1)
  half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * spread / math.sqrt(len(values))
  low, high = special.expit(center - half), special.expit(center + half)
  return float(np.clip(low, 0.0, 1.0)), float(np.clip(high, 0.0, 1.0))


def _bounded(low: float, high: float) -> tuple[float, float]:
  """A difference of two accuracies lies in [-1, 1]: its interval is cut to that."""
  if math.isnan(low):
    return low, high
  return max(low, -1.0), min(high, 1.0)


def welch_difference(
  a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> dict[str, float]:
  """mean(a) - mean(b), with Welch's interval (unequal variances) and two-sided p-value.

  Args:
    a, b: (n,) and (m,) accuracies, one per seed of each setting.

  Returns:
    `difference`; `ci_low` and `ci_high` (cut to [-1, 1]); `p`. The interval and
    p are NaN with fewer than 2 values on either side; with no spread on
    either side the interval is the difference itself and p is 1 if it is 0,
    else 0.
  """
  a, b = _clean(a), _clean(b)
  difference = float(a.mean() - b.mean())
  if len(a) < 2 or len(b) < 2:
    return {"difference": difference, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  se = math.sqrt(va + vb)
  if se == 0:
    p = 1.0 if difference == 0 else 0.0
    return {"difference": difference, "ci_low": difference, "ci_high": difference, "p": p}
  dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
  half = float(stats.t.ppf((1 + confidence) / 2, dof)) * se
  p = float(2 * stats.t.sf(abs(difference) / se, dof))
  low, high = _bounded(difference - half, difference + half)
  return {"difference": difference, "ci_low": low, "ci_high": high, "p": p}


def paired_difference(
  a: Mapping[Any, float], b: Mapping[Any, float], confidence: float = CONFIDENCE
) -> dict[str, Any]:
  """The mean over shared seeds of a[seed] - b[seed], with the paired t interval and p-value.

  Args:
    a, b: {seed: accuracy} of two settings; only the seeds both hold count.

  Returns:
    `seeds` (how many are shared), `difference`, `ci_low` and `ci_high` (cut
    to [-1, 1]) and `p` (two-sided, `scipy.stats.ttest_rel`). With fewer than 2
    shared seeds the interval and p are NaN (and the difference too, with
    none). Differences with no spread give the zero-width interval, and p is 1
    if they are 0, else 0.
  """
  shared = [seed for seed in a if seed in b]
  if not shared:
    return {"seeds": 0} | dict.fromkeys(("difference", "ci_low", "ci_high", "p"), math.nan)
  x = np.array([a[s] for s in shared], np.float64)
  y = np.array([b[s] for s in shared], np.float64)
  d = x - y
  difference = float(d.mean())
  row = {"seeds": len(shared), "difference": difference}
  if len(shared) < 2:
    return row | {"ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
  if np.all(d == d[0]):
    return row | {"ci_low": difference, "ci_high": difference, "p": 1.0 if d[0] == 0 else 0.0}
  with warnings.catch_warnings():  # nearly equal differences: scipy warns, the numbers stand
    warnings.simplefilter("ignore", RuntimeWarning)
    test = stats.ttest_rel(x, y)
    ci = test.confidence_interval(confidence)
  low, high = _bounded(float(ci.low), float(ci.high))
  return row | {"ci_low": low, "ci_high": high, "p": float(test.pvalue)}


def holm(p_values: Sequence[float]) -> np.ndarray:
  """Holm's step-down adjusted p-values, (m,), in the order given; NaN stays NaN.

  The family is the m' non-NaN values. Sorted ascending, the k-th (from 1) is
  multiplied by m' - k + 1, capped at 1, and each adjusted value is the
  largest of those up to its own, so the adjusted values keep the raw order.
  A comparison survives at level alpha when its adjusted value is below alpha.
  """
  p = _clean(p_values)
  adjusted = np.full(p.shape, np.nan)
  present = np.flatnonzero(~np.isnan(p))
  if not len(present):
    return adjusted
  order = present[np.argsort(p[present], kind="stable")]
  m = len(order)
  scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
  adjusted[order] = np.maximum.accumulate(scaled)
  return adjusted


def with_holm(rows: Sequence[dict[str, Any]], alpha: float = ALPHA) -> list[dict[str, Any]]:
  """Each row (with a p-value `p`) and its `p_holm` over the rows as one family, and `survives`.

  `survives` is True or False where the row has a p-value, else None.
  """
  adjusted = holm([row["p"] for row in rows])
  return [
    row
    | (
      {"p_holm": math.nan, "survives": None}
      if math.isnan(q)
      else {"p_holm": float(q), "survives": bool(q < alpha)}
    )
    for row, q in zip(rows, adjusted, strict=True)
  ]
