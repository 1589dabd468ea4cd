"""What the command-line entry points share: flag parsing with one-line errors, and quiet logs."""

from __future__ import annotations

import logging as python_logging
import re
import sys

from absl import app, flags, logging


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags as `app.run` does; an override of a field the config lacks is one line.

  `ml_collections` raises an AttributeError for `--config.data.sorce=x`; the
  user gets `error: --config.data.sorce=x: no field 'sorce' (did you mean ...)`.
  """
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    text = str(e.args[0] if e.args else e).encode().decode("unicode_escape")
    key = re.match(r"\W*(\w+)", text)
    key = key[1] if key else text
    overrides = [a for a in argv[1:] if a.startswith("--") and "." in a.split("=")[0]]
    culprit = next((a for a in overrides if f".{key}" in a.split("=")[0]), " ".join(overrides))
    hint = re.search(r"Did you mean [^?]*\?", text)
    sys.exit(f"error: {culprit}: the config has no field {key!r}{f'. {hint[0]}' if hint else ''}")


def start(argv: list[str], quiet: bool = True) -> None:
  """What every entry point's `main` does first: refuse stray arguments, quiet Orbax's INFO.

  Raises:
    app.UsageError: `argv` holds more than the program's name.
  """
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if quiet:
    quiet_library_logs()


class _LibraryInfoFilter(python_logging.Filter):
  """Keeps the libraries' INFO chatter (Orbax logs every file of a save) out of the log."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return record.levelno >= python_logging.WARNING or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
  """Drops Orbax's INFO lines from absl's log."""
  logging.get_absl_handler().addFilter(_LibraryInfoFilter())
