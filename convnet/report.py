r"""Tables and plots of a sweep's records: mean, spread and 95% intervals over seeds.

  python -m convnet.report DIR [--out=DIR]

Reads `DIR/records/*.json`, written by `convnet.sweep`, and writes:
- `report.md` and `report.csv`: one row per setting (the cells that differ
  only by seed), in sweep order: mean ± standard deviation and a 95%
  confidence interval of the mean (Student's t over seeds) of the best
  validation accuracy and of the test accuracy at that epoch; parameters,
  FLOPs per training example, wall time and examples/s;
- `accuracy.png`: validation and test accuracy against the swept setting;
- `params.png`, when the sweep has more than one model: test accuracy against
  parameter count, one series per model (convnet against dense);
- `learning_rate.png`, when the sweep varies the learning rate (below).

When a sweep gives each setting a grid of learning rates (`optimizer.learning_rate`
among its varying fields), each arm (a setting without its rate and seed) is
tuned: `tune_learning_rate` picks the rate with the best mean validation
accuracy over seeds, never looking at test accuracy; `report.md` gains a
table of the chosen rates with the test accuracy there, the convnet-minus-dense
table compares the arms at their own chosen rates, and `learning_rate.png`
plots each arm's accuracy against the rate.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import app, flags
from scipy import stats

from convnet import cli, formatting, sources
from convnet.errors import ConvnetError, DataError

METRICS = {
  "validation": "best_validation_accuracy",
  "test": "test_accuracy_at_best_validation",
}
# Fields every record has, whatever its status; the rest depend on the status.
RECORD_FIELDS = ("cell", "index", "setting", "overrides", "config", "status")
# The field a sweep's grid of learning rates varies; arms are tuned over it.
LEARNING_RATE = "optimizer.learning_rate"


# ----------------------------------------------------------------------------
# Records and statistics


def load_records(sweep_dir: str) -> list[dict[str, Any]]:
  """The sweep's records, in sweep order."""
  folder = os.path.join(sweep_dir, "records")
  if not os.path.isdir(folder):
    raise DataError(f"{folder} does not exist: is {sweep_dir} a sweep directory?")
  records = []
  for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
    try:
      with open(path) as f:
        record = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: bad JSON and bytes that are not UTF-8.
      raise DataError(f"sweep record {path} cannot be read: {e}") from None
    missing = (
      [k for k in RECORD_FIELDS if k not in record] if isinstance(record, dict) else RECORD_FIELDS
    )
    if missing:
      raise DataError(f"sweep record {path} is not a record: it lacks {', '.join(missing)}")
    records.append(record)
  if not records:
    raise DataError(f"{folder} holds no records yet")
  return sorted(records, key=lambda r: r["index"])


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
  """One row per setting, in the order of each setting's first cell."""
  settings: dict[str, list[Mapping[str, Any]]] = {}
  for record in sorted(records, key=lambda r: r["index"]):
    settings.setdefault(record["setting"], []).append(record)
  fields = varying_fields(records)
  # What a convnet and a dense network must share to be compared: the varying fields outside
  # `model.` (the data, the optimizer).
  shared = [f for f in fields if not f.startswith("model.")]
  rows = []
  for setting, cells in settings.items():
    done = [r for r in cells if r["status"] == "done"]
    first = cells[0]
    row = {
      "setting": setting,
      "label": short_label(first["overrides"], fields) or setting,
      "context": short_label(first["overrides"], shared, fields),
      "model": first["config"]["model"]["name"],
      **{f: first["overrides"].get(f) for f in fields},
      "seeds": len(done),
      "not_finished": len(cells) - len(done),
      "num_params": _mean(done, "num_params"),
      "flops_per_example": _mean(done, "flops_per_example"),
      "wall_time_s": _mean(done, "wall_time_s"),
      "train_examples_per_sec": _mean(done, "train_examples_per_sec"),
      "vmap_group_size": max((r.get("vmap_group_size", 1) for r in done), default=1),
    }
    for name, key in METRICS.items():
      stats_ = (
        interval([r[key] for r in done])
        if done
        else dict.fromkeys(("mean", "std", "ci_low", "ci_high"), math.nan)
      )
      row |= {f"{name}_{k}": v for k, v in stats_.items()}
    rows.append(row)
  return rows


def difference_interval(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
  """mean(a) - mean(b), with Welch's 95% confidence interval (unequal variances)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  difference = float(a.mean() - b.mean())
  if len(a) < 2 or len(b) < 2:
    return {"difference": difference, "ci_low": math.nan, "ci_high": math.nan}
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  se = math.sqrt(va + vb)
  if se == 0:
    return {"difference": difference, "ci_low": difference, "ci_high": difference}
  dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
  half = float(stats.t.ppf(0.975, dof)) * se
  return {"difference": difference, "ci_low": difference - half, "ci_high": difference + half}


def matched_pairs(
  records: Sequence[Mapping[str, Any]], tolerance: float = 0.05
) -> list[dict[str, Any]]:
  """Convnet against dense at matched parameter counts (within `tolerance`), on test accuracy.

  Each convnet setting is paired with the dense setting of the nearest
  parameter count, if that is within `tolerance` of it, among the dense
  settings that share its other fields (the data, the optimizer: every varying
  field outside `model.`). When the sweep varies the learning rate, the
  settings are the tuned arms of `tune_learning_rate`, each at its own chosen
  rate.
  """
  if LEARNING_RATE in varying_fields(records):
    rows = [arm for arm in tune_learning_rate(records) if arm["seeds"]]
  else:
    rows = [r for r in summarize(records) if r["seeds"]]
  done = [r for r in records if r["status"] == "done"]

  def accuracies(row):
    return [r[METRICS["test"]] for r in done if r["setting"] == row["setting"]]

  pairs = []
  for convnet in (r for r in rows if r["model"] == "convnet"):
    dense = [r for r in rows if r["model"] == "dense" and r["context"] == convnet["context"]]
    if not dense:
      continue
    match = min(dense, key=lambda d: abs(d["num_params"] - convnet["num_params"]))
    if abs(match["num_params"] - convnet["num_params"]) > tolerance * convnet["num_params"]:
      continue
    pairs.append(
      {"convnet": convnet, "dense": match}
      | difference_interval(accuracies(convnet), accuracies(match))
    )
  return pairs


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
  disqualifies a rate. Of rates with equal means, the smallest is chosen. An
  arm with no competing rate has `learning_rate` None and no statistics.

  Each arm has `label`, `model`, `context` (what a convnet and a dense
  arm must share to be compared), `grid` (its rates, ascending),
  `learning_rate` and `setting` (the chosen rate and its setting), `set_aside`
  ({rate: reason}), `rates` (the `summarize` row of each rate, ascending, with
  its `learning_rate`), and the chosen row's `seeds`, `num_params` and
  `validation_*`/`test_*` statistics.
  """
  fields = varying_fields(records)
  if LEARNING_RATE not in fields:
    return []
  others = [f for f in fields if f != LEARNING_RATE]
  shared = [f for f in others if not f.startswith("model.")]
  rows = {row["setting"]: row for row in summarize(records)}
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
    set_aside, scores = {}, {}
    for rate in grid:
      cells = by_rate[rate]
      statuses = [r["status"] for r in cells if r["status"] != "done"]
      reasons = [f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses)]
      if len(cells) < expected:
        reasons.append(f"{len(cells)} of {expected} seeds recorded")
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
      "rates": per_rate,
    }
    keys = ["seeds", "num_params"] + [
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
  `fields`): `data.name=x model.name=convnet`.
  """
  parts = []
  for field in fields:
    if field in overrides:
      name = short_name(field, names_among or fields)
      parts.append(f"{name}={formatting.setting_value(overrides[field])}")
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


def markdown(rows: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]) -> str:
  """The table of settings, then the cells that did not finish."""
  lines = [
    "| setting | model | parameters | MFLOP/example | seeds | validation % (mean ± std) "
    "| validation 95% CI | test % (mean ± std) | test 95% CI | wall time (s) |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    validation, validation_ci = _percent(row, "validation")
    test, test_ci = _percent(row, "test")
    params = "–" if math.isnan(row["num_params"]) else f"{row['num_params']:,.0f}"
    flops = "–" if math.isnan(row["flops_per_example"]) else f"{row['flops_per_example'] / 1e6:.2f}"
    wall = "–" if math.isnan(row["wall_time_s"]) else f"{row['wall_time_s']:.1f}"
    seeds = str(row["seeds"]) + (
      f" ({row['not_finished']} did not finish)" if row["not_finished"] else ""
    )
    lines.append(
      f"| {row['label']} | {row['model']} | {params} | {flops} | {seeds} | {validation} "
      f"| {validation_ci} | {test} | {test_ci} | {wall} |"
    )
  tuned = tune_learning_rate(records)
  if tuned:
    lines += ["", *tuned_markdown(tuned)]
  pairs = matched_pairs(records)
  if pairs:
    at_rates = ", each arm at its tuned learning rate" if tuned else ""
    lines += [
      "",
      "Convnet minus dense at matched parameter counts, test accuracy (percentage points), "
      f"with Welch's 95% interval{at_rates}:",
      "",
      "| convnet | dense | parameters (convnet / dense) | difference | 95% CI |",
      "|---|---|---|---|---|",
    ]
    for p in pairs:
      ci = (
        "–" if math.isnan(p["ci_low"]) else f"[{100 * p['ci_low']:+.2f}, {100 * p['ci_high']:+.2f}]"
      )
      convnet, dense = (
        p[m]["label"] + (f" at {p[m]['learning_rate']:g}" if tuned else "")
        for m in ("convnet", "dense")
      )
      lines.append(
        f"| {convnet} | {dense} | "
        f"{p['convnet']['num_params']:,.0f} / {p['dense']['num_params']:,.0f} | "
        f"{100 * p['difference']:+.2f} | {ci} |"
      )
  if any(row["vmap_group_size"] > 1 for row in rows):
    lines += [
      "",
      "Seeds trained together by one vmapped program share its wall time: the column "
      "gives the whole group's.",
    ]
  failed = [r for r in records if r["status"] != "done"]
  if failed:
    lines += ["", "Cells that did not finish:", ""]
    for r in failed:
      error = (r.get("error") or "").splitlines()[0] if r.get("error") else ""
      lines.append(f"- `{r['cell']}`: {r['status']}: {error}")
  return "\n".join(lines) + "\n"


def tuned_markdown(tuned: Sequence[Mapping[str, Any]]) -> list[str]:
  """The table of tuned arms: the chosen learning rate and the accuracies there."""
  lines = [
    "Tuned learning rate per arm: the rate of best mean validation accuracy over seeds "
    "(test accuracy takes no part in the choice; of equal means, the smaller rate); rates "
    "where a seed diverged, failed or is not recorded are set aside.",
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


def write_csv(rows: Sequence[Mapping[str, Any]], path: str) -> None:
  columns = list(rows[0])
  for row in rows[1:]:
    columns += [c for c in row if c not in columns]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})


def _errors(rows, name):
  means = np.array([r[f"{name}_mean"] for r in rows]) * 100
  low = np.array([r[f"{name}_ci_low"] for r in rows]) * 100
  high = np.array([r[f"{name}_ci_high"] for r in rows]) * 100
  return means, np.nan_to_num(np.stack([means - low, high - means]))


def describe(records: Sequence[Mapping[str, Any]], sweep_dir: str) -> str:
  """`pooling on embedded MNIST (5,000 digits), 10 epochs`: the sweep's folder, data and epochs,
  for titles."""
  dataset = sources.title(records[0]["config"].get("data", {}), sizes=True)
  name = os.path.basename(os.path.normpath(sweep_dir))
  epochs = records[0]["config"].get("num_epochs")
  epochs = f", {epochs} epochs" if epochs else ""
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
  fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5))
  if numeric:
    x = np.array([float(r[numeric]) for r in rows])
    ax.set_xlabel(numeric)
    if np.all(x > 0) and x.max() / x.min() >= 100:
      ax.set_xscale("log")
  else:
    x = np.arange(len(rows), dtype=float)
    ax.set_xticks(x, [r["label"] for r in rows], rotation=25 if len(rows) > 3 else 0, ha="right")
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
  fig.savefig(path, dpi=120)
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
  fig.savefig(path, dpi=120)
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
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(records: Sequence[Mapping[str, Any]], out_dir: str, title: str = "") -> list[str]:
  """Writes the table, the CSV and the plots; returns their paths."""
  from convnet import workdir as workdir_lib  # imports JAX, which the rest of a report doesn't need

  workdir_lib.make_dir(out_dir, "--out")
  rows = summarize(records)
  paths = {name: os.path.join(out_dir, name) for name in ("report.md", "report.csv")}
  with open(paths["report.md"], "w") as f:
    f.write(markdown(rows, records))
  write_csv(rows, paths["report.csv"])
  finished = [r for r in rows if r["seeds"]]
  if finished:
    paths["accuracy.png"] = os.path.join(out_dir, "accuracy.png")
    plot_accuracy(finished, varying_fields(records), paths["accuracy.png"], title)
    if len({r["model"] for r in finished}) > 1:
      paths["params.png"] = os.path.join(out_dir, "params.png")
      plot_params(finished, paths["params.png"], title)
  tuned = tune_learning_rate(records)
  if any(r["seeds"] for arm in tuned for r in arm["rates"]):
    paths["learning_rate.png"] = os.path.join(out_dir, "learning_rate.png")
    plot_learning_rate(tuned, paths["learning_rate.png"], title)
  return list(paths.values())


# ----------------------------------------------------------------------------
# Command line

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines this command's flags, when it runs as a program."""
  flags.DEFINE_string(
    "out", None, "Where to write the report; default: the sweep directory.", flag_values=flag_values
  )


def main(argv):
  if len(argv) != 2:
    given = f"; got {' '.join(map(repr, argv[1:]))}" if len(argv) > 2 else ""
    cli.usage_error(
      f"give one sweep directory: python -m convnet.report SWEEP_DIR [--out=DIR]{given}"
    )
  try:
    records = load_records(argv[1])
    paths = write_report(records, FLAGS.out or argv[1], describe(records, argv[1]))
  except ConvnetError as e:
    sys.exit(f"error: {e}")
  with open(paths[0]) as f:
    print(f.read())
  print("Wrote " + ", ".join(paths))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
