"""Files written so that a stop never leaves half of one: atomic writes, publishing, folders.

Every file the project writes as a whole (a config, a sweep record, a report's
table and figures, an export's files) goes through `atomic_open`: it is written
under a temporary name beside its target, flushed, and renamed, so a reader sees
the old file or the new one, never a mix. A write that fails (a full disk, a
read-only mount, something in the way) raises `WorkdirError` naming the path and
what to do (`remedy`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

import numpy as np

from convnet.errors import FileFormatError, WorkdirError, WorkdirInUseError


@contextlib.contextmanager
def _temporary(path: str, mode: str) -> Iterator[tuple[IO, str]]:
  """(file, its path): a new file beside `path`, on disk when the block ends; gone if it raises.

  Its name marks it as a writer's temporary file (`remove_stale_files` clears those a killed
  writer left).
  """
  folder, name = os.path.split(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.{writer_id()}.", suffix=".tmp")
  try:
    os.fchmod(fd, 0o666 & ~_umask())  # what open() gives a new file; mkstemp's is 0600
    with os.fdopen(fd, mode) as f:
      yield f, tmp
      f.flush()
      os.fsync(f.fileno())
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
  """Opens a temporary file beside `path`, and renames it to `path` when the block ends.

  `mode` is "w" (text) or "wb" (bytes). The data is flushed to disk before the
  rename. If the block raises, the temporary file is removed and `path` is left
  as it was.

  Raises:
    WorkdirError: something other than a file stands at `path` (a symbolic
      link, a folder, a named pipe: nothing is written, and what a link points
      to is left as it was), or the file cannot be written.
  """
  check_target(path)
  try:
    with _temporary(path, mode) as (f, tmp):
      yield f
    try:
      os.replace(tmp, path)
    except OSError:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
      raise
  except OSError as e:
    raise WorkdirError(f"cannot write {path} ({reason(e)}); {remedy(e)}") from None


def check_target(path: str) -> None:
  """Refuses to write `path` where something other than a regular file (or nothing) stands there.

  A symbolic link where the project writes its own file would lead the write
  out of the project's folders, so it is refused, never followed nor replaced;
  so are a folder, a named pipe, a socket and a device.

  Raises:
    WorkdirError: naming `path`, what stands there (and where a link points),
      and what to do.
  """
  try:
    info = os.lstat(path)
  except FileNotFoundError:
    return
  except OSError:
    return  # A folder of its path that cannot be searched: the write itself says why.
  if not stat.S_ISREG(info.st_mode):
    raise WorkdirError(f"{path} is {_found(path, info.st_mode)}, {_WHERE_A_FILE_GOES}")


def prepare_folder(folder: str, names: Sequence[str], what: str = "--out") -> str:
  """Makes `folder` for a set of files written as one piece of work (a report, its figures).

  Before any of them is written: every target in `names` is checked
  (`check_target`), so that a link or a folder at the last one cannot leave
  the first ones new beside old ones, and the temporary files that killed
  writers left in `folder` are removed (`remove_stale_files`). Returns the
  folder as an absolute path.

  Raises:
    WorkdirError: the folder cannot be made (`make_dir`), or a target is not a
      regular file; nothing is written.
  """
  folder = make_dir(folder, what)
  for name in names:
    check_target(os.path.join(folder, name))
  remove_stale_files(folder)
  return folder


_WHERE_A_FILE_GOES = "where a file is written: move it away, or write elsewhere"


def _found(path: str, mode: int) -> str:
  """What stands at `path` (of `lstat` mode `mode`), in words: "a symbolic link to X", say."""
  if stat.S_ISLNK(mode):
    try:
      return f"a symbolic link (to {os.readlink(path)}, which is left as it is)"
    except OSError:
      return "a symbolic link"
  return _kind(mode)


def open_append(path: str, readable: bool = False) -> IO[str]:
  """Opens the project's own text file `path` for appending, made if missing; never via a link.

  The file is opened with `O_NOFOLLOW` (a symbolic link at `path` is refused,
  not followed, so nothing is appended to a file elsewhere) and without
  blocking (a named pipe cannot hang the open), and checked with `fstat` on the
  same descriptor. With `readable`, the file may be read too (as by "a+").

  Raises:
    WorkdirError: something other than a regular file stands at `path`; the
      message names it, what it is, and what to do.
    OSError: it cannot be opened (no permission, a read-only folder, no space).
  """
  flags = os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
  flags |= os.O_RDWR if readable else os.O_WRONLY
  try:
    fd = os.open(path, flags, 0o666)
  except OSError as e:
    if e.errno in (errno.ELOOP, errno.EMLINK, errno.EISDIR, errno.ENXIO, errno.ENODEV):
      check_target(path)  # a link, a folder, a pipe with no reader, a device: say which
    raise
  try:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
      raise WorkdirError(f"{path} is {_kind(info.st_mode)}, {_WHERE_A_FILE_GOES}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a+" if readable else "a")
  except BaseException:
    os.close(fd)
    raise


def remedy(error: BaseException) -> str:
  """What to do about a write that failed with `error`.

  Make the folder writable, move what stands in the file's place (a folder of
  the file's name, a file where a folder of its path should be), or make room.
  """
  why = reason(error)
  denied = {os.strerror(c) for c in (errno.EROFS, errno.EACCES, errno.EPERM)}
  in_the_way = {os.strerror(c) for c in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST)}
  if why in denied:
    fix = "make the folder writable"
  elif why in in_the_way:
    fix = "move what stands at that path"
  else:
    fix = "free some space"
  return f"{fix}, then run the same command again"


def writer_id() -> str:
  """This process, as the names of its temporary files give it: "host-pid"."""
  return f"{socket.gethostname()}-{os.getpid()}"


def remove_stale_files(folder: str) -> None:
  """Removes the temporary files that dead processes of this host left in `folder`.

  `atomic_open` names its temporary files `.NAME.HOST-PID.XXXX.tmp`; a process
  killed while writing leaves one behind. Files of live processes, and of other
  hosts, are left alone.
  """
  host = socket.gethostname()
  with contextlib.suppress(OSError):
    for name in os.listdir(folder):
      match = _TEMPORARY.fullmatch(name)
      if match and match["host"] == host and not _alive(int(match["pid"])):
        with contextlib.suppress(OSError):
          os.unlink(os.path.join(folder, name))


_TEMPORARY = re.compile(r"\..+\.(?P<host>[^.]+)-(?P<pid>\d+)\.[^.]+\.tmp")


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's live process.
    return True
  return True


def reason(error: BaseException) -> str:
  """Why a write failed, in a few words: the OSError inside `error`, or its first line."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.strerror:
      return seen.strerror
    seen = seen.__cause__ or seen.__context__
  text = str(error).splitlines()[0][:200] if str(error) else ""
  for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EFBIG):
    if os.strerror(code) in str(error):
      return os.strerror(code)
  return f"{type(error).__name__}: {text}"


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def check_dir(path: str, what: str = "--workdir") -> None:
  """What `make_dir` would refuse, found without making anything: an empty name, or a file
  where `path` or one of its parents must be a folder.

  Raises:
    WorkdirError: naming `what` and the path.
  """
  if not str(path).strip():
    raise WorkdirError(f"{what} is empty: name a folder (it is made if it is missing)")
  path = os.path.abspath(path)
  for folder in [path, *reversed(_parents(path))]:
    if os.path.exists(folder) and not os.path.isdir(folder):
      raise WorkdirError(f"{what}={path}: {folder} is a file, not a folder; name another")


def _parents(path: str) -> list[str]:
  parents = []
  while (parent := os.path.dirname(path)) != path:
    parents.append(parent)
    path = parent
  return parents


def make_dir(path: str, what: str = "--workdir") -> str:
  """Makes the folder `path` (and its parents) if it is missing; returns it as an absolute path.

  Raises:
    WorkdirError: a file stands where a folder must be, or the folder cannot
      be made; `what` names the flag or setting that gave `path`.
  """
  if not str(path).strip():
    raise WorkdirError(f"{what} is empty: name a folder (it is made if it is missing)")
  path = os.path.abspath(path)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    reason = e.strerror or type(e).__name__
    raise WorkdirError(f"{what}={path}: cannot make this folder ({reason}); name another") from None
  return path


@contextlib.contextmanager
def folder_lock(folder: str, what: str) -> Iterator[None]:
  """Holds an `flock` on the folder itself while a writer publishes into it; leaves no file.

  Raises:
    WorkdirInUseError: another process holds it; `what` names the flag that gave `folder`.
  """
  fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirInUseError(
        f"{what}={folder} is being written by another process; wait for it to end, or use "
        f"another {what}"
      ) from None
    yield
  finally:
    os.close(fd)  # which drops the lock


def publish(sources: Mapping[str, str], folder: str, last: Sequence[str] = ()) -> None:
  """Copies files into `folder` as one: every copy is written first, then all are renamed.

  `sources` maps each name in `folder` to the file it copies. Each copy is
  written and flushed beside its target under a temporary name; only when all
  are written are they renamed over their targets, the names in `last` (a
  file that names the others, such as TF.js's model.json) after the rest.
  Hold `folder_lock` around it, so that no other writer's files mix in.

  Raises:
    WorkdirError: a target is a folder, a symbolic link or anything else but
      a file (see `check_target`; nothing is written), or a copy cannot be
      written (the temporary copies are removed, and `folder` is left as it
      was).
  """
  names = sorted(sources, key=lambda name: name in last)
  for name in names:
    check_target(os.path.join(folder, name))
  written = []
  try:
    for name in names:
      with _temporary(os.path.join(folder, name), "wb") as (g, tmp), open(sources[name], "rb") as f:
        shutil.copyfileobj(f, g)
      written.append(tmp)
  except BaseException as e:
    for tmp in written:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    if isinstance(e, OSError):
      raise WorkdirError(f"cannot write in {folder} ({reason(e)}); {remedy(e)}") from None
    raise
  for name, tmp in zip(names, written, strict=True):
    os.replace(tmp, os.path.join(folder, name))


def save_figure(fig, path: str, dpi: int) -> str:
  """Saves a Matplotlib figure as a PNG at `path` atomically (see `atomic_open`); returns `path`.

  A signal or a full disk while it is written leaves the previous file whole.
  """
  with atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=dpi)
  return path


def json_text(value: Any) -> str:
  """`value` as indented JSON that any reader takes: NaN and infinities as null, NumPy numbers
  and arrays as Python's numbers and lists."""

  def clean(v):
    if isinstance(v, Mapping):
      return {k: clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
      return [clean(x) for x in v]
    if isinstance(v, float | np.floating):
      return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
      return int(v)
    return v

  return json.dumps(clean(value), indent=2, allow_nan=False) + "\n"


def atomic_write(path: str, text: str) -> None:
  """Writes `text` to `path` atomically (see `atomic_open`)."""
  with atomic_open(path) as f:
    f.write(text)


# ----------------------------------------------------------------------------
# Reading


MAX_JSON_BYTES = 64 * 2**20  # the largest JSON file read (a config, a record, a manifest)
MAX_JSON_DEPTH = 64  # the deepest nesting of a JSON value the project reads


def read_text(path: str, max_bytes: int | None = None) -> str:
  """The text of the regular file `path`; a FIFO, a device or a folder is refused, not read.

  The file is opened without blocking (a FIFO with no writer would hang a plain
  `open`), then checked with `fstat` on the same descriptor, so what is read is
  what was checked.

  Raises:
    FileNotFoundError: `path` is missing (callers name what it should be).
    FileFormatError: `path` is not a regular file, is larger than `max_bytes`,
      or is not UTF-8 text; the message names the path and what was found
      (callers add what to do).
    OSError: it cannot be read (permissions, I/O).
  """
  fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
  try:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
      raise FileFormatError(f"{path} is {_kind(info.st_mode)}, not a file")
    if max_bytes is not None and info.st_size > max_bytes:
      raise FileFormatError(
        f"{path} holds {info.st_size:,} bytes, more than the {max_bytes:,} a file of its kind "
        "may hold"
      )
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb", closefd=False) as f:
      data = f.read()
  finally:
    os.close(fd)
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise FileFormatError(f"{path} is not UTF-8 text (byte {e.start})") from None


def _kind(mode: int) -> str:
  kinds = {
    stat.S_ISDIR: "a folder",
    stat.S_ISFIFO: "a named pipe (FIFO)",
    stat.S_ISSOCK: "a socket",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
  }
  return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def loads_json(text: str, source: str) -> Any:
  """`json.loads(text)`, refusing nesting deeper than `MAX_JSON_DEPTH` before it is parsed.

  Python's parser recurses once per level, so 200,000 nested brackets raise a
  RecursionError deep inside it; the depth is counted first, outside strings.

  Raises:
    FileFormatError: `text` is not JSON, or is nested too deep; the message
      names `source` (a path, or `path:line`) and where.
  """
  depth = 0
  in_string = escaped = False
  # Fewer brackets than the limit cannot nest past it: most files skip the count by character.
  few = text.count("[") + text.count("{") <= MAX_JSON_DEPTH
  for char in "" if few else text:
    if in_string:
      if escaped:
        escaped = False
      elif char == "\\":
        escaped = True
      elif char == '"':
        in_string = False
    elif char == '"':
      in_string = True
    elif char in "[{":
      depth += 1
      if depth > MAX_JSON_DEPTH:
        raise FileFormatError(
          f"{source} nests JSON more than {MAX_JSON_DEPTH} levels deep: it is not one of this "
          "project's files"
        )
    elif char in "]}":
      depth -= 1
  try:
    return json.loads(text)
  except ValueError as e:  # JSONDecodeError, and ValueError for numbers of too many digits
    raise FileFormatError(f"{source} is not JSON ({e})") from None


def read_json(path: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
  """The JSON value in the regular file `path` (see `read_text` and `loads_json`).

  Raises:
    FileNotFoundError: `path` is missing.
    FileFormatError: not a regular file, too large, not UTF-8, not JSON, or
      nested deeper than `MAX_JSON_DEPTH`; the message names the path.
    OSError: it cannot be read.
  """
  return loads_json(read_text(path, max_bytes), path)
