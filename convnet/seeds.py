"""Several seeds of one config, trained together by one `jax.vmap` program.

`train_seeds(config, seeds, workdir)` trains one copy of the configured model
for each seed. Each copy has the validation split, initialisation and data
order that `train.train_and_evaluate` gives its seed, so its metrics match a
separate run's up to float rounding. `workdir/seed_<s>/` gets that seed's
`config.json`, `metrics.jsonl` (one record an epoch) and TensorBoard events;
`workdir/checkpoints/` holds the stacked state after every epoch, and running
the same call again resumes from it.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from convnet import input_pipeline, models, train
from convnet.errors import ConfigError, DivergedError


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """A copy of `config` with its seed set."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.seed = seed
  return config


def _stack(trees):
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _evaluate(eval_fn, state, splits, batch_size: int) -> list[dict[str, float]]:
  """Mean loss and accuracy of each seed's model on its own split.

  Even the test split is each seed's own: reduced inputs (`data.features`) are
  fitted on each seed's training split.
  """
  batches = [train.eval_batches(split, batch_size) for split in splits]
  sums = [eval_fn(state, _stack(batch)) for batch in zip(*batches, strict=True)]
  totals = {
    k: np.sum([s[k] for s in jax.device_get(sums)], axis=0, dtype=np.float64) for k in sums[0]
  }
  return [
    {
      "loss": float(totals["loss_sum"][i] / totals["count"][i]),
      "accuracy": float(totals["correct"][i] / totals["count"][i]),
    }
    for i in range(len(totals["count"]))
  ]


def train_seeds(
  config: ml_collections.ConfigDict, seeds: Sequence[int], workdir: str
) -> list[dict[str, Any]]:
  """Trains `config` once for each seed, in one vmapped program; resumes from `workdir`.

  Returns:
    One result for each seed, with the keys of `train.train_and_evaluate`'s.
    `wall_time_s` is the whole group's; `train_examples_per_sec` is each
    seed's share of the group's rate.
  """
  seeds = [int(s) for s in seeds]
  if len(set(seeds)) != len(seeds) or not seeds:
    raise ConfigError(f"seeds={seeds} must be distinct, and at least one")
  train.validate_config(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with train.workdir_lock(workdir):
    return _train_seeds(config, seeds, workdir)


def _train_seeds(config: ml_collections.ConfigDict, seeds: list[int], workdir: str):
  configs = [seed_config(config, s) for s in seeds]
  datasets = [input_pipeline.load(c.data, c.seed) for c in configs]
  data = datasets[0]
  model = models.create_model(config.model, data.input_shape, data.num_classes)
  steps_per_epoch, total_steps = train.step_counts(config, len(data.train))
  tx = train.create_optimizer(config.optimizer, steps_per_epoch, total_steps)
  states = [train.create_train_state(jax.random.key(s), model, data.input_shape, tx) for s in seeds]
  num_params = models.count_params(states[0].params)
  flops = train.train_flops_per_example(config, states[0], data.input_shape)
  state = _stack(states)
  logging.info(
    "%d seeds of %s at once, %s parameters each", len(seeds), config.model.name, num_params
  )

  seed_dirs = [os.path.join(workdir, f"seed_{s}") for s in seeds]
  manager = train._checkpoint_manager(workdir, config.checkpoint_keep)
  loop = {"wall_time_s": 0.0}
  for seed_dir, c in zip(seed_dirs, configs, strict=True):
    os.makedirs(seed_dir, exist_ok=True)
    if manager.latest_step() is not None:
      train._check_resumable(seed_dir, c)
  if manager.latest_step() is not None:
    state, loop = train._restore(manager, state, loop)
  step = int(state.step[0])
  records = []
  for seed_dir, c in zip(seed_dirs, configs, strict=True):
    config_json = c.to_json_best_effort(indent=2) + "\n"
    train._atomic_write(os.path.join(seed_dir, "config.json"), config_json)
    records.append(train._read_metrics(os.path.join(seed_dir, "metrics.jsonl"), step))

  def results() -> list[dict[str, Any]]:
    extra = {"num_params": num_params, "train_flops_per_example": flops}
    return [train.summarize(r) | extra | {"vmap_group_size": len(seeds)} for r in records]

  if step >= total_steps:
    return results()
  steps_fn = jax.jit(
    jax.vmap(
      functools.partial(
        train.train_steps,
        steps_per_call=config.steps_per_call,
        batch_size=config.batch_size,
        label_smoothing=config.label_smoothing,
        microbatch_size=config.microbatch_size,
        l1_penalty=config.l1_penalty,
      ),
      in_axes=(0, 0, 0, 0, None, None),
    ),
    donate_argnums=0,
  )
  eval_step = functools.partial(train.eval_step, microbatch_size=config.microbatch_size)
  eval_fn = jax.jit(jax.vmap(eval_step))
  images = jax.device_put(np.stack([d.train.images for d in datasets]))
  labels = jax.device_put(np.stack([d.train.labels for d in datasets]))
  writers = [train._MetricsWriter(d) for d in seed_dirs]
  start_time = time.perf_counter() - loop["wall_time_s"]
  # Checkpoints fall on epoch ends, so a resumed group starts an epoch afresh.
  while step < total_steps:
    epoch = step // steps_per_epoch
    epoch_start = time.perf_counter()
    epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
    orders = jax.device_put(np.stack([train.epoch_order(len(data.train), s, epoch) for s in seeds]))
    pending = []
    for first in range(step, epoch_end, config.steps_per_call):
      count = min(config.steps_per_call, epoch_end - first)
      start = first - epoch * steps_per_epoch
      state, metrics = steps_fn(state, images, labels, orders, start, count)
      pending.append((metrics, count))
    pending = jax.device_get(pending)
    losses = np.concatenate([m["loss"][:, :n] for m, n in pending], axis=1)
    if not np.isfinite(losses).all():
      seed_index, step_index = np.argwhere(~np.isfinite(losses))[0]
      message = train._diverged_message(
        config, workdir, step + step_index, losses[seed_index, step_index]
      )
      raise DivergedError(f"seed {seeds[seed_index]}: {message}")
    correct = np.concatenate([m["correct"][:, :n] for m, n in pending], axis=1)
    seconds = time.perf_counter() - epoch_start
    done = epoch_end - step
    step = epoch_end
    evals = {}
    for name in ("validation", "test"):
      splits = [getattr(d, name) for d in datasets]
      if len(splits[0]):
        evals[name] = _evaluate(eval_fn, state, splits, config.eval_batch_size)
    wall_time = time.perf_counter() - start_time
    for i, writer in enumerate(writers):
      record = {
        "kind": "epoch",
        "step": step,
        "epoch": epoch + 1 if step % steps_per_epoch == 0 else step / steps_per_epoch,
        "train_loss": float(losses[i].mean()),
        "train_accuracy": float(correct[i].sum() / (done * config.batch_size)),
        "train_examples_per_sec": done * config.batch_size / seconds,
      }
      for name, values in evals.items():
        record |= {f"{name}_{k}": v for k, v in values[i].items()}
      record["wall_time_s"] = wall_time
      writer.write(record)
      records[i].append(record)
    logging.info(
      "epoch %d of %d seeds: test accuracy %s, %s examples/s each",
      epoch + 1,
      len(seeds),
      " ".join(f"{r[-1].get('test_accuracy', float('nan')):.4f}" for r in records),
      f"{done * config.batch_size / seconds:,.0f}",
    )
    train._save(manager, state, {"wall_time_s": wall_time, "seeds": seeds})
  manager.wait_until_finished()
  manager.close()
  for writer in writers:
    writer.close()
  return results()
