"""Early stopping on validation accuracy: the rule on hand-made curves, and runs that stop.

The rule (`epochs.early_stop`) is checked on curves written out by hand. The
runs make it stop where the test says: with `min_delta=1.0`, no epoch after
the first can improve (accuracies are fractions), so a run of patience p
stops after epoch p + 1 whatever it learns. A group's seeds get validation
accuracies written by the test (each seed its own curve), so that one stops
and another trains on.
"""

import errno
import json
import math
import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from convnet import (
  checkpoint_checks,
  checkpoints,
  config_checks,
  epochs,
  files,
  members,
  run_setup,
  seeds,
  train,
)
from convnet.errors import CheckpointError, ConfigError

NAN, INF = math.nan, math.inf
TIMING = ("wall_time_s", "train_examples_per_sec")


# ----------------------------------------------------------------------------
# The rule


@pytest.mark.parametrize(
  "curve,patience,min_delta,stops_after",
  [
    ([0.5, 0.6, 0.7, 0.8], 1, 0.0, None),  # improves to the last epoch
    ([0.5, 0.6, 0.6, 0.6], 0, 0.0, None),  # patience 0: never
    ([0.5, 0.6, 0.6, 0.6], 2, 0.0, 4),  # a tie does not improve
    ([0.5, 0.6, 0.6, 0.6], 3, 0.0, None),  # the budget ends first
    ([0.5, 0.4, 0.7, 0.6, 0.6], 2, 0.0, 5),  # epoch 3 improved: the count starts again
    ([0.5, 0.4, 0.45, 0.3], 2, 0.0, 3),
    ([0.5, 0.75, 0.75], 1, 0.25, 2),  # a gain of exactly min_delta does not count
    ([0.5, 0.75, 1.0], 1, 0.125, None),  # gains above min_delta do
    # Gains of min_delta or less never move the best: 0.51 and 0.52 both count against 0.5.
    ([0.5, 0.51, 0.52, 0.53], 3, 0.05, 4),
    ([0.5, NAN, NAN], 2, 0.0, 3),  # a NaN never improves
    ([0.5, INF, 0.6], 1, 0.0, 2),  # nor does infinity
    ([NAN, NAN, 0.1], 2, 0.0, 2),  # nothing finite yet: no improvement either
    ([NAN, 0.1, 0.2], 2, 0.0, None),  # the first finite accuracy improves
    ([], 1, 0.0, None),
    ([0.5], 1, 1.0, None),  # the first epoch always improves
    ([0.5, 0.99], 1, 1.0, 2),
  ],
)
def test_stopping_epochs_on_hand_made_curves(curve, patience, min_delta, stops_after):
  assert epochs.early_stop_epoch(curve, patience, min_delta) == stops_after


def test_the_reason_names_the_wait_the_threshold_and_the_last_epoch_that_improved():
  stop = epochs.early_stop([0.5, 0.9, 0.9005, 0.89, 0.9], 3, 0.001)
  assert stop == epochs.EarlyStop(
    epoch=5,
    improved_epoch=2,
    reason="validation accuracy did not improve by more than 0.001 for 3 epochs after epoch 2 "
    "(0.9000); stopped after epoch 5",
  )
  assert epochs.early_stop([0.5, 0.4], 1, 0.0).reason == (
    "validation accuracy did not improve for 1 epoch after epoch 1 (0.5000); stopped after epoch 2"
  )
  assert epochs.early_stop([NAN, NAN], 2, 0.0).reason == (
    "validation accuracy was not finite for its first 2 epochs; stopped after epoch 2"
  )
  assert epochs.early_stop_fields(None) == {"stopped_early_epoch": 0}
  assert epochs.early_stop_fields(epochs.early_stop([0.5, 0.4], 1, 0.0)) == {
    "stopped_early_epoch": 2,
    "stop_reason": "validation accuracy did not improve for 1 epoch after epoch 1 (0.5000); "
    "stopped after epoch 2",
  }


def test_only_whole_epochs_are_judged():
  records = [
    {"kind": "train", "step": 1, "epoch": 0.5, "train_loss": 2.0},
    {"kind": "epoch", "step": 2, "epoch": 1, "validation_accuracy": 0.5},
    {"kind": "epoch", "step": 4, "epoch": 2, "validation_accuracy": 0.25},
    {"kind": "epoch", "step": 5, "epoch": 2.5, "validation_accuracy": 0.9},  # a max_steps stop
  ]
  assert epochs.whole_epoch_validation_accuracies(records) == [0.5, 0.25]


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("patience", -1, "early_stopping.patience=-1: patience is a whole number of epochs"),
    ("min_delta", -0.001, "early_stopping.min_delta=-0.001: min_delta is a finite number"),
    ("min_delta", INF, "early_stopping.min_delta=inf: min_delta is a finite number"),
    ("min_delta", NAN, "early_stopping.min_delta=nan"),
    ("patience", 3, None),
    ("min_delta", 0.001, None),
  ],
)
def test_the_early_stopping_fields_are_checked(config, field, value, message):
  config.early_stopping[field] = value
  if message is None:
    config_checks.validate(config)
    return
  with pytest.raises(ConfigError, match=re.escape(message)) as error:
    config_checks.validate(config)
  assert "\n" not in str(error.value)


def test_early_stopping_needs_a_validation_split(config):
  config.data.validation_fraction = 0.0
  config_checks.validate(config)  # off: the book's recipe needs none
  config.early_stopping.patience = 2
  with pytest.raises(ConfigError, match=r"early_stopping.patience=2: .*validation_fraction"):
    config_checks.validate(config)


@pytest.mark.parametrize(
  "stopped",
  [
    [],
    {"seed 9": {"epoch": 2, "improved_epoch": 1, "reason": "r"}},
    {"seed 0": {"epoch": 0, "improved_epoch": 0, "reason": "r"}},
    {"seed 0": {"epoch": 2, "improved_epoch": 1, "reason": ""}},
    {"seed 0": {"epoch": 2, "reason": "r"}},
  ],
)
def test_a_damaged_record_of_stops_in_a_checkpoint_is_refused_in_one_line(stopped):
  with pytest.raises(CheckpointError, match="field stopped_early of its loop/metadata") as e:
    members.stopped_members({"stopped_early": stopped}, ["seed 0", "seed 1"], "somewhere")
  assert "\n" not in str(e.value)


def test_a_checkpoint_saved_before_early_stopping_has_no_stops():
  assert members.stopped_members({"wall_time_s": 1.0}, [""], "somewhere") == {}


# ----------------------------------------------------------------------------
# Runs that stop


def _stopping(config, patience=2):
  """`config` (conftest's) as 6 epochs of 2 steps that stop after epoch `patience` + 1."""
  config.batch_size = 32
  config.microbatch_size = 0
  config.steps_per_epoch = 2
  config.num_epochs = 6
  config.log_every_steps = 1
  config.checkpoint_keep = 1
  config.early_stopping.patience = patience
  config.early_stopping.min_delta = 1.0  # nothing after epoch 1 counts
  return config


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return f.read()


def _records(workdir):
  return [
    {k: v for k, v in json.loads(line).items() if k not in TIMING}
    for line in _lines(workdir).splitlines()
  ]


def _untimed(result):
  return {k: v for k, v in result.items() if k not in TIMING}


def _saved_steps(workdir):
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


@pytest.mark.slow  # two short runs in the same workdir
def test_a_run_stops_keeps_its_best_checkpoint_says_why_and_a_rerun_trains_nothing(
  config, tmp_path, monkeypatch
):
  workdir = str(tmp_path)
  result = train.train_and_evaluate(_stopping(config), workdir)
  reason = result["stop_reason"]
  assert result["stopped_early_epoch"] == 3 and result["epoch"] == 3 and result["step"] == 6
  assert reason.startswith("validation accuracy did not improve by more than 1 for 2 epochs ")
  first = _accuracy(workdir, 1)
  assert reason.endswith(f"after epoch 1 ({first:.4f}); stopped after epoch 3")
  records = _records(workdir)
  assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]
  assert max(r["step"] for r in records) == 6  # nothing trained past the stop
  # The checkpoint of the stop and that of the best epoch (checkpoint_keep=1 keeps the newest).
  best_step = 2 * result["best_epoch"]
  assert _saved_steps(workdir) == sorted({best_step, 6})
  step, loop = checkpoints.read_loop(workdir)
  assert step == 6 and loop["stopped_early"] == {
    "": {"epoch": 3, "improved_epoch": 1, "reason": reason}
  }
  assert checkpoint_checks.loop_problem(loop) is None
  _, best = checkpoints.restore_params(workdir, "best")
  assert best == best_step
  # Again: finished, the same result, and nothing trained or written.
  lines = _lines(workdir)
  again = train.train_and_evaluate(config, workdir)
  assert again == result
  assert _lines(workdir) == lines and _saved_steps(workdir) == sorted({best_step, 6})
  # And where the workdir cannot be written: a finished run, though short of its budget.
  open_append = files.open_append

  def read_only_lock(path, *args, **kwargs):
    if str(path).endswith(".lock"):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return open_append(path, *args, **kwargs)

  monkeypatch.setattr(files, "open_append", read_only_lock)
  assert train.train_and_evaluate(config, workdir) == result


def _accuracy(workdir, epoch):
  return next(
    r["validation_accuracy"]
    for r in _records(workdir)
    if r["kind"] == "epoch" and r["epoch"] == epoch
  )


@pytest.mark.slow  # three short runs
def test_a_run_resumed_before_its_stop_stops_where_an_uninterrupted_one_does(config, tmp_path):
  config = _stopping(config)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  config.max_steps = 5  # within epoch 3, the epoch it stops after
  cut = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert cut["step"] == 5 and cut["stopped_early_epoch"] == 0 and "stop_reason" not in cut
  config.max_steps = -1
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["stopped_early_epoch"] == straight["stopped_early_epoch"] == 3
  assert _untimed(resumed) == _untimed(straight)
  assert _records(tmp_path / "resumed") == _records(tmp_path / "straight")


def _scripted_validation(monkeypatch, curves):
  """Runs set up from now on report `curves[member][epoch - 1]` as their validation accuracy."""
  set_up = run_setup.set_up

  def scripted_set_up(*args, **kwargs):
    run = set_up(*args, **kwargs)
    evaluate = run.evaluate

    def scripted(state, name):
      results = evaluate(state, name)
      if name == "validation":
        epoch = int(np.ravel(state.step)[0]) // run.steps_per_epoch
        for result, curve in zip(results, curves, strict=True):
          result["accuracy"] = curve[epoch - 1]
      return results

    run.evaluate = scripted
    return run

  monkeypatch.setattr(run_setup, "set_up", scripted_set_up)


@pytest.mark.slow  # a group of two seeds, run twice
def test_a_seed_that_stops_leaves_its_partner_training_and_the_group_reports_each(
  config, tmp_path, monkeypatch
):
  config = _stopping(config)
  config.num_epochs = 4
  config.checkpoint_keep = 10
  config.early_stopping.min_delta = 0.0
  # Seed 0 stops after epoch 3 (two epochs below epoch 1's 0.5); seed 1 improves to the end.
  _scripted_validation(monkeypatch, [[0.5, 0.4, 0.45, 0.3], [0.5, 0.6, 0.7, 0.8]])
  stopped, trained = seeds.train_seeds(config, [0, 1], str(tmp_path))
  assert stopped["stopped_early_epoch"] == 3 and stopped["epoch"] == 3 and stopped["step"] == 6
  assert stopped["stop_reason"] == (
    "validation accuracy did not improve for 2 epochs after epoch 1 (0.5000); stopped after epoch 3"
  )
  assert stopped["best_epoch"] == 1 and stopped["best_validation_accuracy"] == 0.5
  assert trained["stopped_early_epoch"] == 0 and "stop_reason" not in trained
  assert trained["epoch"] == 4 and trained["best_validation_accuracy"] == 0.8
  seed_0, seed_1 = (_records(tmp_path / f"seed_{s}") for s in (0, 1))
  assert max(r["step"] for r in seed_0) == 6 and max(r["step"] for r in seed_1) == 8
  assert [r["epoch"] for r in seed_0 if r["kind"] == "epoch"] == [1, 2, 3]
  # Seed 0's parameters froze at its stop; seed 1's trained on.
  step, loop = checkpoints.read_loop(str(tmp_path))
  assert step == 8 and set(loop["stopped_early"]) == {"seed 0"} and loop["diverged"] == {}
  at = {s: _params_at(tmp_path, s) for s in (6, 8)}
  for member, same in ((0, True), (1, False)):
    pairs = zip(jax.tree.leaves(at[6]), jax.tree.leaves(at[8]), strict=True)
    assert all(np.array_equal(a[member], b[member]) for a, b in pairs) == same
  # Again: the same results, nothing written.
  lines = [_lines(tmp_path / f"seed_{s}") for s in (0, 1)]
  assert seeds.train_seeds(config, [0, 1], str(tmp_path)) == [stopped, trained]
  assert [_lines(tmp_path / f"seed_{s}") for s in (0, 1)] == lines


def _params_at(workdir, step):
  """The (stacked) parameters of the checkpoint of `step`."""
  reader = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"))
  try:
    args = ocp.args.Composite(state=ocp.args.StandardRestore())
    return reader.restore(step, args=args).state["params"]
  finally:
    reader.close()


@pytest.mark.slow  # a group of two seeds
def test_a_group_ends_when_every_seed_has_stopped(config, tmp_path, monkeypatch):
  config = _stopping(config, patience=1)
  # Seed 0 stops after epoch 2, seed 1 after epoch 3; the budget is 6 epochs.
  _scripted_validation(
    monkeypatch, [[0.5, 0.4, 0.6, 0.7, 0.8, 0.9], [0.5, 0.6, 0.6, 0.7, 0.8, 0.9]]
  )
  config.early_stopping.min_delta = 0.0
  results = seeds.train_seeds(config, [0, 1], str(tmp_path))
  assert [r["stopped_early_epoch"] for r in results] == [2, 3]
  assert [r["step"] for r in results] == [4, 6]
  assert checkpoints.read_loop(str(tmp_path))[0] == 6  # not the budget's 12 steps
