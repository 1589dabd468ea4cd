"""Random convnet configs: each builds with the textbook's shapes and finite outputs, or is
refused by field name.

Hypothesis draws the input's rank and size, the number of blocks, and every
conv and pooling setting, sometimes with one setting out of its domain. A
config whose every stage has an output of at least one pixel, and whose every
pooling window holds at least one input (padding < window on each side), must
build; its first dense layer must see exactly the features the formula below
predicts, and its feature maps and logits on random inputs and weights must
be finite. Any other config must raise `ConfigError` naming the field, before
anything is compiled. Any other exception fails the test.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convnet import models
from convnet.errors import ConfigError


def expected_length(n: int, window: int, stride: int, padding) -> int:
  """The textbook's output length: floor((n + pads - window) / stride) + 1; SAME: ceil(n / s)."""
  if padding == "SAME":
    return math.ceil(n / stride)
  low, high = (0, 0) if padding == "VALID" else padding
  return math.floor((n + low + high - window) / stride) + 1


def _per_axis(value, rank):
  return (value,) * rank if isinstance(value, int) else tuple(value)


def _pads(padding, rank):
  if padding in ("VALID", "SAME"):
    return [padding] * rank
  if isinstance(padding, int):
    return [(padding, padding)] * rank
  return [tuple(p) for p in padding]


@st.composite
def configs(draw):
  rank = draw(st.integers(1, 3))
  limit = {1: 40, 2: 24, 3: 9}[rank]
  spatial = tuple(draw(st.integers(1, limit)) for _ in range(rank))
  channels = draw(st.integers(1, 3))
  blocks = draw(st.integers(1, 3))

  def size(low=1, high=5):
    if draw(st.booleans()):
      return draw(st.integers(low, high))
    return tuple(draw(st.integers(low, high)) for _ in range(rank))

  def padding():
    kind = draw(st.sampled_from(["VALID", "SAME", "int", "pairs"]))
    if kind == "int":
      return draw(st.integers(0, 2))
    if kind == "pairs":
      return tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(rank))
    return kind

  def per_block(make):
    if draw(st.booleans()):
      return make()
    return tuple(make() for _ in range(blocks))

  model = {
    "name": "convnet",
    "conv": {
      "features": tuple(draw(st.integers(1, 4)) for _ in range(blocks)),
      "kernel_size": per_block(size),
      "strides": per_block(lambda: size(1, 3)),
      "padding": per_block(padding),
      "activation": per_block(lambda: draw(st.sampled_from(["relu", "tanh", "linear"]))),
    },
    "pool": {
      "type": per_block(lambda: draw(st.sampled_from(["max", "avg", "none"]))),
      "window": per_block(lambda: size(1, 3)),
      "strides": per_block(lambda: size(1, 3)),
      "padding": per_block(padding),
    },
    "head": draw(st.sampled_from(["flatten", "global_avg", "global_max"])),
    "dense_features": tuple(draw(st.integers(1, 5)) for _ in range(draw(st.integers(0, 2)))),
    "dense_activation": "relu",
    "implementation": draw(st.sampled_from(["matmul", "lax"])),
  }
  # Sometimes one setting out of its domain, with the field the error must name.
  broken = draw(
    st.sampled_from(
      [None] * 6
      + [
        ("conv", "kernel_size", 0),
        ("conv", "strides", 0),
        ("conv", "padding", -1),
        ("conv", "padding", "FULL"),
        ("conv", "activation", "relux"),
        ("conv", "features", (2,) * (blocks - 1) + (0,)),
        ("conv", "kernel_size", (3,) * (rank + 1)),
        ("pool", "type", "maxx"),
        ("pool", "window", 0),
        ("pool", "strides", -2),
        ("conv", "strides", ((1,) * rank,) * (blocks + 1)),
        (None, "head", "flat"),
      ]
    )
  )
  input_shape = (*spatial, channels)
  expected, refused_field = _analytic(model, input_shape)
  if broken:
    group, field, value = broken
    (model[group] if group else model)[field] = value
    broken = f"model.{group}.{field}" if group else f"model.{field}"
    # With another setting already wrong, the error may name that one instead.
    broken = broken if expected is not None else None
    expected = None
  else:
    broken = refused_field
  return model, input_shape, broken, expected


def _analytic(model, input_shape):
  """(feature count after the head, None), or (None, the field to refuse) when some stage's
  output would be empty or some pooling window could hold only padding; (None, None) when a
  size does not fit the rank."""
  rank = len(input_shape) - 1
  n = len(model["conv"]["features"])

  def blockwise(value, is_single):
    return [value] * n if is_single(value) else list(value)

  def is_size(v):  # as docs/training.md says: an int, or a tuple of ints, is one size
    return isinstance(v, int) or all(isinstance(x, int) for x in v)

  def is_padding(v):  # "VALID", "SAME", an int, or (low, high) pairs of ints
    if isinstance(v, str | int):
      return True
    return all(isinstance(x, tuple) and len(x) == 2 and is_size(x) for x in v)

  conv, pool = model["conv"], model["pool"]
  for group, field in (
    (conv, "kernel_size"),
    (conv, "strides"),
    (pool, "window"),
    (pool, "strides"),
  ):  # every size must fit the rank, used or not
    if any(len(_per_axis(v, rank)) != rank for v in blockwise(group[field], is_size)):
      return None, None
  spatial = list(input_shape[:-1])
  for i in range(n):
    stages = [
      (
        blockwise(conv["kernel_size"], is_size)[i],
        blockwise(conv["strides"], is_size)[i],
        blockwise(conv["padding"], is_padding)[i],
      )
    ]
    if blockwise(pool["type"], lambda v: isinstance(v, str))[i] != "none":
      stages.append(
        (
          blockwise(pool["window"], is_size)[i],
          blockwise(pool["strides"], is_size)[i],
          blockwise(pool["padding"], is_padding)[i],
        )
      )
    for stage, (window, stride, padding) in enumerate(stages):
      # Pooling: a side padded by a window's length or more starts or ends with a window of
      # padding only (for some input lengths), whose max is -inf and average 0/0.
      for p, w in zip(_pads(padding, rank), _per_axis(window, rank), strict=True):
        if stage == 1 and p not in ("VALID", "SAME") and max(p) >= w:
          return None, "model.pool.padding"
      spatial = [
        expected_length(s, w, st_, p)
        for s, w, st_, p in zip(
          spatial,
          _per_axis(window, rank),
          _per_axis(stride, rank),
          _pads(padding, rank),
          strict=True,
        )
      ]
      if min(spatial) < 1:
        return None, "model.conv.kernel_size" if stage == 0 else "model.pool.window"
  features = conv["features"][-1]
  return (math.prod(spatial) * features if model["head"] == "flatten" else features), None


_SETTINGS = {
  "deadline": None,
  "derandomize": True,
  "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@settings(max_examples=100, **_SETTINGS)
@given(configs())
def test_random_convnet_configs_build_or_are_refused_by_field(drawn):
  _build_or_refuse(*drawn)


@pytest.mark.slow
@settings(max_examples=500, **_SETTINGS)
@given(configs())
def test_500_random_convnet_configs_build_or_are_refused_by_field(drawn):
  _build_or_refuse(*drawn)


def _build_or_refuse(model_config, input_shape, broken, expected):
  """Builds a drawn config: refused naming `broken`, or built with `expected` inputs to the head,
  a forward pass finite everywhere."""
  try:
    model = models.create_model(model_config, input_shape, num_classes=7)
  except ConfigError as e:
    message = str(e)
    assert expected is None, f"a config that fits was refused: {message}"
    if broken:
      assert broken in message, f"{broken} should be named, but the error says: {message}"
    else:
      assert re.search(r"model\.(conv|pool|head)\b", message), message
    return
  assert expected is not None, f"built, but {broken or 'some setting'} should have been refused"
  x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  first_dense = "dense_0" if model_config["dense_features"] else "logits"
  assert params[first_dense]["kernel"].shape[0] == expected
  # A forward pass on random inputs and weights: every feature map and the logits are finite.
  # The weights come from numpy (compiling `init` too would cost more than the pass), and the
  # pass is one program compiled unoptimised: it runs once on two examples, so XLA's passes
  # would cost more than they save (op-by-op eager dispatch compiles every slice alone, slower).
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), params)
  inputs = rng.normal(size=x.shape).astype(np.float32)
  forward = jax.jit(
    lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]),
    compiler_options={"xla_backend_optimization_level": 0},
  )
  logits, state = forward(params, inputs)
  assert logits.shape == (2, 7)
  for name, value in [("logits", logits), *state["intermediates"].items()]:
    assert np.isfinite(value).all(), f"{name} is not finite for this config, which built"
