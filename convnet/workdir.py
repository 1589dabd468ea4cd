"""A run's directory: its config, metrics, TensorBoard events, checkpoints and lock.

A workdir written by `train.train_and_evaluate` holds:
- `config.json`: the resolved config of the run;
- `metrics.jsonl`: one JSON object per logged step or finished epoch;
- TensorBoard event files, with the same scalars;
- `checkpoints/<step>/`: Orbax checkpoints of the `TrainState` and the loop's
  counters (see `convnet.checkpoints`);
- `.lock`: held while a process writes there.

A group of seeds trained together (`convnet.seeds`) keeps one `config.json`
and `metrics.jsonl` per seed in `seed_<s>/`, and one stacked checkpoint in the
group's own `checkpoints/`. Everything here writes atomically: a file is
either the old one or the new one, never half of each; a write that fails (a
full disk, a read-only mount) raises `WorkdirError`, naming the path.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections
from absl import logging

from convnet import files
from convnet.errors import (
  CheckpointError,
  FileFormatError,
  WorkdirError,
  WorkdirInUseError,
  WorkdirReadOnlyError,
)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SEED_DIR = re.compile(r"seed_(-?\d+)")  # a seed's folder in a group trained together
# Config fields that change what a run logs, saves or traces, how its steps are batched into
# calls and microbatches, how it is evaluated in batches, its implementation of the same ops, and
# where its data is read from: never its numbers beyond float rounding.
RESULT_NEUTRAL = (
  "log_every_steps",
  "checkpoint_every_steps",
  "checkpoint_keep",
  "profile_steps",
  "steps_per_call",
  "microbatch_size",
  "eval_batch_size",
  "model.implementation",
  "data.idx_dir",
  "data.tfds_data_dir",
)
# Config fields that may change between a run and its resumption: those, when the run stops
# (`max_steps`), and the devices (float rounding only). `num_epochs` too, where the learning rate
# does not depend on the run's length (a constant schedule).
RESUMABLE_CHANGES = (*RESULT_NEUTRAL, "max_steps", "mesh_shape")
# Fields added to the config since its first version, with the value that a saved config without
# them ran as: a run or sweep record of an older version is still the same run.
ADDED_FIELDS = {
  "data.num_train": 0,
  "data.num_validation": 0,
  "steps_per_epoch": 0,
  "data.layout": "image",
  "model.dtype": "float32",
  "augment.time_masks": 0,
  "augment.time_mask_width": 0,
  "augment.freq_masks": 0,
  "augment.freq_mask_width": 0,
  "early_stopping.patience": 0,
  "early_stopping.min_delta": 0.0,
  "data.permute_pixels": 0,
  "data.canvas.base": "idx",
  "data.canvas.size": 56,
  "data.canvas.clutter": 0,
  "data.canvas.seed": 0,
}


# ----------------------------------------------------------------------------
# The run's folder and its lock


@contextlib.contextmanager
def run_dir(path: str, what: str = "--workdir") -> Iterator[str]:
  """`files.make_dir(path)` for a run; if the run fails before writing there, the folder goes again.

  A folder this call made, which holds nothing but the run's `.lock` when the
  run raises (bad data, a source that needs the network), is removed, so a
  failed first try leaves no empty workdir behind. A folder that was there
  before is left as it is.
  """
  existed = os.path.isdir(path) if str(path).strip() else True
  path = files.make_dir(path, what)
  try:
    yield path
  except BaseException:
    if not existed:
      with contextlib.suppress(OSError):
        if os.listdir(path) in ([], [".lock"]):
          with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, ".lock"))
          os.rmdir(path)
    raise


@contextlib.contextmanager
def lock(workdir: str, what: str = "--workdir") -> Iterator[None]:
  """Holds `workdir/.lock` while a run writes there; another run on it stops at once.

  The lock is an `fcntl.flock`, which the system drops when its process ends,
  however it ends: a lock left by a dead process never blocks.

  Raises:
    WorkdirInUseError: another live process holds the lock; the message names it.
    WorkdirError: something other than a file stands at `.lock` (a symbolic
      link, which is never followed, a folder, a named pipe); it is named.
    WorkdirReadOnlyError: the lock file cannot be made (a read-only folder).
  """
  path = os.path.join(workdir, ".lock")
  try:
    f = files.open_append(path, readable=True)
  except OSError as e:
    raise WorkdirReadOnlyError(
      f"{workdir} cannot be written ({files.reason(e)}): make it writable, or copy it and give the "
      f"copy as {what}"
    ) from None
  with f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      raise WorkdirInUseError(
        f"{workdir} is in use by {holder}; wait for it to end, or use another {what}"
      ) from None
    f.seek(0)
    f.truncate()
    f.write(
      f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def is_locked(workdir: str) -> bool:
  """Whether a live process holds `workdir`'s lock (see `lock`) at this moment; creates nothing.

  A glance, not a claim: the lock may be taken or let go right after. A folder
  without a `.lock`, or with one that is not a plain file, counts as free (the
  run that tries it says what is wrong).
  """
  try:
    fd = os.open(os.path.join(workdir, ".lock"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: two glances never collide
  except BlockingIOError:
    return True
  except OSError:
    return False
  else:
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False
  finally:
    os.close(fd)


# ----------------------------------------------------------------------------
# The config


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the resolved config to `workdir/config.json`."""
  files.atomic_write(
    os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2) + "\n"
  )


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir/config.json`.

  Raises:
    CheckpointError: the file is missing or cannot be read.
    FileFormatError: it is not a config: not a file, not JSON, nested too
      deep, not an object, or a field of the wrong type (`check_saved_config`);
      the message names the file and the field.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    if os.path.isdir(workdir) and any(SEED_DIR.fullmatch(n) for n in os.listdir(workdir)):
      raise CheckpointError(
        f"{workdir} holds a group of seeds trained together: name one of its seed_<s>/ folders"
      )
    raise CheckpointError(
      f"{workdir} has no {CONFIG_FILE}: it is not the workdir of a run of convnet.main, "
      "nor a seed_<s>/ folder of convnet.seeds or convnet.sweep"
    )
  return ml_collections.ConfigDict(_read_saved_config(path), type_safe=False)


def _read_saved_config(path: str) -> dict[str, Any]:
  """The checked JSON of the config file `path` (see `check_saved_config`)."""
  try:
    saved = files.read_json(path)
  except OSError as e:
    raise CheckpointError(f"{path} cannot be read ({files.reason(e)})") from None
  except FileFormatError as e:
    raise FileFormatError(f"{e}; {_START_FRESH}") from None
  return check_saved_config(saved, path)


_START_FRESH = "move it away, or use a new --workdir to start fresh"


def check_saved_config(saved: Any, path: str) -> dict[str, Any]:
  """`saved`, the JSON of a run's config file `path`, if it is a config; else a FileFormatError.

  A config is an object whose fields have the types of the project's configs
  (`configs/mnist.py`): an int where an int goes (a float field takes an int
  too), a string, a list, an object of fields. Fields that config lacks, and
  the model's fields (`models.create_model` checks those), are not checked
  here; a field that is missing is not an error (older runs lack newer fields).

  Raises:
    FileFormatError: naming `path`, the field, what it holds and what it should.
  """
  if not isinstance(saved, dict):
    raise FileFormatError(
      f"{path} holds {_json_kind(saved)}, not a config (an object of fields); " + _START_FRESH
    )
  from convnet.configs import mnist  # the types every config shares

  _check_types(saved, json.loads(mnist.get_config().to_json_best_effort()), path)
  return saved


def _check_types(
  saved: Mapping[str, Any], reference: Mapping[str, Any], path: str, prefix: str = ""
) -> None:
  for key, expected in reference.items():
    if key not in saved:
      continue
    name, value = prefix + key, saved[key]
    if isinstance(expected, Mapping):
      ok = isinstance(value, Mapping)
      if ok and name != "model":
        _check_types(value, expected, path, f"{name}.")
      elif ok:
        ok = isinstance(value.get("name", ""), str)
        name, value, expected = "model.name", value.get("name"), ""
    else:
      ok = expected is None or _json_kind(value) == _json_kind(expected)
      ok = ok or (_json_kind(expected), _json_kind(value)) == ("a number", "a whole number")
    if not ok:
      raise FileFormatError(
        f"{path}: field {name} is {json.dumps(value)[:60]}, where a config holds "
        f"{_json_kind(expected)}; {_START_FRESH}"
      )


def _json_kind(value: Any) -> str:
  """What a JSON value is, in words: "an object", "a whole number", "a number", ..."""
  if isinstance(value, bool):
    return "true or false"
  if isinstance(value, int):
    return "a whole number"
  kinds = {float: "a number", str: "a string", list: "a list", dict: "an object"}
  return next((k for t, k in kinds.items() if isinstance(value, t)), "null")


def check_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a workdir whose run was made with another config.

  Fields in `RESUMABLE_CHANGES` may differ, and `num_epochs` where both
  configs use a constant learning rate (other schedules decay over the run's
  length). A workdir without `config.json` passes. Reads nothing but the
  config, so that it runs before any data is loaded.

  Raises:
    CheckpointError: `config.json` cannot be read, or other fields differ (all
      of them are named, with both values).
    FileFormatError: `config.json` is not a config (see `read_config`).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.lexists(path):
    return
  saved = _read_saved_config(path)
  schedules = {saved.get("optimizer", {}).get("schedule"), config.optimizer.schedule}
  allowed = RESUMABLE_CHANGES + (("num_epochs",) if schedules == {"constant"} else ())
  changed = changed_fields(saved, config, allowed)
  if changed:
    why = ""
    if any(line.startswith("num_epochs:") for line in changed):
      why = (
        f" (the {config.optimizer.schedule} learning-rate schedule spans num_epochs: use "
        "max_steps to stop a run early)"
      )
    raise CheckpointError(
      f"{workdir} holds checkpoints of a run with another config: "
      + "; ".join(changed)
      + why
      + f". Use a new --workdir, or delete {workdir} to start fresh."
    )


def changed_fields(
  saved: Mapping[str, Any],
  config: ml_collections.ConfigDict,
  allowed: tuple[str, ...] = RESUMABLE_CHANGES,
) -> list[str]:
  """The fields where `config` differs from a `saved` config (as JSON), but for `allowed` ones.

  Each as "field: saved value (saved) vs value now (now)"; a field one of the
  two lacks reads "<absent>". [] when the two configs agree.
  """
  saved = ADDED_FIELDS | flatten(saved)
  now = flatten(json.loads(config.to_json_best_effort()))
  return [
    f"{k}: {saved.get(k, '<absent>')!r} (saved) vs {now.get(k, '<absent>')!r} (now)"
    for k in sorted(set(saved) | set(now))
    if saved.get(k) != now.get(k) and k not in allowed
  ]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """A nested mapping as {"a.b.c": value}, with tuples made lists so that both compare equal."""
  flat = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      flat.update(flatten(v, f"{prefix}{k}."))
    else:
      flat[f"{prefix}{k}"] = json.loads(json.dumps(v))
  return flat


# ----------------------------------------------------------------------------
# Metrics


def read_metrics(
  workdir: str, last_step: float = math.inf, rewrite: bool = False, resuming: bool = False
) -> list[dict[str, Any]]:
  """The records of `workdir/metrics.jsonl` up to `last_step`, as a list of dicts.

  Only two kinds of line are dropped: those past `last_step`, and a torn last
  line (no newline) that a crash left. With `resuming` (the run goes on past
  `last_step`), so is a last record of a partial epoch at `last_step`, which a
  `max_steps` stop wrote: the resumed run writes that epoch's whole record.
  With `rewrite` (the run that resumes from the checkpoint of `last_step`),
  the file is rewritten to match, so that the resumed run appends no step
  twice; without it the file is only read. A missing file gives [].

  Raises:
    CheckpointError: a line before the end is not a record; it is named as
      `file:line`, and nothing is rewritten.
    FileFormatError: the file is not a regular file (a named pipe, a folder),
      or not UTF-8 text; it is named.
    WorkdirError: with `rewrite`, a symbolic link stands at the file (a run
      would write through it); it is named, and nothing is written.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if rewrite:
    files.check_target(path)  # the run that appends here next: never through a link
  if not os.path.exists(path):
    return []
  try:
    lines = files.read_text(path).splitlines(keepends=True)
  except FileFormatError as e:  # a pipe, a folder or a device where the records go
    raise FileFormatError(f"{e}: move it away, then run again") from None
  records, previous = [], (-math.inf, 0)  # (step, line number)
  for number, line in enumerate(lines, 1):
    if number == len(lines) and not line.endswith("\n"):
      break  # A torn last line.
    record = _record(line)
    if record is None or record["step"] < previous[0]:
      what = (
        "a record"
        if record is None
        else f"in step order (after step {previous[0]} at :{previous[1]})"
      )
      raise CheckpointError(
        f"{path}:{number} is not {what}: {line.strip()[:60]!r}; mend or delete the bad line, "
        "then run again (nothing was changed)"
      )
    previous = (record["step"], number)
    if previous[0] <= last_step:
      records.append(record)
  dropped = len(lines) - len(records)
  if resuming and records and partial_epoch(records[-1]) and records[-1]["step"] == last_step:
    records.pop()
    dropped += 1
  if dropped and rewrite:
    logging.info("Dropping %d record(s) of %s past step %d", dropped, path, last_step)
    files.atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))
  return records


def _record(line: str) -> dict[str, Any] | None:
  """The metrics record a line holds: an object with a "kind" and a whole-number "step"."""
  try:
    record = files.loads_json(line, METRICS_FILE)
  except FileFormatError:  # not JSON, or nested too deep to be a record
    return None
  if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
    return None
  step = record.get("step")
  return record if isinstance(step, int) and not isinstance(step, bool) else None


def partial_epoch(record: Mapping[str, Any]) -> bool:
  """Whether `record` is the epoch record of a run that `max_steps` stopped within an epoch."""
  return record.get("kind") == "epoch" and not float(record["epoch"]).is_integer()


# TensorBoard's scalars: each tag holds one statistic. Logged steps ("train" records) give the
# mean over their logging window; epoch records give the whole epoch's means and evaluations.
# Every metric of a record gets a tag by its prefix: `train_loss` of a "train" record is
# `train/loss`, of an epoch record `epoch/train_loss`; `test_accuracy` is `test/accuracy`.
TAG_PREFIXES = {
  "train": {"train_": "train/"},
  "epoch": {"train_": "epoch/train_", "validation_": "validation/", "test_": "test/"},
}
EPOCH_TAGS = {"wall_time_s": "epoch/wall_time_s"}


def tag(kind: str, key: str) -> str | None:
  """The TensorBoard tag of field `key` of a metrics record of `kind`; None for other fields."""
  if kind == "epoch" and key in EPOCH_TAGS:
    return EPOCH_TAGS[key]
  for prefix, replacement in TAG_PREFIXES.get(kind, {}).items():
    if key.startswith(prefix):
      return replacement + key.removeprefix(prefix)
  return None


# The scalars that TensorBoard's HParams view shows beside each run's hyperparameters.
HPARAMS_METRICS = ("validation/accuracy", "validation/loss", "test/accuracy", "test/loss")


def hparams(config: ml_collections.ConfigDict) -> dict[str, float | int | str | bool]:
  """The config as TensorBoard's HParams view takes it: dotted names, tuples and ints past
  int64 (which TensorBoard cannot hold as numbers, e.g. max_steps=10**20) as text."""
  flat = flatten(json.loads(config.to_json_best_effort()))
  return {
    k: v
    if isinstance(v, bool | float | str) or isinstance(v, int) and -(2**63) <= v < 2**63
    else json.dumps(v)
    for k, v in flat.items()
  }


class MetricsWriter:
  """Appends records to `workdir/metrics.jsonl` (one write a line) and to TensorBoard.

  A record's numbers go to TensorBoard as scalars at its "step", under the
  tags `tag` gives (one statistic a tag). With a `config`, the run's
  hyperparameters go to TensorBoard's HParams view too (tensorboardX), with
  validation and test accuracy and loss as its metrics, so that the runs of a
  sweep can be compared there. A writer that is not `enabled` (in processes
  other than 0) writes nothing.

  The event files mirror `metrics.jsonl`. A resumed run passes the records it
  kept as `kept`: its new event file starts with them, and then the older
  event files, which may hold points past the restored step, are removed, so
  that no (tag, step) has two values.

  Raises (from `write`):
    WorkdirError: a file cannot be written, or something other than a file
      stands at `metrics.jsonl` (a symbolic link is refused, never followed);
      what was written before stays.
  """

  def __init__(
    self,
    workdir: str,
    enabled: bool = True,
    config: ml_collections.ConfigDict | None = None,
    kept: list[Mapping[str, Any]] = (),
  ):
    self._workdir = workdir
    self._enabled = enabled
    self._config = config
    self._kept = list(kept)
    self._tensorboard = None  # opened at the first record, so that a finished run adds no file

  def _open(self):
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.summary import hparams as hparams_summaries

    suffix = f".{files.writer_id()}-{time.time_ns()}"
    # Written in this thread, so that a write that fails raises here, and nothing is left to
    # flush when the process exits. Its file is a new name (this host, process and clock to the
    # nanosecond), so no link left in a workdir stands where it is opened.
    self._tensorboard = EventsWriter(os.path.join(self._workdir, "events"), suffix)
    if self._config is not None:
      metrics = {tag: 0.0 for tag in HPARAMS_METRICS}
      for summary in hparams_summaries(hparams(self._config), metrics):
        self._add_event(0, summary)
    for record in self._kept:
      self._add_scalars(record)
    self._tensorboard.flush()
    for name in os.listdir(self._workdir):
      if name.startswith(EVENTS_PREFIX) and not name.endswith(suffix):
        os.unlink(os.path.join(self._workdir, name))

  def _add_event(self, step: int, summary) -> None:
    from tensorboardX.proto import event_pb2

    self._tensorboard.write_event(
      event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
    )

  def _add_scalars(self, record: Mapping[str, Any]) -> None:
    from tensorboardX.summary import scalar

    for key, value in record.items():
      name = tag(record.get("kind"), key)
      if name and isinstance(value, float | int) and not isinstance(value, bool):
        self._add_event(record["step"], scalar(name, value))

  def write(self, record: Mapping[str, Any]) -> None:
    if not self._enabled:
      return
    path = os.path.join(self._workdir, METRICS_FILE)
    try:
      if self._tensorboard is None:
        self._open()
      with files.open_append(path) as f:  # never through a symbolic link, nor into a pipe
        f.write(json.dumps(record) + "\n")
      self._add_scalars(record)
      self._tensorboard.flush()
    except WorkdirError:
      self.close()
      raise
    except OSError as e:
      self.close()
      raise WorkdirError(
        f"cannot write in {self._workdir} ({files.reason(e)}); {files.remedy(e)}"
      ) from None

  def close(self) -> None:
    if self._tensorboard is not None:
      with contextlib.suppress(OSError):  # What a full disk did not take is lost with it.
        self._tensorboard.close()
      self._tensorboard = None


EVENTS_PREFIX = "events.out.tfevents."
