"""Flax Linen models: the book's first convnet and its dense baseline.

`ConvNet` is a stack of conv blocks (conv, activation, optional pooling), a
head that flattens or pools globally, then dense layers and logits. Its
kernel, window and stride tuples have one entry per spatial dimension, so the
same module makes 1D, 2D and 3D convnets. `DenseNet` flattens its input and
applies dense layers only.

`create_model` turns the `model` part of a config into one of these modules.
It resolves every per-block setting and checks every shape against the data's
input shape first, so an impossible setting stops with a `ConfigError` that
names the field before anything is compiled.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from convnet import ops
from convnet.errors import ConfigError

# "VALID", "SAME", or explicit (low, high) amounts for each spatial dimension.
Padding = str | tuple[tuple[int, int], ...]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "relu": nn.relu,
  "gelu": nn.gelu,
  "elu": nn.elu,
  "selu": nn.selu,
  "swish": nn.swish,
  "tanh": jnp.tanh,
  "sigmoid": nn.sigmoid,
  "linear": lambda x: x,
}
POOLINGS = ("max", "avg", "none")
HEADS = ("flatten", "global_avg", "global_max")
MODELS = ("convnet", "dense")
IMPLEMENTATIONS = ("matmul", "lax")


@dataclasses.dataclass(frozen=True)
class ConvBlockSpec:
  """One conv block: convolution, activation, then optional pooling."""

  features: int
  kernel_size: tuple[int, ...]
  strides: tuple[int, ...]
  padding: Padding
  activation: str
  pooling: str
  pool_window: tuple[int, ...]
  pool_strides: tuple[int, ...]
  pool_padding: Padding


def pool(
  x: jax.Array,
  pooling: str,
  window: tuple[int, ...],
  strides: tuple[int, ...],
  padding: Padding,
  implementation: str = "matmul",
) -> jax.Array:
  """Max or average pooling over the spatial axes of a channels-last batch.

  Average pooling divides by the number of real (unpadded) inputs in each
  window, as Keras, TensorFlow and TensorFlow.js do. Max pooling's gradient
  goes to the first maximum of each window, in both implementations.
  """
  if pooling == "none":
    return x
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
  padding: Padding

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
  dense_features = _positive_ints(model_config["dense_features"], "model.dense_features")
  activation = _choice(model_config["dense_activation"], ACTIVATIONS, "model.dense_activation")
  if name == "dense":
    return DenseNet(dense_features, num_classes, activation)
  if name == "convnet":
    blocks = conv_blocks(model_config, input_shape)
    head = _choice(model_config["head"], HEADS, "model.head")
    implementation = _choice(
      model_config["implementation"], IMPLEMENTATIONS, "model.implementation"
    )
    return ConvNet(blocks, dense_features, num_classes, head, activation, implementation)
  raise ConfigError(f"model.name={name!r} is not a model; choose one of {', '.join(MODELS)}")


def count_params(params) -> int:
  """Total number of scalars in a parameter pytree."""
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def output_length(length: int, window: int, stride: int, padding: str | tuple[int, int]) -> int:
  """Output length of a convolution or pooling along one axis."""
  if padding == "SAME":
    return -(-length // stride)
  low, high = (0, 0) if padding == "VALID" else padding
  return (length + low + high - window) // stride + 1


def feature_map_shapes(blocks: Sequence[ConvBlockSpec], input_shape: Sequence[int]):
  """Yields (block index, stage, spatial shape) after every conv and pooling."""
  spatial = tuple(input_shape[:-1])
  for i, block in enumerate(blocks):
    spatial = _apply_window(spatial, block.kernel_size, block.strides, block.padding)
    yield i, "conv", spatial
    if block.pooling != "none":
      spatial = _apply_window(spatial, block.pool_window, block.pool_strides, block.pool_padding)
      yield i, "pool", spatial


def conv_blocks(model_config: Mapping[str, Any], input_shape: Sequence[int]):
  """Resolves the per-block conv and pooling settings and checks their shapes.

  Every setting in `model.conv` and `model.pool` is either one value for all
  blocks or a list with one value per block; `model.conv.features` sets the
  number of blocks. Sizes are an int (the same along every spatial axis) or a
  tuple with one entry per spatial axis of the data. Paddings are "VALID",
  "SAME", an int, or a tuple of (low, high) pairs, one per spatial axis; on the
  command line, an explicit padding may be written as a string such as "1" or
  "((1, 1), (2, 2))".
  """
  if len(input_shape) < 2:
    raise ConfigError(
      f"model.name='convnet' needs inputs with at least one spatial axis and a channel axis; "
      f"the data's examples have shape {tuple(input_shape)}"
    )
  rank = len(input_shape) - 1
  conv, pooling = model_config["conv"], model_config["pool"]
  features = _positive_ints(conv["features"], "model.conv.features")
  if not features:
    raise ConfigError("model.conv.features=() gives a convnet with no conv block")
  n = len(features)

  def sizes(field, value):
    return [
      _size_tuple(v, rank, f"{field}", minimum=1) for v in _per_block(value, n, field, _is_size)
    ]

  def paddings(field, value):
    return [_padding(v, rank, field) for v in _per_block(value, n, field, _is_padding)]

  def choices(field, value, options):
    return [_choice(v, options, field) for v in _per_block(value, n, field, _is_str)]

  blocks = tuple(
    ConvBlockSpec(*fields)
    for fields in zip(
      features,
      sizes("model.conv.kernel_size", conv["kernel_size"]),
      sizes("model.conv.strides", conv["strides"]),
      paddings("model.conv.padding", conv["padding"]),
      choices("model.conv.activation", conv["activation"], ACTIVATIONS),
      choices("model.pool.type", pooling["type"], POOLINGS),
      sizes("model.pool.window", pooling["window"]),
      sizes("model.pool.strides", pooling["strides"]),
      paddings("model.pool.padding", pooling["padding"]),
      strict=True,
    )
  )
  _check_shapes(blocks, input_shape)
  return blocks


def _check_shapes(blocks: Sequence[ConvBlockSpec], input_shape: Sequence[int]) -> None:
  spatial = tuple(input_shape[:-1])
  for i, block in enumerate(blocks):
    stages = [("conv", block.kernel_size, block.strides, block.padding)]
    if block.pooling != "none":
      stages.append(("pool", block.pool_window, block.pool_strides, block.pool_padding))
    for stage, window, strides, padding in stages:
      field = "model.conv.kernel_size" if stage == "conv" else "model.pool.window"
      out = _apply_window(spatial, window, strides, padding)
      if min(out) < 1:
        what = "kernel" if stage == "conv" else "pooling window"
        raise ConfigError(
          f"{field}: block {i}'s {_fmt(window)} {what} does not fit its {_fmt(spatial)} input "
          f"under padding {padding!r} (the output would be {_fmt(out)}); use a smaller "
          f"{field.split('.')[-1]}, padding 'SAME', or fewer blocks"
        )
      spatial = out


def _apply_window(spatial, window, strides, padding):
  pads = [padding] * len(spatial) if isinstance(padding, str) else padding
  return tuple(
    max(output_length(n, w, s, p), 0)
    for n, w, s, p in zip(spatial, window, strides, pads, strict=True)
  )


def _fmt(shape: Sequence[int]) -> str:
  return "x".join(str(s) for s in shape)


def _is_str(value) -> bool:
  return isinstance(value, str)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_size(value) -> bool:
  return _is_int(value) or (
    isinstance(value, (tuple, list)) and len(value) > 0 and all(_is_int(v) for v in value)
  )


def _is_pair(value) -> bool:
  return isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value)


def _is_padding(value) -> bool:
  if isinstance(value, str) or _is_int(value):
    return True
  return isinstance(value, (tuple, list)) and len(value) > 0 and all(_is_pair(v) for v in value)


def _per_block(value, n: int, field: str, is_single: Callable[[Any], bool]) -> list:
  """One value for every block, or a list of one value per block."""
  if is_single(value):
    return [value] * n
  if isinstance(value, (tuple, list)) and all(is_single(v) for v in value):
    if len(value) == 1:
      return list(value) * n
    if len(value) == n:
      return list(value)
    raise ConfigError(
      f"{field}={value!r} has {len(value)} entries, but model.conv.features sets {n} blocks; "
      f"give one value for every block or one per block"
    )
  raise ConfigError(f"{field}={value!r} is not a valid setting")


def _size_tuple(value, rank: int, field: str, minimum: int) -> tuple[int, ...]:
  size = (value,) * rank if _is_int(value) else tuple(value)
  if len(size) != rank:
    raise ConfigError(
      f"{field}={value!r} has {len(size)} axes, but the data has {rank} spatial "
      f"ax{'is' if rank == 1 else 'es'} (a tuple of ints is one size; for one size per block "
      f"write a tuple of sizes, e.g. {((2,) * rank, (1,) * rank)!r})"
    )
  if min(size) < minimum:
    raise ConfigError(f"{field}={value!r}: every entry must be at least {minimum}")
  return size


def _padding(value, rank: int, field: str) -> Padding:
  if isinstance(value, str):
    if value.upper() in ("VALID", "SAME"):
      return value.upper()
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      raise ConfigError(
        f"{field}={value!r} is not a padding; use 'VALID', 'SAME', an int, "
        f"or (low, high) pairs, one per spatial axis"
      ) from None
    if not _is_padding(value) or isinstance(value, str):
      raise ConfigError(f"{field}={value!r} is not a padding")
  pairs = ((value, value),) * rank if _is_int(value) else tuple(tuple(p) for p in value)
  if len(pairs) != rank:
    raise ConfigError(
      f"{field}={value!r} gives {len(pairs)} (low, high) pairs, but the data has {rank} "
      f"spatial ax{'is' if rank == 1 else 'es'}"
    )
  if min(min(p) for p in pairs) < 0:
    raise ConfigError(f"{field}={value!r}: padding cannot be negative")
  return pairs


def _choice(value, options, field: str) -> str:
  if value not in options:
    raise ConfigError(f"{field}={value!r} is not one of: {', '.join(options)}")
  return value


def _positive_ints(value, field: str) -> tuple[int, ...]:
  values = (value,) if _is_int(value) else tuple(value)
  for v in values:
    if not _is_int(v) or v < 1:
      raise ConfigError(f"{field}={value!r}: every entry must be a positive int")
  return values
