"""Judges each member of a run: divergence and early stopping, and what a checkpoint keeps of them.

A run has one member (`Member`) per model: one for a single run, one per model
of a group trained together (`convnet.seeds`). The loop (`train.fit`) asks
here after its steps and evaluations: a seed of a group whose loss or
parameters stop being finite stops training and the others go on as they
would alone (`SeedsDivergedError` once none trains, or at the end); a member
whose whole epochs meet `epochs.early_stop` stops early. Which members
diverged or stopped, and why, is saved with each checkpoint (the loop's
"diverged" and "stopped_early" fields) and read back, checked, by
`diverged_members` and `stopped_members`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import ml_collections
from absl import logging

from convnet import checkpoints, epochs
from convnet import workdir as workdir_lib
from convnet.errors import CheckpointError, DivergedError


class SeedsDivergedError(DivergedError):
  """Seeds of a group diverged; each seed's result or error is in `results`.

  `results` has one entry per seed, in the group's order: the result dict of
  a seed that finished (as `train.train_and_evaluate` returns it), or the
  `DivergedError` of a seed that diverged, whose message names the seed and
  the step. The group's other seeds trained on as they would alone.
  """

  def __init__(self, results: list[dict[str, Any] | DivergedError]):
    self.results = results
    diverged = [str(r) for r in results if isinstance(r, DivergedError)]
    finished = len(results) - len(diverged)
    super().__init__(
      " ".join(diverged)
      + (f" ({finished} other seed(s) of the group finished.)" if finished else "")
    )


@dataclasses.dataclass
class Member:
  """One model of a run: where its metrics go, and what it has recorded so far."""

  name: str  # "" for a single run, "seed 3" for a seed of a group, or a member's folder name
  writer: workdir_lib.MetricsWriter
  records: list[dict[str, Any]]
  config: ml_collections.ConfigDict  # its own (its seed and learning rate)
  diverged: str = ""  # why this seed of a group stopped training; "" while it trains
  stopped: epochs.EarlyStop | None = None  # where and why it stopped early (`epochs.early_stop`)
  folder: str = ""  # its folder: metrics, and its test predictions (`convnet.predictions`)

  @property
  def training(self) -> bool:
    """Whether it still trains: it has neither diverged nor stopped early."""
    return not self.diverged and self.stopped is None


def improves(members: list[Member], validation) -> list[bool]:
  """Whether each member's epoch just evaluated becomes its best (`epochs.best_record`).

  Without a validation split, every epoch does: the best is the last.
  """
  improves = []
  for i, member in enumerate(members):
    candidate = {"kind": "epoch"}
    if validation:
      candidate["validation_accuracy"] = validation[i]["accuracy"]
    improves.append(
      member.training and epochs.best_record([*member.records, candidate]) is candidate
    )
  return improves


def judge_evaluations(members: list[Member], manager, evals, step: int, window, live):
  """Judges each training member by its evaluation losses after step `step`; returns `live`.

  Finite parameters can be so large that the logits overflow: a validation or
  test loss that is not finite is a divergence (`DivergedError` for a single
  run; in a group, that seed stops training, and its flag in `live` is cleared).
  `evals` maps a split's name to each member's metrics (or None); `manager`
  (the run's checkpoints) names the last good checkpoint in the message.
  """
  for i, member in enumerate(members):
    losses = [(n, v[i]["loss"]) for n, v in evals.items() if v and member.training]
    split, loss = next(((n, x) for n, x in losses if not math.isfinite(x)), (None, None))
    if split is None:
      continue
    message = epochs.diverged_message(member.config, manager, step - 1, loss, split)
    if live is None:
      raise DivergedError(message)
    diverge(member, message, window[i])
    live = live.at[i].set(False)
  stop_if_none_trains(members)
  return live


def judge_early_stopping(
  members: list[Member], early_stopping: ml_collections.ConfigDict, window, live
):
  """Stops each training member whose whole epochs meet `epochs.early_stop`; returns `live`.

  A stopped member's flag in `live` (a group's) is cleared and its logging
  window emptied, so that it trains and writes no more. `early_stopping` is
  the run's `config.early_stopping`.
  """
  stopped = []
  for i, member in enumerate(members):
    if not member.training:
      continue
    accuracies = epochs.whole_epoch_validation_accuracies(member.records)
    member.stopped = epochs.early_stop(
      accuracies, early_stopping.patience, early_stopping.min_delta
    )
    if member.stopped is None:
      continue
    stopped.append(member)
    window[i].clear()
    if live is not None:
      live = live.at[i].set(False)
  others = any(member.training for member in members)
  for member in stopped:
    prefix = f"{member.name}: " if member.name else ""
    rest = " The group's other seeds train on." if others else ""
    logging.info("%sstopped early: %s.%s", prefix, member.stopped.reason, rest)
  return live


def restore_stops(members: list[Member], loop: dict[str, Any], workdir: str, live):
  """Marks the members that stopped early before the restored checkpoint; returns `live`.

  `loop` is the checkpoint's (see `stopped_members`), `workdir` where it lies.
  """
  stops = stopped_members(loop, [member.name for member in members], workdir)
  for i, member in enumerate(members):
    member.stopped = stops.get(member.name)
    if member.stopped is not None and live is not None:
      live = live.at[i].set(False)
  return live


def stopped_members(
  loop: dict[str, Any], names: list[str], workdir: str
) -> dict[str, epochs.EarlyStop]:
  """The members that stopped early before a checkpoint: {"seed 3": stop}, from its `loop`.

  `names` are the run's members ("" for a single run). A checkpoint saved
  before early stopping existed has none.

  Raises:
    CheckpointError: the checkpoint's "stopped_early" field is not an object
      whose keys are members of this run and whose values are an epoch
      (>= 1), the last epoch that improved (>= 0) and a reason.
  """

  def whole(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least

  def valid(stop) -> bool:
    return (
      isinstance(stop, dict)
      and set(stop) == {"epoch", "improved_epoch", "reason"}
      and whole(stop["epoch"], 1)
      and whole(stop["improved_epoch"], 0)
      and isinstance(stop["reason"], str)
      and bool(stop["reason"])
    )

  members = ", ".join(repr(n) for n in names)
  stopped = _members_field(
    loop,
    "stopped_early",
    names,
    workdir,
    valid,
    f"an object of early stops for the members {members}",
  )
  return {name: epochs.EarlyStop(**stop) for name, stop in stopped.items()}


def stop_if_none_trains(members: list[Member]) -> None:
  """Raises `SeedsDivergedError` when every seed of a group has diverged."""
  if all(member.diverged for member in members):
    raise SeedsDivergedError([DivergedError(member.diverged) for member in members])


def diverge(member: Member, message: str, window: list[float]) -> None:
  """Marks a seed of a group diverged (`message`, prefixed with its name); empties its window."""
  member.diverged = f"{member.name}: {message}"
  window.clear()
  logging.error("%s The group's other seeds train on.", member.diverged)


def diverged_members(loop: dict[str, Any], names: list[str], workdir: str) -> dict[str, str]:
  """The seeds of a group that diverged before its checkpoint: {"seed 3": why}, from `loop`.

  Raises:
    CheckpointError: the checkpoint's "diverged" field is not an object whose
      keys are seeds of this group (never a single run's) and whose values are
      messages.
  """
  seeds = ", ".join(n for n in names if n) or "(none: a single run)"
  return _members_field(
    loop,
    "diverged",
    names,
    workdir,
    lambda why: isinstance(why, str) and bool(why),
    f"an object of messages for the seeds {seeds}",
    lambda name: name != "",
  )


def _members_field(loop, field: str, names, workdir: str, valid, expected: str, member=None):
  """`loop[field]` ({} when absent), checked: an object of `valid` values keyed by `names`.

  Raises:
    CheckpointError: it is not, in one line naming the field and `expected`.
  """
  value = loop.get(field, {})
  fits = isinstance(value, dict) and all(
    isinstance(k, str) and k in names and (member is None or member(k)) and valid(v)
    for k, v in value.items()
  )
  if not fits:
    raise CheckpointError(
      f"the checkpoint restored from {os.path.join(workdir, checkpoints.CHECKPOINTS)}: field "
      f"{field} of its loop/metadata is {str(value)[:60]}, not {expected}; use a new --workdir, "
      "or delete its checkpoints to start fresh"
    )
  return dict(value)
