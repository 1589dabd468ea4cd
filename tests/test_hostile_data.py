"""Hostile and mistaken data: headers that lie about sizes, labels that are not class indices.

Each bad input must be refused with one DataError naming its file (or dataset), fast and
without allocating what a lying header asks for.
"""

import gzip
import time
import tracemalloc

import numpy as np
import pytest

from convnet import input_pipeline, sources
from convnet.errors import DataError
from convnet.sources import embedded as embedded_source
from convnet.sources import idx
from tests.conftest import write_idx_dir

# 2**64 + 4: a shape whose byte count wraps to 4 in int64 arithmetic.
WRAPPING_SHAPE = (5, 4 * 49477 * 5581, 384773 * 8681)
assert np.prod(WRAPPING_SHAPE, dtype=np.int64) == 4 and all(n < 2**32 for n in WRAPPING_SHAPE)
# How much more than the data a refusal may allocate; a lying header here asks for 200 MB or more.
MEMORY_BOUND = 8 * 2**20


def _config(idx_dir, **overrides):
  config = {
    "source": "idx",
    "name": "hostile",
    "idx_dir": str(idx_dir),
    "tfds_data_dir": "",
    "tfds_manual_dir": "",
    "train_split": "train",
    "test_split": "test",
    "validation_fraction": 0.0,
  }
  config.update(overrides)
  return config


def _header(type_code, shape):
  return bytes([0, 0, type_code, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)


def _write(path, data, gz):
  path.write_bytes(gzip.compress(data) if gz else data)


def _idx_dir(tmp_path, gz, train_labels=None, test_labels=None):
  """A small, good IDX folder (20 train, 8 test images of 6x5, 4 classes); its paths by role."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (20, 6, 5), dtype=np.uint8)
  labels = np.arange(20, dtype=np.uint8) % 4
  paths = write_idx_dir(
    tmp_path,
    images,
    labels if train_labels is None else train_labels,
    images[:8],
    labels[:8] if test_labels is None else test_labels,
    gz=gz,
  )
  return {key: tmp_path / path for key, path in paths.items()}


def _refusals(tmp_path):
  """Every way in: the input spec (what the layer table reads), the folder, the pipeline."""
  return {
    "input_spec": lambda: input_pipeline.input_spec(_config(tmp_path)),
    "load_idx_dir": lambda: idx.load_idx_dir(tmp_path),
    "input_pipeline.load": lambda: input_pipeline.load(_config(tmp_path), seed=0),
  }


def _assert_refused(call, path, match, seconds=1.0, memory=MEMORY_BOUND):
  """`call` raises a DataError naming `path` and matching `match`, fast, in bounded memory."""
  tracemalloc.start()
  start = time.perf_counter()
  try:
    with pytest.raises(DataError, match=match) as error:
      call()
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  message = str(error.value)
  assert message.startswith(f"{path}: ") and "\n" not in message, message
  assert elapsed < seconds, f"refused after {elapsed:.2f} s"
  assert peak < memory, f"refused after allocating {peak / 2**20:.0f} MiB"


# ----------------------------------------------------------------------------
# Sizes: the header's promise is checked against the file before anything is read.


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("way", ["input_spec", "load_idx_dir", "input_pipeline.load"])
def test_a_116_byte_file_claiming_2_to_the_64_bytes_is_refused_by_name(tmp_path, gz, way):
  paths = _idx_dir(tmp_path, gz)
  path = paths["train_images"]
  _write(path, _header(0x08, (1, 2**32 - 1, 2**32 - 1)) + bytes(100), gz)
  if not gz:
    assert path.stat().st_size == 116
  match = "gzip expands at most" if gz else "truncated: its header promises 18446744065119617025"
  _assert_refused(_refusals(tmp_path)[way], path, match)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(
  "shape", [WRAPPING_SHAPE, (2**32 - 1,) * 3, (2**32 - 1, 2**32 - 1, 1, 2**32 - 1)]
)
def test_shapes_whose_byte_count_overflows_int64_are_refused_by_name(tmp_path, gz, shape):
  path = _idx_dir(tmp_path, gz)["train_images"]
  _write(path, _header(0x08, shape) + bytes(4), gz)
  for call in _refusals(tmp_path).values():
    _assert_refused(call, path, "promises")
  _assert_refused(lambda: idx.read_idx(path), path, "promises")
  _assert_refused(lambda: idx.read_idx_header(path), path, "promises")


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_input_spec_refuses_a_header_that_promises_more_images_than_the_file_holds(tmp_path, gz):
  path = _idx_dir(tmp_path, gz)["train_images"]
  images = np.zeros((10, 28, 28), np.uint8).tobytes()
  _write(path, _header(0x08, (60000, 28, 28)) + images, gz)
  match = "gzip expands at most" if gz else "truncated: its header promises 47040000 bytes"
  _assert_refused(_refusals(tmp_path)["input_spec"], path, match)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("shape", [(20, 0, 5), (20, 6, 0), (20, 6, 5, 0)])
def test_an_empty_image_dimension_is_refused_by_name(tmp_path, gz, shape):
  path = _idx_dir(tmp_path, gz)["train_images"]
  _write(path, _header(0x08, shape), gz)
  for call in _refusals(tmp_path).values():
    _assert_refused(call, path, "with an empty dimension")


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_no_images_of_an_absurd_size_is_refused_by_name(tmp_path, gz):
  path = _idx_dir(tmp_path, gz)["train_images"]
  _write(path, _header(0x08, (0, 2**32 - 1, 2**32 - 1)), gz)
  for call in _refusals(tmp_path).values():
    _assert_refused(call, path, "bytes an example, more than any model here takes")


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_input_spec_refuses_an_empty_training_split_as_load_does(tmp_path, gz):
  path = _idx_dir(tmp_path, gz)["train_images"]
  _write(path, _header(0x08, (0, 6, 5)), gz)
  for call in _refusals(tmp_path).values():
    _assert_refused(call, path, "the train split is empty")


def test_a_plain_file_longer_than_its_header_promises_is_refused_unread(tmp_path):
  path = _idx_dir(tmp_path, gz=False)["train_labels"]
  with open(path, "wb") as f:
    f.write(_header(0x08, (20,)) + bytes(np.arange(20, dtype=np.uint8) % 4))
    f.truncate(200 * 2**20)  # sparse: 200 MB that the disk does not hold
  match = f"{200 * 2**20 - 28} unexpected bytes after the data"
  for call in (*_refusals(tmp_path).values(), lambda: idx.read_idx(path)):
    _assert_refused(call, path, match)


def test_a_gzip_bomb_is_never_decompressed_past_its_header_promise(tmp_path):
  path = _idx_dir(tmp_path, gz=True)["train_images"]
  images = np.zeros((20, 6, 5), np.uint8).tobytes()
  # Gzip members concatenated are one stream: 200 MB of zeros after the 20 images promised.
  zeros = gzip.compress(bytes(8 * 2**20), compresslevel=1)
  path.write_bytes(gzip.compress(_header(0x08, (20, 6, 5)) + images) + zeros * 25)
  assert path.stat().st_size < 2**20
  refusals = _refusals(tmp_path)
  del refusals["input_spec"]  # it reads the header alone, which is true here
  for call in (*refusals.values(), lambda: idx.read_idx(path)):
    _assert_refused(call, path, "more than 65536 unexpected bytes after the data")


def test_a_gzipped_file_is_read_whole_and_checked_to_its_end(tmp_path):
  """The bounded reading still reads every byte and checks gzip's CRC at the end."""
  path = _idx_dir(tmp_path, gz=True)["train_images"]
  array = np.random.default_rng(1).integers(0, 256, (300, 28, 28), dtype=np.uint8)
  idx.write_idx(path, array)
  np.testing.assert_array_equal(idx.read_idx(path), array)
  data = bytearray(path.read_bytes())
  data[-8] ^= 0xFF  # the CRC-32 in gzip's trailer
  path.write_bytes(bytes(data))
  _assert_refused(lambda: idx.read_idx(path), path, "corrupt or truncated gzip data")


# ----------------------------------------------------------------------------
# Labels: class indices, of two classes at least in the training split.


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [4.7, 3.0], ids=["fraction", "whole"])
def test_float_idx_label_files_are_refused_by_name(tmp_path, gz, dtype, value):
  labels = (np.arange(20) % 4).astype(dtype)
  labels[5] = value
  paths = _idx_dir(tmp_path, gz, train_labels=labels)
  for call in _refusals(tmp_path).values():
    _assert_refused(call, paths["train_labels"], f"labels of type {np.dtype(dtype).name} are not")


@pytest.mark.parametrize("label", [0, 3])
def test_training_labels_of_one_class_are_refused_by_name(tmp_path, label):
  labels = np.full(20, label, np.uint8)
  paths = _idx_dir(tmp_path, gz=True, train_labels=labels, test_labels=labels[:8])
  match = f"the training labels hold only class {label}; a classifier needs at least two"
  refusals = _refusals(tmp_path)
  refusals["load_idx_dir with num_classes"] = lambda: idx.load_idx_dir(tmp_path, num_classes=10)
  for call in refusals.values():
    _assert_refused(call, paths["train_labels"], match)


def test_test_labels_of_one_class_are_accepted(tmp_path):
  _idx_dir(tmp_path, gz=True, test_labels=np.full(8, 2, np.uint8))
  raw = idx.load_idx_dir(tmp_path)
  assert raw.num_classes == 4 and raw.test_labels.dtype == np.int64
  assert set(raw.test_labels) == {2}


def test_negative_idx_labels_are_refused_by_name(tmp_path):
  labels = (np.arange(20) % 4).astype(np.int8)
  labels[7] = -1
  paths = _idx_dir(tmp_path, gz=True, train_labels=labels)
  for call in _refusals(tmp_path).values():
    _assert_refused(call, paths["train_labels"], "label -1 is out of range for 4 classes")


def test_idx_labels_beyond_the_classes_are_refused_by_name(tmp_path):
  labels = (np.arange(20) % 4).astype(np.uint8)
  labels[3] = 10
  paths = _idx_dir(tmp_path, gz=True, train_labels=labels)
  _assert_refused(
    lambda: idx.load_idx_dir(tmp_path, num_classes=10),
    paths["train_labels"],
    "label 10 is out of range for 10 classes",
  )


def test_one_huge_idx_label_does_not_make_a_million_classes(tmp_path):
  labels = (np.arange(20) % 4).astype(np.int32)
  labels[3] = 10**6
  paths = _idx_dir(tmp_path, gz=True, train_labels=labels)
  for call in _refusals(tmp_path).values():
    _assert_refused(call, paths["train_labels"], "label 1000000 makes 1000001 classes, more than")


def _raw(train_labels, test_labels=(0, 1, 2)):
  train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
  return sources.RawData(
    name="made",
    train_images=np.zeros((len(train_labels), 2, 2, 1), np.uint8),
    train_labels=train_labels,
    test_images=np.zeros((len(test_labels), 2, 2, 1), np.uint8),
    test_labels=test_labels,
    num_classes=3,
    class_names=("a", "b", "c"),
  )


@pytest.mark.parametrize(
  "labels, match",
  [
    ([0.0, 4.7, 1.0], "label 4.7 is not a class index"),
    ([0.0, 1.5, 1.0], "label 1.5 is not a class index"),
    ([0.0, np.nan, 1.0], "label nan is not a class index"),
    ([0.0, np.inf, 1.0], "label inf is not a class index"),
    (["0", "1", "2"], "labels of type <U1 are not class indices"),
    ([[0], [1], [2]], r"labels of shape \(3, 1\); expected one class index an example"),
    ([0, 0, 0], "the training labels hold only class 0"),
    ([2.0, 2.0], "the training labels hold only class 2"),
    ([0, 3, 1], "label 3 is out of range for 3 classes"),
    ([0, -2, 1], "label -2 is out of range for 3 classes"),
  ],
)
def test_every_source_refuses_labels_that_are_not_class_indices(labels, match):
  origin = "TFDS 'made' in /data"
  with pytest.raises(DataError, match=match) as error:
    sources.check_data(_raw(labels), origin)
  assert str(error.value).startswith(f"{origin}: ")


def test_whole_float_labels_are_class_indices_made_int64():
  checked = sources.check_data(_raw([0.0, 2.0, 1.0], np.array([1, 1, 0], np.uint8)), "made")
  for labels, expected in ((checked.train_labels, [0, 2, 1]), (checked.test_labels, [1, 1, 0])):
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, expected)


def _embedded_csv(path, labels, pixel="0"):
  rows = [",".join([pixel] + ["0"] * 783 + [label]) for label in labels]
  path.write_text("\n".join(rows) + "\n")


def test_embedded_csv_with_a_fractional_label_is_refused_by_name(tmp_path):
  path = tmp_path / "digits.csv"
  _embedded_csv(path, ["0", "1", "4.7", "1"] * 3)
  _assert_refused(
    lambda: embedded_source.load_embedded(str(path)), path, "label 4.7 is not a class index"
  )


def test_embedded_csv_of_one_class_is_refused_by_name(tmp_path):
  path = tmp_path / "digits.csv"
  _embedded_csv(path, ["7"] * 12)
  _assert_refused(
    lambda: embedded_source.load_embedded(str(path)), path, "hold only class 7; a classifier"
  )


def test_embedded_csv_with_a_fractional_pixel_is_refused_by_name(tmp_path):
  path = tmp_path / "digits.csv"
  _embedded_csv(path, ["0", "1"] * 6, pixel="12.5")
  _assert_refused(
    lambda: embedded_source.load_embedded(str(path)), path, "pixel values must be whole numbers"
  )


@pytest.mark.parametrize(
  "name, match",
  [
    ("symmetric_solids", "'rotation' is a Tensor, not class indices"),
    ("nyu_depth_v2", "'depth' is a Tensor, not class indices"),
    ("celeb_a", "is not an image-classification dataset: it has no \\(image, label\\) pair"),
  ],
)
def test_tfds_datasets_whose_labels_are_not_class_indices_are_refused_by_name(
  tmp_path, name, match
):
  pytest.importorskip("tensorflow_datasets")
  config = _config("", source="tfds", name=name, tfds_data_dir=str(tmp_path))
  with pytest.raises(DataError, match=match) as error:
    input_pipeline.input_spec(config)
  assert str(error.value).startswith(f"TFDS {name!r}")
