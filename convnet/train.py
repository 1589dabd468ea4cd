"""Trains and evaluates a model: the run's set-up, and the loop around the steps.

`train_and_evaluate(config, workdir)` is what `convnet.main`, the tests and
research scripts call. The workdir (see `convnet.workdir`) gets the resolved
config, one metrics record per logged step or epoch, TensorBoard events and
Orbax checkpoints; running it again on the same workdir resumes from the last
checkpoint, and a finished run reports its result and returns.

`fit` is the loop. It trains one model, or (for `convnet.seeds`) copies of one
model stacked along a leading axis, so that both write, evaluate, checkpoint
and stop alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from convnet import config_checks, epochs, formatting, input_pipeline, models, optim, parallel
from convnet import steps as steps_lib
from convnet import workdir as workdir_lib
from convnet.errors import DivergedError


@dataclasses.dataclass
class Member:
  """One model of a run: where its metrics go, and what it has recorded so far."""

  name: str  # "" for a single run, "seed 3" for a seed of a group
  writer: workdir_lib.MetricsWriter
  records: list[dict[str, Any]]


@dataclasses.dataclass
class Run:
  """A run set up to train: the state, the compiled steps and where results go.

  For seeds trained together, `state`, `images`, `labels` and the orders are
  stacked along a leading axis, `steps_fn` and `evaluate` are vmapped, and
  there is one member per seed.
  """

  config: ml_collections.ConfigDict
  workdir: str  # holds checkpoints/
  state: steps_lib.TrainState
  images: jax.Array
  labels: jax.Array
  orders: Callable[[int], jax.Array]  # epoch -> the order of its training examples
  steps_fn: Callable  # (state, images, labels, order, start, count) -> (state, metrics)
  evaluate: Callable[[Any, str], list[dict[str, float]] | None]  # per member; None: no split
  members: list[Member]
  manager: Any  # orbax.checkpoint.CheckpointManager
  loop: dict[str, Any]  # restored counters: epoch sums, wall time, and what else is saved
  steps_per_epoch: int
  total_steps: int
  result: dict[str, Any]  # fields added to each member's result
  started_at: float  # time.perf_counter() when the set-up began


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates the configured model, resuming from `workdir`.

  Holds `workdir`'s lock while it runs.

  Returns:
    The last epoch's metrics (`train_*`, `validation_*`, `test_*`), plus
    `best_validation_accuracy`, `best_epoch`, `test_accuracy_at_best_validation`,
    `num_params`, `train_flops_per_example` (XLA's count of the step as written),
    `wall_time_s` and `train_examples_per_sec`.

  Raises:
    ConfigError, DataError, CheckpointError, WorkdirInUseError: a config,
      data or workdir that cannot be used; nothing is written.
    DivergedError: the loss or the parameters stopped being finite; the last
      good checkpoint is kept.
    RunInterrupted: SIGTERM or SIGINT arrived; a checkpoint was saved.
  """
  config_checks.validate(config)
  workdir = workdir_lib.make_dir(workdir)
  # In a multi-host run, process 0 holds the lock for them all.
  lock = workdir_lib.lock(workdir) if parallel.is_main_process() else contextlib.nullcontext()
  with lock, epochs.stop_signals() as stop:
    return fit(_set_up(config, workdir), stop)[0]


def step_functions(config: ml_collections.ConfigDict, batch_sharding=None):
  """`steps.train_steps` and `steps.eval_step` with the config's settings bound, not jitted."""
  train_fn = functools.partial(
    steps_lib.train_steps,
    steps_per_call=config.steps_per_call,
    batch_size=config.batch_size,
    label_smoothing=config.label_smoothing,
    microbatch_size=config.microbatch_size,
    l1_penalty=config.l1_penalty,
    batch_sharding=batch_sharding,
  )
  eval_fn = functools.partial(
    steps_lib.eval_step, microbatch_size=config.microbatch_size, batch_sharding=batch_sharding
  )
  return train_fn, eval_fn


def model_and_optimizer(config: ml_collections.ConfigDict, dataset: input_pipeline.Dataset):
  """The model, optimizer and step counts for `dataset`: (model, tx, steps_per_epoch, total)."""
  model = models.create_model(config.model, dataset.input_shape, dataset.num_classes)
  steps_per_epoch, total_steps = epochs.step_counts(config, len(dataset.train))
  tx = optim.create_optimizer(config.optimizer, steps_per_epoch, total_steps)
  return model, tx, steps_per_epoch, total_steps


def resume(
  config: ml_collections.ConfigDict,
  workdir: str,
  state: steps_lib.TrainState,
  member_dirs: list[tuple[str, ml_collections.ConfigDict]],
  write: bool = True,
):
  """Opens `workdir`'s checkpoints and restores the latest, after checking each member's config.

  `member_dirs` pairs each member's folder with its config. Each folder gets
  its config.json and metrics.jsonl cut back to the restored step (only where
  `write`: process 0 of a multi-host run).

  Returns:
    (manager, state, loop, records): the Orbax manager, the restored state and
    loop counters (or those given, on a fresh run), and each member's records.
  """
  manager = workdir_lib.checkpoint_manager(workdir, config.checkpoint_keep)
  loop = {"wall_time_s": 0.0}
  if manager.latest_step() is not None:
    for member_dir, member_config in member_dirs:
      workdir_lib.check_resumable(member_dir, member_config)
    state, loop = workdir_lib.restore(manager, state, loop)
  step = int(np.ravel(state.step)[0])
  records = []
  for member_dir, member_config in member_dirs:
    if write:
      os.makedirs(member_dir, exist_ok=True)
      workdir_lib.write_config(member_dir, member_config)
    records.append(workdir_lib.read_metrics(member_dir, step, rewrite=write))
  return manager, state, loop, records


def _set_up(config: ml_collections.ConfigDict, workdir: str) -> Run:
  started_at = time.perf_counter()
  mesh = parallel.create_mesh(config.mesh_shape)
  parallel.check_batch_sizes(config, mesh.size)
  dataset = input_pipeline.load(config.data, config.seed)
  model, tx, steps_per_epoch, total_steps = model_and_optimizer(config, dataset)
  state = steps_lib.create_train_state(jax.random.key(config.seed), model, dataset.input_shape, tx)
  num_params = models.count_params(state.params)
  flops = steps_lib.train_flops_per_example(config, state, dataset.input_shape)
  logging.info(
    "%s on %s: %s parameters, %.2f MFLOP per training example; "
    "%d train, %d validation, %d test examples of shape %s; data parallel over %d device(s) "
    "in %d process(es)",
    config.model.name,
    dataset.name,
    f"{num_params:,}",
    flops / 1e6,
    len(dataset.train),
    len(dataset.validation),
    len(dataset.test),
    dataset.input_shape,
    mesh.size,
    jax.process_count(),
  )
  batch_sharding, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  state = parallel.put(state, replicated)
  main = parallel.is_main_process()
  manager, state, loop, (records,) = resume(config, workdir, state, [(workdir, config)], main)
  train_fn, eval_fn = step_functions(config, batch_sharding)
  steps_fn = jax.jit(train_fn, out_shardings=replicated, donate_argnums=0)
  eval_fn = jax.jit(eval_fn, out_shardings=replicated)

  def evaluate(state, name: str):
    split = getattr(dataset, name)
    if not len(split):
      return None
    return [epochs.evaluate(eval_fn, state, split, config.eval_batch_size, batch_sharding)]

  images, labels = parallel.put((dataset.train.images, dataset.train.labels), replicated)
  return Run(
    config=config,
    workdir=workdir,
    state=state,
    images=images,
    labels=labels,
    orders=lambda e: parallel.put(epochs.epoch_order(len(labels), config.seed, e), replicated),
    steps_fn=steps_fn,
    evaluate=evaluate,
    members=[Member("", workdir_lib.MetricsWriter(workdir, main, config), records)],
    manager=manager,
    loop=loop,
    steps_per_epoch=steps_per_epoch,
    total_steps=total_steps,
    result={"num_params": num_params, "train_flops_per_example": flops},
    started_at=started_at,
  )


def fit(run: Run, stop: dict[str, int]) -> list[dict[str, Any]]:
  """Trains `run` to its total step count, evaluating and saving at every epoch's end.

  Reads `stop` (see `epochs.stop_signals`) between calls of the steps: after a
  signal it saves a checkpoint and raises `RunInterrupted`. A loss that stops
  being finite raises `DivergedError` before anything is saved.

  Returns:
    Each member's result (see `train_and_evaluate`).
  """
  config, state, members = run.config, run.state, run.members
  steps_per_epoch, total_steps = run.steps_per_epoch, run.total_steps
  sums = {
    key: np.zeros(len(members)) + run.loop.get(f"epoch_{key}", 0.0)
    for key in ("loss_sum", "correct", "steps")
  }
  step = int(np.ravel(state.step)[0])
  first_step, already_finished = step, step >= total_steps
  start_time = time.perf_counter() - run.loop["wall_time_s"]
  pending = []  # (per-step metrics still on the device, number of valid steps)
  window_start, window_steps = time.perf_counter(), 0
  profile_steps = config.profile_steps if parallel.is_main_process() else 0
  profiler = epochs.Profiler(profile_steps, os.path.join(run.workdir, "profile"))

  def flush_pending() -> list[list[float]]:
    """Adds the pending steps' metrics to the epoch's sums; returns each member's losses."""
    losses = [[] for _ in members]
    pending_from = step - sum(count for _, count in pending)
    for metrics, count in jax.device_get(pending):
      loss = np.reshape(metrics["loss"], (len(members), -1))[:, :count]
      correct = np.reshape(metrics["correct"], (len(members), -1))[:, :count]
      for i, member in enumerate(members):
        for value, right in zip(loss[i], correct[i], strict=True):
          if not math.isfinite(value):
            message = epochs.diverged_message(
              config, run.workdir, pending_from + len(losses[i]), value
            )
            raise DivergedError(f"{member.name}: {message}" if member.name else message)
          losses[i].append(float(value))
          sums["loss_sum"][i] += losses[i][-1]
          sums["correct"][i] += float(right)
          sums["steps"][i] += 1
    pending.clear()
    return losses

  def save(wall_time_s: float) -> None:
    loop = {f"epoch_{k}": v.tolist() for k, v in sums.items()}
    workdir_lib.save(run.manager, state, run.loop | loop | {"wall_time_s": wall_time_s})

  while step < total_steps:
    epoch, index = divmod(step, steps_per_epoch)
    epoch_start = time.perf_counter()
    epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
    order = run.orders(epoch)
    while step < epoch_end:
      if stop["signal"]:
        flush_pending()
        save(time.perf_counter() - start_time)
        run.manager.wait_until_finished()
        raise epochs.interrupted(stop["signal"], step, run.workdir)
      count = _next_stop(config, step, epoch_end) - step
      start = step - epoch * steps_per_epoch
      profiler.before_call(step)
      state, metrics = run.steps_fn(state, run.images, run.labels, order, start, count)
      if step == first_step:  # data read, model built, steps compiled (or found in the cache)
        logging.info("First steps began %.2f s into the run", time.perf_counter() - run.started_at)
      pending.append((metrics, count))
      step += count
      profiler.after_call(step, state)
      window_steps += count
      if config.log_every_steps and step % config.log_every_steps == 0:
        losses = flush_pending()
        seconds = time.perf_counter() - window_start
        rate = window_steps * config.batch_size / seconds
        for member, member_losses in zip(members, losses, strict=True):
          member.writer.write(
            {
              "kind": "train",
              "step": step,
              "epoch": step / steps_per_epoch,
              "train_loss": float(np.mean(member_losses)) if member_losses else float("nan"),
              "train_examples_per_sec": rate,
            }
          )
        _log_progress(step, epoch, run, float(np.mean(losses)), rate, seconds / window_steps)
        window_start, window_steps = time.perf_counter(), 0
      if step == epoch_end:
        break
      if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
        flush_pending()
        save(time.perf_counter() - start_time)
    flush_pending()
    seconds = time.perf_counter() - epoch_start
    evals = {name: run.evaluate(state, name) for name in ("validation", "test")}
    wall_time_s = time.perf_counter() - start_time
    done = epoch_end - epoch * steps_per_epoch - index
    for i, member in enumerate(members):
      record = epochs.epoch_record(
        step, steps_per_epoch, {k: v[i] for k, v in sums.items()}, config.batch_size, seconds, done
      )
      evals_i = {name: values[i] for name, values in evals.items() if values}
      _finish_record(member, record, evals_i, wall_time_s)
    for value in sums.values():
      value[:] = 0
    save(wall_time_s)
    window_start, window_steps = time.perf_counter(), 0

  profiler.stop(state)
  run.manager.wait_until_finished()
  run.manager.close()
  for member in members:
    member.writer.close()
  results = [epochs.summarize(member.records) | run.result for member in members]
  done = "Run already finished" if already_finished else "Finished"
  for member, result in zip(members, results, strict=True):
    prefix = f"{member.name}: " if member.name else ""
    logging.info("%s%s at step %d: %s", prefix, done, step, formatting.metrics_line(result))
  return results


def _next_stop(config: ml_collections.ConfigDict, step: int, epoch_end: int) -> int:
  """The next step that needs the host: a log line, a checkpoint or the epoch's end."""
  stops = [epoch_end, step + config.steps_per_call]
  for every in (config.log_every_steps, config.checkpoint_every_steps):
    if every:
      stops.append((step // every + 1) * every)
  return min(stops)


def _finish_record(member: Member, record: dict[str, Any], evals, wall_time_s: float) -> None:
  """Adds evaluation metrics and the wall time to an epoch's record, then writes and logs it."""
  for name, metrics in evals.items():
    record |= {f"{name}_{k}": v for k, v in metrics.items()}
  record["wall_time_s"] = wall_time_s
  member.writer.write(record)
  member.records.append(record)
  prefix = f"{member.name}: " if member.name else ""
  epoch_text = formatting.epoch_number(record["epoch"])
  logging.info("%sepoch %s: %s", prefix, epoch_text, formatting.metrics_line(record))


def _log_progress(step: int, epoch: int, run: Run, loss: float, rate: float, seconds_per_step):
  in_epoch = step - epoch * run.steps_per_epoch
  epoch_eta = (run.steps_per_epoch - in_epoch) * seconds_per_step
  run_eta = (run.total_steps - step) * seconds_per_step
  logging.info(
    "epoch %d step %d/%d (%.0f%%): train_loss=%.4f, %s examples/s, ETA epoch %s, run %s",
    epoch + 1,
    in_epoch,
    run.steps_per_epoch,
    100 * in_epoch / run.steps_per_epoch,
    loss,
    f"{rate:,.0f}",
    formatting.duration(epoch_eta),
    formatting.duration(run_eta),
  )
