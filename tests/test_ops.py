"""The matmul implementation against `lax`: same values, same gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convnet import models, ops
from convnet.configs import mnist as mnist_config

CASES = [
  # (spatial input, kernel, strides, padding)
  ((28, 28), (3, 3), (1, 1), "VALID"),
  ((13, 12), (3, 2), (2, 1), "SAME"),
  ((13, 12), (5, 5), (3, 2), ((2, 1), (0, 3))),
  ((29,), (5,), (2,), "SAME"),
  ((29,), (1,), (1,), "VALID"),
  ((7, 8, 9), (3, 3, 2), (1, 2, 1), ((1, 0), (0, 2), (1, 1))),
]


def _grads(fn, x, *args):
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=jax.eval_shape(fn, x, *args).shape))
  return jax.jit(jax.grad(lambda x, *a: jnp.sum(fn(x, *a) * cotangent), argnums=(0, 1)))(x, *args)


@pytest.mark.parametrize("spatial,window,strides,padding", CASES)
def test_conv_matches_lax(spatial, window, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, *spatial, 4)).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(*window, 4, 5)).astype(np.float32))
  pads = ops.explicit_padding(spatial, window, strides, padding)

  def reference(x, kernel):
    dims = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _channels_last(len(spatial)))
    return jax.lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=dims)

  ours = jax.jit(lambda x, k: ops.conv(x, k, strides, padding))(x, kernel)
  np.testing.assert_allclose(ours, jax.jit(reference)(x, kernel), rtol=1e-4, atol=1e-4)
  for a, b in zip(
    _grads(lambda x, k: ops.conv(x, k, strides, padding), x, kernel),
    _grads(reference, x, kernel),
    strict=True,
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _channels_last(rank):
  spatial = "DHW"[-rank:] if rank <= 3 else None
  return (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")


@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("spatial,window,strides,padding", CASES)
def test_pooling_matches_lax(pooling, spatial, window, strides, padding):
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, *spatial, 4)).astype(np.float32))

  def ours(x, _):
    return models.pool(x, pooling, window, strides, padding, "matmul")

  def reference(x, _):
    return models.pool(x, pooling, window, strides, padding, "lax")

  np.testing.assert_allclose(
    jax.jit(ours)(x, 0.0), jax.jit(reference)(x, 0.0), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    _grads(ours, x, 0.0)[0], _grads(reference, x, 0.0)[0], rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize("window,strides", [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((2, 2), (1, 1))])
def test_max_pool_gradient_goes_to_the_first_of_tied_maxima(window, strides):
  # ReLU outputs are full of ties at zero; both implementations must route them alike.
  x = jnp.asarray(np.random.default_rng(3).integers(0, 2, size=(2, 9, 9, 3)).astype(np.float32))

  def grad(implementation):
    fn = lambda x: jnp.sum(models.pool(x, "max", window, strides, "VALID", implementation) * 1.5)
    return jax.grad(fn)(x)

  np.testing.assert_array_equal(grad("matmul"), grad("lax"))


MODEL_CASES = [
  ((28, 28, 1), {}),
  pytest.param(
    (28, 28, 1),
    {"conv.padding": "SAME", "pool.type": "avg", "pool.window": 3},
    marks=pytest.mark.slow,
  ),
  pytest.param(
    (61, 2),
    {
      "conv.kernel_size": 5,
      "conv.strides": 2,
      "conv.padding": "SAME",
      "pool.type": ("max", "avg", "none"),
    },
    marks=pytest.mark.slow,
  ),
  pytest.param(  # 3D: quick in tests/test_models.py against TensorFlow
    (12, 13, 14, 2),
    {"conv.features": (4, 5), "pool.type": "max", "conv.padding": 1},
    marks=pytest.mark.slow,
  ),
]


@pytest.mark.parametrize("input_shape,overrides", MODEL_CASES)
def test_convnet_implementations_agree(input_shape, overrides):
  config = mnist_config.get_config().model
  for key, value in overrides.items():
    group, field = key.split(".")
    config[group][field] = value
  config.implementation = "lax"
  reference = models.create_model(config, input_shape, 10)
  config.implementation = "matmul"
  matmul = models.create_model(config, input_shape, 10)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, *input_shape)).astype(np.float32))
  params = jax.jit(reference.init)(jax.random.key(0), x)["params"]
  same_init = jax.jit(matmul.init)(jax.random.key(0), x)["params"]
  jax.tree.map(np.testing.assert_array_equal, params, same_init)

  def loss(model):
    return lambda p: jnp.sum(jax.nn.log_softmax(model.apply({"params": p}, x))[:, 3])

  np.testing.assert_allclose(
    jax.jit(matmul.apply)({"params": params}, x),
    jax.jit(reference.apply)({"params": params}, x),
    rtol=1e-5,
    atol=1e-5,
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
    jax.jit(jax.grad(loss(matmul)))(params),
    jax.jit(jax.grad(loss(reference)))(params),
  )


# ----------------------------------------------------------------------------
# Windows of padding only.


def _windows_of_padding_only(n, window, stride, low, high):
  """Brute force: does some window of a length-n axis, padded (low, high), miss every input?"""
  count = (n + low + high - window) // stride + 1
  starts = [k * stride - low for k in range(max(count, 0))]  # in the input's coordinates
  return any(start + window - 1 < 0 or start > n - 1 for start in starts)


def test_the_pool_padding_rule_refuses_exactly_what_some_input_length_breaks():
  # `padding_only_window` refuses a padding iff some input length gives a window of padding
  # only; SAME padding never does.
  for window, stride, low, high in itertools.product(range(1, 5), range(1, 5), range(6), range(6)):
    breaks = any(
      _windows_of_padding_only(n, window, stride, low, high) for n in range(1, 4 * window * stride)
    )
    refused = ops.padding_only_window((window,), ((low, high),)) is not None
    assert refused == breaks, (window, stride, low, high)
  for n, window, stride in itertools.product(range(1, 13), range(1, 5), range(1, 5)):
    ((low, high),) = ops.explicit_padding((n,), (window,), (stride,), "SAME")
    assert not _windows_of_padding_only(n, window, stride, low, high)
    assert ops.padding_only_window((window,), ((low, high),)) is None


@pytest.mark.parametrize("implementation", ["matmul", "lax"])
@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_pooling_refuses_a_window_of_padding_only(pooling, implementation):
  # Direct callers (research scripts) get an error, not -inf or NaN; so does the gradient.
  x = jnp.ones((1, 5, 6, 2))
  padding = ((1, 1), (0, 2))
  with pytest.raises(ValueError, match="padding 2 on the high side of axis 1"):
    models.pool(x, pooling, (2, 2), (1, 1), padding, implementation)
  with pytest.raises(ValueError, match="padding 2 on the high side of axis 1"):
    jax.grad(lambda x: models.pool(x, pooling, (2, 2), (1, 1), padding, implementation).sum())(x)
  op = ops.max_pool if pooling == "max" else ops.avg_pool
  with pytest.raises(ValueError, match="a window there would hold only padding"):
    jax.grad(lambda x: op(x, (2, 2), (1, 1), padding).sum())(x)


def test_conv_padding_wider_than_the_kernel_matches_lax():
  # Accepted: zero padding leaves windows of padding only at 0 (the bias, in a model), finite.
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(2, 5, 4, 3)).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(2, 3, 3, 4)).astype(np.float32))
  padding = ((3, 4), (0, 5))
  dims = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _channels_last(2))
  reference = jax.lax.conv_general_dilated(x, kernel, (1, 2), padding, dimension_numbers=dims)
  ours = ops.conv(x, kernel, (1, 2), padding)
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(ours[:, :2], 0.0)  # rows whose windows hold padding only


# ----------------------------------------------------------------------------
# A conv and the max pooling after it as one op.

POOLED_CASES = [
  # (spatial input, kernel, strides, padding, pooling window)
  ((28, 28), (3, 3), (1, 1), "VALID", (2, 2)),  # the book's first block
  ((13, 13), (3, 3), (1, 1), "VALID", (2, 2)),  # an odd map: the last row is never read
  pytest.param((13, 12), (3, 2), (2, 1), "SAME", (3, 2), marks=pytest.mark.slow),
  pytest.param((29,), (5,), (2,), ((2, 1),), (2,), marks=pytest.mark.slow),
  pytest.param(
    (7, 8, 9), (3, 3, 2), (1, 2, 1), ((1, 0), (0, 2), (1, 1)), (2, 2, 2), marks=pytest.mark.slow
  ),
]


def _pooled_reference(x, kernel, bias, strides, padding, window):
  y = ops.conv(x, kernel, strides, padding) + bias.reshape((1,) * (len(window) + 1) + (-1,))
  return ops.max_pool(y, tuple(window), tuple(window), "VALID")


@pytest.mark.parametrize("spatial,taps,strides,padding,window", POOLED_CASES)
def test_conv_max_pool_equals_a_conv_then_max_pooling(spatial, taps, strides, padding, window):
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(3, *spatial, 4)).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(*taps, 4, 5)).astype(np.float32))
  bias = jnp.asarray(rng.normal(size=(5,)).astype(np.float32))

  def fused(x, kernel, bias):
    return ops.conv_max_pool(x, kernel, bias, strides, padding, window)

  def reference(x, kernel, bias):
    return _pooled_reference(x, kernel, bias, strides, padding, window)

  ours, theirs = jax.jit(fused)(x, kernel, bias), jax.jit(reference)(x, kernel, bias)
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.normal(size=ours.shape).astype(np.float32))
  for a, b in zip(
    jax.grad(lambda *p: jnp.sum(fused(*p) * cotangent), argnums=(0, 1, 2))(x, kernel, bias),
    jax.grad(lambda *p: jnp.sum(reference(*p) * cotangent), argnums=(0, 1, 2))(x, kernel, bias),
    strict=True,
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_max_pool_routes_tied_maxima_to_the_first_as_max_pooling_does():
  # Small integers: the conv's outputs are exact and full of ties.
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.integers(0, 2, size=(2, 10, 10, 2)).astype(np.float32))
  kernel = jnp.asarray(rng.integers(0, 2, size=(3, 3, 2, 3)).astype(np.float32))
  bias = jnp.asarray([1.0, -2.0, 0.0])
  args = (x, kernel, bias, (1, 1), "VALID", (2, 2))

  def grads(fn):
    return jax.grad(lambda x, k, b: jnp.sum(fn(x, k, b, *args[3:]) * 1.5), argnums=(0, 1, 2))(
      *args[:3]
    )

  for a, b in zip(grads(ops.conv_max_pool), grads(_pooled_reference), strict=True):
    np.testing.assert_array_equal(a, b)


def _dot_input_shapes(fn, *args) -> list[tuple[int, ...]]:
  jaxpr = jax.make_jaxpr(fn)(*args)
  return [e.invars[0].aval.shape for e in jaxpr.eqns if e.primitive.name == "dot_general"]


def test_the_book_model_pools_before_activating_unless_the_feature_maps_are_asked_for():
  model = models.create_model(mnist_config.get_config().model, (28, 28, 1), 10)
  x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 28, 28, 1)).astype(np.float32))
  params = jax.jit(model.init)(jax.random.key(0), x)["params"]
  plain = _dot_input_shapes(lambda p: model.apply({"params": p}, x), params)
  # conv_0 computes the 4 offsets of 13x13 windows (not 26x26 outputs), conv_1 those of 5x5.
  assert plain[:2] == [(4 * 2 * 13 * 13, 9), (4 * 2 * 5 * 5, 144)]
  collecting = _dot_input_shapes(
    lambda p: model.apply({"params": p}, x, mutable=["intermediates"]), params
  )
  assert collecting[:2] == [(2 * 26 * 26, 9), (2 * 11 * 11, 144)]
  logits, state = jax.jit(lambda p: model.apply({"params": p}, x, mutable=["intermediates"]))(
    params
  )
  assert state["intermediates"]["activation_0"][0].shape == (2, 26, 26, 16)
  np.testing.assert_allclose(logits, jax.jit(model.apply)({"params": params}, x), atol=1e-5)


@pytest.mark.parametrize(
  "overrides",
  [
    {"conv.activation": "gelu"},  # does not commute with max pooling
    {"pool.type": "avg"},
    {"pool.window": 3},  # windows of 3, strides of 2: they overlap
  ],
)
def test_blocks_that_cannot_pool_first_run_as_written(overrides):
  config = mnist_config.get_config().model
  for key, value in overrides.items():
    group, field = key.split(".")
    config[group][field] = value
  model = models.create_model(config, (28, 28, 1), 10)
  x = jnp.zeros((2, 28, 28, 1))
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  assert _dot_input_shapes(lambda p: model.apply({"params": p}, x), params)[0] == (2 * 26 * 26, 9)
