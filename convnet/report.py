r"""Tables and plots of a sweep's records: mean, spread and 95% intervals over seeds.

  python -m convnet.report DIR [--out=DIR] [--reference=LABEL]

Reads `DIR/records/*.json`, written by `convnet.sweep`, through
`convnet.records`: a record that fails its checks (a field of the wrong type
or range), or records of two sweeps (configs that differ outside the swept
fields and the seed), stop the report in one line naming the files and the
field, before anything is written; no record is left out or averaged with
another sweep's. It writes:
- `report.md` and `report.csv`: one row per setting (the cells that differ
  only by seed), in sweep order: mean ± standard deviation and a 95%
  interval over seeds that stays within [0, 100] (Student's t on the logit
  scale, `stats.accuracy_interval`) of the best validation accuracy and of
  the test accuracy at that epoch; parameters, FLOPs per training example,
  wall time and examples/s; each setting's runs still improving at their last
  epoch; then each setting's test accuracy minus a reference setting's on the
  same test set (`--reference`, by default the first), paired over shared
  seeds with Welch's interval beside it and Holm-adjusted p-values, except
  where the sweep pairs models with the baseline (`models.BASELINE`, the
  dense network), tunes rates or varies N; the runs that collapsed (training
  loss at chance: left out of every mean); and the statistics' methods and
  the multiple-comparison policy, in words;
- `accuracy.png`: validation and test accuracy against the swept setting;
- `params.png`, when the sweep has more than one model: test accuracy against
  parameter count, one series per model;
- `learning_rate.png`, when the sweep varies the learning rate (below);
- `learning_curve.png` and learning-curve tables, when the sweep varies
  `data.num_train` (see `convnet.learning_curve`);
- `samples_features.png` and a table of the best input per N, for a sweep of
  the dense network alone over N and one kind of input (see
  `convnet.samples_features`).

Cells that successive halving pruned (`convnet.halving`, status "pruned") take
no part in any mean, interval, choice or comparison; `report.md` names each
pruned setting, the epoch it stopped after and its mean validation accuracy
there, beside its arm's chosen rate where the sweep tunes the learning rate.

When a sweep gives each setting a grid of learning rates (`optimizer.learning_rate`
among its varying fields), each arm (a setting without its rate and seed) is
tuned: `analysis.tune_learning_rate` picks the rate with the best mean validation
accuracy over seeds, never looking at test accuracy; `report.md` gains a
table of the chosen rates with the test accuracy there, the table of each
model minus the baseline compares the arms at their own chosen rates, and `learning_rate.png`
plots each arm's accuracy against the rate.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import app, flags

from convnet import analysis, cli, files, learning_curve, samples_features, sources, stats
from convnet import predictions as predictions_lib
from convnet import records as records_lib
from convnet.errors import ConvnetError, DataError

# ----------------------------------------------------------------------------
# Writing


def _percent(row: Mapping[str, Any], name: str) -> tuple[str, str]:
  mean, std = row[f"{name}_mean"], row[f"{name}_std"]
  if math.isnan(mean):
    return "–", "–"
  spread = "–" if math.isnan(std) else f"{100 * std:.2f}"
  ci = (
    "–"
    if math.isnan(row[f"{name}_ci_low"])
    else f"[{100 * row[f'{name}_ci_low']:.2f}, {100 * row[f'{name}_ci_high']:.2f}]"
  )
  return f"{100 * mean:.2f} ± {spread}", ci


def difference_ci(difference: Mapping[str, Any], prefix: str = "") -> str:
  """`[+0.54, +2.33]`: a difference's 95% interval in percentage points; `–` where it has none.

  `prefix`: "paired_" for the paired interval, which says so where fewer than
  2 seeds are shared.
  """
  if prefix == "paired_" and difference["paired_seeds"] < 2:
    return "fewer than 2 shared seeds"
  low, high = difference[f"{prefix}ci_low"], difference[f"{prefix}ci_high"]
  if math.isnan(low):
    return "–"
  return f"[{100 * low:+.2f}, {100 * high:+.2f}]"


def p_value(p: float) -> str:
  """`0.0123`, `<0.0001`, or `–` where there is none."""
  if math.isnan(p):
    return "–"
  return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def tested(difference: Mapping[str, Any]) -> list[str]:
  """The cells of a comparison's test: paired interval, p (its test named where Welch's), Holm's
  adjusted p, whether it survives, Welch's interval."""
  p = p_value(difference["p"])
  if difference["test"] == "Welch" and p != "–":
    p += " (Welch)"
  survives = {None: "–", True: "yes", False: "no"}[difference["survives"]]
  return [
    difference_ci(difference, "paired_"),
    p,
    p_value(difference["p_holm"]),
    survives,
    difference_ci(difference),
    *example_cells(difference),
  ]


def example_cells(difference: Mapping[str, Any]) -> list[str]:
  """The cells of a comparison's test-example statistics (`predictions.compare_settings`): the
  bootstrap interval over seeds and examples, and the seed pairs McNemar's test tells apart;
  `–` where the runs' predictions were not kept."""
  if "bootstrap_ci_low" not in difference:
    return ["–", "–"]
  low, high = difference["bootstrap_ci_low"], difference["bootstrap_ci_high"]
  return [
    f"[{100 * low:+.2f}, {100 * high:+.2f}]",
    f"{difference['mcnemar_below']} of {difference['example_seeds']}",
  ]


TEST_COLUMNS = (
  "paired 95% CI | p | Holm p | survives Holm (0.05) | Welch 95% CI "
  "| seeds × examples 95% CI | McNemar p < 0.05",
  "---|---|---|---|---|---|---",
)


@dataclasses.dataclass
class Examples:
  """The test predictions kept beside a sweep's records (`read_examples`), for comparisons."""

  runs: dict[str, dict[Any, predictions_lib.Predictions]]  # setting -> {seed: its predictions}
  clusters: dict[str, Any]  # setting -> None or (N,) the cluster of each of its test examples
  missing: str = ""  # why some settings have none, in words; "" if none lacks them

  def compare(self, setting: str, reference: str) -> dict[str, Any]:
    """`predictions.compare_settings` of `setting` minus `reference`; {} where either lacks
    predictions, or where their counted seeds differ (the table's difference is then over
    other seeds than the shared ones, and an interval over the shared ones alone would not be
    its interval).

    Raises:
      DataError: the two settings' predictions are not of the same test examples (a file
        beside the records that is another run's, or damaged), in one line.
    """
    if setting not in self.runs or reference not in self.runs:
      return {}
    if set(self.runs[setting]) != set(self.runs[reference]):
      return {}
    clusters = self.clusters[setting]
    try:
      return predictions_lib.compare_settings(self.runs[setting], self.runs[reference], clusters)
    except ValueError as e:
      raise DataError(
        f"the test predictions kept beside the records of {setting} and of {reference} are not "
        f"of the same test examples ({e}): one of those files is damaged or another run's; move "
        "it away (the report then compares seeds only)"
      ) from None


def read_examples(records: Sequence[Mapping[str, Any]], sweep_dir: str) -> Examples:
  """The counted runs' test predictions, kept beside their records in `sweep_dir/records`
  (`predictions.for_records`), per setting: a setting has them only if all its runs do. Where a
  setting's test examples come in clusters (`predictions.cluster_labels`), they are read from its
  data; a dataset that cannot be read here leaves its settings without them, as `missing` says.

  Raises:
    FileFormatError: a predictions file that is damaged or is not its record's run's.
  """
  runs, clusters, lacking, unreadable = {}, {}, [], ""
  by_data: dict[str, Any] = {}  # the clusters of each test set, read once (a source loads data)
  counted = [r for r in records if analysis.counted(r)]
  for setting in dict.fromkeys(r["setting"] for r in counted):
    mine = [r for r in counted if r["setting"] == setting]
    found = predictions_lib.for_records(sweep_dir, mine)
    if found is None:
      lacking.append(setting)
      continue
    data = mine[0]["config"]["data"]
    key = json.dumps(data, sort_keys=True, default=str)
    try:
      if key not in by_data:
        by_data[key] = predictions_lib.cluster_labels(data)
    except ConvnetError as e:
      unreadable = f"their test examples' clusters could not be read ({e})"
      continue
    clusters[setting] = by_data[key]
    runs[setting] = {records_lib.seed(r): p for r, p in zip(mine, found, strict=True)}
  missing = []
  if lacking:
    settings = "1 setting" if len(lacking) == 1 else f"{len(lacking)} settings"
    missing.append(f"the runs of {settings} have no test predictions beside their records")
  if unreadable:
    missing.append(unreadable)
  return Examples(runs, clusters, "; ".join(missing))


def markdown(
  rows: Sequence[Mapping[str, Any]],
  records: Sequence[Mapping[str, Any]],
  reference: str | None = None,
  examples: Examples | None = None,
) -> str:
  """The table of settings, each setting against a reference, the settings successive halving
  pruned, the runs that collapsed, the cells that did not finish, then the statistics' methods,
  the multiple-comparison policy and the run-health rules in words (`methods_markdown`).

  Each setting is compared with a reference setting on its test set
  (`analysis.against_reference`: `reference`, or by default each test set's
  first), except in sweeps with tables of their own: by default, sweeps that
  pair models with the baseline (`analysis.matched_pairs`); always, sweeps
  that draw a learning curve or pair models at tuned learning rates. A sweep
  of one model's settings that tunes the rate compares each arm at its chosen
  rate. With `examples` (the
  runs' kept test predictions, `read_examples`), each comparison also gets an
  interval over seeds and test examples and McNemar's test per seed pair.

  Raises:
    DataError: `reference` names no setting or several, or the sweep draws a
      learning curve or pairs models at tuned learning rates.
  """
  lines = [
    "| setting | model | parameters | MFLOP/example | seeds | validation % (mean ± std) "
    "| validation 95% CI | test % (mean ± std) | test 95% CI | wall time (s) | still improving |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    validation, validation_ci = _percent(row, "validation")
    test, test_ci = _percent(row, "test")
    params = "–" if math.isnan(row["num_params"]) else f"{row['num_params']:,.0f}"
    flops = "–" if math.isnan(row["flops_per_example"]) else f"{row['flops_per_example'] / 1e6:.2f}"
    wall = "–" if math.isnan(row["wall_time_s"]) else f"{row['wall_time_s']:.1f}"
    notes = [f"{row['not_finished']} did not finish"] if row["not_finished"] else []
    notes += [f"{row['collapsed']} collapsed"] if row.get("collapsed") else []
    notes += [f"{row['pruned']} pruned"] if row.get("pruned") else []
    seeds = str(row["seeds"]) + (f" ({', '.join(notes)})" if notes else "")
    lines.append(
      f"| {row['label']} | {row['model']} | {params} | {flops} | {seeds} | {validation} "
      f"| {validation_ci} | {test} | {test_ci} | {wall} | {_improving(row)} |"
    )
  lines += other_metrics_markdown(rows, analysis.other_test_metrics(records))
  tuned = analysis.tune_learning_rate(records)
  if tuned:
    lines += ["", *tuned_markdown(tuned)]
  lines += pruned_markdown(analysis.pruned_settings(records), tuned)
  examples = examples or Examples({}, {})
  pairs = [
    p | examples.compare(p["model"]["setting"], p["baseline"]["setting"])
    for p in analysis.matched_pairs(records)
  ]
  for model in dict.fromkeys(p["model"]["model"] for p in pairs):
    lines += ["", *pairs_markdown([p for p in pairs if p["model"]["model"] == model], bool(tuned))]

  curve = learning_curve.section(records)
  if reference is not None and (curve or (tuned and pairs)):
    compared = "models at each N" if curve else "arms at their tuned learning rates"
    raise DataError(
      f"--reference={reference!r}: this sweep's report compares {compared}, not settings with "
      "a reference; leave --reference out"
    )
  if not curve and (reference is not None or not pairs):
    differences = [
      d | examples.compare(d["setting"], d["reference_setting"])
      for d in analysis.against_reference(records, reference)
    ]
    lines += reference_markdown(differences, bool(tuned))
    if reference is not None and not differences:
      lines += [
        "",
        f"No setting is compared with {reference}: it has no finished seed, or no other "
        "setting shares its test set.",
      ]
  if curve:
    lines += ["", *curve]
  if grid := samples_features.section(records):
    lines += ["", *grid]
  if any(row["vmap_group_size"] > 1 for row in rows):
    lines += [
      "",
      "Seeds trained together by one vmapped program share its wall time: the column "
      "gives the whole group's.",
    ]
  lines += collapsed_markdown(analysis.collapsed_runs(records))
  failed = [r for r in records if r["status"] not in ("done", "pruned")]
  if failed:
    lines += ["", "Cells that did not finish:", ""]
    for r in failed:
      error = (r.get("error") or "").splitlines()[0] if r.get("error") else ""
      lines.append(f"- `{r['cell']}`: {r['status']}: {error}")
  lines += ["", *methods_markdown(examples.missing)]
  return "\n".join(lines) + "\n"


def _improving(row: Mapping[str, Any]) -> str:
  """`2 of 3`: the setting's counted runs whose best validation epoch was their last."""
  if row.get("still_improving") is None or not row["seeds"]:
    return "–"
  return f"{row['still_improving']} of {row['seeds']}"


def collapsed_markdown(runs: Sequence[Mapping[str, Any]]) -> list[str]:
  """The runs that collapsed (`analysis.collapsed_runs`), each named; [] if none."""
  if not runs:
    return []
  lines = [
    "",
    "Collapsed runs (finished, but their training loss stayed at chance), left out of every "
    "mean, interval, choice and comparison above:",
    "",
  ]
  for run in runs:
    accuracy = run["test_accuracy"]
    test = "" if math.isnan(accuracy) else f", test accuracy {100 * accuracy:.2f}%"
    lines.append(
      f"- `{run['cell']}`: final training loss {run['train_loss']:.4f} against chance's "
      f"{run['chance_loss']:.4f}{test}"
    )
  return lines


def methods_markdown(missing: str = "") -> list[str]:
  """What every report says of its statistics: intervals, pairing, the test-example statistics
  (and `missing`: why some comparisons lack them), the correction policy, run health."""
  chance = 100 * records_lib.CHANCE_TOLERANCE
  examples = predictions_lib.METHOD + (f" Here {missing}: their cells show –." if missing else "")
  return [
    "Statistics. " + stats.INTERVAL_METHOD,
    "",
    stats.DIFFERENCE_METHOD,
    "",
    examples,
    "",
    stats.POLICY,
    "",
    "Run health. A finished run is collapsed when its final training loss is at chance's, "
    f"ln(number of classes), or above it (at most {chance:g}% below counts as at chance); "
    "collapsed runs are listed apart and left "
    "out of every mean, interval and comparison. A run is still improving when its best "
    "validation epoch is its last: the column counts such runs among each setting's seeds.",
  ]


def pairs_markdown(pairs: Sequence[Mapping[str, Any]], tuned: bool) -> list[str]:
  """The table of one model's settings minus the baseline's (`analysis.matched_pairs`)."""
  model, baseline = pairs[0]["model"]["model"], pairs[0]["baseline"]["model"]
  at_rates = ", each arm at its tuned learning rate" if tuned else ""
  lines = [
    f"{model[:1].upper() + model[1:]} minus {baseline} at matched parameter counts, test "
    f"accuracy (percentage points), paired over seeds, with Welch's 95% interval{at_rates}; "
    "these pairs are one family for Holm's correction:",
    "",
    f"| {model} | {baseline} | parameters ({model} / {baseline}) | difference "
    f"| {TEST_COLUMNS[0]} |",
    f"|---|---|---|---|{TEST_COLUMNS[1]}|",
  ]
  for p in pairs:
    labels = (
      p[side]["label"] + (f" at {p[side]['learning_rate']:g}" if tuned else "")
      for side in ("model", "baseline")
    )
    lines.append(
      f"| {' | '.join(labels)} | "
      f"{p['model']['num_params']:,.0f} / {p['baseline']['num_params']:,.0f} | "
      f"{100 * p['difference']:+.2f} | {' | '.join(tested(p))} |"
    )
  return lines


def reference_markdown(differences: Sequence[Mapping[str, Any]], tuned: bool = False) -> list[str]:
  """The table of each setting minus its reference (`analysis.against_reference`), if any;
  `tuned`: the settings are arms at their tuned learning rates."""
  if not differences:
    return []
  at_rates = ", each arm at the learning rate validation chose for it" if tuned else ""
  lines = [
    "",
    "Each setting minus a reference setting on the same test set, test accuracy at best "
    f"validation (percentage points){at_rates}, paired over seeds, with Welch's 95% interval; "
    "the rows are one family for Holm's correction:",
    "",
    f"| setting | minus | model | seeds | difference | {TEST_COLUMNS[0]} |",
    f"|---|---|---|---|---|{TEST_COLUMNS[1]}|",
  ]
  for d in differences:
    lines.append(
      f"| {d['label']} | {d['reference']} | {d['model']} | {d['seeds']} "
      f"| {100 * d['difference']:+.2f} | {' | '.join(tested(d))} |"
    )
  return lines


def tuned_markdown(tuned: Sequence[Mapping[str, Any]]) -> list[str]:
  """The table of tuned arms: the chosen learning rate and the accuracies there."""
  lines = [
    "Tuned learning rate per arm: the rate of best mean validation accuracy over seeds "
    "(test accuracy takes no part in the choice; of equal means, the smaller rate); rates "
    "where a seed diverged, failed, collapsed or is not recorded are set aside.",
    "",
    "| arm | model | learning rate | grid | set aside | seeds | validation % (mean ± std) "
    "| test % (mean ± std) | test 95% CI |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for arm in tuned:
    chosen = "none" if arm["learning_rate"] is None else f"{arm['learning_rate']:g}"
    grid = ", ".join(f"{rate:g}" for rate in arm["grid"])
    set_aside = "; ".join(f"{rate:g} ({why})" for rate, why in arm["set_aside"].items()) or "–"
    validation, _ = _percent(arm, "validation")
    test, test_ci = _percent(arm, "test")
    lines.append(
      f"| {arm['label']} | {arm['model']} | {chosen} | {grid} | {set_aside} | {arm['seeds']} "
      f"| {validation} | {test} | {test_ci} |"
    )
  return lines


def pruned_markdown(
  pruned: Sequence[Mapping[str, Any]], tuned: Sequence[Mapping[str, Any]] = ()
) -> list[str]:
  """The settings successive halving pruned (`analysis.pruned_settings`), each where it stopped;
  beside each arm's chosen rate where the sweep tunes the learning rate. [] if none."""
  if not pruned:
    return []
  lines = [
    "",
    "Pruned by successive halving, on validation accuracy alone: each setting stopped after "
    "the epoch given, at the mean over its seeds of the best validation accuracy up to there, "
    "and takes no part in the means, intervals and comparisons above.",
    "",
  ]
  arms = [(arm, rate) for arm in tuned for rate in arm["pruned"]]
  if arms:
    lines += [
      "| arm | model | chosen learning rate | pruned learning rate | stopped after epoch "
      "| seeds | validation % there (mean) |",
      "|---|---|---|---|---|---|---|",
    ]
    for arm, rate in arms:
      row = arm["pruned"][rate]
      chosen = "none" if arm["learning_rate"] is None else f"{arm['learning_rate']:g}"
      lines.append(
        f"| {arm['label']} | {arm['model']} | {chosen} | {rate:g} | {row['epoch']} "
        f"| {row['seeds']} | {_validation_there(row)} |"
      )
    return lines
  lines += [
    "| setting | model | stopped after epoch | seeds | validation % there (mean) |",
    "|---|---|---|---|---|",
  ]
  for row in pruned:
    lines.append(
      f"| {row['label']} | {row['model']} | {row['epoch']} | {row['seeds']} "
      f"| {_validation_there(row)} |"
    )
  return lines


def _validation_there(row: Mapping[str, Any]) -> str:
  return "–" if math.isnan(row["validation_mean"]) else f"{100 * row['validation_mean']:.2f}"


def other_metrics_markdown(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[str]:
  """A table of the test metrics beside accuracy, mean ± std at best validation; [] if none."""
  if not names:
    return []
  lines = [
    "",
    "Other test metrics at the epoch of best validation accuracy (mean ± std over seeds):",
    "",
    "| setting | " + " | ".join(n.removeprefix("test_") for n in names) + " |",
    "|---|" + "---|" * len(names),
  ]
  for row in rows:
    cells = [_mean_std(row[f"{n}_mean"], row[f"{n}_std"]) for n in names]
    lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
  return lines


def _mean_std(mean: float, std: float) -> str:
  """`0.9604 ± 0.0012`; `0.9604 ± –` with one seed; `–` with none."""
  if math.isnan(mean):
    return "–"
  return f"{mean:.4f} ± " + ("–" if math.isnan(std) else f"{std:.4f}")


def write_csv(rows: Sequence[Mapping[str, Any]], path: str) -> None:
  columns = list(rows[0])
  for row in rows[1:]:
    columns += [c for c in row if c not in columns]
  with files.atomic_open(path, "w") as f:
    writer = csv.DictWriter(f, columns, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})


def _errors(rows, name):
  means = np.array([r[f"{name}_mean"] for r in rows]) * 100
  low = np.array([r[f"{name}_ci_low"] for r in rows]) * 100
  high = np.array([r[f"{name}_ci_high"] for r in rows]) * 100
  # The interval is the logit scale's: it need not be centred on the mean, and may even leave
  # it out (or miss it by a rounding), so an error bar never reaches past the mean the wrong way.
  return means, np.maximum(0, np.nan_to_num(np.stack([means - low, high - means])))


def describe(records: Sequence[Mapping[str, Any]], sweep_dir: str) -> str:
  """`pooling on embedded MNIST (5,000 digits), 10 epochs`: the sweep's folder, data and epochs,
  for titles."""
  dataset = sources.title(records[0]["config"].get("data", {}), sizes=True)
  name = os.path.basename(os.path.normpath(sweep_dir))
  epochs = records[0]["config"].get("num_epochs")
  epochs = f", {epochs} epoch{'' if epochs == 1 else 's'}" if epochs else ""
  return f"{name} on {dataset}{epochs}" if dataset else f"{name}{epochs}"


def numeric_axis(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str | None:
  """The field to plot on a numeric x axis: the one varying field, if all its values are numbers."""
  if len(fields) != 1:
    return None
  values = [row.get(fields[0]) for row in rows]
  numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
  return fields[0] if numbers else None


def plot_accuracy(
  rows: Sequence[Mapping[str, Any]], fields: Sequence[str], path: str, title: str = ""
) -> None:
  """Validation and test accuracy against the swept setting, with 95% intervals."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  numeric = numeric_axis(rows, fields)
  # Long labels (many fields vary) wrap at spaces onto lines under their point; the figure
  # grows to hold them side by side.
  labels = [textwrap.fill(str(r["label"]), 22, break_long_words=False) for r in rows]
  lines = max((label.count("\n") + 1 for label in labels), default=1) if not numeric else 1
  width = max(6.0, (1.6 if lines > 1 else 0.9) * len(rows) + 2)
  fig, ax = plt.subplots(figsize=(width, 4.5 + 0.16 * lines))
  if numeric:
    x = np.array([float(r[numeric]) for r in rows])
    ax.set_xlabel(numeric)
    if np.all(x > 0) and x.max() / x.min() >= 100:
      ax.set_xscale("log")
  else:
    x = np.arange(len(rows), dtype=float)
    if lines > 1:
      ax.set_xticks(x, labels, fontsize=7)
    else:
      ax.set_xticks(x, labels, rotation=25 if len(rows) > 3 else 0, ha="right")
    ax.set_xlabel("setting")
  for offset, name in ((-0.06, "validation"), (0.06, "test")):
    means, errors = _errors(rows, name)
    shift = 0 if numeric else offset
    ax.errorbar(x + shift, means, yerr=errors, fmt="o-" if numeric else "o", capsize=4, label=name)
  ax.set_ylabel("accuracy (%), mean and 95% CI over seeds")
  ax.set_title(f"Accuracy by setting\n{title}" if title else "Accuracy by setting", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  files.save_figure(fig, path, dpi=120)  # atomic: a stop leaves the old one whole
  plt.close(fig)


def plot_params(rows: Sequence[Mapping[str, Any]], path: str, title: str = "") -> None:
  """Test accuracy against parameter count, one series per model (and per data, optimizer...)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for series in dict.fromkeys((r["model"], r.get("context", "")) for r in rows):
    mine = [r for r in rows if (r["model"], r.get("context", "")) == series]
    mine.sort(key=lambda r: r["num_params"])
    means, errors = _errors(mine, "test")
    label = ", ".join(part for part in series if part)
    ax.errorbar(
      [r["num_params"] for r in mine], means, yerr=errors, fmt="o-", capsize=4, label=label
    )
  ax.set_xscale("log")
  ax.set_xlabel("parameters")
  ax.set_ylabel("test accuracy (%), mean and 95% CI over seeds")
  ax.set_title(
    f"Accuracy against parameters\n{title}" if title else "Accuracy against parameters",
    fontsize=10,
  )
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  fig.tight_layout()
  files.save_figure(fig, path, dpi=120)  # atomic: a stop leaves the old one whole
  plt.close(fig)


def plot_learning_rate(tuned: Sequence[Mapping[str, Any]], path: str, title: str = "") -> None:
  """Per arm, validation (solid) and test (dashed) accuracy against the learning rate, with 95%
  intervals; a star marks the chosen rate, a cross each rate set aside."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  marked = set()
  for i, arm in enumerate(tuned):
    color = colors[i % len(colors)]
    rates = [r for r in arm["rates"] if r["seeds"]]
    if not rates:
      continue
    x = np.array([r["learning_rate"] for r in rates], np.float64)
    for name, fmt, shift in (("validation", "o-", 1.0), ("test", "s--", 1.04)):
      means, errors = _errors(rates, name)
      ax.errorbar(
        x * shift,
        means,
        yerr=errors,
        fmt=fmt,
        color=color,
        capsize=3,
        label=f"{arm['label']}, {name}",
      )
    for rate, means in zip(x, _errors(rates, "validation")[0], strict=True):
      if rate in arm["set_aside"]:
        label = None if "set aside" in marked else "set aside"
        marked.add("set aside")
        ax.plot(rate, means, "x", color="black", markersize=10, zorder=5, label=label)
      if rate == arm["learning_rate"]:
        label = None if "chosen" in marked else "chosen rate (best mean validation)"
        marked.add("chosen")
        ax.plot(
          rate,
          means,
          "*",
          color=color,
          markeredgecolor="black",
          markersize=16,
          zorder=5,
          label=label,
        )
  ax.set_xscale("log")
  grid = sorted({rate for arm in tuned for rate in arm["grid"]})
  ax.set_xticks(grid, [f"{rate:g}" for rate in grid])
  ax.minorticks_off()
  ax.set_xlabel("learning rate (test shifted right to show its bars)")
  ax.set_ylabel("accuracy (%), mean and 95% CI over seeds")
  ax.set_title(
    f"Accuracy against learning rate\n{title}" if title else "Accuracy against learning rate",
    fontsize=10,
  )
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=120)  # atomic: a stop leaves the old one whole
  plt.close(fig)


# Every file a report may write: all are checked before any is written.
REPORT_FILES = (
  "report.md",
  "report.csv",
  "accuracy.png",
  "params.png",
  "learning_rate.png",
  learning_curve.FILE,
  samples_features.FILE,
)


def write_report(
  records: Sequence[Mapping[str, Any]],
  out_dir: str,
  title: str = "",
  reference: str | None = None,
  sweep_dir: str | None = None,
) -> list[str]:
  """Writes the table, the CSV and the plots; returns their paths.

  `records`: as `analysis.load_records` reads them, each checked. A report
  never averages seeds of different sweeps: records whose config differs
  outside their cells' swept fields and seed are refused
  (`records.check_one_sweep`), as are a bad record (the report stops on the
  first, naming its file and field, rather than leave it out).
  `reference`: the setting the others are compared with (`markdown`); by default the first.
  `sweep_dir`: where the records were read; the runs' test predictions kept beside them give
  each comparison its statistics over test examples (`read_examples`).

  Raises:
    DataError: as `markdown`, or records of more than one sweep; before anything is written.
  """
  records_lib.check_one_sweep(records)
  rows = analysis.summarize(records)
  examples = read_examples(records, sweep_dir) if sweep_dir else None
  # Before writing anything: it may refuse `reference`.
  text = markdown(rows, records, reference, examples)
  files.prepare_folder(out_dir, REPORT_FILES)
  paths = {name: os.path.join(out_dir, name) for name in ("report.md", "report.csv")}
  files.atomic_write(paths["report.md"], text)
  write_csv(rows, paths["report.csv"])
  finished = [r for r in rows if r["seeds"]]
  if finished:
    paths["accuracy.png"] = os.path.join(out_dir, "accuracy.png")
    plot_accuracy(finished, analysis.varying_fields(records), paths["accuracy.png"], title)
    if len({r["model"] for r in finished}) > 1:
      paths["params.png"] = os.path.join(out_dir, "params.png")
      plot_params(finished, paths["params.png"], title)
  tuned = analysis.tune_learning_rate(records)
  if any(r["seeds"] for arm in tuned for r in arm["rates"]):
    paths["learning_rate.png"] = os.path.join(out_dir, "learning_rate.png")
    plot_learning_rate(tuned, paths["learning_rate.png"], title)

  if curve := learning_curve.write_plot(records, out_dir, title):
    paths["learning_curve.png"] = curve
  if heat_map := samples_features.write_plot(records, out_dir, title):
    paths[samples_features.FILE] = heat_map
  return list(paths.values())


# ----------------------------------------------------------------------------
# Command line

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines this command's flags, when it runs as a program."""
  flags.DEFINE_string(
    "out", None, "Where to write the report; default: the sweep directory.", flag_values=flag_values
  )
  flags.DEFINE_string(
    "reference",
    None,
    "The setting every other on its test set is compared with: its label in the report's "
    "table (e.g. 'padding=VALID') or field=value parts only it has; default: each test set's "
    "first setting. Not for sweeps that tune the learning rate or vary data.num_train.",
    flag_values=flag_values,
  )


def main(argv):
  if len(argv) != 2:
    given = f"; got {' '.join(map(repr, argv[1:]))}" if len(argv) > 2 else ""
    cli.usage_error(
      f"give one sweep directory: python -m convnet.report SWEEP_DIR [--out=DIR] "
      f"[--reference=LABEL]{given}"
    )
  try:
    records = analysis.load_records(argv[1])
    title = describe(records, argv[1])
    paths = write_report(records, FLAGS.out or argv[1], title, FLAGS.reference, argv[1])
  except ConvnetError as e:
    sys.exit(f"error: {e}")
  with open(paths[0]) as f:
    print(f.read())
  print("Wrote " + ", ".join(paths))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
