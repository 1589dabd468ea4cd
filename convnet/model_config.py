"""The `model` part of a config, parsed into typed settings and checked against the data.

Every setting in `model.conv` and `model.pool` is either one value for all
blocks or a list with one value per block; `model.conv.features` sets the
number of blocks. `conv_blocks` resolves them into one `ConvBlockSpec` per
block and checks every feature map's shape against the data's input shape,
and every pooling padding against its window (a window of padding only has no
finite max or average), so an impossible setting stops with a `ConfigError`
that names the field before anything is compiled. The model modules
(`convnet.models`) build their modules from what this module returns.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from convnet import display
from convnet.errors import ConfigError
from convnet.ops import Padding, padding_only_window

# The activations a config may name, and the functions the modules apply for them.
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
IMPLEMENTATIONS = ("matmul", "lax")
# Compute dtypes (`model.dtype`): the dtype the dots take their inputs in. Parameters, optimizer
# state, activations between layers, the loss and the metrics stay float32; dots accumulate in it.
DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Activations that commute with max pooling (non-decreasing, with the same first maximum), so that
# a conv block may pool before activating (`ops.conv_max_pool`).
POOL_COMMUTING_ACTIVATIONS = ("relu", "linear")


@dataclasses.dataclass(frozen=True)
class ConvBlockSpec:
  """One conv block: convolution, activation, then optional pooling.

  Sizes and strides have one entry per spatial axis; paddings are "VALID",
  "SAME" or one (low, high) pair per spatial axis.
  """

  features: int
  kernel_size: tuple[int, ...]
  strides: tuple[int, ...]
  padding: Padding
  activation: str
  pooling: str
  pool_window: tuple[int, ...]
  pool_strides: tuple[int, ...]
  pool_padding: Padding


def output_length(length: int, window: int, stride: int, padding: str | tuple[int, int]) -> int:
  """Output length of a convolution or pooling along one axis.

  Args:
    length: the input's length along the axis.
    window: the kernel's or pooling window's length.
    stride: the step between windows.
    padding: "SAME", "VALID", or the (low, high) amounts of padding.

  Returns:
    The number of outputs; zero or less when the window does not fit.
  """
  if padding == "SAME":
    return -(-length // stride)
  low, high = (0, 0) if padding == "VALID" else padding
  return (length + low + high - window) // stride + 1


def feature_map_shapes(
  blocks: Sequence[ConvBlockSpec], input_shape: Sequence[int]
) -> Iterator[tuple[int, str, tuple[int, ...]]]:
  """Yields (block index, "conv" or "pool", spatial shape) after every conv and pooling.

  `input_shape` is one example's shape, channels last; the shapes yielded
  have no channel axis.
  """
  spatial = tuple(input_shape[:-1])
  for i, block in enumerate(blocks):
    spatial = _apply_window(spatial, block.kernel_size, block.strides, block.padding)
    yield i, "conv", spatial
    if block.pooling != "none":
      spatial = _apply_window(spatial, block.pool_window, block.pool_strides, block.pool_padding)
      yield i, "pool", spatial


def conv_blocks(
  model_config: Mapping[str, Any], input_shape: Sequence[int]
) -> tuple[ConvBlockSpec, ...]:
  """Resolves the per-block conv and pooling settings and checks their shapes.

  Sizes are an int (the same along every spatial axis) or a tuple with one
  entry per spatial axis of the data. Paddings are "VALID", "SAME", an int, or
  a tuple of (low, high) pairs, one per spatial axis; on the command line, an
  explicit padding may be written as a string such as "1" or
  "((1, 1), (2, 2))".

  Args:
    model_config: the config's `model` field (see `configs/mnist.py`).
    input_shape: shape of one example, channels last, e.g. (28, 28, 1).

  Returns:
    One `ConvBlockSpec` per entry of `model.conv.features`.

  Raises:
    ConfigError: naming the field, when a setting is malformed, a kernel or
      pooling window does not fit its block's input, or a pooling padding is
      as wide as its window on some side (see `ops.padding_only_window`).
  """
  if len(input_shape) < 2:
    raise ConfigError(
      f"model.name='convnet' needs inputs with at least one spatial axis and a channel axis; "
      f"the data's examples have shape {tuple(input_shape)}"
    )
  rank = len(input_shape) - 1
  conv, pooling = model_config["conv"], model_config["pool"]
  features = positive_ints(conv["features"], "model.conv.features")
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
    return [choice(v, options, field) for v in _per_block(value, n, field, _is_str)]

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
  _check_shapes(blocks, input_shape, pooling["padding"])
  return blocks


def compute_dtype(model_config: Mapping[str, Any]) -> str:
  """The config's `model.dtype` ("float32" where a config predates the field).

  Raises:
    ConfigError: it names no dtype of `DTYPES`.
  """
  return choice(model_config.get("dtype", "float32"), DTYPES, "model.dtype")


def choice(value, options, field: str) -> str:
  """`value`, if it is one of `options`.

  Raises:
    ConfigError: it is not; the message names `field` and lists the options.
  """
  if value not in options:
    raise ConfigError(f"{field}={value!r} is not one of: {', '.join(options)}")
  return value


def positive_ints(value, field: str) -> tuple[int, ...]:
  """An int or a sequence of ints, as a tuple of ints.

  Raises:
    ConfigError: an entry is not an int of at least 1; the message names `field`.
  """
  values = (value,) if _is_int(value) else tuple(value)
  for v in values:
    if not _is_int(v) or v < 1:
      raise ConfigError(f"{field}={value!r}: every entry must be a positive int")
  return values


def _check_shapes(
  blocks: Sequence[ConvBlockSpec], input_shape: Sequence[int], pool_padding: Any
) -> None:
  """Stage by stage: each pooling padding against its window, each output's shape.

  `pool_padding` is the config's `model.pool.padding`, as the message quotes it.
  """
  spatial = tuple(input_shape[:-1])
  for i, block in enumerate(blocks):
    stages = [("conv", block.kernel_size, block.strides, block.padding)]
    if block.pooling != "none":
      stages.append(("pool", block.pool_window, block.pool_strides, block.pool_padding))
    for stage, window, strides, padding in stages:
      if stage == "pool":
        _check_pool_padding(i, block, pool_padding)
      field = "model.conv.kernel_size" if stage == "conv" else "model.pool.window"
      out = _apply_window(spatial, window, strides, padding)
      if min(out) < 1:
        what = "kernel" if stage == "conv" else "pooling window"
        raise ConfigError(
          f"{field}: block {i}'s {display.shape(window)} {what} does not fit its "
          f"{display.shape(spatial)} input under padding {padding!r} (the output would be "
          f"{display.shape(out)}); use a smaller {field.split('.')[-1]}, padding 'SAME', "
          f"or fewer blocks"
        )
      spatial = out


def _check_pool_padding(index: int, block: ConvBlockSpec, value: Any) -> None:
  # Max pooling pads with -inf and average pooling counts real inputs only, so a window of
  # padding only gives -inf or 0/0. A convolution pads with zeros: a window of padding only
  # gives its bias, which is finite, so conv paddings are not checked.
  found = padding_only_window(block.pool_window, block.pool_padding)
  if found:
    axis, side, amount = found
    window = block.pool_window
    raise ConfigError(
      f"model.pool.padding={value!r}: block {index} pads spatial axis {axis} by {amount} on the "
      f"{side} side, so a {display.shape(window)} pooling window there would hold only "
      f"padding (no finite max or average); use padding < window on each side "
      f"(at most {window[axis] - 1} there)"
    )


def _apply_window(spatial, window, strides, padding):
  pads = [padding] * len(spatial) if isinstance(padding, str) else padding
  return tuple(
    max(output_length(n, w, s, p), 0)
    for n, w, s, p in zip(spatial, window, strides, pads, strict=True)
  )


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
