"""A sweep's cells on disk: where each cell or group trains, training it, and each cell's record.

A group is the cells that train together: a cell alone, a setting's seeds
(`--vmap_seeds`), or its seeds and learning rates (`--vmap_rates`), in one
vmapped program (`convnet.seeds`). `train_group` trains one and returns each
cell's record fields; `write_record` writes a cell's record atomically under
`records/`, its test predictions beside it, and never replaces a finished
record with a failure. `convnet.sweep` runs a grid's groups with these, and
`convnet.sweep_halving` an arm's rungs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
from absl import logging

from convnet import checkpoints, display, files, preemption, train
from convnet import predictions as predictions_lib
from convnet import records as records_lib
from convnet import seeds as seeds_lib
from convnet import workdir as workdir_lib
from convnet.cells import Cell, cell_name
from convnet.errors import DivergedError, FileFormatError, RunInterrupted, WorkdirInUseError


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as a record holds it: JSON's types, nested dicts."""
  return json.loads(config.to_json_best_effort())


def record_path(sweep_dir: str, cell: Cell) -> str:
  """Where the cell's record goes: `records/<cell>.json` in the sweep's folder."""
  return os.path.join(sweep_dir, records_lib.FOLDER, f"{cell.name}.json")


def read_record(sweep_dir: str, cell: Cell) -> dict[str, Any] | None:
  """The cell's record, checked (`records.read`); None when it has none.

  Raises:
    FileFormatError: the file is not a record of this project (torn, nested too
      deep, a field of the wrong type or range); the message names the file and
      the field. The sweep then stops before it trains anything: the file is
      not the sweep's to overwrite, and moving it away lets the cell train again.
  """
  try:
    return records_lib.read(record_path(sweep_dir, cell))
  except FileNotFoundError:
    return None


def is_finished(sweep_dir: str, cell: Cell, config: ml_collections.ConfigDict) -> bool:
  """Whether the cell has a finished record of this config, but for `workdir.RESULT_NEUTRAL`.

  Log, checkpoint and profiling intervals don't count, nor does such a field
  that a record of an older version lacks. A finished record of another config
  (other epochs, other data) is not this sweep's result: the cell trains again,
  and its new record replaces that one, as the log says.

  Raises:
    FileFormatError: as `read_record`.
  """
  record = read_record(sweep_dir, cell)
  if not record or record["status"] != "done":
    return False
  changed = workdir_lib.changed_fields(record["config"], config, workdir_lib.RESULT_NEUTRAL)
  if changed:
    logging.info(
      "Cell %s: its record is of another config (%s%s); it trains again, and the new record "
      "replaces that one",
      cell.name,
      "; ".join(changed[:3]),
      f"; {len(changed) - 3} more" if len(changed) > 3 else "",
    )
  return not changed


def is_settled(sweep_dir: str, cell: Cell, config: ml_collections.ConfigDict) -> bool:
  """Whether the cell has a finished or pruned record of its config (see `is_finished`)."""
  record = read_record(sweep_dir, cell)
  if record is None or record["status"] not in ("done", "pruned"):
    return False
  return not workdir_lib.changed_fields(record["config"], config, workdir_lib.RESULT_NEUTRAL)


def write_record(sweep_dir: str, cell: Cell, config, workdir: str, result: Mapping[str, Any]):
  """Writes the cell's record of a run in `workdir` (`result`: its record fields); the record.

  A failure never replaces a finished record (its record is returned, not
  written); a finished record of this config that another worker wrote is kept,
  and returned.
  """
  record = {
    "cell": cell.name,
    "index": cell.index,
    "setting": cell.setting,
    "overrides": cell.overrides,
    "config": config_json(config),
    "workdir": os.path.relpath(workdir, sweep_dir),
    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    **result,
  }
  kept = read_record(sweep_dir, cell)
  if record["status"] != "done" and kept and kept["status"] == "done":
    # A finished result is never lost: a run of another config that fails (a refused resume,
    # say) leaves the finished record as it was.
    logging.warning(
      "Cell %s: its finished record is kept; this run's failure is not written", cell.name
    )
    return record
  if record["status"] == "done" and is_finished(sweep_dir, cell, config):
    # Another worker recorded this cell between its run's end and this one's start (pulling
    # workers): the run found itself finished, and the record on disk stays as it is.
    logging.info("Cell %s: already recorded by another worker; its record is kept", cell.name)
    return kept
  os.makedirs(os.path.join(sweep_dir, records_lib.FOLDER), exist_ok=True)
  if record["status"] == "done":  # its test predictions first: a record's are there with it
    _keep_predictions(workdir, record_path(sweep_dir, cell))
  files.atomic_write(record_path(sweep_dir, cell), json.dumps(record, indent=1) + "\n")
  return record


def _keep_predictions(workdir: str, record: str) -> None:
  """Copies the run's test predictions beside its record (`predictions.keep_beside_record`); a
  damaged file is named in a warning and not copied (the report then compares seeds only)."""
  try:
    predictions_lib.keep_beside_record(workdir, record)
  except FileFormatError as e:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(predictions_lib.beside_record(record))
    logging.warning("%s; the record is written without its test predictions", e)


def keep_missing_predictions(sweep_dir: str, cells: Sequence[Cell]) -> int:
  """Copies again, beside each finished record of `cells` that lacks them, the test predictions
  its run's folder still holds (a copy moved away or lost); returns how many were copied.

  A record whose run folder holds none is left as it is (the report compares its seeds only).

  Raises:
    FileFormatError: a record that is not one (`read_record`).
  """
  copied = 0
  for cell in cells:
    target = record_path(sweep_dir, cell)
    if os.path.lexists(predictions_lib.beside_record(target)):
      continue
    record = read_record(sweep_dir, cell)
    if not record or record["status"] != "done":
      continue
    folder = os.path.normpath(os.path.join(sweep_dir, record["workdir"]))
    if os.path.isfile(predictions_lib.path(folder)):
      _keep_predictions(folder, target)
      copied += os.path.exists(predictions_lib.beside_record(target))
  if copied:
    logging.info("Copied the test predictions of %d finished cell(s) beside their records", copied)
  return copied


def _result_fields(result: Mapping[str, Any]) -> dict[str, Any]:
  """A run's result as a record's fields: every metric it reports, its size and its cost.

  The run's FLOP count is `flops_per_example`; `vmap_group_size` is 1 for a cell trained alone.
  """
  fields = {k: v for k, v in result.items() if k not in ("kind", "step")}
  fields["flops_per_example"] = fields.pop("train_flops_per_example", None)
  return {"status": "done", "vmap_group_size": 1} | fields


def _failure(error: BaseException, status: str = "failed") -> dict[str, Any]:
  return {
    "status": status,
    "error": f"{type(error).__name__}: {error}",
    "traceback": "".join(traceback.format_exception(error)),
  }


# The field whose values `--vmap_rates` trains together, with the seeds (`seeds.train_group`).
RATE_FIELD = "optimizer.learning_rate"


def _rate_key(cell: Cell) -> str:
  """The cell's setting without its seed and learning rate: the cells a rate group holds."""
  return cell_name({k: v for k, v in cell.overrides.items() if k not in ("seed", RATE_FIELD)})


def group_cells(
  cells: Sequence[Cell], vmap_seeds: bool, vmap_rates: bool = False
) -> list[list[Cell]]:
  """Cells to train together: one each, every seed of a setting with `vmap_seeds`, or with
  `vmap_rates` every seed and learning rate of a setting (one vmapped program)."""
  if not (vmap_seeds or vmap_rates):
    return [[c] for c in cells]
  key = _rate_key if vmap_rates else (lambda cell: cell.setting)
  groups: dict[str, list[Cell]] = {}
  for cell in cells:
    groups.setdefault(key(cell), []).append(cell)
  return list(groups.values())


def _train_recorded(
  what: str, size: int, train_members: Callable[[], list[dict[str, Any]]]
) -> list[dict[str, Any]] | None:
  """Each cell's record fields from `train_members()`, a cell or a group of `size` seeds.

  A cell that fails or diverges is recorded as such (a group's seeds each as
  they ended, `train.SeedsDivergedError`), and the sweep goes on;
  None when another process holds the workdir (the records are its to write).
  A signal's `RunInterrupted` stops the sweep, after the run saved its checkpoint.
  """
  try:
    results = [_result_fields(r) | {"vmap_group_size": size} for r in train_members()]
  except RunInterrupted:
    raise
  except WorkdirInUseError as e:
    logging.warning("Skipping %s: %s", what[0].lower() + what[1:], e)
    return None
  except DivergedError as e:
    logging.error("%s diverged: %s", what, e)
    each = e.results if isinstance(e, train.SeedsDivergedError) else [e] * size  # seed by seed
    return [
      _failure(r, "diverged")
      if isinstance(r, DivergedError)
      else _result_fields(r) | {"vmap_group_size": size}
      for r in each
    ]
  except Exception as e:
    logging.error("%s failed: %s: %s", what, type(e).__name__, e)
    return [_failure(e)] * size
  return results


def _train_cell(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  return [train.train_and_evaluate(config, workdir)]


def group_workdir(
  sweep_dir: str, group: Sequence[Cell], whole: Sequence[Cell] | None = None
) -> str:
  """Where a group trains: `cells/<cell>/` for a cell alone, `groups/<setting>/` for its seeds.

  A group of several learning rates trains in `groups/<setting without rate and
  seed>,optimizer.learning_rate=<r1>+<r2>.../`: each set of rates has a folder.
  A group of several cells that is part of `whole` (the group `group_cells`
  made; the cells still to train when the others are finished) trains in that
  folder's name with `,seed=<s1>+<s2>...` and, where its cells are not every
  rate with every seed, `,cells=<digest of their names>`: a folder of its own,
  the same on every rerun, so it resumes, and never the whole group's, whose
  checkpoints are of other members.
  """
  if len(group) == 1:
    return os.path.join(sweep_dir, "cells", group[0].name)
  if _is_rate_group(group):
    rates = dict.fromkeys(display.setting_value(c.overrides[RATE_FIELD], ("_",)) for c in group)
    key = {k: v for k, v in group[0].overrides.items() if k not in ("seed", RATE_FIELD)}
    name = cell_name(key | {RATE_FIELD: "+".join(rates)})
  else:
    name = group[0].setting
  if whole is not None and {c.name for c in group} != {c.name for c in whole}:
    numbers = sorted({c.overrides.get("seed") for c in group}, key=lambda s: (s is None, s))
    seeds = [display.setting_value(s, ("_",)) for s in numbers]
    name += ",seed=" + "+".join(seeds)
    if len(group) != len(seeds) * len({c.setting for c in group}):  # not a grid of rates x seeds
      digest = hashlib.sha256("\n".join(sorted(c.name for c in group)).encode()).hexdigest()
      name += f",cells={digest[:8]}"
  return os.path.join(sweep_dir, "groups", name)


def _is_rate_group(group: Sequence[Cell]) -> bool:
  """Whether the group's cells differ in more than their seed (in their rate: `group_cells`)."""
  return len({c.setting for c in group}) > 1


def train_group(
  sweep_dir: str,
  group: Sequence[Cell],
  configs: Mapping[str, ml_collections.ConfigDict],
  whole: Sequence[Cell] | None = None,
) -> tuple[list[dict[str, Any]] | None, list[str]]:
  """Trains a group (see `_train_recorded`): each cell's record fields, and each cell's folder.

  `whole`: the group `group` is part of, where only some of its cells train (`group_workdir`).
  """
  workdir = group_workdir(sweep_dir, group, whole)
  if len(group) == 1:
    what = f"Cell {group[0].name}"
    workdirs = [workdir]
    train_members = functools.partial(_train_cell, configs[group[0].name], workdir)
  elif _is_rate_group(group):
    what = f"Group {os.path.basename(workdir)}"
    workdirs = [os.path.join(workdir, c.name) for c in group]
    members = [(c.name, configs[c.name]) for c in group]
    train_members = functools.partial(
      seeds_lib.train_group, configs[group[0].name], members, workdir
    )
  else:
    what = f"Group {group[0].setting}"
    seeds = [configs[c.name].seed for c in group]
    workdirs = [checkpoints.seed_dir(workdir, s) for s in seeds]
    train_members = functools.partial(seeds_lib.train_seeds, configs[group[0].name], seeds, workdir)
  return _train_recorded(what, len(group), train_members), workdirs


def stop_if_signalled() -> None:
  """Stops the sweep after a run that a stop signal reached as it ended (`preemption`).

  Such a run finished, and its records are written before this is asked; without it the
  sweep would go on to the next run, the signal lost.

  Raises:
    RunInterrupted: a stop signal came during the last run, which finished anyway.
  """
  if signum := preemption.unheeded_stop():
    raise RunInterrupted(
      f"{signal.Signals(signum).name} as a run ended: its records are written, and the sweep "
      "stops here; run the same command again to go on",
      signum,
    )


def log_end(who: str, written: Sequence[Mapping[str, Any]], start: float) -> None:
  """Logs how a run of cells ended: its time since `start` (`time.perf_counter()`), its counts."""
  failed = [r["cell"] for r in written if r["status"] not in ("done", "pruned")]
  pruned = sum(r["status"] == "pruned" for r in written)
  logging.info(
    "%s done in %s: %d cells run%s, %d failed%s",
    who,
    display.duration(time.perf_counter() - start),
    len(written),
    f" ({pruned} pruned)" if pruned else "",
    len(failed),
    f" ({', '.join(failed)})" if failed else "",
  )
