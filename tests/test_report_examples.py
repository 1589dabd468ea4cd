"""A report's statistics over test examples: the runs' kept predictions, from sweep to table.

A sweep copies each finished run's test predictions beside its record; the report pairs them
seed by seed for a bootstrap interval over seeds and examples and McNemar's test per seed
pair, checked here against hand-worked cases. Predictions that are missing leave their cells
empty, said in words; predictions that are not the record's run's stop the report in one line.
"""

import json
import os

import numpy as np
import pytest
from scipy import stats

from convnet import analysis, predictions, report, sweep, sweep_records, train
from convnet.errors import DataError, FileFormatError

N = 50  # test examples
K = "model.conv.kernel_size"


def _predictions(wrong, seed=0):
  """Predictions of N examples, all right but those indexed by `wrong`."""
  label = np.random.default_rng(seed).integers(0, 10, N)
  predicted = label.copy()
  predicted[list(wrong)] = (label[list(wrong)] + 1) % 10
  probability = np.where(predicted == label, 0.9, 0.05).astype(np.float32)
  return predicted, probability, label


def _loaded(wrong):
  predicted, probability, label = _predictions(wrong)
  return predictions.Predictions(predicted, label, probability, 10, 1.0, 10)


def test_compare_settings_pairs_seeds_and_counts_mcnemar_by_hand():
  a = {0: _loaded([]), 1: _loaded([]), 2: _loaded([3])}  # seed 2 has no partner
  b = {0: _loaded(range(10)), 1: _loaded([5]), 5: _loaded([])}
  got = predictions.compare_settings(a, b, num_resamples=2000)
  assert got["example_seeds"] == 2
  # Seed 0: 10 more right (50 - 40), seed 1: 1 more; the mean of 20% and 2%.
  assert got["bootstrap_difference"] == pytest.approx((10 / N + 1 / N) / 2)
  assert got["bootstrap_ci_low"] < got["bootstrap_difference"] < got["bootstrap_ci_high"]
  # McNemar, exact: 10 discordant all one way, p = 2 / 2**10; 1 discordant, p = 1.
  assert got["mcnemar_p"] == pytest.approx([2 / 2**10, 1.0])
  assert got["mcnemar_p"][0] == pytest.approx(stats.binomtest(10, 10, 0.5).pvalue)
  assert got["mcnemar_below"] == 1
  assert predictions.compare_settings(a, {7: _loaded([])}) == {}


def test_compare_settings_refuses_runs_on_other_test_examples():
  other = _loaded([])
  other = predictions.Predictions(
    other.predicted, (other.label + 1) % 10, other.true_probability, 10, 1.0, 10
  )
  with pytest.raises(ValueError, match="not the same test examples"):
    predictions.compare_settings({0: _loaded([])}, {0: other})


# ----------------------------------------------------------------------------
# Kept beside the records


def _record(kernel_size, seed, wrong):
  setting = f"{K}={kernel_size}"
  return {
    "cell": f"{setting},seed={seed}",
    "index": 2 * (kernel_size // 2) + seed,
    "setting": setting,
    "overrides": {K: kernel_size, "seed": seed},
    "config": {"model": {"name": "convnet"}, "data": {"source": "embedded"}},
    "status": "done",
    "num_params": 1000,
    "flops_per_example": 2e6,
    "best_validation_accuracy": 0.9,
    "test_accuracy_at_best_validation": 1 - len(wrong) / N,
    "wall_time_s": 10.0,
    "train_examples_per_sec": 100.0,
  }


def _sweep(tmp_path, wrongs, keep=None):
  """A sweep folder of kernel sizes 3 and 5 with two seeds each; `wrongs[(k, seed)]` the examples
  that run got wrong. Runs in `keep` (all by default) keep their predictions beside the record."""
  folder = tmp_path / "sweep"
  (folder / "records").mkdir(parents=True)
  for (k, seed), wrong in wrongs.items():
    record = _record(k, seed, wrong)
    path = folder / "records" / f"{record['cell']}.json"
    path.write_text(json.dumps(record))
    if keep is None or (k, seed) in keep:
      run = tmp_path / "runs" / record["cell"]
      run.mkdir(parents=True)
      predictions.save(str(run), *_predictions(wrong), step=10, epoch=1.0, num_classes=10)
      assert predictions.keep_beside_record(str(run), str(path)) == predictions.beside_record(
        str(path)
      )
  return str(folder)


WRONGS = {(3, 0): [1, 2], (3, 1): [4], (5, 0): range(12), (5, 1): range(8)}


def test_the_report_gives_each_comparison_its_interval_over_seeds_and_examples(tmp_path):
  folder = _sweep(tmp_path, WRONGS)
  records = analysis.load_records(folder)
  report.write_report(records, str(tmp_path / "out"), sweep_dir=folder, reference="kernel_size=3")
  table = (tmp_path / "out" / "report.md").read_text()
  expected = predictions.compare_settings(
    {s: _loaded(WRONGS[(5, s)]) for s in (0, 1)}, {s: _loaded(WRONGS[(3, s)]) for s in (0, 1)}
  )
  # 5x5 minus 3x3: seed 0, 12 wrong against 2 (McNemar p = 2 / 2**10); seed 1, 8 against 1
  # (7 discordant, p = 2 / 2**7): both pairs differ.
  assert expected["mcnemar_below"] == 2
  cells = f"[{100 * expected['bootstrap_ci_low']:+.2f}, {100 * expected['bootstrap_ci_high']:+.2f}]"
  (row,) = [line for line in table.splitlines() if line.startswith("| kernel_size=5 | kernel_")]
  assert row.endswith(f"| {cells} | 2 of 2 |")
  assert "Test examples. Where the runs' test predictions are kept" in table
  assert "their cells show" not in table


def test_settings_without_kept_predictions_show_none_and_say_why(tmp_path):
  folder = _sweep(tmp_path, WRONGS, keep={(3, 0), (3, 1), (5, 0)})
  table = report.markdown(
    analysis.summarize(analysis.load_records(folder)),
    analysis.load_records(folder),
    "kernel_size=3",
    report.read_examples(analysis.load_records(folder), folder),
  )
  (row,) = [line for line in table.splitlines() if line.startswith("| kernel_size=5 | kernel_")]
  assert row.endswith("| – | – |")
  said = "Here the runs of 1 setting have no test predictions beside their records: their cells"
  assert f"{said} show –." in table


def test_predictions_that_are_not_the_records_run_stop_the_report_in_one_line(tmp_path):
  folder = _sweep(tmp_path, WRONGS)
  beside = os.path.join(folder, "records", f"{K}=5,seed=1.{predictions.FILE}")
  run = tmp_path / "other"
  run.mkdir()
  predictions.save(str(run), *_predictions([]), step=10, epoch=1.0, num_classes=10)
  os.replace(predictions.path(str(run)), beside)  # 100% right, where the record says 84%
  with pytest.raises(FileFormatError) as error:
    report.write_report(analysis.load_records(folder), str(tmp_path / "out"), sweep_dir=folder)
  message = str(error.value)
  assert message.startswith(beside) and "damaged or another run's" in message
  assert "\n" not in message
  assert not (tmp_path / "out").exists()


def test_predictions_of_other_test_examples_stop_the_report_in_one_line(tmp_path):
  folder = _sweep(tmp_path, WRONGS)
  beside = os.path.join(folder, "records", f"{K}=5,seed=1.{predictions.FILE}")
  run = tmp_path / "shuffled"
  run.mkdir()
  predicted, probability, label = _predictions(WRONGS[(5, 1)])
  order = np.random.default_rng(0).permutation(N)  # the same accuracy, the examples reordered
  predictions.save(
    str(run), predicted[order], probability[order], label[order], step=1, epoch=1, num_classes=10
  )
  os.replace(predictions.path(str(run)), beside)
  with pytest.raises(DataError) as error:
    report.write_report(analysis.load_records(folder), str(tmp_path / "out"), sweep_dir=folder)
  message = str(error.value)
  assert "not of the same test examples" in message and f"{K}=5" in message
  assert "\n" not in message and not (tmp_path / "out").exists()


def test_settings_whose_seeds_are_not_all_shared_get_no_interval_over_examples(tmp_path):
  wrongs = {k: v for k, v in WRONGS.items() if k != (5, 0)}  # 5x5 has seed 1 only
  folder = _sweep(tmp_path, wrongs)
  records = analysis.load_records(folder)
  table = report.markdown(
    analysis.summarize(records), records, "kernel_size=3", report.read_examples(records, folder)
  )
  (row,) = [line for line in table.splitlines() if line.startswith("| kernel_size=5 | kernel_")]
  # The difference is Welch's over all seeds (1 against 2): no interval over seed 1 alone.
  assert row.endswith("| – | – |") and "fewer than 2 shared seeds" in row


def test_keeping_predictions_copies_them_and_a_run_without_any_leaves_no_stale_copy(tmp_path):
  run, record = tmp_path / "run", str(tmp_path / "records" / "cell.json")
  run.mkdir()
  (tmp_path / "records").mkdir()
  predictions.save(str(run), *_predictions([3]), step=4, epoch=2.0, num_classes=10)
  copy = predictions.keep_beside_record(str(run), record)
  assert copy == str(tmp_path / "records" / f"cell.{predictions.FILE}")
  assert predictions.load(copy).accuracy == 1 - 1 / N
  os.unlink(predictions.path(str(run)))
  assert predictions.keep_beside_record(str(run), record) is None
  assert not os.path.exists(copy)
  with open(predictions.path(str(run)), "wb") as f:
    f.write(b"not a zip")
  with pytest.raises(FileFormatError, match="not a readable .npz file .*: move it away; the report does without it"):
    predictions.keep_beside_record(str(run), record)
  assert not os.path.exists(copy)


# ----------------------------------------------------------------------------
# Written by a sweep


def _cells():
  return sweep.expand(lambda: sweep.product(sweep.axis(K, [3, 5]), sweep.axis("seed", [0, 1])))


def test_a_sweep_keeps_each_finished_runs_predictions_beside_its_record(
  config, tmp_path, monkeypatch
):
  def fake_train(config, workdir):
    os.makedirs(workdir, exist_ok=True)
    wrong = WRONGS[(config.model.conv.kernel_size, config.seed)]
    if config.num_epochs == 1:
      predictions.save(workdir, *_predictions(wrong), step=3, epoch=1.0, num_classes=10)
    elif os.path.exists(predictions.path(workdir)):
      os.unlink(predictions.path(workdir))  # a run that keeps none
    return {
      "status": "done",
      "num_params": 1,
      "train_flops_per_example": 2.0,
      "best_validation_accuracy": 0.9,
      "test_accuracy_at_best_validation": 1 - len(wrong) / N,
      "wall_time_s": 0.1,
    }

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  config.num_epochs = 1
  folder = str(tmp_path)
  written = sweep.run_sweep(config, _cells(), folder)
  assert len(written) == 4
  for cell in _cells():
    copy = predictions.beside_record(sweep_records.record_path(folder, cell))
    wrong = WRONGS[(cell.overrides[K], cell.overrides["seed"])]
    assert predictions.load(copy).accuracy == 1 - len(wrong) / N
  examples = report.read_examples(analysis.load_records(folder), folder)
  assert sorted(examples.runs) == [f"{K}=3", f"{K}=5"] and not examples.missing

  # A copy moved away comes back from its run's folder when the sweep runs again; nothing trains.
  lost = predictions.beside_record(sweep_records.record_path(folder, _cells()[0]))
  os.unlink(lost)
  assert sweep.run_sweep(config, _cells(), folder) == []
  assert predictions.load(lost).accuracy == 1 - len(WRONGS[(3, 0)]) / N

  # The cells trained again (another config) by runs that keep no predictions: no record stands
  # beside the old runs' files.
  config.num_epochs = 2
  sweep.run_sweep(config, _cells(), folder)
  assert sorted(os.listdir(tmp_path / "records")) == sorted(f"{c.name}.json" for c in _cells())
