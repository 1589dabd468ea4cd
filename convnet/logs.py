"""Filters on absl's log: library lines that the one line of an error already says."""

from __future__ import annotations

import contextlib
import logging as python_logging
from collections.abc import Iterator

from absl import logging


class _FromSource(python_logging.Filter):
  """Drops the records logged by code whose file path holds `source`."""

  def __init__(self, source: str):
    super().__init__()
    self.source = source

  def filter(self, record: python_logging.LogRecord) -> bool:
    return self.source not in record.pathname


@contextlib.contextmanager
def muted(source: str) -> Iterator[None]:
  """Drops from absl's log, while the block runs, every line of code whose path holds `source`.

  For instance `muted("/orbax/")`: Orbax's threads log each failed write with
  a traceback, which the error raised afterwards says in one line.
  """
  handler, quiet = logging.get_absl_handler(), _FromSource(source)
  handler.addFilter(quiet)
  try:
    yield
  finally:
    handler.removeFilter(quiet)
