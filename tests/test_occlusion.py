"""Occlusion sensitivity against a brute-force loop, and how maps' agreement is measured."""

import jax
import numpy as np
import pytest

from convnet import interpret
from convnet.models import layers


@pytest.fixture(scope="module")
def tiny():
  """A hand-made convnet on 6x6 images of 2 channels, 3 classes, and four random images."""
  model = layers.Stack(
    (
      layers.Conv("conv_0", 3, (3, 3), (1, 1), "VALID", "relu"),
      layers.Head("head", "flatten"),
      layers.Dense("dense_0", 5, "relu"),
      layers.Dense("logits", 3),
    )
  )
  rng = np.random.default_rng(0)  # NumPy's: nothing to compile

  def dense(*shape):
    return {"kernel": rng.normal(0, 0.7, shape).astype(np.float32),
            "bias": rng.normal(0, 0.1, shape[-1:]).astype(np.float32)}  # fmt: skip

  params = {"conv_0": dense(3, 3, 2, 3), "dense_0": dense(4 * 4 * 3, 5), "logits": dense(5, 3)}
  images = rng.uniform(0, 1, (4, 6, 6, 2)).astype(np.float32)
  return model, params, images


def test_patches_cover_every_pixel_the_last_one_ending_at_the_edge():
  masks = interpret.occlusion_masks((6,), 3, 2)  # starts 0, 2, and 3 so that pixel 5 is covered
  np.testing.assert_array_equal(masks.astype(int), [[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0],
                                                    [0, 0, 0, 1, 1, 1]])  # fmt: skip
  assert interpret.occlusion_masks((5, 7), (2, 3), (2, 2)).shape == (3 * 3, 5, 7)
  assert interpret.occlusion_masks((5, 7), (2, 3), (2, 2)).any(0).all()
  spans_rows = interpret.occlusion_masks((4, 6), (9, 2), 2)  # every row, columns 2 at a time
  assert spans_rows.shape == (3, 4, 6) and spans_rows.all(1).any(1).all()
  for gaps in ((6,), 3, 4), ((6, 6), 2, (2, 3)), ((9, 9), (3, 9), (4, 1)):
    with pytest.raises(ValueError, match="longer than the patch .* the pixels between patches"):
      interpret.occlusion_masks(*gaps)
  for whole in ((4,), 9), ((6, 6), 6), ((6, 6), (7, 8)):
    with pytest.raises(ValueError, match="covers the whole .* image, so occlusion would show"):
      interpret.occlusion_masks(*whole, 1)
  with pytest.raises(ValueError, match="stride=0"):
    interpret.occlusion_masks((6, 6), 3, 0)
  with pytest.raises(ValueError, match="patch=\\(3, 3, 3\\)"):
    interpret.occlusion_masks((6, 6), (3, 3, 3), 1)


def test_occlusion_is_the_mean_drop_of_the_patches_over_each_pixel(tiny):
  model, params, images = tiny
  classes = np.array([0, 1, 2, 1])
  fill = np.array([0.25, 0.75], np.float32)
  drops = interpret.occlusion(model, params, images, classes, patch=3, stride=2, fill=fill)
  assert drops.shape == (4, 6, 6)

  apply = jax.jit(model.apply)

  def probability(image, k):
    return float(jax.nn.softmax(apply({"params": params}, image[None]))[0, k])

  for image, k, found in zip(images, classes, drops, strict=True):
    total, count = np.zeros((6, 6)), np.zeros((6, 6))
    for top in (0, 2, 3):
      for left in (0, 2, 3):
        covered = image.copy()
        covered[top : top + 3, left : left + 3] = fill
        total[top : top + 3, left : left + 3] += probability(image, k) - probability(covered, k)
        count[top : top + 3, left : left + 3] += 1
    np.testing.assert_allclose(found, total / count, atol=2e-6)
  assert (np.abs(drops).max((1, 2)) > 1e-3).sum() >= 2  # something to compare


def test_rank_correlation_compares_orders_not_values():
  maps = np.arange(18.0).reshape(2, 3, 3)
  others = np.stack([np.exp(maps[0]), -maps[1]])  # same order; reversed
  np.testing.assert_allclose(interpret.rank_correlation(maps, others), [1.0, -1.0])
  shuffled = np.random.default_rng(0).permutation(9).reshape(1, 3, 3).astype(float)
  from scipy import stats

  expected = stats.pearsonr(np.argsort(np.argsort(shuffled.ravel())), np.arange(9)).statistic
  np.testing.assert_allclose(interpret.rank_correlation(shuffled, maps[:1]), [expected])
  assert np.isnan(interpret.rank_correlation(maps[:1], np.zeros((1, 3, 3)))[0])  # empty map
