"""The "shapes3d" source: ten kinds of solid, voxelised in a 16x16x16 grid, for 3D convnets.

Each example is one shape (ball, cube, cylinder, cone, torus, pyramid,
octahedron, spherical shell, hollow box, tube) at a random size, position and
orientation (uniform over 3D rotations), voxelised with 2x2x2 samples a voxel
so that its surface is anti-aliased, plus a little Gaussian noise. The hollow
shapes differ from their solid twins only inside: a model must see the volume,
not a silhouette.

Generated on the spot from a seed, in a few seconds, with no download: the
training and test splits come from separate random streams of that seed. As
the "shapes3d" source (`data.name="shapes3d"`), 5,000 training and 1,000 test
volumes from seed 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from convnet import logs, sources

SIZE = 16
INPUT_SHAPE = (SIZE, SIZE, SIZE, 1)
CLASS_NAMES = (
  "ball",
  "cube",
  "cylinder",
  "cone",
  "torus",
  "pyramid",
  "octahedron",
  "shell",
  "hollow box",
  "tube",
)
TRAIN_PER_CLASS = 500
TEST_PER_CLASS = 100
RADIUS = (4.0, 6.0)  # voxels from the centre to the shape's unit extent
SHIFT = 1.0  # the centre moves up to this many voxels along each axis
NOISE = 0.1  # standard deviation of the Gaussian noise added to each voxel's occupancy
SUBSAMPLES = 2  # samples a voxel along each axis
_CHUNK = 250  # examples voxelised at once: about 100 MB of sample points


def load(data_config: Mapping[str, Any]) -> sources.RawData:
  """TRAIN_PER_CLASS and TEST_PER_CLASS volumes of each shape, generated from seed 0.

  Volumes are float32 (N, 16, 16, 16, 1), labels int64 (N,) indexing CLASS_NAMES.

  Raises:
    ConfigError: `data.name` is not "shapes3d".
  """
  name = _check_name(data_config)
  raw = sources.RawData(
    name=name, num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES, **make_dataset()
  )
  return sources.check_data(raw, "convnet.sources.shapes3d.make_dataset")


def input_spec(data_config: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
  """(16, 16, 16, 1) and 10 classes, once `data.name` is checked (a ConfigError if wrong)."""
  _check_name(data_config)
  return INPUT_SHAPE, len(CLASS_NAMES)


def _check_name(data_config: Mapping[str, Any]) -> str:
  return sources.check_name(data_config["name"], ("shapes3d",), "shapes3d", "a Shapes3D dataset")


def _inside(kind: int, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
  """Whether points, in the shape's own unit coordinates, lie inside a shape of `kind`."""

  def rho():  # distance from the z axis
    return np.sqrt(x**2 + y**2)

  def r():  # distance from the centre
    return np.sqrt(rho() ** 2 + z**2)

  def box():  # the largest coordinate: a cube's "radius"
    return np.maximum(np.maximum(np.abs(x), np.abs(y)), np.abs(z))

  def height():
    return np.abs(z) <= 0.9

  if kind == 0:  # ball
    return r() <= 1.0
  if kind == 1:  # cube
    return box() <= 0.8
  if kind == 2:  # cylinder
    return (rho() <= 0.8) & height()
  if kind == 3:  # cone, apex up
    return (rho() <= 0.5 * (0.9 - z)) & height()
  if kind == 4:  # torus
    return (rho() - 0.65) ** 2 + z**2 <= 0.3**2
  if kind == 5:  # square pyramid, apex up
    return (np.maximum(np.abs(x), np.abs(y)) <= 0.5 * (0.9 - z)) & height()
  if kind == 6:  # octahedron
    return np.abs(x) + np.abs(y) + np.abs(z) <= 1.1
  if kind == 7:  # spherical shell
    distance = r()
    return (distance <= 1.0) & (distance >= 0.6)
  if kind == 8:  # hollow box
    extent = box()
    return (extent <= 0.8) & (extent >= 0.45)
  if kind == 9:  # tube
    radius = rho()
    return (radius <= 0.8) & (radius >= 0.45) & height()
  raise ValueError(f"no shape of kind {kind}")


def voxelise(kinds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Volumes of shape (len(kinds), 16, 16, 16, 1), one random pose per example, with noise."""
  n = len(kinds)
  rotations = Rotation.random(n, random_state=rng).as_matrix()
  radii = rng.uniform(*RADIUS, size=n)
  centres = (SIZE - 1) / 2 + rng.uniform(-SHIFT, SHIFT, size=(n, 3))
  volumes = occupancy(kinds, rotations, radii, centres)
  volumes += rng.normal(0.0, NOISE, volumes.shape).astype(np.float32)
  return volumes[..., None]


def occupancy(
  kinds: np.ndarray, rotations: np.ndarray, radii: np.ndarray, centres: np.ndarray
) -> np.ndarray:
  """The fraction of each voxel that each posed shape fills, (n, 16, 16, 16).

  Shape i is `kinds[i]` in its unit coordinates, rotated by `rotations[i]`
  (3x3), scaled by `radii[i]` voxels and centred at `centres[i]` (in voxel
  indices).
  """
  n = len(kinds)
  # Sample points: SUBSAMPLES^3 per voxel, at the centres of the voxel's sub-cells.
  axis = (np.arange(SIZE * SUBSAMPLES) + 0.5) / SUBSAMPLES - 0.5
  grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
  grid = grid.astype(np.float32)
  volumes = np.empty((n, SIZE, SIZE, SIZE), np.float32)
  batches = range(0, n, _CHUNK)
  what = f"Voxelising {n:,} Shapes3D solids, {_CHUNK} a batch"
  for start in logs.progress(batches, what, len(batches), "batches"):
    part = slice(start, min(start + _CHUNK, n))
    # A point p of the grid is inside when R^T (p - c) / r is inside the unit shape.
    pose = (rotations[part] / radii[part, None, None]).astype(np.float32)
    local = np.matmul(grid[None] - centres[part, None].astype(np.float32), pose)
    inside = np.empty(local.shape[:2], bool)
    for kind in np.unique(kinds[part]):
      rows = kinds[part] == kind
      inside[rows] = _inside(int(kind), *np.moveaxis(local[rows], -1, 0))
    fine = inside.reshape(-1, *(SIZE, SUBSAMPLES) * 3)
    volumes[part] = fine.mean(axis=(2, 4, 6), dtype=np.float32)
  return volumes


def make_split(seed: int, split: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
  """`per_class` examples of each shape, in a fixed shuffled order; split "train" or "test"."""
  stream = {"train": 0, "test": 1}[split]
  rng = np.random.default_rng([seed, stream])
  kinds = rng.permutation(np.repeat(np.arange(len(CLASS_NAMES)), per_class))
  return voxelise(kinds, rng), kinds.astype(np.int64)


def make_dataset(
  seed: int = 0, train_per_class: int | None = None, test_per_class: int | None = None
) -> dict[str, np.ndarray]:
  """Train and test volumes and labels: "train_images", "train_labels", "test_images", ...

  By default TRAIN_PER_CLASS and TEST_PER_CLASS examples of each shape.
  """
  train_per_class = TRAIN_PER_CLASS if train_per_class is None else train_per_class
  test_per_class = TEST_PER_CLASS if test_per_class is None else test_per_class
  train_images, train_labels = make_split(seed, "train", train_per_class)
  test_images, test_labels = make_split(seed, "test", test_per_class)
  return {
    "train_images": train_images,
    "train_labels": train_labels,
    "test_images": test_images,
    "test_labels": test_labels,
  }
