"""scripts/mnist1d_gap.py: PyTorch's initialisation and the authors' fixed batch order."""

import importlib.util
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from convnet import epochs, models, steps
from convnet.configs.sweeps import mnist1d_paper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_script():
  path = os.path.join(REPO, "scripts", "mnist1d_gap.py")
  spec = importlib.util.spec_from_file_location("mnist1d_gap", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def test_torch_like_parameters_are_uniform_within_one_over_root_fan_in():
  script = _load_script()
  model = models.create_model(mnist1d_paper.get_config().model, (40, 1), 10)
  params = steps.init_params(model, jax.random.key(0), (40, 1))
  new = script.torch_like_params(params, jax.random.key(1))
  assert jax.tree.map(np.shape, new) == jax.tree.map(np.shape, params)
  for layer, fan_in in (("conv_0", 5 * 1), ("conv_1", 3 * 25), ("logits", 125)):
    bound = 1 / math.sqrt(fan_in)
    for name in ("kernel", "bias"):
      values = np.asarray(new[layer][name])
      assert np.abs(values).max() <= bound, (layer, name)
    kernel = np.asarray(new[layer]["kernel"])
    assert abs(kernel.std() - bound / 3**0.5) < 0.3 * bound  # a uniform's spread


def test_importing_the_script_defines_no_flags():
  """Its flags would join the importing process's (pytest's): a required --out broke others."""
  before = set(flags.FLAGS)
  _load_script()
  assert set(flags.FLAGS) == before


def test_the_variants_patch_and_flax_restores():
  script = _load_script()
  plain_order = epochs.epoch_order
  try:
    script.patch("fixed_order")
    assert epochs.epoch_order is not plain_order
    np.testing.assert_array_equal(epochs.epoch_order(4, 7, 3, 10), [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    script.patch("both")
    assert steps.create_train_state is not script.PLAIN[0]
  finally:
    script.patch("flax")
  assert (steps.create_train_state, epochs.epoch_order) == script.PLAIN
  assert epochs.epoch_order is plain_order


BAD_FLAGS = {
  "empty out": (["--out="], "error: --out is empty: name a folder"),
  "no variants": (
    ["--out=OUT", "--variants="],
    "error: --variants: give one or more of flax, torch_init",
  ),
  "unknown variant": (["--out=OUT", "--variants=nope"], "error: --variants: give one or more of"),
}


@pytest.fixture(scope="module")
def bad_flag_runs(tmp_path_factory):
  """The script run with each mistake, each in a folder of its own; started together, since each
  spends seconds importing."""
  started = {}
  for name, (given, _) in BAD_FLAGS.items():
    folder = tmp_path_factory.mktemp("bad_flags")
    given = [f.replace("OUT", str(folder / "out")) for f in given]
    started[name] = (
      folder,
      subprocess.Popen(
        [sys.executable, os.path.join(REPO, "scripts", "mnist1d_gap.py"), *given],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      ),
    )
  return {
    name: (folder, process.communicate(timeout=120)[1], process.returncode)
    for name, (folder, process) in started.items()
  }


@pytest.mark.parametrize("name", list(BAD_FLAGS))
def test_bad_flags_are_one_line_before_any_training(bad_flag_runs, name):
  folder, stderr, returncode = bad_flag_runs[name]
  message = BAD_FLAGS[name][1]
  lines = [line for line in stderr.splitlines() if not line.startswith(("I1", "W1"))]
  assert returncode != 0 and lines == [lines[0]] and lines[0].startswith(message), stderr
  assert not os.listdir(folder)  # nothing trained, nothing written
