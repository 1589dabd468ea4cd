"""The benchmark's pieces, at sizes that run in seconds (no timing is asserted)."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from convnet import benchmark, frameworks

OPTIONS = {"steps_per_call": 2, "microbatch_size": 4}


def test_frameworks_missing_here_are_skipped_and_named():
  run, skipped = benchmark.available_frameworks(["project", "flax", "torch", "keras"])
  assert run[:2] == ["project", "flax"]
  torch_here = importlib.util.find_spec("torch") is not None
  assert ("torch" in run) == torch_here and ("torch" in skipped) == (not torch_here)
  assert sorted(run + skipped) == sorted(["project", "flax", "torch", "keras"])


def test_flops_come_from_xla_and_match_the_layer_arithmetic():
  flops = benchmark.step_flops(batch_size=8, eval_batch_size=8)
  # Forward multiply-adds of the book's convnet, per example.
  forward = 2 * (
    26 * 26 * 16 * 9 * 1 + 11 * 11 * 32 * 9 * 16 + 3 * 3 * 32 * 9 * 32 + 288 * 64 + 64 * 10
  )
  assert forward == pytest.approx(1.5e6, rel=0.05)
  assert flops["eval_flops_per_example"] == pytest.approx(forward, rel=0.1)
  # Training is the forward pass and about twice as much again for the gradients.
  assert 2.5 * forward < flops["train_flops_per_example"] < 3.5 * forward


@pytest.mark.slow  # a worker process that compiles and times the steps
def test_throughput_of_the_project_path_in_a_worker():
  options = {"steps_per_call": 2, "microbatch_size": 4}
  results = benchmark.measure_throughput(["project"], 8, 1, 32, 16, options)
  r = results["project"]
  assert set(r) == {
    "startup_s",
    "first_step_s",
    "peak_rss_mb",
    "train_examples_per_sec",
    "eval_examples_per_sec",
  }
  assert all(value > 0 for value in r.values())
  table = benchmark.format_table(
    {
      "matmul_peak_gflops": {"float32": 100.0},
      "flops": {"train_flops_per_example": 4.5e6},
      "throughput": {"8": {"float32": results}},
    }
  )
  assert table.splitlines()[2].startswith("| 8 | float32 | project |")


@pytest.mark.slow  # compiles and times a group's steps both ways
def test_seeds_at_once_and_one_after_another():
  r = benchmark.measure_seeds(2, 8, 4, {"steps_per_call": 2, "microbatch_size": 4}, rounds=1)
  assert r["vmap_microbatch_size"] == 2
  assert r["vmap_examples_per_sec"] > 0 and r["sequential_examples_per_sec"] > 0


def test_paths_that_would_fail_after_the_measurements_are_refused_before_them(tmp_path):
  from convnet import benchmark
  from convnet.errors import DataError, WorkdirError

  out = str(tmp_path / "benchmark.json")
  benchmark.check_paths("", out)  # no time-to-accuracy run, a file in a folder that exists
  with pytest.raises(DataError, match="--fashion_mnist_dir: .*no such folder"):
    benchmark.check_paths(str(tmp_path / "missing"), out)
  (tmp_path / "idx").mkdir()
  with pytest.raises(DataError, match="missing train-images-idx3-ubyte"):
    benchmark.check_paths(str(tmp_path / "idx"), out)
  for bad in (str(tmp_path / "no_folder" / "b.json"), str(tmp_path)):
    with pytest.raises(WorkdirError, match="--out="):
      benchmark.check_paths("", bad)


def _measured(rate):
  return {
    "train_examples_per_sec": rate,
    "eval_examples_per_sec": 2 * rate,
    "first_step_s": 0.5,
    "startup_s": 3.0,
    "peak_rss_mb": 500.0,
  }


def test_table_has_a_row_per_batch_dtype_and_framework_against_the_best_peer():
  results = {
    "matmul_peak_gflops": {"float32": 100.0, "bfloat16": 200.0},
    "flops": {"train_flops_per_example": 1e6},
    "throughput": {
      "128": {
        "float32": {"project": _measured(8000), "torch": _measured(4000), "keras": _measured(5000)},
        "bfloat16": {
          "project": _measured(10000),
          "flax": {"skipped": "failed in bfloat16: ValueError: no"},
          "torch": _measured(4000),
          "keras": {"skipped": "not installed"},
        },
      }
    },
  }
  header, _, *rows = benchmark.format_table(results).splitlines()
  assert "| dtype |" in header and "vs best peer" in header
  cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
  assert [c[:3] for c in cells] == [
    ["128", "float32", "project"],
    ["128", "float32", "torch"],
    ["128", "float32", "keras"],
    ["128", "bfloat16", "project"],
    ["128", "bfloat16", "flax"],
    ["128", "bfloat16", "torch"],
    ["128", "bfloat16", "keras"],
  ]
  # Over keras's 5,000 in float32; over torch's 4,000 in bfloat16, where keras is skipped.
  assert [c[4] for c in cells] == ["1.60x", "0.80x", "1.00x", "2.50x", "-", "1.00x", "-"]
  # 8,000 ex/s x 1 MFLOP of 100 GFLOP/s; 10,000 ex/s of bfloat16's 200 GFLOP/s.
  assert cells[0][5] == "8.0%" and cells[3][5] == "5.0%"
  assert cells[4][3] == "skipped: failed in bfloat16: ValueError: no"
  assert all(len(c) == len(cells[0]) for c in cells)


def test_table_reads_an_older_file_with_one_float32_peak():
  old = {
    "matmul_peak_gflops": 100.0,
    "flops": {"train_flops_per_example": 1e6},
    "throughput": {"32": {"project": _measured(8000), "keras": _measured(4000)}},
  }
  rows = benchmark.format_table(old).splitlines()[2:]
  assert rows[0].startswith("| 32 | float32 | project | 8,000 | 2.00x | 8.0% |")
  assert benchmark.upgrade_results(old)["matmul_peak_gflops"] == {"float32": 100.0}


def test_matmul_peak_is_measured_per_dtype():
  assert benchmark.matmul_peak_gflops("bfloat16", size=64, repeats=1) > 0
  with pytest.raises(ValueError, match="float16"):
    benchmark.matmul_peak_gflops("float16", size=64, repeats=1)


def test_a_framework_that_cannot_compute_in_a_dtype_is_skipped_with_its_reason(monkeypatch):
  monkeypatch.setattr(
    frameworks, "unsupported_reason", lambda f, d: "no bf16 here" if f == "keras" else None
  )
  results = benchmark.measure_throughput(["keras"], 8, 1, 16, 8, OPTIONS, "bfloat16")
  assert results == {"keras": {"skipped": "no bf16 here"}}


class _Pipe:
  def __init__(self):
    self.sent = []

  def send(self, message):
    self.sent.append(message)


@pytest.mark.parametrize(
  "error, reason",
  [
    (frameworks.UnsupportedDtype("no model.dtype"), "no model.dtype"),
    (RuntimeError("no kernel\nmore"), "failed in bfloat16: RuntimeError: no kernel"),
  ],
)
def test_a_worker_that_fails_in_bfloat16_answers_skipped(error, reason, monkeypatch):
  def runner(*args):
    raise error

  monkeypatch.setitem(frameworks.RUNNERS, "torch", runner)
  conn = _Pipe()
  frameworks.worker(conn, "torch", 8, 16, OPTIONS, 8, 0.0, "bfloat16")
  assert conn.sent == [{"skipped": reason}]


def test_a_worker_that_fails_in_float32_raises(monkeypatch):
  def runner(*args):
    raise RuntimeError("no kernel")

  monkeypatch.setitem(frameworks.RUNNERS, "torch", runner)
  with pytest.raises(RuntimeError, match="no kernel"):
    frameworks.worker(_Pipe(), "torch", 8, 16, OPTIONS, 8, 0.0, "float32")


@pytest.mark.parametrize("implementation", ["matmul", "lax"])
def test_the_book_config_computes_in_the_dtype_asked_for(implementation):
  from convnet import models

  for dtype in frameworks.DTYPES:
    config = frameworks.book_config(implementation, dtype)
    model = models.create_model(config.model, frameworks.INPUT_SHAPE, frameworks.NUM_CLASSES)
    assert (model.implementation, model.dtype) == (implementation, dtype)
  assert frameworks.unsupported_reason("project", "bfloat16") is None
  assert "float16" in frameworks.unsupported_reason("flax", "float16")


@pytest.mark.slow  # initialises and applies the model four times (5 s)
@pytest.mark.parametrize("framework", ["project", "flax"])
def test_jax_runners_compute_in_bfloat16_with_float32_parameters(framework):
  import jax

  runner = frameworks.JaxRunner(framework, 8, 16, OPTIONS, "bfloat16")
  state = runner.state
  assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))} <= {
    np.dtype("float32"),
    np.dtype("int32"),
  }
  x = runner.images[:4]
  mixed = state.apply_fn({"params": state.params}, x)
  float32 = frameworks.JaxRunner(framework, 8, 16, OPTIONS, "float32").state
  exact = float32.apply_fn({"params": state.params}, x)
  assert mixed.dtype == exact.dtype == np.float32
  difference = float(np.max(np.abs(mixed - exact)))
  assert 0 < difference < 0.05 * float(np.max(np.abs(exact)))


def test_torch_runner_computes_convs_in_bfloat16_with_float32_parameters():
  torch = pytest.importorskip("torch")
  dtypes = {}
  for dtype in ("float32", "bfloat16"):
    runner = frameworks.TorchRunner("torch", 4, 8, OPTIONS, dtype)
    runner.model[0].register_forward_hook(lambda m, i, out, d=dtype: dtypes.update({d: out.dtype}))
    runner.train(1)
    state = [v for s in runner.optimizer.state.values() for v in s.values() if v.dim()]
    assert state and all(v.dtype == torch.float32 for v in state)
    assert all(p.dtype == torch.float32 for p in runner.model.parameters())
  assert dtypes == {"float32": torch.float32, "bfloat16": torch.bfloat16}


@pytest.mark.slow  # imports TensorFlow (5 s)
def test_keras_runner_computes_in_bfloat16_with_float32_variables_and_logits():
  keras = pytest.importorskip("keras")
  before = keras.mixed_precision.global_policy().name
  runner = frameworks.KerasRunner("keras", 4, 8, OPTIONS, "bfloat16")
  assert keras.mixed_precision.global_policy().name == before  # put back after building
  conv, *_, logits = runner.model.layers
  assert conv.compute_dtype == "bfloat16" and logits.compute_dtype == "float32"
  runner.train(1)
  assert all(v.dtype == "float32" for v in runner.model.trainable_variables)
  assert runner.model.predict(runner.images[:2], verbose=0).dtype == np.float32
  float32 = frameworks.KerasRunner("keras", 4, 8, OPTIONS, "float32")
  assert float32.model.layers[0].compute_dtype == "float32"


OP_PROFILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "op_profile.py")


@pytest.mark.slow
def test_the_op_profile_script_times_every_op_in_both_frameworks_and_the_step_by_layer(tmp_path):
  out = tmp_path / "ops.json"
  done = subprocess.run(
    [
      sys.executable,
      OP_PROFILE,
      "--batch_size=8",
      "--microbatch_size=4",
      "--repeats=1",
      f"--out={out}",
    ],
    capture_output=True,
    text=True,
    env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
  )
  assert done.returncode == 0, done.stderr[-2000:]
  results = json.loads(out.read_text())
  assert "conv_1 conv+pool input gradient" in results["project_ops"]
  assert "conv_1 max pool gradient" in results["tensorflow_ops"]
  assert all(v > 0 for v in results["project_ops"].values())
  # The step's time lands on its layers, forward and backward, not on the loop around them.
  profile = results["step_profile"]
  for layer in ("conv_0", "conv_1", "conv_2"):
    assert profile[f"{layer} forward"] > 0 and profile[f"{layer} backward"] > 0
  assert sum(v for k, v in profile.items() if k.startswith("conv_")) > 0.5 * sum(profile.values())


def test_the_op_profile_script_refuses_a_microbatch_that_does_not_divide_the_batch():
  done = subprocess.run(
    [sys.executable, OP_PROFILE, "--batch_size=10", "--microbatch_size=4"],
    capture_output=True,
    text=True,
  )
  assert done.returncode == 1
  assert done.stderr.strip() == "error: --microbatch_size=4 must divide --batch_size"
