"""The "idx" source: a folder holding the four standard IDX files, gzipped or not.

IDX is the format MNIST and its kin (Fashion-MNIST, KMNIST) ship in: a zero
word whose low bytes give the element type and rank, the size of each
dimension, then the data, big-endian. Every file is checked whole as it is
read; a fault is a DataError naming the file.

A header is not trusted with memory: the byte count its shape promises
(reckoned in Python integers, which do not overflow) is checked against the
file's size before anything is read, and no more than it promises is ever
read, so a damaged or hostile header (a shape of 2**96 bytes, a small gzip
that expands to gigabytes) is refused by name, at once.

A folder may hold a file under more than one of its names (plain and gzipped,
say, after `gunzip --keep`): every copy is read, and copies that disagree stop
the run, naming both, rather than one being chosen silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import math
import os
import stat
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from convnet import sources
from convnet.errors import ConfigError, DataError

# The IDX element types, by the type code in an IDX file's third byte.
_DTYPES = {
  0x08: np.dtype("u1"),
  0x09: np.dtype("i1"),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}
# Deflate, gzip's compression, expands data at most 1032-fold: a gzipped file whose header
# promises more bytes than that is lying, and is refused before it is decompressed.
_MAX_GZIP_EXPANSION = 1032
# No model here takes an example this large (a 46341 x 46341 image); a header that gives one is
# damaged. Files that hold data are held to what they hold; this bounds one that holds none.
_MAX_EXAMPLE_BYTES = 2**31
# Files are read this many bytes at a time, straight into the array their header promises.
_CHUNK_BYTES = 2**20
# How many bytes after the data are counted (and decompressed, at most) before a file is refused.
_MAX_EXTRA_BYTES = 2**16
# What to do about a file whose header and data disagree.
_REMEDY = "the file is damaged or not IDX: download or write it again"
# What to do about two copies of one file that disagree.
_REMEDY_COPIES = "keep the right one and remove the other"
# The four files of a dataset, by role, named as in MNIST's distribution.
IDX_FILES = {
  "train_images": "train-images-idx3-ubyte",
  "train_labels": "train-labels-idx1-ubyte",
  "test_images": "t10k-images-idx3-ubyte",
  "test_labels": "t10k-labels-idx1-ubyte",
}
# Class names for IDX files of a dataset that `data.name` names (IDX files hold only numbers).
CLASS_NAMES_BY_DATASET = {
  "fashion_mnist": (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
  ),
}


def load(data_config: Mapping[str, Any]) -> sources.RawData:
  """The four IDX files in `data.idx_dir` (see `load_idx_dir`).

  The classes are named after `data.name`'s (CLASS_NAMES_BY_DATASET) when it
  has as many as the files, else "0", "1", ...

  Raises:
    ConfigError: `data.idx_dir` is empty.
    DataError: a file is missing or bad; the message names it.
  """
  raw = load_idx_dir(_idx_dir(data_config))
  names = CLASS_NAMES_BY_DATASET.get(data_config["name"], ())
  if len(names) == raw.num_classes:
    raw = dataclasses.replace(raw, class_names=names)
  return raw


def input_spec(data_config: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
  """Input shape and number of classes of `data.idx_dir`, as `load` would give them.

  Read from the training images' header (checked against the file's size, see
  `read_idx_header`) and the training labels alone, which are checked as
  `load` checks them; copies of these two under other names (`check_copies`)
  must agree, the images' in their headers.

  Raises:
    ConfigError: `data.idx_dir` is empty.
    DataError: a file is missing or bad; the message names it.
  """
  copies = find_idx_copies(_idx_dir(data_config))
  paths = {key: found[0] for key, found in copies.items()}
  dtype, shape = read_idx_header(paths["train_images"])
  _check_images(paths["train_images"], dtype, shape)
  if shape[0] == 0:
    raise DataError(f"{paths['train_images']}: the train split is empty")
  check_copies(copies["train_images"])
  labels = read_idx(paths["train_labels"])
  check_copies(copies["train_labels"], labels)
  _check_label_file(paths["train_labels"], labels)
  num_classes = _num_classes(paths["train_labels"], labels)
  sources.check_labels(labels, num_classes, paths["train_labels"], training=True)
  return (*shape[1:3], shape[3] if len(shape) == 4 else 1), num_classes


def title(data_config: Mapping[str, Any], sizes: bool = False) -> str:
  """The IDX folder's name ("fashion-mnist"), or "IDX files" when `data.idx_dir` is empty."""
  del sizes
  idx_dir = data_config.get("idx_dir")
  return os.path.basename(os.path.normpath(idx_dir)) if idx_dir else "IDX files"


def _idx_dir(data_config: Mapping[str, Any]) -> str:
  """`data.idx_dir`, which the "idx" source needs set."""
  if not data_config["idx_dir"]:
    raise ConfigError(
      "data.idx_dir is empty: set --config.data.idx_dir=DIR (a folder with the four IDX "
      "files) or the environment variable CONVNET_IDX_DIR"
    )
  return data_config["idx_dir"]


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file (gzipped or not) into an array of the shape and type its header gives.

  The header's promise is checked first (see `read_idx_header`); then exactly
  the bytes it promises are read into the array, and one more than that is
  an error: a gzipped file is never decompressed past its promise.

  Raises:
    DataError: the file is missing, unreadable, not IDX, truncated or too long.
  """
  return _read(os.fspath(path), whole=True)[2]


def read_idx_header(path: str | os.PathLike) -> tuple[np.dtype, tuple[int, ...]]:
  """The element type and shape of an IDX file (gzipped or not), from its header alone.

  The header is believed only if the file can hold what it promises: exactly
  that many bytes of data in a plain file; no more than gzip can expand its
  size to (1032-fold) in a gzipped one. A dimension of 0 after the count, or
  one example of more than 2 GiB, is refused too.

  Raises:
    DataError: the file is missing, unreadable, not IDX, or its header cannot be true.
  """
  dtype, shape, _ = _read(os.fspath(path), whole=False)
  return dtype, shape


def _read(path: str, whole: bool) -> tuple[np.dtype, tuple[int, ...], np.ndarray | None]:
  """The type and shape of an IDX file, checked against its size, and its data if `whole`."""
  gzipped = False
  try:
    # Opened without blocking and checked with fstat: a FIFO would hang a plain open.
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
      info = os.fstat(file.fileno())
      if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: {_not_a_file(info.st_mode)}")
      os.set_blocking(file.fileno(), True)
      size = info.st_size
      gzipped = file.read(2) == b"\x1f\x8b"
      file.seek(0)
      with gzip.GzipFile(fileobj=file) if gzipped else contextlib.nullcontext(file) as f:
        data = f.read(4)
        if len(data) == 4:
          data += f.read(4 * data[3])
        dtype, shape = _parse_header(data, path)
        promised = _check_promise(path, dtype, shape, size, gzipped)
        return dtype, shape, _read_data(f, path, dtype, shape, promised) if whole else None
  except FileNotFoundError:
    raise DataError(f"{path}: no such file") from None
  except (EOFError, OSError, zlib.error) as e:
    if gzipped:
      raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
    raise DataError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def _parse_header(data: bytes, path: str) -> tuple[np.dtype, tuple[int, ...]]:
  """The element type and shape that an IDX file's first bytes declare."""
  if len(data) < 4:
    raise DataError(f"{path}: too short for an IDX file ({len(data)} bytes)")
  zero, type_code, rank = int.from_bytes(data[:2], "big"), data[2], data[3]
  if zero != 0 or type_code not in _DTYPES or rank == 0:
    raise DataError(
      f"{path}: wrong magic number 0x{int.from_bytes(data[:4], 'big'):08x}; an IDX file "
      f"starts with 0x0000, a type code (0x08 for unsigned bytes) and its number of dimensions"
    )
  if len(data) < 4 + 4 * rank:
    raise DataError(f"{path}: truncated header")
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
  return _DTYPES[type_code], shape


def _check_promise(path: str, dtype: np.dtype, shape: tuple[int, ...], size: int, gzipped: bool):
  """The bytes of data that the header of a file of `size` bytes promises, if it can hold them."""
  if 0 in shape[1:]:
    raise DataError(f"{path}: its header gives shape {shape}, with an empty dimension; {_REMEDY}")
  example = math.prod(shape[1:]) * dtype.itemsize
  header = 4 + 4 * len(shape)
  promised = shape[0] * example
  if gzipped and header + promised > _MAX_GZIP_EXPANSION * size:
    raise DataError(
      f"{path}: its header promises {promised} bytes of data for shape {shape}, more than "
      f"{size} gzipped bytes can hold (gzip expands at most {_MAX_GZIP_EXPANSION}-fold); "
      f"{_REMEDY}"
    )
  if not gzipped:
    _check_length(path, shape, promised, size - header)
  if example > _MAX_EXAMPLE_BYTES:
    raise DataError(
      f"{path}: its header gives shape {shape}, {example} bytes an example, more than any "
      f"model here takes ({_MAX_EXAMPLE_BYTES}); {_REMEDY}"
    )
  return promised


def _check_length(
  path: str, shape: tuple[int, ...], promised: int, found: int, more: bool = False
) -> None:
  """Refuses `found` bytes of data where the header promised `promised` (`more`: and more)."""
  if found < promised:
    raise DataError(
      f"{path}: truncated: its header promises {promised} bytes of data for shape {shape}, "
      f"but the file holds {found}; {_REMEDY}"
    )
  if found > promised:
    count = f"{'more than ' if more else ''}{found - promised}"
    raise DataError(f"{path}: {count} unexpected bytes after the data of shape {shape}; {_REMEDY}")


def _read_data(f, path: str, dtype: np.dtype, shape: tuple[int, ...], promised: int) -> np.ndarray:
  """The `promised` bytes after the header, as an array; a byte more or less is an error."""
  buffer = np.empty(promised, np.uint8)
  view, found = memoryview(buffer), 0
  while found < promised:
    count = f.readinto(view[found : found + _CHUNK_BYTES])
    if not count:
      break
    found += count
  # A gzipped file is decompressed no further than this past its promise.
  extra = len(f.read(_MAX_EXTRA_BYTES + 1)) if found == promised else 0
  more = extra > _MAX_EXTRA_BYTES
  _check_length(path, shape, promised, found + min(extra, _MAX_EXTRA_BYTES), more)
  return buffer.view(dtype).reshape(shape)


def find_idx_files(idx_dir: str | os.PathLike) -> dict[str, str]:
  """Paths of the four standard IDX files in a folder, by role (the keys of IDX_FILES).

  A file may be named `train-images-idx3-ubyte` or `train-images.idx3-ubyte`,
  with `.gz` or without; where a folder holds several of these copies, the
  first in that order (see `find_idx_copies`, and `check_copies` for whether
  they agree).

  Raises:
    DataError: the folder or one of the files is missing, or something other
      than a regular file has a file's name.
  """
  return {key: copies[0] for key, copies in find_idx_copies(idx_dir).items()}


def find_idx_copies(idx_dir: str | os.PathLike) -> dict[str, list[str]]:
  """Every copy of each of the four standard IDX files in a folder, by role.

  A role's copies are the names of `find_idx_files` that are present, in its
  order: `train-images-idx3-ubyte`, `train-images-idx3-ubyte.gz`,
  `train-images.idx3-ubyte`, `train-images.idx3-ubyte.gz`.

  Raises:
    DataError: the folder or one of the files is missing, or a folder, FIFO or
      device has a file's name (it is named, not skipped).
  """
  idx_dir = os.fspath(idx_dir)
  if not os.path.isdir(idx_dir):
    raise DataError(f"{idx_dir}: no such folder (data.idx_dir)")
  copies = {}
  for key, stem in IDX_FILES.items():
    prefix, suffix = stem.split("-idx")
    names = [f"{prefix}-idx{suffix}", f"{prefix}.idx{suffix}"]
    candidates = [os.path.join(idx_dir, n + ext) for n in names for ext in ("", ".gz")]
    found = []
    for path in candidates:
      try:
        mode = os.stat(path).st_mode
      except FileNotFoundError:
        continue
      except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
      if not stat.S_ISREG(mode):
        raise DataError(f"{path}: {_not_a_file(mode)}")
      found.append(path)
    if not found:
      raise DataError(f"{idx_dir}: missing {stem} (or {stem}.gz)")
    copies[key] = found
  return copies


def _not_a_file(mode: int) -> str:
  """What a path that should be an IDX file is instead (from its `st_mode`), and what to do."""
  kinds = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
  )
  kind = next((name for test, name in kinds if test(mode)), "not a regular file")
  return f"{kind}, where an IDX file should be; move it away"


def check_copies(paths: list[str], array: np.ndarray | None = None) -> None:
  """Refuses copies of one IDX file (as `find_idx_copies` gives them) that disagree.

  The first copy is compared with each other one: their headers (type and
  shape) always, and their data when `array` (the first copy's, as `read_idx`
  gives it) is given, each other copy then read whole, with `read_idx`'s checks.

  Raises:
    DataError: naming both files and what differs (the type and shape, or how
      many examples, and the first), asking to remove the wrong one.
  """
  first = paths[0]
  dtype, shape = (array.dtype, array.shape) if array is not None else read_idx_header(first)
  for other in paths[1:]:
    other_dtype, other_shape = read_idx_header(other)
    if (other_dtype, other_shape) != (dtype, shape):
      raise DataError(
        f"{first}: disagrees with {other}, another copy of the same file: shape {shape} of "
        f"{dtype.name} against {other_shape} of {other_dtype.name}; {_REMEDY_COPIES}"
      )
    if array is None:
      continue
    other_array = read_idx(other)
    if np.array_equal(array, other_array):
      continue
    differ = np.flatnonzero(
      (array.reshape(len(array), -1) != other_array.reshape(len(other_array), -1)).any(axis=1)
    )
    if len(differ):
      i = int(differ[0])
      what = "label" if array.ndim == 1 else "example"
      detail = f" ({array[i]} against {other_array[i]})" if array.ndim == 1 else ""
      raise DataError(
        f"{first}: disagrees with {other}, another copy of the same file: {len(differ):,} of "
        f"its {len(array):,} {what}s differ, the first at index {i}{detail}; {_REMEDY_COPIES}"
      )


def load_idx_dir(idx_dir: str | os.PathLike, num_classes: int | None = None) -> sources.RawData:
  """Reads the four IDX files of a folder, checking shapes, counts and labels.

  Images come out uint8 (N, height, width, channels), a channel axis added to
  rank-3 files; labels int64 (N,). The dataset is named after the folder. The
  number of classes is `num_classes` if given, else one more than the largest
  training label, which may not exceed the number of training labels.

  Label files must hold integers: one of floats (type 0x0D or 0x0E) is
  refused even when every value is whole, since IDX labels are integers, and
  floats there are another file (a regression target, say) or a damaged one.
  Where the folder holds a file under several names (`find_idx_copies`), every
  copy is read and must hold the same array (`check_copies`).

  Raises:
    DataError: naming the file at fault (both files, for copies that disagree).
  """
  copies = find_idx_copies(idx_dir)
  paths = {key: found[0] for key, found in copies.items()}
  arrays = {key: read_idx(path) for key, path in paths.items()}
  for key, found in copies.items():
    check_copies(found, arrays[key])
  for key in ("train_images", "test_images"):
    _check_images(paths[key], arrays[key].dtype, arrays[key].shape)
    if arrays[key].ndim == 3:
      arrays[key] = arrays[key][..., None]
  for key in ("train_labels", "test_labels"):
    _check_label_file(paths[key], arrays[key])
  if num_classes is None:
    num_classes = _num_classes(paths["train_labels"], arrays["train_labels"])
  raw = sources.RawData(
    name=os.path.basename(os.path.normpath(os.fspath(idx_dir))),
    num_classes=num_classes,
    class_names=tuple(str(i) for i in range(num_classes)),
    **arrays,
  )
  return sources.check_data(raw, paths)


def _check_images(path: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
  """Refuses an image file that is not unsigned bytes of rank 3 or 4."""
  if len(shape) not in (3, 4):
    raise DataError(
      f"{path}: expected images of rank 3 (count, height, width) or 4 "
      f"(count, height, width, channels), found shape {shape}"
    )
  if dtype != np.uint8:
    raise DataError(f"{path}: expected unsigned-byte pixels, found {dtype}")


def _check_label_file(path: str, labels: np.ndarray) -> None:
  """Refuses a label file that is not integers of rank 1."""
  if labels.ndim != 1:
    raise DataError(f"{path}: expected a rank-1 label file, found {labels.shape}")
  if labels.dtype.kind == "f":
    raise DataError(
      f"{path}: labels of type {labels.dtype.name} are not class indices; an IDX label file "
      f"holds integers (type 0x08, unsigned bytes, as MNIST's)"
    )


def _num_classes(path: str, labels: np.ndarray) -> int:
  """One more than the largest of the training `labels`, if there are that many labels."""
  if len(labels) == 0:
    raise DataError(f"{path}: the train split is empty")
  num_classes = int(labels.max()) + 1
  if num_classes > len(labels):
    raise DataError(
      f"{path}: label {num_classes - 1} makes {num_classes} classes, more than its "
      f"{len(labels)} labels; labels must be class indices 0, 1, ..."
    )
  return num_classes


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes an array as an IDX file (gzipped when the name ends in .gz).

  The array's type must be one IDX has: uint8, int8, int16, int32, float32 or
  float64 (a KeyError otherwise).
  """
  codes = {dtype: code for code, dtype in _DTYPES.items()}
  dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
  header = bytes([0, 0, codes[dtype], array.ndim]) + b"".join(
    int(n).to_bytes(4, "big") for n in array.shape
  )
  data = header + np.ascontiguousarray(array, dtype).tobytes()
  opener = gzip.open if os.fspath(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(data)
