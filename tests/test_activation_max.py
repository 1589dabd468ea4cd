"""Activation maximisation: inputs that raise a filter's or a logit's value, within the data."""

import numpy as np
import pytest

from convnet import interpret
from convnet.models import layers


def _model(spatial: int):
  """A small convnet with 1, 2 or 3 spatial axes, its parameters (from NumPy) and input shape."""
  window = (3,) * spatial
  model = layers.Stack(
    (
      layers.Conv("conv_0", 4, window, (1,) * spatial, "VALID", "relu"),
      layers.Pool("pool_0", "max", (2,) * spatial, (2,) * spatial),
      layers.Conv("conv_1", 3, window, (1,) * spatial, "SAME", "relu"),
      layers.Head("head", "global_avg"),
      layers.Dense("logits", 5),
    )
  )
  rng = np.random.default_rng(spatial)

  def weights(*shape, bias=0.0):
    return {"kernel": rng.normal(0, 0.5, shape).astype(np.float32),
            "bias": np.full(shape[-1:], bias, np.float32)}  # fmt: skip

  params = {
    "conv_0": weights(*window, 2, 4, bias=0.2),  # active from the start: a gradient to climb
    "conv_1": weights(*window, 4, 3, bias=0.2),
    "logits": weights(3, 5),
  }
  return model, params, (8,) * spatial + (2,)


TARGETS = [("activation_0", 1), ("activation_0", 2), ("activation_1", 1), ("logits", 0),
           ("logits", 2)]  # fmt: skip


@pytest.mark.slow  # compiles the ascent: a few seconds
def test_the_ascent_raises_each_target_within_the_datas_range_and_follows_its_seed():
  model, params, shape = _model(2)
  kwargs = {"data_range": (-0.5, 2.0), "seed": 7}
  start = interpret.maximise(model, params, TARGETS, shape, steps=0, **kwargs)
  found = interpret.maximise(model, params, TARGETS, shape, steps=60, **kwargs)
  assert found.shape == (len(TARGETS), *shape)
  before = interpret.target_values(model, params, TARGETS, start)
  after = interpret.target_values(model, params, TARGETS, found)
  assert (after > before + 0.3).all(), (before, after)
  assert found.min() >= -0.5 and found.max() <= 2.0
  assert found.min() < 0.0 or found.max() > 1.5  # the ascent went far enough to need the clip
  np.testing.assert_array_equal(
    interpret.maximise(model, params, TARGETS, shape, steps=60, **kwargs), found
  )
  other = interpret.maximise(model, params, TARGETS, shape, steps=60, data_range=(-0.5, 2.0))
  assert np.abs(other - found).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("spatial", [1, 3])
def test_curves_and_volumes_are_maximised_too(spatial):
  model, params, shape = _model(spatial)
  targets = [("activation_1", 0), ("logits", 2)]
  start = interpret.maximise(model, params, targets, shape, steps=0)
  found = interpret.maximise(model, params, targets, shape, steps=20)
  assert found.shape == (2, *shape) and 0.0 <= found.min() and found.max() <= 1.0
  before = interpret.target_values(model, params, targets, start)
  assert (interpret.target_values(model, params, targets, found) > before).all()


def test_a_target_the_model_lacks_is_named():
  model, params, shape = _model(2)
  with pytest.raises(ValueError, match="'activation_2' is not 'logits' nor one of the model's 2"):
    interpret.maximise(model, params, [("activation_2", 0)], shape)
  with pytest.raises(ValueError, match="unit 3 of activation_1: it has 3"):
    interpret.target_values(model, params, [("activation_1", 3)], np.zeros((1, *shape)))


def test_tiles_share_the_datas_grey_scale_so_a_constant_input_shows_its_value(tmp_path):
  import matplotlib.image

  from convnet import visualize

  inputs = np.stack([np.ones((12, 12, 1)), np.zeros((12, 12, 1))]).astype(np.float32)
  path = visualize.plot_maximised(inputs, ["white", "black"], str(tmp_path / "m.png"), "", (0, 1))
  image = matplotlib.image.imread(path)[..., :3].mean(-1)
  height, width = image.shape
  white, black = image[height // 2, width // 4], image[height // 2, 3 * width // 4]  # the middles
  # The all-ones tile is drawn white and the all-zeros one black (each scaled to itself, both
  # constant tiles were drawn alike).
  assert white > 0.95 and black < 0.05
