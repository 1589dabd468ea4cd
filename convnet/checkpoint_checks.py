"""What a checkpoint must be before it is trusted; checked before Orbax opens it, and on restore.

- A step folder (`step_problem`): only folders and regular files (a named pipe
  would hang Orbax, a link lead it elsewhere), and the JSON files Orbax parses,
  whole and of the types Orbax reads (`_CHECKPOINT_METADATA`, the state's
  metadata). `GoodSteps` gives Orbax's manager only the step folders that pass.
- The loop's metadata (`loop_problem`): each field the training loop reads, of
  its type and range.
- The arrays (`state_digest`): a BLAKE2b digest of every leaf's path, dtype,
  shape and bytes, saved in the loop's metadata (`STATE_DIGEST`) and compared
  on every restore.
- Links where Orbax writes or deletes (`check_links`).

`convnet.checkpoints` saves and restores; a checkpoint that fails here is
damaged, and is passed over there for the newest good one.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from convnet import files
from convnet.errors import FileFormatError, WorkdirError

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
      return f"{name}/{STEP_METADATA} cannot be read by Orbax ({reason(e)})"
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


def host_array(x) -> np.ndarray:
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
    array = host_array(leaf)
    digest.update(f"{'.'.join(map(str, path))} {array.dtype.name} {array.shape}\n".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def num_members(state) -> int:
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
  (seconds, >= 0) and "constants" (see `run_setup.run_constants`) are required;
  "epoch_sums", "window_losses", "seeds", "members", "result", "diverged", the sums of earlier
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
    ("members", False, lambda v: _names_fit(v, members), f"a list of {n}different names"),
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


def _names_fit(value, members: int | None) -> bool:
  names = isinstance(value, list) and all(isinstance(s, str) and s for s in value)
  return names and len(set(value)) == len(value) and members in (None, len(value))


def _shown(value) -> str:
  try:
    text = json.dumps(value)
  except (TypeError, ValueError, RecursionError):
    text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _field_problem(field: str, value, wanted: str) -> str:
  return f"field {field} of its loop/metadata is {_shown(value)}, not {wanted}"


# What ends a line of an error before it turns into Python's or TensorStore's internals.
_INTERNALS = re.compile(
  r"\s*(?:See full TensorStore details|\[source locations=|\[tensorstore_spec="
  r"|<(?:bound method|function|built-in|class|module|coroutine) |\S+ object at 0x).*"
)


def reason(error: BaseException) -> str:
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
