"""Time and frequency masks (convnet/augment.py) and the sequence layout of 2D examples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convnet import augment, input_pipeline, models, seeds, train
from convnet.configs import mnist
from convnet.errors import ConfigError


def _augment(**fields):
  """`config.augment` as a plain dict, so that it can hold what a config would refuse."""
  return dict(mnist.get_config().augment) | fields


def _mask(shape, seed=0, **fields):
  spec = augment.masking(_augment(**fields), shape[1:])
  return np.asarray(augment.mask(jax.random.key(seed), jnp.ones(shape), spec))


# ----------------------------------------------------------------------------
# The masks


def test_no_masks_by_default_and_for_zero_widths():
  assert augment.masking(mnist.get_config().augment, (40, 64, 1)) is None
  assert augment.masking(_augment(time_masks=2, freq_mask_width=5), (40, 64, 1)) is None


@pytest.mark.parametrize(
  "fields, shape, message",
  [
    ({"time_masks": -1}, (40, 64, 1), r"augment.time_masks=-1 must be a whole number"),
    ({"freq_mask_width": 1.5}, (40, 64, 1), r"augment.freq_mask_width=1.5 must be"),
    (
      {"time_masks": 1, "time_mask_width": 65},
      (40, 64, 1),
      r"time_mask_width=65 is wider than axis 1 of examples of shape \(40, 64, 1\), which has 64",
    ),
    (
      {"freq_masks": 1, "freq_mask_width": 41},
      (64, 40),
      r"freq_mask_width=41 is wider than axis 1 of examples of shape \(64, 40\), which has 40",
    ),
    ({"time_masks": 1, "time_mask_width": 2}, (8, 8, 8, 1), r"masks need examples of shape"),
    (
      {"time_masks": 65, "time_mask_width": 2},
      (40, 64, 1),
      r"time_masks=65 is more bands than the 64 positions of axis 1",
    ),
  ],
)
def test_impossible_masks_are_named(fields, shape, message):
  with pytest.raises(ConfigError, match=message):
    augment.masking(_augment(**fields), shape)


def test_bands_have_the_drawn_widths_and_fit_their_axis():
  inside = np.asarray(augment.bands(jax.random.key(1), 2000, 10, 1, 4))
  widths = inside.sum(1)
  assert set(widths) == {0, 1, 2, 3, 4}  # every width in [0, 4] is drawn
  for row, width in zip(inside, widths, strict=True):
    if width:
      start = int(np.argmax(row))
      assert row[start : start + width].all() and not row[start + width :].any()
  # A band of 4 fits in 7 places: each is drawn, the first and last about as often.
  starts = [int(np.argmax(row)) for row, w in zip(inside, widths, strict=True) if w == 4]
  assert set(starts) == set(range(7))


def test_image_masks_blank_whole_columns_and_rows():
  images = _mask((64, 40, 64, 1), time_masks=2, time_mask_width=8)
  blanked = images[..., 0] == 0
  assert (blanked == blanked[:, :1, :]).all()  # a time mask takes a column from every band
  assert 0 < blanked[:, 0, :].sum(1).max() <= 16
  images = _mask((64, 40, 64, 1), freq_masks=1, freq_mask_width=6)
  blanked = images[..., 0] == 0
  assert (blanked == blanked[:, :, :1]).all()  # a frequency mask takes a band at every time
  assert 0 < blanked[:, :, 0].sum(1).max() <= 6


def test_sequence_masks_blank_whole_steps_and_channels():
  images = _mask((64, 64, 40), time_masks=1, time_mask_width=8, freq_masks=1, freq_mask_width=6)
  steps = (images == 0).all(axis=2)
  channels = (images == 0).all(axis=1)
  assert steps.sum(1).max() <= 8 and channels.sum(1).max() <= 6
  assert steps.any() and channels.any()
  # Every zero lies in a masked step or a masked channel.
  assert ((images == 0) == (steps[:, :, None] | channels[:, None, :])).all()


def test_masks_depend_on_the_key_only():
  fields = {"time_masks": 2, "time_mask_width": 10, "freq_masks": 2, "freq_mask_width": 8}
  first, again = _mask((16, 40, 64, 1), 3, **fields), _mask((16, 40, 64, 1), 3, **fields)
  np.testing.assert_array_equal(first, again)
  assert (first != _mask((16, 40, 64, 1), 4, **fields)).any()
  assert (first[0] != first[1]).any()  # each example draws its own bands
  assert not np.array_equal(augment.key(0), augment.key(1))


# ----------------------------------------------------------------------------
# Training with masks


def _masked(config):
  config.augment.time_masks = 2
  config.augment.time_mask_width = 6
  config.augment.freq_masks = 1
  config.augment.freq_mask_width = 4
  config.max_steps = 6
  config.steps_per_call = 4
  return config


@pytest.mark.slow  # three runs
def test_a_masked_run_is_the_same_run_for_its_seed_and_not_the_unmasked_one(config, tmp_path):
  plain = train.train_and_evaluate(config.copy_and_resolve_references(), str(tmp_path / "plain"))
  config = _masked(config)
  config.max_steps = -1
  first = train.train_and_evaluate(config, str(tmp_path / "a"))
  again = train.train_and_evaluate(config, str(tmp_path / "b"))
  for key in ("train_loss", "validation_loss", "test_loss"):
    assert first[key] == again[key], key
  assert first["train_loss"] != plain["train_loss"]


@pytest.mark.slow  # a group and two runs, as in tests/test_sweep.py's vmapped seeds
def test_masked_seeds_trained_together_match_separate_runs(config, tmp_path):
  config = _masked(config)
  config.microbatch_size = 128
  results = seeds.train_seeds(config, [0, 3], str(tmp_path / "group"))
  for seed, together in zip([0, 3], results, strict=True):
    alone = train.train_and_evaluate(seeds.seed_config(config, seed), str(tmp_path / f"s{seed}"))
    for key in ("train_loss", "validation_loss", "test_loss"):
      np.testing.assert_allclose(together[key], alone[key], rtol=1e-4, err_msg=key)


@pytest.mark.slow  # two runs; the masks' dependence on the step alone is tested above
def test_a_masked_run_stopped_and_resumed_is_the_uninterrupted_run(config, tmp_path):
  config = _masked(config)
  config.max_steps = -1
  config.steps_per_call = 1
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  config.max_steps = 5
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  config.max_steps = -1
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  for key in ("train_loss", "validation_loss", "test_loss", "step"):
    assert resumed[key] == straight[key], key


# ----------------------------------------------------------------------------
# The sequence layout


def test_the_sequence_layout_makes_columns_the_steps_and_rows_the_channels(config):
  image = input_pipeline.load(config.data, 0)
  config.data.layout = "sequence"
  sequence = input_pipeline.load(config.data, 0)
  assert sequence.input_shape == (28, 28) == input_pipeline.input_spec(config.data)[0]
  np.testing.assert_array_equal(sequence.test.images[5], image.test.images[5, :, :, 0].T)
  np.testing.assert_array_equal(sequence.train.labels, image.train.labels)


@pytest.mark.parametrize(
  "layout, shape, message",
  [
    ("columns", (28, 28, 1), r"data.layout='columns' is not one of image, sequence"),
    ("sequence", (40, 1), r"needs examples of shape \(rows, columns, 1\); this data's are \(40,"),
    ("sequence", (8, 8, 3), r"this data's are \(8, 8, 3\)"),
  ],
)
def test_a_layout_that_cannot_apply_is_named(layout, shape, message):
  with pytest.raises(ConfigError, match=message):
    input_pipeline.arranged_shape(shape, layout)


def test_a_1d_convnet_over_spectrogram_frames_has_the_expected_parameters():
  """Mel bands as channels: the first kernel is (3, 40, 16), one per frame window."""
  model_config = mnist.get_config().model
  model_config.conv.kernel_size = 3
  model_config.pool.window = 2
  model_config.pool.strides = 2
  model_config.head = "global_avg"
  model = models.create_model(model_config, (64, 40), 10)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 40)))["params"]
  assert params["conv_0"]["kernel"].shape == (3, 40, 16)
  # 3*40*16+16, 3*16*32+32, 3*32*32+32; the head pools to 32 numbers: 32*64+64, 64*10+10.
  expected = (1936) + (1568) + (3104) + (2112) + (650)
  assert models.count_params(params) == expected
  assert jax.jit(model.apply)({"params": params}, jnp.zeros((5, 64, 40))).shape == (5, 10)
