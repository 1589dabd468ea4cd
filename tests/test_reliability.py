"""docs/reliability.md's promises, one test (or more) each.

1. exact resume after SIGKILL; SIGTERM and SIGINT save before exiting;
2. atomic outputs (a torn metrics line: see test_train.test_resume_mid_epoch_is_exact);
3. one writer per workdir;
4. a non-finite loss stops the run, and the sweep records it;
5. config fuzzing (tests/test_config_fuzz.py);
6. bad data (here for the embedded digits; IDX and TFDS in test_input_pipeline.py);
7. bad checkpoints;
8. determinism across processes.
"""

import contextlib
import gzip
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from convnet import preemption, sweep, train
from convnet import seeds as seeds_lib
from convnet.errors import (
  CheckpointError,
  DataError,
  DivergedError,
  RunInterrupted,
  WorkdirInUseError,
)
from convnet.sources import embedded as embedded_source
from tests.conftest import main_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("wall_time_s", "train_examples_per_sec")
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="")

# The same run in and out of process: one epoch, 13 steps, of the book's convnet on the
# embedded digits.
FLAGS = {
  "data.source": "embedded",
  "batch_size": 256,
  "num_epochs": 1,
  "checkpoint_every_steps": 3,
  "log_every_steps": 3,
  "checkpoint_keep": 50,
}


def _main_command(workdir, **extra):
  return main_command(workdir, *[f"--config.{k}={v}" for k, v in (FLAGS | extra).items()])


def _configure(config, **extra):
  for key, value in (FLAGS | extra).items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    setattr(node, leaf, value)
  return config


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _final_params(workdir):
  directory = os.path.join(workdir, "checkpoints")
  with ocp.CheckpointManager(directory) as manager:
    step = manager.latest_step()
    restored = manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(), loop=ocp.args.JsonRestore()),
    )
  return step, restored.state["params"]


def _checkpoint_steps(workdir):
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(p) for p in os.listdir(directory) if p.isdigit())


def _assert_same_tree(a, b):
  if isinstance(a, dict):
    assert sorted(a) == sorted(b)
    for key in a:
      _assert_same_tree(a[key], b[key])
  else:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise, not approximately


def _tree_digest(directory):
  digest = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(directory)):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      digest.update(path.encode())
      with open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


def _wait_for(condition, proc, timeout=240):
  deadline = time.time() + timeout
  while not condition():
    assert proc.poll() is None, "the run ended before the test could signal it"
    assert time.time() < deadline, "timed out"
    time.sleep(0.02)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted run, in a process of its own."""
  workdir = tmp_path_factory.mktemp("straight")
  done = subprocess.run(_main_command(workdir), cwd=REPO, env=ENV, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  return str(workdir)


# 1. Exact resume.


@pytest.mark.slow
def test_sigkill_at_a_random_point_then_rerun_is_the_same_run_bitwise(straight, tmp_path):
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(
    _main_command(workdir), cwd=REPO, env=ENV, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
  )
  _wait_for(lambda: _checkpoint_steps(workdir), proc)  # trained past step 3
  time.sleep(random.Random(os.getpid()).uniform(0.0, 0.3))
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = _checkpoint_steps(workdir)[-1]
  assert killed_at < 13, "killed too late: the run had finished"

  rerun = subprocess.run(_main_command(workdir), cwd=REPO, env=ENV, capture_output=True, text=True)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"Resumed from checkpoint at step {killed_at}" in rerun.stderr
  assert _metrics(workdir) == _metrics(straight)
  step, params = _final_params(workdir)
  assert step == 13
  _assert_same_tree(params, _final_params(straight)[1])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_a_checkpoint_before_exiting(straight, tmp_path, signum):
  workdir = tmp_path / "signalled"
  command = _main_command(workdir, checkpoint_every_steps=0, log_every_steps=1)
  proc = subprocess.Popen(
    command, cwd=REPO, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
  )
  metrics = workdir / "metrics.jsonl"
  _wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0, proc)
  proc.send_signal(signum)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signum, stderr[-3000:]
  name = signal.Signals(signum).name
  saved = _checkpoint_steps(workdir)
  assert len(saved) == 1 and 0 < saved[0] < 13  # mid-epoch: the epoch's end is step 13
  assert f"{name} at step {saved[0]}: checkpoint saved" in stderr
  assert "Traceback" not in stderr
  if signum == signal.SIGINT:
    return  # One rerun is enough to show the saved checkpoint resumes.
  rerun = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"Resumed from checkpoint at step {saved[0]}" in rerun.stderr
  _assert_same_tree(_final_params(workdir)[1], _final_params(straight)[1])


class _StopAt:
  """A stop request (SIGTERM) that the loop finds from its `at`-th look on."""

  def __init__(self, at):
    self.looks, self.at = 0, at

  def requested(self, step):
    self.looks += 1
    return signal.SIGTERM if self.looks >= self.at else 0


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [None, [3, 1]], ids=["single", "group"])
def test_a_stop_request_saves_mid_epoch_and_the_rerun_is_the_same_run(
  config, tmp_path, monkeypatch, seeds
):
  """A single run and a vmapped group stop alike: checkpoint, RunInterrupted, exact resume."""
  config.num_epochs, config.steps_per_call = 2, 4
  config.log_every_steps = config.checkpoint_every_steps = 0

  def run(workdir):
    if seeds is None:
      return [train.train_and_evaluate(config, str(workdir))]
    return seeds_lib.train_seeds(config, seeds, str(workdir))

  straight = run(tmp_path / "straight")
  # The loop looks before each call of 4 steps: the third look is at step 8, mid-epoch 1 of 13.
  monkeypatch.setattr(preemption, "stop_requests", lambda: contextlib.nullcontext(_StopAt(3)))
  with pytest.raises(RunInterrupted, match="SIGTERM at step 8: checkpoint saved"):
    run(tmp_path / "stopped")
  assert _checkpoint_steps(tmp_path / "stopped") == [8]
  monkeypatch.undo()
  resumed = run(tmp_path / "stopped")
  for a, b in zip(resumed, straight, strict=True):
    assert {k: v for k, v in a.items() if k not in TIMING} == {
      k: v for k, v in b.items() if k not in TIMING
    }
  members = [""] if seeds is None else [f"seed_{s}" for s in seeds]
  for member in members:
    assert _metrics(tmp_path / "stopped" / member) == _metrics(tmp_path / "straight" / member)
  _assert_same_tree(_final_params(tmp_path / "stopped")[1], _final_params(tmp_path / "straight")[1])


# 3. One writer per workdir.

HOLD_LOCK = """
import sys, time
from convnet import workdir as workdir_lib
with workdir_lib.lock(sys.argv[1]):
  print("locked", flush=True)
  time.sleep(120)
"""


@pytest.mark.slow
def test_a_busy_workdir_is_refused_and_a_dead_holder_does_not_block(config, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen(
    [sys.executable, "-c", HOLD_LOCK, str(workdir)], cwd=REPO, stdout=subprocess.PIPE, text=True
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    config.max_steps = 2
    start = time.time()
    with pytest.raises(WorkdirInUseError, match=f"{workdir} is in use by pid {holder.pid} on "):
      train.train_and_evaluate(config, str(workdir))
    assert time.time() - start < 30  # at once, not after a wait
    assert sorted(os.listdir(workdir)) == [".lock"]  # the refused run wrote nothing
  finally:
    holder.kill()  # SIGKILL: the holder cannot clean up
    holder.wait()
  result = train.train_and_evaluate(config, str(workdir))
  assert result["step"] == 2


@pytest.mark.slow
def test_a_sweep_leaves_a_cell_that_another_process_runs_to_it(config, tmp_path):
  config.model.name = "dense"
  config.max_steps = 2
  busy = tmp_path / "cells" / "seed=0"
  busy.mkdir(parents=True)
  holder = subprocess.Popen(
    [sys.executable, "-c", HOLD_LOCK, str(busy)], cwd=REPO, stdout=subprocess.PIPE, text=True
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    records = sweep.run_sweep(
      config, sweep.expand(lambda: sweep.axis("seed", [0, 1])), str(tmp_path)
    )
  finally:
    holder.kill()
    holder.wait()
  assert [r["cell"] for r in records] == ["seed=1"]
  assert sorted(os.listdir(tmp_path / "records")) == ["seed=1.json", "seed=1.test_predictions.npz"]


# 4. Non-finite loss.


def test_divergence_stops_with_the_step_and_keeps_the_good_checkpoint(config, tmp_path):
  config.model.name = "dense"
  config.max_steps = 4
  train.train_and_evaluate(config, str(tmp_path))  # a good checkpoint at step 4
  good = _tree_digest(tmp_path / "checkpoints" / "4")
  os.remove(tmp_path / "config.json")  # lets the same run go on with a new learning rate
  config.optimizer.learning_rate = 1e20
  config.max_steps = 12
  config.checkpoint_every_steps = 1
  with pytest.raises(DivergedError) as error:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  match = re.search(
    r"(loss became (nan|inf) at step|parameters stopped being finite by step) (\d+)", message
  )
  assert match, message
  assert "learning_rate" in message
  assert _tree_digest(tmp_path / "checkpoints" / "4") == good
  for step in _checkpoint_steps(tmp_path):  # whatever was saved holds finite parameters
    assert step < int(match[3]) or step == 4
    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(), loop=ocp.args.JsonRestore()),
      )
    assert all(np.isfinite(np.asarray(x)).all() for x in _leaves(restored.state["params"]))
  assert all(np.isfinite(r["train_loss"]) for r in _metrics(tmp_path) if "train_loss" in r)


def test_finite_parameters_that_overflow_in_evaluation_are_a_divergence_not_a_result(
  config, tmp_path
):
  config.model.name = "dense"
  config.max_steps = 1  # one step at 1e20: a finite training loss, then logits that overflow
  config.optimizer.learning_rate = 1e20
  with pytest.raises(DivergedError, match=r"the validation loss became nan at step 1\. No "):
    train.train_and_evaluate(config, str(tmp_path))
  records = _metrics(tmp_path) if (tmp_path / "metrics.jsonl").exists() else []
  assert not [r for r in records if r["kind"] == "epoch"]  # no result recorded
  assert not _checkpoint_steps(tmp_path)  # nothing saved


def _leaves(tree):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _leaves(value)
  else:
    yield tree


def test_a_sweep_records_a_diverged_cell_and_goes_on(config, tmp_path):
  config.model.name = "dense"
  config.max_steps = 6
  config.steps_per_call = 1
  cells = sweep.expand(lambda: sweep.axis("optimizer.learning_rate", [1e20, 1e-3]))
  records = sweep.run_sweep(config, cells, str(tmp_path))
  assert [r["status"] for r in records] == ["diverged", "done"]
  assert "DivergedError" in records[0]["error"] and "learning_rate" in records[0]["error"]


# 5. Config checks: a typo on the command line (random configs: test_config_fuzz.py).


@pytest.mark.parametrize("module, flag", [("main", "config"), ("sweep", "sweep")])
def test_an_unknown_field_on_the_command_line_is_one_line(tmp_path, module, flag):
  config_file = "configs/mnist.py" if module == "main" else "configs/sweeps/stride.py"
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      f"convnet.{module}",
      f"--{flag}={config_file}",
      f"--workdir={tmp_path}",
      f"--{flag}.data.sorce=embedded",
    ],
    cwd=REPO,
    env=ENV,
    capture_output=True,
    text=True,
  )
  assert done.returncode == 2  # a usage error, as absl's own
  assert "Traceback" not in done.stderr
  assert done.stderr.strip().splitlines()[-1] == (
    f"error: --{flag}.data.sorce=embedded: the config has no field 'sorce'. "
    'Did you mean "source" instead of "sorce"?'
  )
  assert os.listdir(tmp_path) == []  # nothing was written


# 6. Bad data: the embedded digits' reader. (IDX and TFDS: test_input_pipeline.py.)


def _csv_rows(n, label=3):
  return "".join(",".join(["0"] * 784 + [str(label)]) + "\n" for _ in range(n))


@pytest.mark.parametrize(
  "name, content, message",
  [
    ("missing.csv", None, "no such file"),
    ("empty.csv", "", "expected rows of 784 pixels and a label"),
    ("short_row.csv", _csv_rows(3) + "1,2,3\n", "not a CSV of 784 pixels and a label"),
    ("label.csv", _csv_rows(20) + _csv_rows(20, label=12), "label 12 is out of range"),
    ("truncated.csv.gz", "truncated", "not a CSV of 784 pixels"),
    ("pixels.csv", _csv_rows(20).replace("0,", "300,", 1), "whole numbers in 0..255"),
  ],
)
@pytest.mark.filterwarnings("error::UserWarning")  # the error's line is all the user sees
def test_bad_embedded_files_are_named(tmp_path, name, content, message):
  path = tmp_path / name
  if content == "truncated":
    data = gzip.compress(_csv_rows(40).encode())
    path.write_bytes(data[: len(data) // 2])
  elif content is not None:
    path.write_text(content)
  with pytest.raises(DataError, match=f"{path}.*{message}|{message}.*{path}"):
    embedded_source.load_embedded(str(path))


# 7. Bad checkpoints.


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_reported_and_left_as_it_is(config, tmp_path):
  config.max_steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  files = [
    os.path.join(root, name)
    for root, _, names in os.walk(tmp_path / "checkpoints" / "2" / "state")
    for name in names
  ]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)
  before = _tree_digest(tmp_path / "checkpoints")
  config.max_steps = 4
  with pytest.raises(CheckpointError, match="cannot be restored.*start fresh"):
    train.train_and_evaluate(config, str(tmp_path))
  assert _tree_digest(tmp_path / "checkpoints") == before


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_reported_and_left_as_it_is(config, tmp_path):
  config.max_steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  os.remove(tmp_path / "config.json")  # nothing left to compare configs with
  before = _tree_digest(tmp_path / "checkpoints")
  config.model.conv.features = (8, 16, 16)
  with pytest.raises(CheckpointError, match=r"checkpoints/2 cannot be restored.*start fresh"):
    train.train_and_evaluate(config, str(tmp_path))
  assert _tree_digest(tmp_path / "checkpoints") == before


# 8. Determinism across processes.


@pytest.mark.slow
def test_same_config_and_seed_same_metrics_in_another_process(straight, config, tmp_path):
  """The module's subprocess run against this process's own run of the same config."""
  result = train.train_and_evaluate(_configure(config), str(tmp_path))
  assert result["step"] == 13
  assert _metrics(tmp_path) == _metrics(straight)
  _assert_same_tree(_final_params(tmp_path)[1], _final_params(straight)[1])
