"""The learning-curve part of the report: rows per model and size, differences, tables, plot."""

import math
import os

import matplotlib.image
import numpy as np
import pytest
from scipy import stats

from convnet import analysis, learning_curve, report

RATE = "optimizer.learning_rate"
SIZE = "data.num_train"
SIZES = (50, 200, 800)
# The rate validation accuracy prefers per (model, N); the other rate has the better test
# accuracy (0.99), which the choice must not listen to.
CHOSEN = {
  ("convnet", 50): 1e-3,
  ("convnet", 200): 3e-3,
  ("convnet", 800): 3e-3,
  ("dense", 50): 3e-3,
  ("dense", 200): 1e-3,
  ("dense", 800): 1e-3,
}
# Test accuracy at best validation per seed, at the chosen rate.
TEST = {
  ("convnet", 50): (0.60, 0.64, 0.65),
  ("convnet", 200): (0.80, 0.82, 0.85),
  ("convnet", 800): (0.93, 0.94, 0.96),
  ("dense", 50): (0.55, 0.56, 0.60),
  ("dense", 200): (0.70, 0.71, 0.71),
  ("dense", 800): (0.88, 0.90, 0.89),
}


def _record(index, overrides, validation, test, model, **config):
  setting = ",".join(f"{k}={v}" for k, v in overrides.items() if k != "seed")
  return {
    "cell": f"{setting},seed={overrides['seed']}",
    "index": index,
    "setting": setting,
    "overrides": overrides,
    "config": {"model": {"name": model}, "num_epochs": 10, "max_steps": -1} | config,
    "status": "done",
    "num_params": 33194 if model == "convnet" else 33400,
    "flops_per_example": 2e6,
    "best_validation_accuracy": validation,
    "test_accuracy_at_best_validation": test,
    "wall_time_s": 10.0,
    "train_examples_per_sec": 100.0,
  }


def _size(n):
  """The sweep's fields for a size: configs/sweeps/learning_curve.py's `sizes`."""
  batch = min(128, n)
  return {SIZE: n, "batch_size": batch, "steps_per_epoch": max(26, n // batch)}


def _curve_records():
  """2 models x 3 sizes x 2 rates x 3 seeds."""
  records = []
  for model in ("convnet", "dense"):
    for n in SIZES:
      for rate in (1e-3, 3e-3):
        for seed in range(3):
          chosen = rate == CHOSEN[model, n]
          validation = (0.90 if chosen else 0.80) + 0.01 * seed
          test = TEST[model, n][seed] if chosen else 0.99
          overrides = {"model.name": model, **_size(n), RATE: rate, "seed": seed}
          config = {k: v for k, v in overrides.items() if k in ("batch_size", "steps_per_epoch")}
          records.append(_record(len(records), overrides, validation, test, model, **config))
  return records


def test_rows_per_size_are_at_the_validation_chosen_rate():
  rows = learning_curve.learning_curve_rows(_curve_records())
  assert [(r["model"], r["num_train"], r["learning_rate"]) for r in rows] == [
    (model, n, CHOSEN[model, n]) for model in ("convnet", "dense") for n in SIZES
  ]
  for row in rows:
    expected = analysis.accuracy_interval(TEST[row["model"], row["num_train"]])
    assert row["seeds"] == 3
    assert row["accuracies"] == list(TEST[row["model"], row["num_train"]])
    assert (row["test_mean"], row["test_ci_low"], row["test_ci_high"]) == pytest.approx(
      (expected["mean"], expected["ci_low"], expected["ci_high"])
    )
  # The step budget, from each size's config: 10 epochs of max(26, one pass) steps.
  budgets = [(r["batch_size"], r["steps_per_epoch"], r["steps"]) for r in rows[:3]]
  assert budgets == [(50, 26, 260), (128, 26, 260), (128, 26, 260)]
  assert learning_curve.budget({"batch_size": 100, "num_epochs": 3}, 1000)["steps"] == 30
  capped = {"batch_size": 100, "num_epochs": 3, "max_steps": 7}
  assert learning_curve.budget(capped, 1000)["steps"] == 7


def test_each_model_minus_the_baseline_is_welch_at_the_same_size():
  pairs = learning_curve.minus_baseline(learning_curve.learning_curve_rows(_curve_records()))
  assert [(p["num_train"], p["model"], p["baseline"]) for p in pairs] == [
    (n, "convnet", "dense") for n in SIZES
  ]
  for pair in pairs:
    a = np.array(TEST["convnet", pair["num_train"]])
    b = np.array(TEST["dense", pair["num_train"]])
    # Welch's interval by hand: the variances of the means, their degrees of freedom.
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    half = stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
    difference = a.mean() - b.mean()
    assert pair["difference"] == pytest.approx(difference)
    assert (pair["ci_low"], pair["ci_high"]) == pytest.approx(
      (difference - half, difference + half)
    )
    # And scipy's own Welch test agrees.
    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (pair["ci_low"], pair["ci_high"]) == pytest.approx((welch.low, welch.high))


def test_markdown_tables_and_plot_are_written(tmp_path):
  records = _curve_records()
  paths = report.write_report(records, str(tmp_path))
  assert "learning_curve.png" in [os.path.basename(p) for p in paths]
  table = open(tmp_path / "report.md").read()
  assert "Training: 10 epochs of the steps per epoch below" in table
  assert "test accuracy at the epoch of best validation accuracy" in table
  assert "Learning curve: test accuracy (%)" in table
  assert "| N | batch | steps/epoch | steps | convnet | dense |" in table

  def cell(model, n):
    stats_ = analysis.accuracy_interval(TEST[model, n])
    low, high = 100 * stats_["ci_low"], 100 * stats_["ci_high"]
    return f"{100 * stats_['mean']:.2f} [{low:.2f}, {high:.2f}] (lr {CHOSEN[model, n]:g})"

  assert f"| 50 | 50 | 26 | 260 | {cell('convnet', 50)} | {cell('dense', 50)} |" in table
  assert f"| 800 | 128 | 26 | 260 | {cell('convnet', 800)} | {cell('dense', 800)} |" in table
  assert "Convnet minus dense by training-set size" in table
  assert "| N | convnet − dense |" in table
  # The difference, paired over the seeds both share, then Welch's interval beside it.
  welch = analysis.difference_interval(TEST["convnet", 200], TEST["dense", 200])
  paired = stats.ttest_rel(TEST["convnet", 200], TEST["dense", 200]).confidence_interval(0.95)
  assert (
    f"| 200 | {100 * welch['difference']:+.2f}, "
    f"paired [{100 * paired.low:+.2f}, {100 * paired.high:+.2f}], Holm p "
  ) in table
  assert f"; Welch [{100 * welch['ci_low']:+.2f}, {100 * welch['ci_high']:+.2f}] |" in table
  image = matplotlib.image.imread(tmp_path / "learning_curve.png")
  assert image.shape[0] >= 400 and image.shape[1] >= 600
  assert image[..., :3].std() > 0.05  # not blank


def test_the_dense_variants_are_named_and_each_compared_with_the_convnet():
  dense = {"model.name": "dense", "model.dense_features": [128]}
  models = [
    {"model.name": "convnet"},
    dense,
    dense | {"data.features": "pca", "data.num_features": 64},
    dense | {"data.features": "top_variance", "data.num_features": 64},
    dense | {"l1_penalty": 1e-4},
  ]
  records = []
  for model in models:
    for n in (100, 400):
      for seed in range(2):
        overrides = model | _size(n) | {"seed": seed}
        name = model["model.name"]
        records.append(_record(len(records), overrides, 0.9, 0.8 + 0.01 * seed, name))
  rows = learning_curve.learning_curve_rows(records)
  labels = list(dict.fromkeys(r["model"] for r in rows))
  assert labels == [
    "convnet",
    "dense",
    "dense, pca 64",
    "dense, top_variance 64",
    "dense, L1 0.0001",
  ]
  assert all(r["learning_rate"] is None for r in rows)  # no grid of rates: nothing tuned
  pairs = learning_curve.minus_baseline(rows)
  assert [(p["num_train"], p["baseline"]) for p in pairs] == [
    (n, label) for n in (100, 400) for label in labels[1:]
  ]
  lines = "\n".join(learning_curve.section(records))
  assert "(lr" not in lines and "tuned" not in lines
  assert "| N | convnet − dense | convnet − dense, pca 64 |" in lines


def test_a_batch_size_not_set_by_the_size_tells_lines_apart():
  records = [
    _record(i, {SIZE: n, "batch_size": b, "seed": 0}, 0.9, 0.8, "convnet", batch_size=b)
    for i, (n, b) in enumerate([(100, 10), (100, 20), (400, 10), (400, 20)])
  ]
  rows = learning_curve.learning_curve_rows(records)
  assert [(r["model"], r["num_train"]) for r in rows] == [
    ("convnet, batch_size=10", 100),
    ("convnet, batch_size=10", 400),
    ("convnet, batch_size=20", 100),
    ("convnet, batch_size=20", 400),
  ]


def test_sweeps_without_num_train_get_no_learning_curve(tmp_path):
  rate_records = [
    _record(i, {"model.name": m, RATE: r, "seed": s}, 0.9 + 0.01 * s, 0.9, m)
    for i, (m, r, s) in enumerate(
      (m, r, s) for m in ("convnet", "dense") for r in (1e-3, 3e-3) for s in range(2)
    )
  ]
  fixed_size = [r | {"overrides": r["overrides"] | {SIZE: 100}} for r in rate_records]
  for records in (rate_records, fixed_size):  # a size every cell shares is no axis
    assert not learning_curve.applies(records)
    assert learning_curve.section(records) == []
    table = report.markdown(analysis.summarize(records), records)
    assert "Learning curve" not in table and "Training:" not in table
  paths = report.write_report(rate_records, str(tmp_path))
  assert "learning_curve.png" not in [os.path.basename(p) for p in paths]


# A remedy's own setting tuned per N: validation prefers CHOSEN_SETTING, test the other values.
CHOSEN_SETTING = {
  ("pca", 50): 8,
  ("pca", 200): 32,
  ("pca", 800): 64,
  ("l1", 50): 1e-3,
  ("l1", 200): 1e-4,
  ("l1", 800): 1e-4,
}
SETTINGS = {
  "pca": [{"data.features": "pca", "data.num_features": k} for k in (8, 32, 64)],
  "l1": [{"l1_penalty": v} for v in (1e-5, 1e-4, 1e-3)],
}


def _remedy_records():
  """convnet, dense, and the two remedies at three settings each; 3 sizes x 3 rates x 3 seeds."""
  records = []
  rates = (1e-3, 3e-3, 1e-2)
  lines = [("convnet", None, {}), ("dense", None, {})]
  lines += [("dense", name, s) for name, settings in SETTINGS.items() for s in settings]
  for model, remedy, setting in lines:
    for n in SIZES:
      for rate in rates:
        for seed in range(3):
          value = (
            next(iter(setting.values())) if remedy == "l1" else setting.get("data.num_features")
          )
          chosen_setting = remedy is None or value == CHOSEN_SETTING[remedy, n]
          # Validation prefers 3e-3 everywhere but for the remedies at N = 800 (1e-2: an edge).
          best_rate = 1e-2 if remedy and n == 800 else 3e-3
          validation = 0.80 + 0.05 * chosen_setting + 0.04 * (rate == best_rate) + 0.001 * seed
          test = 0.70 + 0.01 * seed if chosen_setting and rate == best_rate else 0.99
          overrides = {"model.name": model, **_size(n), **setting, RATE: rate, "seed": seed}
          config = {k: v for k, v in overrides.items() if k in ("batch_size", "steps_per_epoch")}
          records.append(_record(len(records), overrides, validation, test, model, **config))
  return records


def test_a_remedys_setting_is_tuned_per_size_on_validation_and_named():
  rows = learning_curve.learning_curve_rows(_remedy_records())
  models = list(dict.fromkeys(r["model"] for r in rows))
  assert models == ["convnet", "dense", "dense, pca, d tuned", "dense, L1 tuned"]
  for row in rows:
    assert row["test_mean"] == pytest.approx(0.71)  # never a 0.99 that validation rejected
    if row["model"] == "dense, pca, d tuned":
      assert row["tuned"] == {
        "data.num_features": (CHOSEN_SETTING["pca", row["num_train"]], [8, 32, 64])
      }
    elif row["model"] == "dense, L1 tuned":
      value, grid = row["tuned"]["l1_penalty"]
      assert value == CHOSEN_SETTING["l1", row["num_train"]] and grid == [1e-5, 1e-4, 1e-3]
    else:
      assert row["tuned"] == {}
  untuned = learning_curve.learning_curve_rows(_remedy_records(), tune_remedies=False)
  assert len({r["model"] for r in untuned}) == 8


def test_choices_at_a_grid_edge_are_listed_and_a_line_alone_keeps_its_label():
  rows = learning_curve.learning_curve_rows(_remedy_records())
  edges = learning_curve.at_grid_edges(rows)
  assert "dense, pca, d tuned at N = 50: d 8 (smallest of 8 to 64)" in edges
  assert "dense, pca, d tuned at N = 800: d 64 (largest of 8 to 64)" in edges
  assert "dense, pca, d tuned at N = 800: lr 0.01 (largest of 0.001 to 0.01)" in edges
  assert "dense, L1 tuned at N = 50: L1 0.001 (largest of 1e-05 to 0.001)" in edges
  assert not [e for e in edges if e.startswith(("convnet ", "dense at"))]
  assert not [e for e in edges if "N = 200: d" in e or "N = 200: lr" in e]
  text = "\n".join(learning_curve.section(_remedy_records()))
  assert "71.00 [" in text and "(lr 0.003, d 32)" in text and "(lr 0.01, L1 0.0001)" in text
  assert "Choices at the edge of their grid" in text and "d 8 (smallest of 8 to 64)" in text
  # The first sweep's lines, one setting each, keep their names.
  one_setting = [
    r
    for r in _remedy_records()
    if r["overrides"].get("data.num_features", 32) == 32
    and r["overrides"].get("l1_penalty", 1e-4) == 1e-4
  ]
  names = {r["model"] for r in learning_curve.learning_curve_rows(one_setting)}
  assert names == {"convnet", "dense", "dense, pca 32", "dense, L1 0.0001"}


def _sweep_records(cells, rates=(1e-3, 3e-3, 1e-2), seeds=2):
  """A record per (cell, rate, seed) of a sweep file's cells; validation prefers the middle rate
  and, among a remedy's settings, the sweep's order (the first value)."""
  records, first = [], {}
  for cell in cells:
    name = cell.get("model.name", "dense")
    kind = (name, cell.get("data.features"), "l1_penalty" in cell, cell[SIZE])
    rank = first.setdefault(kind, len(records))
    for rate in rates:
      for seed in range(seeds):
        overrides = cell | {RATE: rate, "seed": seed}
        validation = 0.9 - 0.0001 * (len(records) - rank) + 0.01 * (rate == rates[1])
        records.append(_record(len(records), overrides, validation, 0.8 + 0.01 * seed, name))
  return records


def test_the_tuned_sweeps_lines_are_named_by_what_varies_within_their_model():
  from convnet.configs.sweeps import learning_curve_tuned

  cells = learning_curve_tuned.cells((64, 128, 256), learning_curve_tuned.VALIDATION_SPLIT)
  rows = learning_curve.learning_curve_rows(_sweep_records(cells))
  # Every dense line sets the book's width, so no label names it: tuned lines as plain ones.
  assert list(dict.fromkeys(r["model"] for r in rows)) == [
    "convnet",
    "dense",
    "dense, pca, d tuned",
    "dense, top_variance, d tuned",
    "dense, L1 tuned",
  ]
  text = "\n".join(learning_curve.section(_sweep_records(cells)))
  assert (
    "| convnet | dense | dense, pca, d tuned | dense, top_variance, d tuned | dense, L1" in text
  )
  assert "dense_features" not in text


def test_lines_of_a_model_at_two_widths_name_the_width_the_same_way_tuned_or_not():
  dense = [{"model.name": "dense", "model.dense_features": w} for w in ((42,), (128,))]
  settings = [{"data.features": "pca", "data.num_features": d} for d in (8, 16, 32)]
  settings += [{"l1_penalty": v} for v in (1e-5, 1e-4, 1e-3)]
  cells = [_size(n) | m | s for n in (100, 400) for m in dense for s in [{}, *settings]]
  records = _sweep_records(cells)
  plain = {r["model"] for r in learning_curve.learning_curve_rows(records, tune_remedies=False)}
  assert {"dense, dense_features=42", "dense, dense_features=42, pca 8"} < plain
  assert "dense, dense_features=128, L1 0.001" in plain
  tuned = list(dict.fromkeys(r["model"] for r in learning_curve.learning_curve_rows(records)))
  assert tuned == [
    f"dense, dense_features={w}{line}"
    for w in (42, 128)
    for line in ("", ", pca, d tuned", ", L1 tuned")
  ]


def test_the_edge_line_says_which_grids_it_checked_and_never_calls_small_grids_clear():
  # Two rates a line: too few for an edge to mean anything, so nothing is called clear.
  text = "\n".join(learning_curve.section(_curve_records()))
  assert "Choices at the edge of their grid: not checked" in text
  assert "grid of 3 or more values" in text and "none." not in text
  # Three rates and three settings: every choice is checked, and the count says how many.
  rows = learning_curve.learning_curve_rows(_remedy_records())
  checked = len(rows) + sum(len(r["tuned"]) for r in rows)
  text = "\n".join(learning_curve.section(_remedy_records()))
  assert f"of the {checked} choices made from grids of 3 or more values" in text
  # Two rates but three settings: only the settings' choices are checked.
  two_rates = [r for r in _remedy_records() if r["overrides"][RATE] != 1e-2]
  rows = learning_curve.learning_curve_rows(two_rates)
  assert all(len(r["rate_grid"]) == 2 for r in rows)
  tuned = sum(len(r["tuned"]) for r in rows)
  assert tuned == 6  # two remedies at three sizes
  text = "\n".join(learning_curve.section(two_rates))
  assert f"of the {tuned} choices made from grids of 3 or more values" in text
