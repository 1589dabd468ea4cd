"""Shared fixtures: a small config on the embedded digits, and IDX folders."""

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TensorFlow stays off any GPU.

import jax
import numpy as np
import pytest

from convnet.configs import mnist
from convnet.sources import embedded as embedded_source
from convnet.sources import idx

jax.config.update("jax_numpy_rank_promotion", "raise")

# The suite trains the same small configs many times, in this process and in subprocesses:
# XLA's compiled programs are kept on disk for the session, so that each compiles once.
# The cache folder is new for every session, so no test sees a program of another version.
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="convnet-tests-xla-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILATION_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def model_config(base=mnist, **overrides):
  """The `model` part of a config file (the book's convnet by default), with dotted overrides."""
  config = base.get_config().model
  for key, value in overrides.items():
    node = config
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    node[leaf] = value
  return config


def train_briefly(config, workdir):
  """Two epochs of `config` in batches of 8: a whole run end to end, on small data."""
  from convnet import train

  config.batch_size = 8
  config.microbatch_size = 0
  config.num_epochs = 2
  config.log_every_steps = 1
  result = train.train_and_evaluate(config, str(workdir))
  assert result["epoch"] == 2 and np.isfinite(result["test_loss"])
  assert 0.0 <= result["test_accuracy"] <= 1.0
  return result


@pytest.fixture
def config():
  """The book's convnet on the embedded digits, small enough for a test."""
  config = mnist.get_config()
  config.data.source = "embedded"
  config.data.tfds_data_dir = ""
  config.data.idx_dir = ""
  config.batch_size = 256
  config.num_epochs = 1
  config.log_every_steps = 5
  return config


@pytest.fixture(scope="session")
def embedded():
  """The embedded digits, each split in a fixed shuffled order (the file is sorted by label)."""
  raw = embedded_source.load_embedded()
  rng = np.random.default_rng(0)
  train, test = rng.permutation(len(raw.train_labels)), rng.permutation(len(raw.test_labels))
  return dataclasses.replace(
    raw,
    train_images=raw.train_images[train],
    train_labels=raw.train_labels[train],
    test_images=raw.test_images[test],
    test_labels=raw.test_labels[test],
  )


def write_idx_dir(directory, train_images, train_labels, test_images, test_labels, gz=True):
  """Writes the four standard IDX files; returns their paths by role."""
  os.makedirs(directory, exist_ok=True)
  ext = ".gz" if gz else ""
  paths = {}
  arrays = {
    "train_images": train_images,
    "train_labels": train_labels,
    "test_images": test_images,
    "test_labels": test_labels,
  }
  for key, stem in idx.IDX_FILES.items():
    paths[key] = os.path.join(directory, stem + ext)
    idx.write_idx(paths[key], np.asarray(arrays[key]))
  return paths


@pytest.fixture
def idx_dir(tmp_path, embedded):
  """Real digits as IDX files: 300 train and 100 test images, labels 0..9."""
  write_idx_dir(
    tmp_path / "idx",
    embedded.train_images[:300, ..., 0],
    embedded.train_labels[:300].astype(np.uint8),
    embedded.test_images[:100, ..., 0],
    embedded.test_labels[:100].astype(np.uint8),
  )
  return tmp_path / "idx"


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_address() -> str:
  """A loopback address with a free port, for a coordinator of processes."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return f"127.0.0.1:{s.getsockname()[1]}"


def cpu_env(**extra) -> dict[str, str]:
  """The environment of a subprocess with one CPU device (no XLA_FLAGS), plus `extra`."""
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu", **extra)
  env.pop("XLA_FLAGS", None)
  return env


def start_processes(commands, env=None) -> list[subprocess.Popen]:
  """Starts each command in the repository, text output piped; `env` defaults to `cpu_env()`."""
  return [
    subprocess.Popen(
      command,
      cwd=REPO,
      env=env or cpu_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for command in commands
  ]


# What pip builds the package from: copied, so that a build leaves no build/ in the repository.
PACKAGE_FILES = ("convnet", "configs", "setup.cfg", "pyproject.toml", "README.md")
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]


def copy_package_source(destination) -> str:
  """The files pip builds the package from, copied into `destination` (caches left out)."""
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
  for name in PACKAGE_FILES:
    path = os.path.join(REPO, name)
    if os.path.isdir(path):
      shutil.copytree(path, os.path.join(destination, name), ignore=ignore)
    else:
      shutil.copy(path, os.path.join(destination, name))
  return str(destination)


def book_state(config, input_shape=(28, 28, 1), num_classes=10, seed=0):
  """A fresh train state of `config`'s model, for steps run by hand."""
  from convnet import models, optim, steps

  model = models.create_model(config.model, input_shape, num_classes)
  tx = optim.create_optimizer(config.optimizer, 10, 10)
  return steps.create_train_state(jax.random.key(seed), model, input_shape, tx)


def main_command(workdir, *flags) -> list[str]:
  """`python -m convnet.main` on the book's config file, in `workdir`, with `flags`."""
  return [
    sys.executable,
    "-m",
    "convnet.main",
    "--config=configs/mnist.py",
    f"--workdir={workdir}",
    *flags,
  ]
