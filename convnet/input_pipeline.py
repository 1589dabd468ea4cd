"""Turns a data source's arrays into the splits a run trains, validates and tests on.

The sources themselves live in `convnet.sources`, one module each, chosen by
`config.data.source` (`SOURCES`); each gives its train and test splits as
`sources.RawData`. `load` then, the same way for every source:
- splits a validation set off the training split, deterministically by the
  seed, and keeps the test split apart for the reported result;
- scales uint8 pixels to float32 in [0, 1], and makes a source's own floats
  (standardised sequences and spectrograms, voxel occupancies) float32 as they
  are;
- moves every example's positions by one fixed permutation if
  `data.permute_pixels` asks (`permute_pixels`), the control that takes away
  locality and leaves every pixel's value;
- lays a single-channel 2D example out as a sequence if `data.layout` asks
  (`arrange`), for 1D convolutions over a spectrogram's time;
- reduces each example to `data.num_features` numbers if `data.features` asks
  (`select_features`), for the dense baseline.
`input_spec` tells the shape and the number of classes without the data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from convnet import sources
from convnet.errors import ConfigError

# The names `data.source` takes; a view of the registry, so a source registered later is in it.
SOURCES = sources.REGISTRY.keys()
FEATURES = ("pixels", "pca", "top_variance")
LAYOUTS = ("image", "sequence")


@dataclasses.dataclass(frozen=True)
class Split:
  """Examples, float32 (N, *input_shape), and their labels, int32 (N,).

  Pixels are in [0, 1]; a source's floats are as it gives them (MNIST-1D and
  the spectrograms standardised, Shapes3D's occupancies in about [0, 1]); with
  `data.features="pca"` an example is its principal components, centred but not
  scaled, of shape (num_features,).
  """

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

  def map_splits(self, fn: Callable[[Split], Split]) -> Dataset:
    """The dataset with `fn` applied to each of its three splits."""
    return dataclasses.replace(
      self, train=fn(self.train), validation=fn(self.validation), test=fn(self.test)
    )


def load(data_config: Mapping[str, Any], seed: int) -> Dataset:
  """Reads the configured source and splits off validation data by `seed`.

  Every split is float32 examples and int32 labels (see `Split`); the test
  split does not depend on `seed`. With `data.num_train` N > 0, the training
  split is N examples drawn (by `seed`) from what the validation split leaves:
  for one seed, the subsets of every N are nested, and none holds a
  validation or test example. With `data.num_validation` V > 0, the
  validation split is the first V examples of that held-out fraction (nested
  across V by seed), so a learning curve can validate in proportion to N.

  Raises:
    ConfigError: for an unknown source, name or feature setting, or an
      impossible validation split; the message names the field.
    DataError: naming the file or dataset that could not be read, or whose
      data cannot be used (see `sources.check_data`, which every source's
      data passes: labels that are not class indices, float examples that are
      not finite, splits of other shapes).
  """
  raw = sources.get(data_config["source"]).load(data_config)
  dataset = _split_validation(
    raw,
    data_config["validation_fraction"],
    seed,
    data_config.get("num_train", 0),
    data_config.get("num_validation", 0),
  )
  dataset = permute_pixels(dataset, data_config.get("permute_pixels", 0))
  dataset = arrange(dataset, data_config.get("layout", "image"))
  return select_features(
    dataset, data_config.get("features", "pixels"), data_config.get("num_features", 0)
  )


def input_spec(data_config: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
  """The shape of one example as `load` gives it, and the number of classes, without the data.

  Nothing is downloaded or read whole (see each source's `input_spec`). With
  `data.features` "pca" or "top_variance", an example is a vector of
  `data.num_features` numbers.

  Raises:
    ConfigError: for an unknown source, name or feature setting.
    DataError: when the shape cannot be known: missing or bad files, an unknown
      TFDS dataset, or one whose images vary in size.
  """
  shape, num_classes = sources.get(data_config["source"]).input_spec(data_config)
  shape = arranged_shape(shape, data_config.get("layout", "image"))
  features = data_config.get("features", "pixels")
  num_features = data_config.get("num_features", 0)
  _check_features(features, num_features, math.prod(shape))
  return (shape if features == "pixels" else (num_features,)), num_classes


def _split_validation(
  raw: sources.RawData,
  validation_fraction: float,
  seed: int,
  num_train: int = 0,
  num_validation: int = 0,
) -> Dataset:
  """A random `validation_fraction` of the training split (by `seed`) as validation data.

  The rest is the training split, or (`num_train` > 0) the first `num_train`
  of its examples in an order fixed by `seed` alone: nested across sizes.
  `num_validation` > 0 keeps the first `num_validation` of the validation
  examples, in an order fixed by `seed` alone; the rest of them are not used.
  """
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
  if num_train:
    if not 0 < num_train <= len(train_idx):
      raise ConfigError(
        f"data.num_train={num_train!r} must be 0 (all) or 1 to the {len(train_idx)} training "
        "examples the validation split leaves"
      )
    drawn = np.random.default_rng([seed, 1]).permutation(len(train_idx))[:num_train]
    train_idx = np.sort(train_idx[drawn])
  if num_validation:
    if not 0 < num_validation <= len(val_idx):
      raise ConfigError(
        f"data.num_validation={num_validation!r} must be 0 (the whole validation split) or 1 "
        f"to the {len(val_idx)} examples that data.validation_fraction={validation_fraction!r} "
        "holds out; raise data.validation_fraction or lower data.num_validation"
      )
    drawn = np.random.default_rng([seed, 2]).permutation(len(val_idx))[:num_validation]
    val_idx = np.sort(val_idx[drawn])

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


def pixel_permutation(spatial_shape: tuple[int, ...], seed: int) -> np.ndarray:
  """One permutation of the positions of a grid of `spatial_shape`, drawn from `seed`.

  Returns:
    int64 (prod(spatial_shape),): position i of a permuted example, in C order
    over the spatial axes, is position `permutation[i]` of the original.

  Raises:
    ConfigError: `seed` is not a whole number from 0 to 2**63 - 1 (`data.permute_pixels`).
  """
  check_permute_pixels(seed)
  return np.random.default_rng(seed).permutation(math.prod(spatial_shape))


def permute_pixels(dataset: Dataset, seed: int) -> Dataset:
  """The dataset with every example's positions moved by one permutation, or as it is (`seed` 0).

  Examples are (N, *spatial, channels): 2D images, 1D sequences and 3D volumes
  alike. The permutation (`pixel_permutation(spatial, seed)`) is the same for
  the train, validation and test splits and for every channel; a pixel's
  values are kept, only its place changes, so a network without locality
  (the dense baseline) sees the same problem, and a convnet loses its
  neighbourhoods.

  Raises:
    ConfigError: a `seed` that is not 0 or a whole number below 2**63
      (`data.permute_pixels`).
  """
  check_permute_pixels(seed)
  if seed == 0:
    return dataset
  spatial = dataset.input_shape[:-1]
  permutation = pixel_permutation(spatial, seed)

  def permute(split: Split) -> Split:
    flat = split.images.reshape(len(split), len(permutation), split.images.shape[-1])
    moved = np.ascontiguousarray(flat[:, permutation]).reshape(split.images.shape)
    return Split(moved, split.labels)

  return dataset.map_splits(permute)


def check_permute_pixels(value: Any) -> None:
  """Rejects a `data.permute_pixels` that is not 0 (off) or a whole number below 2**63."""
  whole = isinstance(value, int | np.integer) and not isinstance(value, bool)
  if not (whole and 0 <= value < 2**63):
    raise ConfigError(
      f"data.permute_pixels={value!r}: permute_pixels is 0 (off) or the seed of one fixed "
      "permutation of the positions, a whole number from 1 to 2**63 - 1"
    )


def arrange(dataset: Dataset, layout: str) -> Dataset:
  """The dataset's examples as images (as they are) or as sequences.

  - "image": as the source gives them;
  - "sequence": an example of shape (rows, columns, 1) becomes (columns, rows):
    a sequence over the columns, with each column's values as its channels.
    A spectrogram of (mel bands, frames, 1) becomes (frames, mel bands), for
    1D convolutions over time with the bands as channels.

  Raises:
    ConfigError: an unknown `layout`, or "sequence" for examples that are not
      single-channel 2D.
  """
  arranged_shape(dataset.input_shape, layout)
  if layout == "image":
    return dataset

  def transpose(split: Split) -> Split:
    return Split(np.ascontiguousarray(split.images[..., 0].transpose(0, 2, 1)), split.labels)

  return dataset.map_splits(transpose)


def arranged_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  """The shape of one example after `arrange`; a ConfigError for a layout it cannot take."""
  if layout not in LAYOUTS:
    raise ConfigError(f"data.layout={layout!r} is not one of {', '.join(LAYOUTS)}")
  if layout == "image":
    return tuple(shape)
  if len(shape) != 3 or shape[-1] != 1:
    raise ConfigError(
      f"data.layout='sequence' needs examples of shape (rows, columns, 1); this data's are "
      f"{tuple(shape)}: use data.layout='image'"
    )
  return (shape[1], shape[0])


def select_features(dataset: Dataset, features: str, num_features: int) -> Dataset:
  """The dataset's images as they are, or reduced to `num_features` numbers an example.

  The dense side of the book's curse-of-dimensionality note:
  - "pixels": the images as they are;
  - "pca": the first `num_features` principal components;
  - "top_variance": the `num_features` pixels that vary most (feature selection).
  Both reductions are fitted on the training split alone and applied to every
  split; an example becomes a float32 vector of shape (num_features,).

  Raises:
    ConfigError: an unknown `features`, or `num_features` outside [1, pixels].
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

  return dataset.map_splits(reduce)


def _check_features(features: str, num_features: int, size: int) -> None:
  """Rejects an unknown `data.features`, or a `data.num_features` outside [1, pixels]."""
  if features not in FEATURES:
    raise ConfigError(f"data.features={features!r} is not one of {', '.join(FEATURES)}")
  if features != "pixels" and not 1 <= num_features <= size:
    raise ConfigError(
      f"data.num_features={num_features!r} must be in [1, {size}] for data.features={features!r}"
    )


def scale(images: np.ndarray) -> np.ndarray:
  """uint8 pixels to float32 in [0, 1]; other numbers to float32 as they are. Shape kept."""
  if images.dtype != np.uint8:
    return images.astype(np.float32)
  return images.astype(np.float32) / np.float32(255)
