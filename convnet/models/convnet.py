"""The "convnet" model: the book's first convnet, and every variant its config describes.

`ConvNet` is a stack of conv blocks (conv, activation, optional pooling), a
head that flattens or pools globally, then dense layers and logits. Its
kernel, window and stride tuples have one entry per spatial dimension, so the
same module makes 1D, 2D and 3D convnets. `create` builds it from a config's
`model` field, with the blocks `convnet.model_config` resolves and checks
against the data's input shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

from convnet.model_config import (
  ACTIVATIONS,
  HEADS,
  IMPLEMENTATIONS,
  ConvBlockSpec,
  choice,
  compute_dtype,
  conv_blocks,
  positive_ints,
)
from convnet.models import layers


class ConvNet(nn.Module):
  """Conv blocks, a head, dense layers and logits (see `layers.apply`).

  Attributes:
    blocks: one `ConvBlockSpec` per conv block.
    dense_features: widths of the dense layers between the head and logits.
    num_classes: number of logits.
    head: "flatten", "global_avg" or "global_max".
    dense_activation: activation of the dense layers.
    implementation: "matmul" (convs and pooling as slices and matmuls, see
      `convnet.ops`; fastest on CPU) or "lax" (`nn.Conv` and `nn.max_pool`).
      Both compute the same function with the same parameters.
    dtype: the compute dtype of the conv and dense layers' dots, "float32" or
      "bfloat16"; parameters and everything else stay float32 (`layers.apply`).
  """

  blocks: tuple[ConvBlockSpec, ...]
  dense_features: tuple[int, ...]
  num_classes: int
  head: str = "flatten"
  dense_activation: str = "relu"
  implementation: str = "matmul"
  dtype: str = "float32"

  @property
  def layers(self) -> tuple[layers.Layer, ...]:
    """`conv_{i}` and `pool_{i}` per block, `head`, `dense_{i}`, `logits`."""
    out: list[layers.Layer] = []
    for i, block in enumerate(self.blocks):
      out.append(
        layers.Conv(
          f"conv_{i}",
          block.features,
          block.kernel_size,
          block.strides,
          block.padding,
          block.activation,
          self.implementation,
        )
      )
      if block.pooling != "none":
        out.append(
          layers.Pool(
            f"pool_{i}",
            block.pooling,
            block.pool_window,
            block.pool_strides,
            block.pool_padding,
            self.implementation,
          )
        )
    out.append(layers.Head("head", self.head))
    return (
      *out,
      *layers.dense_and_logits(self.dense_features, self.dense_activation, self.num_classes),
    )

  @nn.compact
  def __call__(self, x_BSC: jax.Array) -> jax.Array:
    return layers.apply(self, self.layers, x_BSC, self.dtype)


def create(model_config: Mapping[str, Any], input_shape: Sequence[int], num_classes: int):
  """A `ConvNet` from the config's `model` field, checked against the data's input shape.

  Raises:
    ConfigError: naming the field, when a setting cannot work on this input.
  """
  dense_features = positive_ints(model_config["dense_features"], "model.dense_features")
  activation = choice(model_config["dense_activation"], ACTIVATIONS, "model.dense_activation")
  blocks = conv_blocks(model_config, input_shape)
  head = choice(model_config["head"], HEADS, "model.head")
  implementation = choice(model_config["implementation"], IMPLEMENTATIONS, "model.implementation")
  dtype = compute_dtype(model_config)
  return ConvNet(blocks, dense_features, num_classes, head, activation, implementation, dtype)
