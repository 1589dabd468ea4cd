"""The dense baseline sized to match another model: in parameters, forward FLOPs or training FLOPs.

The dense baseline has one hidden layer (`configs/dense.py`); its width sets
its cost, which is affine in the width for every measure here. `matched_width`
measures the dense network at widths 1 and 2, solves for the width whose cost
equals the other model's, and returns whichever of the two whole widths
around it comes closer (`tests/test_flop_matched.py` counts it again). Every
count is the project's own:

- "params": `models.count_params` of the parameters `model.init` makes;
- "forward_flops": XLA's cost analysis of the forward pass as written, per
  example (`summary.xla_counts`, a batch of two minus a batch of one): what
  `python -m convnet.summary` prints;
- "train_flops": XLA's count of one training step as written, per example
  (`steps.train_flops_per_example`): what a sweep record's
  `flops_per_example` holds. A dense network's step costs about twice its
  forward pass (no gradient is taken for the input), a convnet's about three
  times, so a network matched in one FLOP count is not matched in the other.

Nothing runs: models are traced with `jax.eval_shape` and lowered, in
milliseconds to a second on a CPU.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import jax
import ml_collections

from convnet import models, optim, steps, summary
from convnet.errors import ConfigError

MEASURES = ("params", "forward_flops", "train_flops")


def dense_config(config: ml_collections.ConfigDict, width: int) -> ml_collections.ConfigDict:
  """A copy of `config` whose model is the dense baseline with one hidden layer of `width` units.

  The dense network keeps the config's `model.dense_activation` and
  `model.dtype`, and everything outside `model`.
  """
  dense = copy.deepcopy(config)
  with dense.unlocked():
    dense.model.name = "dense"
    dense.model.dense_features = (int(width),)
  return dense


def cost(
  config: ml_collections.ConfigDict,
  input_shape: Sequence[int],
  num_classes: int,
  measure: str = "forward_flops",
) -> float:
  """What the config's model costs by `measure` (one of MEASURES), per example for FLOPs.

  Args:
    config: a whole config (its `model`; "train_flops" also reads the
      optimizer, `batch_size`, `label_smoothing` and `l1_penalty`).
    input_shape: one example's shape, channels last, e.g. (56, 56, 1).
    num_classes: the number of logits.

  Raises:
    ConfigError: an unknown `measure`, or a model field that cannot work on
      this input (naming it).
  """
  if measure not in MEASURES:
    raise ConfigError(f"measure={measure!r} is not one of {', '.join(MEASURES)}")
  input_shape = tuple(input_shape)
  if measure == "forward_flops":
    return summary.xla_counts(config.model, input_shape, num_classes, compiled=False)[
      "flops_lowered"
    ]
  model = models.create_model(config.model, input_shape, num_classes)
  if measure == "params":
    params = jax.eval_shape(steps.init_params, model, jax.random.key(0), input_shape)
    return float(models.count_params(params))
  tx = optim.create_optimizer(config.optimizer, 1, 1)
  state = jax.eval_shape(
    lambda: steps.create_train_state(jax.random.key(0), model, input_shape, tx)
  )
  return steps.train_flops_per_example(config, state, input_shape)


def matched_width(
  config: ml_collections.ConfigDict,
  input_shape: Sequence[int],
  num_classes: int,
  measure: str = "forward_flops",
) -> int:
  """The hidden width of the one-layer dense network whose `measure` is closest to config's model.

  Args:
    config: a whole config whose model (a convnet, say) is the one to match;
      the dense network is `dense_config(config, width)`.
    input_shape: one example's shape, channels last, e.g. (56, 56, 1).
    num_classes: the number of logits.
    measure: one of MEASURES (see the module docstring).

  Returns:
    The width, 1 or more: the nearer of the two whole widths around the exact
    match (the smaller on a tie), or 1 where even that costs more.

  Raises:
    ConfigError: as `cost` does.
  """
  target = cost(config, input_shape, num_classes, measure)

  def dense_cost(width: int) -> float:
    return cost(dense_config(config, width), input_shape, num_classes, measure)

  one, two = dense_cost(1), dense_cost(2)
  exact = 1 + (target - one) / (two - one)
  widths = sorted({max(1, math.floor(exact)), max(1, math.ceil(exact))})
  # The cost is affine in the width, so the two counts give every width's.
  return min(widths, key=lambda width: (abs(one + (width - 1) * (two - one) - target), width))
