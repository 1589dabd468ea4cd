"""Shifted and rotated test images for a trained run or sweep: `convnet.invariance`."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
from absl import flags

from convnet import cli, files, input_pipeline, invariance
from convnet.errors import ConfigError
from tests.conftest import REPO, cpu_env


def test_a_shift_by_k_is_the_original_moved_by_k():
  images = np.arange(1, 1 + 2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3)
  for dy, dx in [(1, 0), (0, -2), (2, 3), (-3, -1), (4, 0), (0, -7)]:
    expected = np.zeros_like(images)
    for y in range(4):
      for x in range(5):
        if 0 <= y + dy < 4 and 0 <= x + dx < 5:
          expected[:, y + dy, x + dx] = images[:, y, x]
    np.testing.assert_array_equal(invariance.shift(images, dy, dx), expected, f"{dy}, {dx}")


def test_a_shift_by_hand():
  image = np.arange(1, 10).reshape(1, 3, 3, 1)
  moved = invariance.shift(image, 1, -1)[0, ..., 0]
  np.testing.assert_array_equal(moved, [[0, 0, 0], [2, 3, 0], [5, 6, 0]])


def test_shift_and_rotate_by_zero_are_the_identity():
  images = np.random.default_rng(0).random((3, 7, 6, 2)).astype(np.float32)
  np.testing.assert_array_equal(invariance.shift(images, 0, 0), images)
  np.testing.assert_array_equal(invariance.rotate(images, 0), images)
  np.testing.assert_array_equal(invariance.rotate(images, 360), images)


def test_rotating_by_90_is_rot90_in_the_interior():
  images = np.random.default_rng(1).random((2, 9, 9, 3)).astype(np.float32)
  for degrees, k in [(90, 1), (-90, -1), (180, 2)]:
    turned = invariance.rotate(images, degrees)
    expected = np.rot90(images, k=k, axes=(1, 2))
    np.testing.assert_allclose(turned[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-5)


def test_a_small_rotation_keeps_the_centre_and_fills_with_zeros():
  image = np.ones((1, 11, 11, 1), np.float32)
  turned = invariance.rotate(image, 45)
  assert turned[0, 5, 5, 0] == pytest.approx(1.0)
  assert turned[0, 0, 0, 0] == 0.0  # a corner turned in from outside the frame


def test_transform_names_are_parsed_and_bad_ones_refused():
  parsed = invariance.parse_transforms(["dy=2", "dx=-4", "rotate=15", "dy=+2", "rotate=-7.5"])
  assert [t.name for t in parsed] == ["dy=+2", "dx=-4", "rotate=+15", "rotate=-7.5"]
  for bad in (["dz=2"], ["dy=1.5"], ["rotate"], ["shift=2"], [], ["rotate=1e9"]):
    with pytest.raises(ConfigError, match="--transforms") as error:
      invariance.parse_transforms(bad)
    assert "\n" not in str(error.value)


def test_a_permuted_run_sees_its_images_moved_then_permuted():
  seed, shape = 5, (2, 6, 6, 1)
  images = np.random.default_rng(2).random(shape).astype(np.float32)
  order = input_pipeline.pixel_permutation(shape[1:3], seed)
  permuted = images.reshape(2, -1, 1)[:, order].reshape(shape)
  run = types.SimpleNamespace(
    config=types.SimpleNamespace(data={"permute_pixels": seed}),
    dataset=types.SimpleNamespace(test=types.SimpleNamespace(images=permuted)),
  )
  shift = invariance.Transform("dx", 2)
  expected = shift(images).reshape(2, -1, 1)[:, order].reshape(shape)
  np.testing.assert_array_equal(invariance.transformed_test_images(run, shift), expected)


def _command(args, monkeypatch):
  """Runs `python -m convnet.invariance ARGS` in this process; its exit's message."""
  flag_values = flags.FlagValues()
  invariance.define_flags(flag_values)
  argv = cli.parse_flags(["convnet.invariance", *args], flag_values)
  monkeypatch.setattr(invariance, "FLAGS", flag_values)
  monkeypatch.setattr(invariance.cli, "start", lambda argv: None)
  with pytest.raises(SystemExit) as exit:
    invariance.main(argv)
  return str(exit.value.code)


def test_bad_transforms_and_folders_are_one_line(tmp_path, monkeypatch):
  message = _command([str(tmp_path), "--transforms=dy=2,tilt=3"], monkeypatch)
  assert message.startswith("error: --transforms: 'tilt=3' is not a transform")
  assert "\n" not in message
  message = _command([str(tmp_path)], monkeypatch)
  assert message.startswith(f"error: {tmp_path} is neither a run") and "\n" not in message
  missing = tmp_path / "missing"
  message = _command([str(missing)], monkeypatch)
  assert message == f"error: {missing} is not a folder: give a run's workdir or a sweep folder"
  # A file where the results go that is not one of them: named, and left as it is.
  for text in ("not json", '{"accuracy": 3}', '{"transforms": ["tilt=3"]}'):
    (tmp_path / "invariance.json").write_text(text)
    message = _command([str(tmp_path)], monkeypatch)
    assert message.startswith(f"error: {tmp_path / 'invariance.json'} is not a result of ")
    assert "it is left as it is: move it away, or give --out=DIR" in message
    assert "\n" not in message and (tmp_path / "invariance.json").read_text() == text


# ----------------------------------------------------------------------------
# End to end


def _page_lines():
  """The lines of docs/interpretation.md's shell block that runs convnet.invariance."""
  with open(os.path.join(REPO, "docs", "interpretation.md")) as f:
    page = f.read()
  blocks = re.findall(r"^```sh\n(.*?)^```", page, re.DOTALL | re.MULTILINE)
  (block,) = [b for b in blocks if "python -m convnet.invariance" in b]
  return [line.split(" #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def _run(*args, cwd=REPO):
  return subprocess.run(
    [sys.executable, "-m", "convnet.invariance", *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    env=cpu_env(),
  )


@pytest.mark.slow  # two short runs, a tiny sweep of four, and the command on each
def test_the_command_on_a_run_and_on_a_sweep(config, tmp_path):
  from convnet import sweep, train

  config.max_steps = 6
  config.batch_size = 32
  config.microbatch_size = 0
  config.eval_batch_size = 500
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  # The command docs/interpretation.md gives for a run, as written there, on this one.
  (line,) = [line for line in _page_lines() if "runs/mnist_5k" in line]
  argv = shlex.split(line.replace("runs/mnist_5k", str(workdir)))
  assert argv[:3] == ["python", "-m", "convnet.invariance"], line
  done = _run(*argv[3:])
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((workdir / "invariance.json").read_text())
  assert list(result["accuracy"]) == ["original", *invariance.DEFAULT_TRANSFORMS]
  assert all(0 <= a <= 1 for a in result["accuracy"].values())
  assert "rotate=+15" in done.stdout and "as metrics.jsonl recorded" in done.stdout

  # A run on permuted positions, its results elsewhere (--out).
  config.data.permute_pixels = 4
  permuted = tmp_path / "permuted"
  train.train_and_evaluate(config, str(permuted))
  done = _run(str(permuted), f"--out={tmp_path / 'out'}", "--transforms=dy=2,rotate=90")
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((tmp_path / "out" / "invariance.json").read_text())
  assert list(result["accuracy"]) == ["original", "dy=+2", "rotate=+90"]
  assert not (permuted / "invariance.json").exists()

  # A bad transform and a folder that is neither, from the command: one line each.
  for args in ([str(workdir), "--transforms=up=2"], [str(tmp_path)]):
    done = _run(*args)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: ")
  # A shift by the image's size or more leaves nothing to see: refused, the earlier file kept.
  before = (workdir / "invariance.json").read_text()
  done = _run(str(workdir), "--transforms=dy=28")
  assert done.stderr.strip().endswith(
    "moves every pixel off this run's 28x28 images; shift by less than 28"
  )
  assert (workdir / "invariance.json").read_text() == before

  # A sweep of the convnet and a dense network of about as many parameters, two seeds each.
  config.data.permute_pixels = 0
  settings = [
    {"model.name": "convnet", "model.conv.features": (8, 16, 16), "model.dense_features": (32,)},
    {"model.name": "dense", "model.dense_features": (11,)},
  ]
  cells = sweep.expand(lambda: sweep.product(settings, sweep.axis("seed", range(2))))
  sweep_dir = tmp_path / "sweep"
  sweep.run_sweep(config, cells, str(sweep_dir))
  done = _run(str(sweep_dir), "--transforms=dx=-2,rotate=15")
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((sweep_dir / "invariance.json").read_text())
  assert len(result["runs"]) == 4 and len(result["settings"]) == 2
  assert [p["transform"] for p in result["pairs"]] == ["dx=-2", "rotate=+15"]
  assert all(p["seeds"] == 2 and "p_holm" in p for p in result["pairs"])
  report = (sweep_dir / "invariance.md").read_text()
  assert "Holm" in report and "| rotate=+15 |" in report
  for p in result["pairs"]:
    run_drops = {}
    for side in ("model_setting", "baseline_setting"):
      runs = [r for r in result["runs"] if r["setting"] == p[side]]
      run_drops[side] = np.mean(
        [r["accuracy"]["original"] - r["accuracy"][p["transform"]] for r in runs]
      )
    assert p["difference"] == pytest.approx(
      run_drops["model_setting"] - run_drops["baseline_setting"]
    )
  assert os.path.isdir(sweep_dir / "records")

  # Other transforms later: the earlier ones are evaluated again beside them, none lost.
  done = _run(str(sweep_dir), "--transforms=dy=2")
  assert done.returncode == 0, done.stderr[-3000:]
  again = json.loads((sweep_dir / "invariance.json").read_text())
  assert again["transforms"] == ["dx=-2", "rotate=+15", "dy=+2"]
  assert [r["accuracy"]["dx=-2"] for r in again["runs"]] == [
    r["accuracy"]["dx=-2"] for r in result["runs"]
  ]
  done = _run(str(workdir), "--transforms=dx=3")
  assert done.returncode == 0, done.stderr[-3000:]
  kept = json.loads((workdir / "invariance.json").read_text())
  assert list(kept["accuracy"]) == ["original", *invariance.DEFAULT_TRANSFORMS, "dx=+3"]

  # A finished cell whose checkpoints are gone: one line that says how to train it again.
  (record,) = [r for r in result["runs"] if r["cell"].endswith("seed=1")][:1]
  shutil.rmtree(sweep_dir / record["workdir"] / "checkpoints")
  before = (sweep_dir / "invariance.json").read_text()
  done = _run(str(sweep_dir))
  assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
  line = done.stderr.strip().splitlines()[-1]  # after the log's lines of the runs evaluated
  assert (
    line.startswith("error: ")
    and f"finished cell {record['cell']}" in line
    and "has no checkpoints left" in line
  )
  assert f"move records/{record['cell']}.json out of records/" in line
  assert (sweep_dir / "invariance.json").read_text() == before


def test_its_json_writes_nan_as_null_and_numpy_numbers_as_pythons():
  value = {"a": np.float32(0.5), "b": [np.int64(3), float("nan")], "c": np.array([1.0, np.inf])}
  assert json.loads(files.json_text(value)) == {"a": 0.5, "b": [3, None], "c": [1.0, None]}
