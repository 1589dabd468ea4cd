"""Models: parameter counts, output shapes, and semantics against TensorFlow."""

import itertools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from convnet import models
from convnet.configs import dense as dense_config
from convnet.configs import mnist as mnist_config
from convnet.configs import mnist1d as mnist1d_config
from convnet.configs import mnist1d_dense as mnist1d_dense_config
from convnet.errors import ConfigError
from convnet.model_config import conv_blocks, feature_map_shapes
from tests.conftest import model_config


def _init(model, input_shape):
  return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *input_shape)))["params"]


def _param_shapes(model, input_shape):
  """Parameter shapes, traced without compiling or running anything."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def test_book_parameter_counts():
  # Pinned from the book (section 4.2). Update only if the book's models change.
  convnet = models.create_model(mnist_config.get_config().model, (28, 28, 1), 10)
  dense = models.create_model(dense_config.get_config().model, (28, 28, 1), 10)
  assert models.count_params(_param_shapes(convnet, (28, 28, 1))) == 33_194
  assert models.count_params(_param_shapes(dense, (28, 28, 1))) == 33_400


def test_mnist1d_models_match_the_reference_sizes():
  # The MNIST-1D authors' reference CNN (three stride-2 convs of 25 channels, then logits) and
  # MLP (two hidden layers of 100). Update only if those configs change on purpose.
  convnet = models.create_model(mnist1d_config.get_config().model, (40, 1), 10)
  mlp = models.create_model(mnist1d_dense_config.get_config().model, (40, 1), 10)
  params = _param_shapes(convnet, (40, 1))
  assert {name: layer["kernel"].shape for name, layer in params.items()} == {
    "conv_0": (5, 1, 25),
    "conv_1": (3, 25, 25),
    "conv_2": (3, 25, 25),
    "logits": (5 * 25, 10),
  }
  assert models.count_params(params) == 5_210
  assert models.count_params(_param_shapes(mlp, (40, 1))) == 15_210


def test_book_convnet_layers():
  model = models.create_model(mnist_config.get_config().model, (28, 28, 1), 10)
  params = _param_shapes(model, (28, 28, 1))
  shapes = {name: layer["kernel"].shape for name, layer in params.items()}
  assert shapes == {
    "conv_0": (3, 3, 1, 16),
    "conv_1": (3, 3, 16, 32),
    "conv_2": (3, 3, 32, 32),
    "dense_0": (3 * 3 * 32, 64),
    "logits": (64, 10),
  }


def _expected_length(n, window, stride, padding):
  """Textbook output length (independent of convnet.models)."""
  if padding == "SAME":
    return math.ceil(n / stride)
  if padding == "VALID":
    return math.floor((n - window) / stride) + 1
  low, high = padding
  return math.floor((n + low + high - window) / stride) + 1


SHAPE_CASES = [
  # (spatial input, kernel, conv stride, conv padding, pooling, window, pool stride, pool padding)
  (spatial, k, s, pad, pool, w, ps, ppad)
  for spatial, (k, s, pad, pool, w, ps, ppad) in itertools.product(
    [(29,), (17, 23), (18, 19, 20)],
    [
      (3, 1, "VALID", "max", 2, 2, "VALID"),
      (3, 2, "SAME", "avg", 3, 2, "SAME"),
      (5, 1, "SAME", "none", 2, 2, "VALID"),
      (4, 3, "VALID", "max", 3, 1, "SAME"),
      (3, 1, 1, "avg", 2, 2, "VALID"),
      (2, 2, 2, "max", 2, 1, 1),
    ],
  )
]


@pytest.mark.parametrize("spatial,k,s,pad,pool,w,ps,ppad", SHAPE_CASES)
def test_output_shapes_match_formula(spatial, k, s, pad, pool, w, ps, ppad):
  rank = len(spatial)
  config = model_config(
    **{
      "conv.features": (4, 5),
      "conv.kernel_size": k,
      "conv.strides": s,
      "conv.padding": pad,
      "pool.type": pool,
      "pool.window": w,
      "pool.strides": ps,
      "pool.padding": ppad,
    }
  )
  input_shape = (*spatial, 2)
  model = models.create_model(config, input_shape, 7)
  x = jax.ShapeDtypeStruct((3, *input_shape), jnp.float32)
  params = _param_shapes(model, input_shape)
  logits, state = jax.eval_shape(
    lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]), params, x
  )
  assert logits.shape == (3, 7)
  inter = state["intermediates"]
  expected = spatial
  for i, features in enumerate((4, 5)):
    pads = [pad] * rank if isinstance(pad, str) else [(pad, pad)] * rank
    expected = tuple(_expected_length(n, k, s, p) for n, p in zip(expected, pads, strict=True))
    assert inter[f"activation_{i}"][0].shape == (3, *expected, features)
    if pool != "none":
      ppads = [ppad] * rank if isinstance(ppad, str) else [(ppad, ppad)] * rank
      expected = tuple(_expected_length(n, w, ps, p) for n, p in zip(expected, ppads, strict=True))
    assert inter[f"block_{i}"][0].shape == (3, *expected, features)


def test_per_block_settings_and_explicit_padding():
  config = model_config(
    **{
      "conv.kernel_size": ((5, 5), 3, (1, 3)),
      "conv.padding": ("SAME", ((1, 2), (0, 0)), "VALID"),
      "conv.activation": ("relu", "tanh", "linear"),
      "pool.type": ("avg", "none", "max"),
    }
  )
  blocks = conv_blocks(config, (28, 28, 1))
  assert [b.kernel_size for b in blocks] == [(5, 5), (3, 3), (1, 3)]
  assert blocks[1].padding == ((1, 2), (0, 0))
  assert [b.pooling for b in blocks] == ["avg", "none", "max"]
  assert list(feature_map_shapes(blocks, (28, 28, 1))) == [
    (0, "conv", (28, 28)),
    (0, "pool", (14, 14)),
    (1, "conv", (15, 12)),
    (2, "conv", (15, 10)),
    (2, "pool", (7, 5)),
  ]


def test_padding_string_from_command_line():
  config = model_config(**{"conv.padding": "((1, 1), (2, 0))"})
  assert conv_blocks(config, (28, 28, 1))[0].padding == ((1, 1), (2, 0))


@pytest.mark.parametrize("head", ["global_avg", "global_max"])
def test_global_pooling_heads(head):
  config = model_config(head=head)
  params = _param_shapes(models.create_model(config, (28, 28, 1), 10), (28, 28, 1))
  assert params["dense_0"]["kernel"].shape == (32, 64)


# ----------------------------------------------------------------------------
# Semantics against TensorFlow's own ops.

tf = pytest.importorskip("tensorflow")


def _numpy_pool(x, window, strides, padding, kind):
  """Reference pooling over explicit (low, high) pads, padding ignored."""
  pad_width = [(0, 0), *padding, (0, 0)]
  fill = -np.inf if kind == "max" else np.nan
  xp = np.pad(x, pad_width, constant_values=fill)
  out_shape = [(n - w) // s + 1 for n, w, s in zip(xp.shape[1:-1], window, strides, strict=True)]
  out = np.empty((x.shape[0], *out_shape, x.shape[-1]), x.dtype)
  for idx in itertools.product(*[range(n) for n in out_shape]):
    sl = tuple(slice(i * s, i * s + w) for i, s, w in zip(idx, strides, window, strict=True))
    patch = xp[(slice(None), *sl, slice(None))].reshape(x.shape[0], -1, x.shape[-1])
    out[(slice(None), *idx, slice(None))] = (
      patch.max(1) if kind == "max" else np.nanmean(patch, axis=1)
    )
  return out


SLOW = {"marks": pytest.mark.slow}  # the quick tier keeps each rank, padding and pooling once
BLOCK_CASES = [
  ((31,), 3, 1, "VALID", "max", 2, 2, "VALID"),
  pytest.param((31,), 4, 2, "SAME", "avg", 3, 2, "SAME", **SLOW),
  ((13, 12), 3, 1, "VALID", "max", 2, 2, "VALID"),
  pytest.param((13, 12), 3, 2, "SAME", "avg", 3, 2, "SAME", **SLOW),
  pytest.param((13, 12), 5, 1, "SAME", "max", 3, 1, "SAME", **SLOW),
  ((13, 12), 3, 1, ((2, 1), (0, 3)), "avg", 3, 2, ((1, 1), (1, 0))),
  pytest.param((13, 12), 2, 3, ((1, 0), (1, 1)), "max", 2, 2, ((0, 1), (1, 1)), **SLOW),
  pytest.param((7, 8, 9), 3, 1, "VALID", "max", 2, 2, "VALID", **SLOW),
  ((7, 8, 9), 3, 2, "SAME", "avg", 2, 2, "SAME"),
  # The widest pooling padding allowed, window - 1: edge windows hold one input each.
  ((13, 12), 3, 1, "VALID", "max", 3, 2, ((2, 2), (0, 2))),
  pytest.param((7, 8, 9), 2, 1, "VALID", "avg", 3, 3, ((2, 2), (0, 2), (2, 1)), **SLOW),
]


@pytest.mark.parametrize("spatial,k,s,pad,pool,w,ps,ppad", BLOCK_CASES)
def test_conv_block_matches_tensorflow(spatial, k, s, pad, pool, w, ps, ppad):
  rank = len(spatial)
  config = model_config(
    **{
      "conv.features": (6,),
      "conv.kernel_size": k,
      "conv.strides": s,
      "conv.padding": pad,
      "pool.type": pool,
      "pool.window": w,
      "pool.strides": ps,
      "pool.padding": ppad,
    }
  )
  input_shape = (*spatial, 3)
  model = models.create_model(config, input_shape, 4)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, *input_shape)).astype(np.float32)
  params = jax.tree.map(
    lambda p: rng.normal(size=p.shape).astype(np.float32), _init(model, input_shape)
  )
  _, state = jax.jit(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]))(
    params, x
  )
  ours = np.asarray(state["intermediates"]["block_0"][0])

  kernel, bias = params["conv_0"]["kernel"], params["conv_0"]["bias"]
  if isinstance(pad, str):
    conv = tf.nn.convolution(x, kernel, strides=s, padding=pad)
  else:
    padded = np.pad(x, [(0, 0), *pad, (0, 0)])
    conv = tf.nn.convolution(padded, kernel, strides=s, padding="VALID")
  act = tf.nn.relu(conv + bias).numpy()
  if isinstance(ppad, str):
    kind = "MAX" if pool == "max" else "AVG"
    ref = tf.nn.pool(act, [w] * rank, kind, strides=[ps] * rank, padding=ppad).numpy()
  else:
    ref = _numpy_pool(act, [w] * rank, [ps] * rank, ppad, pool)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_dense_net_matches_numpy():
  model = models.create_model(dense_config.get_config().model, (28, 28, 1), 10)
  params = jax.tree.map(np.asarray, _init(model, (28, 28, 1)))
  x = np.random.default_rng(1).uniform(size=(5, 28, 28, 1)).astype(np.float32)
  h = np.maximum(x.reshape(5, -1) @ params["dense_0"]["kernel"] + params["dense_0"]["bias"], 0)
  ref = h @ params["logits"]["kernel"] + params["logits"]["bias"]
  logits = jax.jit(model.apply)({"params": params}, x)
  np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------
# Impossible settings name their field.


@pytest.mark.parametrize(
  "overrides,input_shape,message",
  [
    ({"conv.strides": 0}, (28, 28, 1), "model.conv.strides=0"),
    ({"pool.strides": (2, 0)}, (28, 28, 1), "model.pool.strides=(2, 0)"),
    ({"conv.kernel_size": 9}, (8, 8, 1), "model.conv.kernel_size"),
    ({"conv.kernel_size": 29}, (28, 28, 1), "29x29 kernel does not fit its 28x28 input"),
    (
      {"conv.features": (8,) * 5, "conv.padding": "SAME", "pool.type": "max"},
      (28, 28, 1),
      "model.pool.window: block 4's 2x2 pooling window does not fit its 1x1 input",
    ),
    ({"pool.type": "median"}, (28, 28, 1), "model.pool.type='median'"),
    ({"conv.padding": "REFLECT"}, (28, 28, 1), "model.conv.padding='REFLECT'"),
    ({"pool.padding": "FULL"}, (28, 28, 1), "model.pool.padding='FULL'"),
    ({"pool.padding": 2}, (28, 28, 1), "model.pool.padding=2: block 0 pads spatial axis 0 by 2"),
    ({"pool.padding": 1}, (28, 28, 1), None),  # valid: padding < window
    ({"conv.padding": -1}, (28, 28, 1), "padding cannot be negative"),
    ({"conv.features": (16, -32, 32)}, (28, 28, 1), "model.conv.features=(16, -32, 32)"),
    ({"dense_features": (-1,)}, (28, 28, 1), "model.dense_features=(-1,)"),
    ({"conv.kernel_size": -3}, (28, 28, 1), "model.conv.kernel_size=-3"),
    ({"conv.kernel_size": (3, 3)}, (40, 1), "has 2 axes, but the data has 1 spatial axis"),
    ({"conv.activation": "softmax"}, (28, 28, 1), "model.conv.activation='softmax'"),
    ({"conv.strides": (1, 2), "conv.padding": "SAME"}, (28, 28, 1), None),  # valid
    ({"pool.type": ("max", "max")}, (28, 28, 1), "has 2 entries, but model.conv.features sets 3"),
    ({"head": "attention"}, (28, 28, 1), "model.head='attention'"),
    ({"name": "resnet"}, (28, 28, 1), "model.name='resnet'"),
  ],
)
def test_bad_model_configs_name_the_field(overrides, input_shape, message):
  config = model_config(**overrides)
  if message is None:
    models.create_model(config, input_shape, 10)
    return
  with pytest.raises(ConfigError, match=_escape(message)):
    models.create_model(config, input_shape, 10)


def _escape(text):
  import re

  return re.escape(text)


def test_model_config_is_plain_data():
  # Research scripts may pass a plain dict instead of a ConfigDict.
  config = mnist_config.get_config().model.to_dict()
  assert isinstance(config, dict) and not isinstance(config, ml_collections.ConfigDict)
  model = models.create_model(config, (28, 28, 1), 10)
  assert models.count_params(_param_shapes(model, (28, 28, 1))) == 33_194


@pytest.mark.slow  # the page's NNX block also runs as written in tests/test_packaging.py
def test_a_trained_model_runs_from_nnx_code(config, tmp_path, monkeypatch):
  """docs/training.md's NNX recipe: a trained run's weights in a `flax.nnx` module agree."""
  from flax import nnx

  from convnet import checkpoints, train

  config.max_steps = 3
  train.train_and_evaluate(config, str(tmp_path))
  monkeypatch.chdir(tmp_path.parent)  # a relative path, as a research script gives one
  params, step = checkpoints.restore_params(tmp_path.name)
  assert step == 3
  model = models.create_model(config.model, (28, 28, 1), 10)
  nnx_model = models.to_nnx(model, params)
  x = jax.random.uniform(jax.random.key(7), (5, 28, 28, 1))
  nnx_logits = nnx.jit(lambda m, x: m(x))(nnx_model, x)
  linen = jax.jit(lambda p, x: model.apply({"params": p}, x))
  np.testing.assert_array_equal(nnx_logits, linen(params, x))
  weights = jax.tree.leaves(nnx.state(nnx_model, nnx.Param))
  assert sum(w.size for w in weights) == models.count_params(params) == 33_194
  fresh = jax.tree.map(lambda w: w + 0.1, params)
  assert not np.array_equal(nnx_logits, linen(fresh, x))  # the trained weights, not others
