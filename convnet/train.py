"""Trains and evaluates a model: the loop around the steps.

`train_and_evaluate(config, workdir)` is what `convnet.main`, the tests and
research scripts call. The workdir (see `convnet.workdir`) gets the resolved
config, one metrics record per logged step or epoch, TensorBoard events,
Orbax checkpoints and the best epoch's test predictions (`convnet.predictions`);
running it again on the same workdir resumes from the last checkpoint, and a
finished run reports its result and returns.

`fit` is the loop. It trains one model, or (for `convnet.seeds`) copies of one
model stacked along a leading axis, so that both write, evaluate, checkpoint
and stop alike. A group's seeds are judged one by one: a seed whose loss or
parameters stop being finite stops training, and the others go on as they
would alone (`SeedsDivergedError`).

The run's set-up lives in `convnet.run_setup`, the judgement of each member
(divergence, early stopping) in `convnet.members`, and the saved test
predictions in `convnet.best_predictions`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from convnet import (
  best_predictions,
  checkpoints,
  config_checks,
  display,
  epochs,
  memory,
  parallel,
  precompile,
  preemption,
  run_setup,
)
from convnet import members as members_lib
from convnet import workdir as workdir_lib
from convnet.errors import DivergedError, WorkdirReadOnlyError
from convnet.members import SeedsDivergedError  # raised by `train_members`: callers catch it here


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates the configured model, resuming from `workdir`.

  Holds `workdir`'s lock while it runs.

  Returns:
    The last epoch's metrics (`train_*`, `validation_*`, `test_*`), plus
    `best_validation_accuracy`, `best_epoch`, `test_accuracy_at_best_validation`,
    `num_params`, `train_flops_per_example` (XLA's count of the step as written),
    `wall_time_s`, `train_examples_per_sec`, and `stopped_early_epoch` (0: the
    run did not stop early) with `stop_reason` where it did (`config.early_stopping`).

  A workdir that cannot be written (a read-only mount) still reports the
  result of a run that finished there.

  Raises:
    ConfigError, DataError, CheckpointError, WorkdirInUseError: a config,
      data or workdir that cannot be used; nothing is written. A resumed run
      whose config differs in a field that changes its result is refused
      before any data is read.
    WorkdirError: a file cannot be written (a full disk); what was written
      stays, and the same command resumes once it can write.
    DivergedError: the loss or the parameters stopped being finite; the last
      good checkpoint is kept.
    RunInterrupted: SIGTERM or SIGINT arrived; a checkpoint was saved.
  """
  return train_members(config, workdir)[0]


def train_members(
  config: ml_collections.ConfigDict,
  workdir: str,
  seeds: list[int] | None = None,
  members: list[tuple[str, ml_collections.ConfigDict]] | None = None,
) -> list[dict[str, Any]]:
  """One run, one per seed (`seeds`) or named members (`members`) trained together; results.

  The one set-up of `train_and_evaluate` and `convnet.seeds`: the config
  checked, `workdir` made and locked, signals turned into stop requests, a
  resumed run's configs and members checked before any data is read, then
  `run_setup.set_up` and `fit`. Seeds go to `workdir/seed_<s>/`; each member, a (name,
  config) pair (`convnet.seeds.train_group` checks them), to `workdir/<name>/`;
  a group's checkpoints to `workdir/checkpoints/`.
  """
  config_checks.validate(config)
  size = len(seeds) if seeds is not None else len(members) if members is not None else 1
  memory.check(config, size)  # before any data is read
  with workdir_lib.run_dir(workdir) as workdir:
    if seeds is not None:
      member_dirs = [(checkpoints.seed_dir(workdir, s), seed_config(config, s)) for s in seeds]
      group = {"seeds": list(seeds)}
    elif members is not None:
      member_dirs = [(checkpoints.member_dir(workdir, n), c) for n, c in members]
      group = {"members": [n for n, _ in members]}
    else:
      member_dirs, group = [(workdir, config)], None
    # In a multi-host run, process 0 holds the lock for them all.
    main = parallel.is_main_process()
    lock = workdir_lib.lock(workdir) if main else contextlib.nullcontext()
    compiles = precompile.Compiles()
    try:
      with lock, preemption.stop_requests() as stop:
        run_setup.check_before_loading(workdir, member_dirs, group)
        return fit(run_setup.set_up(config, workdir, member_dirs, compiles, group), stop)
    except WorkdirReadOnlyError as e:  # Only the lock raises it: nothing can be written there.
      if group is not None:
        raise
      return [run_setup.finished_result(config, workdir, e)]
    finally:
      # A program still compiling in another thread (when an error or a second stop signal
      # came during the set-up) ends first: Python's exit would abort in the middle of it.
      compiles.join()


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """A copy of `config` with its seed set."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.seed = seed
  return config


def fit(run: run_setup.Run, stop: preemption.StopRequests) -> list[dict[str, Any]]:
  """Trains `run` to its total step count, evaluating and saving at every epoch's end.

  Asks `stop` (see `preemption.stop_requests`) before each call of the steps,
  in every process at the same steps: after a signal it saves a checkpoint and
  raises `RunInterrupted`. A single run whose loss stops being finite raises
  `DivergedError` before anything is saved. In a group, a seed whose loss or
  parameters stop being finite is marked diverged: it keeps its last finite
  parameters and writes no more records, the others train on as they would
  alone, and `SeedsDivergedError` is raised at the end (at once when none
  trains); which seeds diverged, and why, is saved with each checkpoint.

  Early stopping (`config.early_stopping`, off with patience 0) judges each
  member after each whole epoch's evaluation by `epochs.early_stop`. A single
  run that stops ends once that epoch's checkpoint is saved; a seed of a group
  that stops trains no more and writes no more records, as a diverged one,
  but finishes with a result, and the loop ends when no member trains. Where
  and why each member stopped is saved with each checkpoint, so that a rerun
  trains nothing more and reports the same; `max_steps` or `num_epochs` still
  end a run that does not stop.

  Returns:
    Each member's result (see `train_and_evaluate`), with `stopped_early_epoch`
    (see `epochs.early_stop_fields`).
  """
  config, state, members = run.config, run.state, run.members
  live = members_lib.restore_stops(members, run.loop, run.workdir, run.live)
  best_predictions.check_predictions(run, state)
  steps_per_epoch, total_steps = run.steps_per_epoch, run.total_steps
  sums = epoch_sums(run.loop, len(members), config.batch_size)
  step = int(np.ravel(state.step)[0])
  first_step = step
  already_finished = step >= total_steps or not any(member.training for member in members)
  start_time = time.perf_counter() - run.loop["wall_time_s"]
  pending = []  # (per-step metrics still on the device, number of valid steps)
  # Each member's losses since the last logged step: a logged record covers its whole window.
  window = run.loop.get("window_losses") or [[] for _ in members]
  window_start, window_steps = time.perf_counter(), 0
  profile_steps = config.profile_steps if parallel.is_main_process() else 0
  profiler = epochs.Profiler(profile_steps, os.path.join(run.workdir, "profile"))

  def flush_pending() -> None:
    """Adds the pending steps' metrics to the epoch's sums and their losses to the window.

    Judges each member by its own losses (and, in a group, by the steps'
    `live` flags): see above.
    """
    at = step - sum(count for _, count in pending)  # the index of the first pending step
    pending_metrics, trains = jax.device_get((pending, live))
    for metrics, count in pending_metrics:
      metrics = {k: np.reshape(v, (len(members), -1))[:, :count] for k, v in metrics.items()}
      for i, member in enumerate(members):
        for j in range(count if member.training else 0):
          value = metrics["loss"][i, j] / metrics["count"][i, j]
          if not math.isfinite(value):
            message = epochs.diverged_message(member.config, run.manager, at + j, value)
            if live is None:
              raise DivergedError(message)
            members_lib.diverge(member, message, window[i])
            break
          window[i].append(float(value))
          for k, v in metrics.items():
            sums.setdefault(k, np.zeros(len(members)))[i] += float(v[i, j])
      at += count
    pending.clear()
    if live is None:
      return
    for i, member in enumerate(members):
      if not trains[i] and member.training:  # the last step's loss was finite, not its update
        message = epochs.diverged_message(member.config, run.manager, step - 1)
        members_lib.diverge(member, message, window[i])
    members_lib.stop_if_none_trains(members)

  def save(wall_time_s: float) -> None:
    loop = {"epoch_sums": {k: v.tolist() for k, v in sums.items()}, "window_losses": window}
    if live is not None:
      loop["diverged"] = {m.name: m.diverged for m in members if m.diverged}
    loop["stopped_early"] = {m.name: dataclasses.asdict(m.stopped) for m in members if m.stopped}
    checkpoints.save(run.manager, state, run.loop | loop | {"wall_time_s": wall_time_s})

  while step < total_steps and any(member.training for member in members):
    epoch, index = divmod(step, steps_per_epoch)
    epoch_start = time.perf_counter()
    epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
    order = run.orders(epoch)
    while step < epoch_end:
      if signum := stop.requested(step):
        flush_pending()
        save(time.perf_counter() - start_time)
        run.manager.wait_until_finished()
        raise epochs.interrupted(signum, step, run.workdir)
      count = _next_stop(config, step, epoch_end) - step
      start = step - epoch * steps_per_epoch
      profiler.before_call(step)
      args = (state, run.images, run.labels, order, start, count, run.key)
      if live is None:
        state, metrics = run.steps_fn(*args)
      else:
        (state, live), metrics = run.steps_fn(*args, live)
      if step == first_step:  # data read, model built, steps compiled (or found in the cache)
        logging.info("First steps began %.2f s into the run", time.perf_counter() - run.started_at)
      pending.append((metrics, count))
      step += count
      profiler.after_call(step, state)
      window_steps += count
      if config.log_every_steps and step % config.log_every_steps == 0:
        flush_pending()
        _write_window(run, step, window, window_steps, time.perf_counter() - window_start)
        window_start, window_steps = time.perf_counter(), 0
      if step == epoch_end:
        break
      if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
        flush_pending()
        save(time.perf_counter() - start_time)
    flush_pending()
    seconds = time.perf_counter() - epoch_start
    if epoch_end - first_step <= steps_per_epoch:  # the first evaluation of this process
      logging.info("Evaluating on validation and test (waiting for its program first)")
    evals = {"validation": run.evaluate(state, "validation")}
    improved = members_lib.improves(members, evals["validation"])
    evals["test"], outputs = best_predictions.evaluate_test(run, state, any(improved))
    live = members_lib.judge_evaluations(members, run.manager, evals, step, window, live)
    wall_time_s = time.perf_counter() - start_time
    done = epoch_end - epoch * steps_per_epoch - index
    for i, member in enumerate(members):
      if not member.training:
        continue
      member_sums = {k: v[i] for k, v in sums.items()}
      record = epochs.epoch_record(
        step, steps_per_epoch, member_sums, seconds, done * config.batch_size
      )
      evals_i = {name: values[i] for name, values in evals.items() if values}
      _finish_record(member, record, evals_i, wall_time_s)
    for value in sums.values():  # A max_steps stop within an epoch keeps its sums.
      value *= step % steps_per_epoch != 0
    if step % steps_per_epoch == 0:  # early stopping judges whole epochs only
      live = members_lib.judge_early_stopping(members, config.early_stopping, window, live)
    run.best.steps = checkpoints.best_steps(member.records for member in members)
    save(wall_time_s)
    # After the checkpoint: a run stopped in between resumes at this epoch
    # (`best_predictions.check_predictions`).
    for i, member in enumerate(members if outputs else ()):
      record = member.records[-1] if member.records else None
      if record and record["step"] == step and epochs.best_record(member.records) is record:
        best_predictions.save_predictions(run, i, outputs[i], record)
    window_start, window_steps = time.perf_counter(), 0

  profiler.stop(state)
  return _finish(run, step, already_finished)


def _finish(run: run_setup.Run, step: int, already_finished: bool) -> list[dict[str, Any]]:
  """Closes the run's files, logs each member's result, and returns the results (see `fit`)."""
  members = run.members
  run.manager.wait_until_finished()
  run.manager.close()
  for member in members:
    member.writer.close()
  results = [
    DivergedError(member.diverged)
    if member.diverged
    else epochs.summarize(member.records) | run.result | epochs.early_stop_fields(member.stopped)
    for member in members
  ]
  done = "Run already finished" if already_finished else "Finished"
  for member, result in zip(members, results, strict=True):
    prefix = f"{member.name}: " if member.name else ""
    if isinstance(result, DivergedError):
      logging.error("%s", result)
      continue
    # The log said why when the member stopped; a rerun says it here.
    why = f" ({member.stopped.reason})" if member.stopped and already_finished else ""
    at = result["step"] if member.stopped else step  # a seed that stopped: its own last step
    shown = display.metrics_line({k: v for k, v in result.items() if k != "stop_reason"})
    logging.info("%s%s at step %d%s: %s", prefix, done, at, why, shown)
  if any(member.diverged for member in members):
    raise SeedsDivergedError(results)
  return results


def epoch_sums(loop: dict[str, Any], num_members: int, batch_size: int) -> dict[str, np.ndarray]:
  """The epoch's summed metrics so far, one entry per member, from a checkpoint's `loop`.

  Empty at a fresh start. Checkpoints written before the steps returned sums
  held the per-step mean losses' sum, the correct predictions and the steps
  ("epoch_loss_sum", "epoch_correct", "epoch_steps"): they are read as the
  same sums, and those keys leave `loop`.
  """
  old = {
    k: loop.pop(f"epoch_{k}") for k in ("loss_sum", "correct", "steps") if f"epoch_{k}" in loop
  }
  if len(old) == 3:
    saved = {
      "loss": np.multiply(old["loss_sum"], batch_size),
      "accuracy": old["correct"],
      "count": np.multiply(old["steps"], batch_size),
    }
  else:
    saved = loop.get("epoch_sums", {})
  return {k: np.zeros(num_members) + np.asarray(v, np.float64) for k, v in saved.items()}


def _next_stop(config: ml_collections.ConfigDict, step: int, epoch_end: int) -> int:
  """The next step that needs the host: a log line, a checkpoint or the epoch's end."""
  stops = [epoch_end, step + config.steps_per_call]
  for every in (config.log_every_steps, config.checkpoint_every_steps):
    if every:
      stops.append((step // every + 1) * every)
  return min(stops)


def _finish_record(
  member: members_lib.Member, record: dict[str, Any], evals, wall_time_s: float
) -> None:
  """Adds evaluation metrics and the wall time to an epoch's record, then writes and logs it."""
  for name, metrics in evals.items():
    record |= {f"{name}_{k}": v for k, v in metrics.items()}
  record["wall_time_s"] = wall_time_s
  member.writer.write(record)
  member.records.append(record)
  prefix = f"{member.name}: " if member.name else ""
  epoch_text = display.epoch_number(record["epoch"])
  logging.info("%sepoch %s: %s", prefix, epoch_text, display.metrics_line(record))


def _write_window(
  run: run_setup.Run, step: int, window: list[list[float]], steps: int, seconds: float
):
  """Writes each member's "train" record of a logging window, logs progress, empties `window`."""
  rate = steps * run.config.batch_size / seconds
  for member, losses in zip(run.members, window, strict=True):
    if not member.training:
      continue
    member.writer.write(
      {
        "kind": "train",
        "step": step,
        "epoch": step / run.steps_per_epoch,
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "train_examples_per_sec": rate,
      }
    )
  losses = [loss for member_losses in window for loss in member_losses]  # the seeds that train
  _log_progress(step, run, float(np.mean(losses)), rate, seconds / steps)
  for losses in window:
    losses.clear()


def _log_progress(step: int, run: run_setup.Run, loss: float, rate: float, seconds_per_step):
  epoch = (step - 1) // run.steps_per_epoch
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
    display.duration(epoch_eta),
    display.duration(run_eta),
  )
