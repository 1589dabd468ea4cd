"""Shapes3D: voxelised solids for 3D convnets; shapes, volumes, seeds and splits."""

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from convnet import input_pipeline
from convnet.errors import ConfigError
from convnet.sources import shapes3d
from tests.conftest import train_briefly

IDENTITY = np.eye(3)[None]
CENTRE = np.full((1, 3), (shapes3d.SIZE - 1) / 2)


def _volume(kind, radius=5.0, rotation=IDENTITY, centre=CENTRE):
  return shapes3d.occupancy(np.array([kind]), rotation, np.array([radius]), centre)[0]


@pytest.fixture(scope="module")
def small():
  return shapes3d.make_dataset(seed=0, train_per_class=3, test_per_class=2)


def test_shapes_dtypes_and_balance(small):
  assert small["train_images"].shape == (30, 16, 16, 16, 1)
  assert small["test_images"].shape == (20, 16, 16, 16, 1)
  assert small["train_images"].dtype == np.float32
  np.testing.assert_array_equal(np.bincount(small["train_labels"]), [3] * 10)
  np.testing.assert_array_equal(np.bincount(small["test_labels"]), [2] * 10)
  assert len(shapes3d.CLASS_NAMES) == 10


def test_the_same_seed_gives_the_same_volumes_and_another_seed_others(small):
  again = shapes3d.make_dataset(seed=0, train_per_class=3, test_per_class=2)
  for key in small:
    np.testing.assert_array_equal(again[key], small[key])
  other = shapes3d.make_dataset(seed=1, train_per_class=3, test_per_class=2)
  assert not np.array_equal(other["train_images"], small["train_images"])


def test_train_and_test_come_from_separate_streams(small):
  # The test split does not depend on how many training examples there are.
  bigger = shapes3d.make_dataset(seed=0, train_per_class=5, test_per_class=2)
  np.testing.assert_array_equal(bigger["test_images"], small["test_images"])
  train_flat = small["train_images"].reshape(30, -1)
  test_flat = small["test_images"].reshape(20, -1)
  distances = np.linalg.norm(train_flat[:, None] - test_flat[None], axis=-1)
  assert distances.min() > 1.0  # no test volume repeats a training one


@pytest.mark.parametrize(
  "kind, unit_volume",
  [
    (0, 4 / 3 * math.pi),  # ball of radius 1
    (1, 1.6**3),  # cube of side 1.6
    (2, math.pi * 0.8**2 * 1.8),  # cylinder
    (3, math.pi * 0.9**2 * 1.8 / 3),  # cone: base radius 0.9, height 1.8
    (4, 2 * math.pi**2 * 0.65 * 0.3**2),  # torus
    (5, 1.8**2 * 1.8 / 3),  # pyramid: base side 1.8, height 1.8
    (6, 4 / 3 * 1.1**3),  # octahedron |x|+|y|+|z| <= 1.1
    (7, 4 / 3 * math.pi * (1 - 0.6**3)),  # spherical shell
    (8, 1.6**3 - 0.9**3),  # hollow box
    (9, math.pi * (0.8**2 - 0.45**2) * 1.8),  # tube
  ],
)
def test_each_shape_fills_its_volume(kind, unit_volume):
  # Turned off the grid's axes, so that no face lies along a row of sample points.
  radius, turn = 5.0, Rotation.from_euler("xyz", [0.3, 0.5, 0.7]).as_matrix()[None]
  filled = _volume(kind, radius, rotation=turn).sum()
  assert filled == pytest.approx(unit_volume * radius**3, rel=0.05)


def test_hollow_shapes_are_empty_inside_and_solid_twins_are_not():
  middle = (slice(6, 10),) * 3  # the 4x4x4 voxels around the centre: within 3 voxels of it
  for solid, hollow in ((0, 7), (1, 8)):
    assert _volume(solid)[middle].min() == 1.0
    assert _volume(hollow, radius=6.0)[middle].max() == 0.0  # hollow to 0.6 x 6 = 3.6 voxels


def test_rotation_turns_the_shape():
  # A cone with its apex up (+z) is heavier at the bottom; turned upside down, at the top.
  upright = _volume(3)
  flip = np.diag([1.0, -1.0, -1.0])[None]
  turned = _volume(3, rotation=flip)
  weights = np.arange(shapes3d.SIZE) - (shapes3d.SIZE - 1) / 2
  centre_of_mass = (upright.sum((0, 1)) * weights).sum() / upright.sum()
  assert centre_of_mass < -0.5
  np.testing.assert_allclose(turned, upright[:, ::-1, ::-1], atol=1e-6)


def test_load_and_input_spec(monkeypatch):
  monkeypatch.setattr(shapes3d, "TRAIN_PER_CLASS", 4)
  monkeypatch.setattr(shapes3d, "TEST_PER_CLASS", 1)
  config = {"source": "shapes3d", "name": "shapes3d", "validation_fraction": 0.25}
  dataset = input_pipeline.load(config, seed=0)
  assert dataset.input_shape == (16, 16, 16, 1)
  assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (30, 10, 10)
  assert dataset.class_names == shapes3d.CLASS_NAMES
  assert input_pipeline.input_spec(config) == ((16, 16, 16, 1), 10)
  with pytest.raises(ConfigError, match="data.name='mnist'.*'shapes3d'"):
    input_pipeline.load({**config, "name": "mnist"}, seed=0)


@pytest.mark.slow
def test_the_3d_convnet_and_dense_configs_train(monkeypatch, tmp_path):
  from convnet.configs import shapes3d as convnet_config
  from convnet.configs import shapes3d_dense as dense_config

  monkeypatch.setattr(shapes3d, "TRAIN_PER_CLASS", 4)
  monkeypatch.setattr(shapes3d, "TEST_PER_CLASS", 1)
  # Pinned: update only if the configs change on purpose.
  for name, module, params in (
    ("convnet", convnet_config, 31_402),
    ("dense", dense_config, 32_866),
  ):
    config = module.get_config()
    assert train_briefly(config, tmp_path / name)["num_params"] == params
