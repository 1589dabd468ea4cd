"""Data that would be used silently wrong: float examples that are not finite, copies of one
IDX file that disagree, and a prepared TFDS dataset whose metadata is damaged.

Each must be refused in one DataError naming the file (or the source) and what to do, before
a step is trained; data that is sound must still load as before.
"""

import contextlib
import json
import os
import shutil
import threading

import numpy as np
import pytest
from test_logs import SMALL_PARAMS

from convnet import input_pipeline, sources
from convnet.errors import DataError
from convnet.sources import idx, shapes3d, spoken_digits
from tests.conftest import write_idx_dir


def _refused(call, match, starts):
  """`call` raises one line of DataError that starts with `starts` and matches `match`."""
  with pytest.raises(DataError, match=match) as error:
    call()
  message = str(error.value)
  assert message.startswith(f"{starts}"), message
  assert "\n" not in message, message
  return message


def _returns_within(call, seconds, fifo):
  """Runs `call` (which must raise or return) in a thread; fails if it blocks on `fifo`."""
  outcome = {}

  def run():
    try:
      outcome["value"] = call()
    except BaseException as e:  # handed back to the test
      outcome["error"] = e

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)
  if thread.is_alive():
    # Unblock the reader (a writer opening the FIFO), then fail.
    with contextlib.suppress(OSError):
      os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    thread.join(5)
    pytest.fail(f"blocked reading the FIFO {fifo}")
  if "error" in outcome:
    raise outcome["error"]
  return outcome.get("value")


# ----------------------------------------------------------------------------
# Float examples: NaN or infinity is refused at load, naming the source.


def _float_raw(train_images, test_images=None):
  test_images = np.zeros((4, 3, 1), np.float32) if test_images is None else test_images
  return sources.RawData(
    name="floats",
    train_images=train_images,
    train_labels=np.arange(len(train_images)) % 2,
    test_images=test_images,
    test_labels=np.arange(len(test_images)) % 2,
    num_classes=2,
    class_names=("a", "b"),
  )


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize(
  "value, kind", [(np.nan, "1 NaN"), (np.inf, "1 infinite"), (-np.inf, "1 infinite")]
)
def test_float_examples_that_are_not_finite_are_refused_naming_the_file(split, value, kind):
  images = {s: np.ones((6, 3, 1), np.float32) for s in ("train", "test")}
  images[split][4, 1, 0] = value
  raw = _float_raw(images["train"], images["test"])
  origin = {
    f"{s}_{k}": f"/data/{s}_{k}.npy" for s in ("train", "test") for k in ("images", "labels")
  }
  message = _refused(
    lambda: sources.check_data(raw, origin),
    f"1 of the 18 values of its {split} examples are not finite \\({kind}; the first in example 4",
    f"/data/{split}_images.npy: ",
  )
  assert "again" in message


def test_every_value_that_is_not_finite_is_counted():
  images = np.ones((6, 3, 1), np.float64)
  images[1, 0, 0] = images[3, 2, 0] = np.nan
  images[5, 1, 0] = np.inf
  _refused(
    lambda: sources.check_data(_float_raw(images), "made"),
    r"3 of the 18 values .* \(2 NaN, 1 infinite; the first in example 1\)",
    "made: ",
  )


def test_finite_floats_and_integers_pass_unchanged():
  big = np.full((6, 3, 1), np.finfo(np.float32).max, np.float32)
  checked = sources.check_data(_float_raw(big), "made")
  np.testing.assert_array_equal(checked.train_images, big)
  pixels = np.full((6, 3, 1), 255, np.uint8)
  assert sources.check_data(_float_raw(pixels), "made").train_images.dtype == np.uint8


def test_mnist1d_data_with_a_nan_is_refused_naming_its_generator(monkeypatch):
  data = pytest.importorskip("mnist1d.data")
  rng = np.random.default_rng(0)
  made = {
    "x": rng.normal(size=(20, 40)),
    "y": np.arange(20) % 10,
    "x_test": rng.normal(size=(10, 40)),
    "y_test": np.arange(10),
  }
  made["x_test"][7, 3] = np.nan
  monkeypatch.setattr(data, "make_dataset", lambda args: made)
  config = {"source": "mnist1d", "name": "mnist1d", "validation_fraction": 0.0}
  _refused(
    lambda: input_pipeline.load(config, seed=0),
    "1 of the 400 values of its test examples are not finite",
    "mnist1d.data.make_dataset: ",
  )


def test_shapes3d_volumes_with_an_infinity_are_refused_naming_their_generator(monkeypatch):
  volumes = np.zeros((4, 2, 2, 2, 1), np.float32)
  volumes[2, 1, 0, 1, 0] = np.inf
  made = {
    "train_images": volumes,
    "train_labels": np.array([0, 1, 2, 3]),
    "test_images": np.zeros((2, 2, 2, 2, 1), np.float32),
    "test_labels": np.array([0, 1]),
  }
  monkeypatch.setattr(shapes3d, "make_dataset", lambda: made)
  config = {"source": "shapes3d", "name": "shapes3d", "validation_fraction": 0.0}
  _refused(
    lambda: input_pipeline.load(config, seed=0),
    r"1 of the 32 values of its train examples are not finite \(1 infinite; the first in "
    "example 2",
    "convnet.sources.shapes3d.make_dataset: ",
  )


# ----------------------------------------------------------------------------
# The spectrogram cache: one that holds NaN is damaged, named, and left alone.

_PARAMS = SMALL_PARAMS


def _write_cache(root, value=None, split="train"):
  """A spectrogram cache of _PARAMS under `root`, laid out as the generator lays one out.

  `value` (NaN, say) is put into one spectrogram of `split`. Returns the cache file's path.
  """
  rng = np.random.default_rng(0)
  n = {"train": 10, "test": 10}
  arrays = {}
  for s in ("train", "test"):
    arrays[f"{s}_images"] = rng.normal(size=(n[s], *spoken_digits.INPUT_SHAPE)).astype(np.float32)
    arrays[f"{s}_labels"] = np.arange(n[s], dtype=np.int64)
    arrays[f"{s}_voices"] = np.full(n[s], 0 if s == "train" else 1, np.int64)
  arrays["voices"] = np.array(_PARAMS.voices)
  if value is not None:
    arrays[f"{split}_images"][3, 5, 7, 0] = value
  version = "eSpeak NG text-to-speech: 1.0"
  folder = spoken_digits.cache_dir(_PARAMS, version, str(root))
  os.makedirs(folder)
  np.savez(os.path.join(folder, spoken_digits.CACHE_FILE), **arrays)
  record = spoken_digits.fingerprint(_PARAMS, version)
  with open(os.path.join(folder, "params.json"), "w") as f:
    json.dump(record, f)
  return os.path.join(folder, spoken_digits.CACHE_FILE)


@pytest.fixture
def cache_root(monkeypatch, tmp_path):
  """A cache folder, with no espeak-ng: the cache of these parameters is found as it is."""
  monkeypatch.setenv("CONVNET_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(spoken_digits, "PRESETS", {"spoken_digits": _PARAMS})
  monkeypatch.setattr(spoken_digits.shutil, "which", lambda name: None)
  return tmp_path / "cache"


_SPOKEN = {"source": "spoken_digits", "name": "spoken_digits", "validation_fraction": 0.2}


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_a_spectrogram_cache_with_values_that_are_not_finite_is_refused_and_left(
  cache_root, split, value
):
  path = _write_cache(cache_root, value, split)
  before = open(path, "rb").read()
  message = _refused(
    lambda: input_pipeline.load(_SPOKEN, seed=0),
    f"damaged spoken-digit cache \\(1 of the 25,600 values of its {split} spectrograms are "
    "not finite",
    f"{path}: ",
  )
  assert message.endswith("delete its folder to generate it again"), message
  assert open(path, "rb").read() == before


def test_a_sound_spectrogram_cache_loads(cache_root):
  path = _write_cache(cache_root)
  with np.load(path) as cached:
    test_images = cached["test_images"]
  dataset = input_pipeline.load(_SPOKEN, seed=0)
  np.testing.assert_array_equal(dataset.test.images, test_images)
  assert (len(dataset.train), len(dataset.validation)) == (8, 2)


def test_a_cache_record_nested_too_deep_is_passed_over(cache_root):
  path = _write_cache(cache_root)
  other = cache_root / "spoken_digits-v1-000000000000"
  other.mkdir()
  (other / "params.json").write_text("[" * 100_000 + "]" * 100_000)
  assert spoken_digits.load_arrays(_PARAMS, str(cache_root))[1] == path


def test_a_fifo_where_the_cache_file_goes_is_refused_not_read(monkeypatch, tmp_path):
  # The cache folder's name holds espeak-ng's version: a fixed one, so no espeak-ng is needed.
  monkeypatch.setattr(spoken_digits, "espeak_version", lambda: "eSpeak NG 1.51")
  folder = spoken_digits.cache_dir(_PARAMS, spoken_digits.espeak_version(), str(tmp_path))
  os.makedirs(folder)
  fifo = os.path.join(folder, spoken_digits.CACHE_FILE)
  os.mkfifo(fifo)
  monkeypatch.setattr(spoken_digits, "generate", lambda params: pytest.fail("generated"))
  with pytest.raises(DataError, match="not a regular file; delete its folder") as error:
    _returns_within(lambda: spoken_digits.load_arrays(_PARAMS, str(tmp_path)), 10, fifo)
  assert str(error.value).startswith(f"{fifo}: ")


# ----------------------------------------------------------------------------
# IDX files under several names: every copy is read, and copies must agree.

# The names one file may have, as `idx.find_idx_copies` orders them.
_NAMES = {
  "plain": "train-labels-idx1-ubyte",
  "gz": "train-labels-idx1-ubyte.gz",
  "dotted": "train-labels.idx1-ubyte",
  "dotted.gz": "train-labels.idx1-ubyte.gz",
}
_PAIRS = [("plain", "gz"), ("plain", "dotted"), ("gz", "dotted.gz"), ("plain", "dotted.gz")]


def _idx_folder(tmp_path):
  """A small IDX folder, gzipped (20 train, 8 test images of 6x5, 4 classes); its arrays."""
  rng = np.random.default_rng(0)
  arrays = {
    "train_images": rng.integers(0, 256, (20, 6, 5), dtype=np.uint8),
    "train_labels": np.arange(20, dtype=np.uint8) % 4,
  }
  arrays["test_images"], arrays["test_labels"] = (
    arrays["train_images"][:8],
    arrays["train_labels"][:8],
  )
  write_idx_dir(tmp_path, **arrays)
  return arrays


def _idx_config(idx_dir):
  return {"source": "idx", "name": "copies", "idx_dir": str(idx_dir), "validation_fraction": 0.0}


def _ways(idx_dir):
  return {
    "load_idx_dir": lambda: idx.load_idx_dir(idx_dir),
    "input_pipeline.load": lambda: input_pipeline.load(_idx_config(idx_dir), seed=0),
    "input_spec": lambda: input_pipeline.input_spec(_idx_config(idx_dir)),
  }


def _place(tmp_path, labels_by_name):
  """Replaces the training labels by the given copies, {name: labels}."""
  os.remove(tmp_path / _NAMES["gz"])
  for name, labels in labels_by_name.items():
    idx.write_idx(tmp_path / _NAMES[name], labels)


@pytest.mark.parametrize("first, second", _PAIRS)
@pytest.mark.parametrize("way", ["load_idx_dir", "input_pipeline.load", "input_spec"])
def test_copies_of_a_label_file_that_disagree_stop_the_run_naming_both(
  tmp_path, first, second, way
):
  labels = _idx_folder(tmp_path)["train_labels"]
  other = labels.copy()
  other[13] = (other[13] + 1) % 4
  _place(tmp_path, {first: labels, second: other})
  message = _refused(
    _ways(tmp_path)[way],
    r"disagrees with .*another copy of the same file: 1 of its 20 labels differ, the first at "
    r"index 13 \(1 against 2\); keep the right one and remove the other",
    f"{tmp_path / _NAMES[first]}: ",
  )
  assert str(tmp_path / _NAMES[second]) in message


def test_copies_of_an_image_file_that_disagree_in_one_pixel_are_refused(tmp_path):
  images = _idx_folder(tmp_path)["train_images"]
  changed = images.copy()
  changed[[2, 9], 3, 4] ^= 1
  idx.write_idx(tmp_path / "train-images-idx3-ubyte", changed)
  for way in ("load_idx_dir", "input_pipeline.load"):
    _refused(
      _ways(tmp_path)[way],
      "2 of its 20 examples differ, the first at index 2; keep the right one",
      f"{tmp_path / 'train-images-idx3-ubyte'}: disagrees with "
      f"{tmp_path / 'train-images-idx3-ubyte.gz'}",
    )


def test_copies_of_an_image_file_of_other_shapes_are_refused_from_their_headers(tmp_path):
  images = _idx_folder(tmp_path)["train_images"]
  idx.write_idx(tmp_path / "train-images.idx3-ubyte", images[:19])
  for way in _ways(tmp_path).values():
    _refused(
      way,
      r"shape \(20, 6, 5\) of uint8 against \(19, 6, 5\) of uint8",
      f"{tmp_path / 'train-images-idx3-ubyte.gz'}: disagrees with",
    )


@pytest.mark.parametrize("names", [("plain", "gz"), ("plain", "gz", "dotted", "dotted.gz")])
def test_copies_that_agree_load_as_one_file_does(tmp_path, names):
  arrays = _idx_folder(tmp_path)
  alone = idx.load_idx_dir(tmp_path)
  _place(tmp_path, dict.fromkeys(names, arrays["train_labels"]))
  idx.write_idx(tmp_path / "t10k-images-idx3-ubyte", arrays["test_images"])
  both = idx.load_idx_dir(tmp_path)
  for key in ("train_images", "train_labels", "test_images", "test_labels"):
    np.testing.assert_array_equal(getattr(both, key), getattr(alone, key))
  assert input_pipeline.input_spec(_idx_config(tmp_path)) == ((6, 5, 1), 4)


def test_a_damaged_copy_is_refused_by_name_though_the_first_is_sound(tmp_path):
  labels = _idx_folder(tmp_path)["train_labels"]
  _place(tmp_path, {"plain": labels})
  damaged = tmp_path / _NAMES["dotted"]
  damaged.write_bytes(b"\x00\x00\x08\x01" + (20).to_bytes(4, "big"))
  for way in _ways(tmp_path).values():
    _refused(way, "truncated: its header promises 20 bytes", f"{damaged}: ")


def test_a_folder_with_an_idx_file_name_is_refused_not_passed_over(tmp_path):
  _idx_folder(tmp_path)
  (tmp_path / _NAMES["plain"]).mkdir()
  for way in _ways(tmp_path).values():
    _refused(
      way, "a folder, where an IDX file should be; move it away", f"{tmp_path / _NAMES['plain']}: "
    )


def test_a_fifo_with_an_idx_file_name_is_refused_not_read(tmp_path):
  _idx_folder(tmp_path)
  fifo = tmp_path / _NAMES["plain"]
  os.mkfifo(fifo)
  match = r"a named pipe \(FIFO\), where an IDX file should be"
  for way in _ways(tmp_path).values():
    with pytest.raises(DataError, match=match):
      _returns_within(way, 10, fifo)
  with pytest.raises(DataError, match=match):
    _returns_within(lambda: idx.read_idx(fifo), 10, fifo)


# ----------------------------------------------------------------------------
# TFDS: a prepared dataset's metadata is checked before TFDS reads it.

tfds = pytest.importorskip("tensorflow_datasets")


def _tfds_config(data_dir, name="mnist"):
  return {
    "source": "tfds",
    "name": name,
    "tfds_data_dir": str(data_dir),
    "tfds_manual_dir": "",
    "train_split": "train",
    "test_split": "test",
    "validation_fraction": 0.0,
  }


def _dataset_info(version):
  """A dataset_info.json as TFDS writes one for MNIST prepared as ArrayRecord."""
  split = {"filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}
  return {
    "description": "The MNIST database of handwritten digits.",
    "fileFormat": "array_record",
    "moduleName": "convnet.sources.tfds",
    "name": "mnist",
    "splits": [
      {**split, "name": "train", "numBytes": "27540", "shardLengths": ["30"]},
      {**split, "name": "test", "numBytes": "9180", "shardLengths": ["10"]},
    ],
    "supervisedKeys": {"tuple": {"items": [{"featureKey": "image"}, {"featureKey": "label"}]}},
    "version": version,
  }


@pytest.fixture
def prepared(tmp_path):
  """A data_dir in which MNIST looks prepared: its metadata, without its records."""
  version = str(tfds.builder_cls("mnist").VERSION)
  folder = tmp_path / "mnist" / version
  folder.mkdir(parents=True)
  (folder / "dataset_info.json").write_text(json.dumps(_dataset_info(version)))
  (folder / "features.json").write_text('{"featuresDict": {}}')
  return folder


def _info_cases(version):
  info = _dataset_info(version)
  return {
    "garbage": ("dataset_info.json", "garbage{", "is not JSON"),
    "empty": ("dataset_info.json", "", "is not JSON"),
    "a list": ("dataset_info.json", "[1]", ": holds a JSON list, not the object TFDS writes"),
    "no version": ("dataset_info.json", "{}", ": not a TFDS dataset info: it gives no version"),
    "another version": (
      "dataset_info.json",
      json.dumps({**info, "version": "1.0.0"}),
      f"it gives version '1.0.0', not its folder's '{version}'",
    ),
    "no splits": (
      "dataset_info.json",
      json.dumps({"version": version}),
      "not a TFDS dataset info: it lists no splits",
    ),
    "unnamed splits": (
      "dataset_info.json",
      json.dumps({**info, "splits": [{"numBytes": "1"}]}),
      "it lists no splits",
    ),
    "deep": ("dataset_info.json", "[" * 200_000 + "]" * 200_000, "nests JSON more than 64"),
    "garbage features": ("features.json", "\x00", "features.json is not JSON"),
  }


@pytest.mark.parametrize("case", list(_info_cases("3.0.1")))
@pytest.mark.parametrize("way", ["input_spec", "load"])
def test_damaged_tfds_metadata_is_one_line_naming_the_file_and_the_remedy(prepared, case, way):
  file_name, text, match = _info_cases(prepared.name)[case]
  (prepared / file_name).write_text(text)
  config = _tfds_config(prepared.parent.parent)
  call = {
    "input_spec": lambda: input_pipeline.input_spec(config),
    "load": lambda: input_pipeline.load(config, seed=0),
  }[way]
  message = _refused(call, match, f"{prepared / file_name}")
  assert message.endswith(
    f"delete {prepared} to prepare the dataset again, or point data.tfds_data_dir at another folder"
  ), message


def test_a_fifo_or_folder_where_dataset_info_json_goes_is_refused_not_read(prepared):
  path = prepared / "dataset_info.json"
  path.unlink()
  path.mkdir()
  config = _tfds_config(prepared.parent.parent)
  _refused(lambda: input_pipeline.input_spec(config), "is a folder, not a file", f"{path}")
  path.rmdir()
  os.mkfifo(path)
  with pytest.raises(DataError, match=r"is a named pipe \(FIFO\), not a file.*delete") as error:
    _returns_within(lambda: input_pipeline.load(config, seed=0), 10, path)
  assert str(error.value).startswith(f"{path}")


def test_sound_tfds_metadata_is_read_and_missing_records_are_named(prepared):
  config = _tfds_config(prepared.parent.parent)
  assert input_pipeline.input_spec(config) == ((28, 28, 1), 10)
  _refused(
    lambda: input_pipeline.load(config, seed=0),
    r"TFDS cannot read the 'train' split of 'mnist' prepared there \(.*\); delete .* to prepare "
    "the dataset again",
    f"{prepared}: ",
  )


def test_damage_in_another_datasets_folder_is_not_read(prepared):
  other = prepared.parent.parent / "kmnist" / "3.0.1"
  other.mkdir(parents=True)
  (other / "dataset_info.json").write_text("garbage{")
  assert input_pipeline.input_spec(_tfds_config(prepared.parent.parent)) == ((28, 28, 1), 10)


@pytest.mark.slow
def test_a_prepared_dataset_with_damaged_metadata_is_prepared_again_once_deleted(
  tmp_path, idx_dir, monkeypatch
):
  """The remedy the message gives works: delete the folder it names, and the next run prepares."""
  from convnet.sources import tfds as tfds_source

  monkeypatch.setattr(tfds_source, "network_reachable", lambda *a, **k: "no network in tests")
  config = {**_tfds_config(tmp_path / "tfds"), "tfds_manual_dir": str(idx_dir)}
  first = input_pipeline.load(config, seed=0)
  folder = tmp_path / "tfds" / "mnist" / str(tfds.builder_cls("mnist").VERSION)
  info = folder / "dataset_info.json"
  info.write_text(info.read_text()[:100])
  message = _refused(lambda: input_pipeline.load(config, seed=0), "is not JSON", f"{info} ")
  assert f"delete {folder} to prepare the dataset again" in message
  shutil.rmtree(folder)
  again = input_pipeline.load(config, seed=0)
  np.testing.assert_array_equal(again.test.labels, first.test.labels)
