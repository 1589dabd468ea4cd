"""The fixed pixel permutation control: `data.permute_pixels`."""

import re

import numpy as np
import pytest

from convnet import config_checks, input_pipeline
from convnet.errors import ConfigError


def _dataset(shape=(6, 5, 2), sizes=(7, 3, 4)):
  """A dataset whose every value is distinct, of examples of `shape`."""
  rng = np.random.default_rng(0)
  splits = []
  for n in sizes:
    images = rng.permutation(n * int(np.prod(shape))).reshape(n, *shape).astype(np.float32)
    splits.append(input_pipeline.Split(images, np.arange(n, dtype=np.int32)))
  return input_pipeline.Dataset("toy", *splits, num_classes=10, class_names=tuple("0123456789"))


@pytest.mark.parametrize("shape", [(6, 5, 2), (40, 1), (3, 4, 5, 1)], ids=["2d", "1d", "3d"])
def test_one_permutation_of_positions_for_every_split_and_channel(shape):
  dataset = _dataset(shape)
  permuted = input_pipeline.permute_pixels(dataset, 7)
  positions = int(np.prod(shape[:-1]))
  found = None
  for name in ("train", "validation", "test"):
    before, after = getattr(dataset, name), getattr(permuted, name)
    assert after.images.shape == before.images.shape and after.images.dtype == np.float32
    np.testing.assert_array_equal(after.labels, before.labels)
    flat_before = before.images.reshape(len(before), positions, shape[-1])
    flat_after = after.images.reshape(len(after), positions, shape[-1])
    # Each position of a permuted example holds the whole pixel (all channels) of one position.
    index = {tuple(v): i for i, v in enumerate(flat_before.reshape(-1, shape[-1]))}
    moved = np.array([index[tuple(v)] for v in flat_after.reshape(-1, shape[-1])])
    moved = moved.reshape(len(after), positions) - np.arange(len(after))[:, None] * positions
    assert np.all(moved == moved[0]), "every example moves by one permutation"
    found = moved[0] if found is None else found
    np.testing.assert_array_equal(moved[0], found)  # the same for train, validation and test
  assert sorted(found) == list(range(positions)), "every position kept exactly once"
  assert not np.array_equal(found, np.arange(positions))
  np.testing.assert_array_equal(found, input_pipeline.pixel_permutation(shape[:-1], 7))


def test_an_empty_split_stays_empty():
  permuted = input_pipeline.permute_pixels(_dataset(sizes=(5, 0, 2)), 1)
  assert permuted.validation.images.shape == (0, 6, 5, 2)


def test_zero_leaves_the_data_bit_identical():
  dataset = _dataset()
  assert input_pipeline.permute_pixels(dataset, 0) is dataset


def test_different_seeds_give_different_permutations_and_one_seed_the_same():
  first = input_pipeline.pixel_permutation((28, 28), 1)
  np.testing.assert_array_equal(first, input_pipeline.pixel_permutation((28, 28), 1))
  assert not np.array_equal(first, input_pipeline.pixel_permutation((28, 28), 2))


def test_load_permutes_the_embedded_digits(config):
  plain = input_pipeline.load(config.data, 0)
  config.data.permute_pixels = 3
  permuted = input_pipeline.load(config.data, 0)
  order = input_pipeline.pixel_permutation((28, 28), 3)
  for name in ("train", "validation", "test"):
    before, after = getattr(plain, name), getattr(permuted, name)
    np.testing.assert_array_equal(after.labels, before.labels)
    np.testing.assert_array_equal(
      after.images.reshape(len(after), -1), before.images.reshape(len(before), -1)[:, order]
    )


@pytest.mark.parametrize("value", [-1, 2**63])
def test_bad_values_are_one_line_naming_the_field(config, value):
  config.data.permute_pixels = value
  message = re.escape(f"data.permute_pixels={value!r}: permute_pixels is 0 (off)")
  with pytest.raises(ConfigError, match=message) as error:
    config_checks.validate(config)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("value", [1.5, True, "3", None])
def test_values_of_other_types_are_refused_too(value):
  # A saved config (read without type checks) may hold anything.
  with pytest.raises(ConfigError, match=re.escape(f"data.permute_pixels={value!r}")):
    input_pipeline.check_permute_pixels(value)


def test_a_saved_config_without_the_field_reads_as_off():
  from convnet import workdir

  assert workdir.ADDED_FIELDS["data.permute_pixels"] == 0
