"""`convnet.export`: ONNX and TF.js exports agree with JAX, in onnxruntime, Node.js and chromium.

The Node.js and browser tests need `node`, `npm ci`'s @tensorflow/tfjs and
Debian's chromium with Playwright (scripts/install.sh installs them); without them they fail,
saying what is missing.
"""

import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import cpu_env, model_config

from convnet import export, formats, models, seeds, steps, train, web
from convnet.configs import dense as dense_config
from convnet.configs import mnist
from convnet.errors import ExportError, WorkdirError, WorkdirInUseError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _need(what: str, present: bool):
  if not present:
    pytest.fail(f"{what} is missing: run scripts/install.sh")


def _node():
  _need("Node.js with @tensorflow/tfjs", web.node_runtime() is not None)


def _browser():
  _need("chromium with Playwright", web.browser_available())


# Settings across ranks, paddings, poolings, heads and activations: each row is
# (input shape, model overrides, what TF.js's refusal says or None).
EXPLICIT_POOL = "TF.js cannot hold pool_0's padding"
CASES = {
  "book": ((28, 28, 1), {}, None),
  "dense": ((28, 28, 1), {"name": "dense"}, None),
  "dense_tanh": ((28, 28, 1), {"name": "dense", "dense_activation": "tanh"}, None),
  "2d_same_avg_global_avg": (
    (28, 28, 1),
    {"conv.padding": "SAME", "pool.type": "avg", "head": "global_avg"},
    None,
  ),
  "2d_explicit_none_global_max": (
    (12, 12, 2),
    {
      "conv.features": (4, 6),
      "conv.padding": "((1, 2), (0, 1))",
      "pool.type": "none",
      "head": "global_max",
    },
    None,
  ),
  "2d_explicit_pool_padding": (
    (28, 28, 1),
    {"pool.padding": "((1, 0), (1, 1))", "conv.activation": "swish"},
    EXPLICIT_POOL,
  ),
  "2d_zero_explicit_pool_padding_linear": (
    (28, 28, 1),
    {
      "pool.padding": "((0, 0), (0, 0))",
      "conv.activation": "linear",
      "dense_activation": "sigmoid",
    },
    None,
  ),
  "2d_strided_same_pool_padding": (
    (28, 28, 1),
    {
      "conv.features": (8, 8),
      "conv.strides": 2,
      "conv.padding": "SAME",
      "pool.type": ("max", "avg"),
      "pool.padding": "SAME",
    },
    None,
  ),
  "1d_valid_max": ((40, 3), {"conv.kernel_size": 5, "conv.activation": "elu"}, None),
  "1d_explicit_avg_global_avg": (
    (40, 3),
    {"conv.kernel_size": 5, "conv.padding": "((2, 1),)", "pool.type": "avg", "head": "global_avg"},
    None,
  ),
  "1d_same_none_global_max_selu": (
    (40, 3),
    {
      "conv.padding": "SAME",
      "conv.activation": "selu",
      "pool.type": "none",
      "head": "global_max",
    },
    None,
  ),
  "3d_valid_max": ((10, 10, 10, 1), {"conv.features": (4, 4), "pool.type": "max"}, None),
  "3d_same_avg_global_avg": (
    (10, 10, 10, 1),
    {"conv.features": (4, 4), "conv.padding": "SAME", "pool.type": "avg", "head": "global_avg"},
    None,
  ),
  "3d_explicit": (
    (8, 8, 8, 1),
    {"conv.features": (4,), "conv.padding": 2, "pool.type": "none", "conv.activation": "tanh"},
    "TF.js cannot hold conv_0's padding",
  ),
  "3d_explicit_as_same": (  # padding 1 around a 3x3x3 kernel is SAME's: TF.js holds it
    (8, 8, 8, 1),
    {"conv.features": (4,), "conv.padding": 1, "pool.type": "none"},
    None,
  ),
  "dense_on_features": ((16,), {"name": "dense"}, None),  # data.features="pca", say
  "3d_dense": ((8, 8, 8, 1), {"name": "dense", "dense_activation": "sigmoid"}, None),
  "gelu": ((28, 28, 1), {"dense_activation": "gelu"}, "TF.js cannot hold dense_0's activation"),
}


def _model(shape, overrides, seed=0):
  defaults = mnist.get_config().model
  for key in overrides:  # a misspelt field would be added silently, and test nothing
    node = defaults
    for part in key.split("."):
      assert part in node, key
      node = node[part]
  model = models.create_model(model_config(**overrides), shape, 10)
  params = steps.init_params(model, jax.random.key(seed), shape)
  # Random biases too (they start at zero), so that a bias in the wrong place shows.
  noise = np.random.default_rng(seed + 1)  # NumPy's: no program to compile for each shape
  params = jax.tree.map(
    lambda p: np.asarray(p) + 0.1 * noise.standard_normal(p.shape, np.float32), params
  )
  images = np.random.default_rng(seed).random((32, *shape), np.float32)
  return model, params, images


def _write_onnx(layers, shape, folder):
  path = os.path.join(folder, "model.onnx")
  with open(path, "wb") as f:
    f.write(formats.to_onnx(layers, shape, {}).SerializeToString())
  return path


def _write_tfjs(layers, shape, folder):
  model_json, weights = formats.to_tfjs(layers, shape, {})
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "model.json"), "w") as f:
    json.dump(model_json, f)
  with open(os.path.join(folder, "weights.bin"), "wb") as f:
    f.write(weights)


@pytest.mark.parametrize("case", list(CASES))
def test_every_setting_exports_to_onnx_and_agrees_with_jax(case, tmp_path):
  shape, overrides, _ = CASES[case]
  model, params, images = _model(shape, overrides)
  layers = formats.layers(model, params, shape)
  reference = export.jax_logits(model, params, images)
  result = export.agreement(
    reference, export.onnx_logits(_write_onnx(layers, shape, tmp_path), images)
  )
  assert result["agrees"], result
  assert result["max_abs_logit_difference"] < 1e-4 and result["images"] == 32


def test_every_setting_exports_to_tfjs_or_names_what_tfjs_cannot_hold(tmp_path):
  _node()
  jobs = []
  for case, (shape, overrides, refusal) in CASES.items():
    model, params, images = _model(shape, overrides)
    layers = formats.layers(model, params, shape)
    if refusal:
      with pytest.raises(ExportError, match=refusal) as raised:
        formats.to_tfjs(layers, shape, {})
      message = str(raised.value)
      assert "\n" not in message and "export to ONNX" in message, case
      continue
    _write_tfjs(layers, shape, tmp_path / case)
    jobs.append((case, tmp_path / case, images, export.jax_logits(model, params, images)))
  results = web.node_predict([(folder, images) for _, folder, images, _ in jobs])
  assert len(results) == len(CASES) - 3
  for (case, _, _, reference), (logits, probabilities) in zip(jobs, results, strict=True):
    result = export.agreement(reference, logits, probabilities)
    assert result["agrees"] and result["max_abs_probability_difference"] < 1e-5, (case, result)


def test_a_flattened_convnet_keeps_flaxs_channels_last_order(tmp_path):
  # A model whose logits depend on the flatten order: permuting the head's input changes them.
  shape, overrides, _ = CASES["book"]
  model, params, images = _model(shape, overrides)
  layers = formats.layers(model, params, shape)
  head = [i for i, layer in enumerate(layers) if isinstance(layer, formats.Head)][0]
  dense = layers[head + 1]
  shuffled = dense.kernel[np.random.default_rng(0).permutation(len(dense.kernel))]
  wrong = [*layers[: head + 1], formats.Dense(dense.name, shuffled, dense.bias, dense.activation)]
  wrong += layers[head + 2 :]
  reference = export.jax_logits(model, params, images)
  assert not export.agreement(
    reference, export.onnx_logits(_write_onnx(wrong, shape, tmp_path), images)
  )["agrees"]


def test_agreement_fails_on_a_changed_argmax_or_a_logit_out_of_tolerance():
  reference = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]], np.float32)
  assert export.agreement(reference, reference + 1e-6)["agrees"]
  swapped = reference.copy()
  swapped[0] = [2.0, 1.0, 0.0]
  result = export.agreement(reference, swapped)
  assert not result["agrees"] and result["argmax_equal"] == 1
  off = reference.copy()
  off[1, 1] += 1e-3  # same argmax, but no longer float32 round-off
  assert not export.agreement(reference, off)["agrees"]
  result = export.agreement(reference, reference, probabilities=np.full((2, 3), 1 / 3))
  assert result["max_abs_probability_difference"] > 0.3


# ----------------------------------------------------------------------------
# The command on trained runs


def _train(config, workdir, steps=30):
  """`steps` steps in batches of 64, on the embedded digits."""
  config.data.source = "embedded"
  config.data.tfds_data_dir = config.data.idx_dir = ""
  config.batch_size, config.microbatch_size, config.num_epochs = 64, 0, 1
  config.max_steps = steps
  result = train.train_and_evaluate(config, str(workdir))
  assert result["step"] == steps


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The book's convnet and the dense baseline, two short epochs each on the embedded digits."""
  runs = {}
  for name, base in (("convnet", mnist), ("dense", dense_config)):
    config = base.get_config()
    workdir = tmp_path_factory.mktemp(name)
    _train(config, workdir)
    runs[name] = str(workdir)
  return runs


def _export(*args):
  return subprocess.run(
    [sys.executable, "-m", "convnet.export", *args],
    capture_output=True,
    text=True,
    timeout=300,
    env=cpu_env(),
    cwd=REPO,
  )


@pytest.mark.slow  # a process each; the quick start's models run it in all three runtimes
@pytest.mark.parametrize("name", ["convnet", "dense"])
def test_the_command_exports_onnx_that_agrees_on_every_test_image(trained, name, tmp_path):
  out = tmp_path / "onnx"
  done = _export(f"--workdir={trained[name]}", "--format=onnx", f"--out={out}")
  assert done.returncode == 0, done.stderr
  assert f"Wrote model.onnx to {out} (" in done.stdout
  assert [line for line in done.stderr.splitlines() if line[:1] in "WE"] == []  # no warnings
  assert "onnxruntime: argmax equal to JAX's on 1,000 of 1,000 test images" in done.stdout
  (result,) = _agreement(out, "onnx", step=30)
  assert result["runtime"] == "onnxruntime" and result["agrees"] and result["images"] == 1000


@pytest.mark.slow  # a process each; the quick start's models run it in all three runtimes
@pytest.mark.parametrize("name", ["convnet", "dense"])
def test_the_command_exports_tfjs_that_agrees_in_node(trained, name, tmp_path):
  _node()
  out = tmp_path / "tfjs"
  done = _export(f"--workdir={trained[name]}", "--format=tfjs", f"--out={out}", "--checkpoint=best")
  assert done.returncode == 0, done.stderr
  assert "TF.js in Node.js: argmax equal to JAX's on 1,000 of 1,000 test images" in done.stdout
  model_json = json.loads((out / "model.json").read_text())
  assert model_json["userDefinedMetadata"]["class_names"] == [str(k) for k in range(10)]
  assert model_json["userDefinedMetadata"]["checkpoint"] == "best"
  (result,) = _agreement(out, "tfjs", checkpoint="best")
  assert result["runtime"] == "TF.js in Node.js" and result["agrees"]


def _agreement(out, fmt, step=None, checkpoint="latest"):
  """The runtimes' results that out/agreement.json records for `fmt`, after checking its run."""
  entry = json.loads((out / "agreement.json").read_text())[fmt]
  assert entry["checkpoint"] == checkpoint and (step is None or entry["step"] == step)
  assert entry["checked"] == bool(entry["runtimes"])
  return entry["runtimes"]


@pytest.mark.slow
def test_without_node_the_tfjs_export_says_it_was_not_checked(trained, tmp_path, monkeypatch):
  monkeypatch.setattr(web, "node_runtime", lambda: None)
  lines = export.export(trained["dense"], "tfjs", str(tmp_path))
  assert "Not checked in Node.js: it needs Node.js" in lines[0]
  assert (tmp_path / "model.json").exists() and _agreement(tmp_path, "tfjs") == []


def test_an_export_that_disagrees_with_jax_leaves_the_folder_as_it_was(
  trained, tmp_path, monkeypatch
):
  export.export(trained["convnet"], "onnx", str(tmp_path))
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  real = export.onnx_logits
  monkeypatch.setattr(export, "onnx_logits", lambda path, images: real(path, images)[:, ::-1])
  with pytest.raises(ExportError, match="the exported model disagrees with JAX: onnxruntime"):
    export.export(trained["dense"], "onnx", str(tmp_path))
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.slow  # a run of its own, then an export
def test_a_refused_export_makes_no_folder(trained, tmp_path):
  config = mnist.get_config()
  config.model.dense_activation = "gelu"
  _train(config, tmp_path / "run", steps=2)
  with pytest.raises(ExportError, match="TF.js cannot hold dense_0's activation 'gelu'"):
    export.export(str(tmp_path / "run"), "tfjs", str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
  export.export(str(tmp_path / "run"), "onnx", str(tmp_path / "out"))  # ONNX holds it


def test_each_format_keeps_its_own_agreement_with_the_step_it_exported(trained, tmp_path):
  _node()
  export.export(trained["dense"], "tfjs", str(tmp_path))
  export.export(trained["dense"], "onnx", str(tmp_path))
  assert _agreement(tmp_path, "tfjs", step=30)[0]["agrees"]  # not overwritten by ONNX's
  assert _agreement(tmp_path, "onnx", step=30)[0]["agrees"]
  export.export(trained["dense"], "tfjs", str(tmp_path), checkpoint="best", verify=False)
  assert _agreement(tmp_path, "tfjs", checkpoint="best") == []  # no stale check left
  assert _agreement(tmp_path, "onnx", step=30)[0]["agrees"]


def test_a_folder_that_holds_a_page_gets_it_again_for_a_new_model(trained, tmp_path):
  export.export(trained["convnet"], "tfjs", str(tmp_path), page=True, verify=False)
  lines = export.export(trained["dense"], "tfjs", str(tmp_path), verify=False)
  assert lines[0] == f"{tmp_path} holds a page: it is written again for this model"
  from convnet import trained as trained_runs

  run = trained_runs.load(trained["dense"])
  examples = json.loads((tmp_path / "examples.json").read_text())
  images = np.array(examples["images"], np.float32).reshape(-1, 28, 28, 1)
  logits = export.jax_logits(run.model, run.params, images)
  assert examples["jax_predictions"] == logits.argmax(-1).tolist()
  assert (
    json.loads((tmp_path / "model.json").read_text())["userDefinedMetadata"]["model"] == "dense"
  )


@pytest.mark.slow  # a group trained, then two exports
def test_one_seed_of_a_group_exports_its_own_weights(tmp_path):
  config = mnist.get_config()
  config.data.source = "embedded"
  config.data.tfds_data_dir = config.data.idx_dir = ""
  config.model.conv.features = (4, 8, 8)
  config.batch_size, config.max_steps, config.num_epochs = 64, 6, 1
  seeds.train_seeds(config, [3, 1], str(tmp_path / "group"))
  logits = {}
  for seed in (3, 1):
    out = tmp_path / f"onnx_{seed}"
    lines = export.export(str(tmp_path / "group" / f"seed_{seed}"), "onnx", str(out))
    assert "argmax equal to JAX's on 1,000 of 1,000" in lines[0]
    images = np.zeros((1, 28, 28, 1), np.float32)
    logits[seed] = export.onnx_logits(str(out / "model.onnx"), images)
  assert np.abs(logits[3] - logits[1]).max() > 1e-3


@pytest.mark.parametrize(
  "args, message",
  [
    (["--workdir={missing}", "--format=onnx", "--out={out}"], "is not a directory"),
    (["--workdir={dense}", "--format=onnx", "--out={out}", "--page"], "--page runs the TF.js"),
    (["--workdir={dense}", "--format=onnx", "--out={file}"], "is a file: name a folder"),
    (["--workdir={dense}", "--format=keras", "--out={out}"], "--format"),
    (["--workdir={dense}", "--out={out}"], "--format"),
  ],
)
def test_a_bad_command_is_one_line(trained, tmp_path, args, message):
  (tmp_path / "file").write_text("x")
  names = {"missing": tmp_path / "missing", "out": tmp_path / "out", "file": tmp_path / "file"}
  done = _export(*(a.format(dense=trained["dense"], **names) for a in args))
  assert done.returncode != 0 and message in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
  assert (tmp_path / "file").read_text() == "x"


@pytest.mark.slow  # a PCA run of its own
def test_the_page_refuses_inputs_that_are_not_28x28_pixels(tmp_path):
  config = dense_config.get_config()
  config.data.features, config.data.num_features = "pca", 16
  _train(config, tmp_path / "run", steps=4)
  with pytest.raises(ExportError, match=r"--page draws 28x28 images .* shape \(16,\)"):
    export.export(str(tmp_path / "run"), "tfjs", str(tmp_path / "out"), page=True)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("permute_pixels", [0, 7])
def test_the_page_refuses_a_model_that_reads_permuted_pixels(permute_pixels):
  data = {"source": "embedded", "features": "pixels", "layout": "image"}
  data["permute_pixels"] = permute_pixels
  if not permute_pixels:
    web.check_page_input(data, (28, 28, 1))  # the book's input: no refusal
    return
  with pytest.raises(ExportError, match=r"permuted \(data.permute_pixels=7\); export it without"):
    web.check_page_input(data, (28, 28, 1))


def test_find_tfjs_looks_in_the_named_node_modules_first(tmp_path, monkeypatch):
  package = tmp_path / "node_modules" / "@tensorflow" / "tfjs"
  package.mkdir(parents=True)
  (package / "package.json").write_text("{}")
  monkeypatch.setenv("CONVNET_NODE_MODULES", str(tmp_path / "node_modules"))
  assert web.find_tfjs() == str(package)


def test_the_page_preprocesses_garments_and_digits_as_their_datasets():
  assert web.preprocessing("", "fashion-mnist") == "garment"
  assert web.preprocessing("fashion_mnist") == "garment"
  assert web.preprocessing("mnist_5k") == web.preprocessing("kmnist") == "digit"


def test_the_page_shows_one_test_image_of_each_class_first():
  labels = np.array([0, 0, 1, 0, 2, 1, 2, 2])
  assert web.example_indices(labels, 5).tolist() == [0, 2, 4, 1, 3]
  assert web.example_indices(labels, 2).tolist() == [0, 2]


# ----------------------------------------------------------------------------
# The page, in Chromium


def check_page(out, images, reference, screenshot=None):
  """Checks the page as JAX and as a person would; returns its screenshot (PNG bytes)."""
  with web.browse(str(out)) as page:
    assert "TF.js 4.22.0, cpu backend" in page.inner_text("#status")
    # Every given test image, classified by the page as JAX classifies it.
    classes, probabilities = web.page_predict(page, images)
    np.testing.assert_array_equal(classes, reference.argmax(-1))
    assert np.abs(probabilities - export.softmax(reference)).max() < 1e-5
    # The gallery's predictions are JAX's.
    examples = json.loads((out / "examples.json").read_text())
    assert page.evaluate("window.convnet.examplePredictions") == examples["jax_predictions"]
    # A "7" drawn with the mouse: fitted to 20x20, centred by its mass, as MNIST's digits are.
    drawn, drawn_probabilities = web.draw(page)
    rows, cols = np.nonzero(drawn)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 == 20 and 0.99 < drawn.max() <= 1.0
    centre = [(drawn.sum(1 - axis) * (np.arange(28) + 0.5)).sum() / drawn.sum() for axis in (0, 1)]
    np.testing.assert_allclose(centre, [14, 14], atol=0.5)
    assert abs(drawn_probabilities.sum() - 1) < 1e-5 and len(drawn_probabilities) == 10
    assert page.locator("#bars .bar").count() == 10
    return page.screenshot(path=screenshot, full_page=True)


@pytest.mark.slow  # the page in Chromium
def test_the_page_classifies_as_jax_does_and_reads_a_drawing(trained, tmp_path):
  _node()
  _browser()
  import matplotlib.image

  from convnet import trained as trained_runs

  out = tmp_path / "page"
  lines = export.export(trained["convnet"], "tfjs", str(out), page=True)
  assert lines[-2].startswith(
    "TF.js in the page, in Chromium: argmax equal to JAX's on 1,000 of 1,000 test images"
  )
  node, in_page = _agreement(out, "tfjs")
  assert node["agrees"] and in_page["agrees"] and in_page["runtime"].startswith("TF.js in the page")
  assert 'src="tf.min.js"' in (out / "index.html").read_text()
  assert {"index.html", "page.js", "tf.min.js", "examples.json", "model.json"} <= set(
    os.listdir(out)
  )
  run = trained_runs.load(trained["convnet"])
  images = run.dataset.test.images
  png = check_page(out, images, export.jax_logits(run.model, run.params, images))
  pixels = matplotlib.image.imread(io.BytesIO(png))
  assert pixels.shape[0] >= 600 and pixels.shape[1] >= 800
  # Not blank: the black canvas, the white stroke and the coloured bars are all there.
  assert pixels[..., :3].std() > 0.1 and len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 50


def test_the_page_fits_a_garment_to_the_whole_image_and_centres_it(trained, tmp_path):
  _browser()
  out = tmp_path / "page"
  export.export(trained["convnet"], "tfjs", str(out), page=True, verify=False)
  examples = json.loads((out / "examples.json").read_text())
  (out / "examples.json").write_text(json.dumps({**examples, "preprocessing": "garment"}))
  with web.browse(str(out)) as page:
    drawn, _ = web.draw(page)
  rows, cols = np.nonzero(drawn > 0)
  assert np.ptp(rows) + 1 == 28  # the 7 is taller than wide: its height fills the image
  assert abs((cols.min() + cols.max()) / 2 - 13.5) <= 0.5  # and its box is centred


def test_without_a_local_tfjs_the_page_loads_it_from_the_web_and_is_not_checked(
  trained, tmp_path, monkeypatch
):
  monkeypatch.setattr(web, "find_tfjs", lambda: None)
  monkeypatch.setattr(web, "node_runtime", lambda: None)
  lines = export.export(trained["dense"], "tfjs", str(tmp_path), page=True)
  assert lines[0].startswith("No local TF.js found, so the page loads it from https://")
  assert "The page not checked in a browser: it loads TF.js from the web" in lines[2]
  # What Node.js and npm ci are for is said once, where the model goes unchecked.
  assert sum(web.NO_NODE in line for line in lines) == 1, lines
  html = (tmp_path / "index.html").read_text()
  assert f'src="{web.TFJS_CDN}"' in html and not (tmp_path / "tf.min.js").exists()


def test_a_chromium_that_cannot_start_is_one_line(trained, tmp_path, monkeypatch):
  _browser()
  export.export(trained["dense"], "tfjs", str(tmp_path), page=True, verify=False)
  monkeypatch.setenv("CONVNET_CHROMIUM", str(tmp_path / "no-chromium"))
  with pytest.raises(ExportError, match="cannot start Chromium .*no-chromium") as raised:
    with web.browse(str(tmp_path)):
      pass
  assert "\n" not in str(raised.value)
  with pytest.raises(ExportError, match="holds no page"):
    with web.browse(str(tmp_path / "elsewhere")):
      pass


def test_the_page_chooses_garments_by_the_data_name_too():
  assert web.preprocessing("fashion_mnist", "my_idx_folder") == "garment"
  assert web.preprocessing("mnist", "mnist_5k") == "digit"


def test_a_page_whose_model_cannot_load_is_one_line(trained, tmp_path):
  _browser()
  out = tmp_path / "page"
  export.export(trained["dense"], "tfjs", str(out), page=True, verify=False)
  os.remove(out / "weights.bin")
  with pytest.raises(ExportError, match="the page could not load the model") as raised:
    with web.browse(str(out)):
      pass
  assert "\n" not in str(raised.value)


@pytest.mark.slow
def test_the_quick_starts_models_agree_with_jax_on_every_test_image_everywhere(tmp_path):
  # The quick start, as written (10 epochs of the embedded digits), for the convnet and
  # the dense baseline: ONNX in onnxruntime, TF.js in Node.js and in the page in chromium.
  _node()
  _browser()
  from convnet import trained as trained_runs

  for config in ("mnist", "dense"):
    workdir = tmp_path / config
    done = subprocess.run(
      [
        sys.executable,
        "-m",
        "convnet.main",
        f"--config=configs/{config}.py",
        f"--workdir={workdir}",
      ]
      + ["--config.data.source=embedded"],
      capture_output=True,
      text=True,
      timeout=600,
      env=cpu_env(),
      cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for fmt, runtime in (("onnx", "onnxruntime"), ("tfjs", "TF.js in Node.js")):
      out = tmp_path / f"{config}_{fmt}"
      args = [f"--workdir={workdir}", f"--format={fmt}", f"--out={out}"]
      done = _export(*args, *(["--page"] if fmt == "tfjs" else []))
      assert done.returncode == 0, done.stderr
      line = f"{runtime}: argmax equal to JAX's on 1,000 of 1,000 test images"
      assert line in done.stdout
      assert all(result["agrees"] for result in _agreement(out, fmt))
    run = trained_runs.load(str(workdir))
    images = run.dataset.test.images
    check_page(
      tmp_path / f"{config}_tfjs", images, export.jax_logits(run.model, run.params, images)
    )


def _files(folder) -> dict[str, bytes]:
  """Every file under `folder`, by relative path, with its bytes (links: their targets' names)."""
  found = {}
  for root, dirs, names in os.walk(folder):
    for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
      path = os.path.join(root, name)
      key = os.path.relpath(path, folder)
      found[key] = os.readlink(path).encode() if os.path.islink(path) else open(path, "rb").read()
  return found


def test_a_folder_where_a_file_goes_refuses_the_export_and_leaves_out_as_it_was(trained, tmp_path):
  # An old TF.js export, with a folder now where its weights go: nothing of the new one lands.
  out = tmp_path / "out"
  out.mkdir()
  (out / "model.json").write_text('{"old": true}')
  (out / "weights.bin").mkdir()
  before = _files(out)
  with pytest.raises(WorkdirError, match=r"weights.bin is a folder, where a file is written"):
    export.export(trained["dense"], "tfjs", str(out), verify=False)
  assert _files(out) == before
  assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_a_symbolic_link_where_a_file_goes_is_refused_and_its_target_untouched(trained, tmp_path):
  elsewhere = tmp_path / "elsewhere.onnx"
  elsewhere.write_bytes(b"not ours")
  out = tmp_path / "out"
  out.mkdir()
  (out / "model.onnx").symlink_to(elsewhere)
  with pytest.raises(WorkdirError, match=r"model.onnx is a symbolic link"):
    export.export(trained["convnet"], "onnx", str(out), verify=False)
  assert elsewhere.read_bytes() == b"not ours"


def test_an_agreement_json_nested_deep_is_written_anew_with_the_models_files(trained, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "agreement.json").write_text("[" * 200_000 + "]" * 200_000)
  export.export(trained["convnet"], "onnx", str(out), verify=False)
  recorded = json.loads((out / "agreement.json").read_text())
  assert list(recorded) == ["onnx"] and (out / "model.onnx").exists()


def test_a_pipe_where_agreement_json_goes_refuses_the_export_before_any_file_lands(
  trained, tmp_path
):
  out = tmp_path / "out"
  out.mkdir()
  os.mkfifo(out / "agreement.json")
  with pytest.raises(WorkdirError, match=r"agreement.json is a named pipe"):
    export.export(trained["convnet"], "onnx", str(out), verify=False)
  assert sorted(os.listdir(out)) == ["agreement.json"]  # no model.onnx without its agreement


def test_an_export_into_a_folder_another_export_holds_is_one_line_and_writes_nothing(
  trained, tmp_path
):
  from convnet import files

  out = tmp_path / "out"
  out.mkdir()
  with files.folder_lock(str(out), "--out"):  # another export, publishing into it
    before = _files(out)
    with pytest.raises(WorkdirInUseError, match=r"being written by another process.*another --out"):
      export.export(trained["dense"], "tfjs", str(out), verify=False)
    assert _files(out) == before


def test_a_copy_that_fails_half_way_leaves_out_as_it_was(trained, tmp_path, monkeypatch):
  import shutil

  out = tmp_path / "out"
  export.export(trained["convnet"], "tfjs", str(out), verify=False)
  before = _files(out)
  copies, real_copy = [], shutil.copyfileobj

  def copy_then_fail(source, target):
    copies.append(source)
    if len(copies) == 2:  # the second file of the new export: the disk is full
      raise OSError(28, "No space left on device")
    real_copy(source, target)

  monkeypatch.setattr(shutil, "copyfileobj", copy_then_fail)
  with pytest.raises(WorkdirError, match="No space left on device"):
    export.export(trained["dense"], "tfjs", str(out), verify=False)
  assert _files(out) == before  # the convnet's pair, whole: not half of the dense network's
