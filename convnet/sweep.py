r"""Runs a sweep: one training run per cell, each in a workdir of its own, one record per cell.

  python -m convnet.sweep --sweep=configs/sweeps/kernel_size.py --workdir=DIR \
      [--sweep.data.source=embedded] [--shard=0/4 [--pull]] [--vmap_seeds]
  python -m convnet.report DIR

A sweep file (see `configs/sweeps/`) has `get_config()`, the base config, and
`sweep()`, which yields override dicts such as
`{"model.conv.kernel_size": 5, "seed": 2}`: one cell each. `--sweep.FIELD=V`
changes the base config for every cell, as `--config.FIELD=V` does for
`convnet.main`.

The sweep directory gets `cells/<cell>/`, the workdir of each cell's run, and
`records/<cell>.json`, written atomically once the cell ends: its overrides and
full config, parameter count, XLA's FLOPs per training example, best
validation accuracy and the test accuracy there, wall time and examples/s, or
the error that stopped it. Running the command again skips the cells whose
record matches their config, resumes an interrupted cell from its checkpoint,
and retries failed ones. Every record is read through `convnet.records`: one
that is not a record of this project (torn, a field of the wrong type or
range, another cell's) stops the sweep before anything trains, naming the file
and the field, and is never overwritten; moved away, its cell trains again.
`--shard=i/n` runs cells i, i+n, i+2n, ...: n processes with the same sweep
and workdir, on one machine or many sharing a filesystem, run every cell once
between them. With `--pull` as well, a shard pulls work instead: before each
cell it reads the records again and takes the next cell, from cell i on, that
is neither finished nor held by another process's lock, so n workers stay busy
until the sweep ends however uneven its cells are; the last to find nothing
left writes the report (`convnet.launch` starts such workers as jobs). With
`--vmap_seeds`, cells that differ only by seed train
together in one `jax.vmap` program, in `groups/<setting>/`; `sweep.json`
records which way a directory's seeds train, and a run the other way on it is
refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import re
import signal
import sys
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from convnet import (
  cli,
  config_checks,
  display,
  files,
  input_pipeline,
  preemption,
  sweep_halving,
  sweep_records,
)
from convnet import halving as halving_lib
from convnet import records as records_lib
from convnet import workdir as workdir_lib
from convnet.analysis import LEARNING_RATE
from convnet.cells import (  # noqa: F401 (sweep files import these names from here)
  Cell,
  Overrides,
  apply_overrides,
  axis,
  cell_name,
  expand,
  product,
  zipped,
)
from convnet.errors import (
  ConfigError,
  ConvnetError,
  RunInterrupted,
  WorkdirInUseError,
)
from convnet.sweep_mode import check_mode, halving_mode


def load_sweep_module(path: str) -> types.ModuleType:
  """A sweep file as a module, with its `get_config` and `sweep` functions."""
  if not os.path.isfile(path):
    raise ConfigError(f"sweep file {path} does not exist")
  name = "_sweep_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for function in ("get_config", "sweep"):
    if not callable(getattr(module, function, None)):
      raise ConfigError(f"sweep file {path} has no {function}() function")
  return module


def parse_shard(text: str) -> tuple[int, int]:
  """'i/n' as (i, n), with 0 <= i < n."""
  match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
  if not match or not int(match[1]) < int(match[2]):
    raise ConfigError(f"--shard={text!r} must be i/n with 0 <= i < n, e.g. 0/4")
  return int(match[1]), int(match[2])


# ----------------------------------------------------------------------------
# Running


def prepare(
  base: ml_collections.ConfigDict,
  cells: Sequence[Cell],
  sweep_dir: str,
  vmap_seeds: bool = False,
  vmap_rates: bool = False,
  halving: halving_lib.Halving | None = None,
  halving_from_command: bool = False,
) -> dict[str, ml_collections.ConfigDict]:
  """Every check a sweep makes before anything trains; each cell's config, by cell name.

  The cells' configs and data (`cell_configs`), the halving's arms and budgets, the folder's
  way of training (`check_mode`), the files under `records/` (`check_records`) and
  `halving/` (`halving.check_folder`), and no cell added to an arm halved before
  (`sweep_halving.check_no_added_cells`). `convnet.launch` makes them before any job starts.

  Raises:
    ConfigError, DataError, FileFormatError: the first check that fails, in one line.
  """
  configs = cell_configs(base, cells)
  if halving is not None:  # the arms and budgets checked before anything is written
    halving_lib.arms(cells, halving.field)
    for cell in cells:
      halving.check_budget(configs[cell.name].num_epochs)
  files.make_dir(sweep_dir)
  mode = halving_mode(halving, cells, halving_from_command) if halving is not None else False
  check_mode(sweep_dir, vmap_seeds, vmap_rates, mode)
  files.remove_stale_files(os.path.join(sweep_dir, records_lib.FOLDER))
  check_records(sweep_dir)
  if halving is not None:
    halving_lib.check_folder(os.path.join(sweep_dir, halving_lib.FOLDER))
    sweep_halving.check_no_added_cells(sweep_dir, cells, configs, halving)
  return configs


def run_sweep(
  base: ml_collections.ConfigDict,
  cells: Sequence[Cell],
  sweep_dir: str,
  shard: tuple[int, int] = (0, 1),
  vmap_seeds: bool = False,
  pull: bool = False,
  vmap_rates: bool = False,
  halving: halving_lib.Halving | None = None,
  halving_from_command: bool = False,
) -> list[dict[str, Any]]:
  """Runs this shard's unfinished cells; returns the records it wrote.

  Every cell's config is built (and a bad override rejected) before the first
  one trains. A cell that raises is recorded as failed, and the sweep goes on.
  `shard=(i, n)` runs groups i, i+n, i+2n, ... of the sweep (a group is a cell,
  or a setting's seeds with `vmap_seeds`, or its seeds and learning rates with
  `vmap_rates`); with `pull`, any group instead, taken one at a time as
  `pull_groups` says, from group i on. With `halving`, the sweep's arms are
  halved instead (`sweep_halving.run_halving`), an arm at a time; `halving_from_command`:
  it came from --learning_rates and --halving_rungs (what a refusal then tells to give).

  Before anything trains, every file under `records/` must be a record
  (`records.read`), and with `halving` every file under `halving/` a decisions
  file of its arm (`halving.check_folder`), and no arm halved before may have
  gained cells (`sweep_halving.check_no_added_cells`).

  Raises:
    ConfigError: a bad cell config, a folder run another way (`check_mode`), cells added to
      a halved arm.
    FileFormatError: a file under `records/` or `halving/` that is not one.
  """
  configs = prepare(base, cells, sweep_dir, vmap_seeds, vmap_rates, halving, halving_from_command)
  if halving is not None:
    return sweep_halving.run_halving(
      cells, configs, sweep_dir, halving, shard, vmap_seeds, vmap_rates, pull
    )
  index, count = shard
  groups = sweep_records.group_cells(cells, vmap_seeds, vmap_rates)
  if pull:
    return pull_groups(sweep_dir, groups, configs, shard)
  groups = groups[index::count]
  # A group trains only its cells without a finished record: a seed or rate added to a finished
  # sweep trains alone, and a finished cell is not trained again beside it.
  # Such a part of a group trains in a folder of its own (`sweep_records.group_workdir`).
  unfinished = [
    ([c for c in g if not sweep_records.is_finished(sweep_dir, c, configs[c.name])], g)
    for g in groups
  ]
  todo = [g for g, _ in unfinished if g]
  wholes = [whole for g, whole in unfinished if g]
  num_cells = sum(len(g) for g in groups)
  left = {c.name for g in todo for c in g}
  sweep_records.keep_missing_predictions(
    sweep_dir, [c for g in groups for c in g if c.name not in left]
  )
  logging.info(
    "Sweep shard %d/%d: %d of %d cells, %d left",
    index,
    count,
    num_cells,
    len(cells),
    sum(len(g) for g in todo),
  )
  written, start = [], time.perf_counter()
  for i, group in enumerate(todo):
    if i:
      eta = (time.perf_counter() - start) / i * (len(todo) - i)
      eta_text = display.duration(eta)
    else:
      eta_text = "after the first cell"
    logging.info(
      "Run %d/%d of this shard: %s (%d cells finished before, ETA %s)",
      i + 1,
      len(todo),
      ", ".join(c.name for c in group),
      num_cells - sum(len(g) for g in todo),
      eta_text,
    )
    written += _run_group(sweep_dir, group, configs, wholes[i]) or []
    sweep_records.stop_if_signalled()
  sweep_records.log_end(f"Sweep shard {index}/{count}", written, start)
  return written


def check_records(sweep_dir: str) -> None:
  """Reads every `records/*.json` of the sweep (`records.read`), before anything trains.

  Records of cells no longer in the sweep are fine (a setting dropped from it).

  Raises:
    FileFormatError: a file there that is not a record of this project, naming it.
  """
  folder = os.path.join(sweep_dir, records_lib.FOLDER)
  names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
  for name in names:
    if name.endswith(".json") and not name.startswith("."):
      records_lib.read(os.path.join(folder, name))


def cell_configs(
  base: ml_collections.ConfigDict, cells: Sequence[Cell]
) -> dict[str, ml_collections.ConfigDict]:
  """Each cell's config, by cell name, each checked (`config_checks.validate`), and each
  distinct data config's input shape read (`input_pipeline.input_spec`, which reads no data).

  Raises:
    ConfigError: an override names no field or gives a wrong type, or a config cannot work.
    DataError: a cell's data cannot be read (files missing, a source's field out of range);
      before anything trains or is written.
  """
  configs = {cell.name: apply_overrides(base, cell.overrides) for cell in cells}
  data_checked = set()
  for cell in cells:
    config_checks.validate(configs[cell.name])
    data = configs[cell.name].data
    if (key := data.to_json_best_effort(sort_keys=True)) not in data_checked:
      data_checked.add(key)
      input_pipeline.input_spec(data)
  return configs


def _run_group(
  sweep_dir: str,
  group: Sequence[Cell],
  configs: Mapping[str, ml_collections.ConfigDict],
  whole: Sequence[Cell] | None = None,
) -> list[dict[str, Any]] | None:
  """Trains a group (part of `whole`: `sweep_records.group_workdir`) and writes its cells'
  records; None when another process holds its workdir."""
  results, workdirs = sweep_records.train_group(sweep_dir, group, configs, whole)
  if results is None:
    return None
  return [
    sweep_records.write_record(sweep_dir, cell, configs[cell.name], cell_dir, result)
    for cell, cell_dir, result in zip(group, workdirs, results, strict=True)
  ]


def pull_groups(
  sweep_dir: str,
  groups: Sequence[Sequence[Cell]],
  configs: Mapping[str, ml_collections.ConfigDict],
  shard: tuple[int, int] = (0, 1),
) -> list[dict[str, Any]]:
  """Trains groups one at a time, each the next free one, until none is; the records it wrote.

  Before each group the worker reads every record again and takes the first
  group, from group `shard[0]` on and round the list, that it has not tried
  yet, that has a cell still unsettled, and whose workdir no live process
  holds (`workdir.is_locked`). A cell is settled when it had a finished record
  of its config as the worker started, or when its record changed since (any
  worker's, a failure included: a cell that fails is tried once, not by every
  worker in turn). Workers that share `sweep_dir` so take every group between
  them, and each stays busy while a free one is left, however long the others
  take. The worker ends when every unsettled group is held by another: one
  whose holder dies (the system lets go of its lock) is taken by the next
  worker to look, and resumes from its checkpoint.
  """
  index, count = shard
  cells = [c for g in groups for c in g]
  at_start = {c.name: sweep_records.read_record(sweep_dir, c) for c in cells}
  finished = {c.name for c in cells if sweep_records.is_finished(sweep_dir, c, configs[c.name])}
  order = [*groups[index % len(groups) :], *groups[: index % len(groups)]]
  tried: set[str] = set()
  written, start = [], time.perf_counter()
  logging.info(
    "Sweep worker %d/%d pulls from %d cells in %d runs; %d finished before",
    index,
    count,
    len(cells),
    len(groups),
    len(finished),
  )
  while True:
    settled = finished | {
      c.name for c in cells if sweep_records.read_record(sweep_dir, c) != at_start[c.name]
    }
    open_groups = [
      g for g in order if g[0].name not in tried and any(c.name not in settled for c in g)
    ]
    held = {g[0].name for g in open_groups if _is_held(sweep_dir, g)}
    free = [g for g in open_groups if g[0].name not in held]
    if not free:
      break
    group = free[0]
    logging.info(
      "Worker %d/%d takes %s (%d of %d cells settled; %d runs left, %d of them held by others)",
      index,
      count,
      ", ".join(c.name for c in group),
      len(settled),
      len(cells),
      len(open_groups),
      len(held),
    )
    tried.add(group[0].name)
    try:
      # Held from before its run starts until its records are written: no other worker can take
      # the group between its run's end (its workdir's lock let go) and its records.
      with workdir_lib.lock(_pull_dir(sweep_dir, group)):
        # The group's cells still unsettled train, the others not again (as without --pull).
        todo = [
          c
          for c in group
          if c.name not in finished and sweep_records.read_record(sweep_dir, c) == at_start[c.name]
        ]
        if not todo:
          continue  # recorded by another worker since this one looked
        written += _run_group(sweep_dir, todo, configs, group) or []
      sweep_records.stop_if_signalled()
    except WorkdirInUseError:
      continue  # another worker took it first
  sweep_records.log_end(f"Sweep worker {index}/{count}", written, start)
  return written


def _pull_dir(sweep_dir: str, group: Sequence[Cell]) -> str:
  """The folder whose lock a pulling worker holds while a group is its own: `.pull/<group>/`."""
  kind, name = os.path.split(
    os.path.relpath(sweep_records.group_workdir(sweep_dir, group), sweep_dir)
  )
  return files.make_dir(os.path.join(sweep_dir, ".pull", kind, name), "a pulling worker's lock")


def _is_held(sweep_dir: str, group: Sequence[Cell]) -> bool:
  """Whether a live process trains the group, or a pulling worker holds it."""
  return workdir_lib.is_locked(
    sweep_records.group_workdir(sweep_dir, group)
  ) or workdir_lib.is_locked(_pull_dir(sweep_dir, group))


def group_wall_time_s(sweep_dir: str) -> float:
  """The seconds the sweep's runs have trained, each group once: the sum of every group's wall time.

  A group's (or a cell's) wall time is the `wall_time_s` of its last epoch
  record, which a resumed run carries on; a vmapped group's members share
  theirs, so it counts once. Every folder under `cells/` and `groups/` counts,
  the rungs of pruned rates included: the compute the sweep spent, as its
  log's last line says.
  """

  def last_wall_time(folder: str) -> float:
    records = [r for r in workdir_lib.read_metrics(folder) if r["kind"] == "epoch"]
    return float(records[-1].get("wall_time_s", 0.0)) if records else 0.0

  total = 0.0
  for kind in ("cells", "groups"):
    root = os.path.join(sweep_dir, kind)
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
      folder = os.path.join(root, name)
      members = [os.path.join(folder, m) for m in sorted(os.listdir(folder))]
      members = [m for m in members if os.path.isfile(os.path.join(m, workdir_lib.METRICS_FILE))]
      total += max((last_wall_time(m) for m in members), default=last_wall_time(folder))
  return total


REPORT_STAMP = ".reported"  # the digest of the records that the sweep's report was made from


def write_report_when_complete(
  sweep_dir: str, cells: Sequence[Cell], configs: Mapping[str, ml_collections.ConfigDict]
) -> str | None:
  """Writes the sweep's report if every cell has its last record; its path if this call wrote it.

  A cell's record is its last when it is finished with its config, or failed
  or stopped for good (any other status). For the workers of a sweep that end
  one after another: each calls this when it finds no work left. Under a lock,
  the first that sees every cell recorded writes `convnet.report`'s files in
  `sweep_dir`, and `REPORT_STAMP`, the digest of the records it read; the
  others find the report made from the same records (`current_report`), and
  return None. Records that change later (a cell trained again) make the next
  call write it again.

  Raises:
    DataError, FileFormatError: the records cannot make a report (as
      `python -m convnet.report` says).
  """
  for cell in cells:
    record = sweep_records.read_record(sweep_dir, cell)
    if record is None or (
      record["status"] == "done"
      and not sweep_records.is_finished(sweep_dir, cell, configs[cell.name])
    ):
      return None
  from convnet import analysis, report  # plots: imported when a report is due

  with files.open_append(os.path.join(sweep_dir, ".report.lock"), readable=True) as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # the next worker waits, then finds it written
    if current_report(sweep_dir):
      return None
    digest = _records_digest(sweep_dir)
    records = analysis.load_records(sweep_dir)
    written = report.write_report(
      records, sweep_dir, report.describe(records, sweep_dir), sweep_dir=sweep_dir
    )
    files.atomic_write(os.path.join(sweep_dir, REPORT_STAMP), digest + "\n")
  logging.info("Wrote the sweep's report: %s", ", ".join(written))
  return written[0]


def current_report(sweep_dir: str) -> str | None:
  """The path of the report that `write_report_when_complete` made from the records as they are."""
  path, stamp = os.path.join(sweep_dir, "report.md"), os.path.join(sweep_dir, REPORT_STAMP)
  if not (os.path.isfile(path) and os.path.isfile(stamp)):
    return None
  with open(stamp) as f:
    return path if f.read().strip() == _records_digest(sweep_dir) else None


def _records_digest(sweep_dir: str) -> str:
  """SHA-256 of the records folder: each record's name and bytes, in name order."""
  folder = os.path.join(sweep_dir, records_lib.FOLDER)
  digest = hashlib.sha256()
  for name in sorted(n for n in os.listdir(folder) if n.endswith(".json")):
    with open(os.path.join(folder, name), "rb") as f:
      digest.update(name.encode() + b"\0" + f.read() + b"\0")
  return digest.hexdigest()


# ----------------------------------------------------------------------------
# Command line

FLAGS = flags.FLAGS


# What a sweep is and where it goes: flags of this command and of `convnet.launch`.
SWEEP_FLAGS = (
  (
    "config_file",
    "sweep",
    None,
    "A sweep file, or an installed sweep's name (python -m convnet.configs lists them); "
    "--sweep.x=y changes every cell's config.",
  ),
  ("string", "workdir", None, "The sweep's directory: cell workdirs and records."),
  ("bool", "vmap_seeds", False, "Train the seeds of each setting in one vmapped program."),
  (
    "bool",
    "vmap_rates",
    False,
    "Train the seeds and learning rates of each setting in one vmapped program.",
  ),
  (
    "bool",
    "halving",
    True,
    "Halve the sweep's arms as its halving() says, where it has one (--nohalving: train every "
    "cell to the whole budget).",
  ),
  (
    "list",
    "learning_rates",
    None,
    "Cross every cell of the sweep with these learning rates, e.g. 0.001,0.003,0.01: each "
    "setting becomes an arm whose rate the report chooses on validation accuracy.",
  ),
  (
    "list",
    "halving_rungs",
    None,
    "With --learning_rates: halve each arm over its rates at these epochs, e.g. 2,6,30 (the "
    "last is num_epochs).",
  ),
  ("integer", "halving_eta", 2, "With --halving_rungs: each rung keeps the best 1/eta rates."),
)


def read_sweep(
  path: str,
  halving: bool = True,
  learning_rates: Sequence[str] | None = None,
  halving_rungs: Sequence[str] | None = None,
  halving_eta: int | None = None,
) -> tuple[list[Cell], halving_lib.Halving | None]:
  """A sweep file's cells and successive halving, with the command's rates and rungs.

  `learning_rates` (the flag's strings) crosses every cell with those rates,
  each before the cell's seed, in the order settings, rates, seeds;
  `halving_rungs` halves each arm over them, as a sweep file's `halving()`
  would, keeping the best 1/`halving_eta` at each rung (None: not given, 2); `halving`
  False leaves out any halving.

  Raises:
    ConfigError: a rate or rung that is not a number, an empty flag, a rate given twice, rungs
      without rates or with one rate or with `halving` False (--nohalving), rates for a sweep
      whose cells set the rate already, rungs for a sweep file with a `halving()` of its own,
      and the sweep file's own errors.
  """
  module = load_sweep_module(path)
  cells = expand(module.sweep)
  own = sweep_halving.from_sweep_file(module)
  for flag, given, example in (
    ("--learning_rates", learning_rates, "0.001,0.003,0.01"),
    ("--halving_rungs", halving_rungs, "2,6,30"),
  ):
    if given is not None and not given:
      raise ConfigError(f"{flag} is empty: give its values, e.g. {flag}={example}, or leave it out")
  if halving_rungs and not halving:
    raise ConfigError(
      "--halving_rungs and --nohalving contradict each other (one halves the rates, the other "
      "trains every cell the whole budget): leave one of them out"
    )
  if halving_rungs and not learning_rates:
    raise ConfigError("--halving_rungs halves over --learning_rates: give those too")
  if halving_eta is not None and not halving_rungs:
    raise ConfigError(
      f"--halving_eta={halving_eta} sets how --halving_rungs halve: give the rungs too, or leave "
      "it out"
    )
  halving_eta = 2 if halving_eta is None else halving_eta
  if not learning_rates:
    return cells, own if halving else None
  rates = [_number(text, "--learning_rates", float) for text in learning_rates]
  for i, rate in enumerate(rates):
    if rate in rates[:i]:
      first = learning_rates[rates.index(rate)]
      twice = f"'{first}' and '{learning_rates[i]}'" if first != learning_rates[i] else ""
      raise ConfigError(
        f"--learning_rates: {rate} is given twice{f' (as {twice})' if twice else ''}; give each "
        "rate once"
      )
  if halving_rungs and len(rates) < 2:
    raise ConfigError(
      f"--halving_rungs: --learning_rates gives one rate ({rates[0]}), and halving chooses "
      "among two or more: give more rates, or leave --halving_rungs out"
    )
  if any(LEARNING_RATE in cell.overrides for cell in cells):
    raise ConfigError(
      f"--learning_rates: the sweep's cells set {LEARNING_RATE} already; leave the flag out, "
      "or sweep a file whose cells do not"
    )
  by_setting: dict[str, list[Cell]] = {}
  for cell in cells:
    by_setting.setdefault(cell.setting, []).append(cell)
  crossed = []
  for same_setting in by_setting.values():  # settings, then rates, then seeds
    for rate in rates:
      for cell in same_setting:
        plain = {k: v for k, v in cell.overrides.items() if k != "seed"}
        seed = {"seed": cell.overrides["seed"]} if "seed" in cell.overrides else {}
        crossed.append(plain | {LEARNING_RATE: rate} | seed)
  cells = expand(lambda: crossed)
  if not halving_rungs:
    return cells, own if halving else None
  if own is not None:
    raise ConfigError(
      "--halving_rungs: the sweep file halves its arms itself (its halving()); leave the flag out"
    )
  rungs = tuple(_number(text, "--halving_rungs", int) for text in halving_rungs)
  return cells, halving_lib.Halving(LEARNING_RATE, rungs, halving_eta) if halving else None


def given_eta(flag_values: flags.FlagValues = FLAGS) -> int | None:
  """`--halving_eta`'s value where the command gives it, else None (for `read_sweep`)."""
  flag = flag_values["halving_eta"]
  return flag.value if flag.present else None


def _number(text: str, flag: str, kind: type) -> float | int:
  try:
    value = kind(text)
  except ValueError:
    raise ConfigError(
      f"{flag}: {text!r} is not a {'whole ' if kind is int else ''}number"
    ) from None
  if not value > 0:
    raise ConfigError(f"{flag}: {text!r} must be above 0")
  return value


def overridden_by_every_cell(overrides: Mapping[str, Any], cells: Sequence[Cell]) -> list[str]:
  """The `--sweep.FIELD=V` overrides (`overrides`: {dotted field: value}) that every cell sets
  again, so that the value given is never used; each as `--sweep.FIELD=V`, in the given order.

  A cell sets a field when its overrides name it or a field above it (`data` covers
  `data.num_validation`).
  """

  def sets(cell: Cell, field: str) -> bool:
    return any(field == key or field.startswith(key + ".") for key in cell.overrides)

  return [
    f"--sweep.{field}={value}"
    for field, value in overrides.items()
    if cells and all(sets(cell, field) for cell in cells)
  ]


def warn_unused_overrides(overrides: Mapping[str, Any], cells: Sequence[Cell]) -> None:
  """Logs a warning for each `--sweep.FIELD=V` that every cell overrides (see
  `overridden_by_every_cell`)."""
  for flag in overridden_by_every_cell(overrides, cells):
    field = flag.split("=", 1)[0].removeprefix("--sweep.")
    logging.warning(
      "%s is not used: every cell of the sweep sets %s itself (its sweep file, or "
      "--learning_rates); change those, or leave the flag out",
      flag,
      field,
    )


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """The command's flags; defined only when it runs, since sweep files import this module."""
  cli.define(
    flag_values,
    (
      *SWEEP_FLAGS,
      ("string", "shard", "0/1", "i/n: run cells i, i+n, i+2n, ... of the sweep."),
      (
        "bool",
        "pull",
        False,
        "With --shard=i/n: before each cell, take the next one from cell i on that is neither "
        "finished nor held by another worker, until none is left; the last worker writes the "
        "report.",
      ),
    ),
    required=("sweep", "workdir"),
  )
  flags.register_validator(
    "shard",
    _is_shard,
    "must be i/n with 0 <= i < n, e.g. 0/4",
    flag_values=flag_values,
  )


def _is_shard(text: str) -> bool:
  try:
    parse_shard(text)
  except ConfigError:
    return False
  return True


def main(argv):
  cli.start(argv)
  try:
    sweep_path = config_flags.get_config_filename(FLAGS["sweep"])
    with cli.errors_in_file(sweep_path, f"--sweep={sweep_path}"):
      cells, halving = read_sweep(
        sweep_path, FLAGS.halving, FLAGS.learning_rates, FLAGS.halving_rungs, given_eta()
      )
    warn_unused_overrides(config_flags.get_override_values(FLAGS["sweep"]), cells)
    records = run_sweep(
      FLAGS.sweep,
      cells,
      FLAGS.workdir,
      parse_shard(FLAGS.shard),
      FLAGS.vmap_seeds,
      FLAGS.pull,
      FLAGS.vmap_rates,
      halving,
      halving_from_command=bool(FLAGS.halving_rungs),
    )
    logging.info(
      "The sweep's runs have trained for %s in all (group wall time, each group once)",
      display.duration(group_wall_time_s(FLAGS.workdir)),
    )
    if FLAGS.pull:  # the last worker to end writes the report
      write_report_when_complete(FLAGS.workdir, cells, cell_configs(FLAGS.sweep, cells))
  except (RunInterrupted, preemption.StoppedAtOnce) as e:  # a stop signal, then a second one
    preemption.ignore_stop_signals()  # a later one would break off the exit with a traceback
    logging.warning("%s", e)
    sys.exit(128 + e.signum)
  except KeyboardInterrupt:  # Ctrl-C between runs, where no run holds the signal
    preemption.ignore_stop_signals()
    logging.warning(
      "SIGINT between runs: every finished run is recorded; run the same command again to go on"
    )
    sys.exit(128 + signal.SIGINT)
  except ConvnetError as e:
    sys.exit(f"error: {e}")
  if any(r["status"] not in ("done", "pruned") for r in records):
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
