"""The samples-against-features part of a sweep's report: which input size d is best at each N.

Used by `convnet.report` when a sweep varies both the training-set size
`data.num_train` (N) and the dense network's input (`data.features` and
`data.num_features`), as configs/sweeps/samples_features.py does. Each input
is a learning-curve line (`learning_curve.learning_curve_rows`), at the
learning rate validation chose for it at each N. The seed's note says that a
small sample defeats many features; if so, the best d grows with N.

- `grid`: per N, each input's test accuracy, and the input with the best mean
  validation accuracy (test accuracy never takes part in the choice);
- `growth`: Spearman's rank correlation of N with the chosen d (all pixels
  rank above every number of components);
- `section` (markdown lines): the grid, the chosen d per N, and the chosen
  input minus all pixels at each N, paired over seeds, Holm's correction over
  the N values as one family;
- `write_plot`: `samples_features.png`, a heat map of test accuracy over
  (d, N) with each N's chosen d outlined.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from convnet import analysis, files, learning_curve, stats

FEATURES, NUM_FEATURES = "data.features", "data.num_features"
PIXELS = "pixels"
FILE = "samples_features.png"  # the figure `write_plot` writes


def applies(records: Sequence[Mapping[str, Any]]) -> bool:
  """Whether the sweep varies N and the number of input features."""
  fields = analysis.varying_fields(records)
  return learning_curve.SIZE in fields and (NUM_FEATURES in fields or FEATURES in fields)


def input_key(overrides: Mapping[str, Any]) -> tuple[int, float]:
  """How inputs sort: components by their number, then all pixels (as infinitely many)."""
  if overrides.get(FEATURES, PIXELS) == PIXELS:
    return (1, math.inf)
  return (0, float(overrides.get(NUM_FEATURES, 0)))


def input_label(overrides: Mapping[str, Any]) -> str:
  """`pca 16`, `top_variance 50` or `pixels`."""
  features = overrides.get(FEATURES, PIXELS)
  return PIXELS if features == PIXELS else f"{features} {overrides.get(NUM_FEATURES, 0)}"


def grid(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Per N (ascending): `num_train`, `inputs` ({label: learning-curve row}, sorted by d) and
  `best` (the label of the finished input with the best mean validation accuracy; of equal
  means, the smaller input; None when no input at that N finished)."""
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


def growth(cells: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Spearman's rho of N with the chosen input's size (`rho`, `p`; NaN below 3 sizes or with
  no spread)."""
  chosen = [
    (c["num_train"], input_key(c["inputs"][c["best"]]["overrides"])) for c in cells if c["best"]
  ]
  ranks = sorted({key for _, key in chosen})
  n = np.array([size for size, _ in chosen], np.float64)
  d = np.array([ranks.index(key) for _, key in chosen], np.float64)
  if len(chosen) < 3 or np.all(d == d[0]) or np.all(n == n[0]):
    return {"rho": math.nan, "p": math.nan}
  result = scipy_stats.spearmanr(n, d)
  return {"rho": float(result.statistic), "p": float(result.pvalue)}


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
  """The report's samples-against-features tables; empty when the sweep does not vary both."""
  if not applies(records):
    return []
  cells = grid(records)
  labels = sorted(
    {label: row for c in cells for label, row in c["inputs"].items()}.items(),
    key=lambda item: input_key(item[1]["overrides"]),
  )
  columns = [label for label, _ in labels]
  lines = [
    "Samples against features: test accuracy (%) at each training-set size N (rows) and input "
    "(columns), mean over seeds, each cell at the learning rate validation chose for it; in "
    "bold, the input of best mean validation accuracy at that N (test accuracy takes no part "
    "in the choice). A missing cell was not trained (more components than N - 1, the most that "
    "N centred examples span) or has not finished.",
    "",
    "| N | " + " | ".join(columns) + " | chosen on validation |",
    "|---|" + "---|" * (len(columns) + 1),
  ]
  for cell in cells:
    row = [_accuracy(cell["inputs"].get(c), c == cell["best"]) for c in columns]
    lines.append(f"| {cell['num_train']} | " + " | ".join(row) + f" | {cell['best'] or '–'} |")
  trend = growth(cells)
  if not math.isnan(trend["rho"]):
    lines += [
      "",
      f"Does the chosen input grow with N? Spearman's rank correlation of N with the chosen "
      f"input's size (all pixels ranked largest): rho = {trend['rho']:+.2f}, p = "
      f"{trend['p']:.4f} (over {sum(1 for c in cells if c['best'])} sizes).",
    ]
  pairs = against_pixels(cells)
  if pairs:
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
  """A heat map of mean test accuracy over (input, N), each N's chosen input outlined."""
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
  ax.set_xticks(range(len(columns)), [c.replace("pca ", "") for c in columns])
  ax.set_yticks(range(len(cells)), [f"{c['num_train']:,}" for c in cells])
  ax.set_xlabel("input: principal components d, or all pixels")
  ax.set_ylabel("training examples N")
  heading = "Samples against features (red: best on validation at each N)"
  ax.set_title(f"{heading}\n{title}" if title else heading, fontsize=10)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=120)  # atomic: a stop leaves the old one whole
  plt.close(fig)


def write_plot(records: Sequence[Mapping[str, Any]], out_dir: str, title: str = "") -> str | None:
  """Writes `samples_features.png` in `out_dir` when the sweep applies and a cell finished."""
  if not applies(records):
    return None
  cells = grid(records)
  if not any(c["best"] for c in cells):
    return None
  path = os.path.join(out_dir, FILE)
  plot_grid(cells, path, title)
  return path
