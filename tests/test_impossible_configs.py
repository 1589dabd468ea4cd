"""Configs whose shapes fit but whose numbers cannot be finite, and run settings that cannot
work: each stops before compiling, in one line naming the field, its value and the rule; the
neighbours that can work build and compute finite values."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convnet import config_checks, input_pipeline, models, summary, train
from convnet.errors import ConfigError
from tests.conftest import model_config

# ----------------------------------------------------------------------------
# Pooling padding: a window of padding only has no finite max (-inf) or average (0/0).


@pytest.mark.parametrize(
  "overrides,input_shape,message",
  [
    (  # the reported case: max pooling gave -inf, and the run blamed the learning rate
      {"pool.padding": 2},
      (28, 28, 1),
      "model.pool.padding=2: block 0 pads spatial axis 0 by 2 on the low side, so a 2x2 "
      "pooling window there would hold only padding (no finite max or average); use padding "
      "< window on each side (at most 1 there)",
    ),
    ({"pool.type": "avg", "pool.padding": 2}, (28, 28, 1), "model.pool.padding=2: block 0"),
    (  # 1D
      {"pool.window": 3, "pool.padding": 3, "pool.type": "avg"},
      (40, 1),
      "block 0 pads spatial axis 0 by 3 on the low side, so a 3 pooling window",
    ),
    (  # 3D, only the high side of the last axis
      {"conv.features": (4, 5), "pool.type": "max", "pool.padding": ((1, 1), (0, 1), (0, 2))},
      (12, 13, 14, 2),
      "block 0 pads spatial axis 2 by 2 on the high side, so a 2x2x2 pooling window",
    ),
    (  # one window per axis: padding 1 fits the 3-wide axis, not the 1-wide one
      {"pool.window": (3, 1), "pool.strides": 1, "pool.padding": ((2, 2), (1, 0))},
      (28, 28, 1),
      "block 0 pads spatial axis 1 by 1 on the low side, so a 3x1 pooling window there would "
      "hold only padding (no finite max or average); use padding < window on each side "
      "(at most 0 there)",
    ),
    (  # per block: only the last block's padding is too wide
      {"pool.type": ("max", "max", "avg"), "pool.padding": (0, 1, 2)},
      (28, 28, 1),
      "model.pool.padding=(0, 1, 2): block 2 pads spatial axis 0 by 2",
    ),
    (  # as typed on the command line
      {"pool.padding": "((0, 1), (2, 0))"},
      (28, 28, 1),
      "model.pool.padding='((0, 1), (2, 0))': block 0 pads spatial axis 1 by 2 on the low side",
    ),
    (  # a 1-wide window takes no padding at all
      {"pool.window": 1, "pool.strides": 1, "pool.padding": 1},
      (28, 28, 1),
      "a 1x1 pooling window there would hold only padding",
    ),
    (  # at 28x28 the stride skips the last window of padding only, but not at 27x27: the rule
      # does not depend on the input (padding past window - 1 is never read where it is safe)
      {"pool.strides": 3, "pool.padding": ((0, 2), (0, 2))},
      (28, 28, 1),
      "block 0 pads spatial axis 0 by 2 on the high side",
    ),
  ],
)
def test_pool_padding_as_wide_as_the_window_is_refused(overrides, input_shape, message):
  config = model_config(**overrides)
  with pytest.raises(ConfigError, match=re.escape(message)) as error:
    models.create_model(config, input_shape, 10)
  assert "\n" not in str(error.value)


TWO_BLOCKS = {"conv.features": (4, 4), "pool.type": "max"}


@pytest.mark.parametrize(
  "input_shape,overrides",
  [
    ((12, 12, 1), {**TWO_BLOCKS, "pool.padding": 1, "implementation": "matmul"}),
    ((12, 12, 1), {**TWO_BLOCKS, "pool.type": "avg", "pool.padding": 1, "implementation": "lax"}),
    # the widest padding allowed (window - 1 on every side), which PyTorch (<= window / 2) refuses
    ((20, 1), {**TWO_BLOCKS, "pool.type": ("avg", "max"), "pool.window": 3, "pool.padding": 2}),
    # strides wider than the window skip inputs, which leaves every window finite
    ((12, 12, 1), {**TWO_BLOCKS, "pool.strides": 3, "pool.padding": 1, "implementation": "lax"}),
    (
      (6, 7, 8, 1),
      {
        **TWO_BLOCKS,
        "conv.padding": "SAME",
        "pool.type": "avg",
        "pool.window": (3, 2, 1),
        "pool.padding": ((2, 2), (1, 1), (0, 0)),
      },
    ),
  ],
)
def test_pool_padding_below_the_window_gives_finite_values_and_gradients(input_shape, overrides):
  config = model_config(**overrides)
  model = models.create_model(config, input_shape, 10)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, *input_shape)).astype(np.float32)
  # Random weights from numpy: compiling `init` would double the test's time.
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) / 4, shapes)

  def loss(params):
    logits, state = model.apply({"params": params}, x, mutable=["intermediates"])
    return jnp.sum(jax.nn.log_softmax(logits)[:, 3]), state["intermediates"]

  grads, intermediates = jax.jit(jax.grad(loss, has_aux=True))(params)
  for name, value in [*intermediates.items(), *jax.tree_util.tree_leaves_with_path(grads)]:
    assert np.isfinite(np.asarray(value)).all(), f"{name} is not finite"


def test_unused_pool_padding_is_not_checked():
  # As the window and strides of a block that does not pool: the setting is never read.
  config = model_config(**{"pool.type": "none", "pool.padding": 5})
  models.create_model(config, (28, 28, 1), 10)


def test_conv_padding_wider_than_the_kernel_is_accepted_and_finite():
  # Zero padding: a window of padding only gives the bias, a finite value (PyTorch and lax
  # accept any conv padding too), so this is wasteful but not impossible.
  overrides = {"conv.features": (4,), "conv.kernel_size": 2, "conv.padding": 3, "pool.type": "none"}
  config = model_config(**overrides)
  model = models.create_model(config, (6, 6, 1), 10)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 6, 6, 1)).astype(np.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  params["conv_0"]["bias"] = np.full(4, 0.5, np.float32)
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]))
  logits, state = apply(params, x)
  activation = np.asarray(state["intermediates"]["activation_0"][0])
  assert activation.shape == (2, 11, 11, 4)
  rows, columns = activation[:, [0, 1, -2, -1]], activation[:, :, [0, 1, -2, -1]]
  np.testing.assert_array_equal(rows, 0.5)  # windows of padding only: relu(bias)
  np.testing.assert_array_equal(columns, 0.5)
  assert not np.all(activation == 0.5)
  assert np.isfinite(logits).all()


# ----------------------------------------------------------------------------
# Stopping before compiling (and before reading data, for settings that need none).


def _set(config, field, value):
  *path, leaf = field.split(".")
  node = config
  for part in path:
    node = node[part]
  node[leaf] = value


@pytest.fixture
def no_compiling(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("compiled before rejecting the config")

  monkeypatch.setattr(jax, "jit", refuse)


def test_the_reported_pool_padding_stops_the_table_and_the_run(config, tmp_path, no_compiling):
  config.model.pool.padding = 2
  message = re.escape("model.pool.padding=2: block 0 pads spatial axis 0 by 2 on the low side")
  with pytest.raises(ConfigError, match=message):
    summary.summary_text(config, xla=False)
  with pytest.raises(ConfigError, match=message):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


RUN_SETTINGS = [
  # (field, value, the one line, or None where the value works)
  ("seed", -1, "seed=-1: seed must be 0 or more, and below 2**63"),  # numpy refused it, later
  ("seed", 2**63, "seed=9223372036854775808: seed must be 0 or more"),  # so did jax.random.key
  ("seed", 0, None),
  ("seed", 2**63 - 1, None),
  ("num_epochs", 0, "num_epochs=0: num_epochs must be a positive int"),  # "already finished"
  ("num_epochs", -1, "num_epochs=-1: num_epochs must be a positive int"),
  ("num_epochs", 1, None),
  # The step counter is int32: it trained, then failed writing the TensorBoard hyperparameters.
  ("num_epochs", 10**20, "num_epochs=100000000000000000000: num_epochs is at most 2,147,483,647"),
  ("num_epochs", 2**31 - 1, None),  # steps come from the data: counted once it is loaded
  ("steps_per_epoch", 2**31, "steps_per_epoch=2147483648: steps_per_epoch times num_epochs=1 is"),
  (  # an epoch's positions in its order are int32 too
    "steps_per_epoch",
    2**24,
    "steps_per_epoch=16777216: an epoch's order would hold 4,294,967,296 examples (batches of "
    "batch_size=256), more than the 2,147,483,647 positions int32 indexes",
  ),
  ("steps_per_epoch", 2**23 - 1, None),
  ("max_steps", 0, "max_steps=0: max_steps is -1 (no limit) or a positive step count"),
  ("max_steps", -2, "max_steps=-2"),
  ("max_steps", -1, None),
  ("max_steps", 1, None),
  ("max_steps", 10**20, None),  # no limit, in effect
  ("optimizer.learning_rate", math.inf, "optimizer.learning_rate=inf: learning_rate must be"),
  ("optimizer.learning_rate", math.nan, "optimizer.learning_rate=nan"),
  ("optimizer.learning_rate", 1e-6, None),
  ("optimizer.warmup_epochs", math.inf, "optimizer.warmup_epochs=inf: warmup_epochs is a finite"),
  ("l1_penalty", math.inf, "l1_penalty=inf: l1_penalty is a finite number, 0 or more"),
  ("l1_penalty", -1e-3, "l1_penalty=-0.001"),
  ("l1_penalty", 0.0, None),
  ("augment.time_masks", -1, "augment.time_masks=-1: time_masks is 0 or more, and below 2**31"),
  ("augment.freq_mask_width", -3, "augment.freq_mask_width=-3: freq_mask_width is 0 or more"),
  ("augment.time_masks", 10**20, "augment.time_masks=100000000000000000000: time_masks is"),
  ("augment.time_masks", 2, None),
  ("data.layout", "columns", "data.layout='columns': layout is one of image, sequence"),
  ("data.layout", "sequence", None),
]


@pytest.mark.parametrize("field,value,message", RUN_SETTINGS)
def test_run_settings_are_checked_before_anything_is_read(config, field, value, message):
  _set(config, field, value)
  if message is None:
    config_checks.validate(config)
    return
  with pytest.raises(ConfigError, match=re.escape(message)) as error:
    config_checks.validate(config)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("field,value", [("seed", -1), ("num_epochs", 0)])
def test_the_reported_run_settings_stop_before_data_or_compiling(
  config, tmp_path, monkeypatch, no_compiling, field, value
):
  def no_reading(*args, **kwargs):
    raise AssertionError("read the data before rejecting the config")

  monkeypatch.setattr(input_pipeline, "load", no_reading)
  _set(config, field, value)
  with pytest.raises(ConfigError, match=re.escape(f"{field}={value}: {field} must be")):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()
