"""Keeps each member's saved test predictions (`convnet.predictions`) those of its best epoch.

The loop (`train.fit`) evaluates the test split with each example's
predictions after an epoch that becomes a member's best (`evaluate_test`), and
saves them after that epoch's checkpoint (`save_predictions`); at each
(re)start, `check_predictions` makes again those that are missing, stale or
damaged.
"""

from __future__ import annotations

import contextlib
import os

import jax
import numpy as np
from absl import logging

from convnet import checkpoints, epochs, parallel, predictions, run_setup
from convnet import members as members_lib
from convnet.errors import CheckpointError, FileFormatError


def evaluate_test(run: run_setup.Run, state, predictions: bool):
  """The test metrics of each member (None without a test split), and with `predictions` each
  member's per-example predictions (else None): one evaluation either way."""
  if not predictions:
    return run.evaluate(state, "test"), None
  return run.predict(state) or (None, None)


def save_predictions(run: run_setup.Run, i: int, output: dict[str, np.ndarray], record) -> None:
  """Writes member `i`'s test predictions, made after `record`'s step (process 0 only)."""
  if not parallel.is_main_process():
    return
  predictions.save(
    run.members[i].folder,
    output["predicted"],
    output["true_probability"],
    run.test_labels[i],
    step=int(record["step"]),
    epoch=record["epoch"],
    num_classes=run.num_classes,
  )


def check_predictions(run: run_setup.Run, state) -> None:
  """Makes each member's saved test predictions those of its best epoch, at a (re)start.

  The loop saves them after the checkpoint of each epoch that becomes the best, so a run
  stopped in between has the best epoch's checkpoint and older predictions; a resumed run
  whose `max_steps` is larger drops a partial last epoch, and with it perhaps its best; a run
  trained before runs kept predictions has none. Such a member's predictions are made again,
  from the restored state or from its best epoch's checkpoint (kept: `checkpoints.KeepSteps`).
  Where that checkpoint is gone, a warning says so, and a file that is not the best epoch's
  is removed. Predictions that match, or a run without a test split, cost a file's read.
  Every process evaluates alike; process 0 writes.
  """
  step = int(np.ravel(state.step)[0])
  has_test = len(run.test_labels[0]) > 0
  for i, member in enumerate(run.members):
    if member.diverged:
      continue
    best = epochs.best_record(member.records)
    saved = _saved_step(member.folder)
    if best is not None and has_test and saved == int(best["step"]):
      continue
    if best is None or not has_test:
      if saved is not None:
        _remove_predictions(member, "no epoch of the run as restored backs them")
      continue
    try:
      if int(best["step"]) == step:
        at = state
      else:
        params, at_step = checkpoints.restore_params(member.folder, "best")
        if at_step != int(best["step"]):
          raise CheckpointError(f"the best checkpoint read is step {at_step}")
        at = _with_member_params(state, params, i if run.live is not None else None)
    except CheckpointError as e:
      logging.warning(
        "%s: the test predictions of its best epoch (%s, step %s) cannot be made again: %s",
        member.folder,
        best["epoch"],
        best["step"],
        e,
      )
      if saved is not None:
        _remove_predictions(member, "they are not its best epoch's")
      continue
    logging.info(
      "%s: saving the test predictions of its best epoch (%s, step %s)",
      member.folder,
      best["epoch"],
      best["step"],
    )
    _, outputs = evaluate_test(run, at, True)
    save_predictions(run, i, outputs[i], best)


def _saved_step(folder: str) -> int | None:
  """The step of a folder's saved test predictions; None without them, -1 where damaged."""
  try:
    return predictions.load(folder).step
  except FileNotFoundError:
    return None
  except (FileFormatError, OSError) as e:
    logging.warning("%s; it is made again", e)
    return -1


def _remove_predictions(member: members_lib.Member, why: str) -> None:
  if not parallel.is_main_process():
    return
  path = predictions.path(member.folder)
  logging.info("Removing %s: %s", path, why)  # as metrics past the restored step are dropped
  with contextlib.suppress(FileNotFoundError):
    os.unlink(path)


def _with_member_params(state, params, index: int | None):
  """`state` with member `index`'s parameters (a stacked group's), or all of them (None)."""
  if index is None:
    return state.replace(
      params=jax.tree.map(lambda s, p: jax.device_put(p, s.sharding), state.params, params)
    )
  return state.replace(params=jax.tree.map(lambda s, p: s.at[index].set(p), state.params, params))
