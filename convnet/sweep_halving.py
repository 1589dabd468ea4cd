"""Trains a sweep's arms rung by rung (successive halving), and records the cells it prunes.

`convnet.halving` chooses, from validation curves alone, which values of the
halved field go on at each rung; this module trains them there. Each rung trains
an arm's surviving cells to the rung's epochs of their full schedule, each going
on from its checkpoint of the rung before (`sweep_records.train_group`), and the
last rung to the whole budget; the survivors' records are written as any cell's,
and each pruned cell gets a record of status "pruned". `convnet.sweep` runs this
when a sweep file has a `halving()` (`from_sweep_file`).
"""

from __future__ import annotations

import math
import os
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import logging

from convnet import epochs as epochs_lib
from convnet import files, input_pipeline, sweep_records
from convnet import halving as halving_lib
from convnet import workdir as workdir_lib
from convnet.cells import Cell
from convnet.errors import ConfigError, ConvnetError, WorkdirInUseError


def from_sweep_file(module: types.ModuleType) -> halving_lib.Halving | None:
  """The sweep file's successive halving: what its `halving()` returns, or None without one.

  Raises:
    ConfigError: `halving()` returns something else than a `convnet.halving.Halving`.
  """
  make = getattr(module, "halving", None)
  if make is None:
    return None
  halving = make() if callable(make) else make
  if not isinstance(halving, halving_lib.Halving):
    raise ConfigError(
      f"the sweep file's halving() gives {type(halving).__name__}, not a convnet.halving.Halving"
    )
  return halving


def check_no_added_cells(
  sweep_dir: str,
  cells: Sequence[Cell],
  configs: Mapping[str, ml_collections.ConfigDict],
  halving: halving_lib.Halving,
) -> None:
  """Refuses, before anything trains, an arm whose halving began with other cells than it has
  now: a seed or value added to a halved arm (a cell without a record beside settled ones, or a
  decisions file of other cells for an arm not yet settled).

  Its decisions were made on the means over the seeds it had; a new seed changes those means,
  and with them which values a rung keeps, against the records already written. An arm whose
  every cell is settled is left as it is (a seed dropped from the sweep, say).

  Raises:
    ConfigError: such an arm, in one line naming it, a new cell and what to do.
    FileFormatError: a record or decisions file that is not one.
  """
  decisions_dir = os.path.join(sweep_dir, halving_lib.FOLDER)
  for arm in halving_lib.arms(cells, halving.field):
    arm_cells = [c for row in arm.grid for c in row]
    settled = [c for c in arm_cells if sweep_records.is_settled(sweep_dir, c, configs[c.name])]
    if len(settled) == len(arm_cells):
      continue
    saved = halving_lib.read_decisions(halving_lib.decisions_path(decisions_dir, arm.name))
    began = set()
    if saved is not None and isinstance(saved["arm"], dict):
      began = {n for row in saved["arm"].get("cells", []) for n in row}
    # A cell without a record that the decisions name lost its record (moved away: it trains
    # again); one they do not name is new.
    new = [c.name for c in arm_cells if sweep_records.read_record(sweep_dir, c) is None]
    new = [n for n in new if n not in began] if began else (new if settled else [])
    if new:
      raise ConfigError(
        f"arm {arm.name} was halved over other cells than it has now ({new[0]} is new to it"
        f"{f', and {len(new) - 1} more' if len(new) > 1 else ''}): its rungs chose on the means "
        "over the seeds it had, so a seed or value cannot join it; run the grown sweep with "
        "another --workdir, or leave the new cells out"
      )


class _RungFailed(ConvnetError):
  """Runs of a rung that failed (not diverged): the rung decides nothing; by cell name, each
  run's folder and record fields."""

  def __init__(self, epoch: int, failed: Mapping[str, tuple[str, Mapping[str, Any]]]):
    super().__init__(f"epoch {epoch}: {', '.join(failed)} failed")
    self.epoch, self.failed = epoch, dict(failed)


def run_halving(
  cells: Sequence[Cell],
  configs: Mapping[str, ml_collections.ConfigDict],
  sweep_dir: str,
  halving: halving_lib.Halving,
  shard: tuple[int, int] = (0, 1),
  vmap_seeds: bool = False,
  vmap_rates: bool = False,
  pull: bool = False,
) -> list[dict[str, Any]]:
  """Halves each arm of the sweep over `halving.field` (`convnet.halving`); the records written.

  Each rung trains the arm's surviving cells to the rung's epochs of the full
  schedule (`max_steps`). The first rung trains every value, grouped as
  `sweep_records.group_cells` groups them (with `vmap_rates`, every rate and seed in one
  program); later rungs train the survivors one seed group (or cell) per
  value, each going on from its checkpoint of the rung before where it has
  one; the last rung trains them to the whole budget, and their records are
  written as any cell's.
  A pruned cell's record has status "pruned", the epoch where it stopped and
  its best validation accuracy to there. `shard=(i, n)` halves arms i, i+n,
  ...; with `pull`, a worker takes each arm that no other holds. Test
  accuracies take no part in a choice; a rerun makes the same choices from the
  runs' records and trains nothing twice.
  """
  arms = halving_lib.arms(cells, halving.field)
  for cell in cells:
    halving.check_budget(configs[cell.name].num_epochs)
  index, count = shard
  arms = [*arms[index:], *arms[:index]] if pull else arms[index::count]
  decisions_dir = os.path.join(sweep_dir, halving_lib.FOLDER)
  written, start = [], time.perf_counter()
  for arm in arms:
    arm_cells = [c for row in arm.grid for c in row]
    if all(sweep_records.is_settled(sweep_dir, c, configs[c.name]) for c in arm_cells):
      continue
    lock_dir = os.path.join(decisions_dir, arm.name)
    files.make_dir(lock_dir, "the arm's lock folder")
    try:
      with workdir_lib.lock(lock_dir):
        written += _halve_arm(arm, halving, configs, sweep_dir, vmap_seeds, vmap_rates)
    except WorkdirInUseError:
      logging.info("Arm %s is held by another worker: passed over", arm.name)
  sweep_records.log_end("Halving", written, start)
  return written


def _halve_arm(arm, halving, configs, sweep_dir: str, vmap_seeds: bool, vmap_rates: bool):
  """One arm's rungs (`halving_lib.run_arm`), then its records; the records written."""
  folders: dict[str, str] = {}  # each cell's folder, where it trained last
  final: dict[str, dict[str, Any]] = {}  # the last rung's record fields, by cell

  def train_rung(arm_name: str, epochs: int, rung_cells: Sequence[Cell]):
    last = epochs == configs[rung_cells[0].name].num_epochs
    rung_configs = {
      c.name: configs[c.name] if last else _until_epoch(configs[c.name], epochs) for c in rung_cells
    }
    curves, failed = {}, {}
    # Every rate trains to the first rung: together, with `vmap_rates` (one program). The
    # survivors then train as seed groups, each going on from its own checkpoint at each rung.
    first = len(rung_cells) == sum(len(row) for row in arm.grid)
    for group in sweep_records.group_cells(
      rung_cells, vmap_seeds or vmap_rates, vmap_rates and first
    ):
      if last and all(sweep_records.is_finished(sweep_dir, c, configs[c.name]) for c in group):
        results = [None] * len(group)
        workdirs = [
          os.path.join(sweep_dir, sweep_records.read_record(sweep_dir, c)["workdir"]) for c in group
        ]
      else:
        logging.info("Arm %s, to epoch %d: %s", arm_name, epochs, ", ".join(c.name for c in group))
        results, workdirs = sweep_records.train_group(sweep_dir, group, rung_configs)
        if results is None:
          raise WorkdirInUseError(
            f"{sweep_records.group_workdir(sweep_dir, group)} is held by another process"
          )
        # A signal as the group ended: stop before the next group; a rerun decides the rung
        # from these runs' checkpoints, as after a stop mid-run.
        sweep_records.stop_if_signalled()
      for cell, folder, result in zip(group, workdirs, results, strict=True):
        folders[cell.name] = folder
        if result is not None and result.get("status") not in ("done", "diverged"):
          failed[cell.name] = (folder, result)
          continue
        if result is not None and last:
          final[cell.name] = result
        curves[cell.name] = _validation_curve(folder, epochs, result)
    if failed:  # its other groups trained first: a rerun goes on from their checkpoints
      raise _RungFailed(epochs, failed)
    return curves

  try:
    outcome = halving_lib.run_arm(
      arm, halving, train_rung, os.path.join(sweep_dir, halving_lib.FOLDER), _identity(configs, arm)
    )
  except _RungFailed as e:
    # A rung whose runs failed decides nothing: no cell is pruned on it, and its decisions are
    # not written. The failed cells get failure records (a settled record stays), and the last
    # rung's finished runs their records; a rerun trains the failed ones again.
    logging.error(
      "Arm %s, %s: the rung decides nothing; rerun the sweep to train them again", arm.name, e
    )
    written = []
    for cell in (c for row in arm.grid for c in row):
      if cell.name in e.failed:
        if sweep_records.is_settled(sweep_dir, cell, configs[cell.name]):
          continue
        folder, fields = e.failed[cell.name]
      elif cell.name in final:  # finished or diverged at the last rung
        folder, fields = folders[cell.name], final[cell.name]
        if _recorded(sweep_dir, cell, configs[cell.name], fields):
          continue
      else:
        continue
      written.append(
        sweep_records.write_record(sweep_dir, cell, configs[cell.name], folder, fields)
      )
    return written
  written = []
  for cell in (c for row in arm.grid for c in row):
    fields = outcome.pruned_records().get(cell.name) or final.get(cell.name)
    if fields is not None and not _recorded(sweep_dir, cell, configs[cell.name], fields):
      written.append(
        sweep_records.write_record(sweep_dir, cell, configs[cell.name], folders[cell.name], fields)
      )
  return written


def _recorded(sweep_dir: str, cell: Cell, config, fields: Mapping[str, Any]) -> bool:
  """Whether the cell's record of its config has the status `fields` give already (an arm run
  again for another of its cells: its finished and pruned cells' records stay as they are)."""
  record = sweep_records.read_record(sweep_dir, cell)
  return (
    record is not None
    and record["status"] == fields.get("status")
    and sweep_records.is_settled(sweep_dir, cell, config)
  )


_NUM_TRAIN: dict[str, int] = {}  # the training split's size, by data config (seeds alike)


def _until_epoch(config: ml_collections.ConfigDict, epochs: int) -> ml_collections.ConfigDict:
  """`config` stopped after `epochs` epochs of its schedule (`max_steps`: a resumable change)."""
  key = config.data.to_json_best_effort(sort_keys=True)
  if key not in _NUM_TRAIN:
    _NUM_TRAIN[key] = len(input_pipeline.load(config.data, config.seed).train)
  steps_per_epoch, _ = epochs_lib.step_counts(config, _NUM_TRAIN[key])
  config = config.copy_and_resolve_references()
  config.max_steps = epochs * steps_per_epoch
  return config


def _validation_curve(folder: str, epochs: int, result: Mapping[str, Any] | None) -> list[float]:
  """A run's validation accuracy after each whole epoch, from its `metrics.jsonl`.

  A run that diverged or failed gets NaN for the epochs it did not reach, so that it ranks last.
  """
  records = [
    r
    for r in workdir_lib.read_metrics(folder)
    if r["kind"] == "epoch" and not workdir_lib.partial_epoch(r)
  ]
  curve = [float(r.get("validation_accuracy", math.nan)) for r in records]
  if result is not None and result.get("status") not in ("done", None):
    curve += [math.nan] * max(epochs - len(curve), 0)
  return curve


def _identity(configs: Mapping[str, ml_collections.ConfigDict], arm) -> dict[str, Any]:
  """What an arm's curves depend on beside the halving: its first cell's config, seed aside."""
  config = sweep_records.config_json(configs[arm.grid[0][0].name])
  config.pop("seed", None)
  config.get("optimizer", {}).pop("learning_rate", None)
  return config
