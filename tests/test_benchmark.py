"""The benchmark's pieces, at sizes that run in seconds (no timing is asserted)."""

import importlib.util

import pytest

from convnet import benchmark


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
      "matmul_peak_gflops": 100.0,
      "flops": {"train_flops_per_example": 4.5e6},
      "throughput": {"8": results},
    }
  )
  assert table.splitlines()[2].startswith("| 8 | project |")


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
