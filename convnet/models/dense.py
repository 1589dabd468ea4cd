"""The "dense" model: the baseline that flattens its input and applies dense layers only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

from convnet.model_config import ACTIVATIONS, choice, compute_dtype, positive_ints
from convnet.models import layers

# It also takes examples that are vectors already (`data.features` "pca" or "top_variance").
TAKES_FLAT_INPUTS = True


class DenseNet(nn.Module):
  """The dense baseline: flatten, dense layers, logits.

  `dtype`: the compute dtype of the dense layers' dots, "float32" or
  "bfloat16"; parameters and everything else stay float32 (`layers.apply`).
  """

  dense_features: tuple[int, ...]
  num_classes: int
  dense_activation: str = "relu"
  dtype: str = "float32"

  @property
  def layers(self) -> tuple[layers.Layer, ...]:
    """`flatten`, `dense_{i}`, `logits`."""
    head = layers.Head("flatten", "flatten")
    return head, *layers.dense_and_logits(
      self.dense_features, self.dense_activation, self.num_classes
    )

  @nn.compact
  def __call__(self, x_BSC: jax.Array) -> jax.Array:
    return layers.apply(self, self.layers, x_BSC, self.dtype)


def create(model_config: Mapping[str, Any], input_shape: Sequence[int], num_classes: int):
  """A `DenseNet` from the config's `model` field (`dense_features`, `dense_activation`, `dtype`).

  Raises:
    ConfigError: naming the field, when a setting is malformed.
  """
  dense_features = positive_ints(model_config["dense_features"], "model.dense_features")
  activation = choice(model_config["dense_activation"], ACTIVATIONS, "model.dense_activation")
  return DenseNet(dense_features, num_classes, activation, compute_dtype(model_config))
