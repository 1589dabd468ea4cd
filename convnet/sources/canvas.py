"""The "canvas" source: each image of another source pasted at a random place on a larger canvas.

A harder image source made from one at hand: where the object is varies, so a
model that has not learned to find it anywhere (a dense network, which sees
each pixel as its own feature) has to learn it at every position. Each image of
the base source (`data.canvas.base`: Fashion-MNIST's IDX files by default, read
from `data.idx_dir` as the "idx" source reads them; "embedded" for the digits
shipped in the package, with no files at all) goes, whole, at a uniformly
random position on a square canvas of zeros, `data.canvas.size` pixels a side
(56 by default).

With `data.canvas.clutter` = k > 0, k pieces cut from other images of the same
split (random crops of CLUTTER_SIZES pixels a side, taken anywhere in the
donor) are pasted first, at random places anywhere on the canvas, later pieces
over earlier ones; the object goes on top of them, and covers them only where
its own pixels are not zero, so a piece can show through the object's
background.

Every draw (positions, donors, crops) comes from `data.canvas.seed` and the
split: the training and test splits come from separate random streams of that
seed, and the same seed makes the same canvases every time. Labels and class
names are the base's. Nothing is cached: the canvases are made again on each
load, in about a second for Fashion-MNIST's 70,000 images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from convnet import sources
from convnet.errors import ConfigError

# What `data.canvas` holds where a config predates it (and the defaults of configs/mnist.py).
DEFAULTS = {"base": "idx", "size": 56, "clutter": 0, "seed": 0}
CLUTTER_SIZES = (8, 14)  # a clutter piece's height and width are each drawn from this range
MAX_CLUTTER = 64  # pieces an image: more would cover the canvas many times over
SPLITS = ("train", "test")  # a split's index here is its random stream's
_CHUNK = 4096  # canvases pasted at once: about 50 MB of index arrays


@dataclasses.dataclass(frozen=True)
class Settings:
  """`data.canvas`, checked: the base source, the canvas's side, pieces of clutter, the seed."""

  base: str
  size: int
  clutter: int
  seed: int


# The registered sources whose examples are 2D images (height, width, channels), to paste from.
IMAGE_SOURCES = ("tfds", "idx", "embedded")


def settings(data_config: Mapping[str, Any]) -> Settings:
  """The config's `data.canvas` fields, checked (DEFAULTS for those it lacks).

  Raises:
    ConfigError: naming the field, its value and what it may be.
  """
  canvas = {**DEFAULTS, **dict(data_config.get("canvas") or {})}
  base = canvas["base"]
  bases = [name for name in sources.REGISTRY if name != "canvas"]
  if base not in bases:
    raise ConfigError(
      f"data.canvas.base={base!r} is not a source to paste from; choose a source of 2D images: "
      f"one of {', '.join(b for b in bases if b in IMAGE_SOURCES)}"
    )
  rules = {
    "size": (1, 2**15, "a whole number of pixels, 1 to 32,768 (2**15)"),
    "clutter": (0, MAX_CLUTTER, f"a whole number of pieces, 0 to {MAX_CLUTTER}"),
    "seed": (0, 2**63 - 1, "a whole number, 0 or more, below 2**63"),
  }
  for field, (low, high, rule) in rules.items():
    value = canvas[field]
    whole = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not whole or not low <= value <= high:
      raise ConfigError(f"data.canvas.{field}={value!r}: {field} is {rule}")
  return Settings(base, int(canvas["size"]), int(canvas["clutter"]), int(canvas["seed"]))


def check_fields(data_config: Mapping[str, Any]) -> None:
  """`settings`, for `config_checks.validate`: a bad field stops a run or sweep before any data.

  Raises:
    ConfigError: naming the field, its value and what it may be.
  """
  settings(data_config)


def load(data_config: Mapping[str, Any]) -> sources.RawData:
  """The base source's splits, each image pasted on a canvas (see the module docstring).

  Images are the base's dtype, (N, size, size, channels); labels, classes and
  their order are the base's.

  Raises:
    ConfigError: a `data.canvas` field cannot work (naming it): a base whose
      examples are not 2D images (height, width, channels), or a canvas
      smaller than them; or the base's own fields cannot (`data.idx_dir`, say).
    DataError: the base's data cannot be read.
  """
  setting = settings(data_config)
  base = sources.get(setting.base)
  _check_fits(base.input_spec(data_config)[0], setting)  # before the base's data is read
  raw = base.load(data_config)
  _check_fits(raw.train_images.shape[1:], setting)
  made = {}
  for index, split in enumerate(SPLITS):
    images = getattr(raw, f"{split}_images")
    made[f"{split}_images"], _ = paste(images, setting.size, setting.clutter, rng(setting, index))
  clutter = f"_clutter{setting.clutter}" if setting.clutter else ""
  raw = dataclasses.replace(raw, name=f"{raw.name}_canvas{setting.size}{clutter}", **made)
  return sources.check_data(raw, f"data.source='canvas' on data.canvas.base={setting.base!r}")


def input_spec(data_config: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
  """(size, size, channels) and the base's number of classes, from the base's `input_spec`.

  Raises:
    ConfigError, DataError: as `load` does, without reading the base's data.
  """
  setting = settings(data_config)
  shape, num_classes = sources.get(setting.base).input_spec(data_config)
  _check_fits(shape, setting)
  return (setting.size, setting.size, shape[-1]), num_classes


def title(data_config: Mapping[str, Any], sizes: bool = False) -> str:
  """The base's title on its canvas: "embedded MNIST on a 56x56 canvas, 4 pieces of clutter"."""
  setting = settings(data_config)
  base = {**data_config, "source": setting.base, "permute_pixels": 0}  # said once, after
  text = f"{sources.title(base, sizes)} on a "
  text += f"{setting.size}x{setting.size} canvas"
  return text + (f", {setting.clutter} pieces of clutter" if setting.clutter else "")


def rng(setting: Settings, split_index: int) -> np.random.Generator:
  """The random stream of one split (0: train, 1: test) for the canvas seed."""
  return np.random.default_rng([setting.seed, split_index])


def _check_fits(shape: tuple[int, ...], setting: Settings) -> None:
  """Refuses base examples that are not (height, width, channels) within the canvas."""
  if len(shape) != 3:
    raise ConfigError(
      f"data.canvas.base={setting.base!r} gives examples of shape {tuple(shape)}; the canvas "
      f"takes 2D images (height, width, channels): choose an image source"
    )
  if shape[0] > setting.size or shape[1] > setting.size:
    raise ConfigError(
      f"data.canvas.size={setting.size}: size is too small for the base's {shape[0]}x{shape[1]} "
      f"images; make it {max(shape[:2])} or more"
    )


def paste(
  images: np.ndarray, size: int, clutter: int, generator: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """Each image at a random place on a `size` x `size` canvas of zeros, over `clutter` pieces.

  Args:
    images: (N, height, width, channels), any dtype; height and width at most `size`.
    size: the canvas's side, in pixels.
    clutter: pieces cut from other images of `images` (random crops, CLUTTER_SIZES
      pixels a side, capped at the image's) pasted under each image; with one
      image only, from itself.
    generator: every draw comes from it, all drawn before any pasting, in a
      fixed order.

  Returns:
    The canvases, (N, size, size, channels) of the images' dtype, and each
    image's position, int64 (N, 2): the row and column of its top-left pixel.
    Where an image's pixel is not zero (in any channel), the canvas holds it
    unchanged; elsewhere it holds clutter or zero.
  """
  n, height, width, channels = images.shape
  positions = np.stack(
    [generator.integers(0, size - height + 1, n), generator.integers(0, size - width + 1, n)], 1
  )
  pieces = [_draw_piece(generator, n, height, width, size) for _ in range(clutter)]
  canvases = np.zeros((n, size, size, channels), images.dtype)
  for start in range(0, n, _CHUNK):
    rows = slice(start, min(start + _CHUNK, n))
    for piece in pieces:
      _paste_piece(canvases[rows], images, {key: value[rows] for key, value in piece.items()})
    _paste_object(canvases[rows], images[rows], positions[rows])
  return canvases, positions.astype(np.int64)


def _draw_piece(
  generator: np.random.Generator, n: int, height: int, width: int, size: int
) -> dict[str, np.ndarray]:
  """One piece of clutter for each of `n` canvases: its donor, its crop and where it goes."""
  low, high = CLUTTER_SIZES
  piece_height = np.minimum(generator.integers(low, high + 1, n), height)
  piece_width = np.minimum(generator.integers(low, high + 1, n), width)
  # Another image than the canvas's own, when there is another.
  donor = (np.arange(n) + generator.integers(1, n, n)) % n if n > 1 else np.zeros(n, np.int64)
  return {
    "donor": donor,
    "height": piece_height,
    "width": piece_width,
    "source_row": generator.integers(0, height - piece_height + 1),
    "source_column": generator.integers(0, width - piece_width + 1),
    "row": generator.integers(0, size - piece_height + 1),
    "column": generator.integers(0, size - piece_width + 1),
  }


def _paste_piece(canvases: np.ndarray, images: np.ndarray, piece: dict[str, np.ndarray]) -> None:
  """Writes one piece of clutter onto each of `canvases`, in place, over what is there."""
  high = CLUTTER_SIZES[1]
  offsets = np.arange(high)
  inside = (offsets[None, :, None] < piece["height"][:, None, None]) & (
    offsets[None, None, :] < piece["width"][:, None, None]
  )  # (N, high, high): the pixels of each crop
  example, dy, dx = np.nonzero(inside)
  canvases[example, piece["row"][example] + dy, piece["column"][example] + dx] = images[
    piece["donor"][example], piece["source_row"][example] + dy, piece["source_column"][example] + dx
  ]


def _paste_object(canvases: np.ndarray, images: np.ndarray, positions: np.ndarray) -> None:
  """Writes each image onto its canvas at its position, in place, where its pixel is not zero."""
  n, height, width, _ = images.shape
  example = np.arange(n)[:, None, None]
  rows = positions[:, 0, None, None] + np.arange(height)[None, :, None]
  columns = positions[:, 1, None, None] + np.arange(width)[None, None, :]
  under = canvases[example, rows, columns]
  canvases[example, rows, columns] = np.where((images != 0).any(-1, keepdims=True), images, under)
