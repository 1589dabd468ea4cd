"""Checks of a whole config, made before any data is read or code compiled.

The model's fields are parsed and checked against the data's shape later, by
`models.create_model`; the batch sizes against the device count by
`parallel.check_batch_sizes`.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from convnet import epochs, input_pipeline, models, sources
from convnet.errors import ConfigError
from convnet.optim import OPTIMIZERS, SCHEDULES


def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects settings that cannot work, naming the field, its value and the rule.

  Raises:
    ConfigError: the first field found that breaks its rule.
  """
  # numpy's default_rng refuses negative seeds and jax.random.key those past int64.
  _require(0 <= config.seed < 2**63, "seed", config.seed, "must be 0 or more, and below 2**63")
  # Zero epochs would train nothing and report the untrained model as a finished run.
  for field in ("batch_size", "eval_batch_size", "steps_per_call", "num_epochs"):
    _require(config[field] >= 1, field, config[field], "must be a positive int")
  for field in ("log_every_steps", "checkpoint_every_steps", "profile_steps", "steps_per_epoch"):
    _require(config[field] >= 0, field, config[field], "cannot be negative")
  for field in ("num_train", "num_validation"):
    value = config.data.get(field, 0)
    _require(value >= 0, f"data.{field}", value, "is 0 (all) or more")
  _require(config.microbatch_size >= 0, "microbatch_size", config.microbatch_size, "is 0 or more")
  _require(
    config.mesh_shape == -1 or config.mesh_shape >= 1,
    "mesh_shape",
    config.mesh_shape,
    "is -1 (all devices) or a number of devices",
  )
  for field in ("batch_size", "eval_batch_size"):
    if config.microbatch_size and config[field] > config.microbatch_size:
      _require(
        config[field] % config.microbatch_size == 0,
        field,
        config[field],
        f"must be a multiple of microbatch_size={config.microbatch_size} (or set that to 0)",
      )
  _require(  # as with num_epochs, a run of zero steps would report its untrained model
    config.max_steps == -1 or config.max_steps >= 1,
    "max_steps",
    config.max_steps,
    "is -1 (no limit) or a positive step count",
  )
  # The step counter is int32 on the device: a schedule of more steps would wrap around.
  limit = epochs.MAX_STEPS
  _require(config.num_epochs <= limit, "num_epochs", config.num_epochs, f"is at most {limit:,}")
  _require(
    config.steps_per_epoch * config.num_epochs <= limit,
    "steps_per_epoch",
    config.steps_per_epoch,
    f"times num_epochs={config.num_epochs} is at most {limit:,} steps",
  )
  if config.steps_per_epoch:
    spe = config.steps_per_epoch
    steps = min(spe, config.max_steps) if config.max_steps >= 1 else spe
    epochs.check_order_length(config, epochs.order_length(spe, steps, config.batch_size))
  _require(config.checkpoint_keep >= 1, "checkpoint_keep", config.checkpoint_keep, "must be >= 1")
  _require(
    0.0 <= config.label_smoothing < 1.0, "label_smoothing", config.label_smoothing, "is in [0, 1)"
  )
  # Comparisons pass inf (and a NaN fails them), so the float fields are checked finite too.
  _require(
    math.isfinite(config.l1_penalty) and config.l1_penalty >= 0,
    "l1_penalty",
    config.l1_penalty,
    "is a finite number, 0 or more",
  )
  _require(
    config.model.name in models.REGISTRY,
    "model.name",
    config.model.name,
    f"is one of {', '.join(models.REGISTRY)}",
  )
  flat = [name for name in models.REGISTRY if models.takes_flat_inputs(name)]
  _require(
    config.data.features == "pixels" or config.model.name in flat,
    "model.name",
    config.model.name,
    f"must be {' or '.join(map(repr, flat))} with data.features={config.data.features!r}, "
    "which gives flat vectors",
  )
  _require(
    config.data.layout in input_pipeline.LAYOUTS,
    "data.layout",
    config.data.layout,
    f"is one of {', '.join(input_pipeline.LAYOUTS)}",
  )
  input_pipeline.check_permute_pixels(config.data.get("permute_pixels", 0))
  for field, value in config.augment.items():  # drawn as int32 on the device
    _require(0 <= value < 2**31, f"augment.{field}", value, "is 0 or more, and below 2**31")
  opt = config.optimizer
  _require(opt.name in OPTIMIZERS, "optimizer.name", opt.name, f"is one of {', '.join(OPTIMIZERS)}")
  _require(
    opt.schedule in SCHEDULES,
    "optimizer.schedule",
    opt.schedule,
    f"is one of {', '.join(SCHEDULES)}",
  )
  _require(
    math.isfinite(opt.learning_rate) and opt.learning_rate > 0,
    "optimizer.learning_rate",
    opt.learning_rate,
    "must be positive and finite",
  )
  _require(
    math.isfinite(opt.warmup_epochs) and opt.warmup_epochs >= 0,
    "optimizer.warmup_epochs",
    opt.warmup_epochs,
    "is a finite number, 0 or more",
  )
  _require(0 <= opt.momentum < 1, "optimizer.momentum", opt.momentum, "is in [0, 1)")
  _require(0 < opt.rmsprop_decay < 1, "optimizer.rmsprop_decay", opt.rmsprop_decay, "is in (0, 1)")
  _check_early_stopping(config)
  source = config.data.source
  _require(
    source in input_pipeline.SOURCES,
    "data.source",
    source,
    f"is one of {', '.join(input_pipeline.SOURCES)}",
  )
  # A source's own fields, where it checks them apart, before any data is read.
  check_fields = getattr(sources.get(source), "check_fields", None)
  if check_fields:
    check_fields(config.data)


def _check_early_stopping(config: ml_collections.ConfigDict) -> None:
  """`early_stopping.patience` and `min_delta` (see `epochs.early_stop_epoch`)."""
  stopping = config.early_stopping
  patience, min_delta = stopping.patience, stopping.min_delta
  _require(
    isinstance(patience, int) and not isinstance(patience, bool) and patience >= 0,
    "early_stopping.patience",
    patience,
    "is a whole number of epochs, 0 (never stop early) or more",
  )
  _require(
    isinstance(min_delta, int | float)
    and not isinstance(min_delta, bool)
    and math.isfinite(min_delta)
    and min_delta >= 0,
    "early_stopping.min_delta",
    min_delta,
    "is a finite number, 0 or more (an accuracy: 0.001 is 0.1%)",
  )
  _require(  # early stopping judges validation accuracy, never test accuracy
    patience == 0 or config.data.validation_fraction > 0,
    "early_stopping.patience",
    patience,
    "needs a validation split: set data.validation_fraction above 0, or patience to 0",
  )


def _require(ok: bool, field: str, value: Any, rule: str) -> None:
  if not ok:
    raise ConfigError(f"{field}={value!r}: {field.split('.')[-1]} {rule}")
