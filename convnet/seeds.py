"""Several seeds of one config, trained together by one `jax.vmap` program.

`train_seeds(config, seeds, workdir)` trains one copy of the configured model
for each seed. Each copy has the validation split, initialisation and data
order that `train.train_and_evaluate` gives its seed, and the same loop
(`train.fit`) trains them, so each seed's metrics match a separate run's up to
float rounding. `workdir/seed_<s>/` gets that seed's `config.json`,
`metrics.jsonl` and TensorBoard events; `workdir/checkpoints/` holds the
stacked state, saved as a single run's is (every epoch, every
`checkpoint_every_steps`, and on SIGTERM or SIGINT), and running the same call
again resumes from it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from convnet import (
  augment,
  checkpoints,
  config_checks,
  epochs,
  input_pipeline,
  models,
  preemption,
  train,
)
from convnet import steps as steps_lib
from convnet import workdir as workdir_lib
from convnet.errors import ConfigError


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """A copy of `config` with its seed set."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.seed = seed
  return config


def train_seeds(
  config: ml_collections.ConfigDict, seeds: Sequence[int], workdir: str
) -> list[dict[str, Any]]:
  """Trains `config` once for each seed, in one vmapped program; resumes from `workdir`.

  Returns:
    One result for each seed, with the keys of `train.train_and_evaluate`'s,
    and `vmap_group_size`. `wall_time_s` is the whole group's;
    `train_examples_per_sec` is each seed's share of the group's rate.

  Raises:
    ConfigError: the seeds repeat or there are none, or the config cannot work.
    The errors of `train.train_and_evaluate`, likewise; after SIGTERM or
    SIGINT, `RunInterrupted` once the group's checkpoint is saved.
  """
  seeds = [int(s) for s in seeds]
  if len(set(seeds)) != len(seeds) or not seeds:
    raise ConfigError(f"seeds={seeds} must be distinct, and at least one")
  config_checks.validate(config)
  workdir = workdir_lib.make_dir(workdir)
  with workdir_lib.lock(workdir), preemption.stop_requests() as stop:
    member_dirs = [(checkpoints.seed_dir(workdir, s), seed_config(config, s)) for s in seeds]
    train.check_before_loading(workdir, member_dirs)
    return train.fit(_set_up(config, seeds, workdir, member_dirs), stop)


def _set_up(
  config: ml_collections.ConfigDict,
  seeds: list[int],
  workdir: str,
  member_dirs: list[tuple[str, ml_collections.ConfigDict]],
) -> train.Run:
  started_at = time.perf_counter()
  seed_dirs, configs = zip(*member_dirs, strict=True)
  datasets = [input_pipeline.load(c.data, c.seed) for c in configs]
  data = datasets[0]
  model, tx, steps_per_epoch, total_steps = train.model_and_optimizer(config, data)
  states = [
    steps_lib.create_train_state(jax.random.key(s), model, data.input_shape, tx) for s in seeds
  ]
  num_params = models.count_params(states[0].params)
  flops = steps_lib.train_flops_per_example(config, states[0], data.input_shape)
  logging.info(
    "%d seeds of %s at once, %s parameters each", len(seeds), config.model.name, num_params
  )
  constants = train.run_constants(config, datasets, steps_per_epoch)
  manager, best, state, loop, records = train.resume(
    config,
    workdir,
    epochs.stack(states),
    member_dirs,
    constants,
    total_steps,
  )
  train_fn, eval_fn = train.step_functions(config, datasets[0].input_shape)
  steps_fn = jax.jit(jax.vmap(train_fn, in_axes=(0, 0, 0, 0, None, None, 0)), donate_argnums=0)
  eval_fn = jax.jit(jax.vmap(eval_fn))

  def evaluate(state, name: str):
    splits = [getattr(d, name) for d in datasets]
    if not len(splits[0]):
      return None
    multiple_of = config.microbatch_size or 1
    return epochs.evaluate(eval_fn, state, splits, config.eval_batch_size, None, multiple_of)

  def orders(epoch: int) -> jax.Array:
    length = steps_per_epoch * config.batch_size
    return jax.device_put(
      np.stack([epochs.epoch_order(len(data.train), s, epoch, length) for s in seeds])
    )

  return train.Run(
    config=config,
    workdir=workdir,
    state=state,
    images=jax.device_put(np.stack([d.train.images for d in datasets])),
    labels=jax.device_put(np.stack([d.train.labels for d in datasets])),
    orders=orders,
    steps_fn=steps_fn,
    key=jnp.stack([augment.key(s) for s in seeds]),
    evaluate=evaluate,
    members=[
      train.Member(f"seed {s}", workdir_lib.MetricsWriter(d, config=c, kept=r), r)
      for s, d, c, r in zip(seeds, seed_dirs, configs, records, strict=True)
    ],
    manager=manager,
    best=best,
    loop=loop | {"seeds": seeds},
    steps_per_epoch=steps_per_epoch,
    total_steps=total_steps,
    result={
      "num_params": num_params,
      "train_flops_per_example": flops,
      "vmap_group_size": len(seeds),
    },
    started_at=started_at,
  )
