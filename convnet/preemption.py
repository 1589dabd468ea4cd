"""Requests to stop (SIGTERM, SIGINT, SIGHUP, SIGUSR1) that every process of a run agrees on.

The training loop asks `requested(step)` between calls of the jitted steps and,
when it returns a signal number, saves a checkpoint at that step and stops.

A stop request is any signal that would otherwise end the run and lose its
progress since the last checkpoint: SIGTERM (a scheduler's or `kill`'s stop),
SIGINT (Ctrl-C), SIGHUP (the terminal closed) and SIGUSR1 (the warning a batch
system sends before it kills a job, as SLURM's `--signal=USR1@60`). A second
one stops the run at once, without saving (`StoppedAtOnce`): the last complete
checkpoint stands, and the run resumes from it exactly. SIGQUIT (Ctrl-\\) keeps
the system's meaning: it quits at once, as a last resort that nothing catches.

In one process a signal sets a flag that the loop reads. In a run of
several processes (`jax.distributed`), each process would see its own signal at
its own step, or only one process would see it at all; the others would then
wait forever in the next collective, or save a different step. So there the
request goes through JAX's preemption service instead
(`multihost_utils.reached_preemption_sync_point`, on by default through the
`jax_enable_preemption_service` config): `jax.distributed.initialize` installs
a C handler for SIGTERM in every process; the first SIGTERM that any one
process receives is posted to the coordination service; every process then
sends it the last step it reached, and all of them stop at the same step, the
first one after the largest of those.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import jax
from absl import logging
from jax.experimental import multihost_utils

# Handled wherever the process runs; SIGHUP and SIGUSR1 only where they would end it (a run under
# `nohup` ignores SIGHUP, and keeps ignoring it; a handler that someone installed stays).
ALWAYS_HANDLED = (signal.SIGTERM, signal.SIGINT)
HANDLED_IF_DEFAULT = (signal.SIGHUP, signal.SIGUSR1)


class StoppedAtOnce(KeyboardInterrupt):
  """A second stop signal: the run stopped at once, without saving; its last checkpoint stands.

  A KeyboardInterrupt, so that no `except Exception` on the way out holds it up.

  Attributes:
    signum: the signal's number (an entry point exits with 128 + signum).
  """

  def __init__(self, signum: int):
    self.signum = signum
    super().__init__(
      f"{signal.Signals(signum).name} again: stopped at once, without saving; run the same "
      "command again to resume from the last checkpoint"
    )


class StopRequests:
  """Whether the run should stop at a step; made by `stop_requests`.

  Attributes:
    received: The first signal that this process received itself and saw from
      Python (any stop signal in one process; in several, any but SIGTERM,
      which JAX's handler takes), or 0.
  """

  def __init__(self, multiprocess: bool):
    self.received = 0
    self._multiprocess = multiprocess
    self._last_step: int | None = None
    self._agreed = 0

  def requested(self, step: int) -> int:
    """0 to go on with step `step`, or the number of the signal to stop at it.

    Every process must call this at the same steps, in the same order, each
    larger than the one before (the loop's sync points: calls may skip steps).
    In several processes, each call may block briefly while the processes
    agree on the step, and all of them return the same nonzero answer at the
    same step: the signal that a process received itself (SIGINT, SIGHUP,
    SIGUSR1), SIGTERM in the others. Once nonzero, the answer stays nonzero
    for later steps.

    Raises:
      ValueError: `step` is not larger than the step of the previous call.
    """
    if self._last_step is not None and step <= self._last_step:
      raise ValueError(f"steps must increase: step {step} after step {self._last_step}")
    first = step if self._last_step is None else self._last_step + 1
    self._last_step = step
    if not self._multiprocess:
      return self.received
    if not self._agreed:
      # The service stops at the step after the largest one any process has
      # reported, and only a call with exactly that step sees it: report every
      # step that this call passes over, so a loop that advances several
      # steps a call stops at the first call at or after it.
      if any(multihost_utils.reached_preemption_sync_point(s) for s in range(first, step + 1)):
        self._agreed = self.received or signal.SIGTERM
        logging.warning(
          "Stop requested: all %d processes stop at step %d", jax.process_count(), step
        )
    return self._agreed


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequests]:
  """Turns a stop signal (see the module doc), in any one process of a run, into a stop at a step.

  Yields a `StopRequests`, which the loop asks between calls of the steps.

  One process (`jax.process_count() == 1`): the first stop signal makes
  `requested` return its number; a second one raises `StoppedAtOnce` (a
  KeyboardInterrupt) at once, wherever the run is (saving a checkpoint, say),
  and any later one is ignored while the run unwinds. Only the main thread can
  set handlers; elsewhere signals keep their handlers and `requested` returns 0.

  Several processes: SIGTERM is left to JAX's handler (never replaced here: a
  Python handler would hide it from JAX). A SIGTERM to any one process makes
  every process's `requested` return SIGTERM at one step, the same in all; JAX
  sees only the first SIGTERM of a process's life, and later ones do nothing.
  In the main thread, SIGINT (Ctrl-C, which a terminal sends to every process
  it started), SIGHUP and SIGUSR1 are passed on to JAX as a SIGTERM to this
  process, so that they too stop every process at one step; this process's
  `requested` then returns the signal it received. A second one raises
  `StoppedAtOnce` at once, in that process alone: the others stop at their
  next collective with an error, or when the coordination service finds this
  one gone. Signals that arrive after the last call of `requested` are
  ignored, as in one process.

  On exit the previous handlers are restored.

  Raises:
    RuntimeError: several processes, and no preemption service to agree
      through: `jax_enable_preemption_service` was off when
      `jax.distributed.initialize` ran, or a Python handler has replaced JAX's
      for SIGTERM.
  """
  multiprocess = jax.process_count() > 1
  if multiprocess:
    _check_preemption_service()
  requests = StopRequests(multiprocess)
  if threading.current_thread() is not threading.main_thread():
    yield requests
    return

  stopping_at_once = False

  def request(signum, frame):
    nonlocal stopping_at_once
    del frame
    if stopping_at_once:  # A third signal: the run is on its way out already.
      return
    if requests.received:  # A second signal: stop now, without saving.
      stopping_at_once = True
      raise StoppedAtOnce(signum)
    requests.received = signum
    name = signal.Signals(signum).name
    if multiprocess:
      logging.warning("%s received: every process will save a checkpoint, then stop", name)
      signal.raise_signal(signal.SIGTERM)  # To JAX's handler, which tells the other processes.
    else:
      logging.warning("%s received: saving a checkpoint, then stopping", name)

  signals = [s for s in ALWAYS_HANDLED if not (multiprocess and s == signal.SIGTERM)]
  signals += [s for s in HANDLED_IF_DEFAULT if signal.getsignal(s) == signal.SIG_DFL]
  previous = {s: signal.signal(s, request) for s in signals}
  _unheeded.clear()
  try:
    yield requests
  except BaseException:
    raise
  else:
    if requests.received:  # it came as the run ended: the caller stops before the next run
      _unheeded.append(requests.received)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


# A stop signal that arrived when a run had no step left to stop at (it finished anyway).
_unheeded: list[int] = []


def unheeded_stop() -> int:
  """The stop signal the last run received but finished without stopping for, or 0; once.

  A sweep asks this after each run, and stops there, so that a Ctrl-C that lands as a run
  ends is not lost to the runs after it.
  """
  return _unheeded.pop() if _unheeded else 0


def ignore_stop_signals() -> None:
  """Ignores every stop signal from now on: for an entry point on its way out after a stop.

  A signal that arrives after `stop_requests` has given back the previous
  handlers (Python's KeyboardInterrupt for SIGINT) would otherwise break off
  the exit with a traceback; the run is saved, or stopped, already. Errors of
  background threads from then on (a checkpoint's writer, cut off by a second
  signal: "cannot schedule new futures after shutdown") are not printed
  either: the one line that says how the run ended is the last word.
  """
  if threading.current_thread() is threading.main_thread():  # the only one that may set them
    for s in (*ALWAYS_HANDLED, *HANDLED_IF_DEFAULT):
      signal.signal(s, signal.SIG_IGN)
  threading.excepthook = lambda args: None


def _check_preemption_service() -> None:
  """Raises RuntimeError where processes could not agree on a step through JAX."""
  if not jax.config.jax_enable_preemption_service:
    raise RuntimeError(
      "jax_enable_preemption_service is off: the processes of a multi-process run cannot "
      "agree on a step to stop at. Leave it on (the default) when calling "
      "jax.distributed.initialize"
    )
  if callable(signal.getsignal(signal.SIGTERM)):
    raise RuntimeError(
      "a Python handler for SIGTERM replaces JAX's, so the processes of a multi-process run "
      "cannot agree on a step to stop at; remove it (a stop_requests of one process installs one)"
    )
