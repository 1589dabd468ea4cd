"""Sizes are refused before they are allocated: a config whose arrays cannot fit stops in one
line naming the fields that make it large, with the estimate against the memory there is; an
order is built only as far as the run trains; the neighbours that fit are not refused.

No test here allocates what it checks: `memory.check` is given the memory to check against, and
the runs are guarded so that, without the check, they stop at their first large allocation."""

import glob
import importlib.util
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from convnet import (
  config_checks,
  epochs,
  input_pipeline,
  memory,
  run_setup,
  steps,
  sweep,
  train,
  workdir,
)
from convnet.errors import ConfigError
from tests.conftest import REPO, cpu_env, main_command

GB = 10**9
EIGHT_GB = (8 * GB, None, "test memory")


def _set(config, **overrides):
  for field, value in overrides.items():
    *path, leaf = field.split("__")
    node = config
    for part in path:
      node = node[part]
    node[leaf] = value
  return config


@pytest.fixture
def eight_gb(monkeypatch):
  """The machine has 8 GB to spare, whatever it really has."""
  monkeypatch.setattr(memory, "available", lambda: EIGHT_GB)


@pytest.fixture
def nothing_allocated(monkeypatch):
  """The data and the model's state, the first large allocations of a run, are not made."""

  def refuse(*args, **kwargs):
    raise AssertionError("allocated before refusing the config")

  monkeypatch.setattr(input_pipeline, "load", refuse)
  monkeypatch.setattr(steps, "create_train_state", refuse)


# ----------------------------------------------------------------------------
# The reported cases.


def test_a_million_filters_are_refused_before_the_data_is_read(
  config, tmp_path, eight_gb, nothing_allocated
):
  # It allocated 7.15 GB, then ended in a 63-line RESOURCE_EXHAUSTED traceback.
  _set(config, model__conv__features=(1000000, 32, 32), max_steps=2)
  with pytest.raises(ConfigError) as error:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  message = str(error.value)
  assert message.startswith(
    "model.conv.features=(1000000, 32, 32), microbatch_size=64: the run would need about "
  )
  assert "more than the 8 GB of test memory; activations: " in message
  assert "676,000,000 of them from conv_0" in message
  assert message.endswith("make model.conv.features or microbatch_size smaller")
  assert "\n" not in message
  assert not (tmp_path / "run").exists()  # nothing written either


class _Ordered(Exception):
  """Stops a run once its first order is built."""


@pytest.mark.parametrize("whole_run", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_five_steps_of_a_ten_million_step_epoch_order_five_batches(
  config, tmp_path, monkeypatch, whole_run
):
  # The whole epoch's order was built for 5 steps: more than 8 GB in 36 s.
  _set(config, steps_per_epoch=10**7, max_steps=5, steps_per_call=5, log_every_steps=0)
  config.data.num_train = 1000
  lengths, plain = [], epochs.epoch_order

  def guarded(num_examples, seed, epoch, length=0):
    lengths.append(length)
    assert length <= 10**6, f"an order of {length:,} indices for 5 steps"
    if not whole_run:
      raise _Ordered
    return plain(num_examples, seed, epoch, length)

  monkeypatch.setattr(epochs, "epoch_order", guarded)
  if not whole_run:  # quick: up to the first order, which the steps would train on
    with pytest.raises(_Ordered):
      train.train_and_evaluate(config, str(tmp_path))
    assert lengths == [5 * config.batch_size]
    return
  result = train.train_and_evaluate(config, str(tmp_path))
  assert lengths == [5 * config.batch_size]
  assert result["step"] == 5 and result["epoch"] == 5 / 10**7


def test_the_order_is_built_only_as_far_as_asked_and_bit_for_bit_the_same():
  def whole_passes(num_examples, seed, epoch, length):  # the order as every pass was built
    passes = [np.random.default_rng([seed, epoch]).permutation(num_examples)]
    while len(passes) * num_examples < length:
      passes.append(np.random.default_rng([seed, epoch, len(passes)]).permutation(num_examples))
    return np.concatenate(passes).astype(np.int32)

  for num_examples, length in [(103, 0), (103, 40), (103, 103), (103, 104), (10, 95), (7, 700)]:
    order = epochs.epoch_order(num_examples, 3, 2, length)
    expected = whole_passes(num_examples, 3, 2, length)
    assert order.dtype == np.int32 and len(order) == (length or num_examples)
    np.testing.assert_array_equal(order, expected[: len(order)])
  assert epochs.order_length(10**7, 5, 128) == 640  # the run's 5 steps, not the epoch
  assert epochs.order_length(13, 26, 256) == 13 * 256  # whole epochs: one epoch's worth
  assert epochs.order_length(13, 7, 256) == 7 * 256


def test_an_epoch_too_long_to_index_is_accepted_where_max_steps_ends_it_sooner(config):
  config.steps_per_epoch = 2**24  # 4.3 billion positions of 256 examples: more than int32 holds
  with pytest.raises(ConfigError, match=re.escape("steps_per_epoch=16777216: an epoch's order")):
    config_checks.validate(config)
  config.max_steps = 5  # 5 batches are ordered
  config_checks.validate(config)


def test_a_number_of_epochs_past_the_step_counter_is_refused_and_big_ints_reach_tensorboard(
  config,
):
  # It trained, then raised a raw TypeError while writing the TensorBoard hyperparameters.
  config.num_epochs = 10**20
  config.max_steps = 5
  with pytest.raises(ConfigError, match=re.escape("num_epochs=100000000000000000000: num_epochs")):
    run_setup.check_before_starting(config, "unused")
  # Where the steps come from the data, the epochs' steps are counted once it is loaded.
  config.num_epochs = 2**31 - 1
  with pytest.raises(ConfigError, match=r"num_epochs=2147483647: .* pass 2,147,483,647 steps"):
    epochs.step_counts(config, 3400)
  # max_steps past int64 is a valid setting (no limit, in effect): TensorBoard gets it as text.
  from tensorboardX.summary import hparams

  config.num_epochs, config.max_steps = 1, 10**20
  values = workdir.hparams(config)
  assert values["max_steps"] == "100000000000000000000" and values["num_epochs"] == 1
  assert hparams(values, {"validation/accuracy": 0.0})


# Sets an address-space limit, then runs the command given: without the check, the run stops
# at its first gigabytes instead of taking the machine.
LIMITED = (
  "import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30)); "
  "os.execv(sys.argv[1], sys.argv[1:])"
)


def test_the_reported_command_is_one_line_in_a_process_that_cannot_take_the_machine(tmp_path):
  command = main_command(
    tmp_path / "run",
    "--config.model.conv.features=(1000000, 32, 32)",
    "--config.max_steps=2",
    "--config.data.source=embedded",
  )
  done = subprocess.run(
    [sys.executable, "-c", LIMITED, *command],
    cwd=REPO,
    env=cpu_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 1, done.stderr[-2000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("error: model.conv.features=(1000000, 32, 32), microbatch_size=64: ")
  assert "Traceback" not in done.stderr
  assert not os.path.exists(tmp_path / "run")


# ----------------------------------------------------------------------------
# Neighbours: each field that sets the size of something allocated.

NEIGHBOURS = [
  # (overrides, the start of the one line)
  ({"batch_size": 10**9}, "batch_size=1000000000: the run would need about 6.27 TB"),
  (  # the whole batch in one pass: 32,768 examples' activations at once
    {"microbatch_size": 0, "batch_size": 32768},
    "batch_size=32768, model.conv.features=(16, 32, 32): the run would need about 11.",
  ),
  (
    {"model__name": "dense", "model__dense_features": (10**7,)},
    "model.dense_features=(10000000,): the run would need about 266 GB",
  ),
  ({"model__dense_features": (10**6,)}, "model.dense_features=(1000000,): the run would need"),
  ({"steps_per_call": 10**9}, "steps_per_call=1000000000: the run would need about 28.3 GB"),
  (  # an epoch of 5,000,000 steps of 256 examples, trained whole
    {"steps_per_epoch": 5 * 10**6},
    "steps_per_epoch=5000000, batch_size=256: the run would need about 10.",
  ),
  (  # Adam keeps two values per parameter: for 300 million parameters, 4.8 GB more than SGD
    {"model__dense_features": (10**6,), "optimizer__name": "adam"},
    "model.dense_features=(1000000,): the run would need about 11 GB",
  ),
]


@pytest.mark.parametrize("overrides,message", NEIGHBOURS)
def test_sizes_that_cannot_fit_are_refused_in_one_line(config, overrides, message):
  _set(config, **overrides)
  with pytest.raises(ConfigError) as error:
    memory.check(config, memory=EIGHT_GB)
  assert str(error.value).startswith(message), str(error.value)
  assert "more than the 8 GB of test memory" in str(error.value)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize(
  "overrides",
  [
    {"steps_per_epoch": 10**7, "max_steps": 5},  # orders 5 batches
    {"model__dense_features": (10**6,), "optimizer__name": "sgd"},  # no slots, unlike Adam
    {"microbatch_size": 0, "batch_size": 4096},
    {"steps_per_call": 10**6},
    {"log_every_steps": 10**9, "checkpoint_every_steps": 10**9},  # counters, not arrays
  ],
)
def test_sizes_that_fit_are_not_refused(config, overrides):
  _set(config, **overrides)
  parts = memory.check(config, memory=EIGHT_GB)
  assert 0 < sum(p.total for p in parts) < 8 * GB


def _digits(num_train, num_test):
  """A dataset of zeros the size of MNIST's splits, without allocating them (broadcast views)."""

  def split(n):
    images = np.broadcast_to(np.float32(0), (n, 28, 28, 1))
    return input_pipeline.Split(images, np.broadcast_to(np.int32(0), (n,)))

  return input_pipeline.Dataset(
    "zeros", split(num_train), split(0), split(num_test), 10, tuple("0123456789")
  )


def test_an_evaluation_batch_is_counted_as_cut_to_the_split(config):
  # An absurd eval batch is cut to the split (as `epochs.eval_batches` cuts it): what fits runs.
  _set(config, microbatch_size=0, eval_batch_size=10**9)
  parts = {p.name: p for p in memory.check(config, 1, 1, _digits(51000, 10000), EIGHT_GB)}
  assert parts["data"].host == (51000 + 10000) * (784 * 4 + 4)
  assert parts["evaluation"].host == 10000 * 784 * 4  # a batch of the 10,000 test examples
  # A million test examples in one batch, though, cannot be evaluated at once.
  million = _digits(51000, 10**6)
  with pytest.raises(ConfigError, match=r"^eval_batch_size=1000000000: .* evaluation: batches of "):
    memory.check(config, 1, 1, million, EIGHT_GB)
  # In batches of 1,024 they can.
  config.eval_batch_size = 1024
  memory.check(config, 1, 1, million, EIGHT_GB)


def test_seeds_trained_together_multiply_what_each_allocates(config):
  one = sum(p.total for p in memory.check(config, 1, memory=EIGHT_GB))
  ten = sum(p.total for p in memory.check(config, 10, memory=EIGHT_GB))
  assert ten == pytest.approx(10 * (one - memory.RUNTIME_BYTES) + memory.RUNTIME_BYTES)
  config.model.dense_features = (2 * 10**5,)  # 58 million parameters: one fits, 10 do not
  memory.check(config, 1, memory=EIGHT_GB)
  with pytest.raises(ConfigError, match=r"^model.dense_features=\(200000,\): .* parameters"):
    memory.check(config, 10, memory=EIGHT_GB)


def test_on_an_accelerator_each_device_is_checked_against_its_own_memory(config):
  config.model.dense_features = (2 * 10**5,)  # about 1.4 GB of state and gradients per device
  host_only = (64 * GB, None, "64 GB")
  memory.check(config, memory=host_only)
  with pytest.raises(ConfigError, match=r"more than the 1 GB of the memory each device has left"):
    memory.check(config, num_devices=1, memory=(64 * GB, GB, "test memory"))
  # Data parallel over 4 devices: each holds the state whole, so 4 devices need no less.
  with pytest.raises(ConfigError, match=r"more than the 1 GB"):
    memory.check(config, num_devices=4, memory=(64 * GB, GB, "test memory"))


def test_the_memory_available_is_read_from_the_host():
  host, device, where = memory.available()
  physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  assert 0 < host <= physical
  assert (device is None) == (jax.default_backend() == "cpu")
  assert where


def test_estimating_allocates_and_compiles_nothing(config, monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("compiled or allocated while estimating")

  monkeypatch.setattr(jax, "jit", refuse)
  config.model.conv.features = (10**6, 10**6, 10**6)
  parts = memory.estimate(config, (28, 28, 1), 10)
  assert sum(p.total for p in parts) > 10**14  # hundreds of terabytes: so none was allocated


CONFIG_FILES = sorted(
  p for p in glob.glob(os.path.join(REPO, "configs", "*.py")) if not p.endswith("__.py")
)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_is_far_below_a_gigabyte(path):
  # Never refused where half a gigabyte is free, beside the data's own size.
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  shape, num_classes = input_pipeline.input_spec(config.data)  # shapes only: nothing is read
  need = sum(p.total for p in memory.estimate(config, shape, num_classes))
  assert need < GB / 2, f"{path}: {memory.format_bytes(need)}"


@pytest.mark.slow  # every cell of every sweep: about 5 s
def test_every_sweep_cell_is_far_below_a_gigabyte():
  cells = 0
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "sweeps", "*.py"))):
    module = sweep.load_sweep_module(path)
    base = module.get_config()
    for cell in sweep.expand(module.sweep):
      config = sweep.apply_overrides(base, cell.overrides)
      shape, num_classes = input_pipeline.input_spec(config.data)
      need = sum(p.total for p in memory.estimate(config, shape, num_classes))
      assert need < GB / 2, f"{path} {cell.name}: {memory.format_bytes(need)}"
      cells += 1
  assert cells > 100


def test_sizes_are_written_in_units_of_a_thousand():
  assert [memory.format_bytes(n) for n in (0, 999, 1500, 21.2e6, 9.57e9, 962e9, 6.27e12)] == [
    "0 B",
    "999 B",
    "1.5 kB",
    "21.2 MB",
    "9.57 GB",
    "962 GB",
    "6.27 TB",
  ]
