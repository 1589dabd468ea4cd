"""The "canvas" source: images of a base source pasted at random places on a larger canvas."""

import json
import os
import re
import shlex
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from convnet import config_checks, input_pipeline, sources, workdir
from convnet.configs import mnist
from convnet.errors import ConfigError
from convnet.sources import canvas, embedded
from tests.conftest import REPO, cpu_env


def _data_config(**fields) -> dict:
  """The book config's `data` as a dict, on a canvas over the embedded digits, with `fields`."""
  data = mnist.get_config().data.to_dict()
  data["source"] = "canvas"
  data["canvas"] |= {"base": "embedded", **fields}
  return data


@pytest.fixture(scope="module")
def digits():
  return embedded.load_embedded()


@pytest.fixture(scope="module")
def on_canvas():
  return canvas.load(_data_config())


def test_shape_labels_and_classes_are_the_base_s(digits, on_canvas):
  assert on_canvas.train_images.shape == (len(digits.train_labels), 56, 56, 1)
  assert on_canvas.test_images.shape == (len(digits.test_labels), 56, 56, 1)
  assert on_canvas.train_images.dtype == np.uint8
  np.testing.assert_array_equal(on_canvas.train_labels, digits.train_labels)
  np.testing.assert_array_equal(on_canvas.test_labels, digits.test_labels)
  assert (on_canvas.num_classes, on_canvas.class_names) == (10, digits.class_names)
  # What input_spec says, without the data; and the models' input shape follows it.
  assert input_pipeline.input_spec(_data_config()) == ((56, 56, 1), 10)
  assert input_pipeline.input_spec(_data_config(size=40)) == ((40, 40, 1), 10)
  assert sources.title(_data_config(clutter=3)) == (
    "embedded MNIST on a 56x56 canvas, 3 pieces of clutter"
  )
  permuted = dict(_data_config(), permute_pixels=7)
  assert (
    sources.title(permuted) == "embedded MNIST on a 56x56 canvas, pixels permuted (permutation 7)"
  )


def test_each_digit_is_whole_and_alone_at_its_drawn_position(digits, on_canvas):
  setting = canvas.settings(_data_config())
  for index, split in enumerate(canvas.SPLITS):
    images = getattr(digits, f"{split}_images")
    _, positions = canvas.paste(images, 56, 0, canvas.rng(setting, index))
    made = getattr(on_canvas, f"{split}_images")
    for i in range(0, len(images), 97):
      row, column = positions[i]
      np.testing.assert_array_equal(made[i, row : row + 28, column : column + 28], images[i])
      outside = made[i].copy()
      outside[row : row + 28, column : column + 28] = 0
      assert not outside.any()
    # Positions cover the canvas: every row and column offset 0..28 is drawn.
    assert set(positions[:, 0]) == set(range(29)) and set(positions[:, 1]) == set(range(29))


def test_positions_are_drawn_by_the_seed_and_the_split(digits, on_canvas):
  again = canvas.load(_data_config())
  np.testing.assert_array_equal(again.train_images, on_canvas.train_images)
  np.testing.assert_array_equal(again.test_images, on_canvas.test_images)
  setting = canvas.settings(_data_config())
  images = digits.test_images
  test_draw = canvas.paste(images, 56, 0, canvas.rng(setting, 1))
  np.testing.assert_array_equal(test_draw[0], on_canvas.test_images)
  # Another seed, other positions; and train and test come from separate streams of a seed.
  other_seed = canvas.paste(images, 56, 0, canvas.rng(canvas.settings(_data_config(seed=1)), 1))
  train_draw = canvas.paste(images, 56, 0, canvas.rng(setting, 0))
  for other in (other_seed, train_draw):
    assert (other[1] != test_draw[1]).any(axis=1).mean() > 0.9
    assert (other[0] != test_draw[0]).any(axis=(1, 2, 3)).mean() > 0.9


def test_clutter_lies_under_the_object_and_outside_it():
  rng = np.random.default_rng(0)
  images = np.zeros((200, 28, 28, 1), np.uint8)
  images[:, 6:22, 6:22] = rng.integers(1, 256, (200, 16, 16, 1))  # objects with a zero border
  made, positions = canvas.paste(images, 56, 4, np.random.default_rng(5))
  clean, same_positions = canvas.paste(images, 56, 0, np.random.default_rng(5))
  np.testing.assert_array_equal(positions, same_positions)  # clutter draws after positions
  outside = 0
  for i, (row, column) in enumerate(positions):
    window = made[i, row : row + 28, column : column + 28]
    # The object stays on top where it is not zero; clutter may show in its zero border.
    np.testing.assert_array_equal(window[6:22, 6:22], images[i, 6:22, 6:22])
    rest = made[i].copy()
    rest[row + 6 : row + 22, column + 6 : column + 22] = 0
    outside += bool(rest.any())
    assert not (clean[i] != 0).sum() - (images[i] != 0).sum()
  assert outside == len(images)  # every canvas got clutter: its donors have no zeros inside
  # With one image, its pieces are cut from itself.
  single = canvas.paste(images[:1], 56, 2, np.random.default_rng(0))[0]
  assert single.shape == (1, 56, 56, 1)


def test_an_idx_base_reads_its_own_fields(idx_dir, embedded):
  config = _data_config(base="idx", clutter=2)
  config["idx_dir"] = str(idx_dir)
  raw = canvas.load(config)
  assert raw.train_images.shape[1:] == (56, 56, 1)
  np.testing.assert_array_equal(raw.train_labels, embedded.train_labels[:300])
  assert input_pipeline.input_spec(config) == ((56, 56, 1), 10)
  config["idx_dir"] = ""
  with pytest.raises(ConfigError, match="^data.idx_dir is empty"):
    input_pipeline.input_spec(config)


@pytest.mark.parametrize(
  ("field", "value", "message"),
  [
    (
      "base",
      "canvas",
      "data.canvas.base='canvas' is not a source to paste from; choose a source of 2D images: "
      "one of tfds, idx, embedded",
    ),
    ("base", "cifar", "data.canvas.base='cifar' is not a source to paste from"),
    ("size", 20, "data.canvas.size=20: size is too small for the base's 28x28 images; make it 28"),
    ("size", 0, "data.canvas.size=0: size is a whole number of pixels, 1 to 32,768"),
    ("size", 56.0, "data.canvas.size=56.0: size is a whole number"),
    ("clutter", -1, "data.canvas.clutter=-1: clutter is a whole number of pieces, 0 to 64"),
    ("clutter", True, "data.canvas.clutter=True: clutter is a whole number"),
    ("seed", -3, "data.canvas.seed=-3: seed is a whole number, 0 or more"),
  ],
)
def test_a_bad_field_is_one_line_naming_it(field, value, message):
  config = _data_config(**{field: value})
  whole = mnist.get_config()
  whole.data = ml_collections.ConfigDict(config, type_safe=False)
  calls = [input_pipeline.input_spec, lambda c: input_pipeline.load(c, seed=0)]
  if field != "size" or value != 20:  # whether the base's images fit: known from the base only
    calls.append(lambda c: config_checks.validate(whole))
  for call in calls:
    with pytest.raises(ConfigError) as error:
      call(config)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_base_of_other_than_2d_images_is_refused_by_name():
  config = _data_config(base="mnist1d")
  config["name"] = "mnist1d"
  with pytest.raises(ConfigError, match=r"^data.canvas.base='mnist1d' gives examples of shape"):
    input_pipeline.input_spec(config)


def test_configs_without_the_canvas_fields_read_as_the_defaults():
  assert canvas.settings({"source": "canvas"}) == canvas.Settings(**canvas.DEFAULTS)
  for field, value in canvas.DEFAULTS.items():
    assert workdir.ADDED_FIELDS[f"data.canvas.{field}"] == value
    assert mnist.get_config().data.canvas[field] == value
  saved = json.loads(mnist.get_config().to_json_best_effort())
  del saved["data"]["canvas"]  # a config saved before the canvas existed
  assert workdir.changed_fields(saved, mnist.get_config()) == []


def _page_command() -> str:
  with open(os.path.join(REPO, "docs", "data.md")) as f:
    section = f.read().split("## Objects at random places", 1)[1].split("\n## ", 1)[0]
  (block,) = [b for b in re.findall(r"```sh\n(.*?)```", section, re.DOTALL) if "embedded" in b]
  return " ".join(block.replace("\\\n", " ").split())


@pytest.mark.slow  # a run of 20 steps in a fresh interpreter: about 40 s on 2 busy vCPUs
def test_the_page_s_canvas_command_runs_as_written(tmp_path):
  line = _page_command().replace("runs/canvas", str(tmp_path / "canvas"))
  argv = shlex.split(line)
  assert argv[0] == "python"
  done = subprocess.run(
    [sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True, env=cpu_env()
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "(56, 56, 1)" in done.stderr
  with open(tmp_path / "canvas" / "metrics.jsonl") as f:
    last = [json.loads(line) for line in f if '"epoch"' in line][-1]
  assert last["epoch"] == 1 and 0.0 <= last["test_accuracy"] <= 1.0
