"""Time and frequency masking of training batches, on the device, seeded (SpecAugment's masks).

Each training example gets `augment.time_masks` bands of consecutive time
steps and `augment.freq_masks` bands of consecutive frequencies set to 0 (the
mean of standardised spectrograms). A band's width is drawn uniformly from 0
to its `..._mask_width`, and its start uniformly from the positions where it
fits, as in Park et al., "SpecAugment: A Simple Data Augmentation Method for
Automatic Speech Recognition" (2019), section 2. Bands may overlap.

The axes follow the example's shape:
- (rows, columns, channels), a spectrogram as an image (`data.layout="image"`):
  time runs along the columns, frequency down the rows;
- (steps, channels), a spectrogram as a sequence (`data.layout="sequence"`) or
  any 1D data: time runs along the steps, and the frequencies are the channels.

Masks depend only on the run's seed and the step (`jax.random.fold_in` of the
seed's key with the step number), so a resumed run draws the masks it would
have drawn, and evaluation never sees a mask. Seeds trained together under
`jax.vmap` draw each seed's masks as that seed alone does (`mask_step`), under
every PRNG implementation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from convnet.errors import ConfigError

# Folded into the seed's key, so that the masks' random numbers are not the initialisation's.
STREAM = 0x5EC


@dataclasses.dataclass(frozen=True)
class Masking:
  """Bands to mask in each example. Axes count from the example's first axis (no batch)."""

  time_axis: int
  time_masks: int
  time_mask_width: int
  freq_axis: int
  freq_masks: int
  freq_mask_width: int


def masking(augment_config: Mapping[str, Any], input_shape: Sequence[int]) -> Masking | None:
  """The masks that `config.augment` asks for on examples of `input_shape`; None for none.

  Raises:
    ConfigError: naming the field, for a negative count or width, a width
      longer than its axis, or examples that are neither 1D nor 2D.
  """
  fields = ("time_masks", "time_mask_width", "freq_masks", "freq_mask_width")
  values = {f: augment_config[f] for f in fields}
  for field, value in values.items():
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ConfigError(f"augment.{field}={value!r} must be a whole number, 0 or more")
  if not (values["time_masks"] * values["time_mask_width"]) and not (
    values["freq_masks"] * values["freq_mask_width"]
  ):
    return None
  if len(input_shape) == 3:
    freq_axis, time_axis = 0, 1
  elif len(input_shape) == 2:
    time_axis, freq_axis = 0, 1
  else:
    raise ConfigError(
      f"augment: masks need examples of shape (rows, columns, channels) or (steps, channels); "
      f"this data's are {tuple(input_shape)}: set augment.time_masks=0 and augment.freq_masks=0"
    )
  for kind, axis in (("time", time_axis), ("freq", freq_axis)):
    width, count = values[f"{kind}_mask_width"], values[f"{kind}_masks"]
    if width and count > input_shape[axis]:  # more bands than positions: a mistake, and memory
      raise ConfigError(
        f"augment.{kind}_masks={count} is more bands than the {input_shape[axis]} positions of "
        f"axis {axis} of examples of shape {tuple(input_shape)}"
      )
    if count and width > input_shape[axis]:
      raise ConfigError(
        f"augment.{kind}_mask_width={width} is wider than axis {axis} of examples of shape "
        f"{tuple(input_shape)}, which has {input_shape[axis]}"
      )
  return Masking(time_axis=time_axis, freq_axis=freq_axis, **values)


def key(seed: int) -> jax.Array:
  """The run's masking key, the seed's folded with `STREAM`, as raw uint32 data.

  Raw data, so that it can be placed on a mesh and stacked like any array;
  `step_key` makes a step's typed key of it.
  """
  return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), STREAM))


def step_key(key_data: jax.Array, step: jax.Array) -> jax.Array:
  """The typed key of training step `step` of the run whose `key` is `key_data`."""
  return jax.random.fold_in(jax.random.wrap_key_data(key_data), step)


def mask(key: jax.Array, images: jax.Array, spec: Masking) -> jax.Array:
  """`images` (batch, *example shape) with each example's bands set to 0; same shape and dtype.

  `key` is the step's key; every example gets its own bands.
  """
  return images * keep(key, images.shape, images.dtype, spec)


def mask_step(key_data: jax.Array, step: jax.Array, images: jax.Array, spec: Masking) -> jax.Array:
  """`mask` with the key of training step `step` (`step_key`) of the run whose `key` is `key_data`.

  Under `jax.vmap` over runs (seeds trained together), the runs' bands are
  drawn one run after another (`jax.custom_batching.sequential_vmap`), so that
  each run draws exactly the bands its key draws alone. Batched draws would
  differ under the "rbg" and "unsafe_rbg" implementations
  (`jax_default_prng_impl`), whose bit generator draws for a batch of keys
  from the first key alone.
  """

  def draw(key_data, step):
    return keep(step_key(key_data, step), images.shape, images.dtype, spec)

  return images * jax.custom_batching.sequential_vmap(draw)(key_data, step)


def keep(key: jax.Array, shape: Sequence[int], dtype, spec: Masking) -> jax.Array:
  """What `mask` multiplies a batch of `shape` by: 0 inside a band, 1 elsewhere.

  Shape (batch, 1, ...) with the batch's rank, and the length of the masked
  axes where they are masked; `dtype` is the images'.
  """
  time_key, freq_key = jax.random.split(key)
  factor = jnp.ones(tuple(shape[:1]) + (1,) * (len(shape) - 1), dtype)
  for band_key, axis, count, width in (
    (time_key, spec.time_axis, spec.time_masks, spec.time_mask_width),
    (freq_key, spec.freq_axis, spec.freq_masks, spec.freq_mask_width),
  ):
    if count and width:
      masked_BL = bands(band_key, shape[0], shape[axis + 1], count, width)
      broadcast = [shape[0]] + [1] * (len(shape) - 1)
      broadcast[axis + 1] = shape[axis + 1]
      factor = factor * (~masked_BL).astype(dtype).reshape(broadcast)
  return factor


def bands(key: jax.Array, batch: int, length: int, count: int, width: int) -> jax.Array:
  """(batch, length) booleans: True inside any of `count` bands drawn for each row.

  A band's width w is uniform in [0, width], and its start uniform in
  [0, length - w].
  """
  width_key, start_key = jax.random.split(key)
  widths_BM = jax.random.randint(width_key, (batch, count), 0, width + 1)
  starts_BM = jnp.floor(
    jax.random.uniform(start_key, (batch, count)) * (length - widths_BM + 1)
  ).astype(jnp.int32)
  positions = jnp.arange(length)[None, None, :]
  inside_BML = (positions >= starts_BM[..., None]) & (
    positions < (starts_BM + widths_BM)[..., None]
  )
  return inside_BML.any(axis=1)
