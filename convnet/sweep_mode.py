"""A sweep folder's `sweep.json`: the way its seeds train, and its halving, held for every run.

A sweep folder is trained one way: cell by cell, seeds together (`--vmap_seeds`), rates and
seeds together (`--vmap_rates`), whole or halved (and by which halving). The first run writes
`MODE_FILE`; a later run another way would train cells again in other folders and mix the two
ways' records, so `check_mode` refuses it in one line naming the flags to give.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from convnet import files
from convnet import halving as halving_lib
from convnet.cells import Cell
from convnet.errors import ConfigError, FileFormatError

MODE_FILE = "sweep.json"


def check_mode(
  sweep_dir: str,
  vmap_seeds: bool,
  vmap_rates: bool = False,
  halving: bool | Mapping[str, Any] = False,
) -> None:
  """Holds a sweep directory to one way of training its seeds: one writer for each record.

  The first run writes `MODE_FILE`; a run the other way (with or without
  `--vmap_seeds`, or `--vmap_rates`, which trains seeds together too, or with
  or without successive halving, or another halving) would train every cell
  again, in other workdirs, and mix its records with the first way's, so it is
  refused. `halving`: the sweep's halving as `halving_mode` gives it (True for
  one not described; a folder whose file says `"halving": true`, of an older
  version, takes any). A directory of an older version, without the file,
  counts as the way its `cells/` or `groups/` show.

  Raises:
    ConfigError: `sweep_dir` was run the other way, or with another halving.
  """
  path = os.path.join(sweep_dir, MODE_FILE)
  vmap_seeds = vmap_seeds or vmap_rates
  mode = {"vmap_seeds": bool(vmap_seeds)} | ({"vmap_rates": True} if vmap_rates else {})
  mode |= {"halving": halving if isinstance(halving, Mapping) else True} if halving else {}
  if not os.path.exists(path):
    made = {d for d in ("cells", "groups") if os.path.isdir(os.path.join(sweep_dir, d))}
    if made and made != {"groups" if vmap_seeds else "cells"}:
      saved = {"vmap_seeds": "groups" in made} if len(made) == 1 else mode
      _refuse_mode(sweep_dir, saved, mode)
    if _create_whole(path, json.dumps(mode)):
      return
  _refuse_mode(sweep_dir, read_mode(path), mode)


def halving_mode(
  halving: halving_lib.Halving, cells: Sequence[Cell], from_command: bool = False
) -> dict[str, Any]:
  """A sweep's halving as `MODE_FILE` keeps it: its field, rungs, eta, the halved values in
  sweep order, and where it came from ("command": --learning_rates and --halving_rungs; else
  "sweep file": its halving())."""
  values = dict.fromkeys(json.dumps(c.overrides.get(halving.field), default=repr) for c in cells)
  return {
    "field": halving.field,
    "rungs": list(halving.rungs),
    "eta": halving.eta,
    "values": [json.loads(v) for v in values],
    "source": "command" if from_command else "sweep file",
  }


def _create_whole(path: str, text: str) -> bool:
  """Writes `text` to `path` unless a file is there; whether it did. Never half a file.

  The text goes to a temporary file that is then hard-linked to `path`, which
  fails if `path` exists: of two racing shards one makes it, and the other
  reads it whole. Where the filesystem has no hard links, `path` is made
  with O_EXCL and written.
  """
  folder, name = os.path.split(path)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.{files.writer_id()}.", suffix=".tmp")
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # what open() gives a new file; mkstemp's is 0600
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    try:
      os.link(tmp, path)
    except FileExistsError:
      return False
    except OSError:  # no hard links here
      try:
        with open(path, "x") as f:
          f.write(text)
      except FileExistsError:
        return False
    return True
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)


def read_mode(path: str) -> dict[str, bool]:
  """The way a sweep folder's seeds train, from its `MODE_FILE`: {"vmap_seeds": bool}.

  Raises:
    FileFormatError: the file is not that (not JSON, nested too deep, another
      value), naming it and what to do.
  """
  remedy = "delete it, and the next run writes it again from the folder's cells/ or groups/"
  try:
    saved = files.read_json(path)
  except FileFormatError as e:
    raise FileFormatError(f"{e}; {remedy}") from None
  except OSError as e:
    raise FileFormatError(f"{path} cannot be read ({files.reason(e)}); {remedy}") from None
  halving = saved.get("halving", False) if isinstance(saved, dict) else None
  described = isinstance(halving, dict) and {"field", "rungs", "eta", "values"} <= set(halving)
  if isinstance(halving, dict) and described:
    described = isinstance(halving["rungs"], list) and isinstance(halving["values"], list)
    described = described and halving.get("source", "command") in ("command", "sweep file")
    try:  # a halving that could not have run (rungs out of order, eta "two") is not one
      described = described and bool(
        halving_lib.Halving(halving["field"], tuple(halving["rungs"]), halving["eta"])
      )
    except (ConfigError, TypeError):
      described = False
  if isinstance(saved, dict) and not (isinstance(halving, bool) or described):
    raise FileFormatError(
      f"{path}: its halving is {json.dumps(halving)[:60]}, not true, false or "
      f'{{"field", "rungs", "eta", "values"}}: it is not this project\'s; {remedy}'
    )
  if not isinstance(saved, dict) or not isinstance(saved.get("vmap_seeds"), bool):
    shown = json.dumps(saved)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise FileFormatError(
      f'{path} holds {shown}, not {{"vmap_seeds": true or false}}: it is not this '
      f"project's; {remedy}"
    )
  return saved


def _describe_halving(halving: Mapping[str, Any]) -> str:
  values = ", ".join(map(str, halving["values"]))
  rungs = ", ".join(map(str, halving["rungs"]))
  return f"{halving['field']} ({values}) at rungs ({rungs}), eta {halving['eta']}"


def _halving_flags(halving: Mapping[str, Any]) -> str:
  return (
    f"--learning_rates={','.join(map(str, halving['values']))} "
    f"--halving_rungs={','.join(map(str, halving['rungs']))} --halving_eta={halving['eta']}"
  )


def _refuse_mode(sweep_dir: str, saved: Mapping[str, Any], mode: Mapping[str, Any]) -> None:
  old, new = saved.get("halving"), mode.get("halving")
  both_ways = (
    "its sweep file's halving(), without --nohalving, or --learning_rates with --halving_rungs"
  )
  if old and not new:
    if isinstance(old, Mapping) and old.get("source") == "command":
      way = f"with {_halving_flags(old)} again"
    elif isinstance(old, Mapping):
      way = "with its sweep file's halving() again, without --nohalving"
    else:
      way = f"halved again ({both_ways})"
    raise ConfigError(
      f"{sweep_dir} was run with successive halving: run it {way}, or give another --workdir: "
      "a whole-grid run would train the pruned cells again, in other folders"
    )
  if new and not old:
    way = (
      "leave out --halving_rungs"
      if isinstance(new, Mapping) and new.get("source") == "command"
      else "add --nohalving: the sweep file has a halving()"
    )
    raise ConfigError(
      f"{sweep_dir} was run without successive halving: run it that way again ({way}), or "
      "give another --workdir: the two ways train in other folders"
    )
  if isinstance(old, Mapping) and isinstance(new, Mapping):
    if {k: v for k, v in old.items() if k != "source"} != {
      k: v for k, v in new.items() if k != "source"
    }:
      same = (
        f"the same {_halving_flags(old)}"
        if old.get("source") == "command"
        else "the sweep file's halving() and values it had then"
      )
      raise ConfigError(
        f"{sweep_dir} was halved over {_describe_halving(old)}: run it with {same}, or give "
        "another --workdir"
      )
  if saved.get("vmap_rates") is True and not mode.get("vmap_rates"):
    raise ConfigError(
      f"{sweep_dir} was run with --vmap_rates: run it with --vmap_rates again (the two ways "
      "train in other folders, and their records would mix), or give another --workdir"
    )
  if mode.get("vmap_rates") and saved.get("vmap_rates") is not True:
    raise ConfigError(
      f"{sweep_dir} was run without --vmap_rates: run it without --vmap_rates again"
      + (" (with --vmap_seeds, as before)" if saved.get("vmap_seeds") else "")
      + " (the two ways train in other folders, and their records would mix), or give another "
      "--workdir"
    )
  if bool(saved.get("vmap_seeds")) != mode["vmap_seeds"]:
    way = "with" if saved.get("vmap_seeds") else "without"
    raise ConfigError(
      f"{sweep_dir} was run {way} --vmap_seeds: run it {way} --vmap_seeds again (the two ways "
      "train in other folders, and their records would mix), or give another --workdir"
    )
