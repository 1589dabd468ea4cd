"""The TF.js side of `convnet.export`: running exported models in Node.js, and the drawing page.

Node.js runs `static/predict.mjs` with `@tensorflow/tfjs` (the pure JavaScript
package from npm, `npm ci` in a convnet checkout installs it from
`package.json`); `find_tfjs` looks for it in `$CONVNET_NODE_MODULES`, then in
a `node_modules/` of the current folder or a parent, then beside the package.

The page (`static/index.html`, `static/page.js`) loads `model.json` with
`tf.loadLayersModel`, lets a person draw on a canvas, preprocesses the drawing
as the training images were made, and shows the ten class probabilities as
bars, beside a few test images with the page's and JAX's predictions.
Preprocessing, for 28x28 images with pixels in [0, 1]:
- digits (MNIST, KMNIST, the embedded digits): the ink's bounding box scaled
  to fit 20x20, then placed so that its centre of mass is the image's centre,
  as LeCun et al. made MNIST;
- garments (an IDX folder or TFDS name with "fashion" in it): the bounding box
  scaled to fit 28x28 and centred, as Fashion-MNIST's images were made.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from convnet import files
from convnet.errors import ExportError

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
TFJS_VERSION = "4.22.0"  # the version package.json pins, and the page's fallback loads
TFJS_CDN = f"https://cdn.jsdelivr.net/npm/@tensorflow/tfjs@{TFJS_VERSION}/dist/tf.min.js"
NO_NODE = (
  "it needs Node.js (`node` on PATH) and @tensorflow/tfjs (`npm ci` in the convnet checkout, "
  "or CONVNET_NODE_MODULES set to a node_modules folder that holds it)"
)
NO_BROWSER = (
  "it needs chromium (Debian's package, or CONVNET_CHROMIUM naming a Chromium or Chrome) and "
  "Playwright (pip install 'convnet[export]')"
)
NUM_EXAMPLES = 12  # test images the page shows
EXAMPLES = "examples.json"  # the page's test images, labels and JAX's predictions
# A "7" drawn on the page's 280x280 canvas: strokes of (x, y) points, for checks and screenshots.
SEVEN = (((90, 60), (200, 60), (130, 230)),)


def find_tfjs() -> str | None:
  """The folder of the `@tensorflow/tfjs` npm package, or None where none is found."""
  starts = [os.environ.get("CONVNET_NODE_MODULES", "")]
  for folder in (os.getcwd(), os.path.dirname(STATIC)):
    while True:
      starts.append(os.path.join(folder, "node_modules"))
      parent = os.path.dirname(folder)
      if parent == folder:
        break
      folder = parent
  for node_modules in filter(None, starts):
    package = os.path.join(node_modules, "@tensorflow", "tfjs")
    if os.path.isfile(os.path.join(package, "package.json")):
      return package
  return None


def node_runtime() -> tuple[str, str] | None:
  """(the `node` program, the tfjs package folder), or None where either is missing."""
  node, tfjs = shutil.which("node"), find_tfjs()
  return (node, tfjs) if node and tfjs else None


def node_predict(
  jobs: Sequence[tuple[str, np.ndarray]], runtime: tuple[str, str] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
  """Runs exported TF.js models in Node.js, all in one process.

  Args:
    jobs: (the folder of a `model.json`, inputs float32 (N, *input_shape)) pairs.
    runtime: `node_runtime()`'s answer; found if not given.

  Returns:
    For each job, the logits and TF.js's softmax probabilities, float32 (N, K).

  Raises:
    ExportError: Node.js or tfjs is missing, or the script failed (its last
      line of error output is the message).
  """
  runtime = runtime or node_runtime()
  if runtime is None:
    raise ExportError("cannot run the TF.js model: " + NO_NODE)
  node, tfjs = runtime
  with tempfile.TemporaryDirectory(prefix="convnet-node-") as tmp:
    specs = []
    for i, (model_dir, images) in enumerate(jobs):
      images = np.ascontiguousarray(images, "<f4")
      spec = {
        "model": os.path.abspath(model_dir),
        "input": os.path.join(tmp, f"{i}.input"),
        "shape": list(images.shape),
        "logits": os.path.join(tmp, f"{i}.logits"),
        "probabilities": os.path.join(tmp, f"{i}.probabilities"),
      }
      images.tofile(spec["input"])
      specs.append(spec)
    jobs_path = os.path.join(tmp, "jobs.json")
    with open(jobs_path, "w") as f:
      json.dump(specs, f)
    script = os.path.join(STATIC, "predict.mjs")
    done = subprocess.run([node, script, jobs_path, tfjs], capture_output=True, text=True)
    if done.returncode != 0:
      lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no output"]
      raise ExportError(f"TF.js in Node.js failed: {lines[-1].strip()}")
    results = []
    for spec in specs:
      logits = np.fromfile(spec["logits"], "<f4").reshape(spec["shape"][0], -1)
      probabilities = np.fromfile(spec["probabilities"], "<f4").reshape(logits.shape)
      results.append((logits, probabilities))
  return results


def check_page_input(data_config: Mapping[str, Any], input_shape: Sequence[int]) -> None:
  """Raises ExportError unless the model reads 28x28 images of pixels, as the page draws."""
  features = data_config.get("features", "pixels")
  layout = data_config.get("layout", "image")
  if tuple(input_shape) != (28, 28, 1) or features != "pixels" or layout != "image":
    raise ExportError(
      f"--page draws 28x28 images of pixels, and this run's model reads examples of shape "
      f"{tuple(input_shape)} (data.source={data_config.get('source')!r}, "
      f"data.features={features!r}, data.layout={layout!r}); export it without --page"
    )
  if data_config.get("permute_pixels", 0):
    raise ExportError(
      f"--page draws images as they are, and this run's model reads them with their pixels "
      f"permuted (data.permute_pixels={data_config['permute_pixels']}); export it without --page"
    )


def preprocessing(*names: str) -> str:
  """How the page makes a drawing into an input: "garment" or "digit" (see the module doc).

  `names` are the dataset's: its `data.name` (an IDX folder's name says
  nothing, "fashion_mnist" does) and the name the source gave it.
  """
  return "garment" if any("fashion" in name.lower() for name in names) else "digit"


def example_indices(labels: np.ndarray, count: int) -> np.ndarray:
  """`count` test indices: the first image of each class in class order, then the next ones."""
  labels = np.asarray(labels)
  firsts = [int(np.argmax(labels == k)) for k in np.unique(labels)]
  rest = np.setdiff1d(np.arange(len(labels)), firsts)
  return np.array(firsts + rest.tolist(), int)[:count]


def write_page(
  out: str, data_config: Mapping[str, Any], dataset: Any, reference_logits: np.ndarray
) -> list[str]:
  """Writes the page beside an exported TF.js model in `out`.

  Args:
    out: the folder that holds `model.json`.
    data_config: the run's `data` config (its name chooses the preprocessing).
    dataset: the run's `input_pipeline.Dataset`; `NUM_EXAMPLES` of its test
      images (`example_indices`) go to `examples.json`, with JAX's predictions.
    reference_logits: JAX's logits on the whole test split, float32 (N, K).

  Returns:
    Lines that say what was written and how to open the page.
  """
  shutil.copyfile(os.path.join(STATIC, "page.js"), os.path.join(out, "page.js"))
  tfjs = find_tfjs()
  with open(os.path.join(STATIC, "index.html")) as f:
    html = f.read().replace("TFJS_SCRIPT", "tf.min.js" if tfjs else TFJS_CDN)
  with open(os.path.join(out, "index.html"), "w") as f:
    f.write(html)
  shown = example_indices(dataset.test.labels, NUM_EXAMPLES)
  images = dataset.test.images[shown]
  examples = {
    "dataset": dataset.name,
    "preprocessing": preprocessing(data_config.get("name", ""), dataset.name),
    "class_names": list(dataset.class_names),
    "images": np.round(images.reshape(len(images), -1), 4).tolist(),
    "labels": dataset.test.labels[shown].tolist(),
    "jax_predictions": reference_logits[shown].argmax(-1).tolist(),
  }
  files.atomic_write(os.path.join(out, EXAMPLES), json.dumps(examples))
  lines = []
  if tfjs:
    shutil.copyfile(os.path.join(tfjs, "dist", "tf.min.js"), os.path.join(out, "tf.min.js"))
  else:
    lines.append(f"No local TF.js found, so the page loads it from {TFJS_CDN}")
  return lines


# ----------------------------------------------------------------------------
# The page in a browser


def find_chromium() -> str | None:
  """A Chromium or Chrome to drive: $CONVNET_CHROMIUM, else the first on PATH; or None."""
  named = os.environ.get("CONVNET_CHROMIUM")
  if named:
    return named
  names = ("chromium", "chromium-browser", "google-chrome")
  return next(filter(None, map(shutil.which, names)), None)


def browser_available() -> bool:
  """Whether `browse` can run: a Chromium is found and Playwright imports."""
  try:
    import playwright.sync_api  # noqa: F401
  except ImportError:
    return False
  return find_chromium() is not None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


@contextlib.contextmanager
def browse(folder: str, timeout_s: float = 60) -> Iterator[Any]:
  """The page in `folder`, served on a loopback port and loaded in headless Chromium.

  Yields a Playwright `Page` once the model has loaded (`window.convnet.ready`),
  with a 900x760 viewport.

  Raises:
    ExportError: no Chromium or Playwright, the page could not load the model,
      or it reported a JavaScript error.
  """
  if not browser_available():
    raise ExportError("cannot open the page: " + NO_BROWSER)
  if not os.path.isfile(os.path.join(folder, "index.html")):
    raise ExportError(f"{folder} holds no page (index.html): export to it with --page")
  from playwright.sync_api import Error as PlaywrightError
  from playwright.sync_api import sync_playwright

  handler = functools.partial(_QuietHandler, directory=os.path.abspath(folder))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  errors = []
  try:
    with sync_playwright() as playwright:
      try:
        browser = playwright.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox"])
      except PlaywrightError as e:
        raise ExportError(
          f"cannot start Chromium {find_chromium()} ({_first_line(e)}); install Debian's "
          "chromium, or set CONVNET_CHROMIUM to a Chromium or Chrome"
        ) from None
      try:
        page = browser.new_page(viewport={"width": 900, "height": 760})
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        try:
          page.goto(f"http://127.0.0.1:{server.server_port}/index.html")
          ready = "window.convnet && (window.convnet.ready || window.convnet.error)"
          page.wait_for_function(ready, timeout=timeout_s * 1000)
        except PlaywrightError as e:
          detail = errors[0] if errors else _first_line(e)
          raise ExportError(f"the page in {folder} did not load ({detail})") from None
        error = page.evaluate("window.convnet.error")
        if error:
          raise ExportError(f"the page could not load the model: {error}")
        yield page
      finally:
        browser.close()
  finally:
    server.shutdown()
    server.server_close()
  if errors:
    raise ExportError(f"the page reported an error: {errors[0]}")


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def page_predict(page: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The page's classes (N,) and probabilities (N, K) for `images`, float32 (N, 28, 28, 1)."""
  data = base64.b64encode(np.ascontiguousarray(images, "<f4").tobytes()).decode()
  got = page.evaluate("([data, n]) => window.convnet.classify(data, n)", [data, len(images)])
  classes = np.array(got["classes"])
  return classes, np.array(got["probabilities"], np.float32).reshape(len(images), -1)


def draw(page: Any, strokes: Sequence[Sequence[tuple[float, float]]] = SEVEN, steps: int = 12):
  """Draws `strokes` with the mouse on the page's canvas (280x280 coordinates).

  Returns:
    What the page made of the drawing, float32 (28, 28), and its class
    probabilities (K,).
  """
  box = page.locator("#drawing").bounding_box()
  scale = box["width"] / 280
  for stroke in strokes:
    page.mouse.move(box["x"] + stroke[0][0] * scale, box["y"] + stroke[0][1] * scale)
    page.mouse.down()
    for (x0, y0), (x1, y1) in zip(stroke[:-1], stroke[1:], strict=True):
      for t in np.linspace(0, 1, steps)[1:]:
        x, y = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
    page.mouse.up()
  page.wait_for_function("window.convnet.lastProbabilities !== null")
  drawn = np.array(page.evaluate("window.convnet.lastInput"), np.float32).reshape(28, 28)
  return drawn, np.array(page.evaluate("window.convnet.lastProbabilities"), np.float32)
