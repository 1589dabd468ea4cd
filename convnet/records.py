"""Sweep records: what one holds, and the one reader that checks it before anything uses it.

`convnet.sweep` writes `DIR/records/<cell>.json` when a cell ends: `cell`,
`index` (its place in the sweep), `setting` (the cell's name without its
seed), `overrides` (the swept fields and the seed), the full `config`,
`status` (one of `STATUSES`), `workdir`, `finished_at`, and either the
result (`num_params`, `flops_per_example`, accuracies, losses, wall time,
examples/s, `vmap_group_size`) or the `error` that stopped the cell. A cell
that successive halving stopped early (`convnet.halving`) has status "pruned",
`pruned_at_epoch` (the rung it trained to, before the full budget) and
`best_validation_accuracy` up to there (null if it had none), and no test
field: test data took no part in pruning it.

A finished record may also say how its training went (`collapsed`: its
training loss stayed at chance; `still_improving`: its best validation epoch
was its last); reports count both per setting. `num_classes`, where a record
holds it, is the number of classes its data has.

A sweep folder may come from elsewhere (the docs invite copying one in), so
every reader of records reads them here: `read` checks one file, field by
field, and `read_folder` checks that a folder's records are of one sweep.
A record that fails stops the reader with one `FileFormatError` naming the
file, the field and what to do: move the file out of `records/`, and
`convnet.sweep` trains that cell again. Nothing here writes or moves a file.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from convnet import files
from convnet import workdir as workdir_lib
from convnet.errors import DataError, FileFormatError

FOLDER = "records"
STATUSES = ("done", "failed", "diverged", "pruned")
# A dotted config field, as a sweep's overrides name it: `model.conv.kernel_size`.
_FIELD = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_MISSING = object()


def remedy(folder: str) -> str:
  """What to do with a record that fails a check."""
  return f"move it out of {folder} (convnet.sweep then trains that cell again)"


# ----------------------------------------------------------------------------
# One record


def _number(value: Any) -> bool:
  """A finite int or float (not a bool), within a float's range."""
  if isinstance(value, bool) or not isinstance(value, int | float):
    return False
  try:
    return math.isfinite(float(value))
  except OverflowError:
    return False


def _float(value: Any) -> bool:
  """An int or float (not a bool) within a float's range; NaN and infinities too."""
  if isinstance(value, float):
    return True
  return _number(value)


def _finite_numbers(value: Any) -> bool:
  """Whether every number in `value` (a JSON value) is finite and within a float's range."""
  if isinstance(value, list):
    return all(_finite_numbers(v) for v in value)
  if isinstance(value, dict):
    return all(_finite_numbers(v) for v in value.values())
  if isinstance(value, int | float) and not isinstance(value, bool):
    return _number(value)
  return True


def _integer(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> bool:
  return isinstance(value, str) and bool(value)


# Each checked field: (test, what the field must be). A field absent from the record is not
# tested; `REQUIRED` and `REQUIRED_DONE` list the fields that must be there.
_RANGES = {
  "accuracy": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
  # A finished run's evaluation loss can overflow to NaN or infinity (one step at a huge
  # learning rate), and its record says so; a negative loss is never a cross-entropy.
  "loss": (lambda v: _float(v) and not v < 0, "a number >= 0"),
  "metric": (_float, "a number"),
  "count": (lambda v: _integer(v) and _number(v) and v >= 0, "a whole number >= 0"),
  "positive count": (lambda v: _integer(v) and _number(v) and v >= 1, "a whole number >= 1"),
  "size": (lambda v: _number(v) and v >= 0, "a finite number >= 0"),
  "number": (_number, "a finite number"),
  "rate": (lambda v: _number(v) and v > 0, "a finite number > 0"),
  "text": (_text, "a non-empty string"),
  "string": (lambda v: isinstance(v, str), "a string"),
}
_FIELDS = {
  "cell": "text",
  "index": "count",
  "setting": "text",
  "status": "text",
  "workdir": "string",
  "finished_at": "string",
  "error": "string",
  "traceback": "string",
  "vmap_group_size": "positive count",
  "num_params": "count",
  "wall_time_s": "size",
  "train_examples_per_sec": "size",
  "epoch": "size",
  "best_epoch": "size",
  "pruned_at_epoch": "positive count",
  "num_classes": "positive count",
}
# Fields of `config` (flattened) and of `overrides` that the report reads.
_CONFIG_FIELDS = {
  "seed": "count",
  "model.name": "text",
  "optimizer.learning_rate": "rate",
  "data.num_train": "count",
  "data.source": "string",
  "data.name": "string",
  "data.idx_dir": "string",
  "num_epochs": "positive count",
  "batch_size": "positive count",
  "steps_per_epoch": "count",
  "max_steps": "number",
}
_CONFIG_GROUPS = ("model", "optimizer", "data")
# Swept fields that the report reads from a record's config where its cell does not set them.
_SWEPT_FROM_CONFIG = ("optimizer.learning_rate",)
REQUIRED = ("cell", "index", "setting", "overrides", "config", "status")
# What a finished cell must hold beside `REQUIRED`: the report's test accuracy.
REQUIRED_DONE = ("test_accuracy_at_best_validation",)
# What a pruned cell must hold: where it stopped, and its best validation accuracy up to there.
REQUIRED_PRUNED = ("pruned_at_epoch", "best_validation_accuracy")
METRIC_PREFIXES = ("train_", "validation_", "test_", "best_")


def _kind(field: str) -> str | None:
  """Which `_RANGES` entry a result field is held to; None for a field the report never reads."""
  if field in _FIELDS:
    return _FIELDS[field]
  if field == "flops_per_example":
    return "size"
  if "accuracy" in field:
    return "accuracy"
  if "loss" in field:
    return "loss"
  if field.startswith(METRIC_PREFIXES):
    return "metric"
  return None


def _show(value: Any) -> str:
  text = json.dumps(value, default=str)
  return text if len(text) <= 60 else text[:57] + "..."


def check(record: Any, source: str, folder: str = FOLDER) -> dict[str, Any]:
  """`record` (a parsed JSON value) if it is a sweep record whose every field the code reads is
  of its type and range; see the module docstring for the fields.

  Accuracies must be numbers in [0, 1], losses finite and >= 0, counts whole
  numbers; `overrides` must map field names to values that agree with
  `config` where it holds them. A result field may be null only in a cell that
  did not finish (and `flops_per_example` always, where XLA gave no count).

  Raises:
    FileFormatError: one line naming `source`, the field, what it holds and
      what it should be, and what to do (`remedy(folder)`).
  """

  def fail(field: str, value: Any, expected: str) -> FileFormatError:
    found = "is missing" if value is _MISSING else f"is {_show(value)}, not {expected}"
    return FileFormatError(
      f"{source}: {field} {found}: it is not a sweep record of this project; {remedy(folder)}"
    )

  if not isinstance(record, dict):
    raise fail("the record", record, "an object ({...})")
  for field in REQUIRED:
    if field not in record:
      raise fail(field, _MISSING, "")
  status = record["status"]
  if status not in STATUSES:
    raise fail("status", status, "one of " + ", ".join(STATUSES))
  if status == "done":
    for field in REQUIRED_DONE:
      if field not in record:
        raise fail(field, _MISSING, "")
  if status == "pruned":
    for field in REQUIRED_PRUNED:
      if field not in record:
        raise fail(field, _MISSING, "")
    tested = next((f for f in record if f.startswith("test_")), None)
    if tested is not None:
      raise FileFormatError(
        f"{source}: status is pruned, and {tested} is there: a pruned cell's record holds no "
        f"test field (test data takes no part in pruning); {remedy(folder)}"
      )
    if not _RANGES["positive count"][0](record["pruned_at_epoch"]):
      raise fail("pruned_at_epoch", record["pruned_at_epoch"], _RANGES["positive count"][1])
  for field, value in record.items():
    kind = _kind(field)
    if kind is None or field in ("overrides", "config"):
      continue
    if value is None and (field == "flops_per_example" or status != "done"):
      continue
    test, expected = _RANGES[kind]
    if not test(value):
      raise fail(field, value, expected)

  config = record["config"]
  if not isinstance(config, dict):
    raise fail("config", config, "an object ({...})")
  for group in _CONFIG_GROUPS:
    if group in config and not isinstance(config[group], dict):
      raise fail(f"config.{group}", config[group], "an object ({...})")
  flat = workdir_lib.flatten(config)
  if "model.name" not in flat:
    raise fail("config.model.name", _MISSING, "")
  for field, kind in _CONFIG_FIELDS.items():
    if field in flat and not _RANGES[kind][0](flat[field]):
      raise fail(f"config.{field}", flat[field], _RANGES[kind][1])
  if (
    status == "pruned" and "num_epochs" in flat and record["pruned_at_epoch"] >= flat["num_epochs"]
  ):
    raise fail(
      "pruned_at_epoch",
      record["pruned_at_epoch"],
      f"a rung before the full budget (config.num_epochs={flat['num_epochs']})",
    )

  overrides = record["overrides"]
  if not isinstance(overrides, dict):
    raise fail("overrides", overrides, "an object of config fields ({field: value})")
  for field, value in overrides.items():
    if not _FIELD.fullmatch(field):
      raise fail(f"overrides[{field!r}]", value, "set by a config field's dotted name")
    if field in _CONFIG_FIELDS and not _RANGES[_CONFIG_FIELDS[field]][0](value):
      raise fail(f"overrides.{field}", value, _RANGES[_CONFIG_FIELDS[field]][1])
    if not _finite_numbers(value):
      raise fail(f"overrides.{field}", value, "a value whose numbers are finite")
    plain = json.loads(json.dumps(value))  # tuples as lists, as the config holds them
    if field in flat and flat[field] != plain:
      raise fail(
        f"overrides.{field}", value, f"config.{field} ({_show(flat[field])}), as in a record"
      )
  return record


def read(path: str) -> dict[str, Any]:
  """The checked record in the file `path` (see `check`); its name must be `<cell>.json`.

  Raises:
    FileNotFoundError: `path` is missing.
    FileFormatError: it is not a regular file, not JSON (nested too deep, say),
      or not a record of this project; one line naming the file and the field.
  """
  folder = os.path.dirname(path) or "."
  try:
    record = files.read_json(path)
  except FileFormatError as e:
    raise FileFormatError(f"{e}; {remedy(folder)}") from None
  except FileNotFoundError:
    raise
  except OSError as e:
    raise FileFormatError(f"{path} cannot be read ({files.reason(e)})") from None
  check(record, path, folder)
  if os.path.basename(path) != f"{record['cell']}.json":
    raise FileFormatError(
      f"{path}: cell is {_show(record['cell'])}, and a record's file is named after its cell "
      f"(a copy, or a record of another sweep?); {remedy(folder)}"
    )
  return record


# ----------------------------------------------------------------------------
# Run health: what a finished record says of how its training went

# A run whose final training loss is within this fraction of chance's, ln(num_classes), learned
# nothing: it collapsed, though it finished.
CHANCE_TOLERANCE = 0.02


def chance_loss(num_classes: int) -> float:
  """The cross-entropy of a uniform guess over `num_classes` classes: ln(num_classes), in nats."""
  return math.log(num_classes)


def collapsed(record: Mapping[str, Any], num_classes: int | None) -> bool:
  """Whether a finished run's training loss stayed at chance, or went above it.

  True when the record is "done" and its final `train_loss` is at least
  `chance_loss(num_classes)` less `CHANCE_TOLERANCE` (relative): at chance, or
  worse than guessing every class alike; False when it is below that, or when
  the record has no `train_loss` or `num_classes` is None (nothing to tell by).
  """
  loss = record.get("train_loss")
  if record["status"] != "done" or num_classes is None or num_classes < 2 or loss is None:
    return False
  chance = chance_loss(num_classes)
  return loss >= (1 - CHANCE_TOLERANCE) * chance


def still_improving(record: Mapping[str, Any]) -> bool | None:
  """Whether a finished run's best validation epoch was its last (`best_epoch == epoch`).

  Such a run had not stopped improving when its budget ran out. None when the
  record lacks either field (no validation split, or not finished).
  """
  if record["status"] != "done" or record.get("best_epoch") is None or record.get("epoch") is None:
    return None
  return record["best_epoch"] == record["epoch"]


# ----------------------------------------------------------------------------
# A folder of records: one sweep


def _overrides(record: Mapping[str, Any], field: str) -> bool:
  """Whether the record's cell sets `field`, or a group that holds it."""
  return any(field == k or field.startswith(k + ".") for k in record["overrides"])


def seed(record: Mapping[str, Any]) -> Any:
  """The record's seed: its override, else its config's (None if neither holds one)."""
  return record["overrides"].get("seed", record["config"].get("seed"))


def _names(paths: Sequence[str], most: int = 3) -> str:
  shown = ", ".join(paths[:most])
  return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def identity(record: Mapping[str, Any]) -> dict[str, Any]:
  """The record's sweep identity: its config (flattened) without the fields its cell sets, the
  seed, and the fields that never change a result (`workdir.RESULT_NEUTRAL`).

  A field that a record of an older version lacks reads as `workdir.ADDED_FIELDS` gives it.
  """
  flat = workdir_lib.ADDED_FIELDS | workdir_lib.flatten(record["config"])
  return {
    k: v
    for k, v in flat.items()
    if k != "seed" and k not in workdir_lib.RESULT_NEUTRAL and not _overrides(record, k)
  }


def check_one_sweep(records: Sequence[Mapping[str, Any]], folder: str = FOLDER) -> None:
  """Raises unless `records` (checked) are of one sweep, so that their seeds may be averaged.

  - Every record's identity (`identity`: the dataset, the epochs, everything
    but the seed and the fields its cell sets) agrees with the others'. Where
    records disagree, the larger side is the sweep (of equal sides, the side
    of the first record in sweep order), and the other side is named.
  - Records of one setting set the same fields to the same values.
  - No seed of a setting is recorded twice.

  Raises:
    DataError: one line naming the record files (`folder/<cell>.json`), the
      fields that differ, and what to do.
  """
  ordered = sorted(records, key=lambda r: (r["index"], r["cell"]))
  paths = [os.path.join(folder, f"{r['cell']}.json") for r in ordered]
  identities = [identity(r) for r in ordered]
  differing = []
  for field in sorted(set().union(*identities)):
    values = {json.dumps(i[field], sort_keys=True) for i in identities if field in i}
    if len(values) > 1:
      differing.append(field)
  if differing:
    sides: dict[str, list[int]] = {}
    for n, i in enumerate(identities):
      key = json.dumps([i.get(f) for f in differing], sort_keys=True)
      sides.setdefault(key, []).append(n)
    sweep = max(sides.values(), key=lambda side: (len(side), -side[0]))
    others = [n for n in range(len(ordered)) if n not in sweep]
    mine, theirs = identities[sweep[0]], identities[others[0]]
    fields = "; ".join(
      f"{f}: {_show(theirs.get(f, '<absent>'))} there, {_show(mine.get(f, '<absent>'))} in the "
      "others"
      for f in differing
      if theirs.get(f) != mine.get(f)
    ) or ", ".join(differing)
    raise DataError(
      f"{_names([paths[n] for n in others])} come from another sweep than the other "
      f"{len(sweep)} records of {folder} ({fields}), and seeds of different runs are never "
      "averaged: move them out of the folder, or report each sweep from a folder of its own"
    )
  for field in _SWEPT_FROM_CONFIG:
    if any(field in r["overrides"] for r in ordered):
      for path, record in zip(paths, ordered, strict=True):
        if field not in record["overrides"] and field not in workdir_lib.flatten(record["config"]):
          raise DataError(
            f"{path}: config.{field} is missing, and the other records sweep it: it is not a "
            f"record of this sweep; move it out of {folder}"
          )
  settings: dict[str, int] = {}
  seeds: dict[tuple[str, str], int] = {}
  for n, record in enumerate(ordered):
    swept = {k: v for k, v in record["overrides"].items() if k != "seed"}
    first = settings.setdefault(record["setting"], n)
    theirs = {k: v for k, v in ordered[first]["overrides"].items() if k != "seed"}
    if json.dumps(swept, sort_keys=True) != json.dumps(theirs, sort_keys=True):
      field = next(f for f in sorted(set(swept) | set(theirs)) if swept.get(f) != theirs.get(f))
      raise DataError(
        f"{paths[first]} and {paths[n]} are both of setting {record['setting']!r}, yet their "
        f"overrides differ in {field}: one was edited or copied in; "
        f"move it out of {folder} (convnet.sweep then trains that cell again)"
      )
    key = (record["setting"], json.dumps(seed(record)))
    other = seeds.setdefault(key, n)
    if other != n:
      raise DataError(
        f"{paths[other]} and {paths[n]} are both seed {seed(record)} of setting "
        f"{record['setting']!r}, which would count twice: move one out of {folder}"
      )


def read_folder(sweep_dir: str) -> list[dict[str, Any]]:
  """Every record of `sweep_dir/records`, checked, of one sweep, in sweep order (by `index`).

  A report stops at the first record that fails, naming it, rather than leave
  it out or list it apart: a table that silently lacks a cell, or averages one
  of another sweep, is worse than none.

  Raises:
    DataError: no records folder, no record in it, or records of more than one
      sweep (`check_one_sweep`).
    FileFormatError: a record that fails `read`.
  """
  folder = os.path.join(sweep_dir, FOLDER)
  if not os.path.isdir(folder):
    raise DataError(f"{folder} does not exist: is {sweep_dir} a sweep directory?")
  records = [read(path) for path in sorted(glob.glob(os.path.join(folder, "*.json")))]
  if not records:
    raise DataError(f"{folder} holds no records yet")
  check_one_sweep(records, folder)
  return sorted(records, key=lambda r: (r["index"], r["cell"]))
