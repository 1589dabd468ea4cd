"""A run's Orbax checkpoints: the newest ones, and the one behind the headline number.

`WORKDIR/checkpoints/<step>/` holds the `TrainState` ("state") and the loop's
counters ("loop", JSON). The manager keeps the newest `checkpoint_keep`
checkpoints and, beside them, the checkpoint of each member's best epoch by
validation accuracy: the epoch whose test accuracy the results report as "at
best validation" (`epochs.best_record`, the first of ties). Its parameters
stay readable after the run: `restore_params(workdir, "best")`.

A group of seeds trained together keeps one stacked checkpoint per step, and
the best epoch of every seed.

Every restore is checked: the loop's fields must have the types and ranges the
loop reads (`loop_problem`), and the arrays must match the BLAKE2b digest saved
with them ("state_blake2b", `state_digest`). A checkpoint that fails is damaged:
the run passes it over for the newest good one, as for one that cannot be read.

Before Orbax opens a step folder (to list, restore or read it), its entries are
checked (`step_problem`): only folders and regular files, and the JSON files
Orbax parses of the types it reads. Orbax never sees a step folder that fails:
a named pipe would hang it, and a bad `_CHECKPOINT_METADATA` would raise
inside it; such a checkpoint is damaged too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging as python_logging
import math
import os
import re
import stat
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from convnet import epochs, files, logs
from convnet import workdir as workdir_lib
from convnet.errors import CheckpointError, DivergedError, FileFormatError, WorkdirError

CHECKPOINTS = "checkpoints"
WHICH = ("latest", "best")
# The loop's field that holds `state_digest` of the arrays saved beside it.
STATE_DIGEST = "state_blake2b"
# The names in checkpoints/ that Orbax deletes: step folders, and those of saves a kill cut short.
_ORBAX_NAME = re.compile(r"\d+|.*\.orbax-checkpoint-tmp.*")
# Orbax's file of each step folder, with its timestamps; read whenever the steps are listed.
STEP_METADATA = "_CHECKPOINT_METADATA"
# The other JSON files of a step folder that Orbax parses when it lists or restores it, each
# an object (the loop's metadata is checked by `loop_problem`; the arrays' files are binary).
_ORBAX_JSON = ("state/_METADATA", "state/_sharding", "state/array_metadatas/*")
# Files Orbax parses as JSON of any kind: the metrics of a step (this project saves none).
_ORBAX_ANY_JSON = ("loop/metadata", "metrics/metrics")
# The newest time `_CHECKPOINT_METADATA` may hold, in nanoseconds: the end of year 9999.
_LAST_NANOSECOND = 253_402_300_800 * 10**9
# How many times a reader reads the newest checkpoint again, when a live run replaced the one read.
_REREADS = 3


@dataclasses.dataclass
class KeepSteps:
  """An Orbax preservation policy: keep the checkpoints of `steps`, a set the loop updates."""

  steps: set[int] = dataclasses.field(default_factory=set)

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    return [info.step in self.steps for info in checkpoints]


def manager(workdir: str, keep: int, best: KeepSteps | None = None) -> ocp.CheckpointManager:
  """Orbax's manager of `workdir/checkpoints`: the newest `keep`, and the steps in `best`.

  Temporary folders that a killed save left behind are removed when it opens.
  Damaged step folders (`step_problem`) are not shown to Orbax: `restore` passes
  them over and renames them.

  Raises:
    WorkdirError: a symbolic link stands where Orbax writes or deletes (see `check_links`).
    CheckpointError: every checkpoint in it is damaged; the message names the newest.
  """
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
  check_links(directory)
  policies = [ocp.checkpoint_managers.LatestN(keep), best or KeepSteps()]
  listing = GoodSteps()
  made = ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      create=True,
      enable_async_checkpointing=False,
      cleanup_tmp_directories=True,
      step_name_format=listing,
    ),
  )
  if listing.damaged and not made.all_steps():  # a run would start afresh over them
    made.close()
    step = max(listing.damaged)
    raise CheckpointError(
      f"{_damaged_checkpoint(directory, step, listing.damaged[step])}. {_none_readable(directory)}"
    )
  return made


def best_steps(records_per_member: Iterable[Sequence[Mapping[str, Any]]]) -> set[int]:
  """The steps of each member's best epoch (see `epochs.best_record`).

  Also the best of the whole epochs, where a partial one (a `max_steps` stop)
  is best: a resumed run drops that record, and its best is then a whole
  epoch's.
  """
  steps = set()
  for records in records_per_member:
    whole = [r for r in records if not workdir_lib.partial_epoch(r)]
    for best in (epochs.best_record(records), epochs.best_record(whole)):
      if best is not None:
        steps.add(int(best["step"]))
  return steps


def check_links(directory: str) -> None:
  """Refuses a symbolic link at `directory` (a run's checkpoints/), or where Orbax deletes in it.

  Orbax saves into `directory` and deletes old step folders there: through a
  link it would write elsewhere, and deleting one fails half-way. The link and
  what it points to are left as they are.

  Raises:
    WorkdirError: naming the link, its target, and what to do.
  """
  found = []
  if os.path.islink(directory):
    found.append((directory, "the run's checkpoint folder"))
  elif os.path.isdir(directory):
    for name in sorted(os.listdir(directory)):
      path = os.path.join(directory, name)
      if _ORBAX_NAME.fullmatch(name) and os.path.islink(path):
        found.append((path, "a checkpoint folder"))
  if found:
    path, what = found[0]
    raise WorkdirError(
      f"{path} is a symbolic link (to {os.readlink(path)}) where {what} is expected: a run "
      "writes and deletes only its own folders. Move the link out of the way (what it points to "
      "is untouched; a real folder may take its place), then run the same command again"
    )


_KINDS = {
  stat.S_ISLNK: "a symbolic link",
  stat.S_ISFIFO: "a named pipe (FIFO)",
  stat.S_ISSOCK: "a socket",
  stat.S_ISCHR: "a character device",
  stat.S_ISBLK: "a block device",
  stat.S_ISREG: "a file",
}


def _kind(mode: int) -> str:
  return next((name for test, name in _KINDS.items() if test(mode)), "not a file")


def step_problem(step_dir: str | os.PathLike) -> str | None:
  """What in a step folder would hang or break Orbax, found before Orbax opens it; or None.

  Every entry, found with `lstat` (no link is followed), must be a folder or a
  regular file: a named pipe would hang Orbax's reads, and a symbolic link
  reads what is elsewhere. The JSON files that Orbax parses when it lists or
  restores the step (`STEP_METADATA`, the state's `_METADATA`, `_sharding` and
  `array_metadatas`, the loop's and any metrics') are read with
  `files.read_json` (size and depth limits), and `STEP_METADATA`'s fields must
  have the types Orbax reads. Costs one pass over the folder's names and a few
  small files.

  Returns:
    "STEP/loop/metadata is a named pipe (FIFO), not a file", say: the entry
    named from the step folder on, and what is wrong with it.

  Raises:
    FileNotFoundError: the folder, or a part of it, vanished while it was
      looked at (a live run deleting an old checkpoint).
  """
  step_dir = os.fspath(step_dir)
  name = os.path.basename(step_dir)
  try:
    mode = os.lstat(step_dir).st_mode
    if not stat.S_ISDIR(mode):
      return f"{name} is {_kind(mode)}, not a folder"
    folders = [step_dir]
    while folders:
      folder = folders.pop()
      with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
      for entry in entries:
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
          folders.append(entry.path)
        elif not stat.S_ISREG(mode):
          shown = os.path.join(name, os.path.relpath(entry.path, step_dir))
          if stat.S_ISLNK(mode):
            return f"{shown} is a symbolic link (to {os.readlink(entry.path)}), not a file"
          return f"{shown} is {_kind(mode)}, not a file"
  except FileNotFoundError:
    raise
  except OSError as e:
    return (
      f"{os.path.join(name, os.path.relpath(e.filename or step_dir, step_dir))} cannot be "
      f"read ({e.strerror or e})"
    )
  return _json_problem(step_dir)


def _json_problem(step_dir: str) -> str | None:
  """What is wrong with the JSON files of a step folder that Orbax parses (`step_problem`)."""
  name = os.path.basename(step_dir)
  paths = [STEP_METADATA, *_ORBAX_ANY_JSON]
  for pattern in _ORBAX_JSON:
    folder, _, leaf = pattern.rpartition("/")
    if leaf != "*":
      paths.append(pattern)
    elif os.path.isdir(os.path.join(step_dir, folder)):
      paths += sorted(f"{folder}/{n}" for n in os.listdir(os.path.join(step_dir, folder)))
  for relative in paths:
    path = os.path.join(step_dir, relative)
    shown = f"{name}/{relative}"
    if not os.path.lexists(path):
      continue  # Orbax goes on without these (older versions wrote no STEP_METADATA)
    try:
      value = files.read_json(path)
    except FileFormatError as e:
      return str(e).replace(path, shown).split(": it is not one of this project's")[0]
    except FileNotFoundError:
      raise
    except OSError as e:
      return f"{shown} cannot be read ({e.strerror or e})"
    if relative == STEP_METADATA:
      problem = _step_metadata_problem(value, shown)
      if problem:
        return problem
    elif relative not in _ORBAX_ANY_JSON and not isinstance(value, Mapping):
      return f"{shown} is {_shown(value)}, not an object of fields"
  if os.path.lexists(os.path.join(step_dir, STEP_METADATA)):
    try:  # what else Orbax checks in it: its own reading of the times, as it lists the steps
      ocp.step.Metadata(step=0, path=step_dir).commit_timestamp  # noqa: B018
    except FileNotFoundError:
      raise
    except Exception as e:
      return f"{name}/{STEP_METADATA} cannot be read by Orbax ({_reason(e)})"
  return None


def _step_metadata_problem(metadata: Any, shown: str) -> str | None:
  """What is wrong with the fields of a `STEP_METADATA` that Orbax reads, or None."""
  if not isinstance(metadata, Mapping):
    return f"{shown} is {_shown(metadata)}, not an object of fields"
  handlers = metadata.get("item_handlers")
  if not (
    handlers is None
    or isinstance(handlers, str)
    or (isinstance(handlers, Mapping) and all(isinstance(v, str) for v in handlers.values()))
  ):
    return _orbax_field(shown, "item_handlers", handlers, "an object of handler names")
  for field in ("metrics", "performance_metrics", "custom_metadata"):
    value = metadata.get(field)
    if not (value is None or isinstance(value, Mapping)):
      return _orbax_field(shown, field, value, "an object")
  for field in ("init_timestamp_nsecs", "commit_timestamp_nsecs"):
    value = metadata.get(field)
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not (value is None or (whole and 0 <= value < _LAST_NANOSECOND)):
      return _orbax_field(shown, field, value, "a time in whole nanoseconds since 1970")
  return None


def _orbax_field(shown: str, field: str, value: Any, wanted: str) -> str:
  return f"field {field} of {shown} is {_shown(value)}, not {wanted}"


def damaged_steps(directory: str | os.PathLike) -> dict[int, str]:
  """The steps of a checkpoint folder whose step folders are damaged, each with its
  `step_problem`; a step folder that vanishes meanwhile is left out."""
  directory = os.fspath(directory)
  found = {}
  names = os.listdir(directory) if os.path.isdir(directory) else []
  for name in names:
    if re.fullmatch(r"0|[1-9]\d*", name):
      try:
        problem = step_problem(os.path.join(directory, name))
      except FileNotFoundError:
        continue
      if problem:
        found[int(name)] = problem
  return found


@dataclasses.dataclass(frozen=True)
class _ListedStep(ocp.step.Metadata):
  """A step as Orbax lists it, whose time is the oldest where its folder was deleted since it
  was listed (by a live run): reading it then fails, and the reader reads the newest again."""

  @property
  def commit_timestamp(self) -> datetime.datetime:
    try:
      return super().commit_timestamp
    except FileNotFoundError:
      return datetime.datetime.min.replace(tzinfo=datetime.UTC)


class GoodSteps(ocp.step.NameFormat):
  """Orbax's standard step names ("30"), less the damaged step folders (`step_problem`).

  Given to a `CheckpointManager` as its `step_name_format`: whenever it lists
  the steps, those that are damaged are left out, before Orbax reads any file
  of theirs, and kept in `damaged` ({step: problem}) for the caller to name.
  """

  def __init__(self):
    self._standard = ocp.step.standard_name_format()
    self.damaged: dict[int, str] = {}

  def build_name(self, step: int) -> str:
    return self._standard.build_name(step)

  def find_step(self, base_path, step: int):
    """The step's folder; one that is gone is named all the same, as Orbax names it without
    a name format, so that reading it raises FileNotFoundError (which Orbax expects)."""
    try:
      return self._standard.find_step(base_path, step)
    except ValueError:
      return ocp.step.Metadata(step=step, path=ocp.step.build_step_path(base_path, self, step))

  def find_all(self, base_path):
    good, self.damaged = [], {}
    for metadata in self._standard.find_all(base_path):
      try:
        problem = step_problem(metadata.path)
      except FileNotFoundError:  # deleted meanwhile by a live run: no longer a checkpoint
        continue
      if problem:
        self.damaged[metadata.step] = problem
      else:
        good.append(_ListedStep(step=metadata.step, path=metadata.path))
    return iter(good)


def _host_array(x) -> np.ndarray:
  """A leaf of a state as one NumPy array; a replicated array of several processes, its copy."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def state_digest(state) -> str:
  """BLAKE2b (16 bytes, hex) of a state's arrays: each leaf's path, dtype, shape and bytes.

  Leaves are taken in the order of their paths (Orbax's names, "params.conv_0.kernel"),
  so a `TrainState` and the nested dict that Orbax restores without a target give the
  same digest. Costs one pass over the state's bytes (a few ms for the book's convnet).
  """
  digest = hashlib.blake2b(digest_size=16)
  for path, leaf in sorted(ocp.tree.to_flat_dict(state).items()):
    array = _host_array(leaf)
    digest.update(f"{'.'.join(map(str, path))} {array.dtype.name} {array.shape}\n".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def _members(state) -> int:
  """How many members (seeds trained together) a state stacks: the size of its step."""
  step = state.get("step") if isinstance(state, Mapping) else getattr(state, "step", None)
  return max(int(np.size(step)), 1) if step is not None else 1


def _finite(value, low: float = -math.inf) -> bool:
  number = isinstance(value, int | float) and not isinstance(value, bool)
  return number and math.isfinite(value) and value >= low


def _finite_list(value, members: int | None, low: float = -math.inf) -> bool:
  return (
    isinstance(value, list)
    and (members is None or len(value) == members)
    and all(_finite(v, low) for v in value)
  )


def _hex_digest(value) -> bool:
  return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value) is not None


def _messages(value: Any) -> bool:
  """Whether `value` is {"seed 3": why, ...}: non-empty names, each with a non-empty message."""
  return isinstance(value, Mapping) and all(
    isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
  )


def loop_problem(loop: Any, members: int | None = None) -> str | None:
  """What is wrong with a checkpoint's loop metadata ("loop"), or None if nothing.

  Each field the loop reads is checked for its type and range: "wall_time_s"
  (seconds, >= 0) and "constants" (see `train.run_constants`) are required;
  "epoch_sums", "window_losses", "seeds", "result", "diverged", the sums of earlier
  versions ("epoch_loss_sum", "epoch_correct", "epoch_steps") and
  `STATE_DIGEST` are checked where present. `members` is how many seeds the
  checkpoint stacks (None: lists of any length).

  Returns:
    "field F of its loop/metadata is V, not W" (or "has no field F"), naming the field.
  """
  if not isinstance(loop, Mapping):
    return f"its loop/metadata is {_shown(loop)}, not an object of fields"
  n = "" if members is None else f"{members} "
  checks = [  # (field, required, whether the value fits, what it should be)
    ("wall_time_s", True, lambda v: _finite(v, 0), "a number of seconds >= 0"),
    ("constants", True, lambda v: isinstance(v, Mapping), "an object of the run's constants"),
    (STATE_DIGEST, False, _hex_digest, "32 hexadecimal digits"),
    ("seeds", False, lambda v: _seeds_fit(v, members), f"a list of {n}different whole numbers"),
    ("result", False, lambda v: isinstance(v, Mapping), "an object of numbers"),
    ("epoch_sums", False, lambda v: isinstance(v, Mapping), "an object of lists of numbers"),
    ("window_losses", False, lambda v: isinstance(v, list), f"a list of {n}lists of losses"),
    ("diverged", False, _messages, "an object of messages, one for each seed that diverged"),
  ]
  for old in ("epoch_loss_sum", "epoch_correct", "epoch_steps"):
    fits = lambda v: _finite(v, 0) or _finite_list(v, members, 0)  # noqa: E731
    checks.append((old, False, fits, f"a number >= 0 or a list of {n}of them"))
  for field, required, fits, wanted in checks:
    if field not in loop:
      if required:
        return f"its loop/metadata has no field {field}"
      continue
    if not fits(loop[field]):
      return _field_problem(field, loop[field], wanted)
  constants = {
    "steps_per_epoch": (lambda v: isinstance(v, int) and v >= 1, "a whole number >= 1"),
    "num_train": (lambda v: isinstance(v, int) and v >= 1, "a whole number >= 1"),
    "train_data_blake2b": (_hex_digest, "32 hexadecimal digits"),
  }
  for key, value in loop["constants"].items():
    fits, wanted = constants.get(
      key, (lambda v: isinstance(v, int) and v >= 0, "a whole number >= 0")
    )
    if not (isinstance(key, str) and fits(value) and not isinstance(value, bool)):
      return _field_problem(f"constants.{key}", value, wanted)
  for key in constants:
    if key not in loop["constants"]:
      return f"its loop/metadata has no field constants.{key}"
  for key, value in loop.get("result", {}).items():
    if not _finite(value):
      return _field_problem(f"result.{key}", value, "a finite number")
  for key, value in loop.get("epoch_sums", {}).items():
    if not _finite_list(value, members, 0 if key == "count" else -math.inf):
      return _field_problem(f"epoch_sums.{key}", value, f"a list of {n}finite numbers")
  window = loop.get("window_losses") or []
  if window and not (members is None or len(window) == members):
    return _field_problem("window_losses", window, f"a list of {n}lists of losses")
  for i, losses in enumerate(window):
    if not _finite_list(losses, None):
      return _field_problem(f"window_losses[{i}]", losses, "a list of finite losses")
  return None


def _seeds_fit(value, members: int | None) -> bool:
  whole = isinstance(value, list) and all(
    isinstance(s, int) and not isinstance(s, bool) for s in value
  )
  return whole and len(set(value)) == len(value) and members in (None, len(value))


def _shown(value) -> str:
  try:
    text = json.dumps(value)
  except (TypeError, ValueError, RecursionError):
    text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _field_problem(field: str, value, wanted: str) -> str:
  return f"field {field} of its loop/metadata is {_shown(value)}, not {wanted}"


def _damaged(directory, step: int, problem: str) -> CheckpointError:
  return CheckpointError(f"checkpoint {step} of {directory}: {problem} (a damaged file)")


def _damaged_checkpoint(directory, step: int, problem: str) -> CheckpointError:
  """A step folder that fails `step_problem`, named."""
  return CheckpointError(f"checkpoint {step} of {directory}: {problem} (a damaged checkpoint)")


def _none_readable(directory) -> str:
  return (
    f"No checkpoint in {directory} can be read: use a new --workdir, or delete {directory} "
    "to start fresh."
  )


# What ends a line of an error before it turns into Python's or TensorStore's internals.
_INTERNALS = re.compile(
  r"\s*(?:See full TensorStore details|\[source locations=|\[tensorstore_spec="
  r"|<(?:bound method|function|built-in|class|module|coroutine) |\S+ object at 0x).*"
)


def _reason(error: BaseException) -> str:
  """What went wrong, in one line: "Type: first meaningful line" of the error that caused
  `error` (Orbax wraps TensorStore's), cut before any Python object's repr; at most 200
  characters."""
  chain = [error]
  while chain[-1].__cause__ is not None and len(chain) < 8:
    chain.append(chain[-1].__cause__)
  for cause in reversed(chain):  # the root cause says most: "No such file or directory", say
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    text = _INTERNALS.sub("", lines[0]).rstrip(" .:;,") if lines else ""
    if isinstance(cause, OSError) and cause.strerror:
      text = f"{cause.strerror}: {cause.filename}" if cause.filename else cause.strerror
    if text:
      text = text if len(text) <= 200 else text[:197] + "..."
      return f"{type(cause).__name__}: {text}"
  return type(error).__name__


def _check_restored(directory, step: int, state, loop) -> dict[str, Any]:
  """`loop` checked (`loop_problem`), and `state` against the digest saved in it; the loop
  is returned without the digest.

  A checkpoint saved before digests were kept is restored unchecked, with a warning.

  Raises:
    CheckpointError: the loop or the arrays are damaged; the message names the checkpoint.
  """
  problem = loop_problem(loop, _members(state))
  if problem:
    raise _damaged(directory, step, problem)
  loop = dict(loop)
  saved = loop.pop(STATE_DIGEST, None)
  if saved is None:
    logging.warning(
      "checkpoint %d of %s was saved without a digest of its arrays (by an earlier version): "
      "its arrays are restored unchecked",
      step,
      directory,
    )
  elif state_digest(state) != saved:
    raise _damaged(directory, step, "its arrays do not match the digest saved with them")
  return loop


def _restore_step(manager: ocp.CheckpointManager, step: int, state_args, what: str):
  """Restores checkpoint `step`; whatever Orbax raises becomes one CheckpointError line."""
  try:
    with _quiet_if_it_fails():
      return manager.restore(
        step, args=ocp.args.Composite(state=state_args, loop=ocp.args.JsonRestore())
      )
  except Exception as e:  # Orbax raises many kinds for a bad or foreign checkpoint.
    directory = os.path.join(os.fspath(manager.directory), str(step))
    raise CheckpointError(f"checkpoint {directory} cannot be {what} ({_reason(e)})") from None


class _ReaderNotices(python_logging.Filter):
  """Drops Orbax's warnings that a manager made to read a directory will only read it, and that
  a step's `STEP_METADATA` is missing: a live run deleted it after it was listed."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    message = record.getMessage()
    return not message.startswith(("Given directory is read only", "Metadata file does not exist"))


@contextlib.contextmanager
def _reader_notices_dropped():
  notices = _ReaderNotices()
  absl_logger = python_logging.getLogger("absl")
  absl_logger.addFilter(notices)
  try:
    yield
  finally:
    absl_logger.removeFilter(notices)


def _reader(directory: str) -> tuple[ocp.CheckpointManager, GoodSteps]:
  """A manager that only reads `directory`'s good steps, and its listing (`GoodSteps`, whose
  `damaged` it does not show); made without Orbax's warnings that it will only read."""
  listing = GoodSteps()
  options = ocp.CheckpointManagerOptions(
    read_only=True, save_interval_steps=0, create=False, step_name_format=listing
  )
  with _reader_notices_dropped():
    return ocp.CheckpointManager(directory, options=options), listing


def read_loop(workdir: str) -> tuple[int, dict[str, Any]] | None:
  """The newest good checkpoint's step and loop counters, without its arrays; None without one.

  A checkpoint whose loop cannot be read, or fails `loop_problem` or `step_problem`,
  is passed over.
  """
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
  if not has_checkpoints(workdir):
    return None
  reader, listing = _reader(directory)
  damaged = {s: _damaged_checkpoint(directory, s, p) for s, p in listing.damaged.items()}
  try:
    for step in sorted({*reader.all_steps(), *damaged}, reverse=True):
      if step in damaged:
        logging.warning("%s: passed over for an older checkpoint", damaged[step])
        continue
      try:
        restored = reader.restore(step, args=ocp.args.Composite(loop=ocp.args.JsonRestore()))
      except Exception:  # An unreadable checkpoint: the one before it may do.
        continue
      problem = loop_problem(restored.loop)
      if problem:
        logging.warning(
          "%s: passed over for an older checkpoint", _damaged(directory, step, problem)
        )
        continue
      return step, {k: v for k, v in restored.loop.items() if k != STATE_DIGEST}
  finally:
    reader.close()
  return None


def has_checkpoints(workdir: str) -> bool:
  """Whether `workdir/checkpoints/` holds a step folder, without opening any."""
  directory = os.path.join(workdir, CHECKPOINTS)
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def _check_fits(manager: ocp.CheckpointManager, step: int, abstract) -> bool:
  """Refuses a checkpoint whose arrays differ from `abstract`'s, before any is read.

  Orbax reads a checkpoint's arrays concurrently: when one of them does not
  fit, the restore raises while the other reads are still in flight, and those
  print "Exception ignored in <coroutine ...>" or "Event loop is closed"
  tracebacks later, as Python exits, after the run's one-line error. The
  checkpoint's metadata says every array's shape without reading any.

  Returns:
    Whether the metadata could be read (a checkpoint without it is incomplete).
  """
  directory = manager.directory / str(step)
  try:
    metadata = ocp.StandardCheckpointHandler().metadata(directory / "state")
    saved = ocp.tree.to_flat_dict(metadata.tree)
  except Exception:  # Unreadable metadata: an incomplete checkpoint.
    return False
  wanted = ocp.tree.to_flat_dict(abstract)
  problems = []
  for key in sorted(set(saved) | set(wanted), key=lambda k: (k[0] != "params", k)):
    name = ".".join(key)
    if key not in saved:
      problems.append(f"{name} is not in the checkpoint")
    elif key not in wanted:
      problems.append(f"{name} is in the checkpoint, not in this model")
    elif np.shape(saved[key]) != np.shape(wanted[key]):
      problems.append(
        f"{name} has shape {np.shape(saved[key])} there, {np.shape(wanted[key])} here"
      )
  if problems:
    more = f", and {len(problems) - 1} more" if len(problems) > 1 else ""
    raise CheckpointError(
      f"checkpoint {directory} cannot be restored into this model ({problems[0]}{more}). "
      f"Use a new --workdir, or delete {manager.directory} to start fresh."
    )
  return True


def restore(manager: ocp.CheckpointManager, state, loop: dict[str, Any]):
  """The newest good checkpoint's (state, loop), shaped like `state`; both as given if none.

  A checkpoint that cannot be read (an empty or incomplete step folder), or
  that is damaged (its files, `step_problem`; its loop's fields, `loop_problem`;
  or its arrays against their digest, `state_digest`), is passed over for the one before it, and
  renamed `<step>.unreadable-<time>` once an older one has been restored, so
  that the run can save that step again; nothing is deleted. The run holds
  its workdir's lock: no other process writes there.

  Raises:
    CheckpointError: a checkpoint of another model (nothing is read), or none
      of the checkpoints can be read and checked; the message names the
      newest, what is wrong with it, and how to start fresh.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  unreadable = []
  damaged = damaged_steps(manager.directory)  # not listed by Orbax (see `manager`)
  for step in sorted({*manager.all_steps(), *damaged}, reverse=True):
    if step in damaged:
      unreadable.append((step, _damaged_checkpoint(manager.directory, step, damaged[step])))
      continue
    if not _check_fits(manager, step, abstract):  # raises for another model's checkpoint
      unreadable.append((step, f"checkpoint {manager.directory / str(step)} is incomplete"))
      continue
    try:
      restored = _restore_step(manager, step, ocp.args.StandardRestore(abstract), "restored")
      restored_loop = _check_restored(manager.directory, step, restored.state, restored.loop)
    except CheckpointError as e:
      unreadable.append((step, e))
      continue
    for bad, error in unreadable:
      moved = f"{manager.directory / str(bad)}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
      logging.warning("%s: passed over for an older checkpoint, and kept as %s", error, moved)
      os.rename(manager.directory / str(bad), moved)
    if unreadable:
      manager.reload()
    logging.info("Resumed from checkpoint at step %d", step)
    return restored.state, restored_loop
  if unreadable:
    raise CheckpointError(f"{unreadable[0][1]}. {_none_readable(manager.directory)}")
  return state, loop


def save(manager: ocp.CheckpointManager, state, loop: dict[str, Any]) -> None:
  """Saves the state, unless this step is saved already; non-finite parameters never are.

  `state` may be stacked along a leading axis (seeds trained together), all at
  one step. `loop` is saved beside it with the digest of its arrays added
  (`STATE_DIGEST`), which every restore checks.

  Raises:
    DivergedError: a parameter is NaN or infinite; the last checkpoint is kept.
    WorkdirError: the checkpoint cannot be written (a full disk, say); the
      last complete checkpoint is kept, and the same command resumes from it.
      Or a symbolic link stands where Orbax deletes an old step (`check_links`).
  """
  step = int(np.ravel(state.step)[0])
  if manager.latest_step() == step:
    return
  if not all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state.params)):
    raise DivergedError(
      f"the parameters stopped being finite by step {step}; nothing was saved, and the "
      f"checkpoint of step {manager.latest_step()} is kept. Try a lower optimizer.learning_rate."
    )
  loop = dict(loop) | {STATE_DIGEST: state_digest(state)}
  args = ocp.args.Composite(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop))
  try:
    with logs.muted("/orbax/"), _quiet_if_it_fails():
      manager.save(step, args=args)
  except Exception as e:  # Orbax wraps the OSError of a full disk in several kinds.
    if isinstance(manager.directory, str | os.PathLike):
      check_links(os.fspath(manager.directory))  # a link put there since: not a full disk
    latest = manager.latest_step()
    kept = f"the checkpoint of step {latest} is kept" if latest is not None else "none was saved"
    raise WorkdirError(
      f"cannot write the checkpoint of step {step} in {manager.directory} "
      f"({files.reason(e)}); {kept}: {files.remedy(e)} to resume"
    ) from None


@contextlib.contextmanager
def _quiet_if_it_fails():
  """Keeps the reports of the work that a failed Orbax call abandons out of the output.

  When one array of a checkpoint fails to be written or read, Orbax raises and
  closes its event loop while TensorStore still completes the other arrays:
  each completion then finds the loop closed ("Exception ignored ... Event loop
  is closed", with a traceback), and the abandoned reads and tasks are
  reported when they are collected ("Exception ignored in: <coroutine ...>",
  "Future exception was never retrieved", or "RuntimeWarning: coroutine ...
  was never awaited" and its "Enable tracemalloc" line). The one line that
  says what failed is all a user needs. While the block runs, and from its
  first failure on, this process drops those reports, and only those.
  """
  previous = sys.unraisablehook

  def hook(unraisable) -> None:
    error, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
    if not (closed_loop or (code and "/orbax/" in code.co_filename)):  # an abandoned read
      previous(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  except BaseException:
    python_logging.getLogger("asyncio").addFilter(_AbandonedTasks())
    warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)
    raise
  sys.unraisablehook = previous


class _AbandonedTasks(python_logging.Filter):
  def filter(self, record: python_logging.LogRecord) -> bool:
    return "exception was never retrieved" not in str(record.msg)  # Task, Future, _Gathering...


def seed_dir(group_dir: str, seed: int) -> str:
  """The folder of one seed of a group trained together."""
  return os.path.join(group_dir, f"seed_{seed}")


def _checkpoint_dir(workdir: str) -> tuple[str, int | None]:
  """The checkpoints of a run; for one seed of a group, the group's and the seed."""
  own = os.path.join(workdir, CHECKPOINTS)
  if os.path.isdir(own):
    return own, None
  seed = workdir_lib.SEED_DIR.fullmatch(os.path.basename(os.path.normpath(workdir)))
  group = os.path.join(os.path.dirname(os.path.normpath(workdir)), CHECKPOINTS)
  if seed and os.path.isdir(group):
    return group, int(seed[1])
  raise CheckpointError(f"{workdir} has no {CHECKPOINTS}/ (nor its group's): train it first")


def _group_seeds(group_dir: str, loop: Mapping[str, Any]) -> list[int]:
  """The seeds of a group in the order they are stacked."""
  if "seeds" in loop:
    return [int(s) for s in loop["seeds"]]
  # Groups saved before the order was recorded stacked their seeds in sweep order, ascending.
  names = [workdir_lib.SEED_DIR.fullmatch(n) for n in os.listdir(group_dir)]
  return sorted(int(m[1]) for m in names if m)


def restore_params(workdir: str, which: str = "latest") -> tuple[Any, int]:
  """The parameters and step of a workdir's newest good checkpoint, or of its best epoch's.

  `workdir` is a `convnet.main` workdir, or one `seed_<s>/` of a group, whose
  parameters are taken out of the group's stacked checkpoint. `which` is
  "latest" or "best": the epoch of best validation accuracy, whose test
  accuracy `train_and_evaluate` reports as `test_accuracy_at_best_validation`.

  Each checkpoint read is checked as `restore` checks it. For "latest", one
  that cannot be read or is damaged is named in a warning and passed over for
  the one before it. A run may be training in `workdir` meanwhile, saving
  checkpoints and deleting old ones: when the checkpoint being read is
  replaced (a newer one, or a new best epoch), the newest is read instead,
  once. This only reads: nothing in the workdir is renamed or written.

  Raises:
    CheckpointError: there is no checkpoint, none can be read and checked, the
      best epoch's was not kept or is damaged, or the seed is not in its group.
  """
  if which not in WHICH:
    raise CheckpointError(f"checkpoint={which!r} is not one of {', '.join(WHICH)}")
  directory, seed = _checkpoint_dir(os.path.abspath(workdir))  # Orbax takes absolute paths only
  state, loop, step = _read_newest_good(workdir, directory, which)
  params = state["params"]
  if seed is not None:
    seeds = _group_seeds(os.path.dirname(directory), loop)
    if seed not in seeds:
      raise CheckpointError(f"seed {seed} is not one of the seeds {seeds} saved in {directory}")
    params = jax.tree.map(lambda x: x[seeds.index(seed)], params)
  return params, step


def _candidates(workdir: str, directory: str, which: str, listed: Sequence[int]) -> list[int]:
  """The steps `restore_params` may read, the first preferred: all, newest first, or the best."""
  if not listed:
    raise CheckpointError(f"{directory} holds no checkpoint: train the run first")
  if which == "latest":
    return sorted(listed, reverse=True)
  best = epochs.best_record(workdir_lib.read_metrics(workdir))
  if best is None:
    raise CheckpointError(f"{workdir} has no epoch record yet: there is no best epoch")
  step = int(best["step"])
  if step not in listed:
    raise CheckpointError(
      f"the checkpoint of the best epoch ({best['epoch']}, step {step}) is not in "
      f"{directory}: it was not kept (a run of a version before best checkpoints were "
      "kept) or was removed; use the latest"
    )
  return [step]


def _identity(step_dir: str) -> tuple[int, int] | None:
  """A step folder's inode and modification time, or None where it is gone: what changes
  when a live run deletes or replaces it."""
  try:
    info = os.lstat(step_dir)
  except OSError:
    return None
  return info.st_ino, info.st_mtime_ns


def _listed(reader, listing: GoodSteps, workdir: str, directory: str, which: str) -> list[int]:
  """`_candidates` of what `reader` lists now, damaged steps included (they are named)."""
  return _candidates(workdir, directory, which, sorted({*reader.all_steps(), *listing.damaged}))


def _read_newest_good(workdir: str, directory: str, which: str):
  """(state, loop, step) of the first `_candidates` step that reads and checks; see
  `restore_params`.

  A step that fails to read while a live run changes the checkpoints (the listing
  differs after the failure, or the step folder is gone or changed) was replaced
  while it was read, not damaged: the newest is read again, up to `_REREADS` times,
  then such a step is passed over as the others are.
  """
  for attempt in range(_REREADS + 1):
    reader, listing = _reader(directory)
    try:
      candidates = _listed(reader, listing, workdir, directory, which)
      failed, raced = [], False
      for step in candidates:
        if step in listing.damaged:
          failed.append(_damaged_checkpoint(directory, step, listing.damaged[step]))
          continue
        step_dir = os.path.join(directory, str(step))
        before = _identity(step_dir)
        try:
          restored = _restore_step(reader, step, ocp.args.StandardRestore(), "read")
          loop = _check_restored(directory, step, restored.state, restored.loop)
        except CheckpointError as error:
          with _reader_notices_dropped():
            reader.reload()
          try:
            raced = _listed(reader, listing, workdir, directory, which) != candidates
          except CheckpointError:  # none is left now
            raced = True
          raced = raced or before is None or _identity(step_dir) != before
          replaced = f"checkpoint {step} of {directory} was replaced while it was read (a live run)"
          if raced and attempt < _REREADS:
            logging.warning("%s: reading the newest again", replaced)
            break
          failed.append(CheckpointError(replaced) if raced else error)
          raced = False
          continue
        for error in failed:
          logging.warning("%s: passed over for an older checkpoint (left as it is)", error)
        return restored.state, loop, step
    finally:
      reader.close()
    if not raced:
      break
  more = f". No checkpoint in {directory} can be read" if len(candidates) > 1 else ""
  raise CheckpointError(f"{failed[0]}{more}")
