"""Sweep records from elsewhere: each field checked, one sweep per report, one line per bad file.

A sweep folder may be copied in, so every reader of records (`convnet.sweep`,
`convnet.report`, `analysis.load_records`) goes through `convnet.records`: a
record that is not one, or one of another sweep, stops the reader with one
line naming the file and the field, and nothing is trained, averaged or
overwritten.
"""

import glob
import json
import os
import subprocess
import sys

import pytest

from convnet import analysis, records, report, sweep, sweep_mode, sweep_records, train
from convnet.errors import DataError, FileFormatError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = "model.conv.kernel_size"
DEEP = "[" * 200_000 + "]" * 200_000


def _record(kernel, seed, index=None, test=0.9, **fields):
  """A record as `convnet.sweep` writes it, of a sweep of two kernel sizes on embedded MNIST."""
  overrides = {KERNEL: kernel, "seed": seed}
  cell = sweep.cell_name(overrides)
  return {
    "cell": cell,
    "index": 2 * (kernel == 5) + seed if index is None else index,
    "setting": sweep.cell_name({KERNEL: kernel}),
    "overrides": overrides,
    "config": {
      "seed": seed,
      "data": {"source": "embedded", "name": "mnist", "idx_dir": ""},
      "model": {"name": "convnet", "conv": {"kernel_size": kernel, "features": [16, 32]}},
      "optimizer": {"name": "adam", "learning_rate": 0.001},
      "batch_size": 64,
      "num_epochs": 1,
      "max_steps": -1,
      "log_every_steps": 50,
    },
    "workdir": f"cells/{cell}",
    "finished_at": "2025-01-01T00:00:00Z",
    "status": "done",
    "vmap_group_size": 1,
    "num_params": 1000,
    "best_validation_accuracy": test - 0.01,
    "best_epoch": 1,
    "test_accuracy_at_best_validation": test,
    "test_accuracy": test,
    "test_loss_at_best_validation": 0.3,
    "train_loss": 0.4,
    "epoch": 1,
    "wall_time_s": 1.5,
    "train_examples_per_sec": 1000.0,
    "flops_per_example": 2e6,
  } | fields


def _sweep_records():
  return [_record(k, s, test=0.9 + 0.01 * s) for k in (3, 5) for s in (0, 1)]


def _write(sweep_dir, *written):
  os.makedirs(os.path.join(sweep_dir, "records"), exist_ok=True)
  paths = []
  for record in written:
    path = os.path.join(sweep_dir, "records", f"{record['cell']}.json")
    with open(path, "w") as f:
      f.write(record if isinstance(record, str) else json.dumps(record))
    paths.append(path)
  return paths


def _write_text(sweep_dir, name, text):
  os.makedirs(os.path.join(sweep_dir, "records"), exist_ok=True)
  path = os.path.join(sweep_dir, "records", name)
  with open(path, "w") as f:
    f.write(text)
  return path


def _one_line(error) -> str:
  text = str(error.value)
  assert "\n" not in text, text
  return text


def test_every_committed_sweep_folder_passes_the_checks():
  """No false alarm: the records the results pages come from are read as they are."""
  folders = sorted(glob.glob(os.path.join(REPO, "results", "*", "*", "records")))
  assert len(folders) >= 20
  for folder in folders:
    read = records.read_folder(os.path.dirname(folder))
    assert len(read) == len(glob.glob(os.path.join(folder, "*.json"))), folder


def test_a_good_sweep_is_read_in_sweep_order(tmp_path):
  _write(tmp_path, *reversed(_sweep_records()))
  read = analysis.load_records(str(tmp_path))
  assert [r["index"] for r in read] == [0, 1, 2, 3]
  (three, five) = analysis.summarize(read)
  assert three["seeds"] == five["seeds"] == 2


# ----------------------------------------------------------------------------
# One record: each field the code reads is of its type and range.


@pytest.mark.parametrize(
  "change, field, found",
  [
    # The examples: a TypeError, a KeyError and an AttributeError in the report.
    ({"index": "0"}, "index", '"0"'),
    ({"config": {}}, "config.model.name", "missing"),
    ({"overrides": [1]}, "overrides", "[1]"),
    # Accuracies printed as "293.60 ± 291.89" and "–".
    ({"test_accuracy_at_best_validation": 5.0}, "test_accuracy_at_best_validation", "5.0"),
    ({"test_accuracy_at_best_validation": float("nan")}, "test_accuracy_at_best_validation", "NaN"),
    ({"best_validation_accuracy": -0.1}, "best_validation_accuracy", "-0.1"),
    ({"best_validation_accuracy": float("inf")}, "best_validation_accuracy", "Infinity"),
    ({"test_accuracy_at_best_validation": None}, "test_accuracy_at_best_validation", "null"),
    ({"test_accuracy_at_best_validation": True}, "test_accuracy_at_best_validation", "true"),
    ({"train_loss": -1.0}, "train_loss", "-1.0"),
    ({"test_loss_at_best_validation": float("-inf")}, "test_loss_at_best_validation", "-Inf"),
    ({"validation_loss": "0.3"}, "validation_loss", '"0.3"'),
    ({"test_top_2_accuracy_at_best_validation": 1.5}, "test_top_2_accuracy_at_best_validation", ""),
    ({"test_calibration_at_best_validation": "x"}, "test_calibration_at_best_validation", '"x"'),
    ({"index": -1}, "index", "-1"),
    ({"index": True}, "index", "true"),
    ({"index": 1.0}, "index", "1.0"),
    ({"status": "running"}, "status", '"running"'),
    ({"status": ["done"]}, "status", '["done"]'),
    ({"cell": 7}, "cell", "7"),
    ({"setting": ""}, "setting", '""'),
    ({"num_params": -5}, "num_params", "-5"),
    ({"num_params": 10**400}, "num_params", ""),
    ({"wall_time_s": 1e400}, "wall_time_s", "Infinity"),
    ({"flops_per_example": -2.0}, "flops_per_example", "-2.0"),
    ({"vmap_group_size": 0}, "vmap_group_size", "0"),
    ({"error": ["boom"]}, "error", '["boom"]'),
    ({"config": []}, "config", "[]"),
    ({"config": {"model": "convnet"}}, "config.model", '"convnet"'),
    ({"config": {"model": {"name": 3}}}, "config.model.name", "3"),
    ({"config": {"model": {"name": "convnet"}, "data": "embedded"}}, "config.data", ""),
    ({"config": {"model": {"name": "convnet"}, "data": {"source": []}}}, "config.data.source", ""),
    ({"config": {"model": {"name": "c"}, "num_epochs": 0}}, "config.num_epochs", "0"),
    (
      {"config": {"model": {"name": "c"}, "optimizer": {"learning_rate": -1}}},
      "config.optimizer.learning_rate",
      "-1",
    ),
    ({"overrides": {"seed": "0"}}, "overrides.seed", '"0"'),
    ({"overrides": {"not a field": 1}}, "overrides['not a field']", "1"),
    ({"overrides": {"optimizer.learning_rate": "0.1"}}, "overrides.optimizer.learning_rate", ""),
    ({"overrides": {"data.num_train": 2.5}}, "overrides.data.num_train", "2.5"),
    ({"overrides": {KERNEL: float("nan")}}, f"overrides.{KERNEL}", "NaN"),
    # A hand-edited record whose overrides no longer say what its config ran.
    ({"overrides": {KERNEL: 7, "seed": 0}}, f"overrides.{KERNEL}", "7"),
    ({"overrides": {KERNEL: 3, "seed": 4}}, "overrides.seed", "4"),
  ],
)
def test_a_field_of_the_wrong_type_or_range_is_named_in_one_line(tmp_path, change, field, found):
  good = _sweep_records()
  bad = good[0] | change
  path = os.path.join(tmp_path, "records", f"{good[0]['cell']}.json")
  _write_text(tmp_path, os.path.basename(path), json.dumps(bad))
  _write(tmp_path, *good[1:])
  with pytest.raises(FileFormatError) as error:
    analysis.load_records(str(tmp_path))
  message = _one_line(error)
  assert message.startswith(f"{path}: {field} is {found}"), message
  assert "move it out of" in message and "trains that cell again" in message


@pytest.mark.parametrize("missing", ["status", "config", "cell", "index", "setting", "overrides"])
def test_a_missing_field_is_named(tmp_path, missing):
  record = _sweep_records()[0]
  del record[missing]
  _write_text(tmp_path, f"{_sweep_records()[0]['cell']}.json", json.dumps(record))
  with pytest.raises(FileFormatError, match=f": {missing} is missing: it is not a sweep record"):
    analysis.load_records(str(tmp_path))


def test_a_loss_that_overflowed_is_read_as_the_run_recorded_it(tmp_path):
  """One step at learning rate 1e20 finishes with NaN evaluation losses; its record is the
  sweep's own, so it is read, and the table shows no mean for it."""
  overflowed = _record(3, 0, validation_loss=float("nan"), test_loss=float("inf"))
  overflowed["test_loss_at_best_validation"] = float("nan")
  _write(tmp_path, overflowed)
  (read,) = analysis.load_records(str(tmp_path))
  table = report.markdown(analysis.summarize([read]), [read])
  assert f"| {KERNEL}=3 | – |" in table, table  # the test loss's column


def test_a_finished_record_holds_its_test_accuracy_and_an_unfinished_one_may_hold_nulls(tmp_path):
  done = _sweep_records()[0]
  del done["test_accuracy_at_best_validation"]
  _write(tmp_path, done)
  with pytest.raises(FileFormatError, match="test_accuracy_at_best_validation is missing"):
    analysis.load_records(str(tmp_path))
  failed = _record(3, 0, status="failed", error="FloatingPointError: nan", traceback="...")
  failed |= dict.fromkeys(("best_validation_accuracy", "test_accuracy_at_best_validation"))
  _write(tmp_path, failed)
  (read,) = analysis.load_records(str(tmp_path))
  assert read["status"] == "failed"


@pytest.mark.parametrize(
  "text, found",
  [
    (DEEP, "nests JSON more than 64 levels deep"),  # was a RecursionError
    ('{"cell": ', "is not JSON"),
    ("[1, 2]", ": the record is [1, 2], not an object"),
  ],
)
def test_a_file_that_is_not_a_record_is_named(tmp_path, text, found):
  path = _write_text(tmp_path, "k=3,seed=0.json", text)
  with pytest.raises(FileFormatError) as error:
    analysis.load_records(str(tmp_path))
  message = _one_line(error)
  assert message.startswith(path) and found in message, message


def test_a_folder_or_a_pipe_where_a_record_goes_is_refused_without_hanging(tmp_path):
  _write(tmp_path, *_sweep_records())
  os.mkfifo(tmp_path / "records" / "fifo.json")
  with pytest.raises(FileFormatError, match=r"fifo.json is a named pipe \(FIFO\), not a file"):
    analysis.load_records(str(tmp_path))
  os.unlink(tmp_path / "records" / "fifo.json")
  os.mkdir(tmp_path / "records" / "folder.json")
  with pytest.raises(FileFormatError, match="folder.json is a folder, not a file"):
    analysis.load_records(str(tmp_path))


def test_a_copied_record_under_another_name_is_refused(tmp_path):
  first = _sweep_records()[0]
  _write(tmp_path, *_sweep_records())
  copy = _write_text(tmp_path, f"{first['cell']} (copy).json", json.dumps(first))
  with pytest.raises(FileFormatError, match="named after its cell") as error:
    analysis.load_records(str(tmp_path))
  assert _one_line(error).startswith(copy)


# ----------------------------------------------------------------------------
# One sweep: seeds of different runs are never averaged.


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("num_epochs", 2, "num_epochs: 2 there, 1 in the others"),
    ("data", {"source": "idx", "name": "fashion_mnist", "idx_dir": "/d"}, "data.name"),
    ("max_steps", 10, "max_steps: 10 there, -1 in the others"),
  ],
)
def test_a_record_of_another_sweep_is_refused_not_averaged_as_a_third_seed(
  tmp_path, field, value, message
):
  good = _sweep_records()
  intruder = _record(3, 2, index=9, test=0.2)  # seed 2 of the same setting, from another sweep
  intruder["config"][field] = value
  _write(tmp_path, *good)
  (path,) = _write(tmp_path, intruder)
  with pytest.raises(DataError) as error:
    analysis.load_records(str(tmp_path))
  text = _one_line(error)
  assert text.startswith(f"{path} come from another sweep than the other 4 records"), text
  assert message in text and "never averaged" in text
  # The report refuses the same records handed to it in memory, before writing anything.
  with pytest.raises(DataError, match="come from another sweep"):
    report.write_report([*good, intruder], str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_the_larger_side_is_the_sweep_and_the_smaller_one_is_named(tmp_path):
  others = [_record(k, s, index=10 + 2 * k + s) for k in (3, 5) for s in (2, 3, 4)]
  for record in others:
    record["config"]["num_epochs"] = 5
  _write(tmp_path, *_sweep_records(), *others)
  with pytest.raises(DataError) as error:
    analysis.load_records(str(tmp_path))
  text = _one_line(error)
  assert "than the other 6 records" in text and "num_epochs: 1 there, 5 in the others" in text
  assert "and 1 more" in text  # three named, the fourth counted


def test_what_never_changes_a_result_and_fields_older_records_lack_do_not_split_a_sweep(tmp_path):
  good = _sweep_records()
  good[1]["config"]["log_every_steps"] = 7  # result-neutral
  good[1]["config"]["data"]["idx_dir"] = "/elsewhere"  # where the same data was read from
  good[2]["config"]["steps_per_epoch"] = 0  # the value a record of an older version ran as
  _write(tmp_path, *good)
  assert len(analysis.load_records(str(tmp_path))) == 4


def test_a_setting_edited_in_one_record_or_a_seed_recorded_twice_is_refused(tmp_path):
  good = _sweep_records()
  twice = _record(3, 0)
  twice["overrides"] = {"seed": 0, KERNEL: 3}  # another cell name, the same setting and seed
  twice["cell"] = sweep.cell_name(twice["overrides"])
  _write(tmp_path, *good, twice)
  with pytest.raises(DataError, match="are both seed 0 of setting .* would count twice"):
    analysis.load_records(str(tmp_path))
  os.unlink(os.path.join(tmp_path, "records", f"{twice['cell']}.json"))
  edited = _record(5, 2)
  edited["setting"] = good[0]["setting"]
  _write(tmp_path, edited)
  with pytest.raises(DataError, match=f"setting .*, yet their overrides differ in {KERNEL}"):
    analysis.load_records(str(tmp_path))


def test_a_record_without_the_swept_learning_rate_is_refused(tmp_path):
  rate = "optimizer.learning_rate"
  swept = []
  for i, lr in enumerate((1e-3, 1e-2)):
    record = _record(3, 0, index=i)
    record["overrides"] = {rate: lr, "seed": 0}
    record["cell"], record["setting"] = sweep.cell_name(record["overrides"]), f"{rate}={lr}"
    record["config"]["optimizer"]["learning_rate"] = lr
    swept.append(record)
  lacking = _record(3, 1, index=2)
  del lacking["config"]["optimizer"]["learning_rate"]
  _write(tmp_path, *swept, lacking)
  with pytest.raises(DataError, match="config.optimizer.learning_rate is missing, and the other"):
    analysis.load_records(str(tmp_path))


# ----------------------------------------------------------------------------
# The sweep: a bad record stops it before anything trains, and is never overwritten.


def _cells():
  return sweep.expand(lambda: sweep.product(sweep.axis(KERNEL, [3, 5]), sweep.axis("seed", [0])))


def _fake_train(calls):
  def fake(config, workdir):
    calls.append(os.path.basename(workdir))
    os.makedirs(workdir, exist_ok=True)
    return {
      "num_params": 1,
      "train_flops_per_example": 2.0,
      "best_validation_accuracy": 0.5,
      "test_accuracy_at_best_validation": 0.5,
      "wall_time_s": 0.1,
    }

  return fake


@pytest.mark.parametrize(
  "text",
  [
    # The examples: a KeyError from convnet.sweep.
    json.dumps({k: v for k, v in _record(3, 0).items() if k != "status"}),
    json.dumps({k: v for k, v in _record(3, 0).items() if k != "config"}),
    json.dumps(_record(3, 0, test_accuracy_at_best_validation=float("nan"))),
    DEEP,
    '{"cell": ',  # torn: not this project's (its records are written whole), so not overwritten
  ],
  ids=["no status", "no config", "nan accuracy", "deep", "torn"],
)
def test_a_bad_record_stops_the_sweep_before_it_trains_and_is_left_as_it_was(
  config, tmp_path, monkeypatch, text
):
  calls = []
  monkeypatch.setattr(train, "train_and_evaluate", _fake_train(calls))
  cells = _cells()
  path = _write_text(tmp_path, f"{cells[1].name}.json", text)
  with pytest.raises(FileFormatError) as error:
    sweep.run_sweep(config, cells, str(tmp_path))
  message = _one_line(error)
  assert message.startswith(path) and "move it out of" in message, message
  assert calls == []  # not even the good cell before it
  with open(path) as f:
    assert f.read() == text
  os.rename(path, tmp_path / "moved.json")  # the remedy the message gives
  written = sweep.run_sweep(config, cells, str(tmp_path))
  assert [r["status"] for r in written] == ["done", "done"] and len(calls) == 2


def test_a_finished_record_of_another_config_is_replaced_and_the_log_says_so(
  config, tmp_path, monkeypatch, caplog
):
  calls = []
  monkeypatch.setattr(train, "train_and_evaluate", _fake_train(calls))
  cells = _cells()
  sweep.run_sweep(config, cells, str(tmp_path))
  changed = config.copy_and_resolve_references()
  changed.num_epochs = config.num_epochs + 1
  calls.clear()
  with caplog.at_level("INFO"):
    sweep.run_sweep(changed, cells, str(tmp_path))
  assert len(calls) == 2
  assert "its record is of another config (num_epochs:" in caplog.text
  assert "the new record replaces that one" in caplog.text
  assert (
    sweep_records.read_record(str(tmp_path), cells[0])["config"]["num_epochs"] == changed.num_epochs
  )


@pytest.mark.parametrize(
  "text, found",
  [
    (DEEP, "nests JSON more than 64 levels deep"),  # was a RecursionError
    ("[1]", "holds [1], not"),
    ('{"vmap_seeds": "yes"}', 'holds {"vmap_seeds": "yes"}, not'),
    ("{}", "holds {}, not"),
    ("", "is not JSON"),
    ('{"vmap_seeds": true, "halving": 3}', "its halving is 3, not true, false or"),
    ('{"vmap_seeds": true, "halving": {"eta": 2}}', 'its halving is {"eta": 2}, not'),
    (
      '{"vmap_seeds": true, "halving": {"field": "optimizer.learning_rate", "rungs": [1, 2], '
      '"eta": "two", "values": [0.001, 0.003]}}',
      "not true, false or {\"field\"",
    ),
    (
      '{"vmap_seeds": true, "halving": {"field": "optimizer.learning_rate", "rungs": [2, 1], '
      '"eta": 2, "values": [0.001, 0.003]}}',
      "not true, false or {\"field\"",
    ),
    (
      '{"vmap_seeds": true, "halving": {"field": "optimizer.learning_rate", "rungs": [1, 2], '
      '"eta": 2, "values": [0.001, 0.003], "source": "file"}}',
      "not true, false or {\"field\"",
    ),
  ],
)
def test_a_bad_sweep_json_is_named_in_one_line(tmp_path, text, found):
  (tmp_path / sweep_mode.MODE_FILE).write_text(text)
  with pytest.raises(FileFormatError) as error:
    sweep_mode.check_mode(str(tmp_path), vmap_seeds=False)
  message = _one_line(error)
  assert message.startswith(str(tmp_path / sweep_mode.MODE_FILE)) and found in message, message
  assert "delete it" in message


@pytest.mark.parametrize("hard_links", [True, False])
def test_sweep_json_is_made_whole_once(tmp_path, monkeypatch, hard_links):
  if not hard_links:

    def no_link(source, target):
      raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
  sweep_mode.check_mode(str(tmp_path), vmap_seeds=True)
  sweep_mode.check_mode(str(tmp_path), vmap_seeds=True)  # the second reads it
  assert os.listdir(tmp_path) == [sweep_mode.MODE_FILE]  # no temporary file left
  assert json.loads((tmp_path / sweep_mode.MODE_FILE).read_text()) == {"vmap_seeds": True}


# ----------------------------------------------------------------------------
# The command: one line, no traceback.


def test_the_report_command_ends_a_bad_record_in_one_line(tmp_path):
  good = _sweep_records()
  (bad,) = _write(tmp_path, good[0] | {"index": "0"})
  _write(tmp_path, *good[1:])
  with pytest.raises(SystemExit, match=f'^error: {bad}: index is "0", not a whole number'):
    report.main(["report", str(tmp_path)])
  # The same through the program, once: a deep record, the RecursionError.
  _write_text(tmp_path, os.path.basename(bad), DEEP)
  done = subprocess.run(
    [sys.executable, "-m", "convnet.report", str(tmp_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 1
  assert done.stderr.strip().splitlines() == [
    f"error: {bad} nests JSON more than 64 levels deep: it is not one of this project's files; "
    f"move it out of {tmp_path / 'records'} (convnet.sweep then trains that cell again)"
  ]
  assert not os.path.exists(tmp_path / "report.md")
