"""The sweep runner: expansion, the shipped sweeps, skipping, resuming, sharding, vmapped seeds."""

import functools
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from convnet import (
  config_checks,
  input_pipeline,
  models,
  preemption,
  seeds,
  steps,
  sweep,
  sweep_records,
  train,
)
from convnet.errors import (
  CheckpointError,
  ConfigError,
  DataError,
  FileFormatError,
  RunInterrupted,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = sorted(glob.glob(os.path.join(REPO, "configs", "sweeps", "*.py")))


def test_axis_product_and_zip():
  kernels = sweep.axis("model.conv.kernel_size", [3, 5])
  assert sweep.product(kernels, sweep.axis("seed", range(2))) == [
    {"model.conv.kernel_size": 3, "seed": 0},
    {"model.conv.kernel_size": 3, "seed": 1},
    {"model.conv.kernel_size": 5, "seed": 0},
    {"model.conv.kernel_size": 5, "seed": 1},
  ]
  assert sweep.zipped(kernels, sweep.axis("model.conv.strides", [1, 2])) == [
    {"model.conv.kernel_size": 3, "model.conv.strides": 1},
    {"model.conv.kernel_size": 5, "model.conv.strides": 2},
  ]
  with pytest.raises(ConfigError, match="different lengths"):
    sweep.zipped(kernels, sweep.axis("seed", range(3)))
  with pytest.raises(ConfigError, match="set twice.*seed"):
    sweep.product(sweep.axis("seed", [0]), sweep.axis("seed", [1]))


def test_expand_names_cells_and_rejects_repeats():
  cells = sweep.expand(
    lambda: [{"model.pool.type": ("max", "none"), "seed": 0}, {"model.pool.type": "avg", "seed": 1}]
  )
  assert [c.name for c in cells] == [
    "model.pool.type=max_none,seed=0",
    "model.pool.type=avg,seed=1",
  ]
  assert [c.setting for c in cells] == ["model.pool.type=max_none", "model.pool.type=avg"]
  assert [c.index for c in cells] == [0, 1]
  # Nested values join with "_" at every depth: the names of the committed sweeps' cells.
  assert sweep.cell_name({"model.conv.strides": ((2, 2), (1, 1)), "seed": 0}) == (
    "model.conv.strides=2_2_1_1,seed=0"
  )
  with pytest.raises(ConfigError, match="cells 0 and 1 are the same cell"):
    sweep.expand(lambda: [{"seed": 0}, {"seed": 0}])
  with pytest.raises(ConfigError, match="no cells"):
    sweep.expand(lambda: [])
  with pytest.raises(ConfigError, match="not a dict"):
    sweep.expand(lambda: [("seed", 0)])


def test_apply_overrides_names_a_bad_field(config):
  changed = sweep.apply_overrides(config, {"model.conv.kernel_size": 5, "optimizer.name": "adam"})
  assert changed.model.conv.kernel_size == 5 and changed.optimizer.name == "adam"
  assert config.model.conv.kernel_size == 3  # the base is not changed
  with pytest.raises(ConfigError, match="'model.conv.kernel_sise' is not a field"):
    sweep.apply_overrides(config, {"model.conv.kernel_sise": 5})
  with pytest.raises(ConfigError, match="'optimizer.name' cannot be 3"):
    sweep.apply_overrides(config, {"optimizer.name": 3})


@pytest.mark.parametrize("path", SWEEPS, ids=os.path.basename)
def test_shipped_sweeps_build_every_cell(path):
  """Each shipped sweep has 3+ seeds a setting, and every cell's model builds on its data."""
  module = sweep.load_sweep_module(path)
  base = module.get_config()
  cells = sweep.expand(module.sweep)
  by_setting = {}
  for cell in cells:
    config = sweep.apply_overrides(base, cell.overrides)
    config_checks.validate(config)
    models.create_model(config.model, *input_pipeline.input_spec(config.data))
    by_setting.setdefault(cell.setting, set()).add(config.seed)
  assert len(by_setting) >= 2
  assert all(len(s) >= 3 for s in by_setting.values()), by_setting


def test_convnet_vs_dense_budgets_match():
  path = os.path.join(REPO, "configs", "sweeps", "convnet_vs_dense.py")
  module = sweep.load_sweep_module(path)
  base = module.get_config()
  counts = {}
  for cell in sweep.expand(module.sweep):
    config = sweep.apply_overrides(base, cell.overrides)
    model = models.create_model(config.model, (28, 28, 1), 10)
    params = jax.eval_shape(steps.init_params, model, jax.random.key(0), (28, 28, 1))
    counts[cell.setting] = (config.model.name, models.count_params(params))
  pairs = list(counts.values())
  assert [p[1] for p in pairs[2:4]] == [33194, 33400]  # the book's pair
  for convnet, dense in zip(pairs[::2], pairs[1::2], strict=True):
    assert (convnet[0], dense[0]) == ("convnet", "dense")
    assert abs(convnet[1] - dense[1]) / convnet[1] < 0.03


def test_parse_shard():
  assert sweep.parse_shard("2/5") == (2, 5)
  for bad in ("5/5", "1", "-1/2", "a/b"):
    with pytest.raises(ConfigError, match="--shard"):
      sweep.parse_shard(bad)


def _cells(n_settings=3, n_seeds=2):
  return sweep.expand(
    lambda: sweep.product(
      sweep.axis("optimizer.learning_rate", [1e-3 * (i + 1) for i in range(n_settings)]),
      sweep.axis("seed", range(n_seeds)),
    )
  )


def _fake_result(config, workdir):
  os.makedirs(workdir, exist_ok=True)
  return {
    "num_params": 1,
    "train_flops_per_example": 2.0,
    "best_validation_accuracy": config.optimizer.learning_rate,
    "test_accuracy_at_best_validation": config.seed / 10,
    "wall_time_s": 0.1,
  }


@pytest.mark.parametrize("vmap_seeds", [False, True])
def test_shards_cover_every_cell_once(config, tmp_path, monkeypatch, vmap_seeds):
  calls = []

  def fake_train(config, workdir):
    calls.append(workdir)
    return _fake_result(config, workdir)

  def fake_seeds(config, seed_list, workdir):
    calls.append(workdir)
    return [_fake_result(seeds.seed_config(config, s), workdir) for s in seed_list]

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  monkeypatch.setattr(seeds, "train_seeds", fake_seeds)
  cells = _cells(n_settings=5, n_seeds=3)
  written = [
    sweep.run_sweep(config, cells, str(tmp_path), (i, 3), vmap_seeds=vmap_seeds) for i in range(3)
  ]
  names = [r["cell"] for shard in written for r in shard]
  assert sorted(names) == sorted(c.name for c in cells)  # each cell once, by one shard
  assert all(written)  # every shard had work
  assert len(os.listdir(tmp_path / "records")) == len(cells)
  assert len(calls) == (5 if vmap_seeds else 15)
  for cell in cells:
    record = sweep_records.read_record(str(tmp_path), cell)
    assert record["overrides"] == cell.overrides and record["status"] == "done"
    assert record["config"]["seed"] == cell.overrides["seed"]
    assert record["test_accuracy_at_best_validation"] == cell.overrides["seed"] / 10
    assert record["vmap_group_size"] == (3 if vmap_seeds else 1)


def test_a_seed_or_rate_added_to_a_finished_sweep_trains_alone(config, tmp_path, monkeypatch):
  """Only a group's cells without a finished record train: the finished ones are not run again."""
  trained = []

  def fake_seeds(config, seed_list, workdir):
    trained.append([(config.optimizer.learning_rate, s) for s in seed_list])
    return [_fake_result(seeds.seed_config(config, s), workdir) for s in seed_list]

  def fake_rates(config, members, workdir):
    trained.append([(c.optimizer.learning_rate, c.seed) for _, c in members])
    return [_fake_result(c, os.path.join(workdir, name)) for name, c in members]

  def fake_train(config, workdir):  # a group of one cell trains as a plain run
    trained.append([(config.optimizer.learning_rate, config.seed)])
    return _fake_result(config, workdir)

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  monkeypatch.setattr(seeds, "train_seeds", fake_seeds)
  monkeypatch.setattr(seeds, "train_group", fake_rates)
  two_seeds = str(tmp_path / "seeds")
  sweep.run_sweep(config, _cells(n_settings=2, n_seeds=2), two_seeds, vmap_seeds=True)
  assert trained == [[(1e-3, 0), (1e-3, 1)], [(2e-3, 0), (2e-3, 1)]]
  trained.clear()
  written = sweep.run_sweep(config, _cells(n_settings=2, n_seeds=3), two_seeds, vmap_seeds=True)
  assert trained == [[(1e-3, 2)], [(2e-3, 2)]]  # the new seed of each setting, alone
  assert sorted(r["cell"] for r in written) == [
    "optimizer.learning_rate=0.001,seed=2",
    "optimizer.learning_rate=0.002,seed=2",
  ]
  assert len(os.listdir(tmp_path / "seeds" / "records")) == 6

  rates = str(tmp_path / "rates")
  sweep.run_sweep(config, _cells(n_settings=2, n_seeds=2), rates, vmap_rates=True)
  trained.clear()
  sweep.run_sweep(config, _cells(n_settings=3, n_seeds=2), rates, vmap_rates=True)
  assert trained == [[(3e-3, 0), (3e-3, 1)]]  # the new rate's seeds only
  assert sweep.run_sweep(config, _cells(n_settings=3, n_seeds=2), rates, vmap_rates=True) == []


def _held_by(workdir, members):
  """As a group's checkpoints do: a folder trained by some members refuses others."""
  os.makedirs(workdir, exist_ok=True)
  marker = os.path.join(workdir, "members.json")
  if os.path.exists(marker) and json.load(open(marker)) != members:
    raise CheckpointError(f"{workdir} holds checkpoints of a group of {json.load(open(marker))}")
  with open(marker, "w") as f:
    json.dump(members, f)


@pytest.mark.parametrize("pull", [False, True])
def test_seeds_or_rates_added_to_a_finished_vmapped_sweep_train_in_a_folder_of_their_own(
  config, tmp_path, monkeypatch, pull
):
  """Two seeds added to a finished group trained in its folder, whose checkpoints refused them."""
  folders = []

  def fake_seeds(config, seed_list, workdir):
    _held_by(workdir, sorted(seed_list))
    folders.append(os.path.relpath(workdir, tmp_path))
    return [_fake_result(seeds.seed_config(config, s), workdir) for s in seed_list]

  def fake_rates(config, members, workdir):
    _held_by(workdir, sorted(name for name, _ in members))
    folders.append(os.path.relpath(workdir, tmp_path))
    return [_fake_result(c, os.path.join(workdir, name)) for name, c in members]

  monkeypatch.setattr(train, "train_and_evaluate", _fake_result)
  monkeypatch.setattr(seeds, "train_seeds", fake_seeds)
  monkeypatch.setattr(seeds, "train_group", fake_rates)
  run = functools.partial(sweep.run_sweep, config, pull=pull)
  run(_cells(n_settings=2, n_seeds=2), str(tmp_path / "s"), vmap_seeds=True)
  assert folders == [os.path.join("s", "groups", f"optimizer.learning_rate={r}") for r in RATES2]
  folders.clear()
  written = run(_cells(n_settings=2, n_seeds=4), str(tmp_path / "s"), vmap_seeds=True)
  assert [r["status"] for r in written] == ["done"] * 4
  assert folders == [
    os.path.join("s", "groups", f"optimizer.learning_rate={r},seed=2+3") for r in RATES2
  ]

  run(_cells(n_settings=2, n_seeds=2), str(tmp_path / "r"), vmap_rates=True)
  folders.clear()
  written = run(_cells(n_settings=2, n_seeds=4), str(tmp_path / "r"), vmap_rates=True)
  assert [r["status"] for r in written] == ["done"] * 4
  assert folders == [os.path.join("r", "groups", "optimizer.learning_rate=0.001+0.002,seed=2+3")]
  # The whole group's folder keeps its name (a finished sweep resumes as it was).
  whole = sweep_records.group_cells(_cells(n_settings=2, n_seeds=4), False, True)[0]
  assert sweep_records.group_workdir("S", whole, whole) == os.path.join(
    "S", "groups", "optimizer.learning_rate=0.001+0.002"
  )


RATES2 = ("0.001", "0.002")


def test_a_part_of_a_group_has_a_folder_of_its_own_the_same_on_every_rerun():
  cells = _cells(n_settings=2, n_seeds=3)
  (whole,) = sweep_records.group_cells(cells, False, True)
  odd = [whole[0], whole[4]]  # (0.001, seed 0) and (0.002, seed 1): not every rate x seed
  first = sweep_records.group_workdir("S", odd, whole)
  assert first.startswith(os.path.join("S", "groups", "optimizer.learning_rate=0.001+0.002,"))
  assert first != sweep_records.group_workdir("S", [whole[1], whole[3]], whole)
  assert sweep_records.group_workdir("S", whole[:3], whole) == os.path.join(
    "S", "groups", "optimizer.learning_rate=0.001,seed=0+1+2"
  )
  # Seeds in order, whatever order the part's cells come in.
  assert sweep_records.group_workdir("S", [whole[2], whole[0], whole[1]], whole) == (
    sweep_records.group_workdir("S", whole[:3], whole)
  )


def test_a_file_under_records_that_is_not_a_record_stops_the_sweep_before_any_cell(
  config, tmp_path, monkeypatch
):
  monkeypatch.setattr(train, "train_and_evaluate", _fake_result)
  sweep.run_sweep(config, _cells(n_settings=3), str(tmp_path))
  # Records of cells no longer in the sweep (a setting dropped) are fine.
  written = sweep.run_sweep(config, _cells(n_settings=2, n_seeds=3), str(tmp_path))
  assert [r["status"] for r in written] == ["done", "done"]
  calls = []
  monkeypatch.setattr(train, "train_and_evaluate", lambda c, w: calls.append(w) or 1 / 0)
  (tmp_path / "records" / "extra.json").write_text('{"a": 1}')
  with pytest.raises(FileFormatError, match="extra.json"):
    sweep.run_sweep(config, _cells(n_settings=2, n_seeds=4), str(tmp_path))
  assert calls == [] and (tmp_path / "records" / "extra.json").read_text() == '{"a": 1}'


def test_an_override_that_every_cell_sets_again_is_named(caplog):
  cells = sweep.expand(
    lambda: [{"data.num_validation": 10, "seed": 0}, {"data": {"num_validation": 20}}]
  )
  overrides = {"data.num_validation": 5000, "num_epochs": 2, "seed": 3}
  assert sweep.overridden_by_every_cell(overrides, cells) == ["--sweep.data.num_validation=5000"]
  with caplog.at_level("WARNING"):
    sweep.warn_unused_overrides(overrides, cells)
  assert "--sweep.data.num_validation=5000 is not used: every cell" in caplog.text
  assert "num_epochs" not in caplog.text


@pytest.mark.parametrize("pull", [False, True])
def test_a_signal_as_a_run_ends_stops_the_sweep_after_its_records(
  config, tmp_path, monkeypatch, pull
):
  """Ctrl-C as a run finished was lost: the run ended normally and the sweep went on."""
  trained = []

  def fake_train(config, workdir):
    trained.append(config.optimizer.learning_rate)
    if len(trained) == 1:  # the signal came as this run ended: it finished anyway
      preemption._unheeded.append(signal.SIGINT)
    return _fake_result(config, workdir)

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  cells = _cells(n_settings=3, n_seeds=1)
  with pytest.raises(RunInterrupted, match="SIGINT as a run ended: its records are written"):
    sweep.run_sweep(config, cells, str(tmp_path), (0, 1), pull=pull)
  assert trained == [1e-3]
  recorded = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "records" / "*.json")))
  assert recorded == [f"{cells[0].name}.json"]
  assert sweep.run_sweep(config, cells, str(tmp_path), (0, 1), pull=pull)  # goes on
  assert trained == [1e-3, 2e-3, 3e-3]


def test_finished_cells_are_skipped_and_a_crash_is_recorded(config, tmp_path, monkeypatch):
  calls = []

  def flaky_train(config, workdir):
    calls.append(os.path.basename(workdir))
    if config.optimizer.learning_rate == 2e-3 and config.seed == 1:
      raise FloatingPointError("boom")
    return _fake_result(config, workdir)

  monkeypatch.setattr(train, "train_and_evaluate", flaky_train)
  cells = _cells()
  first = sweep.run_sweep(config, cells, str(tmp_path))
  assert len(calls) == 6
  failed = [r for r in first if r["status"] == "failed"]
  assert [r["cell"] for r in failed] == ["optimizer.learning_rate=0.002,seed=1"]
  assert "FloatingPointError: boom" in failed[0]["error"]
  assert sum(r["status"] == "done" for r in first) == 5  # the sweep went on past the crash

  calls.clear()
  done = {c.name: os.path.getmtime(sweep_records.record_path(str(tmp_path), c)) for c in cells}
  second = sweep.run_sweep(config, cells, str(tmp_path))  # only the failed cell again
  assert calls == ["optimizer.learning_rate=0.002,seed=1"]
  assert [r["status"] for r in second] == ["failed"]
  for cell in cells:
    if cell.name != calls[0]:
      assert os.path.getmtime(sweep_records.record_path(str(tmp_path), cell)) == done[cell.name]

  calls.clear()
  changed = config.copy_and_resolve_references()
  changed.num_epochs = 2  # another config: the cells run again, to the new epoch count
  sweep.run_sweep(changed, cells[:2], str(tmp_path))
  assert len(calls) == 2

  # Fields that change what a run logs or traces, not its numbers, don't make a cell run again,
  # nor does a record of an older version that lacks one of them.
  calls.clear()
  neutral = changed.copy_and_resolve_references()
  neutral.log_every_steps, neutral.checkpoint_every_steps, neutral.profile_steps = 7, 5, 3
  path = sweep_records.record_path(str(tmp_path), cells[0])
  with open(path) as f:
    record = json.load(f)
  del record["config"]["profile_steps"]
  with open(path, "w") as f:
    json.dump(record, f)
  sweep.run_sweep(neutral, cells[:2], str(tmp_path))
  assert calls == []


@pytest.mark.parametrize("vmap_seeds", [False, True])
def test_a_stop_request_stops_the_sweep_and_records_nothing(
  config, tmp_path, monkeypatch, vmap_seeds
):
  """A SIGTERM inside a group was recorded as a failure, and the sweep went on to the next."""
  calls = []

  def interrupted(*args, **kwargs):
    calls.append(args)
    raise RunInterrupted("SIGTERM at step 2; saved", signal.SIGTERM)

  monkeypatch.setattr(train, "train_and_evaluate", interrupted)
  monkeypatch.setattr(seeds, "train_seeds", interrupted)
  with pytest.raises(RunInterrupted):
    sweep.run_sweep(config, _cells(n_settings=2, n_seeds=2), str(tmp_path), vmap_seeds=vmap_seeds)
  assert len(calls) == 1  # the first group or cell only
  assert not os.path.exists(tmp_path / "records") or not os.listdir(tmp_path / "records")


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("canvas.size", 10, "data.canvas.size=10: size is too small for the base's 28x28 images"),
    ("idx_dir", "/nonexistent", "/nonexistent: no such folder \\(data.idx_dir\\)"),
  ],
)
def test_data_that_cannot_be_read_is_refused_before_any_cell(
  config, tmp_path, field, value, message
):
  """A sweep-wide data field that no cell can read stops the sweep, not each cell in turn."""
  config.data.source = "canvas" if field.startswith("canvas") else "idx"
  config.data.canvas.base = "embedded"
  parent, leaf = ("canvas", "size") if field.startswith("canvas") else (None, field)
  (config.data[parent] if parent else config.data)[leaf] = value
  with pytest.raises((ConfigError, DataError), match=message):
    sweep.run_sweep(config, _cells(), str(tmp_path / "sweep"))
  assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("vmap_seeds", [False, True])
def test_a_failed_rerun_of_another_config_keeps_the_finished_records(
  config, tmp_path, monkeypatch, vmap_seeds
):
  """A changed base field of a finished sweep: each refused resume must not erase a result."""

  def fake_train(config, workdir):
    return _fake_result(config, workdir)

  def fake_seeds(config, seed_list, workdir):
    return [_fake_result(seeds.seed_config(config, s), workdir) for s in seed_list]

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  monkeypatch.setattr(seeds, "train_seeds", fake_seeds)
  cells = _cells(n_settings=2, n_seeds=2)
  sweep.run_sweep(config, cells, str(tmp_path), vmap_seeds=vmap_seeds)
  before = {c.name: sweep_records.read_record(str(tmp_path), c) for c in cells}

  def refused(*args, **kwargs):
    raise CheckpointError("augment.freq_mask_width: 0 (saved) vs 6 (now)")

  monkeypatch.setattr(train, "train_and_evaluate", refused)
  monkeypatch.setattr(seeds, "train_seeds", refused)
  changed = config.copy_and_resolve_references()
  changed.augment.freq_mask_width = 6
  written = sweep.run_sweep(changed, cells, str(tmp_path), vmap_seeds=vmap_seeds)
  assert [r["status"] for r in written] == ["failed"] * len(cells)  # reported as failed...
  for cell in cells:  # ...but the finished records stay as they were
    assert sweep_records.read_record(str(tmp_path), cell) == before[cell.name]


@pytest.mark.slow
def test_a_small_dense_groups_seeds_match_separate_runs(config, tmp_path):
  """The quick tier's check of vmapped seeds, on a model that compiles in a moment."""
  config.model.name = "dense"
  config.model.dense_features = (8,)
  config.max_steps = 6
  config.steps_per_call = 4  # the second call runs 2 of its 4 steps
  results = seeds.train_seeds(config, [0, 3], str(tmp_path / "group"))
  for seed, together in zip([0, 3], results, strict=True):
    alone = train.train_and_evaluate(seeds.seed_config(config, seed), str(tmp_path / f"s{seed}"))
    assert together["step"] == alone["step"] == 6 and together["vmap_group_size"] == 2
    for key in ("train_loss", "validation_loss", "test_loss"):
      np.testing.assert_allclose(together[key], alone[key], rtol=1e-4, err_msg=key)
  assert results[0]["test_loss"] != results[1]["test_loss"]  # two seeds, two models


@pytest.mark.slow  # a group and two runs for each setting
@pytest.mark.parametrize("features", ["pixels", "pca"])
def test_vmapped_seeds_match_separate_runs(config, tmp_path, features):
  config.max_steps = 6
  config.steps_per_call = 4
  config.microbatch_size = 128
  if features == "pca":  # fitted on each seed's own training split
    config.model.name = "dense"
    config.data.features = "pca"
    config.data.num_features = 30
  results = seeds.train_seeds(config, [0, 3], str(tmp_path / "group"))
  for seed, together in zip([0, 3], results, strict=True):
    alone = train.train_and_evaluate(seeds.seed_config(config, seed), str(tmp_path / f"s{seed}"))
    for key in ("train_loss", "validation_loss", "test_loss"):
      np.testing.assert_allclose(together[key], alone[key], rtol=1e-4, err_msg=key)
    for key in ("train_accuracy", "validation_accuracy", "test_accuracy", "num_params"):
      assert together[key] == pytest.approx(alone[key], abs=2e-3), key
    assert together["vmap_group_size"] == 2
  assert results[0]["test_loss"] != results[1]["test_loss"]  # two seeds, two models
  again = seeds.train_seeds(config, [0, 3], str(tmp_path / "group"))  # finished: read back
  assert [r["test_loss"] for r in again] == [r["test_loss"] for r in results]


SWEEP_FILE = textwrap.dedent(
  """
  from convnet.configs import mnist
  from convnet.sweep import axis


  def get_config():
    config = mnist.get_config()
    config.data.source = "embedded"
    config.batch_size = 256
    config.num_epochs = 3
    config.checkpoint_every_steps = 3
    config.log_every_steps = 0
    return config


  def sweep():
    return axis("seed", [0, 1])
  """
)


def _sweep_command(sweep_file, workdir):
  return [sys.executable, "-m", "convnet.sweep", f"--sweep={sweep_file}", f"--workdir={workdir}"]


@pytest.mark.slow
def test_sweep_killed_mid_cell_resumes_with_no_record_lost_or_repeated(tmp_path):
  sweep_file = tmp_path / "two_seeds.py"
  sweep_file.write_text(SWEEP_FILE)
  workdir = tmp_path / "sweep"
  first_cell = workdir / "cells" / "seed=0"
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
  proc = subprocess.Popen(
    _sweep_command(sweep_file, workdir), cwd=REPO, env=env, stderr=subprocess.DEVNULL
  )
  deadline = time.time() + 240
  while time.time() < deadline:  # until the first cell has a checkpoint mid-run
    checkpoints = first_cell / "checkpoints"
    steps = [int(p) for p in os.listdir(checkpoints) if p.isdigit()] if checkpoints.exists() else []
    if steps and max(steps) >= 6:
      break
    assert proc.poll() is None, "the sweep ended before it could be killed"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (workdir / "records" / "seed=0.json").exists(), "killed too late: the cell finished"

  rerun = subprocess.run(
    _sweep_command(sweep_file, workdir), cwd=REPO, env=env, capture_output=True, text=True
  )
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert "Resumed from checkpoint at step" in rerun.stderr
  assert sorted(os.listdir(workdir / "records")) == [
    f"seed={seed}{end}" for seed in (0, 1) for end in (".json", ".test_predictions.npz")
  ]
  for name in ("seed=0", "seed=1"):
    with open(workdir / "records" / f"{name}.json") as f:
      assert json.load(f)["status"] == "done"
    with open(workdir / "cells" / name / "metrics.jsonl") as f:
      steps = [json.loads(line)["step"] for line in f]
    assert steps == sorted(set(steps)), f"{name}: a step is missing or repeated: {steps}"
    assert len(steps) == 3  # one record an epoch, none lost


@pytest.mark.parametrize("name", ["spoken_digits", "shapes3d"])
def test_spoken_digits_and_shapes3d_sweeps_compare_equal_budgets(name):
  module = sweep.load_sweep_module(os.path.join(REPO, "configs", "sweeps", f"{name}.py"))
  base = module.get_config()
  counts = {}
  for cell in sweep.expand(module.sweep):
    config = sweep.apply_overrides(base, cell.overrides)
    shape, num_classes = input_pipeline.input_spec(config.data)
    model = models.create_model(config.model, shape, num_classes)
    params = jax.eval_shape(steps.init_params, model, jax.random.key(0), shape)
    counts[config.model.name] = models.count_params(params)
  convnet, dense = counts["convnet"], counts["dense"]
  assert abs(convnet - dense) / convnet < 0.05, counts
