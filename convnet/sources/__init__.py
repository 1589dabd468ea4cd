"""The data sources that `data.source` names: one module each, imported when first used.

Here are the registry, `RawData` (what every source gives) and `check_data`
(the checks every source's data passes).

Every source module has the same two functions:

  load(data_config) -> RawData
      The dataset's train and test splits, whole, in memory, checked with
      `check_data`.
  input_spec(data_config) -> (input_shape, num_classes)
      What `load` would give, from as little as can tell it: a header, the
      builder's metadata, or nothing at all for generated data.

A module may also have `title(data_config, sizes) -> str`, how titles name
its data ("embedded MNIST"); without one, titles use `data.name`. One whose
test examples come in dependent groups (a spoken digit's voice) has
`example_clusters(data_config) -> (N,) labels`, in the test split's order, for
`convnet.predictions.cluster_labels`. One with fields of its own (`data.canvas`)
has `check_fields(data_config)`, which `config_checks.validate` calls before
any data is read, raising ConfigError for a field that cannot work.

Both read only the `data_config` fields they need and raise ConfigError for a
field that cannot work, DataError for data that cannot be read. What comes
after (the validation split, scaling, features) is `input_pipeline`'s job, the
same for every source. A new source is one module and one line in `REGISTRY`
(docs/data.md's "Adding a data source" shows one). A module is imported only when
its source is used, so TensorFlow, say, is imported only for "tfds".
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

import numpy as np

from convnet.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class RawData:
  """What a source gives: its train and test splits, whole, and its classes.

  Images have shape (N, *input_shape), channels last: uint8 pixels in 0..255
  (TFDS, IDX files, the embedded digits), or float32 values that `load` keeps as
  they are (MNIST-1D and spectrograms, standardised; voxel occupancies). Labels
  are class indices in [0, num_classes), shape (N,): integers, or floats that
  are whole numbers; `check_data` makes them int64.
  """

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]


def check_data(raw: RawData, origin: str | Mapping[str, str]) -> RawData:
  """`raw`, its labels made int64, if its splits are usable.

  Usable: neither split is empty, each has as many labels as images, the
  labels are class indices (`check_labels`), the training labels hold two
  classes at least, both splits' examples have one shape, and float examples
  are finite (`check_finite`): one NaN would make the loss NaN at the first
  step that draws it.

  `origin` names where the data came from, for the messages: one string for
  all of it, or a mapping from "train_images", "train_labels", "test_images"
  and "test_labels" to the file each came from.

  Raises:
    DataError: naming the file or dataset at fault, with what is wrong.
  """
  if isinstance(origin, str):
    origin = dict.fromkeys(("train_images", "train_labels", "test_images", "test_labels"), origin)
  labels_by_split = {}
  for split in ("train", "test"):
    images, labels = getattr(raw, f"{split}_images"), getattr(raw, f"{split}_labels")
    if len(labels) == 0 or len(images) == 0:
      raise DataError(f"{origin[f'{split}_images']}: the {split} split is empty")
    if len(images) != len(labels):
      raise DataError(
        f"{origin[f'{split}_images']} holds {len(images)} images but "
        f"{origin[f'{split}_labels']} holds {len(labels)} labels"
      )
    labels_by_split[split] = check_labels(
      labels, raw.num_classes, origin[f"{split}_labels"], training=split == "train"
    )
    check_finite(images, origin[f"{split}_images"], f"{split} examples")
  if raw.train_images.shape[1:] != raw.test_images.shape[1:]:
    raise DataError(
      f"{origin['test_images']}: test images of shape {raw.test_images.shape[1:]} do not match "
      f"the training images' {raw.train_images.shape[1:]} in {origin['train_images']}"
    )
  return dataclasses.replace(
    raw, train_labels=labels_by_split["train"], test_labels=labels_by_split["test"]
  )


def check_finite(values: np.ndarray, origin: str, what: str) -> None:
  """Refuses float `values` (any shape) holding NaN or an infinity; integers always pass.

  One pass over the data (`np.isfinite`), made once, when a source is loaded.

  Raises:
    DataError: naming `origin` (the file or dataset), `what` ("train
      examples"), how many values are not finite, and the first example
      holding one.
  """
  values = np.asarray(values)
  if values.dtype.kind not in "fc" or values.size == 0:
    return
  finite = np.isfinite(values)
  if finite.all():
    return
  bad = finite.size - int(np.count_nonzero(finite))
  first = int(np.argmin(finite.reshape(len(finite), -1).all(axis=1))) if values.ndim else 0
  kinds = ", ".join(
    f"{count:,} {name}"
    for name, count in (
      ("NaN", int(np.count_nonzero(np.isnan(values)))),
      ("infinite", int(np.count_nonzero(np.isinf(values)))),
    )
    if count
  )
  raise DataError(
    f"{origin}: {bad:,} of the {values.size:,} values of its {what} are not finite ({kinds}; "
    f"the first in example {first}); a model cannot train on them: make or download the data "
    f"again"
  )


def check_labels(
  labels: np.ndarray, num_classes: int, origin: str, training: bool = False
) -> np.ndarray:
  """`labels` as int64 if they are class indices: shape (N,), whole numbers in [0, num_classes).

  Floats are class indices only when every one is a whole number (3.0, never
  4.7, which would be truncated to a class it does not name). With `training`,
  the labels must also hold two classes at least: with one, a classifier
  reaches loss 0 and accuracy 1 by learning nothing.

  Raises:
    DataError: naming `origin` (the labels' file or dataset) and the first bad label.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise DataError(
      f"{origin}: labels of shape {labels.shape}; expected one class index an example, shape (N,)"
    )
  if labels.dtype.kind not in "biuf":
    raise DataError(
      f"{origin}: labels of type {labels.dtype} are not class indices; "
      f"give whole numbers 0..{num_classes - 1}"
    )
  if labels.dtype.kind == "f":
    whole = np.isfinite(labels) & (labels == np.round(labels))
    if not whole.all():
      raise DataError(
        f"{origin}: label {labels[~whole][0]} is not a class index; labels must be whole "
        f"numbers 0..{num_classes - 1} (store them as integers)"
      )
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
    bad = int(bad) if float(bad).is_integer() else bad  # 12, not 12.0
    raise DataError(
      f"{origin}: label {bad} is out of range for {num_classes} classes (0..{num_classes - 1})"
    )
  if training and labels.size and labels.min() == labels.max():
    raise DataError(
      f"{origin}: the training labels hold only class {int(labels.min())}; a classifier needs at "
      f"least two classes, so give examples of two or more"
    )
  return labels.astype(np.int64)


# data.source -> the module that reads it.
REGISTRY = {
  "tfds": "convnet.sources.tfds",
  "idx": "convnet.sources.idx",
  "embedded": "convnet.sources.embedded",
  "mnist1d": "convnet.sources.mnist1d",
  "spoken_digits": "convnet.sources.spoken_digits",
  "shapes3d": "convnet.sources.shapes3d",
  "canvas": "convnet.sources.canvas",
}


def get(source: str) -> ModuleType:
  """The module of `source` (a key of REGISTRY), imported on first use.

  Raises:
    ConfigError: `source` is not registered.
  """
  if source not in REGISTRY:
    raise ConfigError(
      f"data.source={source!r} is not a source; choose one of {', '.join(REGISTRY)}"
    )
  return importlib.import_module(REGISTRY[source])


def title(data_config: Mapping[str, Any], sizes: bool = False) -> str:
  """How figure and report titles name the data of `data_config` (a config's `data`).

  The source's own `title(data_config, sizes)` where it has one ("embedded
  MNIST", with `sizes` "embedded MNIST (5,000 digits)"; an IDX folder's name),
  else `data.name` ("mnist1d", "shapes3d", a TFDS name).

  A source that is not registered (records of another version, say) gets
  `data.name` too. Data whose pixels are permuted (`data.permute_pixels`) say so.
  """
  source = data_config.get("source", "")
  own = getattr(get(source), "title", None) if source in REGISTRY else None
  text = own(data_config, sizes) if own else data_config.get("name", "")
  if permutation := data_config.get("permute_pixels", 0):
    text += f", pixels permuted (permutation {permutation})"
  return text


def check_name(name: str, names: Iterable[str], source: str, kind: str) -> str:
  """`name` (the config's `data.name`) if it is one of `names`, the datasets `source` makes.

  Raises:
    ConfigError: naming `data.name`, as "not `kind`", and the names to use.
  """
  names = tuple(names)
  if name not in names:
    raise ConfigError(
      f"data.name={name!r} is not {kind}; with data.source={source!r} use "
      f"{' or '.join(map(repr, names))}"
    )
  return name
