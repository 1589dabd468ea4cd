"""Successive halving over one axis of a sweep: each arm trained to rungs, its worst values pruned.

An arm is the cells of a sweep that differ only in the halved field (the
learning rate, say) and the seed (`arms`). `Halving(field, rungs, eta)` walks
each arm through its rungs, epoch budgets that end at the full one: every
surviving value trains to the rung, and at each rung but the last the best
ceil(n/eta) of the n survivors are kept, by the mean over seeds of each run's
best validation accuracy in epochs 1..rung (`choose`); the others stop there
(pruned). The survivors of the last rung train the full budget.

Test data never takes part: `choose` receives validation accuracies alone, and
the callback that trains (`TrainRung`) hands back nothing else. Ties go to the
value earlier in the sweep. A seed that diverged (a NaN validation accuracy at
or before the rung) scores -inf, so its value ranks below every value whose
seeds all kept finite accuracies, as the report's tuning sets aside a rate
with a diverged seed; a curve shorter than the rung (a run that stopped early)
counts its best so far.

`run` is the driver. The decisions are recomputed from the callback's curves
on every run, so a sweep resumed mid-way chooses as an uninterrupted one
(the callback resumes each run where its checkpoint is, and trains nothing
twice). After each rung, `DIR/<arm>.json` (`decisions_path`) is written
atomically as a report of the choices: the rung's epoch, each value's mean and
per-seed best validation accuracy, the kept and pruned values. It is never
read back as the truth: a file of another halving or config, or whose
choices the curves no longer give, is replaced, and the log says so; a file
that is not one of these is refused.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import numbers
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import logging

from convnet import files
from convnet.cells import Cell, cell_name
from convnet.errors import ConfigError, DataError, FileFormatError

# The folder of a sweep directory that holds the decisions, one file per arm.
FOLDER = "halving"
# A dotted config field, as a sweep's overrides name it.
_FIELD = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclasses.dataclass(frozen=True)
class Halving:
  """Successive halving of `field`: rungs of epochs (increasing, the last the full budget), and
  at each rung but the last the best ceil(n/eta) of the n surviving values are kept.

  Raises:
    ConfigError: a field that is not a dotted config name (or is the seed), fewer than two rungs,
      rungs that are not whole numbers >= 1 in increasing order, or eta not a whole number >= 2.
  """

  field: str
  rungs: tuple[int, ...]
  eta: int

  def __post_init__(self):
    if not isinstance(self.field, str) or not _FIELD.fullmatch(self.field):
      raise ConfigError(
        f"halving field {self.field!r} is not a config field's dotted name; name the swept "
        "field to halve, e.g. optimizer.learning_rate"
      )
    if self.field == "seed":
      raise ConfigError(
        "halving field 'seed': halving over seeds would keep the luckiest; name a swept "
        "setting, e.g. optimizer.learning_rate"
      )
    rungs = self.rungs
    whole = isinstance(rungs, Sequence) and all(
      isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rungs
    )
    if not whole or len(rungs) < 2 or any(a >= b for a, b in itertools.pairwise(rungs)):
      raise ConfigError(
        f"halving rungs {rungs!r} must be at least two epoch budgets, whole numbers >= 1 in "
        "increasing order, the last the full budget (num_epochs), e.g. (1, 3, 10)"
      )
    object.__setattr__(self, "rungs", tuple(rungs))
    if isinstance(self.eta, bool) or not isinstance(self.eta, int) or self.eta < 2:
      raise ConfigError(
        f"halving eta {self.eta!r} must be a whole number >= 2: each rung keeps the best "
        "1/eta of the values, e.g. 3"
      )

  def keep(self, n: int) -> int:
    """How many of `n` values a rung before the last keeps: ceil(n / eta), at least 1."""
    return max(1, -(-n // self.eta))

  def check_budget(self, num_epochs: int) -> None:
    """Raises ConfigError unless the last rung is `num_epochs`, the runs' full budget."""
    if self.rungs[-1] != num_epochs:
      raise ConfigError(
        f"halving rungs {self.rungs} end at {self.rungs[-1]} epochs, and num_epochs is "
        f"{num_epochs}: the last rung is the full budget; end the rungs at {num_epochs}"
      )


# ----------------------------------------------------------------------------
# Arms


@dataclasses.dataclass(frozen=True)
class Arm:
  """The cells of a sweep that differ only in the halved field and the seed.

  `grid[i][j]` is the cell of `values[i]` and `seeds[j]`; values and seeds are in sweep order.
  `name` is the arm's overrides without the field and the seed, as a cell's name (`base` if none).
  """

  name: str
  values: tuple[Any, ...]
  seeds: tuple[Any, ...]
  grid: tuple[tuple[Cell, ...], ...]


def _key(value: Any) -> str:
  return json.dumps(value, sort_keys=True, default=repr)


def arms(cells: Sequence[Cell], field: str) -> list[Arm]:
  """The sweep's cells grouped into arms for halving `field`, in sweep order (see `Arm`).

  `cells`: `sweep.Cell`s (anything with `index`, `name` and `overrides`). A cell
  without a seed in its overrides counts as seed None.

  Raises:
    ConfigError: a cell does not set `field`, or an arm is not a full grid (a value
      of `field` without one of the arm's seeds), in one line naming the arm.
  """
  groups: dict[str, tuple[dict[str, Any], list[Cell]]] = {}
  for cell in sorted(cells, key=lambda c: c.index):
    if field not in cell.overrides:
      raise ConfigError(
        f"sweep cell {cell.name} does not set {field}: successive halving over {field} "
        f"needs every cell to set it; halve a field every cell sets"
      )
    rest = {k: v for k, v in cell.overrides.items() if k not in (field, "seed")}
    groups.setdefault(_key(rest), (rest, []))[1].append(cell)
  found, names = [], {}
  for rest, members in groups.values():
    name = cell_name(rest) or "base"
    if name in names:
      raise ConfigError(
        f"two arms of the sweep are both named {name}: give their settings other values"
      )
    names[name] = rest
    values = {_key(c.overrides[field]): c.overrides[field] for c in members}
    seeds = {_key(c.overrides.get("seed")): c.overrides.get("seed") for c in members}
    by_pair = {(_key(c.overrides[field]), _key(c.overrides.get("seed"))): c for c in members}
    for v in values:
      for s in seeds:
        if (v, s) not in by_pair:
          raise ConfigError(
            f"arm {name}: {field}={v} has no cell of seed {s}, which its other values have: "
            "successive halving needs every value with every seed of its arm; add that cell"
          )
    grid = tuple(tuple(by_pair[v, s] for s in seeds) for v in values)
    found.append(Arm(name, tuple(values.values()), tuple(seeds.values()), grid))
  return found


# ----------------------------------------------------------------------------
# Choosing: validation accuracies in, kept values out


def check_curve(curve: Any, what: str) -> list[float]:
  """`curve` as a list of floats: validation accuracies per epoch, each in [0, 1] or NaN.

  Raises:
    DataError: anything else (a string, a mapping, a number out of range), naming `what`.
  """
  if isinstance(curve, str | bytes | Mapping) or not hasattr(curve, "__iter__"):
    raise DataError(f"{what}: validation accuracies are {curve!r}, not a list of numbers")
  accuracies = list(curve)
  for epoch, accuracy in enumerate(accuracies, 1):
    number = isinstance(accuracy, numbers.Real) and not isinstance(accuracy, bool)
    if not number or not (math.isnan(accuracy) or 0 <= accuracy <= 1):
      raise DataError(
        f"{what}: validation accuracy of epoch {epoch} is {accuracy!r}, not a number in "
        "[0, 1] or NaN (diverged)"
      )
  return [float(a) for a in accuracies]


def seed_score(curve: Sequence[float], epoch: int) -> float:
  """One run's score at a rung: its best validation accuracy in epochs 1..`epoch`.

  `curve[k]` is epoch k + 1's validation accuracy. -inf where the run diverged (a
  NaN at or before `epoch`) or has no epoch; a shorter curve (the run stopped
  early) counts its best so far.
  """
  seen = curve[:epoch]
  if not seen or any(math.isnan(a) for a in seen):
    return -math.inf
  return max(seen)


def best_so_far(curve: Sequence[float], epoch: int) -> float | None:
  """The best finite validation accuracy in epochs 1..`epoch`; None if there is none."""
  finite = [a for a in curve[:epoch] if not math.isnan(a)]
  return max(finite) if finite else None


def mean_score(curves: Sequence[Sequence[float]], epoch: int) -> float:
  """A value's score at a rung: the mean of its seeds' `seed_score`s (-inf if one is -inf).

  `math.fsum`, so that the same seeds give the same mean in any order, and ties are ties.
  """
  scores = [seed_score(c, epoch) for c in curves]
  if not scores or -math.inf in scores:
    return -math.inf
  return math.fsum(scores) / len(scores)


def choose(curves: Sequence[Sequence[Sequence[float]]], epoch: int, keep: int) -> list[int]:
  """The positions of the `keep` best values at the rung `epoch`, ascending.

  Args:
    curves: `curves[i][j]` is the validation accuracy per epoch (epoch 1 first) of
      value i's seed j; values in sweep order. Validation alone: nothing else is
      passed, so test data cannot take part.
    epoch: the rung; epochs after it are not looked at.
    keep: how many to keep (1 <= keep).

  Values rank by `mean_score`; of equal scores, the earlier value in the sweep wins.

  Raises:
    DataError: an accuracy that is not a number in [0, 1] or NaN.
  """
  checked = [
    [check_curve(c, f"value {i}, seed {j}") for j, c in enumerate(seeds)]
    for i, seeds in enumerate(curves)
  ]
  scores = [mean_score(seeds, epoch) for seeds in checked]
  ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
  return sorted(ranked[:keep])


# ----------------------------------------------------------------------------
# The driver

# train_rung(arm name, rung epochs, cells) -> {cell name: [validation accuracy of epoch 1, 2, ...]}
TrainRung = Callable[[str, int, Sequence["Cell"]], Mapping[str, Sequence[float]]]


@dataclasses.dataclass(frozen=True)
class Pruned:
  """A value that stopped at a rung: `epoch` (trained epochs 1..epoch), its score there
  (`mean_validation_accuracy`, -inf if a seed diverged), and per seed its cell and best finite
  validation accuracy up to the rung (None if none)."""

  value: Any
  epoch: int
  mean_validation_accuracy: float
  cells: tuple[str, ...]
  best_validation_accuracy: tuple[float | None, ...]


@dataclasses.dataclass(frozen=True)
class ArmOutcome:
  """One arm's halving: the values trained to the full budget (`survivors`, sweep order),
  the best of them there (`chosen`; None if every survivor diverged), the values pruned
  (`pruned`, in the order they stopped, then sweep order), and each rung's decision as the
  decisions file holds it."""

  arm: str
  field: str
  survivors: tuple[Any, ...]
  chosen: Any
  pruned: tuple[Pruned, ...]
  decisions: tuple[dict[str, Any], ...]

  def pruned_records(self) -> dict[str, dict[str, Any]]:
    """The fields of each pruned cell's record, by cell name: `status` "pruned",
    `pruned_at_epoch` and `best_validation_accuracy` (see `convnet.records`)."""
    return {
      cell: {"status": "pruned", "pruned_at_epoch": p.epoch, "best_validation_accuracy": best}
      for p in self.pruned
      for cell, best in zip(p.cells, p.best_validation_accuracy, strict=True)
    }


def decisions_path(decisions_dir: str, arm: str) -> str:
  """The file of an arm's decisions: `decisions_dir/<arm>.json`."""
  return os.path.join(decisions_dir, f"{arm}.json")


def _plain(value: Any) -> Any:
  """`value` as JSON gives it back (tuples as lists), so that a file and a recomputation compare."""
  return json.loads(json.dumps(value, default=repr))


def _score(value: float) -> float | None:
  return None if value == -math.inf else value


def read_decisions(path: str) -> dict[str, Any] | None:
  """The decisions file at `path`, if one is there (None if not); its choices are not trusted.

  Raises:
    FileFormatError: the file is not a decisions file (not JSON, another shape), in one
      line naming it and what to do.
  """
  remedy = "move it away (the next run writes it again from the runs' validation curves)"
  try:
    saved = files.read_json(path)
  except FileNotFoundError:
    return None
  except FileFormatError as e:
    raise FileFormatError(f"{e}; {remedy}") from None
  except OSError as e:
    raise FileFormatError(f"{path} cannot be read ({files.reason(e)}); {remedy}") from None
  keys = {"halving", "arm", "identity", "decisions", "chosen"}
  if not isinstance(saved, dict) or set(saved) != keys or not isinstance(saved["decisions"], list):
    raise FileFormatError(
      f"{path} is not a file of successive halving's decisions (fields "
      f"{', '.join(sorted(keys))}); {remedy}"
    )
  return saved


def check_folder(decisions_dir: str) -> None:
  """Reads every `*.json` in `decisions_dir` (`read_decisions`), before anything trains: each
  must be a decisions file, of the arm it is named after. Lock folders and hidden files pass.

  Raises:
    FileFormatError: a file there that is not one, in one line naming it and what to do.
  """
  names = sorted(os.listdir(decisions_dir)) if os.path.isdir(decisions_dir) else []
  for name in names:
    path = os.path.join(decisions_dir, name)
    if name.startswith(".") or not name.endswith(".json") or os.path.isdir(path):
      continue
    saved = read_decisions(path)
    arm = saved["arm"].get("name") if isinstance(saved["arm"], dict) else None
    if arm is None or decisions_path(decisions_dir, arm) != path:
      raise FileFormatError(
        f"{path} holds the decisions of arm {arm!r}, and an arm's file is named after it (a "
        "copy?); move it out of the folder"
      )


def _write_decisions(path: str, content: dict[str, Any], saved: dict[str, Any] | None):
  """Writes `content` unless `saved` (the file as read) holds it already, or more that agrees;
  returns what the file holds now. A file that disagrees is replaced, with a log line saying
  why; one that holds less (the rungs before) is brought up to date in silence."""
  if saved is not None:
    same = all(saved[k] == content[k] for k in ("halving", "arm", "identity"))
    if not same:
      differs = ", ".join(k for k in ("halving", "arm", "identity") if saved[k] != content[k])
      logging.warning(
        "%s is of another halving or config (its %s differ): replaced by this run's decisions",
        path,
        differs,
      )
    else:
      ours, theirs = content["decisions"], saved["decisions"]
      agree = theirs[: len(ours)] == ours[: len(theirs)]
      if agree and (
        len(theirs) > len(ours) or theirs == ours and saved["chosen"] == content["chosen"]
      ):
        return saved
      if not agree:
        logging.warning(
          "%s: its decisions up to epoch %d are not what the runs' validation curves give "
          "now (runs trained again?): replaced by the recomputed ones",
          path,
          ours[-1]["epoch"],
        )
  text = json.dumps(content, indent=1) + "\n"
  files.atomic_write(path, text)
  return json.loads(text)  # a copy: `content` grows after this


def _curve(curves: Mapping[str, Sequence[float]], cell: Cell, arm: str, epoch: int) -> list[float]:
  if cell.name not in curves:
    raise DataError(
      f"arm {arm}, epoch {epoch}: the training gave no validation accuracies for cell {cell.name}"
    )
  return check_curve(curves[cell.name], f"arm {arm}, cell {cell.name}")[:epoch]


def run_arm(
  arm: Arm,
  halving: Halving,
  train_rung: TrainRung,
  decisions_dir: str,
  identity: Mapping[str, Any] | None = None,
) -> ArmOutcome:
  """Halves one arm (see the module docstring); writes `decisions_path(decisions_dir, arm.name)`.

  `train_rung(arm.name, epochs, cells)` trains `cells` (its survivors) to `epochs`
  (resuming each where it stopped) and returns each cell's validation accuracy
  per epoch, epochs 1..epochs at least (more are not looked at); NaN for an epoch
  after a divergence, and a shorter list for a run that stopped early. It may
  raise to stop the halving (a signal): rerun, and the same choices follow. A
  rung before the last is skipped where it would keep every value (one value).
  `identity`: what the arm's curves depend on beside the halving (the base
  config as JSON, say); a decisions file of another identity is replaced.

  Raises:
    DataError: `train_rung` gave no curve for a cell, or one that is not accuracies.
    FileFormatError: the decisions file is not one (before anything trains).
    WorkdirError: the decisions file cannot be written.
  """
  files.make_dir(decisions_dir, "the halving decisions folder")
  path = decisions_path(decisions_dir, arm.name)
  saved = read_decisions(path)
  content = {
    "halving": _plain(dataclasses.asdict(halving)),
    "arm": _plain(
      {
        "name": arm.name,
        "values": arm.values,
        "seeds": arm.seeds,
        "cells": [[c.name for c in row] for row in arm.grid],
      }
    ),
    "identity": _plain(dict(identity or {})),
    "decisions": [],
    "chosen": None,
  }
  survivors = list(range(len(arm.values)))
  pruned: list[Pruned] = []
  chosen = None
  for rung, epoch in enumerate(halving.rungs):
    last = rung == len(halving.rungs) - 1
    keep = len(survivors) if last else halving.keep(len(survivors))
    if not last and keep == len(survivors):
      continue
    cells = [cell for i in survivors for cell in arm.grid[i]]
    curves = train_rung(arm.name, epoch, cells)
    if not isinstance(curves, Mapping):
      raise DataError(
        f"arm {arm.name}, epoch {epoch}: the training gave {type(curves).__name__}, not "
        "{cell name: validation accuracies}"
      )
    by_value = [[_curve(curves, c, arm.name, epoch) for c in arm.grid[i]] for i in survivors]
    kept = [survivors[p] for p in choose(by_value, epoch, keep)]
    rows = []
    for i, seeds in zip(survivors, by_value, strict=True):
      score = mean_score(seeds, epoch)
      bests = tuple(best_so_far(c, epoch) for c in seeds)
      rows.append(
        {
          "value": arm.values[i],
          "cells": [c.name for c in arm.grid[i]],
          "mean_validation_accuracy": _score(score),
          "best_validation_accuracy": list(bests),
          "diverged": [seed_score(c, epoch) == -math.inf for c in seeds],
        }
      )
      if i not in kept:
        pruned.append(Pruned(arm.values[i], epoch, score, tuple(rows[-1]["cells"]), bests))
    decision = {
      "epoch": epoch,
      "values": rows,
      "kept": [arm.values[i] for i in kept],
      "pruned": [arm.values[i] for i in survivors if i not in kept],
    }
    if last:
      (best,) = choose(by_value, epoch, 1)
      if mean_score(by_value[best], epoch) > -math.inf:
        chosen = arm.values[survivors[best]]
        content["chosen"] = _plain(chosen)
    logging.info(
      "Halving %s over %s at epoch %d: kept %s%s",
      arm.name,
      halving.field,
      epoch,
      ", ".join(map(str, decision["kept"])),
      f"; pruned {', '.join(map(str, decision['pruned']))}" if decision["pruned"] else "",
    )
    content["decisions"].append(_plain(decision))
    saved = _write_decisions(path, content, saved)
    survivors = kept
  return ArmOutcome(
    arm=arm.name,
    field=halving.field,
    survivors=tuple(arm.values[i] for i in survivors),
    chosen=chosen,
    pruned=tuple(pruned),
    decisions=tuple(content["decisions"]),
  )


def run(
  arms: Sequence[Arm],
  halving: Halving,
  train_rung: TrainRung,
  decisions_dir: str,
  identity: Mapping[str, Any] | None = None,
) -> dict[str, ArmOutcome]:
  """Halves each arm in turn (`run_arm`); returns each arm's outcome, by arm name.

  Every arm's decisions file is read first: one that is not a decisions file stops
  the halving before anything trains (FileFormatError).
  """
  for arm in arms:
    read_decisions(decisions_path(decisions_dir, arm.name))
  return {arm.name: run_arm(arm, halving, train_rung, decisions_dir, identity) for arm in arms}
