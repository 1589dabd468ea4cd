"""Successive halving: rung choices on validation alone, the driver, its files, records, report.

The runs are hand-made: each cell has a validation and a test accuracy per epoch, and a fake
training hands back the validation ones up to the epoch it has "trained" to, counting epochs.
"""

import collections
import json
import math
import os

import pytest

from convnet import analysis, halving, records, report, sweep
from convnet.errors import ConfigError, DataError, FileFormatError, WorkdirError

RATE = "optimizer.learning_rate"
NAN = math.nan


def _cells(rates=(1e-3, 3e-3, 1e-2, 3e-2), seeds=(0, 1), models=("convnet",)):
  return sweep.expand(
    lambda: sweep.product(
      sweep.axis("model.name", models), sweep.axis(RATE, rates), sweep.axis("seed", seeds)
    )
  )


class FakeTraining:
  """`halving.TrainRung` over hand-made runs: {cell: (validation per epoch, test per epoch)}.

  A cell trains from where it stopped to the rung; `trained` counts every epoch trained, so an
  epoch trained twice shows. The curves handed back are validation alone, up to the epoch the
  cell has reached (beyond the rung where it trained further before).
  """

  def __init__(self, runs, stop_at=None):
    self.runs, self.stop_at = runs, stop_at
    self.reached = {}
    self.trained = collections.Counter()
    self.calls = []

  def __call__(self, arm, epoch, cells):
    if epoch == self.stop_at:
      raise KeyboardInterrupt  # a signal before the rung trains
    self.calls.append((arm, epoch, [c.name for c in cells]))
    for cell in cells:
      reached = self.reached.get(cell.name, 0)
      self.trained[cell.name] += max(0, epoch - reached)
      self.reached[cell.name] = max(reached, epoch)
    return {c.name: self.runs[c.name][0][: self.reached[c.name]] for c in cells}


def _runs(cells, validation, test):
  """{cell: (validation, test)} from {rate: [curve per seed]} for validation and test."""
  return {
    c.name: (validation[c.overrides[RATE]][c.overrides["seed"]], test[c.overrides[RATE]][0])
    for c in cells
  }


# Validation: 3e-3 leads at epoch 1, 1e-3 overtakes it by epoch 3; 1e-2 starts worst and would be
# best by epoch 5 (what halving costs); 3e-2 diverges in seed 1. Test prefers 1e-2 at every rung,
# and is never to be listened to.
VALIDATION = {
  1e-3: [[0.50, 0.70, 0.90, 0.91, 0.92], [0.52, 0.72, 0.88, 0.90, 0.93]],
  3e-3: [[0.70, 0.75, 0.80, 0.81, 0.82], [0.68, 0.76, 0.82, 0.83, 0.84]],
  1e-2: [[0.60, 0.61, 0.62, 0.90, 0.96], [0.40, 0.41, 0.42, 0.90, 0.96]],
  3e-2: [[0.99, 0.99, 0.99, 0.99, 0.99], [NAN, NAN, NAN, NAN, NAN]],
}
TEST = {  # per epoch; distinct from every validation number, so that a leak would show
  1e-3: [[0.105, 0.205, 0.305, 0.405, 0.505]],
  3e-3: [[0.115, 0.215, 0.315, 0.415, 0.515]],
  1e-2: [[0.985, 0.985, 0.985, 0.985, 0.985]],
  3e-2: [[0.995, 0.995, 0.995, 0.995, 0.995]],
}
HALVING = halving.Halving(RATE, (1, 3, 5), 3)


def test_halving_settings_are_checked_in_one_line():
  for args, culprit in [
    (("", (1, 3), 3), "halving field ''"),
    (("seed", (1, 3), 3), "halving field 'seed'"),
    ((RATE, (3,), 3), "halving rungs (3,)"),
    ((RATE, (3, 3, 10), 3), "halving rungs (3, 3, 10)"),
    ((RATE, (0, 10), 3), "halving rungs (0, 10)"),
    ((RATE, (1.5, 10), 3), "halving rungs (1.5, 10)"),
    ((RATE, (1, 10), 1), "halving eta 1"),
    ((RATE, (1, 10), True), "halving eta True"),
  ]:
    with pytest.raises(ConfigError, match="^" + culprit.replace("(", r"\(").replace(")", r"\)")):
      halving.Halving(*args)
  assert halving.Halving(RATE, [1, 10], 2).rungs == (1, 10)
  HALVING.check_budget(5)
  with pytest.raises(ConfigError, match="end at 5 epochs, and num_epochs is 10"):
    HALVING.check_budget(10)


def test_each_rung_keeps_the_ceiling_of_n_over_eta(tmp_path):
  three, two = halving.Halving(RATE, (1, 2), 3), halving.Halving(RATE, (1, 2), 2)
  assert [three.keep(n) for n in range(1, 11)] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]
  assert [two.keep(n) for n in range(1, 8)] == [1, 1, 2, 2, 3, 3, 4]
  # Seven values, eta 2: 7 -> 4 -> 2 -> 1 over four rungs.
  rates = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7]
  cells = _cells(rates=rates, seeds=(0,))
  validation = {r: [[0.1 * (k + 1)] * 8] for k, r in enumerate(rates)}  # the smallest rate best
  fake = FakeTraining(_runs(cells, validation, {r: [[0.5] * 8] for r in rates}))
  (arm,) = halving.arms(cells, RATE)
  outcome = halving.run_arm(arm, halving.Halving(RATE, (1, 2, 4, 8), 2), fake, str(tmp_path))
  assert [len(names) for _, _, names in fake.calls] == [7, 4, 2, 1]
  assert [e for _, e, _ in fake.calls] == [1, 2, 4, 8]
  assert outcome.survivors == (1e-7,) and outcome.chosen == 1e-7
  assert [(p.value, p.epoch) for p in outcome.pruned] == [
    (1e-1, 1),
    (1e-2, 1),
    (1e-3, 1),
    (1e-4, 2),
    (1e-5, 2),
    (1e-6, 4),
  ]


def test_rung_choices_follow_validation_where_test_disagrees(tmp_path, monkeypatch):
  cells = _cells()
  runs = _runs(cells, VALIDATION, TEST)
  seen = []
  real_choose = halving.choose

  def spy(curves, epoch, keep):
    seen.append((curves, epoch, keep))
    return real_choose(curves, epoch, keep)

  monkeypatch.setattr(halving, "choose", spy)
  fake = FakeTraining(runs)
  outcomes = halving.run(halving.arms(cells, RATE), HALVING, fake, str(tmp_path))
  outcome = outcomes["model.name=convnet"]
  # Epoch 1: means 0.51, 0.69, 0.50, -inf (a diverged seed): keep ceil(4/3) = 2.
  # Epoch 3: 1e-3's 0.89 beats 3e-3's 0.82: keep 1, which trains the full 5 epochs.
  assert outcome.survivors == (1e-3,) and outcome.chosen == 1e-3
  assert [(p.value, p.epoch) for p in outcome.pruned] == [(1e-2, 1), (3e-2, 1), (3e-3, 3)]
  assert outcome.pruned[0].mean_validation_accuracy == pytest.approx(0.50)
  assert outcome.pruned[1].mean_validation_accuracy == -math.inf
  assert outcome.pruned[1].best_validation_accuracy == (0.99, None)
  assert outcome.pruned[2].mean_validation_accuracy == pytest.approx(0.81)
  # Chosen by test instead, 1e-2 would win every rung; 3e-2 too, where its divergence is missed.
  by_test = [halving.mean_score(TEST[r], e) for e in (1, 3) for r in (1e-3, 3e-3, 1e-2)]
  assert max(by_test[:3]) == by_test[2] and max(by_test[3:]) == by_test[5]
  # The chooser saw validation curves alone: lists of floats, every one a validation accuracy.
  validation_numbers = {a for curves in VALIDATION.values() for c in curves for a in c}
  test_numbers = {a for curves in TEST.values() for c in curves for a in c}
  assert [(epoch, keep) for _, epoch, keep in seen] == [(1, 2), (3, 1), (5, 1), (5, 1)]
  for curves, _, _ in seen:
    numbers = [a for value in curves for curve in value for a in curve]
    assert all(type(a) is float for a in numbers)
    assert not set(numbers) & test_numbers
    assert {a for a in numbers if not math.isnan(a)} <= validation_numbers
  # Pruned values never trained past their rung; the survivor trained each epoch once.
  assert {name: fake.reached[name] for name in fake.reached} == {
    c.name: {1e-3: 5, 3e-3: 3, 1e-2: 1, 3e-2: 1}[c.overrides[RATE]] for c in cells
  }
  assert set(fake.trained.values()) <= {1, 3, 5} and fake.trained == collections.Counter(
    fake.reached
  )
  assert outcome.pruned_records() == {
    **{
      f"model.name=convnet,{RATE}=0.01,seed={s}": {
        "status": "pruned",
        "pruned_at_epoch": 1,
        "best_validation_accuracy": VALIDATION[1e-2][s][0],
      }
      for s in (0, 1)
    },
    f"model.name=convnet,{RATE}=0.03,seed=0": {
      "status": "pruned",
      "pruned_at_epoch": 1,
      "best_validation_accuracy": 0.99,
    },
    f"model.name=convnet,{RATE}=0.03,seed=1": {
      "status": "pruned",
      "pruned_at_epoch": 1,
      "best_validation_accuracy": None,
    },
    **{
      f"model.name=convnet,{RATE}=0.003,seed={s}": {
        "status": "pruned",
        "pruned_at_epoch": 3,
        "best_validation_accuracy": max(VALIDATION[3e-3][s][:3]),
      }
      for s in (0, 1)
    },
  }


def test_ties_go_to_the_earlier_value_and_a_diverged_seed_ranks_last():
  same = [[0.3, 0.4], [0.1, 0.2]]
  assert halving.choose([same, same[::-1], same], 2, 1) == [0]
  assert halving.choose([[[0.1]], same, same[::-1]], 2, 1) == [1]
  # A seed that diverged by the rung sinks its value below any finite one, however good the
  # other seeds; one that diverges after the rung does not count yet.
  diverged = [[0.99, 0.99], [0.5, NAN]]
  assert halving.choose([[[0.01, 0.01]], diverged], 2, 1) == [0]
  assert halving.choose([[[0.01, 0.01]], diverged], 1, 1) == [1]
  # Among diverged values, sweep order; a run that stopped early keeps its best so far.
  assert halving.choose([diverged, diverged, [[0.4]]], 2, 2) == [0, 2]
  assert halving.seed_score([0.4, 0.6], 5) == 0.6 and halving.seed_score([], 1) == -math.inf
  assert halving.best_so_far([0.5, NAN], 2) == 0.5 and halving.best_so_far([NAN], 1) is None
  for bad in ([[1.5]], [["0.5"]], [[True]], ["0.5"]):
    with pytest.raises(DataError, match="value 0, seed 0"):
      halving.choose([bad], 1, 1)


def test_arms_are_full_grids_of_values_and_seeds():
  cells = _cells(rates=(1e-3, 3e-3), seeds=(0, 1, 2), models=("convnet", "dense"))
  convnet, dense = halving.arms(cells, RATE)
  assert (convnet.name, dense.name) == ("model.name=convnet", "model.name=dense")
  assert convnet.values == (1e-3, 3e-3) and convnet.seeds == (0, 1, 2)
  assert dense.grid[1][2].overrides == {"model.name": "dense", RATE: 3e-3, "seed": 2}
  holey = [c for c in cells if c.overrides != {"model.name": "dense", RATE: 3e-3, "seed": 1}]
  with pytest.raises(ConfigError, match=f"^arm model.name=dense: {RATE}=0.003 has no cell of seed"):
    halving.arms(holey, RATE)
  other = sweep.expand(lambda: [{RATE: 1e-3, "seed": 0}, {"model.name": "dense", "seed": 0}])
  with pytest.raises(ConfigError, match=f"^sweep cell model.name=dense,seed=0 does not set {RATE}"):
    halving.arms(other, RATE)
  (base,) = halving.arms(sweep.expand(lambda: sweep.axis(RATE, (1e-3, 1e-2))), RATE)
  assert base.name == "base" and base.seeds == (None,)


def test_a_resumed_halving_chooses_as_an_uninterrupted_one_and_trains_nothing_twice(tmp_path):
  cells = _cells(models=("convnet", "dense"))
  runs = _runs(cells, VALIDATION, TEST)
  whole = FakeTraining(runs)
  expected = halving.run(halving.arms(cells, RATE), HALVING, whole, str(tmp_path / "whole"))

  fake = FakeTraining(runs, stop_at=3)
  folder = str(tmp_path / "resumed")
  with pytest.raises(KeyboardInterrupt):
    halving.run(halving.arms(cells, RATE), HALVING, fake, folder)
  assert sorted(os.listdir(folder)) == ["model.name=convnet.json"]
  first = json.load(open(os.path.join(folder, "model.name=convnet.json")))
  assert [d["epoch"] for d in first["decisions"]] == [1] and first["chosen"] is None
  fake.stop_at = None
  resumed = halving.run(halving.arms(cells, RATE), HALVING, fake, folder)
  assert resumed == expected
  assert fake.trained == whole.trained  # each epoch of each cell trained once
  for name in ("model.name=convnet.json", "model.name=dense.json"):
    assert open(os.path.join(folder, name)).read() == open(tmp_path / "whole" / name).read()
  # Run again once all is trained: the same choices, nothing trained, the files as they were.
  again = halving.run(halving.arms(cells, RATE), HALVING, fake, folder)
  assert again == expected and fake.trained == whole.trained
  # Runs trained the whole budget before (halving turned on later): epochs past a rung are not
  # looked at, so 1e-2, best at epoch 5, is pruned as before.
  trained = FakeTraining(runs)
  trained.reached = dict.fromkeys(runs, 5)
  assert halving.run(halving.arms(cells, RATE), HALVING, trained, folder) == expected
  assert sum(trained.trained.values()) == 0


def test_the_decisions_file_reports_each_rung(tmp_path):
  cells = _cells()
  (arm,) = halving.arms(cells, RATE)
  halving.run_arm(
    arm, HALVING, FakeTraining(_runs(cells, VALIDATION, TEST)), str(tmp_path), {"a": 1}
  )
  saved = json.load(open(halving.decisions_path(str(tmp_path), arm.name)))
  assert saved["halving"] == {"field": RATE, "rungs": [1, 3, 5], "eta": 3}
  assert saved["arm"]["values"] == [1e-3, 3e-3, 1e-2, 3e-2] and saved["identity"] == {"a": 1}
  first, second, last = saved["decisions"]
  assert (first["epoch"], first["kept"], first["pruned"]) == (1, [1e-3, 3e-3], [1e-2, 3e-2])
  assert [v["mean_validation_accuracy"] for v in first["values"]] == pytest.approx(
    [0.51, 0.69, 0.50, None]
  )
  assert first["values"][3]["best_validation_accuracy"] == [0.99, None]
  assert first["values"][3]["diverged"] == [False, True]
  assert (second["epoch"], second["kept"], second["pruned"]) == (3, [1e-3], [3e-3])
  assert second["values"][0]["best_validation_accuracy"] == [0.90, 0.88]
  assert (last["epoch"], last["kept"], last["pruned"]) == (5, [1e-3], [])
  assert saved["chosen"] == 1e-3


def test_the_decisions_file_is_written_whole_and_a_foreign_one_refused_or_replaced(
  tmp_path, monkeypatch, caplog
):
  cells = _cells()
  (arm,) = halving.arms(cells, RATE)
  runs = _runs(cells, VALIDATION, TEST)
  path = halving.decisions_path(str(tmp_path), arm.name)
  # Not a decisions file: refused before anything trains, and left as it was.
  with open(path, "w") as f:
    f.write('{"records": [1, 2]}')
  fake = FakeTraining(runs)
  with pytest.raises(FileFormatError, match="is not a file of successive halving's decisions"):
    halving.run_arm(arm, HALVING, fake, str(tmp_path))
  assert fake.calls == [] and open(path).read() == '{"records": [1, 2]}'
  # Where it is a later arm's, no arm trains either; nor where it is not JSON.
  dense = halving.arms(_cells(models=("dense",)), RATE)
  for text in ('{"records": [1, 2]}', '{"halving": '):
    with open(path, "w") as f:
      f.write(text)
    with pytest.raises(FileFormatError, match=f"^{path}.*; move it away"):
      halving.run([*dense, arm], HALVING, fake, str(tmp_path))
    assert fake.calls == [] and open(path).read() == text
  os.remove(path)
  # A write that fails leaves the previous file whole, and no temporary file beside it.
  with pytest.raises(KeyboardInterrupt):
    halving.run_arm(arm, HALVING, FakeTraining(runs, stop_at=3), str(tmp_path))
  before = open(path).read()
  real_replace = os.replace

  def full_disk(source, target):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "replace", full_disk)
  with pytest.raises(WorkdirError, match="cannot write"):
    halving.run_arm(arm, halving.Halving(RATE, (1, 5), 3), FakeTraining(runs), str(tmp_path))
  monkeypatch.setattr(os, "replace", real_replace)
  assert open(path).read() == before and os.listdir(tmp_path) == [os.path.basename(path)]
  # A file of another halving (other rungs) is replaced, and the log says so.
  with caplog.at_level("INFO"):
    halving.run_arm(arm, halving.Halving(RATE, (1, 5), 3), FakeTraining(runs), str(tmp_path))
  assert "is of another halving or config (its halving differ)" in caplog.text
  assert json.load(open(path))["halving"]["rungs"] == [1, 5]
  # A file of this halving whose choices the curves do not give: replaced by the recomputed ones.
  saved = json.load(open(path))
  saved["decisions"][0]["kept"] = [1e-2]
  with open(path, "w") as f:
    json.dump(saved, f)
  caplog.clear()
  with caplog.at_level("INFO"):
    outcome = halving.run_arm(
      arm, halving.Halving(RATE, (1, 5), 3), FakeTraining(runs), str(tmp_path)
    )
  assert "are not what the runs' validation curves give now" in caplog.text
  assert json.load(open(path))["decisions"][0]["kept"] == [1e-3, 3e-3] == list(outcome.survivors)


def test_bad_curves_from_the_training_are_named(tmp_path):
  cells = _cells(rates=(1e-3, 1e-2), seeds=(0,))
  (arm,) = halving.arms(cells, RATE)
  with pytest.raises(DataError, match=r"gave no validation accuracies for cell .*seed=0$"):
    halving.run_arm(arm, HALVING, lambda arm, epoch, cells: {}, str(tmp_path))
  with pytest.raises(DataError, match="epoch 2 is 7"):
    halving.run_arm(
      arm, HALVING, lambda a, e, cells: {c.name: [0.5, 7] for c in cells}, str(tmp_path)
    )


# ----------------------------------------------------------------------------
# Records and the report


def _record(rate, seed, index, status="done", validation=0.9, test=0.9, **fields):
  overrides = {"model.name": "convnet", RATE: rate, "seed": seed}
  cell = sweep.cell_name(overrides)
  record = {
    "cell": cell,
    "index": index,
    "setting": sweep.cell_name({"model.name": "convnet", RATE: rate}),
    "overrides": overrides,
    "config": {
      "seed": seed,
      "model": {"name": "convnet"},
      "optimizer": {"learning_rate": rate},
      "num_epochs": 10,
    },
    "status": status,
    "best_validation_accuracy": validation,
  }
  if status == "done":
    record |= {"test_accuracy_at_best_validation": test, "num_params": 1000, "wall_time_s": 5.0}
  return record | fields


def _halved_records():
  # 1e-3 survived; 1e-2 was pruned after epoch 1 and 3e-3 after epoch 3. Their validation
  # accuracies up to there are hand-made higher than 1e-3's: a choice that counted them, or an
  # average that took them in, would show.
  return [
    _record(1e-3, 0, 0, validation=0.90, test=0.80),
    _record(1e-3, 1, 1, validation=0.92, test=0.84),
    _record(3e-3, 0, 2, "pruned", 0.95, pruned_at_epoch=3),
    _record(3e-3, 1, 3, "pruned", 0.97, pruned_at_epoch=3),
    _record(1e-2, 0, 4, "pruned", 0.99, pruned_at_epoch=1),
    _record(1e-2, 1, 5, "pruned", None, pruned_at_epoch=1),
  ]


def test_pruned_records_are_accepted_and_malformed_ones_refused(tmp_path):
  for record in _halved_records():
    assert records.check(record, "x.json") == record
  pruned = _halved_records()[2]
  for change, culprit in [
    ({"pruned_at_epoch": None}, "pruned_at_epoch is null, not a whole number >= 1"),
    ({"pruned_at_epoch": 0}, "pruned_at_epoch is 0, not a whole number >= 1"),
    ({"pruned_at_epoch": 10}, r"pruned_at_epoch is 10, not a rung before the full budget"),
    ({"best_validation_accuracy": 1.5}, "best_validation_accuracy is 1.5, not a number in"),
    ({"test_accuracy_at_best_validation": 0.9}, "status is pruned, and test_accuracy_at_best"),
    ({"status": "halved"}, 'status is "halved", not one of done, failed, diverged, pruned'),
  ]:
    with pytest.raises(FileFormatError, match=f"^x.json: {culprit}"):
      records.check(pruned | change, "x.json")
  for missing in ("pruned_at_epoch", "best_validation_accuracy"):
    with pytest.raises(FileFormatError, match=f"^x.json: {missing} is missing"):
      records.check({k: v for k, v in pruned.items() if k != missing}, "x.json")


def test_the_report_names_pruned_settings_and_leaves_them_out_of_the_means(tmp_path):
  os.makedirs(tmp_path / "records")
  for record in _halved_records():
    with open(tmp_path / "records" / f"{record['cell']}.json", "w") as f:
      json.dump(record, f)
  halved = analysis.load_records(str(tmp_path))  # each checked, of one sweep
  assert [r["status"] for r in halved].count("pruned") == 4
  (arm,) = analysis.tune_learning_rate(halved)
  assert arm["learning_rate"] == 1e-3 and arm["set_aside"] == {}
  assert sorted(arm["pruned"]) == [3e-3, 1e-2]
  assert arm["pruned"][3e-3]["epoch"] == 3 and arm["pruned"][1e-2]["epoch"] == 1
  assert arm["pruned"][1e-2]["validation_mean"] == pytest.approx(0.99)  # the seed with one
  assert arm["validation_mean"] == pytest.approx(0.91) and arm["test_mean"] == pytest.approx(0.82)
  rows = {row["label"]: row for row in analysis.summarize(halved)}
  assert rows["learning_rate=0.003"]["seeds"] == 0 and rows["learning_rate=0.003"]["pruned"] == 2
  assert math.isnan(rows["learning_rate=0.003"]["validation_mean"])
  assert rows["learning_rate=0.001"]["pruned"] == rows["learning_rate=0.001"]["not_finished"] == 0
  table = report.markdown(analysis.summarize(halved), halved)
  assert "| learning_rate=0.003 | convnet | – | – | 0 (2 pruned) | – |" in table
  assert "Pruned by successive halving, on validation accuracy alone" in table
  assert (
    "| arm | model | chosen learning rate | pruned learning rate | stopped after epoch" in table
  )
  assert "| base | convnet | 0.001 | 0.003 | 3 | 2 | 96.00 |" in table
  assert "| base | convnet | 0.001 | 0.01 | 1 | 2 | 99.00 |" in table
  assert "did not finish" not in table
  # A sweep that does not tune the rate lists the pruned settings alone.
  kernels = [
    r
    | {
      "overrides": {"model.conv.kernel_size": k, "seed": r["config"]["seed"]},
      "setting": f"k{k}",
      "config": {k_: v for k_, v in r["config"].items() if k_ != "optimizer"},
    }
    for r, k in zip(halved, (3, 3, 5, 5, 7, 7), strict=True)
  ]
  text = report.markdown(analysis.summarize(kernels), kernels)
  assert "| setting | model | stopped after epoch | seeds | validation % there (mean) |" in text
  assert "| kernel_size=5 | convnet | 3 | 2 | 96.00 |" in text
  assert "| kernel_size=7 | convnet | 1 | 2 | 99.00 |" in text
  # Without its pruned records, the report is the one of a sweep that never halved.
  done = [r for r in halved if r["status"] == "done"]
  assert "pruned" not in json.dumps(analysis.summarize(done))
  assert "Pruned" not in report.markdown(analysis.summarize(done), done)
