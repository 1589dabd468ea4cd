"""No write follows a symbolic link, and a file of the wrong kind is named, not used.

A link where the project writes a file of its own (a report, a run's
metrics, its lock) is refused in one line that says what it found, and the
file it points to is left as it was. A named pipe, a folder or a config that
is not a config where a run's files go is one line too, never a hang or a
traceback.
"""

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading

import pytest
from test_report import _kernel_records

from convnet import files, report
from convnet import workdir as workdir_lib
from convnet.configs import mnist
from convnet.errors import (
  CheckpointError,
  ConvnetError,
  FileFormatError,
  WorkdirError,
  WorkdirReadOnlyError,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRECIOUS = "a file outside the project's folders\n"


@pytest.fixture
def outside(tmp_path):
  """A file elsewhere, which a link in the project's folders points to."""
  path = tmp_path / "elsewhere" / "precious.txt"
  path.parent.mkdir()
  path.write_text(PRECIOUS)
  return path


def _link(path, target):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  os.symlink(target, path)
  return str(path)


def _assert_untouched(link, outside):
  assert os.path.islink(link) and os.readlink(link) == str(outside)  # the link itself stays
  assert outside.read_text() == PRECIOUS  # and what it points to


# ----------------------------------------------------------------------------
# Whole files (files.atomic_open): reports, configs, records, figures, caches.


def test_a_report_md_that_is_a_symbolic_link_is_refused_and_its_target_kept(tmp_path, outside):
  link = _link(tmp_path / "out" / "report.md", outside)
  with pytest.raises(WorkdirError) as raised:
    report.write_report(_kernel_records(), str(tmp_path / "out"))
  message = str(raised.value)
  assert message == (
    f"{link} is a symbolic link (to {outside}, which is left as it is), where a file is "
    "written: move it away, or write elsewhere"
  )
  _assert_untouched(link, outside)
  assert os.listdir(tmp_path / "out") == ["report.md"]  # nothing else written, no temporary


@pytest.mark.parametrize("name", ["report.csv", "accuracy.png", "learning_rate.png"])
def test_the_reports_other_files_refuse_a_link_too(tmp_path, outside, name):
  link = _link(tmp_path / "out" / name, outside)
  with pytest.raises(WorkdirError, match=f"{name} is a symbolic link"):
    report.write_report(_kernel_records(), str(tmp_path / "out"))
  _assert_untouched(link, outside)
  assert os.listdir(tmp_path / "out") == [name]  # checked before any file was written


def test_a_report_over_an_old_one_with_a_link_at_its_figure_leaves_the_old_one_whole(
  tmp_path, outside
):
  out = tmp_path / "out"
  report.write_report(_kernel_records(), str(out))
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  (out / "accuracy.png").unlink()
  _link(out / "accuracy.png", outside)
  with pytest.raises(WorkdirError, match="accuracy.png is a symbolic link"):
    report.write_report(_kernel_records()[:-1], str(out))  # another table, if it were written
  after = {p.name: p.read_bytes() for p in out.iterdir() if not p.is_symlink()}
  assert after == {k: v for k, v in before.items() if k != "accuracy.png"}


def test_a_report_removes_the_temporary_files_a_killed_report_left(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  dead = out / f".accuracy.png.{socket.gethostname()}-999999999.abc123.tmp"
  dead.write_bytes(b"half a figure")
  report.write_report(_kernel_records(), str(out))
  assert not dead.exists() and (out / "accuracy.png").exists()


@pytest.mark.parametrize(
  "make, found",
  [
    (lambda p, outside: os.symlink(outside, p), "a symbolic link (to "),
    (lambda p, outside: os.symlink(str(outside) + ".missing", p), "a symbolic link (to "),
    (lambda p, outside: os.symlink(outside.parent, p), "a symbolic link (to "),
    (lambda p, outside: os.mkfifo(p), "a named pipe (FIFO)"),
    (lambda p, outside: os.mkdir(p), "a folder"),
  ],
  ids=["link", "dangling_link", "link_to_a_folder", "fifo", "folder"],
)
def test_an_atomic_write_refuses_anything_but_a_file_at_its_path(tmp_path, outside, make, found):
  path = tmp_path / "config.json"
  make(path, outside)
  before = sorted(os.listdir(outside.parent))
  with pytest.raises(WorkdirError, match=rf"config.json is {re.escape(found)}.*move it away"):
    files.atomic_write(str(path), "{}")
  assert not os.path.isfile(path) or os.path.islink(path)  # not replaced by a file
  assert outside.read_text() == PRECIOUS and sorted(os.listdir(outside.parent)) == before
  assert sorted(os.listdir(tmp_path)) == ["config.json", "elsewhere"]  # no temporary left


def test_an_atomic_write_replaces_a_file_and_makes_a_new_one(tmp_path):
  files.atomic_write(str(tmp_path / "new.txt"), "one")
  files.atomic_write(str(tmp_path / "new.txt"), "two")
  assert (tmp_path / "new.txt").read_text() == "two"


# ----------------------------------------------------------------------------
# Appended files (files.open_append): metrics.jsonl and the lock.


def test_metrics_appended_to_a_symbolic_link_are_refused_and_its_target_kept(tmp_path, outside):
  link = _link(tmp_path / "run" / workdir_lib.METRICS_FILE, outside)
  writer = workdir_lib.MetricsWriter(str(tmp_path / "run"))
  with pytest.raises(WorkdirError, match=r"metrics.jsonl is a symbolic link \(to .*move it away"):
    writer.write({"kind": "train", "step": 1, "train_loss": 1.0})
  _assert_untouched(link, outside)


def test_a_resumed_run_refuses_a_metrics_link_before_it_writes_anything(tmp_path, outside):
  """The run that resumes reads its metrics with `rewrite`: a link there stops it, unchanged."""
  run = tmp_path / "run"
  outside.write_text('{"kind": "train", "step": 1}\n{"kind": "train", "step": 2}\n')
  link = _link(run / workdir_lib.METRICS_FILE, outside)
  with pytest.raises(WorkdirError, match="metrics.jsonl is a symbolic link"):
    workdir_lib.read_metrics(str(run), 1, rewrite=True, resuming=True)
  assert os.path.islink(link)
  assert outside.read_text() == '{"kind": "train", "step": 1}\n{"kind": "train", "step": 2}\n'
  # Reading alone (an export, a plot) may follow it: nothing is written.
  assert [r["step"] for r in workdir_lib.read_metrics(str(run))] == [1, 2]


def test_open_append_refuses_a_pipe_without_blocking_and_appends_to_a_file(tmp_path):
  os.mkfifo(tmp_path / "pipe")
  with pytest.raises(WorkdirError, match="pipe is a named pipe"):
    _within(5, lambda: files.open_append(str(tmp_path / "pipe")))
  for text in ("a", "b"):
    with files.open_append(str(tmp_path / "log")) as f:
      f.write(text)
  assert (tmp_path / "log").read_text() == "ab"


@pytest.mark.parametrize("kind", ["link", "dangling_link"])
def test_a_lock_file_that_is_a_symbolic_link_is_refused_and_its_target_kept(
  tmp_path, outside, kind
):
  target = outside if kind == "link" else outside.parent / "made_by_the_lock"
  link = _link(tmp_path / "run" / ".lock", target)
  with pytest.raises(WorkdirError, match=r"\.lock is a symbolic link \(to ") as raised:
    with workdir_lib.lock(str(tmp_path / "run")):
      pass
  assert not isinstance(raised.value, WorkdirReadOnlyError)  # not a read-only workdir
  assert os.readlink(link) == str(target)
  assert outside.read_text() == PRECIOUS and not os.path.exists(outside.parent / "made_by_the_lock")


@pytest.mark.parametrize(
  "make, found",
  [(os.mkdir, "a folder"), (os.mkfifo, "a named pipe (FIFO)")],
  ids=["folder", "fifo"],
)
def test_a_lock_that_is_not_a_file_is_named_with_what_was_found(tmp_path, make, found):
  make(tmp_path / ".lock")
  with pytest.raises(WorkdirError) as raised:
    with workdir_lib.lock(str(tmp_path)):
      pass
  message = str(raised.value)
  assert message.startswith(f"{tmp_path / '.lock'} is {found}, where a file is written")
  assert "move it away" in message and "make it writable" not in message
  assert not isinstance(raised.value, WorkdirReadOnlyError)


def test_the_lock_still_holds_and_names_its_holder(tmp_path):
  with workdir_lib.lock(str(tmp_path)):
    assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
  with workdir_lib.lock(str(tmp_path)):  # released, and taken again
    pass


# ----------------------------------------------------------------------------
# Files of the wrong kind where a run's files are read.


def _within(seconds, function):
  """`function()`, which must return within `seconds`: a read that hangs on a FIFO fails."""
  outcome = {}

  def run():
    try:
      outcome["value"] = function()
    except BaseException as e:  # noqa: BLE001 (handed to the test's thread)
      outcome["error"] = e

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)
  if thread.is_alive():
    raise AssertionError(f"still blocked after {seconds} s")
  if "error" in outcome:
    raise outcome["error"]
  return outcome["value"]


def test_metrics_that_are_a_named_pipe_are_named_not_waited_for(tmp_path):
  os.mkfifo(tmp_path / workdir_lib.METRICS_FILE)
  try:
    with pytest.raises(
      FileFormatError, match=r"metrics.jsonl is a named pipe \(FIFO\), not a file"
    ):
      _within(5, lambda: workdir_lib.read_metrics(str(tmp_path)))
  finally:  # a reader left blocked in open() is let go (no reader: ENXIO, nothing to do)
    with contextlib.suppress(OSError):
      os.close(os.open(tmp_path / workdir_lib.METRICS_FILE, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("name", [workdir_lib.CONFIG_FILE, workdir_lib.METRICS_FILE])
def test_a_pipe_at_a_runs_file_says_what_to_do_once(tmp_path, name):
  os.mkfifo(tmp_path / name)
  read = workdir_lib.read_config if name == workdir_lib.CONFIG_FILE else workdir_lib.read_metrics
  with pytest.raises(FileFormatError) as error:
    _within(5, lambda: read(str(tmp_path)))
  message = str(error.value)
  assert message.startswith(f"{tmp_path / name} is a named pipe (FIFO), not a file")
  assert message.count("move it away") == 1, message


def test_a_metrics_line_nested_too_deep_is_a_bad_line_not_a_recursion_error(tmp_path):
  (tmp_path / workdir_lib.METRICS_FILE).write_text(
    '{"kind": "train", "step": 1}\n' + "[" * 200_000 + "]" * 200_000 + "\n"
  )
  with pytest.raises(CheckpointError, match=r"metrics.jsonl:2 is not a record: '\[\[\["):
    workdir_lib.read_metrics(str(tmp_path))


# ----------------------------------------------------------------------------
# config.json: one line for anything that is not a config.

DEEP = "[" * 200_000 + "]" * 200_000
BAD_CONFIGS = {
  "deep": (DEEP, "nests JSON more than 64 levels deep"),
  "deep_in_an_object": ('{"seed": ' + DEEP + "}", "nests JSON more than 64 levels deep"),
  "a_list": ("[1]", "holds a list, not a config"),
  "a_number": ("5", "holds a whole number, not a config"),
  "not_json": ("{", "is not JSON"),
  "not_utf8": (b"\xff\xfe{}", "is not UTF-8 text"),
  "seed": ('{"seed": "x"}', 'field seed is "x", where a config holds a whole number'),
  "batch_size": ('{"batch_size": 1.5}', "field batch_size is 1.5, where a config holds a whole"),
  "a_flag_as_a_number": ('{"seed": true}', "field seed is true, where a config holds a whole"),
  "optimizer": ('{"optimizer": 5}', "field optimizer is 5, where a config holds an object"),
  "schedule": (
    '{"optimizer": {"schedule": ["cosine"]}}',
    'field optimizer.schedule is \\["cosine"\\], where a config holds a string',
  ),
  "model": ('{"model": "convnet"}', 'field model is "convnet", where a config holds an object'),
  "model_name": ('{"model": {"name": 3}}', "field model.name is 3, where a config holds a string"),
  "data_source": ('{"data": {"source": null}}', "field data.source is null, where a config holds"),
}


@pytest.mark.parametrize("content, message", BAD_CONFIGS.values(), ids=BAD_CONFIGS)
def test_a_config_json_that_is_not_a_config_is_one_line_naming_the_field(
  tmp_path, content, message
):
  path = tmp_path / workdir_lib.CONFIG_FILE
  (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
  for read in (
    lambda: workdir_lib.read_config(str(tmp_path)),
    lambda: workdir_lib.check_resumable(str(tmp_path), mnist.get_config()),
  ):
    with pytest.raises(FileFormatError, match=message) as raised:
      read()
    assert str(raised.value).startswith(str(path))
    assert "\n" not in str(raised.value) and "use a new --workdir" in str(raised.value)
    assert isinstance(raised.value, ConvnetError)  # the entry points print it as one line


def test_a_config_json_of_a_real_config_reads_back_with_its_numbers(tmp_path):
  config = mnist.get_config()
  config.optimizer.learning_rate = 1  # an int where a float goes: JSON keeps no difference
  workdir_lib.write_config(str(tmp_path), config)
  assert workdir_lib.read_config(str(tmp_path)).optimizer.learning_rate == 1
  workdir_lib.check_resumable(str(tmp_path), config)
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["optimizer"], saved["augment"]  # an older run's config lacks newer fields
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert workdir_lib.read_config(str(tmp_path)).seed == 0


@pytest.mark.slow
def test_the_commands_print_a_deep_config_json_as_one_line(tmp_path):
  """main (resuming), export and visualize: one line each, no RecursionError."""
  os.makedirs(tmp_path / "checkpoints" / "2")  # main compares configs only where a run was saved
  (tmp_path / "config.json").write_text(DEEP)
  for module, flags in (
    ("convnet.main", ["--config=configs/mnist.py", "--config.data.source=embedded"]),
    ("convnet.export", ["--format=onnx", f"--out={tmp_path / 'out'}"]),
    ("convnet.visualize", [f"--out={tmp_path / 'figures'}"]),
  ):
    done = subprocess.run(
      [sys.executable, "-m", module, f"--workdir={tmp_path}", *flags],
      cwd=REPO,
      capture_output=True,
      text=True,
      env=dict(os.environ, CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu"),
    )
    lines = [line for line in done.stderr.splitlines() if not line.startswith(("I1", "W1"))]
    assert done.returncode == 1 and "Traceback" not in done.stderr, (module, done.stderr[-2000:])
    assert lines == [
      f"error: {tmp_path / 'config.json'} nests JSON more than 64 levels deep: it is not one of "
      "this project's files; move it away, or use a new --workdir to start fresh"
    ], module
