"""The samples-against-features part of a sweep's report: which input size d is best at each N.

Used by `convnet.report` when a sweep is the dense network alone at several
training-set sizes `data.num_train` (N) and several inputs, as
configs/sweeps/samples_features.py is: its settings differ only in N (with the
fields set per size, `learning_curve.PER_SIZE`), the learning rate, and the input,
`data.features` in {"pixels", one reduction} ("pca" or "top_variance") with
`data.num_features`. Any other sweep gets no section and no heat map (`why_not`
says why): a sweep of several models, of remedies beside the input (L1), or of two
reductions would put unlike rows in one column or on one axis. Such a sweep's
dense inputs are not drawn either: the tuned learning curve
(`learning_curve.tune_settings`) already gives each reduction's choice per N.

Each input is a learning-curve line (`learning_curve.learning_curve_rows`), at the
learning rate validation chose for it at each N. The seed's note says that a
small sample defeats many features; if so, the best d grows with N.

- `grid`: per N, each input's test accuracy, and the input with the best mean
  validation accuracy (test accuracy never takes part in the choice);
- `growth`: Spearman's rank correlation of N with the chosen d (all pixels
  rank above every number of components or pixels kept);
- `section` (markdown lines): the grid, the chosen d per N, and the chosen
  input minus all pixels at each N, paired over seeds, Holm's correction over
  the N values as one family; where the correlation or the differences cannot
  be given, one sentence says why;
- `write_plot`: `samples_features.png`, a heat map of test accuracy over
  (d, N) with each N's chosen d outlined, its x axis named by the reduction.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from convnet import analysis, files, learning_curve, stats
from convnet.models import BASELINE

FEATURES, NUM_FEATURES = "data.features", "data.num_features"
INPUT_FIELDS = (FEATURES, NUM_FEATURES)
PIXELS = "pixels"
# What the heat map's x axis calls each reduction's inputs.
AXIS_LABELS = {
  "pca": "input: principal components d, or all pixels",
  "top_variance": "input: pixels kept d (those of highest variance), or all pixels",
}
FILE = "samples_features.png"  # the figure `write_plot` writes


def record_input(record: Mapping[str, Any]) -> dict[str, Any]:
  """The record's input, {`data.features`: name, `data.num_features`: count}: its overrides',
  else its config's, else all pixels."""
  data = record.get("config", {}).get("data", {})
  features = record["overrides"].get(FEATURES, data.get("features", PIXELS))
  count = record["overrides"].get(NUM_FEATURES, data.get("num_features", 0))
  return {FEATURES: features, NUM_FEATURES: 0 if features == PIXELS else count}


def why_not(records: Sequence[Mapping[str, Any]]) -> str | None:
  """Why the sweep gets no samples-against-features section (a clause), or None when it does:
  the dense network alone, at several N, its settings apart from the rate differing only in N
  (and the fields set per size) and in an input of all pixels or of one reduction."""
  if not records:
    return "the sweep has no records"
  if learning_curve.SIZE not in analysis.varying_fields(records):
    return f"the sweep does not vary {learning_curve.SIZE}"
  names = sorted({r["config"]["model"]["name"] for r in records})
  if names != [BASELINE]:
    return f"its models are {', '.join(names)}, not the {BASELINE} network alone"
  others = [f for f in learning_curve.model_fields(records) if f not in INPUT_FIELDS]
  if others:
    return f"it varies {', '.join(others)} besides the input"
  inputs = [record_input(r) for r in records]
  reductions = sorted({i[FEATURES] for i in inputs} - {PIXELS})
  if len(reductions) > 1:
    return f"its inputs mix reductions ({', '.join(reductions)}) on one axis"
  if len({input_label(i) for i in inputs}) < 2:
    return "its input does not vary"
  settings: dict[tuple[int, str], set[str]] = {}
  for record, input_ in zip(records, inputs, strict=True):
    rest = {
      k: v for k, v in record["overrides"].items() if k not in ("seed", analysis.LEARNING_RATE)
    }
    key = (learning_curve.num_train(record), input_label(input_))
    settings.setdefault(key, set()).add(json.dumps(rest, sort_keys=True, default=str))
  for (n, label), found in settings.items():
    if len(found) > 1:
      return f"{len(found)} settings share the input {label} at N = {n}"
  return None


def applies(records: Sequence[Mapping[str, Any]]) -> bool:
  """Whether the sweep is a samples-against-features grid (`why_not` gives no reason)."""
  return why_not(records) is None


def reduction(records: Sequence[Mapping[str, Any]]) -> str | None:
  """The sweep's one reduction ("pca", "top_variance"), or None when every input is pixels."""
  found = sorted({record_input(r)[FEATURES] for r in records} - {PIXELS})
  return found[0] if found else None


def input_key(overrides: Mapping[str, Any]) -> tuple[int, float]:
  """How inputs sort: components (or pixels kept) by their number, then all pixels (as
  infinitely many)."""
  if overrides.get(FEATURES, PIXELS) == PIXELS:
    return (1, math.inf)
  return (0, float(overrides.get(NUM_FEATURES, 0)))


def input_label(overrides: Mapping[str, Any]) -> str:
  """`pca 16`, `top_variance 50` or `pixels`."""
  features = overrides.get(FEATURES, PIXELS)
  return PIXELS if features == PIXELS else f"{features} {overrides.get(NUM_FEATURES, 0)}"


def grid(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Per N (ascending): `num_train`, `inputs` ({label: learning-curve row}, sorted by d; each
  row's `overrides` name its input, from the config where the sweep does not set it) and `best`
  (the label of the finished input with the best mean validation accuracy; of equal means, the
  smaller input; None when no input at that N finished).

  Raises ValueError (naming why) when the sweep is not such a grid (`why_not`).
  """
  reason = why_not(records)
  if reason is not None:
    raise ValueError(f"no samples-against-features grid: {reason}")
  records = [dict(r, overrides=r["overrides"] | record_input(r)) for r in records]
  rows = learning_curve.learning_curve_rows(records, tune_remedies=False)
  out = []
  for n in sorted({r["num_train"] for r in rows}):
    at_n = sorted((r for r in rows if r["num_train"] == n), key=lambda r: input_key(r["overrides"]))
    inputs = {input_label(r["overrides"]): r for r in at_n}
    finished = [r for r in at_n if r["seeds"]]
    best = None
    if finished:
      top = max(r["validation_mean"] for r in finished)
      best = input_label(next(r for r in finished if r["validation_mean"] == top)["overrides"])
    out.append({"num_train": n, "inputs": inputs, "best": best})
  return out


def growth(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Spearman's rho of N with the chosen input's size: `rho`, `p`, and `why`, None, or (with
  `rho` and `p` NaN) a sentence saying why there is none: fewer than 3 sizes with a choice, or
  one input chosen at every N."""
  chosen = [
    (c["num_train"], input_key(c["inputs"][c["best"]]["overrides"])) for c in cells if c["best"]
  ]
  ranks = sorted({key for _, key in chosen})
  n = np.array([size for size, _ in chosen], np.float64)
  d = np.array([ranks.index(key) for _, key in chosen], np.float64)
  why = None
  if len(chosen) < 3:
    why = (
      f"No rank correlation of N with the chosen input's size: it needs 3 or more sizes with "
      f"a finished input, and {len(chosen)} {'has' if len(chosen) == 1 else 'have'} one."
    )
  elif np.all(d == d[0]):
    label = next(c["best"] for c in cells if c["best"])
    label = "all pixels" if label == PIXELS else label
    why = (
      f"No rank correlation of N with the chosen input's size: validation chose {label} at "
      "every N, so the choice does not vary with N."
    )
  elif np.all(n == n[0]):
    why = "No rank correlation of N with the chosen input's size: every choice is at one N."
  if why:
    return {"rho": math.nan, "p": math.nan, "why": why}
  result = scipy_stats.spearmanr(n, d)
  return {"rho": float(result.statistic), "p": float(result.pvalue), "why": None}


def why_no_pixels_pairs(cells: Sequence[Mapping[str, Any]]) -> str | None:
  """Why `against_pixels` gives no difference (a sentence), or None when it gives one."""
  if against_pixels(cells):
    return None
  if not any(PIXELS in c["inputs"] for c in cells):
    return "No input is compared with all pixels: the sweep has no all-pixels input."
  others = [c for c in cells if c["best"] not in (None, PIXELS)]
  if not any(c["best"] for c in cells):
    return "No input is compared with all pixels: no input has finished at any N."
  if not others:
    return (
      "No input is compared with all pixels: validation chose all pixels at every N with a "
      "finished input."
    )
  sizes = ", ".join(str(c["num_train"]) for c in others)
  return (
    "No input is compared with all pixels: all pixels has no finished seed at the N where "
    f"another input was chosen ({sizes})."
  )


def against_pixels(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Per N where another input was chosen: the chosen input minus all pixels on test accuracy
  (`analysis.compare`, paired over seeds), with `p_holm` and `survives`, the N values one
  family."""
  pairs = []
  for cell in cells:
    best, pixels = cell["best"], cell["inputs"].get(PIXELS)
    if best in (None, PIXELS) or pixels is None or not pixels["accuracies"]:
      continue
    chosen = cell["inputs"][best]
    pairs.append(
      {"num_train": cell["num_train"], "best": best}
      | analysis.compare(chosen["by_seed"], pixels["by_seed"])
    )
  return stats.with_holm(pairs)


def _accuracy(row: Mapping[str, Any] | None, best: bool) -> str:
  if row is None or not row["seeds"]:
    return "–"
  text = f"{100 * row['test_mean']:.2f}"
  return f"**{text}**" if best else text


def section(records: Sequence[Mapping[str, Any]]) -> list[str]:
  """The report's samples-against-features tables; empty when the sweep is no such grid
  (`why_not`)."""
  if not applies(records):
    return []
  cells = grid(records)
  kind = reduction(records)
  why_missing = " (more components than N - 1, the most that N centred examples span)"
  missing = why_missing if kind == "pca" else ""
  labels = sorted(
    {label: row for c in cells for label, row in c["inputs"].items()}.items(),
    key=lambda item: input_key(item[1]["overrides"]),
  )
  columns = [label for label, _ in labels]
  lines = [
    "Samples against features: test accuracy (%) at each training-set size N (rows) and input "
    "(columns), mean over seeds, each cell at the learning rate validation chose for it; in "
    "bold, the input of best mean validation accuracy at that N (test accuracy takes no part "
    f"in the choice). A missing cell was not in the sweep{missing} or has not finished.",
    "",
    "| N | " + " | ".join(columns) + " | chosen on validation |",
    "|---|" + "---|" * (len(columns) + 1),
  ]
  for cell in cells:
    row = [_accuracy(cell["inputs"].get(c), c == cell["best"]) for c in columns]
    lines.append(f"| {cell['num_train']} | " + " | ".join(row) + f" | {cell['best'] or '–'} |")
  trend = growth(cells)
  if trend["why"]:
    lines += ["", trend["why"]]
  else:
    lines += [
      "",
      f"Does the chosen input grow with N? Spearman's rank correlation of N with the chosen "
      f"input's size (all pixels ranked largest): rho = {trend['rho']:+.2f}, p = "
      f"{trend['p']:.4f} (over {sum(1 for c in cells if c['best'])} sizes).",
    ]
  pairs = against_pixels(cells)
  if not pairs:
    lines += ["", why_no_pixels_pairs(cells)]
  else:
    lines += [
      "",
      "The chosen input minus all pixels, test accuracy (percentage points) at the same N: the "
      "difference, its 95% interval paired over seeds, and Holm's adjusted p-value (the N "
      "values one family):",
      "",
      "| N | chosen | difference |",
      "|---|---|---|",
    ]
    for pair in pairs:
      lines.append(
        f"| {pair['num_train']} | {pair['best']} | {learning_curve.difference_text(pair)} |"
      )
  return lines


def plot_grid(cells: Sequence[Mapping[str, Any]], path: str, title: str = "") -> None:
  """A heat map of mean test accuracy over (input, N), each N's chosen input outlined; the x
  axis is named by the reduction (`AXIS_LABELS`), its ticks by d."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.patches import Rectangle

  labels = sorted(
    {label: row for c in cells for label, row in c["inputs"].items()}.items(),
    key=lambda item: input_key(item[1]["overrides"]),
  )
  columns = [label for label, _ in labels]
  values = np.full((len(cells), len(columns)), np.nan)
  for i, cell in enumerate(cells):
    for j, column in enumerate(columns):
      row = cell["inputs"].get(column)
      if row is not None and row["seeds"]:
        values[i, j] = 100 * row["test_mean"]
  fig, ax = plt.subplots(figsize=(1.0 * len(columns) + 2.5, 0.5 * len(cells) + 2.0))
  image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto", origin="lower")
  fig.colorbar(image, ax=ax, label="test accuracy (%), mean over seeds")
  low, high = np.nanmin(values), np.nanmax(values)
  for i, cell in enumerate(cells):
    for j, column in enumerate(columns):
      if not math.isnan(values[i, j]):
        bright = high > low and (values[i, j] - low) / (high - low) > 0.6  # viridis turns yellow
        color = "k" if bright else "w"
        ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=7, color=color)
      if column == cell["best"]:
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
  kinds = {row["overrides"].get(FEATURES, PIXELS) for _, row in labels} - {PIXELS}
  kind = next(iter(kinds)) if len(kinds) == 1 else None
  ticks = [c.removeprefix(f"{kind} ") if kind else c for c in columns]
  ax.set_xticks(range(len(columns)), ticks)
  ax.set_yticks(range(len(cells)), [f"{c['num_train']:,}" for c in cells])
  ax.set_xlabel(AXIS_LABELS.get(kind, "input") if kind else "input")
  ax.set_ylabel("training examples N")
  heading = "Samples against features (red: best on validation at each N)"
  ax.set_title(f"{heading}\n{title}" if title else heading, fontsize=10)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=120)  # atomic: a stop leaves the old one whole
  plt.close(fig)


def write_plot(records: Sequence[Mapping[str, Any]], out_dir: str, title: str = "") -> str | None:
  """Writes `samples_features.png` in `out_dir` when the sweep is such a grid (`applies`) and a
  cell finished: its path, else None (and nothing written)."""
  if not applies(records):
    return None
  cells = grid(records)
  if not any(c["best"] for c in cells):
    return None
  path = os.path.join(out_dir, FILE)
  plot_grid(cells, path, title)
  return path
