"""The learning-curve part of a sweep's report: test accuracy against the training-set size.

Used by `convnet.report` when a sweep varies `data.num_train` (N), as
configs/sweeps/learning_curve.py does. Each model is a line: the varying
fields other than N, the seed, the learning rate, and the fields set per size
alongside N (`batch_size`, `steps_per_epoch`, when each N has one value of
them). When the sweep varies the learning rate, each (model, N) arm is at the
rate `analysis.tune_learning_rate` chose on validation accuracy alone.

- `learning_curve_rows`: per (model, N), the test accuracy at the epoch of best
  validation accuracy (mean and 95% interval over seeds, within [0, 100]:
  `analysis.accuracy_interval`), the chosen rate and the step budget;
- `minus_baseline`: per N, each model minus each line of the baseline model
  (`models.BASELINE`, the dense network) that shares its other fields, paired
  over shared seeds with Welch's 95% interval beside it, all pairs one family
  for Holm's correction;
- `tune_settings`: a remedy's lines of several settings made one line tuned per N on
  validation (`dense, pca, d tuned`); `at_grid_edges`: the choices at a grid's edge, among
  `grid_choices` (grids of 3 or more values), stated by `edges_text`;
- `section` (markdown lines) and `write_plot` (`learning_curve.png`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from convnet import analysis, display, files, stats
from convnet import records as records_lib
from convnet.models import BASELINE

SIZE = "data.num_train"
# Fields a sweep may set per size, alongside N; not part of what a model is when N fixes them.
PER_SIZE = ("batch_size", "steps_per_epoch", "data.num_validation")
# How a model's label writes a field's value ("dense, L1 0.0001"); the input is written
# `pca 64` (`model_label`), other fields `name=value`.
VALUE_FORMATS = {"l1_penalty": "L1 {:g}"}

# A remedy's own setting, chosen at each N on validation where a model's line takes several
# values of it (the PCA components, the pixels kept, L1's strength), and how a label names it.
TUNED_SETTINGS = {"data.num_features": "d", "l1_penalty": "L1"}

FILE = "learning_curve.png"  # the figure `write_plot` writes


def applies(records: Sequence[Mapping[str, Any]]) -> bool:
  """Whether the sweep varies the training-set size."""
  return SIZE in analysis.varying_fields(records)


def num_train(record: Mapping[str, Any]) -> int:
  """The record's training-set size: its override, else its config's (0: the whole split)."""
  if SIZE in record["overrides"]:
    return record["overrides"][SIZE]
  return record["config"].get("data", {}).get("num_train", 0)


def model_fields(records: Sequence[Mapping[str, Any]]) -> list[str]:
  """The varying fields that tell one model's line from another."""
  values: dict[tuple[str, int], set[str]] = {}
  for record in records:
    for field in PER_SIZE:
      value = json.dumps(record["overrides"].get(field), default=str)
      values.setdefault((field, num_train(record)), set()).add(value)
  per_size = [f for f in PER_SIZE if all(len(v) == 1 for (g, _), v in values.items() if g == f)]
  excluded = (SIZE, analysis.LEARNING_RATE, *per_size)
  return [f for f in analysis.varying_fields(records) if f not in excluded]


def model_label(
  overrides: Mapping[str, Any], model: str, fields: Sequence[str], all_fields: Sequence[str]
) -> str:
  """`dense, pca 64`: the model's name, then its values of `fields` (beside `model.name`), one
  part a field, parts apart by ", " (`dense, dense_features=128, L1 0.0001`).

  The input is one part, `pca 64` (`data.features` with its `data.num_features`), or `pixels`;
  a number of features without the input it counts is written `num_features=64`.
  """
  parts = []
  for field in fields:
    if field == "model.name" or field not in overrides:
      continue
    value = overrides[field]
    if field == "data.num_features":
      if overrides.get("data.features") == "pixels":
        continue  # all pixels: the number of features is not a setting
      if "data.features" in fields and "data.features" in overrides:
        continue  # written with the input, `pca 64`
      parts.append(f"{analysis.short_name(field, all_fields)}={display.setting_value(value)}")
    elif field == "data.features":
      count = overrides.get("data.num_features")
      with_count = "data.num_features" in fields and count is not None and value != "pixels"
      parts.append(f"{value} {count}" if with_count else str(value))
    elif field in VALUE_FORMATS:
      parts.append(VALUE_FORMATS[field].format(value))
    else:
      parts.append(f"{analysis.short_name(field, all_fields)}={display.setting_value(value)}")
  return ", ".join([model, *parts])


def budget(config: Mapping[str, Any], size: int) -> dict[str, Any]:
  """The batch, steps per epoch, epochs and total steps a run of `size` examples trains for.

  Values the config does not hold are None.
  """
  batch, epochs = config.get("batch_size"), config.get("num_epochs")
  steps = config.get("steps_per_epoch", 0) or (size // batch if batch and size else None)
  total = steps * epochs if steps and epochs else None
  max_steps = config.get("max_steps", -1)
  if total is not None and max_steps is not None and max_steps >= 0:
    total = min(total, max_steps)
  return {"batch_size": batch, "steps_per_epoch": steps, "num_epochs": epochs, "steps": total}


def learning_curve_rows(
  records: Sequence[Mapping[str, Any]], tune_remedies: bool = True
) -> list[dict[str, Any]]:
  """Per (model, N), in the order of each model's first record, then by N.

  With `tune_remedies` False, every line is kept as it is (no `tune_settings`).

  Each row has `model` (the line's label), `model_name`, `num_train`, `learning_rate` (the
  tuned rate, or None when the sweep does not vary it or no rate finished), `rate_grid`
  (the rates it was chosen from, ascending; empty when none), `tuned` ({field: (chosen value,
  the values it was chosen from)} for a remedy's setting chosen on validation at this N, see
  `tune_settings`; empty when none), `overrides` (the arm's first record's, at the chosen
  rate), `seeds`,
  `validation_*`/`test_*` statistics, `accuracies` (the seeds' test accuracies
  at best validation; collapsed runs left out, `analysis.counted`), `by_seed`
  (the same, {seed: accuracy}) and the `budget` fields.
  """
  by_setting: dict[str, list[Mapping[str, Any]]] = {}
  for record in sorted(records, key=lambda r: r["index"]):
    by_setting.setdefault(record["setting"], []).append(record)
  tuned = analysis.tune_learning_rate(records)
  fields, all_fields = model_fields(records), analysis.varying_fields(records)
  keys = ["seeds"] + [
    f"{name}_{k}" for name in analysis.METRICS for k in ("mean", "std", "ci_low", "ci_high")
  ]
  lines: dict[str, list[dict[str, Any]]] = {}
  own: dict[str, list[str]] = {}  # per model name, the fields its labels write
  for arm in tuned or analysis.summarize(records):
    cells = by_setting[arm["setting"] or arm["rates"][0]["setting"]]
    first = cells[0]
    model = first["config"]["model"]["name"]
    if model not in own:  # only what varies among this model's records tells its lines apart
      mine = analysis.varying_fields([r for r in records if r["config"]["model"]["name"] == model])
      own[model] = [f for f in fields if f in mine]
    line = model_label(first["overrides"], model, own[model], all_fields)
    done = [r for r in cells if analysis.counted(r)] if arm["setting"] else []
    lines.setdefault(line, []).append(
      {
        "model": line,
        "model_name": model,
        "num_train": num_train(first),
        "learning_rate": arm["learning_rate"] if tuned else None,
        "rate_grid": list(arm.get("grid", [])),
        "tuned": {},
        "overrides": first["overrides"],
        **{k: arm[k] for k in keys},
        "accuracies": [r[analysis.METRICS["test"]] for r in done],
        "by_seed": {records_lib.seed(r): r[analysis.METRICS["test"]] for r in done},
        **budget(first["config"], num_train(first)),
      }
    )
  rows = [row for rows in lines.values() for row in sorted(rows, key=lambda r: r["num_train"])]
  return tune_settings(rows, fields, all_fields) if tune_remedies else rows


def tune_settings(
  rows: Sequence[dict[str, Any]], own_fields: Sequence[str], all_fields: Sequence[str]
) -> list[dict[str, Any]]:
  """Lines that differ only in a remedy's setting (`TUNED_SETTINGS`) become one line, tuned at
  each N.

  Lines of one model whose overrides agree but for the values of tuned fields (each line
  setting the same fields) form a family. At each N the family keeps the row of best mean
  validation accuracy (ties: the first line, the sweep's order), labelled for the family
  (`dense, pca, d tuned`, `dense, L1 tuned`), with `tuned` naming the chosen value and the
  values it was chosen from. Test accuracy takes no part. A line alone in its family is kept
  as it is.

  A family's label names, as every line's does (`learning_curve_rows`), only the fields of
  `own_fields` whose value varies among its model's rows (a field every dense line shares,
  its width, say, is not written), then what was tuned.
  """
  missing = object()

  def varies(field, model):
    values = {
      json_key(r["overrides"].get(field, missing)) for r in rows if r["model_name"] == model
    }
    return len(values) > 1

  models = dict.fromkeys(r["model_name"] for r in rows)
  labelled = {m: [f for f in own_fields if varies(f, m)] for m in models}

  def family(row):
    overrides = row["overrides"]
    rest = tuple((f, json_key(overrides.get(f))) for f in own_fields if f not in TUNED_SETTINGS)
    present = tuple(f for f in TUNED_SETTINGS if f in overrides)
    return row["model_name"], rest, present

  members: dict[Any, dict[str, None]] = {}
  for row in rows:
    members.setdefault(family(row), {})[row["model"]] = None
  out: dict[tuple[str, int], dict[str, Any]] = {}
  for row in rows:
    key = family(row)
    if len(members[key]) == 1:
      out[row["model"], row["num_train"]] = row
      continue
    at_n = [r for r in rows if family(r) == key and r["num_train"] == row["num_train"]]
    varying = [f for f in key[2] if len({json_key(r["overrides"][f]) for r in at_n}) > 1]
    fields = [f for f in labelled[row["model_name"]] if f not in varying]
    label = model_label(row["overrides"], row["model_name"], fields, all_fields)
    label = ", ".join([label, *(f"{TUNED_SETTINGS[f]} tuned" for f in varying)])
    if (label, row["num_train"]) in out:
      continue
    finished = [r for r in at_n if r["seeds"]]
    chosen = max(finished, key=lambda r: r["validation_mean"]) if finished else at_n[0]
    grid = {f: sorted({r["overrides"][f] for r in at_n}) for f in varying}
    out[label, row["num_train"]] = dict(
      chosen,
      model=label,
      tuned={f: (chosen["overrides"][f], grid[f]) for f in varying} if finished else {},
    )
  return list(out.values())


def json_key(value: Any) -> str:
  """A value as a hashable, comparable key (tuples and lists alike)."""
  return json.dumps(value, sort_keys=True, default=str)


EDGE_GRID = 3  # the fewest values a grid has for a choice at its edge to be told from one inside


def grid_choices(
  rows: Sequence[Mapping[str, Any]],
) -> list[tuple[Mapping[str, Any], str, Any, list]]:
  """Every choice the rows made from a grid of `EDGE_GRID` or more values: (row, `lr` or the
  setting's name in `TUNED_SETTINGS`, the chosen value, the grid ascending)."""
  found = []
  for row in rows:
    grids = {"lr": (row["learning_rate"], row["rate_grid"])}
    grids |= {TUNED_SETTINGS[f]: chosen for f, chosen in row["tuned"].items()}
    for name, (value, grid) in grids.items():
      if value is not None and len(grid) >= EDGE_GRID:
        found.append((row, name, value, list(grid)))
  return found


def at_grid_edges(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Each row whose chosen rate or remedy setting is the smallest or largest of its grid (of 3
  or more values, `grid_choices`), as `model at N = 64: lr 0.01 (largest of 0.0003 to 0.01)`."""
  found = []
  for row, name, value, grid in grid_choices(rows):
    if value in (grid[0], grid[-1]):
      end = "smallest" if value == grid[0] else "largest"
      found.append(
        f"{row['model']} at N = {row['num_train']}: {name} {value:g} ({end} of "
        f"{grid[0]:g} to {grid[-1]:g})"
      )
  return found


def minus_baseline(
  rows: Sequence[Mapping[str, Any]], baseline: str = BASELINE
) -> list[dict[str, Any]]:
  """Per N, each model minus each baseline line on test accuracy, paired and Welch's.

  A row of the `baseline` model (a `model.name`; by default `models.BASELINE`)
  is paired with each row of another model at the same N whose other
  non-model overrides (the data, say) it shares; the rows are at their tuned
  rates. Each pair has `num_train`, `model_name`, `model` and `baseline` (the
  two lines' labels), the `analysis.compare` fields of their test accuracies
  (Welch's `difference`, `ci_low`, `ci_high`; the paired difference over
  shared seeds; `p`), and `p_holm` and `survives`, all pairs one family.
  """
  pairs = []
  for row in (r for r in rows if r["model_name"] != baseline):
    shared = {
      k: v
      for k, v in row["overrides"].items()
      if analysis.shared_by_compared_models(k) and k not in ("seed", analysis.LEARNING_RATE)
    }
    for other in rows:
      same = all(other["overrides"].get(k) == v for k, v in shared.items())
      if other["model_name"] != baseline or not same:
        continue
      if not row["accuracies"] or not other["accuracies"]:
        continue
      pairs.append(
        {
          "num_train": row["num_train"],
          "model_name": row["model_name"],
          "model": row["model"],
          "baseline": other["model"],
        }
        | analysis.compare(row["by_seed"], other["by_seed"])
      )
  return stats.with_holm(pairs)


def _cell(row: Mapping[str, Any]) -> str:
  if not row["seeds"]:
    return "–"
  low, high = 100 * row["test_ci_low"], 100 * row["test_ci_high"]
  text = f"{100 * row['test_mean']:.2f} " + (
    "[–]" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"
  )
  chosen = [f"lr {row['learning_rate']:g}"] if row["learning_rate"] is not None else []
  chosen += [f"{TUNED_SETTINGS[f]} {value:g}" for f, (value, _) in row.get("tuned", {}).items()]
  return text + (f" ({', '.join(chosen)})" if chosen else "")


def _values(rows: Sequence[Mapping[str, Any]], key: str) -> str:
  values = [str(row[key]) for row in rows if row[key] is not None]
  return "/".join(dict.fromkeys(values)) or "–"


def section(records: Sequence[Mapping[str, Any]]) -> list[str]:
  """The report's learning-curve tables and training line; empty when N does not vary."""
  if not applies(records):
    return []
  rows = learning_curve_rows(records)
  models = list(dict.fromkeys(r["model"] for r in rows))
  sizes = sorted({r["num_train"] for r in rows})
  tuned = any(r["learning_rate"] is not None for r in rows)
  epochs = _values(rows, "num_epochs")
  validated = any(analysis.METRICS["validation"] in r for r in records if r["status"] == "done")
  lines = [
    f"Training: {epochs} epoch{'' if epochs == '1' else 's'} of the steps per epoch below, in "
    "batches of the size below (an epoch longer than one pass over the N examples draws further "
    "passes); test accuracy at "
    + (
      "the epoch of best validation accuracy." if validated else "the last epoch (no validation)."
    ),
    "",
    "Learning curve: test accuracy (%) by training-set size N, mean [95% interval over seeds, "
    "Student's t on the logit scale]"
    + (
      ", each model at the learning rate validation accuracy chose at that N (lr)" if tuned else ""
    )
    + ":",
    "",
    "| N | batch | steps/epoch | steps | " + " | ".join(models) + " |",
    "|---|---|---|---|" + "---|" * len(models),
  ]
  for n in sizes:
    at_n = [r for r in rows if r["num_train"] == n]
    cells = {r["model"]: _cell(r) for r in at_n}
    budget_ = " | ".join(_values(at_n, k) for k in ("batch_size", "steps_per_epoch", "steps"))
    lines.append(f"| {n} | {budget_} | " + " | ".join(cells.get(m, "–") for m in models) + " |")
  if any(r["tuned"] for r in rows):
    lines += [
      "",
      'A line marked "tuned" takes, at each N, the remedy\'s setting of best mean validation '
      "accuracy (d: the principal components or pixels kept; L1: the penalty's strength), each "
      "setting at its own tuned learning rate; test accuracy takes no part in either choice.",
    ]
  if tuned or any(r["tuned"] for r in rows):
    lines += ["", edges_text(rows)]
  pairs = minus_baseline(rows)
  if pairs:
    columns = list(dict.fromkeys((p["model"], p["baseline"]) for p in pairs))
    names = " and ".join(dict.fromkeys(p["model_name"] for p in pairs))
    lines += [
      "",
      f"{names[:1].upper() + names[1:]} minus {BASELINE} by training-set size: test "
      "accuracy (percentage points) at the same N: the difference, its 95% interval paired "
      "over seeds, Holm's adjusted p-value (all cells one family; paired where 2 or more seeds "
      "are shared, else Welch's), and Welch's 95% interval"
      + (", each arm at its tuned learning rate" if tuned else "")
      + ":",
      "",
      "| N | " + " | ".join(f"{c} − {d}" for c, d in columns) + " |",
      "|---|" + "---|" * len(columns),
    ]
    for n in sizes:
      cells = {(p["model"], p["baseline"]): p for p in pairs if p["num_train"] == n}
      lines.append(f"| {n} | " + " | ".join(difference_text(cells.get(c)) for c in columns) + " |")
  return lines


def edges_text(rows: Sequence[Mapping[str, Any]]) -> str:
  """The sentence that lists the choices at a grid's edge, saying which grids were checked."""
  checked = len(grid_choices(rows))
  if not checked:
    return (
      f"Choices at the edge of their grid: not checked, as no learning rate or setting was "
      f"chosen from a grid of {EDGE_GRID} or more values (in a grid of 2, every choice is at an "
      "edge)."
    )
  edges = at_grid_edges(rows)
  return (
    f"Choices at the edge of their grid, of the {checked} choices made from grids of "
    f"{EDGE_GRID} or more values (the best value may lie beyond the edge): "
    + ("; ".join(edges) if edges else "none")
    + "."
  )


def difference_text(pair: Mapping[str, Any] | None) -> str:
  if pair is None:
    return "–"
  text = f"{100 * pair['difference']:+.2f}"
  if pair["paired_seeds"] < 2:
    text += ", fewer than 2 shared seeds"
  else:
    low, high = 100 * pair["paired_ci_low"], 100 * pair["paired_ci_high"]
    text += f", paired [{low:+.2f}, {high:+.2f}]"
  if not math.isnan(pair["p_holm"]):
    text += ", Holm p " + ("<0.0001" if pair["p_holm"] < 1e-4 else f"{pair['p_holm']:.4f}")
  if not math.isnan(pair["ci_low"]):
    text += f"; Welch [{100 * pair['ci_low']:+.2f}, {100 * pair['ci_high']:+.2f}]"
  return text


def plot_learning_curve(rows: Sequence[Mapping[str, Any]], path: str, title: str = "") -> None:
  """Test accuracy against N (log axis), one line per model, with 95% interval bars (within
  [0, 100])."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  models = list(dict.fromkeys(r["model"] for r in rows))
  for i, model in enumerate(models):
    mine = [r for r in rows if r["model"] == model and r["seeds"] and r["num_train"] > 0]
    if not mine:
      continue
    # Each model a little to the side, so that the bars at one N do not hide each other.
    shift = 1.025 ** (i - (len(models) - 1) / 2)
    x = np.array([r["num_train"] for r in mine], np.float64) * shift
    means = np.array([r["test_mean"] for r in mine]) * 100
    low = np.array([r["test_ci_low"] for r in mine]) * 100
    high = np.array([r["test_ci_high"] for r in mine]) * 100
    errors = np.maximum(0, np.nan_to_num(np.stack([means - low, high - means])))
    ax.errorbar(x, means, yerr=errors, fmt="o-", capsize=3, label=model)
  sizes = sorted({r["num_train"] for r in rows if r["num_train"] > 0})
  ax.set_xscale("log")
  ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
  ax.minorticks_off()
  ax.set_xlabel("training examples N (models shifted sideways to show their bars)")
  ax.set_ylabel("test accuracy (%) at best validation,\nmean and 95% CI over seeds")
  heading = "Learning curve"
  if any(r["learning_rate"] is not None for r in rows):
    heading += ", each model at its tuned learning rate per N"
  ax.set_title(f"{heading}\n{title}" if title else heading, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=120)  # atomic: a stop leaves the old one whole
  plt.close(fig)


def write_plot(records: Sequence[Mapping[str, Any]], out_dir: str, title: str = "") -> str | None:
  """Writes `learning_curve.png` in `out_dir` when N varies and a run finished: its path."""
  if not applies(records):
    return None
  rows = learning_curve_rows(records)
  if not any(row["seeds"] for row in rows):
    return None
  path = os.path.join(out_dir, FILE)
  plot_learning_curve(rows, path, title)
  return path
