"""The optimizer and its learning-rate schedule, built from optax parts.

`create_optimizer(..., rate_in_state=True)` makes the same optimizer with its
peak learning rate kept in its state (`RateState`), so that models trained
together by `jax.vmap` may each have their own rate (`set_learning_rate`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from convnet.errors import ConfigError

OPTIMIZERS = ("rmsprop", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


def schedule_steps(
  opt_config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> dict[str, int]:
  """The step counts `opt_config.schedule` is built from: {} for "constant".

  "cosine" decays over `decay_steps` (`total_steps`, at least 1);
  "warmup_cosine" also warms up over `warmup_steps` (`warmup_epochs` in epochs
  of `steps_per_epoch` steps, at most `decay_steps - 1`).
  """
  if opt_config.schedule == "constant":
    return {}
  decay_steps = max(total_steps, 1)
  if opt_config.schedule == "cosine":
    return {"decay_steps": decay_steps}
  warmup = min(int(opt_config.warmup_epochs * steps_per_epoch), decay_steps - 1)
  return {"decay_steps": decay_steps, "warmup_steps": max(warmup, 0)}


def create_learning_rate(
  opt_config: ml_collections.ConfigDict,
  steps_per_epoch: int,
  total_steps: int,
  peak: float | jax.Array | None = None,
) -> optax.Schedule:
  """The schedule `opt_config.schedule` names, peaking at `peak` (`opt_config.learning_rate`).

  "constant" keeps the peak; "cosine" decays it to 0 over `total_steps`;
  "warmup_cosine" rises linearly from 0 over `warmup_epochs`, then decays to 0
  (see `schedule_steps`): optax's `warmup_cosine_decay_schedule`, put
  together from its parts so that `peak` may be a traced array (a rate kept
  in the optimizer's state).
  """
  peak = opt_config.learning_rate if peak is None else peak
  steps = schedule_steps(opt_config, steps_per_epoch, total_steps)
  if opt_config.schedule == "constant":
    return optax.constant_schedule(peak)
  if opt_config.schedule == "cosine":
    return optax.cosine_decay_schedule(peak, decay_steps=steps["decay_steps"])
  warmup, decay = steps["warmup_steps"], steps["decay_steps"]
  return optax.join_schedules(
    [
      optax.linear_schedule(0.0, peak, warmup),
      optax.cosine_decay_schedule(peak, decay_steps=decay - warmup),
    ],
    [warmup],
  )


def _optimizer(
  opt_config: ml_collections.ConfigDict, learning_rate: optax.Schedule
) -> optax.GradientTransformation:
  if opt_config.name == "rmsprop":
    return optax.rmsprop(
      learning_rate, decay=opt_config.rmsprop_decay, momentum=opt_config.momentum
    )
  if opt_config.name == "adam":
    return optax.adam(learning_rate)
  if opt_config.name == "sgd":
    return optax.sgd(learning_rate, momentum=opt_config.momentum or None)
  raise ConfigError(f"optimizer.name={opt_config.name!r} is not one of {', '.join(OPTIMIZERS)}")


class RateState(NamedTuple):
  """The state of an optimizer whose peak learning rate is part of it (`rate_in_state`)."""

  learning_rate: jax.Array  # float32 scalar (one per member under `jax.vmap`)
  inner_state: Any  # the state of the optimizer at that rate, as `create_optimizer` makes it


def create_optimizer(
  opt_config: ml_collections.ConfigDict,
  steps_per_epoch: int,
  total_steps: int,
  rate_in_state: bool = False,
) -> optax.GradientTransformation:
  """RMSprop (the book's), Adam or SGD with momentum, on `create_learning_rate`'s schedule.

  With `rate_in_state`, the state is a `RateState`: the peak learning rate (a
  float32 scalar, `opt_config.learning_rate` at `init`; see
  `set_learning_rate`) and the plain optimizer's state. Each update builds the
  plain optimizer at the state's rate, so that a vmapped state with one rate
  per member computes, member by member, the plain optimizer's operations at
  that rate: bit for bit the same updates for "constant" and "cosine", which
  multiply the rate in as the plain one does; "warmup_cosine" too, as its
  warm-up is built from the rate in the same way (tests/test_vmapped_rates.py).

  Raises:
    ConfigError: `opt_config.name` is not one of `OPTIMIZERS`.
  """

  def at(peak) -> optax.GradientTransformation:
    return _optimizer(
      opt_config, create_learning_rate(opt_config, steps_per_epoch, total_steps, peak)
    )

  plain = at(opt_config.learning_rate)
  if not rate_in_state:
    return plain
  return _with_rate_in_state(at, plain, opt_config.learning_rate)


def _with_rate_in_state(
  at: Callable[[jax.Array], optax.GradientTransformation],
  plain: optax.GradientTransformation,
  learning_rate: float,
) -> optax.GradientTransformation:
  """`at(rate)` with the rate read from the state; `plain` (at `learning_rate`) makes it."""

  def init_fn(params) -> RateState:
    return RateState(jnp.asarray(learning_rate, jnp.float32), plain.init(params))

  def update_fn(updates, state: RateState, params=None):
    updates, inner_state = at(state.learning_rate).update(updates, state.inner_state, params)
    return updates, RateState(state.learning_rate, inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def set_learning_rate(opt_state: RateState, learning_rate: float) -> RateState:
  """`opt_state` (of `create_optimizer(..., rate_in_state=True)`) with its rate replaced."""
  return opt_state._replace(learning_rate=jnp.asarray(learning_rate, jnp.float32))


def learning_rates(opt_state) -> jax.Array | None:
  """The rate(s) an optimizer state holds (`RateState.learning_rate`), or None where it has none."""
  return opt_state.learning_rate if isinstance(opt_state, RateState) else None
