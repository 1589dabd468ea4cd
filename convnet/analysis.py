"""A sweep's records as statistics: settings over seeds, intervals, tuned learning rates, pairs.

`convnet.report` writes these as tables and plots; `convnet.learning_curve`
builds on them. Everything here is pure: records in, numbers out (the number
of classes of a record's data may be read from its source, see `num_classes`).
The statistics themselves are `convnet.stats`: accuracies' intervals stay
within [0, 1], differences are paired over shared seeds beside Welch's, and
each table of differences is a family for Holm's correction.

Run health: a finished run whose training loss stayed at chance
(`records.collapsed`) counts in no mean, interval, choice or comparison, and
each setting counts its collapsed runs and its runs still improving at their
last epoch (`records.still_improving`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from convnet import display, models, sources
from convnet import records as records_lib
from convnet import stats as stats_lib
from convnet.errors import ConvnetError, DataError

METRICS = {
  "validation": "best_validation_accuracy",
  "test": "test_accuracy_at_best_validation",
}
# The fields that name a test set: settings that differ in one are never subtracted.
DATASET_FIELDS = (
  "data.name",
  "data.source",
  "data.idx_dir",
  "data.tfds_data_dir",
  "data.canvas.base",
  "data.canvas.size",
  "data.canvas.clutter",
  "data.canvas.seed",
)
# The field a sweep's grid of learning rates varies; arms are tuned over it.
LEARNING_RATE = "optimizer.learning_rate"
# Fields under `model.` that say how a model computes, not what it is: two models compared must
# share them, as they share the data and the optimizer.
HOW_MODELS_COMPUTE = ("model.dtype", "model.implementation")


def shared_by_compared_models(field: str) -> bool:
  """Whether two models must agree on `field` to be compared: it is not about the model."""
  return not field.startswith("model.") or field in HOW_MODELS_COMPUTE


# ----------------------------------------------------------------------------
# Records and statistics


def load_records(sweep_dir: str) -> list[dict[str, Any]]:
  """The sweep's records, each checked and all of one sweep, in sweep order.

  See `records.read_folder`: a record that fails its checks, or one of another
  sweep, stops the report with one line naming the file; none is left out.

  Raises:
    DataError: no records, or records of more than one sweep.
    FileFormatError: a record that is not one (a field of the wrong type or range).
  """
  return records_lib.read_folder(sweep_dir)


def interval(values: Sequence[float]) -> dict[str, float]:
  """Mean, sample standard deviation and the 95% confidence interval of the mean.

  With one value, the spread and the interval are NaN: one seed says nothing
  about the spread.
  """
  values = np.asarray(values, np.float64)
  n, mean = len(values), float(values.mean())
  if n < 2:
    return {"mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
  std = float(values.std(ddof=1))
  half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
  return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def accuracy_interval(values: Sequence[float]) -> dict[str, float]:
  """As `interval`, for accuracies in [0, 1]: the interval is `stats.accuracy_interval`'s, which
  stays within [0, 1] (NaN with one value)."""
  row = interval(values)
  if len(values) >= 2:
    row["ci_low"], row["ci_high"] = stats_lib.accuracy_interval(values)
  return row


_CLASSES: dict[str, int | None] = {}


def num_classes(record: Mapping[str, Any]) -> int | None:
  """How many classes the record's data has: its `num_classes`, else its source's `input_spec`.

  None when neither tells (no data config, or a source whose files are not
  here): run health then cannot tell a collapsed run.
  """
  if record.get("num_classes"):
    return record["num_classes"]
  data = record["config"].get("data")
  if not isinstance(data, dict) or "source" not in data:
    return None
  key = json.dumps(data, sort_keys=True, default=str)
  if key not in _CLASSES:
    try:
      _CLASSES[key] = int(sources.get(data["source"]).input_spec(data)[1])
    except (ConvnetError, OSError, KeyError, ValueError):
      _CLASSES[key] = None
  return _CLASSES[key]


def collapsed(record: Mapping[str, Any]) -> bool:
  """Whether a finished run's training loss stayed at chance (`records.collapsed`)."""
  return records_lib.collapsed(record, num_classes(record))


def counted(record: Mapping[str, Any]) -> bool:
  """Whether the record counts in the statistics: it finished ("done") and did not collapse."""
  return record["status"] == "done" and not collapsed(record)


def accuracies_by_seed(records: Sequence[Mapping[str, Any]], setting: str) -> dict[Any, float]:
  """{seed: test accuracy at best validation} of `setting`'s counted runs (`counted`)."""
  return {
    records_lib.seed(r): r[METRICS["test"]]
    for r in records
    if r["setting"] == setting and counted(r) and METRICS["test"] in r
  }


def collapsed_runs(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The finished runs that collapsed, in sweep order: `cell`, `setting`, `train_loss`,
  `chance_loss` (ln of the number of classes) and `test_accuracy` (at best validation)."""
  rows = []
  for r in sorted(records, key=lambda r: r["index"]):
    if r["status"] == "done" and collapsed(r):
      rows.append(
        {
          "cell": r["cell"],
          "setting": r["setting"],
          "train_loss": r["train_loss"],
          "chance_loss": records_lib.chance_loss(num_classes(r)),
          "test_accuracy": r.get(METRICS["test"], math.nan),
        }
      )
  return rows


def _mean(records: Sequence[Mapping[str, Any]], key: str) -> float:
  values = [r[key] for r in records if r.get(key) is not None]
  return float(np.mean(values)) if values else math.nan


def varying_fields(records: Sequence[Mapping[str, Any]]) -> list[str]:
  """The override fields, seed aside, whose value is not the same in every record."""
  fields = []
  for record in records:
    for field in record["overrides"]:
      if field != "seed" and field not in fields:
        fields.append(field)
  missing = object()
  return [
    f
    for f in fields
    if len({json.dumps(r["overrides"].get(f, missing), default=str) for r in records}) > 1
  ]


def summarize(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One row per setting, in the order of each setting's first cell.

  Only finished cells (status "done") that did not collapse (`counted`) count
  in a row's statistics; accuracies' intervals are `accuracy_interval`'s.
  `seeds` counts them, `collapsed` the finished runs left out, and
  `still_improving` those counted whose best validation epoch was their last
  (None where no record tells). `not_finished` counts the other cells but
  those that successive halving pruned: where a sweep has pruned cells, each
  row counts its own in `pruned` (a sweep without any has no such key).
  """
  settings: dict[str, list[Mapping[str, Any]]] = {}
  halved = any(r["status"] == "pruned" for r in records)
  for record in sorted(records, key=lambda r: r["index"]):
    settings.setdefault(record["setting"], []).append(record)
  fields = varying_fields(records)
  # What two models must share to be compared: the data, the optimizer, the compute dtype.
  shared = [f for f in fields if shared_by_compared_models(f)]
  rows = []
  for setting, cells in settings.items():
    finished = [r for r in cells if r["status"] == "done"]
    done = [r for r in finished if counted(r)]
    pruned = [r for r in cells if r["status"] == "pruned"]
    improving = [records_lib.still_improving(r) for r in done]
    first = cells[0]
    row = {
      "setting": setting,
      "label": short_label(first["overrides"], fields) or setting,
      "context": short_label(first["overrides"], shared, fields),
      "model": first["config"]["model"]["name"],
      **{f: first["overrides"].get(f) for f in fields},
      "seeds": len(done),
      "collapsed": len(finished) - len(done),
      "still_improving": None
      if all(i is None for i in improving)
      else sum(1 for i in improving if i),
      "not_finished": len(cells) - len(finished) - len(pruned),
      **({"pruned": len(pruned)} if halved else {}),
      "num_params": _mean(done, "num_params"),
      "flops_per_example": _mean(done, "flops_per_example"),
      "wall_time_s": _mean(done, "wall_time_s"),
      "train_examples_per_sec": _mean(done, "train_examples_per_sec"),
      "vmap_group_size": max((r.get("vmap_group_size", 1) for r in done), default=1),
    }
    for name, key in METRICS.items():
      values = [r[key] for r in done if key in r]  # runs without a validation split have none
      blank = dict.fromkeys(("mean", "std", "ci_low", "ci_high"), math.nan)
      stats_ = accuracy_interval(values) if values else blank
      row |= {f"{name}_{k}": v for k, v in stats_.items()}
    for name in other_test_metrics(records):
      values = [r[f"{name}{AT_BEST}"] for r in done if f"{name}{AT_BEST}" in r]
      summary = accuracy_interval if "accuracy" in name else interval
      row |= {f"{name}_{k}": v for k, v in (summary(values) if values else blank).items()}
    rows.append(row)
  return rows


def pruned_settings(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The settings that successive halving pruned (`convnet.halving`), in sweep order.

  Each has `setting`, `label` and `model` (as in `summarize`), `seeds` (its
  pruned cells), `epoch` (the rung they stopped after; the latest, should seeds
  differ) and `validation_mean`: the mean over those seeds of the best
  validation accuracy up to there (NaN if none had one). Test accuracy is never
  read. Empty for a sweep without pruned cells.
  """
  fields = varying_fields(records)
  settings: dict[str, list[Mapping[str, Any]]] = {}
  for record in sorted(records, key=lambda r: r["index"]):
    if record["status"] == "pruned":
      settings.setdefault(record["setting"], []).append(record)
  rows = []
  for setting, cells in settings.items():
    first = cells[0]
    rows.append(
      {
        "setting": setting,
        "label": short_label(first["overrides"], fields) or setting,
        "model": first["config"]["model"]["name"],
        "seeds": len(cells),
        "epoch": max(r["pruned_at_epoch"] for r in cells),
        "validation_mean": _mean(cells, METRICS["validation"]),
      }
    )
  return rows


AT_BEST = "_at_best_validation"


def other_test_metrics(records: Sequence[Mapping[str, Any]]) -> list[str]:
  """The test metrics the records hold beside accuracy (`test_loss`, ...), sorted.

  Each is a record's `test_<name>_at_best_validation`: whatever metric the
  steps report (`steps.example_metrics`) reaches the report this way.
  """
  keys = {k for r in records if r.get("status") == "done" for k in r}
  return sorted(
    k.removesuffix(AT_BEST)
    for k in keys
    if k.startswith("test_") and k.endswith(AT_BEST) and k != METRICS["test"]
  )


def difference_interval(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
  """mean(a) - mean(b), with Welch's 95% confidence interval (unequal variances) and p-value
  (`stats.welch_difference`: `difference`, `ci_low`, `ci_high`, `p`)."""
  return stats_lib.welch_difference(a, b)


def compare(a: Mapping[Any, float], b: Mapping[Any, float]) -> dict[str, Any]:
  """Setting a minus setting b, from {seed: accuracy} of each: paired where seeds are shared.

  Returns Welch's `difference_interval` over all seeds of each (`difference`,
  `ci_low`, `ci_high`, and its p-value as `p_welch`); the paired difference
  over the shared seeds (`stats.paired_difference`: `paired_seeds`,
  `paired_difference`, `paired_ci_low`, `paired_ci_high`, `p_paired`); and
  `p` with `test`: the paired p-value ("paired") where 2 or more seeds are
  shared, else Welch's ("Welch").
  """
  welch = difference_interval(list(a.values()), list(b.values()))
  paired = stats_lib.paired_difference(a, b)
  use_paired = paired["seeds"] >= 2
  return {
    "difference": welch["difference"],
    "ci_low": welch["ci_low"],
    "ci_high": welch["ci_high"],
    "p_welch": welch["p"],
    **{f"paired_{k}": paired[k] for k in ("seeds", "difference", "ci_low", "ci_high")},
    "p_paired": paired["p"],
    "p": paired["p"] if use_paired else welch["p"],
    "test": "paired" if use_paired else "Welch",
  }


def names_setting(overrides: Mapping[str, Any], reference: str) -> bool:
  """Whether `reference`'s `field=value` parts (space-separated) all hold for `overrides`.

  A field may be named by any dotted suffix (`padding` for `model.conv.padding`)
  and a value as the report prints it (`16,32,32`, `2x2`), so that a setting's
  label names it however many of the sweep's settings have finished.
  """
  parts = reference.split()
  for part in parts:
    key, equals, value = part.partition("=")
    if not equals or not any(
      (field == key or field.endswith("." + key)) and display.setting_value(v) == value
      for field, v in overrides.items()
      if field != "seed"
    ):
      return False
  return bool(parts)


def against_reference(
  records: Sequence[Mapping[str, Any]], reference: str | None = None
) -> list[dict[str, Any]]:
  """Each setting's test accuracy minus a reference's on the same test set, paired and Welch's.

  Test accuracy is at the epoch of best validation accuracy (`METRICS["test"]`),
  as fractions (0.01 is one percentage point), one value per finished seed.
  Settings on different test sets (differing in `DATASET_FIELDS`) are never
  subtracted. By default each test set's reference is its first setting with a
  finished seed. `reference` names one setting instead: its label as the report
  prints it (`padding=VALID`), its full setting name, or `field=value` parts
  that only it satisfies (`names_setting`); then only the settings on its test
  set are compared, and none if it has no finished seed. Parts that name one
  setting of each model (`dtype=float32` in a sweep of two models) give each
  model its own reference: each setting minus its model's. Each row has `label`
  and `setting`, `reference` and `reference_setting` (the reference's), `model`,
  `seeds`, the fields of `compare` (Welch's `difference`, `ci_low` and `ci_high`, NaN with fewer
  than 2 seeds on either side; the paired difference over shared seeds; `p`),
  and `p_holm` and `survives` (`stats.with_holm`): the rows are one family.
  Collapsed runs take no part (`counted`). When the sweep varies the learning
  rate, each arm takes part at the rate validation chose for it
  (`tune_learning_rate`), its label naming that rate; the other rates take no part.

  Raises:
    DataError: `reference` names no setting, or more than one.
  """
  if tuned := tune_learning_rate(records):
    chosen = {arm["setting"] for arm in tuned if arm["setting"]}
    records = [r for r in records if r["setting"] in chosen]
  rows = summarize(records)
  values = {}
  for row in rows:
    if accuracies := accuracies_by_seed(records, row["setting"]):
      values[row["setting"]] = accuracies
  overrides = {r["setting"]: r["overrides"] for r in records}

  def test_set(row):
    return tuple(display.setting_value(row.get(f)) for f in DATASET_FIELDS)

  if reference is None:
    bases = {}
    for row in rows:
      if row["setting"] in values:
        bases.setdefault((test_set(row), None), row)
  else:
    matches = [r for r in rows if reference in (r["label"], r["setting"])] or [
      r for r in rows if names_setting(overrides[r["setting"]], reference)
    ]
    labels = ", ".join(repr(r["label"]) for r in (matches if len(matches) > 1 else rows))
    if not matches:
      raise DataError(f"--reference={reference!r} names no setting of this sweep; one of {labels}")
    per_model = len({r["model"] for r in matches}) == len(matches)
    if len(matches) > 1 and not per_model:
      raise DataError(
        f"--reference={reference!r} names {len(matches)} settings ({labels}): "
        "give one's whole label, or parts that name one setting of each model"
      )
    bases = {
      (test_set(m), m["model"] if per_model and len(matches) > 1 else None): m
      for m in matches
      if m["setting"] in values
    }
  differences = []
  for row in rows:
    base = bases.get((test_set(row), row["model"])) or bases.get((test_set(row), None))
    if base is None or row["setting"] == base["setting"] or row["setting"] not in values:
      continue
    differences.append(
      {
        "label": row["label"],
        "setting": row["setting"],
        "reference": base["label"],
        "reference_setting": base["setting"],
        "model": row["model"],
        "seeds": len(values[row["setting"]]),
        **compare(values[row["setting"]], values[base["setting"]]),
      }
    )
  return stats_lib.with_holm(differences)


def matched_pairs(
  records: Sequence[Mapping[str, Any]],
  tolerance: float = 0.05,
  baseline: str = models.BASELINE,
) -> list[dict[str, Any]]:
  """Each model against the baseline model at matched parameter counts, on test accuracy.

  Each setting of a model other than `baseline` (a `model.name`; by default
  `models.BASELINE`, the dense network) is paired with the baseline's setting
  of the nearest parameter count, if that is within `tolerance` of it, among
  the baseline's settings that share its other fields (the data, the
  optimizer, the compute dtype: `shared_by_compared_models`). When the sweep varies the
  learning rate, the settings are the tuned arms of `tune_learning_rate`, each
  at its own chosen rate.

  Returns:
    One pair per paired setting, in sweep order: `model` and `baseline` (the
    two `summarize` rows, or `tune_learning_rate` arms), the `compare` fields
    of their test accuracies (model minus baseline: paired over shared seeds,
    and Welch's), and `p_holm` and `survives` with all pairs as one family
    (`stats.with_holm`). Collapsed runs take no part (`counted`).
  """
  if LEARNING_RATE in varying_fields(records):
    rows = [arm for arm in tune_learning_rate(records) if arm["seeds"]]
  else:
    rows = [r for r in summarize(records) if r["seeds"]]
  pairs = []
  for row in (r for r in rows if r["model"] != baseline):
    candidates = [r for r in rows if r["model"] == baseline and r["context"] == row["context"]]
    if not candidates:
      continue
    match = min(candidates, key=lambda b: abs(b["num_params"] - row["num_params"]))
    if abs(match["num_params"] - row["num_params"]) > tolerance * row["num_params"]:
      continue
    pairs.append(
      {"model": row, "baseline": match}
      | compare(
        accuracies_by_seed(records, row["setting"]), accuracies_by_seed(records, match["setting"])
      )
    )
  return stats_lib.with_holm(pairs)


def learning_rate(record: Mapping[str, Any]) -> float | None:
  """The record's learning rate: its override, else its config's."""
  if LEARNING_RATE in record["overrides"]:
    return record["overrides"][LEARNING_RATE]
  return record["config"].get("optimizer", {}).get("learning_rate")


def tune_learning_rate(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Per arm (a setting without its learning rate), the rate of best mean validation accuracy.

  Empty when the sweep does not vary the learning rate. Test accuracy never
  takes part in the choice; the arm reports it at the chosen rate. A rate
  competes only if every seed it ran finished and it ran as many seeds as the
  arm's other rates: a rate where a seed diverged or failed, or whose seeds are
  not all recorded yet, is set aside (`set_aside` says why), since its mean
  over the surviving seeds is not comparable with the others' and divergence
  disqualifies a rate; so does a seed that collapsed (`collapsed`). So is
  every rate of runs without a validation split set aside.
  A rate that successive halving pruned (a cell of status "pruned") takes no
  part either, and is listed in `pruned`.
  Of rates with equal means, the smallest is chosen. An arm with no competing
  rate has `learning_rate` None and no statistics.

  Each arm has `label`, `model`, `context` (what the arms of two models
  must share to be compared), `grid` (its rates, ascending),
  `learning_rate` and `setting` (the chosen rate and its setting), `set_aside`
  ({rate: reason}), `pruned` ({rate: its `pruned_settings` row}), `rates`
  (the `summarize` row of each rate, ascending, with its `learning_rate`), and
  the chosen row's `seeds`, `num_params` and `validation_*`/`test_*` statistics.
  """
  fields = varying_fields(records)
  if LEARNING_RATE not in fields:
    return []
  others = [f for f in fields if f != LEARNING_RATE]
  shared = [f for f in others if shared_by_compared_models(f)]
  rows = {row["setting"]: row for row in summarize(records)}
  pruned_rows = {row["setting"]: row for row in pruned_settings(records)}
  arms: dict[str, dict[float, list[Mapping[str, Any]]]] = {}
  firsts: dict[str, Mapping[str, Any]] = {}
  for record in sorted(records, key=lambda r: r["index"]):
    plain = {k: v for k, v in record["overrides"].items() if k not in ("seed", LEARNING_RATE)}
    arm = json.dumps(plain, default=str)
    firsts.setdefault(arm, record)
    arms.setdefault(arm, {}).setdefault(learning_rate(record), []).append(record)
  tuned = []
  for arm, by_rate in arms.items():
    first = firsts[arm]
    grid = sorted(by_rate)
    expected = max(len(cells) for cells in by_rate.values())
    set_aside, scores, pruned = {}, {}, {}
    for rate in grid:
      cells = by_rate[rate]
      if any(r["status"] == "pruned" for r in cells):
        pruned[rate] = pruned_rows[next(r["setting"] for r in cells if r["status"] == "pruned")]
        continue
      statuses = [r["status"] for r in cells if r["status"] != "done"]
      statuses += ["collapsed" for r in cells if r["status"] == "done" and collapsed(r)]
      reasons = [f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses)]
      if len(cells) < expected:
        reasons.append(f"{len(cells)} of {expected} seeds recorded")
      if any(METRICS["validation"] not in r for r in cells if r["status"] == "done"):
        reasons.append("no validation split to choose by (data.validation_fraction=0)")
      if reasons:
        set_aside[rate] = ", ".join(reasons)
      else:  # fsum: the same seeds' accuracies give the same mean in any order, so ties are ties.
        scores[rate] = math.fsum(r[METRICS["validation"]] for r in cells) / len(cells)
    # The best mean; among equal means, the smallest rate.
    chosen = max(scores, key=lambda rate: (scores[rate], -rate)) if scores else None
    per_rate = [rows[by_rate[rate][0]["setting"]] | {"learning_rate": rate} for rate in grid]
    row = {
      "label": short_label(first["overrides"], others, fields) or "base",
      "context": short_label(first["overrides"], shared, fields),
      "model": first["config"]["model"]["name"],
      "grid": grid,
      "learning_rate": chosen,
      "setting": None if chosen is None else by_rate[chosen][0]["setting"],
      "set_aside": set_aside,
      "pruned": pruned,
      "rates": per_rate,
    }
    keys = ["seeds", "num_params", "collapsed", "still_improving"] + [
      f"{name}_{k}" for name in METRICS for k in ("mean", "std", "ci_low", "ci_high")
    ]
    best = rows[row["setting"]] if chosen is not None else {"seeds": 0}
    tuned.append(row | {k: best.get(k, math.nan) for k in keys})
  return tuned


def short_label(
  overrides: Mapping[str, Any], fields: Sequence[str], names_among: Sequence[str] = ()
) -> str:
  """`kernel_size=5`: `fields` by their last name, or more of it where that is shared.

  With `data.name` and `model.name` both among `names_among` (by default,
  `fields`): `data.name=x model.name=y`.
  """
  parts = []
  for field in fields:
    if field in overrides:
      name = short_name(field, names_among or fields)
      parts.append(f"{name}={display.setting_value(overrides[field])}")
  return " ".join(parts)


def short_name(field: str, fields: Sequence[str]) -> str:
  """The shortest dotted suffix of `field` that no other of `fields` ends with."""
  names = field.split(".")
  for k in range(1, len(names) + 1):
    suffix = ".".join(names[-k:])
    if not any(
      other != field and (other == suffix or other.endswith("." + suffix)) for other in fields
    ):
      return suffix
  return field
