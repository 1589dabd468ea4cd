"""Convolution and pooling written as slices and one matmul, fast on CPU.

XLA:CPU hands forward convolutions to an optimised library, but emits the
gradients of convolutions and of `reduce_window` max pooling as generic loops,
several times slower, and slower still inside a `lax.scan`. Written here as
strided slices, one `dot_general` and elementwise ops, every heavy operation
of a training step is a matmul, on any backend. `models.ConvNet` uses these
with `implementation="matmul"` and the `lax` ops with `implementation="lax"`;
both compute the same function with the same parameters.

A convolution followed by max pooling whose windows tile its output
(`conv_max_pool`) is computed at the pooled positions only: the conv's output
comes out grouped by window offset, so pooling is an elementwise maximum over
the groups instead of strided slices, and outputs that no window reads (the
last row of an odd-sized map) are never computed.

Every dot takes a `dtype` for its inputs (None: as they are; `jnp.bfloat16`
for mixed precision) and accumulates in float32: the patches are cast after
they are gathered, so slicing, padding and their gradients stay in float32.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

# "VALID", "SAME", or explicit (low, high) amounts for each spatial axis.
Padding = str | Sequence[tuple[int, int]]


def explicit_padding(
  spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], padding: Padding
) -> tuple[tuple[int, int], ...]:
  """(low, high) amounts for each spatial axis, as `lax` computes them."""
  if isinstance(padding, str):
    return tuple(jax.lax.padtype_to_pads(tuple(spatial), tuple(window), tuple(strides), padding))
  return tuple((int(low), int(high)) for low, high in padding)


def padding_only_window(window: Sequence[int], padding: Padding) -> tuple[int, str, int] | None:
  """Where pooling with this padding has a window of padding only: (axis, side, amount), or None.

  The first window starts `low` cells before the input, so it reaches an input
  only if `low < window`; the last window ends at most `high` cells after the
  input, so it reaches one whenever `high < window`. Padding of a window's
  length or more on a side leaves a window of padding only for some input
  lengths (max pooling gives -inf there, average pooling over the real inputs
  0/0 = NaN), and for the others pads cells that no window reads, so the rule
  "padding < window on each side" loses nothing. "VALID" pads nothing, and
  "SAME" pads each side by less than the window.

  Returns:
    The first spatial axis, "low" or "high", and the amount that breaks the rule.
  """
  if isinstance(padding, str):
    return None
  for axis, (size, (low, high)) in enumerate(zip(window, padding, strict=True)):
    for side, amount in (("low", low), ("high", high)):
      if amount >= size:
        return axis, side, int(amount)
  return None


def check_pool_padding(window: Sequence[int], padding: Padding) -> None:
  """Raises ValueError where `padding_only_window` finds a window of padding only."""
  found = padding_only_window(window, padding)
  if found:
    axis, side, amount = found
    raise ValueError(
      f"pooling padding {amount} on the {side} side of axis {axis} is not less than the "
      f"window's {window[axis]}: a window there would hold only padding"
    )


def _pad(x: jax.Array, pads, value: float) -> jax.Array:
  if not any(low or high for low, high in pads):
    return x
  return jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=value)


def _window_slices(x: jax.Array, window: Sequence[int], strides: Sequence[int]) -> list[jax.Array]:
  """One strided slice of a padded batch per window offset, in row-major order."""
  out = [(n - w) // s + 1 for n, w, s in zip(x.shape[1:-1], window, strides, strict=True)]
  slices = []
  for offset in itertools.product(*(range(w) for w in window)):
    start = (0, *offset, 0)
    ends = (o + s * (m - 1) + 1 for o, s, m in zip(offset, strides, out, strict=True))
    limit = (x.shape[0], *ends, x.shape[-1])
    slices.append(jax.lax.slice(x, start, limit, (1, *strides, 1)))
  return slices


def matmul(x: jax.Array, kernel: jax.Array, dtype=None) -> jax.Array:
  """`x @ kernel` over x's last axis, with inputs cast to `dtype` and float32 accumulation.

  Args:
    x: (..., K) values.
    kernel: (K, N) weights.
    dtype: the dots' input dtype (None: x's and kernel's own), e.g. `jnp.bfloat16`.

  Returns:
    (..., N), float32 (or x's dtype where that is wider).
  """
  if dtype is not None:
    x, kernel = x.astype(dtype), kernel.astype(dtype)
  accumulate = jnp.promote_types(jnp.float32, jnp.result_type(x, kernel))
  # As a 2D dot: XLA:CPU hands that to its fastest kernels, and fuses less around it.
  flat = x.reshape(-1, x.shape[-1])
  y = jax.lax.dot_general(flat, kernel, (((1,), (0,)), ((), ())), preferred_element_type=accumulate)
  return y.reshape(*x.shape[:-1], kernel.shape[-1])


def conv(
  x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Padding, dtype=None
) -> jax.Array:
  """`lax.conv_general_dilated` for channels-last inputs and (*window, in, out) kernels.

  The window's slices are concatenated along channels (im2col) and multiplied
  by the kernel reshaped to (window size x in, out): one matmul (`matmul`,
  whose `dtype` the dot's inputs are cast to).
  """
  window = kernel.shape[:-2]
  x = _pad(x, explicit_padding(x.shape[1:-1], window, strides, padding), 0.0)
  slices = _window_slices(x, window, strides)
  patches = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
  return matmul(patches, kernel.reshape(-1, kernel.shape[-1]), dtype)


def tiles(window: Sequence[int], strides: Sequence[int], padding: Padding) -> bool:
  """Whether pooling windows tile the input from its start: window == strides, no padding."""
  if tuple(window) != tuple(strides):
    return False
  if isinstance(padding, str):
    return padding == "VALID"
  return not any(low or high for low, high in padding)


def conv_max_pool(
  x: jax.Array,
  kernel: jax.Array,
  bias: jax.Array,
  strides: Sequence[int],
  padding: Padding,
  window: Sequence[int],
  dtype=None,
) -> jax.Array:
  """Max pooling, in windows that tile (`tiles`), of `conv(x, kernel, strides, padding) + bias`.

  Equal to `max_pool(conv(...) + bias, window, window, "VALID")`: the same
  values (adding the bias after the maximum rounds alike) and, up to float
  rounding, the same gradients (they go to the first maximum of each window of
  the conv's output before its bias). Computed at the pooled positions only:
  for each offset within a window, the conv's outputs at that offset of every
  window are one strided im2col; all offsets go through one matmul, and
  pooling is an elementwise maximum over offsets. An activation that is
  non-decreasing (relu, linear) gives the same result after pooling as before.

  Args:
    x: (batch, *spatial, in) values.
    kernel: (*kernel_size, in, out) weights; bias: (out,).
    strides, padding: the conv's.
    window: the pooling window, also its strides; each conv output length must
      hold at least one window.
    dtype: the dot's input dtype (see `matmul`).

  Returns:
    (batch, *pooled, out), pooled[i] = conv_output[i] // window[i].
  """
  taps = kernel.shape[:-2]
  x = _pad(x, explicit_padding(x.shape[1:-1], taps, strides, padding), 0.0)
  conv_out = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], taps, strides, strict=True)]
  pooled = tuple(o // w for o, w in zip(conv_out, window, strict=True))
  patches = _pooled_patches(x, tuple(taps), tuple(strides), tuple(window), pooled)
  y = _first_max(matmul(patches, kernel.reshape(-1, kernel.shape[-1]), dtype))
  return y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


def _pooled_patches(x, taps, strides, window, pooled) -> jax.Array:
  """(offsets, batch, *pooled, taps x in): for each offset within a pooling window, the im2col
  of the conv's outputs at that offset of every window (strided slices of padded `x`)."""
  steps = tuple(s * w for s, w in zip(strides, window, strict=True))
  groups = []
  for offset in itertools.product(*(range(w) for w in window)):
    slices = []
    for tap in itertools.product(*(range(k) for k in taps)):
      start = [s * d + t for s, d, t in zip(strides, offset, tap, strict=True)]
      limit = [b + step * (m - 1) + 1 for b, step, m in zip(start, steps, pooled, strict=True)]
      slices.append(
        jax.lax.slice(x, (0, *start, 0), (x.shape[0], *limit, x.shape[-1]), (1, *steps, 1))
      )
    groups.append(slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1))
  return jnp.stack(groups)


@jax.custom_vjp
def _first_max(z: jax.Array) -> jax.Array:
  """The maximum over axis 0, whose gradient goes to the first maximum (elementwise ops only)."""
  return functools.reduce(jnp.maximum, list(z))


def _first_max_fwd(z):
  y = _first_max(z)
  return y, (z, y)


def _first_max_bwd(residuals, g):
  z, y = residuals
  return (jnp.stack(_to_first_maximum(list(z), y, g)),)


def _to_first_maximum(candidates: list[jax.Array], y: jax.Array, g: jax.Array) -> list[jax.Array]:
  """Per candidate: `g` where it is the first to equal the maximum `y`, zeros elsewhere."""
  taken = jnp.zeros(y.shape, bool)
  grads = []
  for candidate in candidates:
    first = (candidate == y) & ~taken
    taken = taken | first
    grads.append(jnp.where(first, g, jnp.zeros_like(g)))
  return grads


_first_max.defvjp(_first_max_fwd, _first_max_bwd)


def avg_pool(
  x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: Padding
) -> jax.Array:
  """Average pooling over the real (unpadded) inputs of each window.

  Raises:
    ValueError: a window would hold only padding (see `padding_only_window`).
  """
  check_pool_padding(window, padding)
  pads = explicit_padding(x.shape[1:-1], window, strides, padding)
  total = functools.reduce(jnp.add, _window_slices(_pad(x, pads, 0.0), window, strides))
  ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
  counts = functools.reduce(jnp.add, _window_slices(_pad(ones, pads, 0.0), window, strides))
  return total / counts


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: tuple[int, ...], strides: tuple[int, ...], padding) -> jax.Array:
  """Max pooling whose gradient goes to the first maximum of each window.

  That is the gradient of `lax.reduce_window` max pooling, computed with
  elementwise masks instead of XLA's select-and-scatter.

  Raises:
    ValueError: a window would hold only padding (see `padding_only_window`).
  """
  return _max_pool_fwd(x, window, strides, padding)[0]


def _max_pool_fwd(x, window, strides, padding):
  check_pool_padding(window, padding)  # here, so that the gradient's forward pass checks too
  pads = explicit_padding(x.shape[1:-1], window, strides, padding)
  padded = _pad(x, pads, -jnp.inf)
  y = functools.reduce(jnp.maximum, _window_slices(padded, window, strides))
  return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, g):
  x, y = residuals
  pads = explicit_padding(x.shape[1:-1], window, strides, padding)
  padded = _pad(x, pads, -jnp.inf)
  grads = _to_first_maximum(_window_slices(padded, window, strides), y, g)
  if tuple(window) == tuple(strides) and not any(low or high for low, high in pads):
    grad_padded = _tile_windows(grads, window, padded.shape)  # windows tile the input
  else:  # overlapping or padded windows: transpose the slicing
    _, to_padded = jax.vjp(lambda z: _window_slices(z, window, strides), padded)
    (grad_padded,) = to_padded(grads)
  crop = tuple(
    slice(low, n - high) for (low, high), n in zip(pads, padded.shape[1:-1], strict=True)
  )
  return (grad_padded[(slice(None), *crop, slice(None))],)


def _tile_windows(grads: list[jax.Array], window: Sequence[int], shape: Sequence[int]) -> jax.Array:
  """Places one array per window offset back into the input's layout (stride == window)."""
  batch, *out, channels = grads[0].shape
  rank = len(window)
  stacked = jnp.stack(grads, axis=1).reshape(batch, *window, *out, channels)
  # (batch, w1..wr, o1..or, c) -> (batch, o1, w1, ..., or, wr, c)
  order = [0] + [a for i in range(rank) for a in (1 + rank + i, 1 + i)] + [1 + 2 * rank]
  tiled = stacked.transpose(order).reshape(
    batch, *(o * w for o, w in zip(out, window, strict=True)), channels
  )
  pads = (
    [(0, 0)] + [(0, n - o * w) for n, o, w in zip(shape[1:-1], out, window, strict=True)] + [(0, 0)]
  )
  return jnp.pad(tiled, pads)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
