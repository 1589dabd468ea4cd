"""Dense networks matched to the convnet in parameters and in FLOPs (`convnet.matching`)."""

import os

import jax
import jax.numpy as jnp
import pytest

from convnet import matching, models, sweep
from convnet.configs import mnist
from convnet.errors import ConfigError
from tests.conftest import REPO


def _xla_forward_flops(model_config, input_shape, num_classes=10) -> float:
  """XLA's count of the forward pass as written, per example: a batch of 2 minus a batch of 1."""
  model = models.create_model(model_config, input_shape, num_classes)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *input_shape)))
  params = {"params": variables["params"]}  # as a run applies it: no `perturbations`

  def count(batch):
    x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
    cost = jax.jit(model.apply).lower(params, x).cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]

  return count(2) - count(1)


def test_the_why_convnets_sweep_pairs_the_convnet_with_dense_networks_matched_two_ways():
  module = sweep.load_sweep_module(os.path.join(REPO, "configs", "sweeps", "why_convnets.py"))
  base = module.get_config()
  assert base.data.source == "canvas"
  configs = {}
  for cell in sweep.expand(module.sweep):
    configs.setdefault(cell.setting, sweep.apply_overrides(base, cell.overrides))
  convnet, by_params, by_flops = configs.values()
  assert convnet.model.name == "convnet"
  assert (by_params.model.name, by_flops.model.name) == ("dense", "dense")
  shape = (56, 56, 1)
  flops = _xla_forward_flops(convnet.model, shape)
  matched = _xla_forward_flops(by_flops.model, shape)
  assert abs(matched - flops) / flops < 0.01
  assert _xla_forward_flops(by_params.model, shape) < flops / 10
  # Within half a unit's FLOPs of the convnet's count: no other width comes closer.
  (width,) = by_flops.model.dense_features
  unit = _xla_forward_flops(matching.dense_config(convnet, width + 1).model, shape) - matched
  assert abs(matched - flops) <= unit / 2
  params = matching.cost(convnet, shape, 10, "params")
  assert abs(matching.cost(by_params, shape, 10, "params") - params) / params < 0.01


def test_parameter_matching_gives_the_convnet_vs_dense_budgets():
  # The hand-sized dense networks of configs/sweeps/convnet_vs_dense.py, found again.
  config = mnist.get_config()
  for filters, convnet_dense, dense_hidden in ((8, 16, 16), 32, 11), ((32, 64, 64), 128, 165):
    config.model.conv.features = filters
    config.model.dense_features = (convnet_dense,)
    assert matching.matched_width(config, (28, 28, 1), 10, "params") == dense_hidden


def test_a_model_cheaper_than_any_dense_network_gets_width_one_and_bad_measures_are_named():
  config = mnist.get_config()
  # One 3x3 filter, averaged over the image, then the logits: 30 parameters, fewer than the
  # 805 of a dense network of one hidden unit.
  config.model.conv.features = (1,)
  config.model.pool.type = "none"
  config.model.head = "global_avg"
  config.model.dense_features = ()
  assert matching.cost(config, (28, 28, 1), 10, "params") == 30
  assert matching.matched_width(config, (28, 28, 1), 10, "params") == 1
  with pytest.raises(ConfigError, match="^measure='macs' is not one of params, forward_flops"):
    matching.matched_width(config, (28, 28, 1), 10, "macs")


@pytest.mark.slow  # compiles training steps: a few seconds
def test_train_flop_matching_is_matched_in_the_records_count():
  config = mnist.get_config()
  width = matching.matched_width(config, (56, 56, 1), 10, "train_flops")
  target = matching.cost(config, (56, 56, 1), 10, "train_flops")
  dense = matching.cost(matching.dense_config(config, width), (56, 56, 1), 10, "train_flops")
  assert abs(dense - target) / target < 0.01
  forward = matching.matched_width(config, (56, 56, 1), 10, "forward_flops")
  assert width > 1.3 * forward  # a dense step costs about 2 forward passes, a convnet's about 3
