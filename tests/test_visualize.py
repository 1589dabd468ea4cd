"""Figures of a trained run: what they are computed from, and that they are drawn."""

import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from convnet import (
  checkpoints,
  files,
  input_pipeline,
  interpret,
  models,
  seeds,
  steps,
  train,
  trained,
  visualize,
)
from convnet.configs import mnist
from convnet.errors import CheckpointError, ConfigError, WorkdirError
from convnet.sources import embedded

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVNET_FIGURES = [
  "curves.png",
  "filters.png",
  "feature_maps_0.png",
  "feature_maps_1.png",
  "saliency.png",
  "confusion.png",
  "mistakes.png",
  "occlusion.png",
  "embedding.png",
  "maximised_conv_0.png",
  "maximised_conv_1.png",
  "maximised_conv_2.png",
  "maximised_logits.png",
]
FIGURE_DATA = ["occlusion.json", "embedding.json"]


def _config(model="convnet"):
  config = mnist.get_config()
  config.data.source = "embedded"
  config.data.tfds_data_dir = ""
  config.data.idx_dir = ""
  config.model.name = model
  config.batch_size = 128
  config.num_epochs = 2
  config.max_steps = 40
  config.log_every_steps = 10
  return config


@pytest.fixture(scope="module")
def convnet_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("convnet"))
  train.train_and_evaluate(_config(), workdir)
  return workdir


@pytest.fixture(scope="module")
def model_and_images():
  """The book's convnet and four embedded test digits.

  Faint noise on the pixels and on every parameter keeps pre-activations off ReLU's kink at 0
  and max-pool windows free of ties (a flat background gives equal values), where the function
  has no gradient for a finite difference to measure.
  """
  raw = embedded.load_embedded()
  images = input_pipeline.scale(raw.test_images[::250])
  images = images + np.random.default_rng(0).uniform(0, 0.02, images.shape).astype(np.float32)
  model = models.create_model(_config().model, (28, 28, 1), 10)
  params = steps.init_params(model, jax.random.key(0), (28, 28, 1))
  noise = np.random.default_rng(1)  # NumPy's: no program to compile for each shape
  params = jax.tree.map(
    lambda x: np.asarray(x) + 0.05 * noise.standard_normal(x.shape, np.float32), params
  )
  return model, params, images


def _read_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
  return matplotlib.image.imread(path)


def _assert_drawn(path):
  """A PNG of a sensible size with something drawn on it: not one flat colour."""
  pixels = _read_png(path)[..., :3]
  height, width = pixels.shape[:2]
  assert 250 <= width <= 3000 and 250 <= height <= 3000, (path, pixels.shape)
  not_white = (pixels < 0.95).any(-1).mean()
  assert not_white > 0.03, f"{path}: only {not_white:.1%} of the pixels are not white"
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, f"{path}: too few colours"


@pytest.mark.slow  # every figure drawn (13 s); the quick tier reads and checks the same run
def test_every_figure_of_a_convnet_run_is_drawn(convnet_run, tmp_path):
  out = str(tmp_path / "figures")
  paths = visualize.write_figures(
    convnet_run, out, num_images=2, embedding_examples=200, maximise_steps=20
  )
  assert sorted(os.path.basename(p) for p in paths) == sorted(CONVNET_FIGURES + FIGURE_DATA)
  for path in paths:
    assert os.path.dirname(path) == out
    if path.endswith(".png"):
      _assert_drawn(path)
  occlusion = files.read_json(os.path.join(out, "occlusion.json"))
  for measure in ("spearman_with_saliency", "spearman_with_grad_cam"):
    values = [v for v in occlusion[measure]["per_image"] if v is not None]
    assert len(values) == 100 - occlusion[measure]["undefined"]
    assert np.mean(values) == pytest.approx(occlusion[measure]["mean"])
    assert all(-1 <= v <= 1 for v in values)
  embedding = files.read_json(os.path.join(out, "embedding.json"))
  assert embedding["examples"] == 200 and embedding["features"] == 64
  assert 0.5 < embedding["knn_accuracy"]["activations"] <= 1  # 40 steps: already far from 0.1
  assert not [n for n in os.listdir(out) if ".tmp." in n]
  # Sizes follow the content: 16 first-layer kernels in 2 rows of 8; 10 classes' confusion.
  # Update these only with a deliberate change of those figures' layout.
  assert _read_png(os.path.join(out, "filters.png")).shape[:2] == (340, 1040)
  assert _read_png(os.path.join(out, "confusion.png")).shape[:2] == (800, 900)


@pytest.mark.slow  # a run of its own, then every figure
def test_a_dense_run_gets_its_first_layer_weights_and_no_conv_figures(convnet_run, tmp_path):
  workdir = str(tmp_path / "dense")
  config = _config("dense")
  config.model.dense_features = (12,)
  train.train_and_evaluate(config, workdir)
  paths = visualize.write_figures(workdir, embedding_examples=200, maximise_steps=20)
  names = sorted(os.path.basename(p) for p in paths)
  assert names == sorted(
    ["curves.png", "filters.png", "saliency.png", "confusion.png", "mistakes.png"]
    + ["occlusion.png", "embedding.png", "maximised_logits.png"]
    + FIGURE_DATA
  )
  assert all(os.path.dirname(p) == os.path.join(workdir, "figures") for p in paths)
  for path in paths:
    if path.endswith(".png"):
      _assert_drawn(path)
  # Beside the convnet on the same test images: two maps, two runs' measures.
  out = tmp_path / "comparison"
  paths = visualize.write_comparison(convnet_run, workdir, str(out), examples=150)
  assert [os.path.basename(p) for p in paths] == [
    "embedding_comparison.png",
    "embedding_comparison.json",
  ]
  _assert_drawn(paths[0])
  runs = files.read_json(paths[1])["runs"]
  assert [r["workdir"] for r in runs] == [convnet_run, workdir]
  assert [r["features"] for r in runs] == [64, 12] and runs[0]["examples"] == 150


def test_a_trained_run_is_read_with_its_last_checkpoint(convnet_run):
  run = trained.load(convnet_run)
  assert run.step == 40
  steps_per_epoch = len(run.dataset.train) // 128
  assert [r["epoch"] for r in run.records if r["kind"] == "epoch"] == [1, 40 / steps_per_epoch]
  # The restored parameters give the test accuracy the run logged at its last step.
  probs = interpret.predict(run.model, run.params, run.dataset.test.images)
  accuracy = (probs.argmax(-1) == run.dataset.test.labels).mean()
  np.testing.assert_allclose(accuracy, run.records[-1]["test_accuracy"], atol=1e-6)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def _test_loss(run):
  probs = interpret.predict(run.model, run.params, run.dataset.test.images)
  return -np.log(probs[np.arange(len(probs)), run.dataset.test.labels]).mean()


@pytest.mark.slow
def test_one_seed_of_a_group_gets_its_own_weights(tmp_path):
  config = _config()
  config.model.conv.features = (4, 8, 8)
  config.max_steps = 8
  config.num_epochs = 1
  config.steps_per_call = 4
  seeds.train_seeds(config, [3, 1], str(tmp_path))  # stacked in this order, not sorted
  runs = {seed: trained.load(str(tmp_path / f"seed_{seed}")) for seed in (3, 1)}
  for seed, other in ((3, 1), (1, 3)):
    assert runs[seed].step == 8 and runs[seed].config.seed == seed
    # Its weights give the test loss the group logged for this seed, and not the other's.
    logged = runs[seed].records[-1]["test_loss"]
    np.testing.assert_allclose(_test_loss(runs[seed]), logged, rtol=1e-4)
    assert abs(runs[other].records[-1]["test_loss"] - logged) > 1e-3
  with pytest.raises(CheckpointError, match="seed 2 is not one of the seeds"):
    os.makedirs(tmp_path / "seed_2")
    checkpoints.restore_params(str(tmp_path / "seed_2"))


def _float64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


@pytest.mark.slow
def test_saliency_is_the_gradient_of_the_predicted_logit(model_and_images):
  model, params, images = model_and_images
  grads = interpret.saliency(model, params, images)
  assert grads.shape == images.shape and grads.dtype == np.float32
  with jax.enable_x64(True):  # float64, so that a small step measures the slope, not rounding
    params, images = _float64(params), _float64(images)
    grads = interpret.saliency(model, params, images)
    classes = interpret.predict(model, params, images).argmax(-1)
    eps = 1e-5
    probes = []  # (image, pixel): each pixel nudged up and down, all in one batch
    for i in range(len(images)):
      for pixel in [np.unravel_index(np.abs(grads[i]).argmax(), grads[i].shape), (14, 9, 0)]:
        probes.append((i, pixel))
    nudged = []
    for i, pixel in probes:
      step = np.zeros_like(images[i])
      step[pixel] = eps
      nudged += [images[i] + step, images[i] - step]
    logits = np.asarray(jax.jit(model.apply)({"params": params}, np.stack(nudged)))
    for k, (i, pixel) in enumerate(probes):
      up, down = logits[2 * k, classes[i]], logits[2 * k + 1, classes[i]]
      np.testing.assert_allclose(grads[i][pixel], (up - down) / (2 * eps), rtol=1e-4, atol=1e-7)
    for i in range(len(images)):
      # Another class's logit has another gradient.
      other = interpret.saliency(model, params, images[i : i + 1], (classes[i : i + 1] + 1) % 10)
      assert np.abs(other[0] - grads[i]).max() > 1e-3


@pytest.mark.slow
def test_feature_map_gradients_agree_with_a_finite_difference(model_and_images):
  model, params, images = model_and_images
  classes = np.array([0, 3, 5, 7])
  with jax.enable_x64(True):
    params, images = _float64(params), _float64(images)
    maps, grads = interpret.feature_map_gradients(model, params, images, classes, "activation_1")
    assert maps.shape == grads.shape == (4, 11, 11, 32)
    all_maps = interpret.feature_maps(model, params, images)
    eps = 1e-5
    for i in range(len(images)):
      # Among active units (ReLU's zeros tie in a max-pool window, where there is no gradient):
      # the one the logit depends on most, and one a max-pool discards (gradient 0).
      active = maps[i] > 0
      strongest = np.unravel_index(np.abs(np.where(active, grads[i], 0)).argmax(), maps[i].shape)
      discarded = tuple(np.argwhere(active & (grads[i] == 0))[0])
      zeros = {k: jnp.zeros_like(v[:1]) for k, v in all_maps.items()}
      for position in (strongest, discarded):

        def logit(delta, i=i, position=position, zeros=zeros):
          bumped = dict(zeros, activation_1=zeros["activation_1"].at[(0, *position)].set(delta))
          variables = {"params": params, "perturbations": bumped}
          return float(model.apply(variables, images[i : i + 1])[0, classes[i]])

        difference = (logit(eps) - logit(-eps)) / (2 * eps)
        np.testing.assert_allclose(grads[i][position], difference, rtol=1e-4, atol=1e-7)
      assert abs(grads[i][strongest]) > 1e-3


def test_grad_cam_is_on_the_input_grid_and_scaled_to_one(model_and_images):
  model, params, images = model_and_images
  cams = interpret.grad_cam(model, params, images)
  assert cams.shape == (4, 28, 28)
  assert cams.min() >= 0
  for cam in cams:
    assert cam.max() == pytest.approx(1.0) or cam.max() == 0.0


def test_feature_centres_follow_the_receptive_fields():
  config = _config()
  model = models.create_model(config.model, (28, 28, 1), 10)
  # VALID 3x3 conv: output i is centred on input i + 1. A 2/2 pool then a 3x3 conv: output k
  # sees pool outputs k..k+2, centred on pool output k + 1, itself centred on conv outputs
  # 2k + 2 and 2k + 3, so on input 2k + 3.5; one more pool and conv: 4k + 8.5.
  np.testing.assert_allclose(interpret.feature_centres(model, (28, 28, 1), 0)[0], np.arange(26) + 1)
  np.testing.assert_allclose(
    interpret.feature_centres(model, (28, 28, 1), 1)[1], 2 * np.arange(11) + 3.5
  )
  np.testing.assert_allclose(interpret.feature_centres(model, (28, 28, 1), 2)[0], [8.5, 12.5, 16.5])
  config.model.conv.padding = "SAME"
  model = models.create_model(config.model, (28, 28, 1), 10)
  np.testing.assert_allclose(interpret.feature_centres(model, (28, 28, 1), 0)[0], np.arange(28))
  np.testing.assert_allclose(
    interpret.feature_centres(model, (28, 28, 1), 2)[0], 4 * np.arange(7) + 1.5
  )


def test_confusion_matrix_mistakes_and_foreground_share():
  labels = np.array([0, 0, 1, 2, 2, 2])
  predictions = np.array([0, 1, 1, 2, 0, 2])
  counts = interpret.confusion_matrix(labels, predictions, 3)
  np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.45, 0.55]])
  np.testing.assert_array_equal(
    interpret.confident_mistakes(probs, np.array([0, 0, 0, 1, 1]), 5), [1, 3, 2]
  )
  np.testing.assert_array_equal(
    interpret.confident_mistakes(probs, np.array([0, 0, 0, 1, 1]), 1), [1]
  )
  np.testing.assert_array_equal(
    interpret.first_of_each_class(np.array([2, 0, 2, 1, 0]), 3), [1, 3, 0]
  )
  image = np.zeros((1, 4, 4, 1))
  image[0, :2, :2] = 1.0  # a quarter of the pixels are foreground
  image[0, 3, 3] = 0.05  # too faint to count
  grads = np.ones((1, 4, 4, 1))
  grads[0, 0, 0] = -5.0
  on_foreground, foreground = interpret.foreground_share(image, grads)
  np.testing.assert_allclose(on_foreground, [8 / 20])
  np.testing.assert_allclose(foreground, [0.25])


def test_a_sequence_of_many_channels_counts_every_value_as_a_pixel():
  """A spectrogram as frames of mel bands (data.layout="sequence"): the same share as its image."""
  image = np.zeros((1, 4, 6, 1))
  image[0, 1, :3] = 1.0  # one band lit for half the frames: 3 of 24 pixels
  grads = np.ones((1, 4, 6, 1))
  grads[0, 1, 0] = 9.0
  sequence, sequence_grads = image[..., 0].transpose(0, 2, 1), grads[..., 0].transpose(0, 2, 1)
  assert interpret.pixel_magnitudes(sequence).shape == (1, 6, 4)
  assert interpret.pixel_magnitudes(image).shape == (1, 4, 6)
  as_image = interpret.foreground_share(image, grads)
  as_sequence = interpret.foreground_share(sequence, sequence_grads)
  np.testing.assert_allclose(as_sequence, as_image)
  np.testing.assert_allclose(as_image[1], [3 / 24])
  # Drawn as channels down and steps across: the image it came from.
  np.testing.assert_array_equal(visualize.example_map(sequence[0]), image[0, ..., 0])


@pytest.mark.slow  # a whole run and its figures; the sequence drawing's own test is quick
def test_a_sequence_layout_run_gets_its_figures(config, tmp_path):
  config.data.layout = "sequence"
  config.model.conv.kernel_size = 3
  config.max_steps = 4
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  paths = visualize.write_figures(workdir, num_images=2, embedding_examples=100, maximise_steps=10)
  names = {os.path.basename(p) for p in paths}
  assert {"saliency.png", "mistakes.png", "filters.png", "occlusion.png", "embedding.png"} <= names
  for path in paths:
    if path.endswith(".png"):
      _assert_drawn(path)


def test_curves_need_an_epoch(tmp_path):
  with pytest.raises(CheckpointError, match="no epoch record"):
    visualize.plot_curves(
      [{"kind": "train", "step": 10, "epoch": 0.5, "train_loss": 1.0}], str(tmp_path / "c.png")
    )
  assert not os.listdir(tmp_path)


def _write_sweep_records(sweep_dir):
  """Records of a finished sweep of two kernel sizes, two seeds each, in `sweep_dir`/records."""
  os.makedirs(sweep_dir / "records")
  for i, (kernel, seed, accuracy) in enumerate(
    [(3, 0, 0.9), (3, 1, 0.92), (5, 0, 0.93), (5, 1, 0.95)]
  ):
    record = {
      "cell": f"model.conv.kernel_size={kernel},seed={seed}",
      "index": i,
      "setting": f"model.conv.kernel_size={kernel}",
      "overrides": {"model.conv.kernel_size": kernel, "seed": seed},
      "config": {"model": {"name": "convnet"}, "data": {"source": "embedded"}, "num_epochs": 1},
      "status": "done",
      "num_params": 1000,
      "flops_per_example": 2e6,
      "best_validation_accuracy": accuracy,
      "test_accuracy_at_best_validation": accuracy - 0.01,
      "wall_time_s": 1.0,
      "train_examples_per_sec": 100.0,
    }
    with open(sweep_dir / "records" / f"{record['cell']}.json", "w") as f:
      json.dump(record, f)


def test_a_sweep_directory_gets_the_reports_figures(tmp_path):
  _write_sweep_records(tmp_path)
  paths = visualize.write_figures(str(tmp_path), str(tmp_path / "out"))
  assert sorted(os.path.basename(p) for p in paths) == ["accuracy.png", "report.csv", "report.md"]
  _assert_drawn(str(tmp_path / "out" / "accuracy.png"))


def _visualize(*args):
  return subprocess.run(
    [sys.executable, "-m", "convnet.visualize", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_the_command_lists_each_file_it_wrote_once(tmp_path):
  _write_sweep_records(tmp_path)
  done = _visualize(f"--workdir={tmp_path}", f"--out={tmp_path / 'out'}")
  assert done.returncode == 0, done.stderr
  written = sorted(os.listdir(tmp_path / "out"))
  assert written == ["accuracy.png", "report.csv", "report.md"]
  output = done.stdout + done.stderr
  for name in written:
    assert output.count(str(tmp_path / "out" / name)) == 1, output


@pytest.mark.slow
def test_command_line_names_a_bad_workdir(tmp_path):
  missing = _visualize(f"--workdir={tmp_path / 'nowhere'}")
  assert missing.returncode != 0
  assert (
    missing.stderr.strip().splitlines()[-1]
    == f"error: --workdir={tmp_path / 'nowhere'} is not a directory"
  )
  with open(tmp_path / "config.json", "w") as f:
    f.write(_config().to_json())
  untrained = _visualize(f"--workdir={tmp_path}")
  assert untrained.returncode != 0
  assert "has no checkpoints/" in untrained.stderr.strip().splitlines()[-1]
  assert "Traceback" not in untrained.stderr
  assert os.listdir(tmp_path) == ["config.json"]
  elsewhere = _visualize(f"--workdir={tmp_path}", f"--compare={tmp_path / 'nowhere'}")
  assert elsewhere.returncode != 0
  assert (
    elsewhere.stderr.strip().splitlines()[-1]
    == f"error: --compare={tmp_path / 'nowhere'} is not a directory"
  )


def test_reading_a_run_prints_no_warnings_about_reading_it(convnet_run, caplog):
  # Orbax warns three times that a read-only manager reads only; reading a run is not news.
  with caplog.at_level(logging.WARNING, logger="absl"):
    for which in ("latest", "best"):
      checkpoints.restore_params(convnet_run, which)
    checkpoints.read_loop(convnet_run)
  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("block", [3, -4])
def test_a_grad_cam_block_the_model_lacks_is_named_before_any_figure(convnet_run, tmp_path, block):
  with pytest.raises(ConfigError, match=rf"--grad_cam_block={block}: the model has 3 conv blocks"):
    visualize.write_figures(convnet_run, str(tmp_path / "figures"), grad_cam_block=block)
  assert not (tmp_path / "figures").exists()


@pytest.mark.parametrize(
  "patch, stride, message",
  [
    (28, 2, "covers the whole 28x28"),
    (100, 2, "covers the whole 28x28"),
    (4, 6, "a stride of 6 is longer than the patch of 4"),
  ],
)
def test_an_occlusion_patch_that_covers_the_image_or_leaves_gaps_is_named_before_any_figure(
  convnet_run, tmp_path, patch, stride, message
):
  with pytest.raises(
    ConfigError, match=rf"--occlusion_patch={patch} --occlusion_stride={stride}: .*{message}"
  ):
    visualize.write_figures(
      convnet_run, str(tmp_path / "figures"), occlusion_patch=patch, occlusion_stride=stride
    )
  assert not (tmp_path / "figures").exists()


@pytest.mark.parametrize("name", ["saliency.png", "feature_maps_2.png"])
def test_a_link_where_a_figure_goes_is_refused_before_any_figure_is_drawn(
  convnet_run, tmp_path, name
):
  elsewhere = tmp_path / "elsewhere.png"
  elsewhere.write_bytes(b"not a figure of this run")
  out = tmp_path / "figures"
  out.mkdir()
  (out / name).symlink_to(elsewhere)
  with pytest.raises(WorkdirError, match=f"{name} is a symbolic link"):
    visualize.write_figures(convnet_run, str(out))
  assert os.listdir(out) == [name] and elsewhere.read_bytes() == b"not a figure of this run"
