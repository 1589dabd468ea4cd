"""The optimizer and its learning-rate schedule, built from optax parts."""

from __future__ import annotations

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
  opt_config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
  """The schedule `opt_config.schedule` names, peaking at `opt_config.learning_rate`.

  "constant" keeps the peak; "cosine" decays it to 0 over `total_steps`;
  "warmup_cosine" rises linearly from 0 over `warmup_epochs`, then decays to 0
  (see `schedule_steps`).
  """
  peak = opt_config.learning_rate
  steps = schedule_steps(opt_config, steps_per_epoch, total_steps)
  if opt_config.schedule == "constant":
    return optax.constant_schedule(peak)
  if opt_config.schedule == "cosine":
    return optax.cosine_decay_schedule(peak, decay_steps=steps["decay_steps"])
  return optax.warmup_cosine_decay_schedule(0.0, peak, steps["warmup_steps"], steps["decay_steps"])


def create_optimizer(
  opt_config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.GradientTransformation:
  """RMSprop (the book's), Adam or SGD with momentum, on `create_learning_rate`'s schedule.

  Raises:
    ConfigError: `opt_config.name` is not one of `OPTIMIZERS`.
  """
  learning_rate = create_learning_rate(opt_config, steps_per_epoch, total_steps)
  if opt_config.name == "rmsprop":
    return optax.rmsprop(
      learning_rate, decay=opt_config.rmsprop_decay, momentum=opt_config.momentum
    )
  if opt_config.name == "adam":
    return optax.adam(learning_rate)
  if opt_config.name == "sgd":
    return optax.sgd(learning_rate, momentum=opt_config.momentum or None)
  raise ConfigError(f"optimizer.name={opt_config.name!r} is not one of {', '.join(OPTIMIZERS)}")
