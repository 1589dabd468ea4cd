"""The layers a model is made of, as data, and the Linen code that applies them in order.

A model lists its layers (`model.layers`): convolutions, poolings, the head
that turns feature maps into a vector, and dense layers, the last of which
gives the logits. The summary (`convnet.summary`), the export formats
(`convnet.formats`) and the figures (`convnet.visualize`, `convnet.interpret`)
read that list, so a model made of these kinds gets all of them without code
of its own. `Stack` is a model that is nothing but its list; `ConvNet` and
`DenseNet` build theirs from their typed fields.

Sizes and strides have one entry per spatial axis, so the same layers make
1D, 2D and 3D models. Paddings are "VALID", "SAME" or one (low, high) pair per
spatial axis. Activations are the names of `model_config.ACTIVATIONS`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from convnet import ops
from convnet.model_config import ACTIVATIONS, DTYPES, HEADS, POOL_COMMUTING_ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class Conv:
  """A convolution with a bias, then its activation, channels last.

  `implementation`: "matmul" (`ops.conv`, one matmul; fastest on CPU) or "lax"
  (`nn.Conv`): the same function with the same parameters.
  """

  name: str
  features: int
  kernel_size: tuple[int, ...]
  strides: tuple[int, ...]
  padding: ops.Padding
  activation: str = "relu"
  implementation: str = "matmul"


@dataclasses.dataclass(frozen=True)
class Pool:
  """Max ("max") or average ("avg") pooling over the real inputs of each window."""

  name: str
  kind: str
  window: tuple[int, ...]
  strides: tuple[int, ...]
  padding: ops.Padding = "VALID"
  implementation: str = "matmul"


@dataclasses.dataclass(frozen=True)
class Head:
  """Feature maps to one vector: "flatten" (channels last), "global_avg" or "global_max"."""

  name: str
  kind: str


@dataclasses.dataclass(frozen=True)
class Dense:
  """`activation(x @ kernel + bias)` on a vector; the last one gives the logits."""

  name: str
  features: int
  activation: str = "linear"


Layer = Conv | Pool | Head | Dense


def dense_and_logits(
  dense_features: tuple[int, ...], activation: str, num_classes: int
) -> tuple[Dense, ...]:
  """`dense_{i}` layers of `dense_features` units with `activation`, then `logits`."""
  hidden = tuple(Dense(f"dense_{i}", f, activation) for i, f in enumerate(dense_features))
  return (*hidden, Dense("logits", num_classes))


def convs(layers: tuple[Layer, ...]) -> list[Conv]:
  """The convolutions among `layers`, in order: conv block k is the k-th of them."""
  return [layer for layer in layers if isinstance(layer, Conv)]


def pool(
  x: jax.Array,
  pooling: str,
  window: tuple[int, ...],
  strides: tuple[int, ...],
  padding: ops.Padding,
  implementation: str = "matmul",
) -> jax.Array:
  """Max or average pooling over the spatial axes of a channels-last batch.

  Average pooling divides by the number of real (unpadded) inputs in each
  window, as Keras, TensorFlow and TensorFlow.js do. Max pooling's gradient
  goes to the first maximum of each window, in both implementations.

  Raises:
    ValueError: a window would hold only padding (see `ops.padding_only_window`).
  """
  if pooling == "none":
    return x
  ops.check_pool_padding(window, padding)
  if implementation == "lax":
    if pooling == "max":
      return nn.max_pool(x, window, strides=strides, padding=padding)
    return nn.avg_pool(x, window, strides=strides, padding=padding, count_include_pad=False)
  if pooling == "max":
    return ops.max_pool(x, window, strides, padding)
  return ops.avg_pool(x, window, strides, padding)


class MatmulConv(nn.Module):
  """`nn.Conv`'s parameters and function, computed by `ops.conv` as one matmul.

  With `pool_window`, the block's max pooling too, before the activation
  (`ops.conv_max_pool`: the same values and gradients where the activation is
  non-decreasing, and cheaper). `dtype`: the dot's input dtype (None: float32).
  """

  features: int
  kernel_size: tuple[int, ...]
  strides: tuple[int, ...]
  padding: ops.Padding
  dtype: Any = None
  pool_window: tuple[int, ...] | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (*self.kernel_size, x.shape[-1], self.features)
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    if self.pool_window is not None:
      return ops.conv_max_pool(
        x, kernel, bias, self.strides, self.padding, self.pool_window, self.dtype
      )
    y = ops.conv(x, kernel, self.strides, self.padding, self.dtype)
    return y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


def _accumulating(op, dtype):
  """`op` (a `lax` conv or dot) accumulating in float32 where its inputs are `dtype`."""
  return functools.partial(op, preferred_element_type=jnp.float32) if dtype is not None else op


def pools_first(layer: Conv, following: Layer | None) -> bool:
  """Whether conv `layer` and the pooling after it can run as one `ops.conv_max_pool`.

  For matmul convs whose activation commutes with max pooling, followed by max
  pooling in windows that tile (`ops.tiles`). The model then computes only the
  conv outputs the pooling reads, and activates the pooled ones.
  """
  return (
    isinstance(following, Pool)
    and layer.implementation == "matmul"
    and following.implementation == "matmul"
    and following.kind == "max"
    and layer.activation in POOL_COMMUTING_ACTIVATIONS
    and ops.tiles(following.window, following.strides, following.padding)
  )


def _pools_first(module: nn.Module, layer: Conv, following: Layer | None, block: int) -> bool:
  """`pools_first`, where nothing asks for the activation before pooling.

  Not while intermediates are collected, nor under perturbations (Grad-CAM).
  """
  return (
    pools_first(layer, following)
    and not module.is_mutable_collection("intermediates")
    and not module.is_mutable_collection("perturbations")
    and not module.has_variable("perturbations", f"activation_{block}")
  )


def apply(
  module: nn.Module, layers: tuple[Layer, ...], x_BSC: jax.Array, dtype: str = "float32"
) -> jax.Array:
  """Applies `layers` in order, from a batch (batch, spatial..., channels) to its logits.

  Called from `module`'s compact `__call__`, whose submodules the layers with
  parameters become, named by the layers' names. `dtype` ("float32" or
  "bfloat16", `model_config.DTYPES`) is the compute dtype of every conv and
  dense layer's dot: its inputs are cast to it, it accumulates in float32, and
  parameters and everything between the dots stay float32. Applied with
  `mutable=["intermediates"]`, `module` also returns the feature maps of conv
  block k (the k-th convolution and the poolings right after it):
  `activation_{k}` after the activation, `block_{k}` after the poolings. Given
  `perturbations` (zeros shaped like `activation_{k}`), gradients with respect
  to them are gradients with respect to those feature maps (Grad-CAM).

  Raises:
    ValueError: a dense layer before the head, or a head of an unknown kind.
  """
  compute = None if dtype == "float32" else DTYPES[dtype]
  x = x_BSC
  block = -1  # the conv block the feature maps belong to
  pooled = None  # a pooling already done with its conv
  for layer, following in zip(layers, (*layers[1:], None), strict=True):
    with jax.named_scope(layer.name):  # every op by its layer's name, in profiles and HLO
      x, block, pooled = _apply_layer(module, layer, following, x, block, pooled, compute)
  return x


def _apply_layer(module, layer, following, x, block, pooled, compute):
  """`apply`'s step for one layer: (its output, the conv block, a pooling its conv did)."""
  if isinstance(layer, Conv):
    block += 1
    if layer.implementation == "lax":
      pooled = None
      conv = nn.Conv(
        layer.features,
        layer.kernel_size,
        layer.strides,
        layer.padding,
        dtype=compute,
        conv_general_dilated=_accumulating(jax.lax.conv_general_dilated, compute),
        name=layer.name,
      )
    else:
      pooled = following if _pools_first(module, layer, following, block) else None
      window = pooled.window if pooled else None
      conv = MatmulConv(
        layer.features,
        layer.kernel_size,
        layer.strides,
        layer.padding,
        compute,
        window,
        name=layer.name,
      )
    x = ACTIVATIONS[layer.activation](conv(x))
    if not pooled:
      x = module.perturb(f"activation_{block}", x)
      module.sow("intermediates", f"activation_{block}", x)
  elif isinstance(layer, Pool):
    if layer is not pooled:
      x = pool(x, layer.kind, layer.window, layer.strides, layer.padding, layer.implementation)
  elif isinstance(layer, Head):
    x = _head(x, layer.kind)
  else:
    if x.ndim != 2:
      raise ValueError(f"layer {layer.name} is dense, but no head makes its input a vector")
    dense = nn.Dense(
      layer.features,
      dtype=compute,
      dot_general=_accumulating(jax.lax.dot_general, compute),
      name=layer.name,
    )
    x = ACTIVATIONS[layer.activation](dense(x))
  if isinstance(layer, Conv | Pool) and block >= 0 and not isinstance(following, Pool):
    module.sow("intermediates", f"block_{block}", x)
  return x, block, pooled


def _head(x: jax.Array, kind: str) -> jax.Array:
  if kind == "flatten":
    return x.reshape((x.shape[0], -1))
  spatial_axes = tuple(range(1, x.ndim - 1))
  if kind == "global_avg":
    return jnp.mean(x, axis=spatial_axes)
  if kind == "global_max":
    return jnp.max(x, axis=spatial_axes)
  raise ValueError(f"unknown head {kind!r}; one of {', '.join(HEADS)}")


class Stack(nn.Module):
  """A model that is its list of layers, applied in order (see `apply`).

  Attributes:
    layers: the layers, ending in the dense layer that gives the logits.
    dtype: the compute dtype of its dots, "float32" or "bfloat16" (see `apply`).
  """

  layers: tuple[Layer, ...]
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x_BSC: jax.Array) -> jax.Array:
    return apply(self, self.layers, x_BSC, self.dtype)
