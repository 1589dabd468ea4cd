"""Where convnet keeps what it can make again: generated datasets and compiled programs.

The root is `$CONVNET_CACHE_DIR`, else `$XDG_CACHE_HOME/convnet`, else
`~/.cache/convnet`. Deleting it loses nothing that cannot be remade.
"""

from __future__ import annotations

import os
import warnings

import jax
from absl import logging

COMPILATION_CACHE = "xla"  # JAX's persistent compilation cache, under the root


def root() -> str:
  """The cache folder (not created here)."""
  path = os.environ.get("CONVNET_CACHE_DIR")
  if path:
    return os.path.expanduser(path)
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "convnet")


def enable_compilation_cache() -> str | None:
  """Keeps XLA's compiled programs on disk, so that a rerun or a sweep cell skips compiling.

  Uses JAX's persistent compilation cache: in the folder JAX is already told
  (`JAX_COMPILATION_CACHE_DIR` or `jax_compilation_cache_dir`), else in
  `root()/xla`; every program is kept, however quick its compile. The entry
  points call this; a research script may too. `CONVNET_COMPILATION_CACHE=0`
  leaves JAX's cache as it is (off, unless JAX was told a folder).

  Returns:
    The cache folder, or None when it is left off.
  """
  if os.environ.get("CONVNET_COMPILATION_CACHE", "1") == "0":
    return None
  folder = jax.config.jax_compilation_cache_dir or os.path.join(root(), COMPILATION_CACHE)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:  # A read-only home, say: run without the cache rather than fail.
    logging.warning("No compilation cache: %s cannot be made (%s)", folder, e)
    return None
  jax.config.update("jax_compilation_cache_dir", folder)
  # A program that cannot be kept or read back (a full disk) is compiled again: no warnings.
  warnings.filterwarnings("ignore", "Error (writing|reading) persistent compilation cache entry")
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return folder
