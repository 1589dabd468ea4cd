"""Flax Linen models: the book's first convnet and its dense baseline.

`ConvNet` is a stack of conv blocks (conv, activation, optional pooling), a
head that flattens or pools globally, then dense layers and logits. Its
kernel, window and stride tuples have one entry per spatial dimension, so the
same module makes 1D, 2D and 3D convnets. `DenseNet` flattens its input and
applies dense layers only.

`create_model` turns the `model` part of a config into one of these modules,
with the settings `convnet.model_config` resolves and checks against the
data's input shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from convnet import ops
from convnet.errors import ConfigError
from convnet.model_config import (
  ACTIVATIONS,
  HEADS,
  IMPLEMENTATIONS,
  MODELS,
  ConvBlockSpec,
  choice,
  conv_blocks,
  positive_ints,
)


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
  """`nn.Conv`'s parameters and function, computed by `ops.conv` as one matmul."""

  features: int
  kernel_size: tuple[int, ...]
  strides: tuple[int, ...]
  padding: ops.Padding

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (*self.kernel_size, x.shape[-1], self.features)
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    y = ops.conv(x, kernel, self.strides, self.padding)
    return y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


class ConvNet(nn.Module):
  """Conv blocks, a head, dense layers and logits.

  Applied with `mutable=["intermediates"]`, it also returns every block's
  feature maps: `activation_{i}` after the activation, `block_{i}` after pooling.
  Given `perturbations` (zeros shaped like `activation_{i}`), gradients with
  respect to them are gradients with respect to those feature maps.

  Attributes:
    blocks: one `ConvBlockSpec` per conv block.
    dense_features: widths of the dense layers between the head and logits.
    num_classes: number of logits.
    head: "flatten", "global_avg" or "global_max".
    dense_activation: activation of the dense layers.
    implementation: "matmul" (convs and pooling as slices and matmuls, see
      `convnet.ops`; fastest on CPU) or "lax" (`nn.Conv` and `nn.max_pool`).
      Both compute the same function with the same parameters.
  """

  blocks: tuple[ConvBlockSpec, ...]
  dense_features: tuple[int, ...]
  num_classes: int
  head: str = "flatten"
  dense_activation: str = "relu"
  implementation: str = "matmul"

  @nn.compact
  def __call__(self, x_BSC: jax.Array) -> jax.Array:
    x = x_BSC  # batch, spatial dims..., channels
    for i, block in enumerate(self.blocks):
      conv = nn.Conv if self.implementation == "lax" else MatmulConv
      x = conv(block.features, block.kernel_size, block.strides, block.padding, name=f"conv_{i}")(x)
      x = ACTIVATIONS[block.activation](x)
      # Adds the `perturbations` given to `apply` (none in training): gradients with respect to
      # them are gradients with respect to the feature maps, as Grad-CAM needs.
      x = self.perturb(f"activation_{i}", x)
      self.sow("intermediates", f"activation_{i}", x)
      x = pool(
        x,
        block.pooling,
        block.pool_window,
        block.pool_strides,
        block.pool_padding,
        self.implementation,
      )
      self.sow("intermediates", f"block_{i}", x)
    spatial_axes = tuple(range(1, x.ndim - 1))
    if self.head == "flatten":
      x = x.reshape((x.shape[0], -1))
    elif self.head == "global_avg":
      x = jnp.mean(x, axis=spatial_axes)
    elif self.head == "global_max":
      x = jnp.max(x, axis=spatial_axes)
    else:
      raise ValueError(f"unknown head {self.head!r}")
    for i, features in enumerate(self.dense_features):
      x = ACTIVATIONS[self.dense_activation](nn.Dense(features, name=f"dense_{i}")(x))
    return nn.Dense(self.num_classes, name="logits")(x)


class DenseNet(nn.Module):
  """The dense baseline: flatten, dense layers, logits."""

  dense_features: tuple[int, ...]
  num_classes: int
  dense_activation: str = "relu"

  @nn.compact
  def __call__(self, x_BSC: jax.Array) -> jax.Array:
    x = x_BSC.reshape((x_BSC.shape[0], -1))
    for i, features in enumerate(self.dense_features):
      x = ACTIVATIONS[self.dense_activation](nn.Dense(features, name=f"dense_{i}")(x))
    return nn.Dense(self.num_classes, name="logits")(x)


def create_model(model_config: Mapping[str, Any], input_shape: Sequence[int], num_classes: int):
  """Builds the module a config names, after checking it against the data.

  Args:
    model_config: the config's `model` field (see `configs/mnist.py`).
    input_shape: shape of one example, channels last, e.g. (28, 28, 1).
    num_classes: number of classes in the data.

  Returns:
    A `ConvNet` or `DenseNet`.

  Raises:
    ConfigError: naming the field, when a setting cannot work on this input.
  """
  name = model_config["name"]
  dense_features = positive_ints(model_config["dense_features"], "model.dense_features")
  activation = choice(model_config["dense_activation"], ACTIVATIONS, "model.dense_activation")
  if name == "dense":
    return DenseNet(dense_features, num_classes, activation)
  if name == "convnet":
    blocks = conv_blocks(model_config, input_shape)
    head = choice(model_config["head"], HEADS, "model.head")
    implementation = choice(model_config["implementation"], IMPLEMENTATIONS, "model.implementation")
    return ConvNet(blocks, dense_features, num_classes, head, activation, implementation)
  raise ConfigError(f"model.name={name!r} is not a model; choose one of {', '.join(MODELS)}")


def count_params(params) -> int:
  """Total number of scalars in a parameter pytree."""
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def to_nnx(model: nn.Module, params: Mapping[str, Any]):
  """A Linen `model` with its trained `params` as a Flax NNX module (`flax.nnx.bridge.ToNNX`).

  The result is called as NNX modules are, `logits_BK = nnx_model(x_B...)`
  (under `nnx.jit` for speed), and computes what
  `model.apply({"params": params}, x)` computes; it can be a submodule of NNX
  code, or be trained further with `nnx.Optimizer`. The trained variables are
  set directly, so nothing is initialised (no `lazy_init`, which would run the
  model once, op by op).

  For a trained run: `params, _ = checkpoints.restore_params(DIR)`, and `model`
  from `create_model` with the run's config (see the README).
  """
  from flax import nnx
  from flax.nnx.bridge import variables as bridge_variables

  nnx_model = nnx.bridge.ToNNX(model, rngs=nnx.Rngs(0))
  for name, value in bridge_variables.linen_vars_to_nnx_attrs({"params": params}).items():
    setattr(nnx_model, name, value)
  return nnx_model
