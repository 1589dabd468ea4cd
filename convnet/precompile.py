"""Compiling a run's programs in other threads while the run sets up.

XLA compiles without holding Python's lock, so a program can compile in one
thread while another initialises the parameters, opens the checkpoints or
compiles a second program: where a second core is free, a first run (an
empty compilation cache) waits for about its longest compile rather than for
their sum. The compiles together take more CPU time than one after another
(about a fifth more, measured on 2 busy vCPUs), so where no core is free the
set-up takes that much longer.

A program compiled ahead here (`jax.jit(...).lower(...).compile()`) is the one
that the jitted function's first call would compile: JAX keeps it in memory and
that call finds it there. Arguments that differ from the ones compiled for (a
shape, a dtype, a placement) only cost that call a compile of its own, as
before; what a call computes never depends on where its program was compiled.

Python's exit while XLA compiles in a daemon thread aborts the process
(SIGABRT): whoever starts compiles here joins them (`Compiles.join`) before
the process can exit, on errors and stop signals too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


class Compiles:
  """Programs compiling in daemon threads; `join` waits for every one of them.

  A compile that fails in its thread is dropped: the first call compiles in
  the calling thread again, and raises there.
  """

  def __init__(self):
    self._threads: list[threading.Thread] = []

  def start(self, jitted, *examples: Sequence[Any]) -> Callable:
    """Starts compiling `jitted` for each tuple of example arguments in `examples`.

    Args:
      jitted: a `jax.jit` function.
      examples: each a tuple of arguments for `jitted`, arrays or `jax.ShapeDtypeStruct`s
        (with the sharding the call's arrays will have), Python scalars where the call
        passes them.

    Returns:
      `jitted`, wrapped so that its calls wait until these compiles are done.
    """
    done = threading.Event()

    def compile_all() -> None:
      try:
        for args in examples:
          jitted.lower(*args).compile()
      except Exception:  # The call compiles again in its own thread, and raises there.
        pass
      finally:
        done.set()

    thread = threading.Thread(target=compile_all, name="convnet-compile", daemon=True)
    thread.start()
    self._threads.append(thread)

    def call(*args, **kwargs):
      done.wait()
      return jitted(*args, **kwargs)

    return call

  def join(self) -> None:
    """Waits for every compile started here."""
    for thread in self._threads:
      thread.join()


def abstract(trees: Sequence[Any], stacked: bool, sharding=None) -> Any:
  """The `jax.ShapeDtypeStruct`s of what `jax` would make of `trees[0]`, or of them stacked.

  Each leaf (an array or a `ShapeDtypeStruct`) gets its dtype as JAX stores it
  (int64 as int32 without x64), no weak type, and `sharding` (None: the
  default device, uncommitted). With `stacked`, the trees are stacked along a
  new leading axis, as `epochs.stack` stacks the seeds of a group.
  """

  def one(*leaves):
    shape = (len(leaves), *leaves[0].shape) if stacked else tuple(leaves[0].shape)
    dtype = jax.dtypes.canonicalize_dtype(np.dtype(leaves[0].dtype))
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

  return jax.tree.map(one, *(trees if stacked else trees[:1]))
