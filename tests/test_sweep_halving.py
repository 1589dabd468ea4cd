"""A sweep halved over its learning rates, and rates trained together (`--vmap_rates`)."""

import json
import os
import signal
import types

import pytest

from convnet import halving, preemption, sweep, sweep_halving, sweep_mode, sweep_records
from convnet.errors import ConfigError, FileFormatError, RunInterrupted

RATES = (1e-3, 3e-3, 1e-2)


def _cells():
  return sweep.expand(
    lambda: sweep.product(
      [{"model.name": "convnet"}, {"model.name": "dense"}],
      sweep.axis("optimizer.learning_rate", RATES),
      sweep.axis("seed", range(2)),
    )
  )


def _base(config):
  config.num_epochs, config.steps_per_epoch = 3, 2
  return config


def test_vmap_rates_groups_each_settings_rates_and_seeds_in_a_folder_of_its_rates():
  cells = _cells()
  groups = sweep_records.group_cells(cells, vmap_seeds=False, vmap_rates=True)
  assert [len(g) for g in groups] == [6, 6]
  assert {c.overrides["model.name"] for c in groups[1]} == {"dense"}
  assert sweep_records.group_workdir("S", groups[0]) == os.path.join(
    "S", "groups", "model.name=convnet,optimizer.learning_rate=0.001+0.003+0.01"
  )
  # A subset of the rates has a folder of its own; one rate's seeds are a seed group.
  assert sweep_records.group_workdir("S", groups[0][2:]) == os.path.join(
    "S", "groups", "model.name=convnet,optimizer.learning_rate=0.003+0.01"
  )
  assert sweep_records.group_workdir("S", groups[0][:2]) == os.path.join(
    "S", "groups", "model.name=convnet,optimizer.learning_rate=0.001"
  )
  assert [len(g) for g in sweep_records.group_cells(cells, vmap_seeds=True)] == [2] * 6


def test_a_sweep_folder_run_with_vmap_rates_keeps_that_way(tmp_path):
  sweep_mode.check_mode(str(tmp_path), vmap_seeds=False, vmap_rates=True)
  assert json.loads((tmp_path / sweep_mode.MODE_FILE).read_text()) == {
    "vmap_seeds": True,
    "vmap_rates": True,
  }
  sweep_mode.check_mode(str(tmp_path), vmap_seeds=True, vmap_rates=True)
  for vmap_seeds in (False, True):
    with pytest.raises(ConfigError, match="was run with --vmap_rates"):
      sweep_mode.check_mode(str(tmp_path), vmap_seeds=vmap_seeds)
  seeds_only = tmp_path / "seeds"
  seeds_only.mkdir()
  sweep_mode.check_mode(str(seeds_only), vmap_seeds=True)
  with pytest.raises(ConfigError, match="was run without --vmap_rates"):
    sweep_mode.check_mode(str(seeds_only), vmap_seeds=True, vmap_rates=True)


def test_a_sweep_files_halving_is_read_or_refused_in_one_line():
  rule = halving.Halving("optimizer.learning_rate", (1, 3), 2)
  assert sweep_halving.from_sweep_file(types.SimpleNamespace(halving=lambda: rule)) is rule
  assert sweep_halving.from_sweep_file(types.SimpleNamespace()) is None
  with pytest.raises(ConfigError, match=r"halving\(\) gives dict, not a convnet.halving.Halving"):
    sweep_halving.from_sweep_file(types.SimpleNamespace(halving=lambda: {"eta": 2}))


def test_a_rung_stops_its_runs_after_whole_epochs_of_the_full_schedule(config):
  config.steps_per_epoch = 4
  stopped = sweep_halving._until_epoch(config, 2)
  assert stopped.max_steps == 8 and stopped.num_epochs == config.num_epochs
  assert config.max_steps == -1  # the cell's own config is left as it was
  config.steps_per_epoch = 0  # one pass: the 3,400 training digits in whole batches
  assert sweep_halving._until_epoch(config, 1).max_steps == 3400 // config.batch_size


def _fields(sweep_dir):
  """Each record's result, without what differs from one run to the next (times, paths)."""
  kept = ("status", "pruned_at_epoch", "best_validation_accuracy", "best_epoch", "epoch")
  fields = {}
  for name in sorted(
    n for n in os.listdir(os.path.join(sweep_dir, "records")) if n.endswith(".json")
  ):
    with open(os.path.join(sweep_dir, "records", name)) as f:
      record = json.load(f)
    fields[name] = {k: record.get(k) for k in kept}
  return fields


@pytest.mark.slow  # two small sweeps of 12 cells, one of them stopped and resumed
def test_a_halving_sweep_prunes_records_chooses_again_on_resume_and_trains_nothing_twice(
  config, tmp_path, monkeypatch
):
  base, cells = _base(config), _cells()
  rule = halving.Halving("optimizer.learning_rate", (1, 3), 2)
  whole = str(tmp_path / "whole")
  records = sweep.run_sweep(base, cells, whole, vmap_rates=True, halving=rule)
  statuses = [r["status"] for r in records]
  assert statuses.count("pruned") == 4 and statuses.count("done") == 8  # 3 rates keep 2, x2 arms
  for record in records:
    if record["status"] == "pruned":
      assert record["pruned_at_epoch"] == 1 and "test_accuracy" not in record
    else:
      assert record["epoch"] == 3
  decisions = json.loads((tmp_path / "whole" / "halving" / "model.name=convnet.json").read_text())
  assert [d["epoch"] for d in decisions["decisions"]] == [1, 3]
  # The first rung trained every rate and seed of an arm in one program.
  assert os.path.isdir(
    os.path.join(whole, "groups", "model.name=convnet,optimizer.learning_rate=0.001+0.003+0.01")
  )
  before = _fields(whole)
  assert sweep.run_sweep(base, cells, whole, vmap_rates=True, halving=rule) == []

  # Stopped after the first rung (a signal), then run again: the same choices and results.
  resumed = str(tmp_path / "resumed")
  train_group = sweep_records.train_group

  def stop_at_the_second_rung(sweep_dir, group, configs):
    if configs[group[0].name].max_steps < 0:
      raise RunInterrupted("stop requested", 15)
    return train_group(sweep_dir, group, configs)

  monkeypatch.setattr(sweep_records, "train_group", stop_at_the_second_rung)
  with pytest.raises(RunInterrupted):
    sweep.run_sweep(base, cells, resumed, vmap_rates=True, halving=rule)
  monkeypatch.setattr(sweep_records, "train_group", train_group)
  sweep.run_sweep(base, cells, resumed, vmap_rates=True, halving=rule)
  assert _fields(resumed) == before


@pytest.mark.slow  # one group of 2 rates x 2 seeds against two seed groups
def test_rates_trained_together_record_what_seed_groups_record(config, tmp_path):
  base = _base(config)
  cells = [c for c in _cells() if c.overrides["model.name"] == "dense"][:4]
  together = sweep.run_sweep(base, cells, str(tmp_path / "rates"), vmap_rates=True)
  apart = sweep.run_sweep(base, cells, str(tmp_path / "seeds"), vmap_seeds=True)
  assert [r["cell"] for r in together] == [r["cell"] for r in apart]
  for a, b in zip(together, apart, strict=True):
    assert a["status"] == b["status"] == "done"
    assert a["vmap_group_size"] == 4 and b["vmap_group_size"] == 2
    assert a["best_validation_accuracy"] == pytest.approx(b["best_validation_accuracy"], abs=1e-6)
    assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4)


def test_the_group_wall_time_counts_each_group_once_and_every_rung(tmp_path):
  def epochs(folder, walls):
    folder.mkdir(parents=True)
    lines = [
      {"kind": "epoch", "step": 10 * (i + 1), "epoch": i + 1, "wall_time_s": w}
      for i, w in enumerate(walls)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

  epochs(tmp_path / "cells" / "a", [2.0, 5.0])
  epochs(tmp_path / "groups" / "g" / "seed_0", [3.0, 7.0])  # members share the group's time
  epochs(tmp_path / "groups" / "g" / "seed_1", [3.0, 7.0])
  epochs(tmp_path / "groups" / "rates=1+2" / "r1", [4.0])  # a pruned rung's group
  assert sweep.group_wall_time_s(str(tmp_path)) == 16.0
  assert sweep.group_wall_time_s(str(tmp_path / "none")) == 0.0


def test_a_halved_folder_is_not_trained_whole_nor_the_other_way(tmp_path):
  sweep_mode.check_mode(str(tmp_path), vmap_seeds=False, vmap_rates=True, halving=True)
  with pytest.raises(ConfigError, match="was run with successive halving.*--nohalving"):
    sweep_mode.check_mode(str(tmp_path), vmap_seeds=False, vmap_rates=True)
  whole = tmp_path / "whole"
  whole.mkdir()
  sweep_mode.check_mode(str(whole), vmap_seeds=True)
  with pytest.raises(ConfigError, match="was run without successive halving"):
    sweep_mode.check_mode(str(whole), vmap_seeds=True, halving=True)


def test_a_halving_that_cannot_work_writes_nothing(config, tmp_path):
  folder = tmp_path / "sweep"
  wrong_budget = halving.Halving("optimizer.learning_rate", (1, 2), 2)  # num_epochs is 3
  with pytest.raises(ConfigError, match="the last rung is the full budget"):
    sweep.run_sweep(_base(config), _cells(), str(folder), vmap_rates=True, halving=wrong_budget)
  unset = halving.Halving("optimizer.momentum", (1, 3), 2)
  with pytest.raises(ConfigError, match="does not set optimizer.momentum"):
    sweep.run_sweep(_base(config), _cells(), str(folder), vmap_rates=True, halving=unset)
  assert not folder.exists()  # no sweep.json to hold the folder to a way it never ran


def test_a_finished_record_is_kept_when_another_worker_finds_the_run_finished(config, tmp_path):
  # Two pulling workers: one records a cell as its run ends; the other, taking the cell in
  # between, finds the run finished and must leave that record (and the report's digest) be.
  cell = _cells()[0]
  cell_config = sweep.apply_overrides(_base(config), cell.overrides)
  result = {"status": "done", "test_accuracy_at_best_validation": 0.5, "wall_time_s": 1.0}
  sweep_records.write_record(
    str(tmp_path), cell, cell_config, str(tmp_path / "cells" / "a"), result
  )
  path = tmp_path / "records" / f"{cell.name}.json"
  before = path.read_bytes()
  again = result | {"wall_time_s": 2.0}
  kept = sweep_records.write_record(
    str(tmp_path), cell, cell_config, str(tmp_path / "cells" / "a"), again
  )
  assert path.read_bytes() == before and kept["wall_time_s"] == 1.0
  other = sweep.apply_overrides(cell_config, {"num_epochs": 4})  # another config: rewritten
  sweep_records.write_record(str(tmp_path), cell, other, str(tmp_path / "cells" / "a"), again)
  assert json.loads(path.read_text())["wall_time_s"] == 2.0


def _sweep_file(tmp_path, body):
  path = tmp_path / "a_sweep.py"
  path.write_text(
    "from convnet.configs import mnist\n"
    "from convnet.sweep import axis, product\n"
    "from convnet.halving import Halving\n\n"
    "def get_config():\n  return mnist.get_config()\n\n" + body
  )
  return str(path)


PADDING = (
  "def sweep():\n"
  "  return product(axis('model.conv.padding', ['VALID', 'SAME']), axis('seed', range(2)))\n"
)


def test_learning_rates_from_the_command_cross_every_cell_before_its_seed(tmp_path):
  path = _sweep_file(tmp_path, PADDING)
  cells, rule = sweep.read_sweep(path, learning_rates=["0.001", "3e-3"])
  assert rule is None
  assert [c.name for c in cells[:3]] == [
    "model.conv.padding=VALID,optimizer.learning_rate=0.001,seed=0",
    "model.conv.padding=VALID,optimizer.learning_rate=0.001,seed=1",
    "model.conv.padding=VALID,optimizer.learning_rate=0.003,seed=0",
  ]
  assert len(cells) == 8 and [c.index for c in cells] == list(range(8))
  assert {c.overrides["optimizer.learning_rate"] for c in cells} == {1e-3, 3e-3}
  plain, none = sweep.read_sweep(path)
  assert len(plain) == 4 and none is None


def test_halving_rungs_from_the_command_halve_the_rates_of_each_arm(tmp_path):
  path = _sweep_file(tmp_path, PADDING)
  cells, rule = sweep.read_sweep(
    path, learning_rates=["0.001", "0.003", "0.01"], halving_rungs=["2", "6", "30"], halving_eta=3
  )
  assert rule == halving.Halving("optimizer.learning_rate", (2, 6, 30), 3)
  assert halving.arms(cells, rule.field)  # every arm a full grid of rates and seeds
  _, off = sweep.read_sweep(path, halving=False, learning_rates=["0.001", "0.003"])
  assert off is None


@pytest.mark.parametrize(
  "body, options, message",
  [
    (PADDING, {"halving_rungs": ["1", "3"]}, "--halving_rungs halves over --learning_rates"),
    (
      PADDING,
      {"learning_rates": ["0.001", "0.003"], "halving_eta": 3},
      "--halving_eta=3 sets how --halving_rungs halve: give the rungs too",
    ),
    (
      PADDING,
      {"learning_rates": ["0.001", "1e-3"]},
      "--learning_rates: 0.001 is given twice \\(as '0.001' and '1e-3'\\); give each rate once",
    ),
    (
      PADDING,
      {"learning_rates": [], "halving_rungs": ["1", "3"]},
      "--learning_rates is empty: give its values",
    ),
    (
      PADDING,
      {"learning_rates": ["0.001", "0.01"], "halving_rungs": []},
      "--halving_rungs is empty",
    ),
    (
      PADDING,
      {"learning_rates": ["0.001", "0.01"], "halving_rungs": ["1", "3"], "halving": False},
      "--halving_rungs and --nohalving contradict each other",
    ),
    (
      PADDING,
      {"learning_rates": ["0.001"], "halving_rungs": ["1", "3"]},
      "--learning_rates gives one rate \\(0.001\\), and halving chooses among two or more",
    ),
    (PADDING, {"learning_rates": ["0.001", "fast"]}, "--learning_rates: 'fast' is not a number"),
    (PADDING, {"learning_rates": ["-0.1"]}, "--learning_rates: '-0.1' must be above 0"),
    (
      PADDING,
      {"learning_rates": ["0.001", "0.01"], "halving_rungs": ["1", "2.5"]},
      "--halving_rungs: '2.5' is not a whole number",
    ),
    (
      PADDING,
      {"learning_rates": ["0.001", "0.01"], "halving_rungs": ["3", "1"]},
      "halving rungs \\(3, 1\\) must be at least two epoch budgets",
    ),
    (
      "def sweep():\n  return product(axis('optimizer.learning_rate', [1e-3, 1e-2]), "
      "axis('seed', range(2)))\n",
      {"learning_rates": ["0.003"]},
      "--learning_rates: the sweep's cells set optimizer.learning_rate already",
    ),
    (
      PADDING + "\ndef halving():\n  return Halving('model.conv.padding', (1, 2), 2)\n",
      {"learning_rates": ["0.001", "0.01"], "halving_rungs": ["1", "2"]},
      "--halving_rungs: the sweep file halves its arms itself",
    ),
  ],
)
def test_the_commands_rates_and_rungs_are_refused_in_one_line(tmp_path, body, options, message):
  with pytest.raises(ConfigError, match=message):
    sweep.read_sweep(_sweep_file(tmp_path, body), **options)


def test_the_commands_rates_and_rungs_on_the_command_line_write_nothing_when_refused(tmp_path):
  import subprocess
  import sys

  workdir = tmp_path / "sweep"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "convnet.sweep",
      f"--sweep={_sweep_file(tmp_path, PADDING)}",
      f"--workdir={workdir}",
      "--learning_rates=0.001,0.01",
      "--halving_rungs=1,5",
      "--sweep.data.source=embedded",
      "--sweep.seed=3",  # every cell sets its seed: the value is not used
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert "--sweep.seed=3 is not used: every cell of the sweep sets seed itself" in result.stderr
  assert result.stderr.count("is not used") == 1  # --sweep.data.source=embedded is used
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("error: halving rungs (1, 5) end at 5")
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


def _mode(rates=(0.001, 0.003), rungs=(1, 3), eta=2, source="command"):
  return {"field": "optimizer.learning_rate", "rungs": list(rungs), "eta": eta}, {
    "values": list(rates),
    "source": source,
  }


def _halving_mode(**kwargs):
  a, b = _mode(**kwargs)
  return a | b


def test_a_halved_folder_keeps_its_halving_and_refuses_another_in_one_line(tmp_path):
  folder = str(tmp_path)
  sweep_mode.check_mode(folder, False, True, _halving_mode())
  sweep_mode.check_mode(folder, False, True, _halving_mode(source="sweep file"))  # the same halving
  for other in (
    _halving_mode(rungs=(2, 3)),
    _halving_mode(rates=(0.001, 0.01)),
    _halving_mode(eta=3),
  ):
    with pytest.raises(ConfigError) as refused:
      sweep_mode.check_mode(folder, False, True, other)
    assert str(refused.value) == (
      f"{folder} was halved over optimizer.learning_rate (0.001, 0.003) at rungs (1, 3), eta 2: "
      "run it with the same --learning_rates=0.001,0.003 --halving_rungs=1,3 --halving_eta=2, "
      "or give another --workdir"
    )
  # Halving turned off: the flags that halved it are named, not --nohalving as the way back.
  with pytest.raises(ConfigError, match="run it with --learning_rates=0.001,0.003 --halving_rungs"):
    sweep_mode.check_mode(folder, False, True)
  older = tmp_path / "older"  # written before halvings were described: any halving runs
  older.mkdir()
  (older / sweep_mode.MODE_FILE).write_text(
    '{"vmap_seeds": true, "vmap_rates": true, "halving": true}'
  )
  sweep_mode.check_mode(str(older), False, True, _halving_mode(rungs=(2, 3)))
  filed = tmp_path / "filed"
  filed.mkdir()
  sweep_mode.check_mode(str(filed), False, True, _halving_mode(source="sweep file"))
  with pytest.raises(ConfigError, match="with its sweep file's halving\\(\\) again, without --noh"):
    sweep_mode.check_mode(str(filed), False, True)
  whole = tmp_path / "whole"
  whole.mkdir()
  sweep_mode.check_mode(str(whole), True)
  with pytest.raises(ConfigError, match="without successive halving: .*leave out --halving_rungs"):
    sweep_mode.check_mode(str(whole), True, halving=_halving_mode())
  with pytest.raises(ConfigError, match="without successive halving: .*add --nohalving"):
    sweep_mode.check_mode(str(whole), True, halving=_halving_mode(source="sweep file"))


def _fake_rungs(calls, fail=(), at_epoch=None):
  """A stand-in for `sweep_records.train_group`: each member's validation curve, from its rate.

  Cells in `fail` fail (as a refused checkpoint does) once each, at `at_epoch` if given.
  """
  fail = set(fail)

  def train_group(sweep_dir, group, configs, whole=None):
    workdir = sweep_records.group_workdir(sweep_dir, group, whole)
    calls.append([c.name for c in group])
    results, folders = [], []
    for cell in group:
      config = configs[cell.name]
      epochs = config.max_steps // config.steps_per_epoch if config.max_steps > 0 else 3
      folder = os.path.join(workdir, cell.name)
      os.makedirs(folder, exist_ok=True)
      accuracies = [config.optimizer.learning_rate * 10 + 0.01 * e for e in range(1, epochs + 1)]
      with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for e, a in enumerate(accuracies, 1):
          f.write(
            json.dumps({"kind": "epoch", "step": 2 * e, "epoch": e, "validation_accuracy": a})
          )
          f.write("\n")
      folders.append(folder)
      if cell.name in fail and at_epoch in (None, epochs):
        fail.discard(cell.name)
        results.append({"status": "failed", "error": "CheckpointError: refused", "traceback": ""})
      else:
        results.append(
          {
            "status": "done",
            "best_validation_accuracy": max(accuracies),
            "test_accuracy_at_best_validation": 0.5,
            "epoch": epochs,
            "wall_time_s": 1.0,
          }
        )
    return results, folders

  return train_group


def _two_rates(n_seeds=2):
  return sweep.expand(
    lambda: sweep.product(
      sweep.axis("optimizer.learning_rate", (0.001, 0.003)), sweep.axis("seed", range(n_seeds))
    )
  )


RULE = halving.Halving("optimizer.learning_rate", (1, 3), 2)


def test_a_rung_whose_runs_failed_decides_nothing_and_a_rerun_retries_them(
  config, tmp_path, monkeypatch
):
  calls, folder = [], str(tmp_path)
  cells = _two_rates()
  monkeypatch.setattr(sweep_records, "train_group", _fake_rungs(calls, fail=[cells[3].name]))
  written = sweep.run_sweep(_base(config), cells, folder, vmap_rates=True, halving=RULE)
  assert [r["status"] for r in written] == ["failed"]  # no cell pruned on a rung that failed
  assert written[0]["cell"] == cells[3].name and "CheckpointError" in written[0]["error"]
  assert not os.path.exists(tmp_path / "halving" / "base.json")  # no decisions without means
  assert sorted(os.listdir(tmp_path / "records")) == [f"{cells[3].name}.json"]
  calls.clear()
  written = sweep.run_sweep(_base(config), cells, folder, vmap_rates=True, halving=RULE)
  assert sorted(r["status"] for r in written) == ["done", "done", "pruned", "pruned"]
  decisions = json.loads((tmp_path / "halving" / "base.json").read_text())
  assert decisions["chosen"] == 0.003
  assert all(v["mean_validation_accuracy"] is not None for v in decisions["decisions"][0]["values"])


def test_a_signal_as_a_rung_group_ends_stops_the_halving_and_a_rerun_decides_the_same(
  config, tmp_path, monkeypatch
):
  """Ctrl-C that reached a rung's group as it ended was lost: the next rungs and arms trained."""
  calls = []
  fake = _fake_rungs(calls)

  def signalled_once(*args, **kwargs):
    result = fake(*args, **kwargs)
    if len(calls) == 1:  # the signal came as the first group ended
      preemption._unheeded.append(signal.SIGINT)
    return result

  monkeypatch.setattr(sweep_records, "train_group", signalled_once)
  cells, folder = _two_rates(), str(tmp_path)
  with pytest.raises(RunInterrupted, match="SIGINT as a run ended"):
    sweep.run_sweep(_base(config), cells, folder, vmap_rates=True, halving=RULE)
  assert len(calls) == 1 and not os.path.exists(tmp_path / "halving" / "base.json")
  written = sweep.run_sweep(_base(config), cells, folder, vmap_rates=True, halving=RULE)
  assert sorted(r["status"] for r in written) == ["done", "done", "pruned", "pruned"]
  assert json.loads((tmp_path / "halving" / "base.json").read_text())["chosen"] == 0.003


def test_a_failure_at_the_last_rung_keeps_the_pruned_and_records_the_finished(
  config, tmp_path, monkeypatch
):
  calls, cells = [], _two_rates(n_seeds=3)
  monkeypatch.setattr(sweep_records, "train_group", _fake_rungs(calls))
  sweep.run_sweep(_base(config), cells, str(tmp_path), vmap_rates=True, halving=RULE)
  before = {c.name: sweep_records.read_record(str(tmp_path), c) for c in cells}
  (tmp_path / "records" / f"{cells[5].name}.json").unlink()  # a survivor's record lost
  monkeypatch.setattr(sweep_records, "train_group", _fake_rungs(calls, [cells[5].name], 3))
  written = sweep.run_sweep(_base(config), cells, str(tmp_path), vmap_rates=True, halving=RULE)
  assert [(r["cell"], r["status"]) for r in written] == [(cells[5].name, "failed")]
  for cell in cells[:5]:  # neither "already recorded by another worker" nor a pruned one lost
    assert sweep_records.read_record(str(tmp_path), cell) == before[cell.name]


def test_a_seed_added_to_a_halved_sweep_is_refused_before_anything_is_written(
  config, tmp_path, monkeypatch
):
  calls = []
  monkeypatch.setattr(sweep_records, "train_group", _fake_rungs(calls))
  sweep.run_sweep(_base(config), _two_rates(), str(tmp_path), vmap_rates=True, halving=RULE)
  calls.clear()
  listing = sorted(str(p) for p in tmp_path.rglob("*"))
  with pytest.raises(ConfigError) as refused:
    sweep.run_sweep(_base(config), _two_rates(3), str(tmp_path), vmap_rates=True, halving=RULE)
  assert str(refused.value).startswith(
    "arm base was halved over other cells than it has now "
    "(optimizer.learning_rate=0.001,seed=2 is new to it, and 1 more)"
  )
  assert calls == [] and sorted(str(p) for p in tmp_path.rglob("*")) == listing


@pytest.mark.parametrize(
  "name, text, message",
  [
    ("base.json", "xx\n", "base.json"),
    ("extra.json", '{"a": 1}', "extra.json is not a file of successive halving's decisions"),
  ],
)
def test_a_file_in_halving_that_is_not_a_decisions_file_stops_the_sweep(
  config, tmp_path, monkeypatch, name, text, message
):
  calls = []
  monkeypatch.setattr(sweep_records, "train_group", _fake_rungs(calls))
  sweep.run_sweep(_base(config), _two_rates(), str(tmp_path), vmap_rates=True, halving=RULE)
  calls.clear()
  good = (tmp_path / "halving" / "base.json").read_text()
  (tmp_path / "halving" / name).write_text(text)
  with pytest.raises(FileFormatError, match=message):
    sweep.run_sweep(_base(config), _two_rates(), str(tmp_path), vmap_rates=True, halving=RULE)
  assert calls == [] and (tmp_path / "halving" / name).read_text() == text
  copy = tmp_path / "halving" / "copy.json"  # another arm's decisions, under another name
  (tmp_path / "halving" / name).unlink()
  (tmp_path / "halving" / "base.json").write_text(good)
  copy.write_text(good)
  with pytest.raises(FileFormatError, match="copy.json holds the decisions of arm 'base'"):
    sweep.run_sweep(_base(config), _two_rates(), str(tmp_path), vmap_rates=True, halving=RULE)
