"""What the user's log holds: library lines kept out of it, and progress on long waits."""

from __future__ import annotations

import contextlib
import logging as python_logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from absl import logging

from convnet import display

T = TypeVar("T")


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


class _PlatformProbe(python_logging.Filter):
  """Drops JAX's INFO line for each optional platform it tried and could not start."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    probe = record.levelno <= python_logging.INFO and str(record.msg).startswith(
      "Unable to initialize backend"
    )
    return not probe


_PLATFORM_PROBE = _PlatformProbe()


def hide_platform_probes() -> None:
  """Keeps JAX's platform probe ("Unable to initialize backend 'tpu': ... libtpu.so") out of logs.

  JAX tries every platform it knows and logs, at INFO, each that does not
  start; on a CPU machine that reads like a failure. The platform JAX does use
  is unchanged, and one asked for (`--jax_platforms=tpu`) that cannot start
  still raises. Safe to call more than once.
  """
  python_logging.getLogger("jax._src.xla_bridge").addFilter(_PLATFORM_PROBE)


def progress(
  items: Iterable[T],
  what: str,
  total: int,
  unit: str = "items",
  every: float = 5.0,
  clock: Callable[[], float] = time.monotonic,
) -> Iterator[T]:
  """Yields `items`, logging how far they have come every `every` seconds, for a long wait.

  Each line gives the count, the rate since the line before and the time left
  at that rate, e.g. "Synthesising clips: 1,200/8,000 clips (15%), 49.8
  clips/s, about 2m17s left"; a last line gives the count and the time taken,
  if any line was logged. A job quicker than `every` seconds logs nothing.

  Args:
    items: what to yield, `total` of them (an iterator that does the work as it goes).
    what: the job, as the lines begin: "Synthesising clips".
    total: how many items there are.
    unit: what an item is, plural: "clips".
    every: seconds between lines.
    clock: the time in seconds (a test's fake clock).
  """
  start = last = clock()
  count = last_count = 0
  for item in items:
    yield item
    count += 1
    now = clock()
    if now - last >= every and count < total:
      rate = (count - last_count) / (now - last)  # since the last line: the load may change
      logging.info(
        "%s: %s/%s %s (%d%%), %s %s/s, about %s left",
        what,
        f"{count:,}",
        f"{total:,}",
        unit,
        100 * count // total,
        _rate(rate),
        unit,
        display.duration((total - count) / rate),
      )
      last, last_count = now, count
  if last_count:
    elapsed = clock() - start
    logging.info("%s: %s %s in %s", what, f"{count:,}", unit, display.duration(elapsed))


# absl names the line of code that logged: that of the loop over `progress`, not this module's.
logging.ABSLLogger.register_frame_to_skip(__file__, "progress")


def _rate(rate: float) -> str:
  return f"{rate:,.0f}" if rate >= 10 else f"{rate:.1f}"
