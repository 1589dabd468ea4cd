"""Convolution and pooling written as slices and one matmul, fast on CPU.

XLA:CPU hands forward convolutions to an optimised library, but emits the
gradients of convolutions and of `reduce_window` max pooling as generic loops,
several times slower, and slower still inside a `lax.scan`. Written here as
strided slices, one `dot_general` and elementwise ops, every heavy operation
of a training step is a matmul, on any backend. `models.ConvNet` uses these
with `implementation="matmul"` and the `lax` ops with `implementation="lax"`;
both compute the same function with the same parameters.
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


def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Padding) -> jax.Array:
  """`lax.conv_general_dilated` for channels-last inputs and (*window, in, out) kernels.

  The window's slices are concatenated along channels (im2col) and multiplied
  by the kernel reshaped to (window size x in, out): one matmul.
  """
  window = kernel.shape[:-2]
  x = _pad(x, explicit_padding(x.shape[1:-1], window, strides, padding), 0.0)
  slices = _window_slices(x, window, strides)
  patches = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
  weights = kernel.reshape(-1, kernel.shape[-1])
  return jax.lax.dot_general(patches, weights, (((patches.ndim - 1,), (0,)), ((), ())))


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
  slices = _window_slices(padded, window, strides)
  taken = jnp.zeros(y.shape, bool)
  grads = []
  for s in slices:
    first = (s == y) & ~taken
    taken = taken | first
    grads.append(jnp.where(first, g, jnp.zeros_like(g)))
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
