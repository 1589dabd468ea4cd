"""What is restored or exported is what the run trained: checked checkpoints.

Every restore checks the arrays against the digest saved with them and the loop's
metadata against the types and ranges it needs; a damaged checkpoint is named and
passed over for the newest good one. A symbolic link among the step folders is
refused in one line. A step folder that holds what Orbax must never open (a
named pipe, a link, a bad `_CHECKPOINT_METADATA`) is damaged too, found before
Orbax reads it. A reader of a live run takes the checkpoint that replaced the
one it was reading, and says so. The export refuses a model whose test accuracy
is not what the run recorded (a config.json edited after training).
"""

import json
import logging
import os
import re
import shutil
import stat
import threading

import flax.struct
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from convnet import checkpoint_checks, checkpoints, export, train
from convnet.configs import mnist
from convnet.errors import CheckpointError, WorkdirError


@flax.struct.dataclass
class State:
  """A stand-in for TrainState with a step and parameters only, so that saving is quick."""

  step: np.ndarray
  params: dict


def _weights(step: int) -> np.ndarray:
  """1,024 finite float32 of random bits: incompressible, so Orbax stores their bytes as is."""
  bits = np.random.default_rng(step).integers(0, 2**32, 1024, dtype=np.uint32)
  bits[(bits >> 23 & 0xFF) == 0xFF] &= ~np.uint32(1 << 23)  # no NaN or infinity
  return bits.view(np.float32)


def _state(step: int) -> State:
  return State(step=np.array(step, np.int32), params={"w": _weights(step)})


LOOP = {
  "wall_time_s": 1.5,
  "constants": {"steps_per_epoch": 2, "num_train": 16, "train_data_blake2b": "0" * 32},
  "result": {"num_params": 1024},
  "epoch_sums": {"loss": [4.0], "accuracy": [3.0], "count": [8.0]},
  "window_losses": [[0.5]],
}


def _save(workdir, steps, keep=5):
  manager = checkpoints.manager(str(workdir), keep)
  for step in steps:
    checkpoints.save(manager, _state(step), dict(LOOP))
  manager.close()


def _names(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def _raw_params(workdir, step):
  """Checkpoint `step`'s parameters as Orbax alone reads them, with no check of ours."""
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), loop=ocp.args.JsonRestore())
    )
  return restored.state["params"]


def _flip_a_parameter_bit(workdir, step):
  """Flips the lowest bit of w[0] in the file where Orbax stored checkpoint `step`'s bytes."""
  data = _weights(step).tobytes()
  folder = os.path.join(workdir, "checkpoints", str(step), "state")
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        content = bytearray(f.read())
      at = content.find(data)
      if at >= 0:
        content[at] ^= 1
        with open(path, "wb") as f:
          f.write(content)
        return
  raise AssertionError(f"the parameters' bytes are in no file of {folder}")


def _edit_loop(workdir, step, edit):
  """Changes checkpoint `step`'s loop/metadata in place with `edit`, or to what it returns."""
  path = os.path.join(workdir, "checkpoints", str(step), "loop", "metadata")
  with open(path) as f:
    loop = json.load(f)
  replaced = edit(loop)
  loop = loop if replaced is None else replaced
  with open(path, "w") as f:
    json.dump(loop, f)


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ----------------------------------------------------------------------------
# A flipped bit in the arrays.


def test_a_flipped_bit_is_named_and_the_run_resumes_from_the_checkpoint_before(tmp_path, caplog):
  _save(tmp_path, [1, 2])
  _flip_a_parameter_bit(tmp_path, 2)
  flipped = np.asarray(_raw_params(tmp_path, 2)["w"])
  assert flipped[0] != _weights(2)[0] and (flipped[1:] == _weights(2)[1:]).all()  # Orbax can't tell
  manager = checkpoints.manager(str(tmp_path), keep=5)
  with caplog.at_level(logging.WARNING):
    state, loop = checkpoints.restore(manager, _state(0), {})
  manager.close()
  assert int(state.step) == 1
  np.testing.assert_array_equal(np.asarray(state.params["w"]), _weights(1))
  assert loop == LOOP  # the digest is not part of what the loop gets back
  (warning,) = _warnings(caplog)
  directory = tmp_path / "checkpoints"
  assert warning.startswith(
    f"checkpoint 2 of {directory}: its arrays do not match the digest saved with them "
    "(a damaged file): passed over for an older checkpoint, and kept as "
  )
  names = _names(tmp_path)
  assert names[0] == "1" and names[1].startswith("2.unreadable-") and len(names) == 2


def test_a_damaged_checkpoint_with_none_before_it_stops_in_one_line(tmp_path):
  _save(tmp_path, [1])
  _flip_a_parameter_bit(tmp_path, 1)
  manager = checkpoints.manager(str(tmp_path), keep=5)
  with pytest.raises(CheckpointError) as error:
    checkpoints.restore(manager, _state(0), {})
  manager.close()
  message = str(error.value)
  assert message.startswith(
    f"checkpoint 1 of {tmp_path / 'checkpoints'}: its arrays do not match the digest saved with "
    "them (a damaged file). No checkpoint in"
  )
  assert "start fresh" in message and "\n" not in message
  assert _names(tmp_path) == ["1"]  # nothing renamed, nothing deleted


def test_reading_the_weights_passes_over_a_damaged_checkpoint_and_renames_nothing(tmp_path, caplog):
  _save(tmp_path, [1, 2])
  _flip_a_parameter_bit(tmp_path, 2)
  with caplog.at_level(logging.WARNING):
    params, step = checkpoints.restore_params(str(tmp_path))
  assert step == 1
  np.testing.assert_array_equal(np.asarray(params["w"]), _weights(1))
  (warning,) = _warnings(caplog)
  assert "checkpoint 2 of" in warning and "do not match the digest" in warning
  assert _names(tmp_path) == ["1", "2"]  # a reader leaves the workdir as it is
  # The best epoch's checkpoint has no stand-in: refused, by name.
  records = [{"kind": "epoch", "step": s, "epoch": s, "validation_accuracy": s / 4} for s in (1, 2)]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  with pytest.raises(CheckpointError, match=r"^checkpoint 2 of .*: its arrays do not match"):
    checkpoints.restore_params(str(tmp_path), "best")


def _restored_step_1_warning(tmp_path, caplog) -> str:
  """Restores the checkpoints of `tmp_path`, checks step 1's came back, returns the one warning."""
  manager = checkpoints.manager(str(tmp_path), keep=5)
  with caplog.at_level(logging.WARNING):
    state, loop = checkpoints.restore(manager, _state(0), {})
  manager.close()
  assert int(state.step) == 1 and loop == LOOP
  (warning,) = _warnings(caplog)
  return warning


def test_a_checkpoint_saved_without_a_digest_still_restores_and_says_so(tmp_path, caplog):
  _save(tmp_path, [1])
  _edit_loop(tmp_path, 1, _delete(checkpoint_checks.STATE_DIGEST))
  warning = _restored_step_1_warning(tmp_path, caplog)
  assert "saved without a digest of its arrays" in warning and "unchecked" in warning


def test_the_digest_is_the_same_for_a_state_and_the_dict_orbax_restores(tmp_path):
  _save(tmp_path, [3])
  with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
    restored = manager.restore(
      3, args=ocp.args.Composite(state=ocp.args.StandardRestore(), loop=ocp.args.JsonRestore())
    )
  assert isinstance(restored.state, dict)
  saved = restored.loop[checkpoint_checks.STATE_DIGEST]
  assert (
    checkpoint_checks.state_digest(restored.state)
    == saved
    == checkpoint_checks.state_digest(_state(3))
  )
  other = _state(3).replace(params={"w": _weights(3).copy().reshape(32, 32)})
  assert checkpoint_checks.state_digest(other) != saved  # the same bytes in another shape


# ----------------------------------------------------------------------------
# The loop's metadata.


def _delete(*path):
  def edit(loop):
    *parents, leaf = path
    for key in parents:
      loop = loop[key]
    del loop[leaf]

  return edit


def _old_sums(loop, steps):
  loop.pop("epoch_sums")
  loop.update(epoch_loss_sum=[0.5], epoch_correct=[3.0], epoch_steps=steps)


EDITS = {  # what a damaged (or hand-edited) loop/metadata holds, and the field named
  "wall_time_s deleted": (_delete("wall_time_s"), "has no field wall_time_s"),
  "epoch_steps 'x'": (
    lambda loop: _old_sums(loop, "x"),
    'field epoch_steps of its loop/metadata is "x"',
  ),
  "constants deleted": (_delete("constants"), "has no field constants"),
  "wall_time_s negative": (
    lambda loop: loop.update(wall_time_s=-3.0),
    "field wall_time_s of its loop/metadata is -3.0, not a number of seconds >= 0",
  ),
  "a constant of another type": (
    lambda loop: loop["constants"].update(steps_per_epoch="2"),
    'field constants.steps_per_epoch of its loop/metadata is "2"',
  ),
  "a digest of the data missing": (
    _delete("constants", "train_data_blake2b"),
    "has no field constants.train_data_blake2b",
  ),
  "a sum that is not a number": (
    lambda loop: loop["epoch_sums"].update(count=[None]),
    "field epoch_sums.count of its loop/metadata is [null]",
  ),
  "sums of two seeds in a single run": (
    lambda loop: loop["epoch_sums"].update(loss=[1.0, 2.0]),
    "field epoch_sums.loss of its loop/metadata is [1.0, 2.0], not a list of 1 finite numbers",
  ),
  "window losses not lists": (
    lambda loop: loop.update(window_losses=[3]),
    "field window_losses[0] of its loop/metadata is 3",
  ),
  "seeds twice": (lambda loop: loop.update(seeds=[1, 1]), "field seeds of its loop/metadata"),
  "a list, not an object": (lambda loop: [], "its loop/metadata is [], not an object of fields"),
  "a diverged seed without its message": (
    lambda loop: loop.update(diverged={"seed 3": ""}),
    'field diverged of its loop/metadata is {"seed 3": ""}',
  ),
  "the digest not hexadecimal": (
    lambda loop: loop.update({checkpoint_checks.STATE_DIGEST: "zz"}),
    "field state_blake2b of its loop/metadata is",
  ),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_damaged_loop_metadata_is_named_and_the_checkpoint_before_restored(tmp_path, caplog, edit):
  change, named = EDITS[edit]
  _save(tmp_path, [1, 2])
  _edit_loop(tmp_path, 2, change)
  warning = _restored_step_1_warning(tmp_path, caplog)
  assert warning.startswith(f"checkpoint 2 of {tmp_path / 'checkpoints'}: "), warning
  assert named in warning and "(a damaged file): passed over" in warning
  assert checkpoints.read_loop(str(tmp_path))[0] == 1  # the finished-run report reads it too


def test_damaged_loop_metadata_and_nothing_before_it_is_one_line(tmp_path):
  _save(tmp_path, [1])
  _edit_loop(tmp_path, 1, _delete("wall_time_s"))
  manager = checkpoints.manager(str(tmp_path), keep=5)
  with pytest.raises(CheckpointError, match=r"^checkpoint 1 of .*: its loop/metadata has no field"):
    checkpoints.restore(manager, _state(0), {})
  manager.close()
  assert _names(tmp_path) == ["1"]


# ----------------------------------------------------------------------------
# A symbolic link among the step folders.


def _tree(folder):
  return {
    os.path.relpath(os.path.join(root, n), folder): open(os.path.join(root, n), "rb").read()
    for root, _, names in os.walk(folder)
    for n in names
  }


def test_an_old_step_folder_linked_elsewhere_is_named_and_its_target_kept(tmp_path):
  _save(tmp_path / "run", [1, 2])
  elsewhere = tmp_path / "elsewhere"
  os.rename(tmp_path / "run" / "checkpoints" / "1", elsewhere)
  os.symlink(elsewhere, tmp_path / "run" / "checkpoints" / "1")
  before = _tree(elsewhere)
  with pytest.raises(WorkdirError) as error:
    manager = checkpoints.manager(str(tmp_path / "run"), keep=1)  # deletes step 1 on a save
    checkpoints.save(manager, _state(3), dict(LOOP))
  message = str(error.value)
  assert message.startswith(
    f"{tmp_path / 'run' / 'checkpoints' / '1'} is a symbolic link (to {elsewhere}) where a "
    "checkpoint folder is expected"
  )
  assert "Move the link out of the way" in message and "free some space" not in message
  assert _tree(elsewhere) == before and os.path.islink(tmp_path / "run" / "checkpoints" / "1")
  assert _names(tmp_path / "run") == ["1", "2"]


def test_a_checkpoint_folder_linked_elsewhere_is_named_before_anything_is_written(tmp_path):
  os.makedirs(tmp_path / "run")
  os.makedirs(tmp_path / "elsewhere")
  os.symlink(tmp_path / "elsewhere", tmp_path / "run" / "checkpoints")
  with pytest.raises(WorkdirError, match="checkpoints is a symbolic link .* where the run's check"):
    checkpoints.manager(str(tmp_path / "run"), keep=1)
  assert os.listdir(tmp_path / "elsewhere") == []


# ----------------------------------------------------------------------------
# What Orbax must never open: pipes and links in a step folder, its JSON files.


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A workdir with the checkpoints of steps 1 and 2, to copy."""
  folder = tmp_path_factory.mktemp("saved")
  _save(folder, [1, 2])
  return folder


def _copy(saved, tmp_path):
  shutil.copytree(saved, tmp_path, dirs_exist_ok=True)
  return tmp_path


def _unjam(folder):
  """Opens each named pipe under `folder` for writing and closes it: a read blocked on one
  gets an end of file."""
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      if stat.S_ISFIFO(os.lstat(path).st_mode):
        try:
          os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader waits on it
          pass


def _within(seconds, folder, call, *args):
  """`call(*args)`, failing the test if it has not returned after `seconds`, having freed
  whatever read blocks on a named pipe under `folder` (so the suite never hangs)."""
  outcome = {}

  def run():
    try:
      outcome["value"] = call(*args)
    except BaseException as e:
      outcome["error"] = e

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)
  hung = thread.is_alive()
  for _ in range(100):
    if not thread.is_alive():
      break
    _unjam(folder)
    thread.join(0.1)
  if hung:
    pytest.fail(f"{call.__name__} still ran after {seconds} s: it hung on a named pipe")
  if "error" in outcome:
    raise outcome["error"]
  return outcome["value"]


def _restore(workdir):
  """Restores the checkpoints of `workdir` as a resumed run does: (step, loop)."""
  manager = checkpoints.manager(str(workdir), keep=5)
  try:
    state, loop = checkpoints.restore(manager, _state(0), {})
  finally:
    manager.close()
  return int(state.step), loop


def _fifo(workdir, step, path):
  target = os.path.join(workdir, "checkpoints", str(step), path)
  if os.path.lexists(target):
    os.remove(target)
  os.mkfifo(target)


@pytest.mark.parametrize("where", ["_CHECKPOINT_METADATA", "loop/metadata", "state/_METADATA"])
def test_a_named_pipe_in_a_step_folder_is_named_and_the_checkpoint_before_restored(
  saved, tmp_path, caplog, where
):
  workdir = _copy(saved, tmp_path)
  _fifo(workdir, 2, where)
  with caplog.at_level(logging.WARNING):
    step, loop = _within(10, workdir, _restore, workdir)
  assert step == 1 and loop == LOOP
  (warning,) = _warnings(caplog)
  assert warning.startswith(
    f"checkpoint 2 of {workdir / 'checkpoints'}: 2/{where} is a named pipe (FIFO), not a file "
    "(a damaged checkpoint): passed over for an older checkpoint, and kept as "
  ), warning
  names = _names(workdir)
  assert names[0] == "1" and names[1].startswith("2.unreadable-") and len(names) == 2


def _link(workdir, step, path):
  target = os.path.join(workdir, "checkpoints", str(step), path)
  elsewhere = os.path.join(workdir, "elsewhere")
  os.rename(target, elsewhere)
  os.symlink(elsewhere, target)
  return f"2/{path} is a symbolic link (to {elsewhere}), not a file"


def test_readers_pass_over_a_step_folder_with_a_pipe_or_a_link_and_refuse_when_none_is_left(
  saved, tmp_path, caplog
):
  workdir = _copy(saved, tmp_path)
  named = _link(workdir, 2, "state/_METADATA")
  with caplog.at_level(logging.WARNING):
    params, step = _within(10, workdir, checkpoints.restore_params, str(workdir))
    assert checkpoints.read_loop(str(workdir))[0] == 1
  assert step == 1
  np.testing.assert_array_equal(np.asarray(params["w"]), _weights(1))
  assert _warnings(caplog) == [
    f"checkpoint 2 of {workdir / 'checkpoints'}: {named} (a damaged checkpoint): passed over "
    "for an older checkpoint" + tail
    for tail in (" (left as it is)", "")
  ]
  _fifo(workdir, 1, "loop/metadata")
  with pytest.raises(CheckpointError) as error:
    _within(10, workdir, checkpoints.restore_params, str(workdir))
  assert str(error.value) == (
    f"checkpoint 2 of {workdir / 'checkpoints'}: {named} (a damaged checkpoint). No checkpoint "
    f"in {workdir / 'checkpoints'} can be read"
  )
  # The run that holds the workdir stops before Orbax opens any of them, and renames nothing.
  with pytest.raises(CheckpointError, match=r"^checkpoint 2 of .*start fresh\.$"):
    _within(10, workdir, _restore, workdir)
  assert _names(workdir) == ["1", "2"]


DEEP = "[" * 200_000 + "]" * 200_000
BAD_ORBAX_FILES = {  # a file of Orbax's in step 2: what it holds, and what the warning says
  "a list": ("_CHECKPOINT_METADATA", "[]", "2/_CHECKPOINT_METADATA is [], not an object of"),
  "a time as text": (
    "_CHECKPOINT_METADATA",
    '{"init_timestamp_nsecs": "x"}',
    'field init_timestamp_nsecs of 2/_CHECKPOINT_METADATA is "x", not a time in whole ',
  ),
  "a time past the year 9999": (
    "_CHECKPOINT_METADATA",
    '{"commit_timestamp_nsecs": 1000000000000000000000000000000}',
    "field commit_timestamp_nsecs of 2/_CHECKPOINT_METADATA is 1000000000000000000000000000000",
  ),
  "nested 200,000 deep": ("_CHECKPOINT_METADATA", DEEP, "2/_CHECKPOINT_METADATA nests JSON"),
  "a number of 5,000 digits": (
    "_CHECKPOINT_METADATA",
    '{"metrics": {"loss": 1' + "0" * 5000 + "}}",
    "2/_CHECKPOINT_METADATA is not JSON",
  ),
  "an empty file": ("_CHECKPOINT_METADATA", "", "2/_CHECKPOINT_METADATA is not JSON"),
  "a statistic Orbax does not know": (
    "_CHECKPOINT_METADATA",
    '{"performance_metrics": {"made_up_secs": 1.5}}',
    "2/_CHECKPOINT_METADATA cannot be read by Orbax (TypeError: ",
  ),
  "the arrays' metadata nested deep": ("state/_METADATA", DEEP, "2/state/_METADATA nests JSON"),
  "the arrays' metadata a list": ("state/_METADATA", "[]", "2/state/_METADATA is [], not an"),
  "step metrics that are not JSON": ("metrics/metrics", "{", "2/metrics/metrics is not JSON"),
}


@pytest.mark.parametrize("case", list(BAD_ORBAX_FILES))
def test_a_bad_orbax_file_in_a_step_folder_is_named_and_the_checkpoint_before_used(
  saved, tmp_path, caplog, case
):
  where, text, named = BAD_ORBAX_FILES[case]
  workdir = _copy(saved, tmp_path)
  path = workdir / "checkpoints" / "2" / where
  path.parent.mkdir(exist_ok=True)
  path.write_text(text)
  with caplog.at_level(logging.WARNING):
    assert checkpoints.restore_params(str(workdir))[1] == 1  # a reader first: renames nothing
    assert checkpoints.read_loop(str(workdir))[0] == 1
    assert _names(workdir) == ["1", "2"]
    assert _restore(workdir) == (1, LOOP)
  warnings = _warnings(caplog)
  assert len(warnings) == 3 and all(
    w.startswith(f"checkpoint 2 of {workdir / 'checkpoints'}: {named}") for w in warnings
  ), warnings
  assert all("(a damaged checkpoint): passed over for an older checkpoint" in w for w in warnings)
  assert all("\n" not in w and len(w) < 500 for w in warnings)
  names = _names(workdir)
  assert names[0] == "1" and names[1].startswith("2.unreadable-") and len(names) == 2


# ----------------------------------------------------------------------------
# Reading a live run.


@pytest.mark.parametrize("how", ["deleted", "half deleted"])
def test_reading_a_live_run_takes_the_checkpoint_that_replaced_the_one_it_read(
  tmp_path, monkeypatch, how
):
  """The run saves step 3 and deletes step 2 while a reader reads step 2: a race, read again."""
  _save(tmp_path, [1, 2], keep=2)
  real = ocp.CheckpointManager.restore
  read = []

  def restore_while_the_run_saves(self, step, *args, **kwargs):
    if not read:
      read.append(step)
      writer = checkpoints.manager(str(tmp_path), keep=1 if how == "deleted" else 3)
      checkpoints.save(writer, _state(3), dict(LOOP))
      writer.close()
      if how == "half deleted":  # Orbax deletes file by file: the folder is still listed
        shutil.rmtree(tmp_path / "checkpoints" / str(step) / "state")
    return real(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", restore_while_the_run_saves)
  params, step = checkpoints.restore_params(str(tmp_path))
  assert read == [2] and step == 3
  np.testing.assert_array_equal(np.asarray(params["w"]), _weights(3))
  assert not [n for n in _names(tmp_path) if "unreadable" in n]  # a reader renames nothing


def test_a_reader_says_a_checkpoint_was_replaced_while_it_was_read_not_that_it_is_bad(
  tmp_path, monkeypatch, caplog
):
  """Twice the run saves a newer checkpoint and deletes the one being read; the third read
  is of the newest, and no warning calls a replaced checkpoint unreadable."""
  _save(tmp_path, [1, 2], keep=2)
  real = ocp.CheckpointManager.restore
  read = []

  def restore_while_the_run_saves(self, step, *args, **kwargs):
    read.append(step)
    if step in (2, 3) and read.count(step) == 1:
      writer = checkpoints.manager(str(tmp_path), keep=1, best=checkpoints.KeepSteps({1}))
      checkpoints.save(writer, _state(step + 1), dict(LOOP))  # deletes `step`, keeps 1
      writer.close()
    return real(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", restore_while_the_run_saves)
  with caplog.at_level(logging.WARNING):
    params, step = checkpoints.restore_params(str(tmp_path))
  assert read == [2, 3, 4] and step == 4
  np.testing.assert_array_equal(np.asarray(params["w"]), _weights(4))
  directory = tmp_path / "checkpoints"
  assert _warnings(caplog) == [
    f"checkpoint {s} of {directory} was replaced while it was read (a live run): reading the "
    "newest again"
    for s in (2, 3)
  ]


def test_why_a_checkpoint_cannot_be_read_is_its_cause_in_one_line_without_python_reprs(
  tmp_path, monkeypatch, caplog
):
  _save(tmp_path, [1, 2])
  real = ocp.CheckpointManager.restore

  def restore_failing_as_tensorstore_does(self, step, *args, **kwargs):
    if step != 2:
      return real(self, step, *args, **kwargs)
    try:
      raise ValueError(
        'NOT_FOUND: Error reading "params.w/0" in OCDBT database at local file "/x/": No such '
        "file [source locations='tensorstore/kvstore/ocdbt/io/io_handle_impl.cc:98']\nmore"
      )
    except ValueError as cause:
      raise Exception(
        "Encountered error while reading array index: (slice(None, None, None),). See full "
        "TensorStore details: <bound method PyCapsule.spec of TensorStore({\n  'driver': 'zarr'"
      ) from cause

  monkeypatch.setattr(ocp.CheckpointManager, "restore", restore_failing_as_tensorstore_does)
  with caplog.at_level(logging.WARNING):
    assert checkpoints.restore_params(str(tmp_path))[1] == 1
  (warning,) = _warnings(caplog)
  assert warning == (
    f"checkpoint {tmp_path / 'checkpoints' / '2'} cannot be read (ValueError: NOT_FOUND: Error "
    'reading "params.w/0" in OCDBT database at local file "/x/": No such file): passed over for '
    "an older checkpoint (left as it is)"
  )


# ----------------------------------------------------------------------------
# Whole runs: a resumed run, and the export.


def _config(max_steps):
  config = mnist.get_config()
  config.data.source = "embedded"
  config.data.tfds_data_dir = config.data.idx_dir = ""
  config.batch_size, config.microbatch_size, config.num_epochs = 64, 0, 1
  config.max_steps, config.checkpoint_every_steps, config.checkpoint_keep = max_steps, 2, 3
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A run stopped at step 4 (checkpoints 2 and 4), and the same run straight to step 6."""
  folder = tmp_path_factory.mktemp("runs")
  train.train_and_evaluate(_config(4), str(folder / "stopped"))
  straight = train.train_and_evaluate(_config(6), str(folder / "straight"))
  return folder, straight


def _change_a_parameter_orbax_reads(workdir, step):
  """Rewrites checkpoint `step`'s arrays with one parameter changed by a float32 step, as a bad
  disk or an interrupted copy might leave them: Orbax reads them as they are (no check of its
  own), and only the digest saved with the loop can tell. A rewrite, not a flipped bit: the
  stored arrays are compressed, and where a flipped bit lands (unreadable, or in another array)
  is down to the file's layout."""
  folder = os.path.join(workdir, "checkpoints", str(step), "state")
  state = ocp.StandardCheckpointer().restore(folder)
  leaves, treedef = jax.tree.flatten(state["params"])
  first = np.array(leaves[0])  # the first parameter array, whatever the model names it
  first.flat[0] = np.nextafter(first.flat[0], np.float32(np.inf))
  state["params"] = jax.tree.unflatten(treedef, [first, *leaves[1:]])
  shutil.rmtree(folder)
  with ocp.StandardCheckpointer() as writer:
    writer.save(folder, state)
  pairs = zip(_leaves(state["params"]), _leaves(_raw_params(workdir, step)), strict=True)
  assert all(np.array_equal(a, b) for a, b in pairs)  # Orbax reads the changed value


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow  # two runs, then a resumed one each
@pytest.mark.parametrize(
  "damage",
  [
    "a changed parameter",
    "wall_time_s deleted",
    "epoch_steps 'x'",
    "a named pipe for _CHECKPOINT_METADATA",
    "_CHECKPOINT_METADATA a list",
  ],
)
def test_a_resumed_run_never_trains_on_a_damaged_checkpoint(runs, tmp_path, damage):
  folder, straight = runs
  workdir = tmp_path / "run"
  shutil.copytree(folder / "stopped", workdir)
  if damage == "a changed parameter":
    _change_a_parameter_orbax_reads(workdir, 4)
  elif damage == "a named pipe for _CHECKPOINT_METADATA":
    _fifo(workdir, 4, "_CHECKPOINT_METADATA")
  elif damage == "_CHECKPOINT_METADATA a list":
    (workdir / "checkpoints" / "4" / "_CHECKPOINT_METADATA").write_text("[]")
  else:
    _edit_loop(workdir, 4, EDITS[damage][0])
  resumed = _within(60, workdir, train.train_and_evaluate, _config(6), str(workdir))
  assert resumed["test_loss"] == straight["test_loss"]  # resumed from step 2, exactly
  assert resumed["train_loss"] == straight["train_loss"]
  assert [n for n in _names(workdir) if n.startswith("4.unreadable-")]


@pytest.mark.slow  # a run, then exports
def test_an_export_refuses_a_model_that_does_not_score_what_the_run_recorded(runs, tmp_path):
  folder, _ = runs
  workdir = tmp_path / "run"
  shutil.copytree(folder / "straight", workdir)
  lines = export.export(str(workdir), "onnx", str(tmp_path / "good"), verify=False)
  assert lines and (tmp_path / "good" / "model.onnx").exists()
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["conv"]["activation"] == "relu"
  config["model"]["conv"]["activation"] = "tanh"  # the same shapes, another model
  (workdir / "config.json").write_text(json.dumps(config))
  for which in ("latest", "best"):
    with pytest.raises(CheckpointError) as error:
      export.export(str(workdir), "onnx", str(tmp_path / "out"), which, verify=False)
    message = str(error.value)
    assert message.startswith("the run's files disagree: the model that ")
    measured, recorded = (float(x) for x in _accuracies(message))
    assert abs(measured - recorded) > 0.01 and "\n" not in message
  assert not (tmp_path / "out").exists()


def _accuracies(message):
  return re.findall(r"test accuracy (\d\.\d+), but metrics.jsonl recorded (\d\.\d+)", message)[0]
