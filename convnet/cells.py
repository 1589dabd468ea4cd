"""A sweep's cells: the grid a sweep file builds, each cell's name, and its config.

A sweep file (see `configs/sweeps/`) yields override dicts such as
`{"model.conv.kernel_size": 5, "seed": 2}`, built with `axis`, `product` and
`zipped`; `expand` makes them `Cell`s, each with a folder name, and
`apply_overrides` gives each cell's config. `convnet.sweep` runs them (and
offers the same names, which sweep files import from it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections

from convnet import display
from convnet.errors import ConfigError

Overrides = dict[str, Any]


def axis(field: str, values: Iterable[Any]) -> list[Overrides]:
  """One override dict for each value of one config field."""
  return [{field: value} for value in values]


def product(*axes: Sequence[Overrides]) -> list[Overrides]:
  """Every combination of the axes' override dicts; the last axis varies fastest."""
  return [_merge(combo) for combo in itertools.product(*axes)]


def zipped(*axes: Sequence[Overrides]) -> list[Overrides]:
  """The axes' i-th override dicts merged, for each i; the axes must have one length."""
  lengths = {len(a) for a in axes}
  if len(lengths) > 1:
    raise ConfigError(f"zipped axes have different lengths: {sorted(lengths)}")
  return [_merge(combo) for combo in zip(*axes, strict=True)]


def _merge(parts: Iterable[Overrides]) -> Overrides:
  merged = {}
  for part in parts:
    clash = set(merged) & set(part)
    if clash:
      raise ConfigError(f"the same field is set twice in one cell: {', '.join(sorted(clash))}")
    merged.update(part)
  return merged


# ----------------------------------------------------------------------------
# Cells


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of a sweep: its place in the sweep, its name and its overrides."""

  index: int
  name: str
  overrides: Overrides

  @property
  def setting(self) -> str:
    """The cell's name without its seed: cells with one setting are seeds of one run."""
    return cell_name({k: v for k, v in self.overrides.items() if k != "seed"}) or "base"


def cell_name(overrides: Mapping[str, Any]) -> str:
  """A name for a directory: `field=value` pairs, joined by commas."""
  name = ",".join(f"{k}={display.setting_value(v, ('_',))}" for k, v in overrides.items())
  name = re.sub(r"[^A-Za-z0-9._=,+-]", "", name)
  if len(name) > 150:  # Keeps paths short; the hash keeps names apart.
    name = name[:130] + "-" + hashlib.sha1(name.encode()).hexdigest()[:12]
  return name


def expand(sweep_fn: Callable[[], Iterable[Mapping[str, Any]]]) -> list[Cell]:
  """The cells of a sweep function, in its order; rejects repeated and malformed cells."""
  cells, names = [], {}
  for index, overrides in enumerate(sweep_fn()):
    if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
      raise ConfigError(f"sweep cell {index} is {overrides!r}, not a dict of field names")
    overrides = {k: _plain(v) for k, v in overrides.items()}
    name = cell_name(overrides) or "base"
    if name in names:
      raise ConfigError(f"sweep cells {names[name]} and {index} are the same cell: {name}")
    names[name] = index
    cells.append(Cell(index, name, overrides))
  if not cells:
    raise ConfigError("the sweep yields no cells")
  return cells


def _plain(value: Any) -> Any:
  """Lists become tuples, as config fields hold them."""
  if isinstance(value, list | tuple):
    return tuple(_plain(v) for v in value)
  return value


def apply_overrides(
  base: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
  """A copy of `base` with dotted fields set; an unknown field or a wrong type is a ConfigError."""
  config = base.copy_and_resolve_references()
  with config.unlocked():
    for field, value in overrides.items():
      *parents, leaf = field.split(".")
      node = config
      for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
          raise ConfigError(f"sweep field {field!r}: {'.'.join(parents[: i + 1])} is not a group")
        node = node[part]
      if leaf not in node:
        raise ConfigError(f"sweep field {field!r} is not a field of the config")
      try:
        setattr(node, leaf, value)
      except (TypeError, ValueError) as e:
        raise ConfigError(f"sweep field {field!r} cannot be {value!r}: {e}") from None
  return config
