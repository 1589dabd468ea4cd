"""Samples against features: the best input per N, chosen on validation, its trend, the heat map."""

import math
import os

import matplotlib.image
import numpy as np
import pytest

from convnet import report, samples_features, sweep
from convnet.configs.sweeps import samples_features as sweep_file

RATE = "optimizer.learning_rate"
SIZES = (50, 200, 800)
INPUTS = (
  {"data.features": "pca", "data.num_features": 8},
  {"data.features": "pca", "data.num_features": 32},
  {"data.features": "pixels", "data.num_features": 0},
)
# The input validation prefers at each N (the `pca 8` of 50, say), while test accuracy
# prefers another (all pixels at 50): the choice must not listen to test accuracy.
CHOSEN = {50: "pca 8", 200: "pca 32", 800: "pixels"}
# Test accuracy at best validation per seed, at the rate validation chooses.
TEST = {
  (50, "pca 8"): (0.60, 0.62, 0.65),
  (50, "pca 32"): (0.70, 0.71, 0.72),
  (50, "pixels"): (0.80, 0.81, 0.82),
  (200, "pca 8"): (0.85, 0.86, 0.87),
  (200, "pca 32"): (0.80, 0.81, 0.83),
  (200, "pixels"): (0.79, 0.80, 0.80),
  (800, "pca 8"): (0.95, 0.95, 0.96),
  (800, "pca 32"): (0.88, 0.89, 0.90),
  (800, "pixels"): (0.90, 0.91, 0.93),
}


def _record(index, overrides, validation, test):
  setting = ",".join(f"{k}={v}" for k, v in overrides.items() if k != "seed")
  return {
    "cell": f"{setting},seed={overrides['seed']}",
    "index": index,
    "setting": setting,
    "overrides": overrides,
    "config": {
      "model": {"name": "dense"},
      "num_epochs": 80,
      "max_steps": -1,
      "batch_size": min(128, overrides["data.num_train"]),
      "steps_per_epoch": 50,
    },
    "status": "done",
    "num_params": 1000,
    "flops_per_example": 2e3,
    "best_validation_accuracy": validation,
    "test_accuracy_at_best_validation": test,
    "wall_time_s": 10.0,
    "train_examples_per_sec": 100.0,
  }


def _grid_records(rates=(1e-3, 3e-3), sizes=SIZES, inputs=INPUTS, chosen=CHOSEN, data=None):
  """3 sizes x 3 inputs x 2 rates x 3 seeds; validation picks `chosen`, test prefers others.

  `data`: the base config's data fields (`features`, `num_features`), for inputs that leave
  them out."""
  records = []
  base = {"data.features": data["features"]} if data else {}
  for n in sizes:
    for features in inputs:
      label = samples_features.input_label(base | features)
      for rate in rates:
        for seed in range(3):
          best_rate = rate == rates[0]
          validation = (0.90 if label == chosen[n] else 0.70) + (0.05 if best_rate else 0.0)
          test = TEST.get((n, label), (0.5, 0.6, 0.7))[seed] if best_rate else 0.99
          overrides = {
            "data.num_train": n,
            "data.num_validation": max(100, n // 5),
            "batch_size": min(128, n),
            **features,
            RATE: rate,
            "seed": seed,
          }
          records.append(_record(len(records), overrides, validation + 0.001 * seed, test))
          if data:
            records[-1]["config"]["data"] = dict(data)
  return records


def test_the_best_input_at_each_size_is_chosen_on_validation_only():
  cells = samples_features.grid(_grid_records())
  assert [c["num_train"] for c in cells] == list(SIZES)
  assert [c["best"] for c in cells] == [CHOSEN[n] for n in SIZES]
  for cell in cells:
    assert list(cell["inputs"]) == ["pca 8", "pca 32", "pixels"]  # components, then pixels
    for row in cell["inputs"].values():
      assert row["learning_rate"] == 1e-3  # validation's rate, though test favours 3e-3


def test_a_chosen_input_that_grows_with_n_gives_a_rank_correlation_of_one():
  trend = samples_features.growth(samples_features.grid(_grid_records()))
  assert trend["rho"] == pytest.approx(1.0)
  assert trend["p"] < 1e-6


def test_a_chosen_input_that_shrinks_with_n_gives_minus_one_and_a_flat_one_none():
  cells = samples_features.grid(_grid_records())
  flipped = [dict(c, best=b) for c, b in zip(cells, ["pixels", "pca 32", "pca 8"], strict=True)]
  assert samples_features.growth(flipped)["rho"] == pytest.approx(-1.0)
  flat = [dict(c, best="pca 32") for c in cells]
  assert math.isnan(samples_features.growth(flat)["rho"])
  assert math.isnan(samples_features.growth(cells[:2])["rho"])


def test_the_chosen_input_minus_pixels_is_paired_over_seeds_with_holm_over_sizes():
  pairs = samples_features.against_pixels(samples_features.grid(_grid_records()))
  assert [(p["num_train"], p["best"]) for p in pairs] == [(50, "pca 8"), (200, "pca 32")]
  for pair in pairs:
    n = pair["num_train"]
    expected = np.subtract(TEST[n, pair["best"]], TEST[n, "pixels"]).mean()
    assert pair["paired_difference"] == pytest.approx(expected)
    assert pair["paired_seeds"] == 3
  assert pairs[0]["p_holm"] == pytest.approx(min(1.0, 2 * min(p["p"] for p in pairs)))


def test_the_section_bolds_each_sizes_choice_and_states_the_trend_and_the_family():
  text = "\n".join(samples_features.section(_grid_records()))
  assert "| N | pca 8 | pca 32 | pixels | chosen on validation |" in text
  assert "| 50 | **62.33** | 71.00 | 81.00 | pca 8 |" in text
  assert "| 200 | 86.00 | **81.33** | 79.67 | pca 32 |" in text
  assert "| 800 | 95.33 | 89.00 | **91.33** | pixels |" in text
  assert "rho = +1.00" in text
  assert "the N values one family" in text
  assert "| 50 | pca 8 | -18.67, paired [" in text
  assert "| 200 | pca 32 | +1.67, paired [" in text


def test_a_sweep_without_both_axes_has_no_section_and_no_plot(tmp_path):
  one_size = [r for r in _grid_records() if r["overrides"]["data.num_train"] == 50]
  for record in one_size:
    record["overrides"].pop("data.num_train")
  assert samples_features.section(one_size) == []
  assert samples_features.write_plot(one_size, str(tmp_path)) is None
  assert not os.listdir(tmp_path)


def test_the_report_draws_the_heat_map_with_each_choice_outlined(tmp_path):
  paths = report.write_report(_grid_records(), str(tmp_path), "hand-made")
  heat_map = os.path.join(tmp_path, samples_features.FILE)
  assert heat_map in paths
  image = matplotlib.image.imread(heat_map)[..., :3]
  red = (image[..., 0] > 0.9) & (image[..., 1] < 0.1) & (image[..., 2] < 0.1)
  assert red.sum() > 100  # the outlines of the three chosen cells
  assert "Samples against features" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("held_out, sizes", [(600, sweep_file.SIZES), (9000, (50, 51000))])
def test_the_sweep_leaves_out_inputs_above_n_minus_one_and_validates_in_proportion(held_out, sizes):
  cells = sweep_file.cells(sizes, held_out)
  for cell in cells:
    n = cell["data.num_train"]
    if cell["data.features"] == "pca":
      assert cell["data.num_features"] <= n - 1
    assert cell["data.num_validation"] == min(held_out, max(100, n // 5))
    assert cell["batch_size"] == min(128, n)
  at_50 = [c.get("data.num_features") for c in cells if c["data.num_train"] == 50]
  assert at_50 == [8, 16, 32, 0]
  biggest = [c for c in cells if c["data.num_train"] == max(sizes)]
  assert len(biggest) == len(sweep_file.COMPONENTS) + 1


def test_the_sweeps_settings_differ_by_rate_and_seed_only_within_a_cell():
  cells = sweep.expand(sweep_file.sweep)
  settings = {c.setting for c in cells}
  assert len(cells) == len(settings) * len(sweep_file.SEEDS)
  assert len({s.rsplit(",optimizer", 1)[0] for s in settings}) == len(settings) // len(
    sweep_file.LEARNING_RATES
  )


def _records_of(cells, rates=(1e-3,)):
  """A finished record per (sweep cell, rate, seed), its model named by the cell."""
  records = []
  for cell in cells:
    for rate in rates:
      for seed in range(2):
        overrides = cell | {RATE: rate, "seed": seed}
        record = _record(len(records), overrides, 0.9 + 0.01 * seed, 0.8 + 0.01 * seed)
        record["config"]["model"]["name"] = cell.get("model.name", "dense")
        records.append(record)
  return records


def _dense(n, **fields):
  return {"data.num_train": n, "batch_size": min(128, n)} | fields


PCA_8, PCA_16 = ({"data.features": "pca", "data.num_features": d} for d in (8, 16))
TOP_16 = {"data.features": "top_variance", "data.num_features": 16}
ALL_PIXELS = {"data.features": "pixels", "data.num_features": 0}


def _tuned_sweep_cells():
  from convnet.configs.sweeps import learning_curve_tuned

  return learning_curve_tuned.cells((64, 128, 256), learning_curve_tuned.VALIDATION_SPLIT)


@pytest.mark.parametrize(
  "cells, why",
  [
    (_tuned_sweep_cells(), "its models are convnet, dense"),
    (
      [
        _dense(n) | {"model.name": m} | i
        for n in (50, 200)
        for m in ("dense", "convnet")
        for i in (PCA_8, ALL_PIXELS)
      ],
      "its models are convnet, dense",
    ),
    (
      [_dense(n) | i for n in (50, 200) for i in (PCA_8, TOP_16, ALL_PIXELS)],
      "its inputs mix reductions (pca, top_variance)",
    ),
    (
      [_dense(n) | i for n in (50, 200) for i in (PCA_8, ALL_PIXELS, {"l1_penalty": 1e-4})],
      "it varies l1_penalty besides the input",
    ),
    (
      [
        _dense(n, **{"model.dense_features": w}) | i
        for n in (50, 200)
        for w in ((42,), (128,))
        for i in (PCA_8, ALL_PIXELS)
      ],
      "it varies model.dense_features besides the input",
    ),
    (
      [_dense(n) | ALL_PIXELS | {"data.num_features": k} for n in (50, 200) for k in (0, 16)],
      "its input does not vary",
    ),
  ],
  ids=["tuned-sweep", "two-models", "two-reductions", "l1-beside", "two-widths", "pixels-only"],
)
def test_a_sweep_that_is_not_one_dense_network_over_inputs_gets_no_grid(tmp_path, cells, why):
  records = _records_of(cells)
  assert samples_features.why_not(records).startswith(why)
  assert not samples_features.applies(records)
  assert samples_features.section(records) == []
  assert samples_features.write_plot(records, str(tmp_path)) is None
  assert not os.listdir(tmp_path)
  with pytest.raises(ValueError, match="no samples-against-features grid"):
    samples_features.grid(records)


def _plotted(records, monkeypatch, tmp_path):
  """The heat map's axes, as `write_plot` draws them (not saved)."""
  drawn = []
  monkeypatch.setattr(samples_features.files, "save_figure", lambda fig, *a, **k: drawn.append(fig))
  samples_features.write_plot(records, str(tmp_path))
  (figure,) = drawn
  return figure.axes[0]


def test_pixels_kept_are_a_grid_of_their_own_named_on_the_axis(monkeypatch, tmp_path):
  inputs = [{"data.features": "top_variance", "data.num_features": k} for k in (16, 64)]
  chosen = {50: "top_variance 16", 200: "top_variance 64", 800: "pixels"}
  records = _grid_records(inputs=[*inputs, ALL_PIXELS], chosen=chosen)
  assert samples_features.applies(records)
  assert [c["best"] for c in samples_features.grid(records)] == list(chosen.values())
  text = "\n".join(samples_features.section(records))
  assert "| N | top_variance 16 | top_variance 64 | pixels | chosen on validation |" in text
  assert "components" not in text
  axes = _plotted(records, monkeypatch, tmp_path)
  assert axes.get_xlabel() == samples_features.AXIS_LABELS["top_variance"]
  assert "pixels kept" in axes.get_xlabel()
  assert [t.get_text() for t in axes.get_xticklabels()] == ["16", "64", "pixels"]


def test_an_input_the_base_config_sets_is_read_from_the_config(monkeypatch, tmp_path):
  # The base config reads principal components; the sweep sets only their number, and pixels.
  inputs = [{"data.num_features": 8}, {"data.num_features": 32}, ALL_PIXELS]
  records = _grid_records(inputs=inputs, data={"features": "pca", "num_features": 64})
  cells = samples_features.grid(records)
  assert [list(c["inputs"]) for c in cells] == [["pca 8", "pca 32", "pixels"]] * 3
  assert [c["best"] for c in cells] == [CHOSEN[n] for n in SIZES]
  axes = _plotted(records, monkeypatch, tmp_path)
  assert axes.get_xlabel() == samples_features.AXIS_LABELS["pca"]
  assert [t.get_text() for t in axes.get_xticklabels()] == ["8", "32", "pixels"]


@pytest.mark.parametrize(
  "sizes, inputs, chosen, absent",
  [
    ((50, 200), INPUTS, CHOSEN, "it needs 3 or more sizes with a finished input, and 2 have one"),
    (SIZES, INPUTS, dict.fromkeys(SIZES, "pca 8"), "validation chose pca 8 at every N"),
    (SIZES, INPUTS, dict.fromkeys(SIZES, "pixels"), "validation chose all pixels at every N with"),
    (SIZES, (PCA_8, PCA_16), {50: "pca 8", 200: "pca 8", 800: "pca 16"}, "no all-pixels input"),
  ],
  ids=["two-sizes", "one-input-chosen", "pixels-chosen", "no-pixels"],
)
def test_a_trend_or_a_difference_that_cannot_be_given_says_why(sizes, inputs, chosen, absent):
  text = "\n".join(
    samples_features.section(_grid_records(sizes=sizes, inputs=inputs, chosen=chosen))
  )
  assert absent in text
  reasons = [line for line in text.splitlines() if line.startswith("No ")]
  rho, table = "rho =" in text, "| N | chosen | difference |" in text
  assert len(reasons) == (not rho) + (not table) >= 1  # one sentence for each thing left out


def test_the_samples_features_sweep_is_a_grid_of_one_reduction():
  records = _records_of(sweep_file.cells((50, 200), sweep_file.VALIDATION_SPLIT))
  assert samples_features.why_not(records) is None
  assert samples_features.reduction(records) == "pca"
  assert [list(c["inputs"]) for c in samples_features.grid(records)] == [
    ["pca 8", "pca 16", "pca 32", "pixels"],
    ["pca 8", "pca 16", "pca 32", "pca 64", "pca 128", "pixels"],
  ]
