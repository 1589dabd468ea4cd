"""Data sources (IDX files, the embedded digits, MNIST-1D, TFDS prepared offline) and splits."""

import gzip
import os

import numpy as np
import pytest

from convnet import input_pipeline
from convnet.errors import ConfigError, DataError
from convnet.sources import embedded as embedded_source
from convnet.sources import idx
from convnet.sources import mnist1d as mnist1d_source
from convnet.sources import tfds as tfds_source
from tests.conftest import write_idx_dir


def _data_config(**overrides):
  config = {
    "source": "embedded",
    "name": "mnist",
    "tfds_data_dir": "",
    "tfds_manual_dir": "",
    "idx_dir": "",
    "train_split": "train",
    "test_split": "test",
    "validation_fraction": 0.15,
  }
  config.update(overrides)
  return config


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_idx_round_trip(tmp_path, name, dtype):
  array = (np.arange(2 * 3 * 4) * 7 % 200).astype(dtype).reshape(2, 3, 4)
  idx.write_idx(tmp_path / name, array)
  read = idx.read_idx(tmp_path / name)
  assert read.shape == (2, 3, 4)
  np.testing.assert_array_equal(read, array)


def test_idx_header_is_the_standard_one(tmp_path):
  idx.write_idx(tmp_path / "labels", np.array([3, 1, 4], np.uint8))
  data = (tmp_path / "labels").read_bytes()
  assert data == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])


def test_idx_dir_loads_with_validation_split(idx_dir):
  dataset = input_pipeline.load(_data_config(source="idx", idx_dir=str(idx_dir)), seed=0)
  assert dataset.input_shape == (28, 28, 1)
  assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (255, 45, 100)
  assert dataset.num_classes == 10
  assert dataset.train.images.dtype == np.float32
  assert 0.0 <= dataset.train.images.min() and dataset.train.images.max() <= 1.0
  assert dataset.train.images.max() == 1.0  # 255 maps to exactly 1
  assert dataset.train.labels.dtype == np.int32


def test_idx_files_take_class_names_from_the_dataset_name(idx_dir):
  digits = input_pipeline.load(_data_config(source="idx", idx_dir=str(idx_dir)), seed=0)
  assert digits.class_names == tuple("0123456789")
  config = _data_config(source="idx", idx_dir=str(idx_dir), name="fashion_mnist")
  fashion = input_pipeline.load(config, seed=0)
  assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"
  np.testing.assert_array_equal(fashion.test.labels, digits.test.labels)


def test_uncompressed_idx_files(tmp_path, embedded):
  write_idx_dir(
    tmp_path,
    embedded.train_images[:20, ..., 0],
    embedded.train_labels[:20].astype(np.uint8),
    embedded.test_images[:10, ..., 0],
    embedded.test_labels[:10].astype(np.uint8),
    gz=False,
  )
  raw = idx.load_idx_dir(tmp_path)
  np.testing.assert_array_equal(raw.train_images, embedded.train_images[:20])


def test_validation_split_is_deterministic_by_seed(idx_dir):
  config = _data_config(source="idx", idx_dir=str(idx_dir))
  a, b, c = (input_pipeline.load(config, seed) for seed in (0, 0, 1))
  np.testing.assert_array_equal(a.validation.images, b.validation.images)
  np.testing.assert_array_equal(a.train.labels, b.train.labels)
  assert not np.array_equal(a.validation.images, c.validation.images)
  np.testing.assert_array_equal(a.test.images, c.test.images)  # the test split never moves
  # Validation and training images come from disjoint rows of the training file.
  raw = idx.load_idx_dir(idx_dir)
  rows = {img.tobytes(): i for i, img in enumerate(input_pipeline.scale(raw.train_images))}
  train_rows = {rows[img.tobytes()] for img in a.train.images}
  val_rows = {rows[img.tobytes()] for img in a.validation.images}
  assert not train_rows & val_rows and len(train_rows | val_rows) == 300


def test_embedded_digits():
  dataset = input_pipeline.load(_data_config(), seed=3)
  assert dataset.input_shape == (28, 28, 1)
  assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (3400, 600, 1000)
  assert np.bincount(dataset.test.labels).tolist() == [100] * 10
  again = input_pipeline.load(_data_config(), seed=4)
  np.testing.assert_array_equal(dataset.test.images, again.test.images)


@pytest.fixture(scope="module")
def mnist1d():
  """MNIST-1D and its shuffled control, generated once for the module."""
  return {shuffled: mnist1d_source.load_mnist1d(shuffled) for shuffled in (False, True)}


def test_mnist1d_shapes_and_splits(mnist1d):
  raw = mnist1d[False]
  assert raw.train_images.shape == (4000, 40, 1) and raw.test_images.shape == (1000, 40, 1)
  assert raw.train_images.dtype == np.float32 and raw.num_classes == 10
  assert set(np.unique(raw.test_labels)) == set(range(10))
  everything = np.concatenate([raw.train_images, raw.test_images])
  np.testing.assert_allclose([everything.mean(), everything.std()], [0, 1], atol=1e-3)
  config = _data_config(source="mnist1d", name="mnist1d")
  dataset = input_pipeline.load(config, seed=0)
  assert dataset.input_shape == (40, 1) == input_pipeline.input_spec(config)[0]
  assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (3400, 600, 1000)
  np.testing.assert_array_equal(dataset.test.images, raw.test_images)  # floats kept as they are


@pytest.mark.slow
def test_mnist1d_is_the_same_every_time_and_leaves_global_generators_alone(mnist1d):
  import random

  np.random.seed(123)
  random.seed(123)
  expected = (np.random.random(), random.random())
  np.random.seed(123)
  random.seed(123)
  again = mnist1d_source.load_mnist1d()
  assert (np.random.random(), random.random()) == expected
  np.testing.assert_array_equal(again.train_images, mnist1d[False].train_images)
  np.testing.assert_array_equal(again.test_labels, mnist1d[False].test_labels)
  a, b, c = (
    input_pipeline.load(_data_config(source="mnist1d", name="mnist1d"), seed) for seed in (0, 0, 1)
  )
  np.testing.assert_array_equal(a.validation.images, b.validation.images)
  assert not np.array_equal(a.validation.labels, c.validation.labels)


def test_mnist1d_shuffled_permutes_positions_the_same_way_everywhere(mnist1d):
  plain, shuffled = mnist1d[False], mnist1d[True]
  np.testing.assert_array_equal(plain.train_labels, shuffled.train_labels)
  assert not np.allclose(plain.train_images, shuffled.train_images)
  # One permutation of the 40 positions maps every plain sequence, train and test, onto its
  # shuffled one: find it from the first sequence and check it on all the others.
  first_plain, first_shuffled = plain.train_images[0, :, 0], shuffled.train_images[0, :, 0]
  permutation = [int(np.argmin(np.abs(first_plain - v))) for v in first_shuffled]
  assert sorted(permutation) == list(range(40))
  for split in ("train", "test"):
    np.testing.assert_allclose(
      getattr(plain, f"{split}_images")[:, permutation],
      getattr(shuffled, f"{split}_images"),
      atol=1e-6,
    )


def test_mnist1d_names_its_variants():
  with pytest.raises(ConfigError, match="data.name='mnist'.*mnist1d_shuffled"):
    input_pipeline.load(_data_config(source="mnist1d", name="mnist"), 0)
  with pytest.raises(ConfigError, match="data.name='mnist'"):
    input_pipeline.input_spec(_data_config(source="mnist1d", name="mnist"))


@pytest.mark.parametrize("fraction", [1.0, -0.1, 0.9999999])
def test_impossible_validation_fraction(idx_dir, fraction):
  with pytest.raises(ConfigError, match="data.validation_fraction"):
    input_pipeline.load(
      _data_config(source="idx", idx_dir=str(idx_dir), validation_fraction=fraction), 0
    )


def test_unknown_source():
  with pytest.raises(ConfigError, match="data.source='s3'"):
    input_pipeline.load(_data_config(source="s3"), 0)


def test_idx_source_needs_a_folder():
  with pytest.raises(ConfigError, match="data.idx_dir is empty"):
    input_pipeline.load(_data_config(source="idx"), 0)


# ----------------------------------------------------------------------------
# Bad IDX data is rejected with the file's name.


def test_missing_file(idx_dir):
  os.remove(idx_dir / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
    idx.load_idx_dir(idx_dir)


def test_missing_folder(tmp_path):
  with pytest.raises(DataError, match="no such folder"):
    idx.load_idx_dir(tmp_path / "nowhere")


def test_wrong_magic_number(idx_dir):
  path = idx_dir / "train-images-idx3-ubyte.gz"
  data = bytearray(gzip.decompress(path.read_bytes()))
  data[0:4] = b"\x89PNG"
  path.write_bytes(gzip.compress(bytes(data)))
  with pytest.raises(DataError, match=f"{path}: wrong magic number 0x89504e47"):
    idx.load_idx_dir(idx_dir)


def test_truncated_data(idx_dir):
  path = idx_dir / "train-images-idx3-ubyte.gz"
  data = gzip.decompress(path.read_bytes())
  path.write_bytes(gzip.compress(data[:-100]))
  with pytest.raises(DataError, match=f"{path}: truncated: .* 235200 bytes .* holds 235100"):
    idx.load_idx_dir(idx_dir)


def test_truncated_gzip_stream(idx_dir):
  path = idx_dir / "train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:5000])
  with pytest.raises(DataError, match=f"{path}: corrupt or truncated gzip"):
    idx.load_idx_dir(idx_dir)


def test_trailing_bytes(idx_dir):
  path = idx_dir / "t10k-labels-idx1-ubyte.gz"
  path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + b"\x00\x01"))
  with pytest.raises(DataError, match=f"{path}: 2 unexpected bytes"):
    idx.load_idx_dir(idx_dir)


def test_label_count_mismatch(tmp_path, embedded):
  paths = write_idx_dir(
    tmp_path,
    embedded.train_images[:30, ..., 0],
    embedded.train_labels[:29].astype(np.uint8),
    embedded.test_images[:10, ..., 0],
    embedded.test_labels[:10].astype(np.uint8),
  )
  with pytest.raises(DataError, match="holds 30 images but .*train-labels.* holds 29 labels"):
    idx.load_idx_dir(tmp_path)
  assert os.path.exists(paths["train_labels"])


def test_test_label_out_of_range(tmp_path, embedded):
  labels = embedded.test_labels[:10].astype(np.uint8)
  labels[3] = 12  # the training labels only go up to 9
  write_idx_dir(
    tmp_path,
    embedded.train_images[:30, ..., 0],
    embedded.train_labels[:30].astype(np.uint8),
    embedded.test_images[:10, ..., 0],
    labels,
  )
  with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: label 12 is out of range for 10"):
    idx.load_idx_dir(tmp_path, num_classes=10)


def test_empty_dataset(tmp_path):
  write_idx_dir(
    tmp_path,
    np.zeros((0, 28, 28), np.uint8),
    np.zeros((0,), np.uint8),
    np.zeros((0, 28, 28), np.uint8),
    np.zeros((0,), np.uint8),
  )
  with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: the train split is empty"):
    idx.load_idx_dir(tmp_path)


def test_images_of_wrong_rank(tmp_path, embedded):
  write_idx_dir(
    tmp_path,
    np.zeros((5,), np.uint8),
    np.zeros((5,), np.uint8),
    np.zeros((5, 28, 28), np.uint8),
    np.zeros((5,), np.uint8),
  )
  with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: expected images of rank 3"):
    idx.load_idx_dir(tmp_path)


def test_bad_embedded_file(tmp_path):
  path = tmp_path / "digits.csv"
  path.write_text("1,2,3\n4,5,6\n")
  with pytest.raises(DataError, match=f"{path}: expected rows of 784 pixels"):
    embedded_source.load_embedded(str(path))


# ----------------------------------------------------------------------------
# TFDS, for real, with no network.

tfds = pytest.importorskip("tensorflow_datasets")


def _no_network(*args, **kwargs):
  raise AssertionError("the test tried to reach the network")


def _sorted_rows(images, labels):
  keys = [img.tobytes() + bytes([label]) for img, label in zip(images, labels, strict=True)]
  return sorted(keys)


def test_tfds_prepared_from_local_idx_files_reads_by_name(tmp_path, idx_dir, monkeypatch):
  monkeypatch.setattr(tfds_source, "network_reachable", _no_network)
  data_dir = str(tmp_path / "tfds")
  config = _data_config(
    source="tfds", name="mnist", tfds_data_dir=data_dir, tfds_manual_dir=str(idx_dir)
  )
  dataset = input_pipeline.load(config, seed=0)
  assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (255, 45, 100)
  assert dataset.num_classes == 10 and dataset.input_shape == (28, 28, 1)
  assert os.path.isdir(os.path.join(data_dir, "mnist", "3.0.1"))

  # The prepared dataset is TFDS's own `mnist`, read by name with no manual_dir.
  source = tfds.data_source("mnist", data_dir=data_dir, download=False)
  assert len(source["train"]) == 300 and len(source["test"]) == 100
  raw = tfds_source.load_tfds("mnist", data_dir=data_dir)
  expected = idx.load_idx_dir(idx_dir)
  assert _sorted_rows(raw.test_images, raw.test_labels) == _sorted_rows(
    expected.test_images, expected.test_labels
  )
  assert _sorted_rows(raw.train_images, raw.train_labels) == _sorted_rows(
    expected.train_images, expected.train_labels
  )


def test_tfds_preparation_rejects_bad_idx_files(tmp_path, idx_dir):
  path = idx_dir / "train-labels-idx1-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-20])
  with pytest.raises(DataError, match=str(path)):
    tfds_source.prepare_tfds_from_idx("fashion_mnist", str(idx_dir), str(tmp_path / "tfds"))
  assert not os.path.exists(tmp_path / "tfds" / "fashion_mnist" / "3.0.1")


def test_tfds_preparation_only_for_the_mnist_family(tmp_path, idx_dir):
  with pytest.raises(DataError, match="TFDS 'cifar10' cannot be prepared from IDX files"):
    tfds_source.prepare_tfds_from_idx("cifar10", str(idx_dir), str(tmp_path))


def test_tfds_offline_names_the_offline_sources(tmp_path, monkeypatch):
  monkeypatch.setattr(
    tfds_source, "network_reachable", lambda *a, **k: "no network: cannot reach the host"
  )
  config = _data_config(source="tfds", name="kmnist", tfds_data_dir=str(tmp_path))
  with pytest.raises(DataError) as error:
    input_pipeline.load(config, seed=0)
  message = str(error.value)
  assert message.startswith("TFDS could not download 'kmnist' (no network: cannot reach the host)")
  for option in ("--config.data.source=embedded", "--config.data.idx_dir=DIR", "tfds_manual_dir"):
    assert option in message
  assert len(message.splitlines()) <= 6


def test_unknown_tfds_name(tmp_path):
  config = _data_config(source="tfds", name="no_such_dataset_anywhere", tfds_data_dir=str(tmp_path))
  with pytest.raises(DataError, match="data.name='no_such_dataset_anywhere' is not a TFDS dataset"):
    input_pipeline.load(config, seed=0)


def _dataset(train_images, test_images):
  def split(images):
    return input_pipeline.Split(images.astype(np.float32), np.zeros(len(images), np.int32))

  return input_pipeline.Dataset(
    "toy", split(train_images), split(train_images[:0]), split(test_images), 10, ()
  )


def test_top_variance_keeps_the_pixels_that_vary_most():
  rng = np.random.default_rng(0)
  scales = np.zeros((4, 4, 1))
  scales[1, 2], scales[3, 0], scales[0, 3] = 3.0, 2.0, 1.0  # three pixels vary, by these amounts
  images = (rng.normal(size=(500, 4, 4, 1)) * scales).astype(np.float32)
  reduced = input_pipeline.select_features(_dataset(images, images[:7]), "top_variance", 2)
  # Flat pixel indices 6 (1, 2) and 12 (3, 0), in pixel order.
  np.testing.assert_array_equal(reduced.train.images, images.reshape(500, 16)[:, [6, 12]])
  np.testing.assert_array_equal(reduced.test.images, images[:7].reshape(7, 16)[:, [6, 12]])


def test_pca_projects_on_the_directions_of_largest_variance():
  rng = np.random.default_rng(0)
  direction = np.array([3.0, 4.0, 0.0, 0.0]) / 5  # most of the variance lies along this
  train = np.outer(rng.normal(size=1000) * 5, direction) + rng.normal(size=(1000, 4)) * 0.1
  data = _dataset(train.reshape(1000, 2, 2, 1), train[:5].reshape(5, 2, 2, 1))
  one = input_pipeline.select_features(data, "pca", 1)
  assert one.train.images.shape == (1000, 1) and one.test.images.shape == (5, 1)
  centred = train - train.mean(0)
  np.testing.assert_allclose(np.abs(one.train.images[:, 0]), np.abs(centred @ direction), atol=0.1)
  full = input_pipeline.select_features(data, "pca", 4)  # a rotation: distances are kept
  np.testing.assert_allclose(
    np.linalg.norm(full.test.images[0] - full.test.images[1]),
    np.linalg.norm(train[0] - train[1]),
    rtol=1e-4,
  )
  variances = full.train.images.var(0)
  assert np.all(np.diff(variances) <= 1e-6)  # components by decreasing variance


@pytest.mark.parametrize(
  "features, num_features, message",
  [
    ("pca", 0, r"data.num_features=0 must be in \[1, 784\]"),
    ("top_variance", 785, r"data.num_features=785 must be in \[1, 784\]"),
    ("wavelets", 5, "data.features='wavelets' is not one of pixels, pca, top_variance"),
  ],
)
def test_bad_feature_settings_name_the_field(features, num_features, message):
  with pytest.raises(ConfigError, match=message):
    input_pipeline.load(_data_config(features=features, num_features=num_features), 0)
