"""The sweep report: statistics over seeds, the table, the CSV and the plots."""

import csv
import glob
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings

import matplotlib.image
import pytest
from scipy import stats

from convnet import analysis, report
from convnet.errors import DataError, FileFormatError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Student's t, 97.5th percentile, with 2 and 1 degrees of freedom (table values).
T_975_2 = 4.302652729911275
T_975_1 = 12.706204736174705


def _logit_interval(values, t):
  """The logit-scale t interval, by hand: mean and sample spread of log(a / (1 - a)), back."""
  logits = [math.log(v / (1 - v)) for v in values]
  mean = sum(logits) / len(logits)
  std = math.sqrt(sum((x - mean) ** 2 for x in logits) / (len(logits) - 1))
  half = t * std / math.sqrt(len(logits))
  return 1 / (1 + math.exp(-(mean - half))), 1 / (1 + math.exp(-(mean + half)))


def _record(index, overrides, validation=None, test=None, model="convnet", params=1000, **extra):
  setting = ",".join(f"{k}={v}" for k, v in overrides.items() if k != "seed") or "base"
  record = {
    "cell": f"{setting},seed={overrides.get('seed', 0)}",
    "index": index,
    "setting": setting,
    "overrides": overrides,
    "config": {"model": {"name": model}},
    "status": "done",
    "num_params": params,
    "flops_per_example": 2e6,
    "best_validation_accuracy": validation,
    "test_accuracy_at_best_validation": test,
    "wall_time_s": 10.0,
    "train_examples_per_sec": 100.0,
  }
  return record | extra


def _write(tmp_path, records):
  os.makedirs(tmp_path / "records", exist_ok=True)
  for r in records:
    with open(tmp_path / "records" / f"{r['cell']}.json", "w") as f:
      json.dump(r, f)
  return str(tmp_path)


def _kernel_records():
  k = "model.conv.kernel_size"
  return [
    # Written out of order: the report follows the sweep's index.
    _record(3, {k: 5, "seed": 0}, 0.80, 0.81),
    _record(0, {k: 3, "seed": 0}, 0.90, 0.91),
    _record(1, {k: 3, "seed": 1}, 0.92, 0.93),
    _record(2, {k: 3, "seed": 2}, 0.94, 0.95),
    _record(4, {k: 5, "seed": 1}, status="failed", error="FloatingPointError: nan\ntrace"),
  ]


def test_statistics_over_seeds():
  rows = analysis.summarize(_kernel_records())
  assert [r["label"] for r in rows] == ["kernel_size=3", "kernel_size=5"]
  three, five = rows
  assert three["seeds"] == 3 and three["not_finished"] == 0
  assert three["validation_mean"] == pytest.approx(0.92)
  assert three["validation_std"] == pytest.approx(0.02)
  # Accuracies' intervals are Student's t on the logit scale (they stay within [0, 1]).
  low, high = _logit_interval([0.90, 0.92, 0.94], T_975_2)
  assert three["validation_ci_low"] == pytest.approx(low)
  assert three["validation_ci_high"] == pytest.approx(high)
  assert three["test_mean"] == pytest.approx(0.93)
  # The failed cell is counted, and left out of the statistics.
  assert five["seeds"] == 1 and five["not_finished"] == 1
  assert five["test_mean"] == pytest.approx(0.81)
  assert math.isnan(five["test_std"]) and math.isnan(five["test_ci_low"])
  assert three["model.conv.kernel_size"] == 3


def test_two_seeds_interval():
  two = analysis.interval([0.5, 0.7])
  half = T_975_1 * math.sqrt(0.02) / math.sqrt(2)  # sample variance of 0.5 and 0.7 is 0.02
  assert two["mean"] == pytest.approx(0.6)
  assert (two["ci_low"], two["ci_high"]) == pytest.approx((0.6 - half, 0.6 + half))


def test_list_overrides_give_short_labels_and_a_categorical_axis():
  features, pool = "model.conv.features", "model.pool.type"
  records = [
    _record(0, {features: [16], pool: ["max"], "seed": 0}, 0.9, 0.9),
    _record(1, {features: [16, 32], pool: ["max", "max"], "seed": 0}, 0.95, 0.95),
  ]
  rows = analysis.summarize(records)
  assert [r["label"] for r in rows] == ["features=16 type=max", "features=16,32 type=max,max"]
  assert report.numeric_axis(rows, analysis.varying_fields(records)) is None
  assert analysis.short_label({"model.conv.strides": [[2, 2], [1, 1]]}, ["model.conv.strides"]) == (
    "strides=2x2,1x1"
  )
  rate = "optimizer.learning_rate"
  records = [_record(i, {rate: lr, "seed": 0}, 0.9, 0.9) for i, lr in enumerate((1e-3, 1e-2))]
  rows = analysis.summarize(records)
  assert report.numeric_axis(rows, analysis.varying_fields(records)) == rate


def test_files_table_and_plots(tmp_path):
  records = _kernel_records()
  paths = report.write_report(records, str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == ["accuracy.png", "report.csv", "report.md"]
  table = open(tmp_path / "report.md").read()
  assert "| kernel_size=3 | convnet | 1,000 | 2.00 | 3 | 92.00 ± 2.00 |" in table
  low, high = _logit_interval([0.91, 0.93, 0.95], T_975_2)
  assert f"| [{100 * low:.2f}, {100 * high:.2f}] |" in table
  assert (
    "| kernel_size=5 | convnet | 1,000 | 2.00 | 1 (1 did not finish) | 80.00 ± – | – |" in table
  )
  assert "FloatingPointError: nan" in table and "trace" not in table
  with open(tmp_path / "report.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["setting"] for r in rows] == ["model.conv.kernel_size=3", "model.conv.kernel_size=5"]
  assert float(rows[0]["test_std"]) == pytest.approx(0.02)
  assert float(rows[0]["test_ci_high"]) == pytest.approx(high)
  image = matplotlib.image.imread(tmp_path / "accuracy.png")
  assert image.shape[0] >= 400 and image.shape[1] >= 600
  assert image[..., :3].std() > 0.05  # not blank


def test_params_plot_only_with_two_models(tmp_path):
  records = [
    _record(i, {"model.name": m, "seed": s}, 0.9, 0.9 + 0.01 * s, model=m, params=p)
    for i, (m, p, s) in enumerate(
      (m, p, s) for m, p in (("convnet", 33194), ("dense", 33400)) for s in range(2)
    )
  ]
  paths = report.write_report(records, str(tmp_path / "both"))
  assert "params.png" in [os.path.basename(p) for p in paths]
  image = matplotlib.image.imread(tmp_path / "both" / "params.png")
  assert image[..., :3].std() > 0.05
  paths = report.write_report(records[:2], str(tmp_path / "one"))
  assert "params.png" not in [os.path.basename(p) for p in paths]


def test_bad_sweep_directories_are_named(tmp_path):
  with pytest.raises(DataError, match=f"{tmp_path}/records does not exist"):
    analysis.load_records(str(tmp_path))
  os.makedirs(tmp_path / "records")
  with pytest.raises(DataError, match="holds no records"):
    analysis.load_records(str(tmp_path))
  (tmp_path / "records" / "torn.json").write_text('{"cell": ')
  with pytest.raises(FileFormatError, match="torn.json is not JSON .*; move it out of"):
    analysis.load_records(str(tmp_path))
  (tmp_path / "records" / "torn.json").write_bytes(b"\xff\xfe\x00garbage")
  with pytest.raises(FileFormatError, match="torn.json is not UTF-8"):
    analysis.load_records(str(tmp_path))
  (tmp_path / "records" / "torn.json").write_text('{"cell": "a", "index": 0}')
  with pytest.raises(FileFormatError, match="torn.json: setting is missing: it is not a sweep rec"):
    analysis.load_records(str(tmp_path))
  (tmp_path / "records" / "torn.json").write_text("[1, 2]")
  with pytest.raises(FileFormatError, match=r"torn.json: the record is \[1, 2\], not an object"):
    analysis.load_records(str(tmp_path))


def test_command_line(tmp_path):
  sweep_dir = _write(tmp_path, _kernel_records())
  done = subprocess.run(
    [sys.executable, "-m", "convnet.report", sweep_dir],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert done.returncode == 0, done.stderr
  assert "| kernel_size=3 | convnet |" in done.stdout
  assert "Wrote " in done.stdout and os.path.join(sweep_dir, "report.csv") in done.stdout
  assert os.path.exists(os.path.join(sweep_dir, "accuracy.png"))
  # A user's mistake ends in one line: sys.exit with a message, which Python prints without a
  # traceback (in-process, since a second interpreter would double this test's time).
  nowhere = str(tmp_path / "nowhere")
  with pytest.raises(SystemExit, match=f"^error: {nowhere}/records does not exist"):
    report.main(["report", nowhere])


def test_each_model_minus_the_baseline_at_matched_parameters():
  """Welch's interval, checked against the formula worked by hand for two seeds a side."""
  records = [
    _record(0, {"model.name": "convnet", "seed": 0}, 0.9, 0.95, model="convnet", params=33194),
    _record(1, {"model.name": "convnet", "seed": 1}, 0.9, 0.97, model="convnet", params=33194),
    _record(2, {"model.name": "dense", "seed": 0}, 0.9, 0.90, model="dense", params=33400),
    _record(3, {"model.name": "dense", "seed": 1}, 0.9, 0.91, model="dense", params=33400),
    _record(4, {"model.name": "dense", "w": 9, "seed": 0}, 0.9, 0.5, model="dense", params=90000),
  ]
  (pair,) = analysis.matched_pairs(records)
  assert pair["baseline"]["num_params"] == 33400  # the nearest budget, not the 90k one
  assert pair["difference"] == pytest.approx(0.055)
  # Variances of the means: 0.0002 / 2 and 0.00005 / 2; Welch's degrees of freedom:
  # (1.25e-4)^2 / ((1e-4)^2 + (2.5e-5)^2) = 1.470588...; Student's t at 0.975 with those
  # degrees of freedom is 6.18811 (a table value, from scipy.stats.t.ppf).
  se = math.sqrt(0.0002 / 2 + 0.00005 / 2)
  half = pair["ci_high"] - pair["difference"]
  assert half == pytest.approx(6.18811 * se, rel=1e-4)
  assert pair["ci_low"] == pytest.approx(0.055 - half)
  table = report.markdown(analysis.summarize(records), records)
  assert "| name=convnet | name=dense | 33,194 / 33,400 | +5.50 |" in table
  assert analysis.matched_pairs(records[:2]) == []  # no dense network to compare with


def test_convnet_and_dense_are_paired_on_the_same_data_and_labels_tell_names_apart():
  def record(index, data, model, seed, test, params):
    overrides = {"data.name": data, "model.name": model, "seed": seed}
    return _record(index, overrides, 0.9, test, model=model, params=params)

  records = [
    record(0, "clean", "convnet", 0, 0.90, 1000),
    record(1, "clean", "convnet", 1, 0.92, 1000),
    record(2, "clean", "dense", 0, 0.80, 1010),
    record(3, "clean", "dense", 1, 0.82, 1010),
    record(4, "noisy", "convnet", 0, 0.60, 1000),
    record(5, "noisy", "convnet", 1, 0.62, 1000),
    record(6, "noisy", "dense", 0, 0.70, 1002),  # nearer in size to the convnets than clean's
    record(7, "noisy", "dense", 1, 0.72, 1002),
  ]
  pairs = analysis.matched_pairs(records)
  labels = [(p["model"]["label"], p["baseline"]["label"]) for p in pairs]
  assert labels == [
    ("data.name=clean model.name=convnet", "data.name=clean model.name=dense"),
    ("data.name=noisy model.name=convnet", "data.name=noisy model.name=dense"),
  ]
  assert [p["difference"] for p in pairs] == pytest.approx([0.10, -0.10])
  # The same context names the plot's series: one per model and data.
  contexts = [(r["model"], r["context"]) for r in analysis.summarize(records)]
  assert contexts == [
    ("convnet", "data.name=clean"),
    ("dense", "data.name=clean"),
    ("convnet", "data.name=noisy"),
    ("dense", "data.name=noisy"),
  ]
  # Without dense runs on the noisy data, its convnets go unpaired.
  assert len(analysis.matched_pairs(records[:6])) == 1


def test_every_model_is_compared_with_the_baseline_whatever_the_sweeps_order():
  # The dense baseline comes first in the sweep; each other model gets its own table against it.
  runs = [("dense", 33400, 0.90, 0.91), ("convnet", 33194, 0.95, 0.97), ("tiny", 32000, 0.6, 0.7)]
  records = [
    _record(2 * i + s, {"model.name": m, "seed": s}, 0.9, (a, b)[s], model=m, params=p)
    for i, (m, p, a, b) in enumerate(runs)
    for s in (0, 1)
  ]
  pairs = analysis.matched_pairs(records)
  assert [(p["model"]["model"], p["baseline"]["model"]) for p in pairs] == [
    ("convnet", "dense"),
    ("tiny", "dense"),
  ]
  assert [p["difference"] for p in pairs] == pytest.approx([0.055, -0.255])
  table = report.markdown(analysis.summarize(records), records)
  assert "Convnet minus dense at matched parameter counts" in table
  assert (
    "| convnet | dense | parameters (convnet / dense) | difference | paired 95% CI | p | Holm p "
    "| survives Holm (0.05) | Welch 95% CI |"
  ) in table
  assert "| name=convnet | name=dense | 33,194 / 33,400 | +5.50 |" in table
  assert "Tiny minus dense at matched parameter counts" in table
  assert "| name=tiny | name=dense | 32,000 / 33,400 | -25.50 |" in table
  # Another baseline, named by data: the dense network is then compared with it.
  (pair,) = analysis.matched_pairs(records[:4], baseline="convnet")
  assert (pair["model"]["model"], pair["difference"]) == ("dense", pytest.approx(-0.055))


def test_titles_name_the_sweep_its_data_and_its_epochs():
  # The titles of the committed results/*/accuracy.png; update only with those figures.
  def title(data, sweep_dir="runs/padding"):
    return report.describe([{"config": {"data": data, "num_epochs": 10}}], sweep_dir)

  assert title({"source": "embedded"}) == "padding on embedded MNIST (5,000 digits), 10 epochs"
  idx = {"source": "idx", "idx_dir": "/usr/share/datasets/fashion-mnist/"}
  assert title(idx) == "padding on fashion-mnist, 10 epochs"
  assert title({"source": "mnist1d", "name": "mnist1d"}) == "padding on mnist1d, 10 epochs"


def test_short_names_grow_only_where_last_names_clash():
  fields = ["data.name", "model.name", "model.conv.kernel_size", "optimizer.learning_rate"]
  names = [analysis.short_name(f, fields) for f in fields]
  assert names == ["data.name", "model.name", "kernel_size", "learning_rate"]
  assert analysis.short_name("a.b.c", ["a.b.c", "x.b.c"]) == "a.b.c"


RATE = "optimizer.learning_rate"


def _rate_records(arms, start=0):
  """Records for {(model, params): {rate: [(validation, test) or status, ...one per seed]}}."""
  records = []
  for (model, params), by_rate in arms.items():
    for rate, seeds in by_rate.items():
      for seed, result in enumerate(seeds):
        overrides = {"model.name": model, RATE: rate, "seed": seed}
        index = start + len(records)
        if isinstance(result, str):
          records.append(_record(index, overrides, model=model, params=params, status=result))
        else:
          records.append(_record(index, overrides, *result, model=model, params=params))
  return records


def test_the_rate_is_chosen_on_validation_and_test_is_reported_there():
  # Validation prefers 1e-3; test would prefer 3e-3, and must not be listened to.
  records = _rate_records(
    {
      ("convnet", 1000): {
        3e-4: [(0.90, 0.90), (0.92, 0.92)],
        1e-3: [(0.95, 0.90), (0.97, 0.92)],
        3e-3: [(0.93, 0.97), (0.95, 0.99)],
      }
    }
  )
  (arm,) = analysis.tune_learning_rate(records)
  assert arm["label"] == "base" and arm["model"] == "convnet"
  assert arm["grid"] == [3e-4, 1e-3, 3e-3]
  assert arm["learning_rate"] == 1e-3 and arm["set_aside"] == {}
  assert arm["setting"] == f"model.name=convnet,{RATE}=0.001"
  assert arm["seeds"] == 2
  assert arm["validation_mean"] == pytest.approx(0.96)
  # The test accuracy at the validation-chosen rate, not the best test accuracy (0.98).
  assert arm["test_mean"] == pytest.approx(0.91)
  assert (arm["test_ci_low"], arm["test_ci_high"]) == pytest.approx(
    _logit_interval([0.90, 0.92], T_975_1)
  )
  assert [r["learning_rate"] for r in arm["rates"]] == [3e-4, 1e-3, 3e-3]
  assert [r["test_mean"] for r in arm["rates"]] == pytest.approx([0.91, 0.91, 0.98])


def test_equal_means_choose_the_smaller_rate():
  # The same seeds' accuracies in another order: an exact tie, listed larger rate first.
  records = _rate_records(
    {
      ("convnet", 1000): {
        3e-3: [(0.3, 0.5), (0.1, 0.5), (0.2, 0.5)],
        1e-3: [(0.1, 0.4), (0.2, 0.4), (0.3, 0.4)],
        3e-4: [(0.1, 0.9), (0.1, 0.9), (0.1, 0.9)],
      }
    }
  )
  (arm,) = analysis.tune_learning_rate(records)
  assert arm["learning_rate"] == 1e-3
  assert arm["test_mean"] == pytest.approx(0.4)


def test_rates_with_a_diverged_failed_or_missing_seed_are_set_aside():
  records = _rate_records(
    {
      # 3e-3 has the best mean over the seeds that finished, but one diverged.
      ("convnet", 1000): {
        1e-3: [(0.90, 0.90), (0.92, 0.92), (0.91, 0.91)],
        3e-3: [(0.99, 0.99), "diverged", (0.99, 0.99)],
        1e-2: ["diverged", "diverged", "failed"],
      },
      # 3e-3 has only two of three seeds recorded (the sweep is still running).
      ("dense", 1010): {
        1e-3: [(0.80, 0.80), (0.81, 0.81), (0.82, 0.82)],
        3e-3: [(0.95, 0.95), (0.96, 0.96)],
      },
    }
  )
  convnet, dense = analysis.tune_learning_rate(records)
  assert convnet["learning_rate"] == 1e-3
  assert convnet["set_aside"] == {3e-3: "1 diverged", 1e-2: "2 diverged, 1 failed"}
  assert convnet["test_mean"] == pytest.approx(0.91)
  assert dense["learning_rate"] == 1e-3
  assert dense["set_aside"] == {3e-3: "2 of 3 seeds recorded"}
  # An arm where no rate finished every seed has no choice, and no statistics.
  records = _rate_records({("convnet", 1000): {1e-3: ["diverged"], 3e-3: ["failed"]}})
  (arm,) = analysis.tune_learning_rate(records)
  assert arm["learning_rate"] is None and arm["setting"] is None and arm["seeds"] == 0
  assert math.isnan(arm["test_mean"])
  assert "| base | convnet | none | 0.001, 0.003 |" in report.markdown(
    analysis.summarize(records), records
  )


def _tuned_pair_records():
  # The convnet is best at 1e-3, the dense network at 3e-3.
  return _rate_records(
    {
      ("convnet", 33194): {1e-3: [(0.97, 0.95), (0.97, 0.97)], 3e-3: [(0.90, 0.99), (0.90, 0.99)]},
      ("dense", 33400): {1e-3: [(0.80, 0.99), (0.80, 0.99)], 3e-3: [(0.92, 0.90), (0.92, 0.91)]},
    }
  )


def test_model_minus_baseline_compares_arms_at_their_own_tuned_rates():
  records = _tuned_pair_records()
  (pair,) = analysis.matched_pairs(records)
  assert (pair["model"]["learning_rate"], pair["baseline"]["learning_rate"]) == (1e-3, 3e-3)
  expected = analysis.difference_interval([0.95, 0.97], [0.90, 0.91])
  assert pair["difference"] == pytest.approx(0.055)
  assert (pair["ci_low"], pair["ci_high"]) == pytest.approx(
    (expected["ci_low"], expected["ci_high"])
  )
  table = report.markdown(analysis.summarize(records), records)
  assert "each arm at its tuned learning rate" in table
  assert "| name=convnet at 0.001 | name=dense at 0.003 | 33,194 / 33,400 | +5.50 |" in table


def test_markdown_names_the_chosen_rates_and_the_plot_is_written(tmp_path):
  records = _tuned_pair_records()
  paths = report.write_report(records, str(tmp_path))
  assert "learning_rate.png" in [os.path.basename(p) for p in paths]
  table = open(tmp_path / "report.md").read()
  assert "Tuned learning rate per arm" in table
  assert (
    "| name=convnet | convnet | 0.001 | 0.001, 0.003 | – | 2 | 97.00 ± 0.00 | 96.00 ± 1.41 |"
    in (table)
  )
  assert "| name=dense | dense | 0.003 | 0.001, 0.003 | – | 2 | 92.00 ± 0.00 | 90.50 ± 0.71 |" in (
    table
  )
  image = matplotlib.image.imread(tmp_path / "learning_rate.png")
  assert image.shape[0] >= 400 and image.shape[1] >= 600
  assert image[..., :3].std() > 0.05  # not blank


def test_sweeps_without_a_learning_rate_axis_are_reported_as_before(tmp_path):
  records = _kernel_records()
  assert analysis.tune_learning_rate(records) == []
  assert "Tuned learning rate" not in report.markdown(analysis.summarize(records), records)
  # A rate that every cell shares is no axis: the settings are compared as they are.
  pair = [
    _record(i, {"model.name": m, RATE: 1e-3, "seed": s}, 0.9, t, model=m, params=p)
    for i, (m, p, s, t) in enumerate(
      [("convnet", 33194, 0, 0.95), ("convnet", 33194, 1, 0.97), ("dense", 33400, 0, 0.9)]
      + [("dense", 33400, 1, 0.91)]
    )
  ]
  assert analysis.tune_learning_rate(pair) == []
  (matched,) = analysis.matched_pairs(pair)
  assert matched["difference"] == pytest.approx(0.055) and "learning_rate" not in matched["model"]
  paths = report.write_report(pair, str(tmp_path))
  assert "learning_rate.png" not in [os.path.basename(p) for p in paths]


def test_runs_without_a_validation_split_report_test_accuracy_alone(tmp_path):
  """A protocol with data.validation_fraction=0 (MNIST-1D's paper) records no validation."""
  records = []
  for seed, test in enumerate([0.92, 0.93, 0.94]):
    record = _record(seed, {"seed": seed}, test=test)
    del record["best_validation_accuracy"]
    records.append(record)
  (row,) = analysis.summarize(records)
  assert math.isnan(row["validation_mean"]) and row["test_mean"] == pytest.approx(0.93)
  report.write_report(records, str(tmp_path))
  table = open(tmp_path / "report.md").read()
  assert "| base | convnet | 1,000 | 2.00 | 3 | – | – | 93.00 ± 1.00 |" in table


def test_rates_are_not_tuned_without_a_validation_split(tmp_path):
  """Test accuracy must never choose a rate: with no validation, no rate is chosen."""
  records = []
  for index, (rate, seed) in enumerate([(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)]):
    record = _record(index, {"optimizer.learning_rate": rate, "seed": seed}, test=0.9 + rate)
    del record["best_validation_accuracy"]
    records.append(record)
  (arm,) = analysis.tune_learning_rate(records)
  assert arm["learning_rate"] is None and arm["seeds"] == 0
  assert set(arm["set_aside"]) == {1e-3, 3e-3}
  assert "no validation split" in arm["set_aside"][1e-3]
  report.write_report(records, str(tmp_path))  # and the report is written, not a KeyError
  assert "no validation split to choose by" in open(tmp_path / "report.md").read()


def test_long_labels_wrap_under_their_points_without_warnings(tmp_path):
  """Many varying fields (the sound sweep's): labels wrap, and matplotlib has nothing to say."""
  fields = {"data.name": "spoken_digits_noisy", "data.layout": "sequence"}
  fields |= {"augment.time_masks": 2, "augment.time_mask_width": 8, "model.head": "global_avg"}
  records = []
  for index, (kernel, seed) in enumerate([(3, 0), (3, 1), (5, 0), (5, 1), (7, 0), (7, 1)]):
    overrides = fields | {"model.conv.kernel_size": kernel, "model.conv.features": (kernel, 8)}
    records.append(_record(index, overrides | {"seed": seed}, 0.8, 0.7 + seed / 100))
  records.append(_record(6, {"seed": 0}, 0.8, 0.7))  # the base, with none of the fields
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    report.write_report(records, str(tmp_path))
  image = matplotlib.image.imread(tmp_path / "accuracy.png")
  assert image.shape[1] >= 120 * (1.6 * 4 + 2) - 1  # room for four wrapped labels side by side


def _padding_records():
  p = "model.conv.padding"
  return [
    _record(0, {p: "VALID", "seed": 0}, 0.9, 0.90),
    _record(1, {p: "VALID", "seed": 1}, 0.9, 0.91),
    _record(2, {p: "SAME", "seed": 0}, 0.9, 0.95),
    _record(3, {p: "SAME", "seed": 1}, 0.9, 0.97),
    _record(4, {p: "FULL", "seed": 0}, 0.9, 0.80),
    _record(5, {p: "FULL", "seed": 1}, status="failed", error="OOM"),
    _record(6, {p: "NONE", "seed": 0}, status="failed", error="OOM"),
  ]


def test_each_setting_is_compared_with_the_first_by_welchs_interval():
  differences = analysis.against_reference(_padding_records())
  # NONE has no finished seed: left out; the first setting is the reference.
  assert [d["label"] for d in differences] == ["padding=SAME", "padding=FULL"]
  same, full = differences
  assert same["reference"] == "padding=VALID" and same["seeds"] == 2
  # The numbers of test_each_model_minus_the_baseline_at_matched_parameters, worked by hand there.
  assert same["difference"] == pytest.approx(0.055)
  se = math.sqrt(0.0002 / 2 + 0.00005 / 2)
  assert same["ci_high"] - same["difference"] == pytest.approx(6.18811 * se, rel=1e-4)
  assert same["difference"] - same["ci_low"] == pytest.approx(6.18811 * se, rel=1e-4)
  # One seed says nothing about the spread.
  assert full["difference"] == pytest.approx(0.80 - 0.905) and math.isnan(full["ci_low"])
  table = report.markdown(analysis.summarize(_padding_records()), _padding_records())
  assert "Each setting minus a reference setting on the same test set" in table
  assert "| padding=SAME | padding=VALID | convnet | 2 | +5.50 | [" in table
  assert (
    "| padding=FULL | padding=VALID | convnet | 1 | -10.50 | fewer than 2 shared seeds | – | – "
    "| – | – |"
  ) in table


def test_the_reference_is_chosen_by_label_or_setting_and_a_bad_one_is_named():
  records = _padding_records()
  by_label = analysis.against_reference(records, "padding=SAME")
  by_setting = analysis.against_reference(records, "model.conv.padding=SAME")
  assert by_label == by_setting
  assert [d["label"] for d in by_label] == ["padding=VALID", "padding=FULL"]
  assert by_label[0]["difference"] == pytest.approx(-0.055)
  with pytest.raises(DataError, match=r"--reference='SAME' names no setting.*'padding=VALID'"):
    analysis.against_reference(records, "SAME")
  # A reference with no finished seed compares nothing, and the report says so.
  assert analysis.against_reference(records, "padding=NONE") == []
  table = report.markdown(analysis.summarize(records), records, "padding=NONE")
  assert "No setting is compared with padding=NONE: it has no finished seed" in table
  # By default, the first setting with a finished seed is the reference.
  records[0]["status"] = records[1]["status"] = "failed"
  assert [d["reference"] for d in analysis.against_reference(records)] == ["padding=SAME"]
  # One setting: nothing to compare, and no table.
  assert analysis.against_reference(records[:2]) == []
  assert "minus" not in report.markdown(analysis.summarize(records[:2]), records[:2])


def test_a_refused_reference_leaves_the_report_as_it_was(tmp_path):
  sweep_dir = _write(tmp_path, _padding_records())
  report.write_report(_padding_records(), sweep_dir)
  before = open(tmp_path / "report.md").read()
  with pytest.raises(DataError, match="names no setting"):
    report.write_report(_padding_records(), sweep_dir, reference="padding=SMAE")
  with pytest.raises(DataError, match="compares arms at their tuned learning rates"):
    report.write_report(_tuned_pair_records(), sweep_dir, reference="name=convnet")
  assert open(tmp_path / "report.md").read() == before
  done = subprocess.run(
    [sys.executable, "-m", "convnet.report", sweep_dir, "--reference=padding=SMAE"],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert done.returncode == 1 and "Traceback" not in done.stderr
  assert done.stderr.strip().startswith("error: --reference='padding=SMAE' names no setting")
  assert len(done.stderr.strip().splitlines()) == 1
  assert open(tmp_path / "report.md").read() == before


def test_tuned_and_learning_curve_sweeps_keep_their_own_tables():
  tuned = _tuned_pair_records()
  assert "Each setting minus" not in report.markdown(analysis.summarize(tuned), tuned)
  n = "data.num_train"
  curve = [
    _record(i, {"model.name": m, n: size, "seed": s}, 0.9, 0.9 + i / 100, model=m)
    for i, (m, size, s) in enumerate(
      [(m, size, s) for m in ("convnet", "dense") for size in (50, 100) for s in (0, 1)]
    )
  ]
  table = report.markdown(analysis.summarize(curve), curve)
  assert "Learning curve:" in table and "Each setting minus" not in table
  with pytest.raises(DataError, match="compares models at each N"):
    report.markdown(analysis.summarize(curve), curve, "name=convnet num_train=50")


def _sweeps_sh_references():
  """{sweep: reference label} as scripts/sweeps.sh passes them to the report."""
  with open(os.path.join(REPO, "scripts", "sweeps.sh")) as f:
    text = f.read()
  found = dict(re.findall(r"^\s*(\w+)\) reference=\(\"?--reference=([^\"\)]+)\"?\)", text, re.M))
  assert set(found) == {"kernel_size", "depth_width"}, found  # the pattern still reads the script
  return found


@pytest.mark.parametrize("name", ["kernel_size", "depth_width"])
def test_the_references_sweeps_sh_names_are_settings_of_their_sweeps(name):
  """A label that drifts from the sweep's (a renamed field, a reordered axis) stops a report."""
  from convnet import sweep
  from convnet.configs import mnist

  reference = _sweeps_sh_references()[name]
  module = sweep.load_sweep_module(os.path.join(REPO, "configs", "sweeps", f"{name}.py"))
  records = [
    _record(cell.index, cell.overrides, 0.9, 0.9 + cell.index / 1000, setting=cell.setting)
    for cell in sweep.expand(module.sweep)
  ]
  differences = analysis.against_reference(records, reference)
  (label,) = {d["reference"] for d in differences}
  # The reference is the book's convnet: each of its fields is configs/mnist.py's.
  (cell,) = [
    c
    for c in sweep.expand(module.sweep)
    if c.overrides.get("seed") == 0
    and any(r["label"] == label and r["setting"] == c.setting for r in analysis.summarize(records))
  ]
  book = mnist.get_config()
  for field, value in cell.overrides.items():
    if field != "seed":
      assert book[field] == value, field


@pytest.mark.slow
def test_sweeps_sh_writes_each_report_beside_the_records_it_came_from(tmp_path):
  """The script's plumbing, on a sweep of a few steps a cell: report, records and sweep.json.

  Enough steps that no run stays at chance (one that does is collapsed, and left out).
  """
  env = dict(
    os.environ,
    PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
    RESULTS=str(tmp_path / "results"),
    SWEEPS="padding",
  )

  def sweeps_sh(runs):
    command = [
      "scripts/sweeps.sh",
      "embedded",
      str(runs),
      "--sweep.num_epochs=2",
      "--sweep.steps_per_epoch=15",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done

  sweeps_sh(tmp_path / "runs")
  out = tmp_path / "results" / "padding"
  assert "| padding=SAME | padding=VALID | convnet | 5 |" in (out / "report.md").read_text()
  records = sorted(os.listdir(out / "records"))
  assert records == sorted(os.listdir(tmp_path / "runs" / "padding" / "records"))
  # 2 settings x 5 seeds, each record with its run's test predictions beside it.
  assert len([r for r in records if r.endswith(".json")]) == 10 and (out / "sweep.json").exists()
  assert len([r for r in records if r.endswith(".test_predictions.npz")]) == 10
  # The copied records are a sweep directory of their own: the report reads them again.
  again = analysis.load_records(str(out))
  assert [r["status"] for r in again] == ["done"] * 10
  assert analysis.against_reference(again)[0]["label"] == "padding=SAME"
  # ... and a sweep resumes from them elsewhere, as docs/sweeps.md says: nothing is trained again.
  elsewhere = tmp_path / "elsewhere" / "padding"
  os.makedirs(elsewhere)
  shutil.copytree(out / "records", elsewhere / "records")
  shutil.copy(out / "sweep.json", elsewhere / "sweep.json")
  assert "0 cells run, 0 failed" in sweeps_sh(tmp_path / "elsewhere").stderr
  assert not os.path.exists(elsewhere / "groups")


def test_a_reference_is_named_by_its_fields_however_many_settings_finished():
  f, p = "model.conv.features", "model.pool.type"
  book = {f: (16, 32, 32), p: ("max", "max", "none")}
  sweep_ = [
    {f: (16,), p: ("max",)},
    {f: (16, 32), p: ("max", "max")},
    book,
    {f: (8, 16, 16), p: ("max", "max", "none")},
  ]
  records = [
    _record(i * 2 + s, overrides | {"seed": s}, 0.9, 0.90 + i / 100 + s / 1000)
    for i, overrides in enumerate(sweep_)
    for s in (0, 1)
  ]
  label = "features=16,32,32 type=max,max,none"
  assert [d["label"] for d in analysis.against_reference(records, label)] == [
    "features=16 type=max",
    "features=16,32 type=max,max",
    "features=8,16,16 type=max,max,none",
  ]
  # Without the one- and two-block settings the labels shorten; the reference still holds.
  partial = records[4:]
  assert [r["label"] for r in analysis.summarize(partial)] == [
    "features=16,32,32",
    "features=8,16,16",
  ]
  (d,) = analysis.against_reference(partial, label)
  assert d["reference"] == "features=16,32,32" and d["difference"] == pytest.approx(0.01)
  # A whole dotted name, or any suffix of it, names the field.
  assert analysis.against_reference(partial, "model.conv.features=16,32,32") == [d]
  assert analysis.against_reference(partial, "conv.features=16,32,32") == [d]
  # An exact label wins over a label that others extend; parts that several settings have are
  # refused with their labels.
  pooling = [
    _record(0, {p: "none", "seed": 0}, 0.9, 0.9),
    _record(1, {p: "none", "model.conv.strides": ((2, 2), (1, 1)), "seed": 0}, 0.9, 0.8),
    _record(2, {p: "max", "seed": 0}, 0.9, 0.7),
  ]
  d = analysis.against_reference(pooling, "type=none")
  assert [x["label"] for x in d] == ["type=none strides=2x2,1x1", "type=max"]
  assert analysis.against_reference(pooling, "strides=2x2,1x1")[0]["label"] == "type=none"
  with pytest.raises(DataError, match="names 2 settings.*give one's whole label"):
    analysis.against_reference(records, "type=max,max,none")
  with pytest.raises(DataError, match="names no setting"):
    analysis.against_reference(records, "features")  # a part without a value


def test_settings_on_different_test_sets_are_never_subtracted():
  n, m = "data.name", "model.name"
  records = [
    _record(i, {n: data, m: model, "seed": s}, 0.9, acc + s / 100, model=model)
    for i, (data, model, s, acc) in enumerate(
      [
        (data, model, s, acc)
        for data, base in (("clean", 0.90), ("noisy", 0.70))
        for model, acc in (("dense", base), ("convnet", base + 0.02))
        for s in (0, 1)
      ]
    )
  ]
  differences = analysis.against_reference(records)
  assert [(d["label"], d["reference"]) for d in differences] == [
    ("data.name=clean model.name=convnet", "data.name=clean model.name=dense"),
    ("data.name=noisy model.name=convnet", "data.name=noisy model.name=dense"),
  ]
  assert [d["difference"] for d in differences] == pytest.approx([0.02, 0.02])
  # A named reference: only its own test set is compared.
  (d,) = analysis.against_reference(records, "data.name=noisy model.name=convnet")
  assert (d["label"], d["difference"]) == ("data.name=noisy model.name=dense", pytest.approx(-0.02))


def test_pair_sweeps_compare_with_a_reference_only_when_asked():
  pairs = [
    _record(i, {"model.name": m, "seed": s}, 0.9, t, model=m, params=33194)
    for i, (m, s, t) in enumerate(
      [("convnet", 0, 0.95), ("convnet", 1, 0.97), ("dense", 0, 0.9), ("dense", 1, 0.91)]
    )
  ]
  table = report.markdown(analysis.summarize(pairs), pairs)
  assert "Convnet minus dense" in table and "Each setting minus" not in table
  table = report.markdown(analysis.summarize(pairs), pairs, "name=dense")
  assert "| name=convnet | name=dense | convnet | 2 | +5.50 |" in table


def test_a_report_stopped_while_it_writes_leaves_every_earlier_file_whole(tmp_path, monkeypatch):
  # A signal in the middle of drawing a figure: the figure of the report before it stays whole,
  # and so do the table and the CSV written before; no temporary file is left in sight.
  from matplotlib.figure import Figure

  report.write_report(_kernel_records(), str(tmp_path))
  before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
  real_savefig = Figure.savefig

  def savefig_then_stop(fig, target, **kwargs):
    buffer = io.BytesIO()
    real_savefig(fig, buffer, **kwargs)
    target.write(buffer.getvalue()[:100])  # a truncated PNG so far
    raise KeyboardInterrupt

  monkeypatch.setattr(Figure, "savefig", savefig_then_stop)
  records = _kernel_records()
  for record in records:
    record["test_accuracy_at_best_validation"] = 0.5  # a new report, with other numbers
  with pytest.raises(KeyboardInterrupt):
    report.write_report(records, str(tmp_path))
  assert (tmp_path / "accuracy.png").read_bytes() == before["accuracy.png"]
  assert sorted(os.listdir(tmp_path)) == sorted(before)
  for name in ("report.md", "report.csv"):  # each written whole: the new one, not half of it
    assert (tmp_path / name).read_bytes() != before[name]
    assert (tmp_path / name).read_bytes().endswith(b"\n")


def _dtype_records():
  def record(index, model, dtype, seed, test, params):
    overrides = {"model.name": model, "model.dtype": dtype, "seed": seed}
    return _record(index, overrides, 0.9, test, model=model, params=params)

  return [
    record(0, "convnet", "float32", 0, 0.90, 1000),
    record(1, "convnet", "float32", 1, 0.92, 1000),
    record(2, "convnet", "bfloat16", 0, 0.91, 1000),
    record(3, "convnet", "bfloat16", 1, 0.93, 1000),
    record(4, "dense", "float32", 0, 0.80, 1010),
    record(5, "dense", "float32", 1, 0.82, 1010),
    record(6, "dense", "bfloat16", 0, 0.70, 1010),
    record(7, "dense", "bfloat16", 1, 0.72, 1010),
  ]


def test_models_are_paired_with_the_baseline_at_the_same_compute_dtype():
  pairs = analysis.matched_pairs(_dtype_records())
  labels = [(p["model"]["label"], p["baseline"]["label"]) for p in pairs]
  assert labels == [
    ("name=convnet dtype=float32", "name=dense dtype=float32"),
    ("name=convnet dtype=bfloat16", "name=dense dtype=bfloat16"),
  ]
  assert [p["difference"] for p in pairs] == pytest.approx([0.10, 0.21])


def test_a_reference_that_names_one_setting_of_each_model_gives_each_model_its_own():
  records = _dtype_records()
  differences = analysis.against_reference(records, "dtype=float32")
  assert [(d["label"], d["reference"]) for d in differences] == [
    ("name=convnet dtype=bfloat16", "name=convnet dtype=float32"),
    ("name=dense dtype=bfloat16", "name=dense dtype=float32"),
  ]
  assert [d["difference"] for d in differences] == pytest.approx([0.01, -0.10])
  # Parts that name two settings of one model still name no single reference.
  with pytest.raises(DataError, match=r"--reference='name=convnet' names 2 settings"):
    analysis.against_reference(records, "name=convnet")


def _health_records():
  """Two settings on the embedded digits (10 classes), 3 seeds each; seed 0 of `padding=SAME`
  collapsed (training loss at ln 10), two runs ended at their best epoch."""
  p = "model.conv.padding"
  data = {"model": {"name": "convnet"}, "data": {"source": "embedded", "name": "mnist"}}
  records = []
  for setting, tests in (("VALID", (0.90, 0.91, 0.93)), ("SAME", (0.10, 0.95, 0.96))):
    for seed, test in enumerate(tests):
      loss = 2.3055 if test == 0.10 else 0.3
      best = 10 if (setting, seed) in (("VALID", 0), ("SAME", 1)) else 7
      record = _record(len(records), {p: setting, "seed": seed}, test, test)
      records.append(record | {"config": data, "train_loss": loss, "best_epoch": best, "epoch": 10})
  return records


def test_collapsed_runs_are_left_out_named_and_counted_and_improving_runs_counted():
  records = _health_records()
  valid, same = analysis.summarize(records)
  assert (same["seeds"], same["collapsed"], same["not_finished"]) == (2, 1, 0)
  assert same["test_mean"] == pytest.approx(0.955)  # the collapsed seed's 0.10 left out
  assert (valid["still_improving"], same["still_improving"]) == (1, 1)
  (run,) = analysis.collapsed_runs(records)
  assert run["cell"] == "model.conv.padding=SAME,seed=0"
  assert run["chance_loss"] == pytest.approx(math.log(10))
  table = report.markdown([valid, same], records)
  assert "| padding=SAME | convnet | 1,000 | 2.00 | 2 (1 collapsed) | 95.50 ± " in table
  assert table.count("| 1 of 3 |") == 1 and table.count("| 1 of 2 |") == 1
  assert "Collapsed runs (finished, but their training loss stayed at chance)" in table
  assert (
    "- `model.conv.padding=SAME,seed=0`: final training loss 2.3055 against chance's 2.3026"
    in (table)
  )
  assert "Run health. A finished run is collapsed when its final training loss is at chance's" in (
    table
  )
  # The comparison pairs only the seeds both settings counted: seeds 1 and 2.
  (difference,) = analysis.against_reference(records)
  assert difference["paired_seeds"] == 2 and difference["seeds"] == 2
  assert difference["paired_difference"] == pytest.approx(((0.95 - 0.91) + (0.96 - 0.93)) / 2)


def test_the_reference_table_is_paired_with_holms_p_values_and_the_policy_is_stated():
  p = "model.conv.padding"
  tests = {"VALID": (0.90, 0.91, 0.93), "SAME": (0.95, 0.97, 0.96), "FULL": (0.91, 0.90, 0.94)}
  records = [
    _record(3 * i + seed, {p: setting, "seed": seed}, 0.9, test)
    for i, (setting, values) in enumerate(tests.items())
    for seed, test in enumerate(values)
  ]
  same, full = analysis.against_reference(records)
  raw = [stats.ttest_rel(tests[name], tests["VALID"]).pvalue for name in ("SAME", "FULL")]
  ci = stats.ttest_rel(tests["SAME"], tests["VALID"]).confidence_interval(0.95)
  assert (same["paired_ci_low"], same["paired_ci_high"]) == pytest.approx((ci.low, ci.high))
  assert [same["p"], full["p"]] == pytest.approx(raw)
  # Holm over the family of two: the smaller p doubled, the larger kept (but never below it).
  small, large = sorted(raw)
  assert sorted([same["p_holm"], full["p_holm"]]) == pytest.approx(
    [2 * small, max(2 * small, large)]
  )
  assert same["test"] == "paired" and same["survives"] == (same["p_holm"] < 0.05)
  table = report.markdown(analysis.summarize(records), records)
  assert (
    "| setting | minus | model | seeds | difference | paired 95% CI | p | Holm p "
    "| survives Holm (0.05) | Welch 95% CI |"
  ) in table
  assert f"| padding=SAME | padding=VALID | convnet | 3 | +4.67 | [{100 * ci.low:+.2f}, " in table
  assert "Multiple comparisons: each table of differences is one family" in table
  assert "Holm's step-down correction" in table


def _committed_reports():
  return sorted(
    os.path.relpath(path, REPO)
    for path in glob.glob(os.path.join(REPO, "results", "**", "report.md"), recursive=True)
  )


# `[93.20, 96.80]`: an interval of accuracies (percent); `[+0.54, +2.33]`: of a difference.
_INTERVAL = re.compile(r"\[([+-]?\d+(?:\.\d+)?), ([+-]?\d+(?:\.\d+)?)\]")


@pytest.mark.parametrize("path", _committed_reports())
def test_committed_reports_print_no_interval_past_its_bounds(path):
  with open(os.path.join(REPO, path)) as f:
    text = f.read()
  for low, high in _INTERVAL.findall(text):
    signed = low[0] in "+-" or high[0] in "+-"
    bound = (-100.0, 100.0) if signed else (0.0, 100.0)
    assert bound[0] <= float(low) <= float(high) <= bound[1], f"{path}: [{low}, {high}]"


@pytest.mark.parametrize("path", _committed_reports())
def test_committed_reports_keep_their_records_and_state_their_correction_policy(path):
  records = os.path.join(REPO, os.path.dirname(path), "records")
  assert glob.glob(os.path.join(records, "*.json")), f"{path}: no records beside it"
  with open(os.path.join(REPO, path)) as f:
    text = f.read()
  assert "Multiple comparisons: each table of differences is one family" in text, (
    f"{path} predates the stated policy: python -m convnet.report {os.path.dirname(path)}"
  )
  assert "Run health. A finished run is collapsed" in text


def _tuned_design_records():
  """VALID and SAME padding at two rates, 3 seeds: validation picks 1e-3 for VALID and 3e-3
  for SAME; the rejected rates have the better test accuracy (0.99), which no row may read."""
  p, rate = "model.conv.padding", "optimizer.learning_rate"
  chosen = {"VALID": 1e-3, "SAME": 3e-3}
  test = {"VALID": (0.90, 0.91, 0.92), "SAME": (0.93, 0.95, 0.96)}
  records = []
  for padding in ("VALID", "SAME"):
    for lr in (1e-3, 3e-3):
      for seed in range(3):
        best = lr == chosen[padding]
        records.append(
          _record(
            len(records),
            {p: padding, rate: lr, "seed": seed},
            0.95 if best else 0.90,
            test[padding][seed] if best else 0.99,
          )
        )
  return records


def test_a_design_sweep_that_tunes_rates_compares_each_arm_at_its_chosen_rate():
  records = _tuned_design_records()
  (d,) = analysis.against_reference(records)
  assert d["setting"] == "model.conv.padding=SAME,optimizer.learning_rate=0.003"
  assert d["reference_setting"] == "model.conv.padding=VALID,optimizer.learning_rate=0.001"
  assert d["paired_difference"] == pytest.approx((0.03 + 0.04 + 0.04) / 3)
  assert d["paired_seeds"] == 3
  text = report.markdown(analysis.summarize(records), records)
  assert "each arm at the learning rate validation chose for it" in text
  assert "| +3.67 |" in text


def test_a_reference_for_a_tuned_design_sweep_is_taken_and_for_tuned_pairs_refused(tmp_path):
  records = _tuned_design_records()
  (d,) = analysis.against_reference(records, "model.conv.padding=SAME")
  assert d["reference_setting"].startswith("model.conv.padding=SAME,")
  assert d["setting"] == "model.conv.padding=VALID,optimizer.learning_rate=0.001"
  assert d["paired_difference"] == pytest.approx(-(0.03 + 0.04 + 0.04) / 3)
  report.write_report(records, str(tmp_path / "design"), reference="model.conv.padding=SAME")
  assert "| -3.67 |" in (tmp_path / "design" / "report.md").read_text()
  with pytest.raises(DataError, match="compares arms at their tuned learning rates"):
    report.write_report(_tuned_pair_records(), str(tmp_path / "pairs"), reference="name=convnet")
