"""The "tfds" source: any TFDS image-classification dataset, by name.

`data.name` is the TFDS name (`mnist`, `fashion_mnist`, `kmnist`, `cifar10`,
...), read from `data.tfds_data_dir` (else TFDS's default), downloaded and
prepared there on first use. Offline, the MNIST family can be prepared by name
from local IDX files with `data.tfds_manual_dir` (`prepare_tfds_from_idx`); a
download that cannot happen stops with a message naming the offline sources.

Needs convnet's `tfds` extra (`pip install 'convnet[tfds]'`). tensorflow_datasets
reads a prepared ArrayRecord dataset, and a builder's metadata, without
TensorFlow; TensorFlow is imported only to download or prepare a dataset, or to
read one stored as TFRecord, and then kept off any accelerator, which JAX owns.
A package that is missing stops the run with one line naming the extra.

A prepared dataset's metadata is checked before TFDS reads it (`check_prepared`),
and records TFDS cannot read are caught: either is one line naming the file or
folder, and saying to delete that folder to prepare the dataset again.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from convnet import sources
from convnet.errors import DataError, FileFormatError
from convnet.files import read_json
from convnet.sources import idx

# The TFDS datasets that `prepare_tfds_from_idx` can make from IDX files.
IDX_DATASETS = ("mnist", "fashion_mnist", "kmnist")

# What installs the packages this source needs (setup.cfg's `tfds` extra).
INSTALL_EXTRA = "pip install 'convnet[tfds]'"


def load(data_config: Mapping[str, Any]) -> sources.RawData:
  """The TFDS dataset `data.name`'s splits `data.train_split` and `data.test_split`.

  See `load_tfds`; `data.tfds_data_dir` and `data.tfds_manual_dir` may be "".
  """
  return load_tfds(
    data_config["name"],
    data_dir=data_config["tfds_data_dir"] or None,
    manual_dir=data_config["tfds_manual_dir"] or None,
    train_split=data_config["train_split"],
    test_split=data_config["test_split"],
  )


def input_spec(data_config: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
  """Input shape and number of classes of `data.name`, from its TFDS builder's info alone.

  The info is defined in code, or read from the prepared dataset's metadata:
  nothing is downloaded or prepared, and TensorFlow is not imported.

  Raises:
    DataError: `data.name` is not a TFDS image-classification dataset (uint8
      images and a ClassLabel), its images vary in shape, or its prepared
      metadata is damaged (see `check_prepared`).
  """
  tfds = _import_tfds()
  name = data_config["name"]
  builder = _builder(tfds, name, data_config["tfds_data_dir"] or None)
  image_key, _, label_feature = _features(builder.info, name)
  shape = tuple(builder.info.features[image_key].shape)
  if None in shape:
    raise DataError(
      f"data.name={name!r}: TFDS gives images of varying shape {shape}, so the model's input "
      f"shape cannot be known; choose a dataset whose images share one shape"
    )
  return shape, label_feature.num_classes


def _missing(purpose: str, module: str | None) -> str:
  return f"{purpose} needs the Python module {module!r}, which is not installed: {INSTALL_EXTRA}"


def _import_tfds():
  """tensorflow_datasets, which does not import TensorFlow until a dataset needs it.

  Raises:
    DataError: tensorflow_datasets is not installed (one line naming the extra).
  """
  try:
    import tensorflow_datasets as tfds
  except ModuleNotFoundError as e:
    raise DataError(_missing("data.source='tfds'", e.name)) from None
  return tfds


def _import_tensorflow(purpose: str):
  """TensorFlow, kept off any accelerator, which JAX owns.

  Raises:
    DataError: TensorFlow is not installed; the message says what needed it.
  """
  try:
    import tensorflow as tf
  except ModuleNotFoundError as e:
    raise DataError(_missing(purpose, e.name)) from None
  tf.config.set_visible_devices([], "GPU")
  return tf


def _offline_message(name: str, reason: str) -> str:
  return (
    f"TFDS could not download {name!r} ({reason}). To run offline, choose a local source:\n"
    f"  --config.data.source=embedded              5,000 real MNIST digits shipped with convnet\n"
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
) -> sources.RawData:
  """Reads a TFDS image-classification dataset, preparing it first if needed.

  An unprepared dataset is prepared from the IDX files in `manual_dir` when
  that is set (see `prepare_tfds_from_idx`), and downloaded otherwise. Images
  come out uint8 (N, height, width, channels), labels int64 (N,).

  Raises:
    DataError: an unknown name or split, images that are not uint8, a
      download that failed (the message names the offline sources), or a
      prepared dataset whose metadata or files are damaged (the message names
      the file or folder, and says to delete it to prepare it again).
  """
  tfds = _import_tfds()
  builder = _builder(tfds, name, data_dir)
  if not builder.is_prepared():
    if manual_dir:
      prepare_tfds_from_idx(name, manual_dir, data_dir)
    else:
      _download(tfds, name, data_dir)
    builder = _builder(tfds, name, data_dir)
  info = builder.info
  image_key, label_key, label_feature = _features(info, name)
  for split in (train_split, test_split):
    if split not in info.splits:
      raise DataError(
        f"TFDS {name!r} has no split {split!r} (it has {', '.join(info.splits)}); "
        f"set data.train_split and data.test_split"
      )
  arrays = {}
  for key, split in (("train", train_split), ("test", test_split)):
    try:
      images, labels = _read_split(tfds, builder, split, image_key, label_key)
    except (DataError, MemoryError):
      raise
    except Exception as e:  # TFDS and its readers raise many kinds; all mean damaged files.
      raise DataError(
        f"{builder.data_dir}: TFDS cannot read the {split!r} split of {name!r} prepared there "
        f"({_first_line(e)}); {_remedy(builder.data_dir)}"
      ) from None
    # Labels as TFDS gives them: `check_data` refuses floats that are not class indices.
    arrays[f"{key}_images"], arrays[f"{key}_labels"] = images, labels
  raw = sources.RawData(
    name=name,
    num_classes=label_feature.num_classes,
    class_names=tuple(label_feature.names),
    **arrays,
  )
  return sources.check_data(raw, f"TFDS {name!r} in {builder.data_dir}")


def _remedy(folder: str) -> str:
  """What to do about a damaged prepared dataset in `folder`."""
  return (
    f"delete {folder} to prepare the dataset again, or point data.tfds_data_dir at another folder"
  )


def _first_line(error: BaseException) -> str:
  """The error's type and the first line of its message (200 characters at most)."""
  line = (str(error).strip().splitlines() or [""])[0][:200]
  return f"{type(error).__name__}: {line}" if line else type(error).__name__


# A prepared version's folder: <data_dir>/<name>[/<config>]/<major>.<minor>.<patch>.
_VERSION = re.compile(r"\d+\.\d+\.\d+")
# The metadata files TFDS reads from a prepared version's folder when it makes a builder.
_METADATA_FILES = ("dataset_info.json", "features.json", "metadata.json")


def prepared_folders(name: str, data_dirs: list[str]) -> list[str]:
  """The folders of `name`'s prepared versions under `data_dirs`: any config, any version.

  `name` is a TFDS name, perhaps with a config and version ("mnist",
  "mnist:3.0.1", "cifar10_corrupted/fog_1"); its dataset's folders are those
  named like a version, directly under `<data_dir>/<dataset>` or one folder
  (a config) below it. Folders TFDS is still writing (`incomplete.*`) are not.
  """
  dataset = name.split(":")[0].split("/")[0]
  found = []
  for data_dir in data_dirs:
    top = os.path.join(data_dir, dataset)
    below = [top] + [os.path.join(top, n) for n in _listdir(top) if not _VERSION.fullmatch(n)]
    for folder in below:
      found += [os.path.join(folder, n) for n in _listdir(folder) if _VERSION.fullmatch(n)]
  return [f for f in found if os.path.isdir(f)]


def _listdir(folder: str) -> list[str]:
  try:
    return sorted(os.listdir(folder))
  except OSError:  # missing, a file, or unreadable: nothing prepared there
    return []


def check_prepared(name: str, data_dirs: list[str]) -> None:
  """Refuses damaged metadata in the folders of `name`'s prepared versions (`prepared_folders`).

  TFDS reads a prepared version's `dataset_info.json` (and `features.json`,
  `metadata.json`) whenever it makes a builder, and a damaged one gives a raw
  protobuf ParseError, an AssertionError, or a read that never returns (a
  FIFO). Each file present must be a regular file of JSON (`files.read_json`)
  holding an object; `dataset_info.json` must name the folder's version and
  list its splits, each with a name.

  Raises:
    DataError: naming the file, what is wrong, and what to do (delete its
      folder to prepare the dataset again, or choose another data.tfds_data_dir).
  """
  for folder in prepared_folders(name, data_dirs):
    for file_name in _METADATA_FILES:
      path = os.path.join(folder, file_name)
      if not os.path.lexists(path):
        continue
      try:
        info = read_json(path)
      except FileFormatError as e:  # not a regular file, too large, not JSON, too deep
        raise DataError(f"{e}; {_remedy(folder)}") from None
      except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); {_remedy(folder)}") from None
      problem = _metadata_problem(info, file_name, os.path.basename(folder))
      if problem:
        raise DataError(f"{path}: {problem}; {_remedy(folder)}")


def _metadata_problem(info: Any, file_name: str, version: str) -> str | None:
  """What is wrong with the JSON value of a prepared dataset's metadata file, if anything."""
  if not isinstance(info, dict):
    return f"holds a JSON {type(info).__name__}, not the object TFDS writes"
  if file_name != "dataset_info.json":
    return None
  if info.get("version") != version:
    found = f"version {info['version']!r}" if "version" in info else "no version"
    return f"not a TFDS dataset info: it gives {found}, not its folder's {version!r}"
  splits = info.get("splits")
  if not (
    isinstance(splits, list)
    and splits
    and all(isinstance(split, dict) and isinstance(split.get("name"), str) for split in splits)
  ):
    return "not a TFDS dataset info: it lists no splits (a list of objects, each with a name)"
  return None


def _builder(tfds, name: str, data_dir: str | None):
  """`tfds.builder(name, data_dir=data_dir)`, its prepared metadata checked first.

  Raises:
    DataError: `name` is not a TFDS dataset, or the metadata of a prepared
      version is damaged (`check_prepared`), or TFDS cannot make the builder
      from it (naming the prepared folders, and what to do).
  """
  data_dirs = [data_dir] if data_dir else _default_data_dirs(tfds)
  check_prepared(name, data_dirs)
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"data.name={name!r} is not a TFDS dataset") from None
  except Exception as e:  # TFDS raises many kinds (ParseError, AssertionError, ValueError)
    folders = prepared_folders(name, data_dirs)
    if not folders:
      raise
    raise DataError(
      f"{', '.join(folders)}: TFDS cannot read {name!r} prepared there ({_first_line(e)}); "
      f"{_remedy(' and '.join(folders))}"
    ) from None


def _default_data_dirs(tfds) -> list[str]:
  """The folders TFDS searches for prepared datasets when no data_dir is given."""
  try:
    from tensorflow_datasets.core.utils import file_utils

    return [os.fspath(d) for d in file_utils.list_data_dirs()]
  except (ImportError, AttributeError):  # another TFDS version: its default folder alone
    return [os.fspath(tfds.core.constants.DATA_DIR)]


def _features(info, name: str):
  """The image and label keys of a TFDS image-classification dataset, and its label feature."""
  image_key, label_key = info.supervised_keys or ("image", "label")
  keys = tuple(info.features.keys())
  if not (isinstance(image_key, str) and isinstance(label_key, str)) or not (
    image_key in keys and label_key in keys
  ):
    raise DataError(
      f"TFDS {name!r} is not an image-classification dataset: it has no (image, label) pair "
      f"(supervised keys {info.supervised_keys}, features {', '.join(keys)}); choose one that has"
    )
  image_feature, label_feature = info.features[image_key], info.features[label_key]
  if image_feature.np_dtype != np.uint8 or len(image_feature.shape) < 2:
    raise DataError(f"TFDS {name!r}: {image_key!r} is not a uint8 image feature")
  if not getattr(label_feature, "num_classes", None):
    raise DataError(
      f"TFDS {name!r}: {label_key!r} is a {type(label_feature).__name__}, not class indices "
      f"(a ClassLabel); choose an image-classification dataset"
    )
  return image_key, label_key, label_feature


def _download(tfds, name: str, data_dir: str | None):
  reason = network_reachable()
  if reason:
    raise DataError(_offline_message(name, reason))
  _import_tensorflow(f"Downloading TFDS {name!r}")
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  try:
    builder.download_and_prepare()
  except Exception as e:  # TFDS raises many kinds; all end the same way.
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise DataError(_offline_message(name, f"{type(e).__name__}: {first_line[:200]}")) from None


def _read_split(tfds, builder, split: str, image_key: str, label_key: str):
  """A whole split as NumPy arrays, from ArrayRecord or TFRecord files."""
  if builder.info.file_format == tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
    source = builder.as_data_source(split=split)
    records = source.__getitems__(range(len(source)))
    images = np.stack([r[image_key] for r in records])
    labels = np.array([r[label_key] for r in records])
  else:
    _import_tensorflow(f"Reading TFDS {builder.name!r} (stored as TFRecord, in {builder.data_dir})")
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    images, labels = data[image_key], data[label_key]
  return images, labels


def prepare_tfds_from_idx(name: str, idx_dir: str, data_dir: str | None = None):
  """Prepares TFDS's `mnist`, `fashion_mnist` or `kmnist` from local IDX files.

  The result is the dataset TFDS would build after a download (same name,
  version and features, stored as ArrayRecord in `data_dir`), so that
  `tfds.data_source(name, data_dir=data_dir)` reads it by name, with no
  network. The files are read and checked with `idx.load_idx_dir`.

  Returns:
    The prepared builder.

  Raises:
    DataError: `name` is not one of IDX_DATASETS, or the files are bad or of
      another image shape; nothing is prepared then.
  """
  tfds = _import_tfds()
  base_name = name.split(":")[0].split("/")[0]
  if base_name not in IDX_DATASETS:
    raise DataError(
      f"data.tfds_manual_dir: TFDS {name!r} cannot be prepared from IDX files; "
      f"only {', '.join(IDX_DATASETS)} can"
    )
  base = tfds.builder_cls(base_name)
  raw = idx.load_idx_dir(idx_dir, num_classes=10)
  image_shape = tuple(base(data_dir=data_dir).info.features["image"].shape)
  if raw.train_images.shape[1:] != image_shape:
    files = idx.find_idx_files(idx_dir)
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

  _import_tensorflow(f"Preparing TFDS {base_name!r} from IDX files")
  logging.info("Preparing TFDS %r in %s from the IDX files in %s", base_name, data_dir, idx_dir)
  builder = LocalIdxBuilder(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(idx_dir))
  )
  return builder
