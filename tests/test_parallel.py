"""Data parallelism: 8 CPU devices and two processes against one device, same global batch."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import cpu_env, free_address, start_processes

from convnet import parallel, train
from convnet.configs import mnist
from convnet.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a process of its own with 8 CPU devices (XLA_FLAGS must be set before JAX starts).
EIGHT_DEVICES = textwrap.dedent(
  """
  import json, sys
  import jax
  import numpy as np
  from convnet.configs import mnist
  from convnet import parallel, train

  workdir = sys.argv[1]
  assert jax.device_count() == 8, jax.devices()

  def config(mesh_shape, max_steps):
    c = mnist.get_config()
    c.data.source = "embedded"
    c.batch_size = 128
    c.microbatch_size = 64  # 8 examples a device in each microbatch
    c.eval_batch_size = 128  # the 1,000 test images: 7 batches, and 104 in a padded last one
    c.max_steps = max_steps
    c.log_every_steps = 2
    c.mesh_shape = mesh_shape
    return c

  out = {}
  for name, mesh_shape in (("eight", -1), ("one", 1)):
    out[name] = train.train_and_evaluate(config(mesh_shape, 10), f"{workdir}/{name}")
  # Half the run on 8 devices, resumed on 1.
  train.train_and_evaluate(config(-1, 6), f"{workdir}/moved")
  out["moved"] = train.train_and_evaluate(config(1, 10), f"{workdir}/moved")

  # How the batch is laid out: each device holds its 16 of the 128.
  mesh = parallel.create_mesh(-1)
  batch = parallel.put(np.zeros((128, 28, 28, 1), np.float32), parallel.batch_sharding(mesh))
  out["shard_shapes"] = sorted({s.data.shape for s in batch.addressable_shards})
  out["devices"] = mesh.size
  print("RESULT " + json.dumps(out))
  """
)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [r["train_loss"] for r in records if r["kind"] == "train"], records[-1]


def _result(process):
  assert process.returncode == 0, process.stderr[-3000:]
  line = [x for x in process.stdout.splitlines() if x.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
def test_eight_devices_train_as_one_with_the_same_global_batch(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=REPO)
  process = subprocess.run(
    [sys.executable, "-c", EIGHT_DEVICES, str(tmp_path)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  out = _result(process)
  assert out["devices"] == 8 and out["shard_shapes"] == [[16, 28, 28, 1]]
  eight, eight_last = _losses(tmp_path / "eight")
  one, one_last = _losses(tmp_path / "one")
  moved, _ = _losses(tmp_path / "moved")
  assert len(eight) == 5
  np.testing.assert_allclose(eight, one, rtol=1e-5)
  np.testing.assert_allclose(moved, one, rtol=1e-5)
  assert eight[-1] < eight[0] - 0.2  # it trained
  for key in ("validation_loss", "test_loss"):
    np.testing.assert_allclose(eight_last[key], one_last[key], rtol=1e-5, err_msg=key)
  for key in ("validation_accuracy", "test_accuracy"):
    assert eight_last[key] == one_last[key], key
  # Every test image counted once: accuracy is a whole number of the 1,000.
  assert round(eight_last["test_accuracy"] * 1000, 6).is_integer()
  for name in ("eight", "one", "moved"):
    np.testing.assert_allclose(out[name]["test_loss"], out["one"]["test_loss"], rtol=1e-5)


@pytest.mark.slow
def test_two_processes_train_as_one(tmp_path):
  """Two processes on loopback, one CPU device each, against one process on one device."""
  overrides = [
    "--config=configs/mnist.py",
    "--config.data.source=embedded",
    "--config.max_steps=6",
    "--config.log_every_steps=2",
  ]
  processes = _two_processes(tmp_path / "two", overrides, free_address())
  outputs = [p.communicate(timeout=300) for p in processes]
  for p, (_, stderr) in zip(processes, outputs, strict=True):
    assert p.returncode == 0, stderr[-3000:]
  assert "data parallel over 2 device(s) in 2 process(es)" in outputs[0][1]
  single = subprocess.run(
    [sys.executable, "-m", "convnet.main", f"--workdir={tmp_path / 'one'}", *overrides],
    cwd=REPO,
    env=cpu_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert single.returncode == 0, single.stderr[-3000:]
  two, two_last = _losses(tmp_path / "two")
  one, one_last = _losses(tmp_path / "one")
  assert len(two) == 3  # process 0 alone wrote the metrics: no line twice
  np.testing.assert_allclose(two, one, rtol=1e-5)
  np.testing.assert_allclose(two_last["test_loss"], one_last["test_loss"], rtol=1e-5)
  assert two_last["test_accuracy"] == one_last["test_accuracy"]
  assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["6"]


def test_batches_that_do_not_split_across_devices_are_named():
  config = mnist.get_config()
  parallel.check_batch_sizes(config, 8)  # 128, 1024 and 64 split 8 ways
  config.batch_size = 100
  with pytest.raises(ConfigError, match=r"batch_size=100 does not split evenly across .* 8 dev"):
    parallel.check_batch_sizes(config, 8)
  config.batch_size, config.eval_batch_size = 128, 1000
  with pytest.raises(ConfigError, match=r"eval_batch_size=1000 does not split evenly"):
    parallel.check_batch_sizes(config, 16)


@pytest.mark.parametrize("mesh_shape", [0, -2, 2])
def test_impossible_mesh_shapes_are_named(mesh_shape, tmp_path):
  config = mnist.get_config()
  config.data.source = "embedded"
  config.mesh_shape = mesh_shape
  with pytest.raises(ConfigError, match=f"mesh_shape={mesh_shape}"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


def _two_processes(workdir, overrides, address):
  """Two `convnet.main` processes joined on loopback at `address`, one CPU device each."""
  return start_processes(
    [
      [
        sys.executable,
        "-m",
        "convnet.main",
        f"--workdir={workdir}",
        f"--coordinator_address={address}",
        "--num_processes=2",
        f"--process_id={i}",
        *overrides,
      ]
      for i in range(2)
    ]
  )


@pytest.mark.slow
def test_a_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
  """Both save one checkpoint at the step they agree on, exit 143, and the rerun finishes."""
  import time

  workdir = tmp_path / "two"
  overrides = [
    "--config=configs/mnist.py",
    "--config.data.source=embedded",
    "--config.num_epochs=3",
    "--config.steps_per_call=1",
    "--config.log_every_steps=1",
  ]
  processes = _two_processes(workdir, overrides, free_address())
  deadline = time.time() + 240
  metrics = workdir / "metrics.jsonl"
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    assert all(p.poll() is None for p in processes), processes[0].communicate()[1][-3000:]
    assert time.time() < deadline, "timed out"
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGTERM)  # only the second process hears it
  outputs = [p.communicate(timeout=240) for p in processes]
  stops = []
  for p, (_, stderr) in zip(processes, outputs, strict=True):
    assert p.returncode == 143, stderr[-3000:]
    stops.append(re.search(r"SIGTERM at step (\d+): checkpoint saved", stderr)[1])
  assert stops[0] == stops[1]
  assert sorted(os.listdir(workdir / "checkpoints")) == [stops[0]]
  assert int(stops[0]) < 78  # mid-run
  again = _two_processes(workdir, overrides, free_address())
  outputs = [p.communicate(timeout=300) for p in again]
  for p, (_, stderr) in zip(again, outputs, strict=True):
    assert p.returncode == 0, stderr[-3000:]
  records = [json.loads(line) for line in metrics.read_text().splitlines()]
  assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 79))
  assert [r["step"] for r in records if r["kind"] == "epoch"] == [26, 52, 78]
