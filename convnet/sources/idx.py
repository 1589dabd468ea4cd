"""The "idx" source: a folder holding the four standard IDX files, gzipped or not.

IDX is the format MNIST and its kin (Fashion-MNIST, KMNIST) ship in: a zero
word whose low bytes give the element type and rank, the size of each
dimension, then the data, big-endian. Every file is checked whole as it is
read; a fault is a DataError naming the file.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
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

  Read from the images' header and the training labels alone.

  Raises:
    ConfigError: `data.idx_dir` is empty.
    DataError: a file is missing or bad; the message names it.
  """
  paths = find_idx_files(_idx_dir(data_config))
  dtype, shape = read_idx_header(paths["train_images"])
  if len(shape) not in (3, 4) or dtype != np.uint8:
    raise DataError(
      f"{paths['train_images']}: expected unsigned-byte images of rank 3 (count, height, "
      f"width) or 4 (count, height, width, channels), found {dtype} of shape {shape}"
    )
  labels = read_idx(paths["train_labels"])
  if labels.ndim != 1 or len(labels) == 0:
    raise DataError(f"{paths['train_labels']}: expected a non-empty rank-1 label file")
  return (*shape[1:3], shape[3] if len(shape) == 4 else 1), int(labels.max()) + 1


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

  Raises:
    DataError: the file is missing, unreadable, not IDX, truncated or too long.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise DataError(f"{path}: no such file") from None
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror})") from None
  if data[:2] == b"\x1f\x8b":
    try:
      data = gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
      raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
  dtype, shape = _parse_header(data, path)
  header = 4 + 4 * len(shape)
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  found = len(data) - header
  if found < expected:
    raise DataError(
      f"{path}: truncated: its header promises {expected} bytes of data for shape {shape}, "
      f"but the file holds {found}"
    )
  if found > expected:
    raise DataError(f"{path}: {found - expected} unexpected bytes after the data of shape {shape}")
  return np.frombuffer(data, dtype, count=expected // dtype.itemsize, offset=header).reshape(shape)


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


def read_idx_header(path: str | os.PathLike) -> tuple[np.dtype, tuple[int, ...]]:
  """The element type and shape of an IDX file (gzipped or not), from its header alone.

  Raises:
    DataError: the file is missing, unreadable or not IDX.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      gzipped = f.read(2) == b"\x1f\x8b"
    with (gzip.open if gzipped else open)(path, "rb") as f:
      data = f.read(4)
      if len(data) == 4:
        data += f.read(4 * data[3])
  except FileNotFoundError:
    raise DataError(f"{path}: no such file") from None
  except (EOFError, OSError, zlib.error) as e:
    raise DataError(f"{path}: cannot read ({e})") from None
  return _parse_header(data, path)


def find_idx_files(idx_dir: str | os.PathLike) -> dict[str, str]:
  """Paths of the four standard IDX files in a folder, by role (the keys of IDX_FILES).

  A file may be named `train-images-idx3-ubyte` or `train-images.idx3-ubyte`,
  with `.gz` or without.

  Raises:
    DataError: the folder or one of the files is missing.
  """
  idx_dir = os.fspath(idx_dir)
  if not os.path.isdir(idx_dir):
    raise DataError(f"{idx_dir}: no such folder (data.idx_dir)")
  paths = {}
  for key, stem in IDX_FILES.items():
    prefix, suffix = stem.split("-idx")
    names = [f"{prefix}-idx{suffix}", f"{prefix}.idx{suffix}"]
    candidates = [os.path.join(idx_dir, n + ext) for n in names for ext in ("", ".gz")]
    found = [p for p in candidates if os.path.isfile(p)]
    if not found:
      raise DataError(f"{idx_dir}: missing {stem} (or {stem}.gz)")
    paths[key] = found[0]
  return paths


def load_idx_dir(idx_dir: str | os.PathLike, num_classes: int | None = None) -> sources.RawData:
  """Reads the four IDX files of a folder, checking shapes, counts and labels.

  Images come out uint8 (N, height, width, channels), a channel axis added to
  rank-3 files; labels int64 (N,). The dataset is named after the folder. The
  number of classes is `num_classes` if given, else one more than the largest
  training label.

  Raises:
    DataError: naming the file at fault.
  """
  paths = find_idx_files(idx_dir)
  arrays = {key: read_idx(path) for key, path in paths.items()}
  for key in ("train_images", "test_images"):
    if arrays[key].ndim not in (3, 4):
      raise DataError(
        f"{paths[key]}: expected images of rank 3 (count, height, width) or 4 "
        f"(count, height, width, channels), found shape {arrays[key].shape}"
      )
    if arrays[key].dtype != np.uint8:
      raise DataError(f"{paths[key]}: expected unsigned-byte pixels, found {arrays[key].dtype}")
    if arrays[key].ndim == 3:
      arrays[key] = arrays[key][..., None]
  for key in ("train_labels", "test_labels"):
    if arrays[key].ndim != 1:
      raise DataError(f"{paths[key]}: expected a rank-1 label file, found {arrays[key].shape}")
    arrays[key] = arrays[key].astype(np.int64)
  if len(arrays["train_labels"]) == 0:
    raise DataError(f"{paths['train_labels']}: the train split is empty")
  if num_classes is None:
    num_classes = int(arrays["train_labels"].max()) + 1
  raw = sources.RawData(
    name=os.path.basename(os.path.normpath(os.fspath(idx_dir))),
    num_classes=num_classes,
    class_names=tuple(str(i) for i in range(num_classes)),
    **arrays,
  )
  return sources.check_data(raw, paths)


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
