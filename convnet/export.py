r"""A trained model, exported for the web and for serving: TensorFlow.js and ONNX.

  python -m convnet.export --workdir=DIR --format=tfjs --out=DIR/tfjs [--page]
  python -m convnet.export --workdir=DIR --format=onnx --out=DIR/onnx [--checkpoint=best]

`--workdir` is a `convnet.main` workdir or one `seed_<s>/` of a group of seeds
trained together. The model is read from its config and checkpoint (the
latest, or with `--checkpoint=best` the best validation epoch's) and written
as:
- `tfjs`: a TensorFlow.js LayersModel, `model.json` and `weights.bin`, which
  `tf.loadLayersModel` reads (the book's runtime). With `--page`, the folder
  also gets a page (`index.html`) that classifies a digit or garment drawn on
  a canvas, and a few test images; serve it with
  `python -m http.server --bind 127.0.0.1 --directory OUT`.
- `onnx`: `model.onnx` (opset 20), for onnxruntime and other ONNX runtimes.

Both take the model's input as the run saw it, float32 (N, *input_shape),
channels last (pixels in [0, 1] for the image datasets), and give the logits,
float32 (N, num_classes). After writing, the export runs the exported model
on the whole test split (onnxruntime for ONNX; Node.js and `@tensorflow/tfjs`
for TF.js, and the page in headless Chromium, where they are installed, see
`convnet.web`), compares it with JAX, writes `agreement.json` and prints the
agreement; a disagreement is an error. Before anything is written, the
model's test accuracy in JAX must be the one `metrics.jsonl` recorded at the
checkpoint's step (`trained.check_test_accuracy`): a config.json edited
after training is refused.

The run is read by `convnet.trained`; the files are written from the
model's layers by `convnet.formats`, which also says what each format can
hold.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from absl import app, flags, logging

from convnet import checkpoints, cli, files, formats
from convnet.errors import ConvnetError, ExportError, FileFormatError

FORMATS = ("tfjs", "onnx")
# The file of each format that a runtime opens first, and that names the others: published last.
MANIFESTS = {"tfjs": "model.json", "onnx": "model.onnx"}
# Logits of JAX and of an exported model agree when |a - b| <= ATOL + RTOL * |a|: float32
# arithmetic in another order (see `agreement`).
ATOL, RTOL = 1e-4, 1e-4

# ----------------------------------------------------------------------------
# Agreement with JAX


def jax_logits(model: Any, params: Any, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """The model's logits, float32 (N, num_classes), computed by JAX in batches."""
  import jax

  apply = jax.jit(lambda x: model.apply({"params": params}, x))
  batches = [apply(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
  return np.concatenate([np.asarray(b, np.float32) for b in batches])


def onnx_logits(path: str, images: np.ndarray) -> np.ndarray:
  """The logits an ONNX model file gives `images` in onnxruntime (CPU)."""
  import onnxruntime

  session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  return session.run(["logits"], {"images": np.asarray(images, np.float32)})[0]


def softmax(logits: np.ndarray) -> np.ndarray:
  """Class probabilities from logits (N, K), in float64."""
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def agreement(
  reference: np.ndarray, logits: np.ndarray, probabilities: np.ndarray | None = None
) -> dict[str, Any]:
  """How closely exported `logits` follow JAX's `reference` logits, both (N, K).

  `probabilities` are the exported runtime's own softmax of its logits, where
  it gives them; they are compared with the softmax of `reference`.

  Returns:
    "images", "argmax_equal" (count), "max_abs_logit_difference",
    "max_abs_probability_difference", and "agrees": every argmax equal and
    every logit within ATOL + RTOL * |reference|.
  """
  reference, logits = np.asarray(reference, np.float64), np.asarray(logits, np.float64)
  probabilities = softmax(logits) if probabilities is None else probabilities
  equal = int((reference.argmax(-1) == logits.argmax(-1)).sum())
  close = bool(np.all(np.abs(logits - reference) <= ATOL + RTOL * np.abs(reference)))
  return {
    "images": len(reference),
    "argmax_equal": equal,
    "max_abs_logit_difference": float(np.abs(logits - reference).max()),
    "max_abs_probability_difference": float(np.abs(probabilities - softmax(reference)).max()),
    "agrees": equal == len(reference) and close,
  }


def describe_agreement(runtime: str, result: Mapping[str, Any]) -> str:
  """One line: the runtime, images, equal argmaxes and the largest differences."""
  logits = result.get("max_abs_logit_difference")
  return (
    f"{runtime}: argmax equal to JAX's on {result['argmax_equal']:,} of {result['images']:,} "
    "test images; "
    + ("" if logits is None else f"max |logit difference| {logits:.2g}, ")
    + f"max |probability difference| {result['max_abs_probability_difference']:.2g}"
  )


# ----------------------------------------------------------------------------
# Exporting a run

AGREEMENT = "agreement.json"


def export(
  workdir: str,
  fmt: str,
  out: str,
  checkpoint: str = "latest",
  page: bool = False,
  verify: bool = True,
  echo: Callable[[str], None] | None = None,
) -> list[str]:
  """Exports a run's model to `out` and checks it against JAX on the test split.

  The files are written to a temporary folder and checked there; only then
  are they copied into `out`, so a refused or failed export leaves `out` as
  it was. `agreement.json` in `out` keeps, for each format, the step and
  checkpoint exported and each runtime's agreement (none with `verify`
  off). A folder that holds a page gets the page again with a TF.js model,
  so that its examples are always the model's.

  Args:
    workdir: a `convnet.main` workdir, or one `seed_<s>/` of a group.
    fmt: "tfjs" or "onnx".
    out: the folder to write (made if missing; files of other names are kept).
    checkpoint: "latest" or "best" (see `checkpoints.restore_params`).
    page: also write the drawing page (TF.js only; see `convnet.web`).
    verify: run the exported model on the test split, in every runtime found.
    echo: called with each line as it is made (the command prints them).

  Returns:
    Lines that say what was written and how it agrees with JAX.

  Raises:
    ExportError: the format cannot hold a setting of the model, `--page` with
      ONNX or with inputs that are not 28x28 images, the exported model
      disagrees with JAX, or a runtime it needs cannot start.
    CheckpointError, WorkdirError: the run cannot be read (`trained.load`), its model's test
      accuracy is not what its records say (`trained.check_test_accuracy`), or `out`
      cannot be written.
  """
  from convnet import trained, web

  lines = []

  def say(line: str) -> None:
    lines.append(line)
    if echo:
      echo(line)

  if fmt not in FORMATS:
    raise ExportError(f"--format={fmt} is not one of {', '.join(FORMATS)}")
  if page and fmt != "tfjs":
    raise ExportError("--page runs the TF.js model: use it with --format=tfjs")
  if os.path.exists(out) and not os.path.isdir(out):
    raise ExportError(f"--out={out} is a file: name a folder (it is made if it is missing)")
  if fmt == "tfjs" and not page and os.path.exists(os.path.join(out, web.EXAMPLES)):
    page = True
    say(f"{out} holds a page: it is written again for this model")
  run = trained.load(workdir, checkpoint)
  dataset = run.dataset
  if page:
    web.check_page_input(run.config.data, dataset.input_shape)
  layers = formats.layers(run.model, run.params, dataset.input_shape)
  metadata = {
    "dataset": dataset.name,
    "class_names": list(dataset.class_names),
    "input_shape": list(dataset.input_shape),
    "model": run.config.model.name,
    "step": run.step,
    "checkpoint": checkpoint,
  }
  contents = _format_files(fmt, layers, dataset.input_shape, metadata)
  images = dataset.test.images
  reference = jax_logits(run.model, run.params, images) if len(images) else None
  logging.info("%s", trained.check_test_accuracy(run, reference))  # the files make its model
  with tempfile.TemporaryDirectory(prefix="convnet-export-") as staging:
    for name, data in contents.items():
      with open(os.path.join(staging, name), "wb") as f:
        f.write(data)
    if page:
      for line in web.write_page(staging, run.config.data, dataset, reference):
        say(line)
    results = []
    if verify:
      results = _verify(fmt, staging, images, reference, say)
      if page:
        results += _verify_page(staging, images, reference, say)
    out = files.make_dir(out, "--out")
    with files.folder_lock(out, "--out"):  # one export at a time publishes into `out`
      _record_agreement(out, staging, fmt, metadata, results)
      _publish(staging, out, MANIFESTS[fmt], say)
  return lines


def _format_files(fmt: str, layers, input_shape, metadata) -> dict[str, bytes]:
  """The files of the format: {name: bytes}."""
  if fmt == "onnx":
    model = formats.to_onnx(layers, input_shape, {k: json.dumps(v) for k, v in metadata.items()})
    return {"model.onnx": model.SerializeToString()}
  model_json, weights = formats.to_tfjs(layers, input_shape, metadata)
  return {"model.json": json.dumps(model_json).encode(), "weights.bin": weights}


def _publish(staging: str, out: str, manifest: str, say: Callable[[str], None]) -> None:
  """Copies every file of `staging` into `out` as one (`files.publish`), `manifest` and
  `agreement.json` last."""
  names = sorted(os.listdir(staging))
  files.publish({n: os.path.join(staging, n) for n in names}, out, last=[manifest, AGREEMENT])
  model = [name for name in names if name != AGREEMENT]
  sizes = sum(os.path.getsize(os.path.join(out, name)) for name in model)
  say(f"Wrote {', '.join(model)} to {out} ({sizes:,} bytes), with {AGREEMENT}")


def _record_agreement(
  out: str, staging: str, fmt: str, metadata, results: list[dict[str, Any]]
) -> None:
  """Writes `out`'s agreement.json with `fmt`'s entry set (the step and checkpoint, and
  `results`) into `staging`, to be published with the model's files.

  The other formats' entries are kept. A file there that is not an agreement
  record (not JSON, nested too deep, not an object) is written anew, with a
  warning; a link, a folder or a pipe there is refused when it is published.
  """
  path = os.path.join(out, AGREEMENT)
  recorded = {}
  try:
    recorded = files.read_json(path)
  except FileNotFoundError:
    pass
  except (OSError, FileFormatError) as e:
    logging.warning("%s is not an agreement record (%s): it is written anew", path, e)
  if not isinstance(recorded, dict):
    logging.warning("%s is not an agreement record (not an object): it is written anew", path)
    recorded = {}
  recorded[fmt] = {
    "step": metadata["step"],
    "checkpoint": metadata["checkpoint"],
    "checked": bool(results),
    "runtimes": results,
  }
  with open(os.path.join(staging, AGREEMENT), "w") as f:
    f.write(json.dumps(recorded, indent=2) + "\n")


def _verify(fmt, folder, images, reference, say) -> list[dict[str, Any]]:
  """Runs the exported model in `folder` on `images`; raises if it disagrees with JAX."""
  from convnet import web

  probabilities = None
  if fmt == "onnx":
    runtime, logits = "onnxruntime", onnx_logits(os.path.join(folder, "model.onnx"), images)
  else:
    node = web.node_runtime()
    if node is None:
      say("Not checked in Node.js: " + web.NO_NODE)
      return []
    runtime = "TF.js in Node.js"
    ((logits, probabilities),) = web.node_predict([(folder, images)], node)
  result = {"runtime": runtime, **agreement(reference, logits, probabilities)}
  line = describe_agreement(runtime, result)
  if not result["agrees"]:
    raise ExportError(f"the exported model disagrees with JAX: {line}")
  say(line)
  return [result]


def _verify_page(folder, images, reference, say) -> list[dict[str, Any]]:
  """Classifies `images` in the page, in headless Chromium; raises if it disagrees with JAX."""
  from convnet import web

  if not web.browser_available():
    say("The page not checked in a browser: " + web.NO_BROWSER)
    return []
  if not os.path.exists(os.path.join(folder, "tf.min.js")):
    say("The page not checked in a browser: it loads TF.js from the web")
    return []
  with web.browse(folder) as page:
    classes, probabilities = web.page_predict(page, images)
  result = {
    "runtime": "TF.js in the page, in Chromium",
    "images": len(images),
    "argmax_equal": int((classes == reference.argmax(-1)).sum()),
    "max_abs_probability_difference": float(np.abs(probabilities - softmax(reference)).max()),
  }
  result["agrees"] = (
    result["argmax_equal"] == len(images) and result["max_abs_probability_difference"] <= ATOL
  )
  line = describe_agreement(result["runtime"], result)
  if not result["agrees"]:
    raise ExportError(f"the page disagrees with JAX: {line}")
  say(line)
  return [result]


# ----------------------------------------------------------------------------
# Command line

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines this command's flags, when it runs as a program."""
  cli.define(
    flag_values,
    (
      ("string", "workdir", None, "A run's workdir, or one seed_<s>/ of a group."),
      ("enum", "format", None, "The format to write.", {"enum_values": list(FORMATS)}),
      ("string", "out", None, "The folder to write the model (and page) to."),
      (
        "enum",
        "checkpoint",
        "latest",
        "The weights exported: the latest checkpoint's, or the best validation epoch's.",
        {"enum_values": list(checkpoints.WHICH)},
      ),
      ("bool", "page", False, "Also write a page that classifies drawings (TF.js only)."),
      ("bool", "verify", True, "Compare the exported model with JAX on the test split."),
    ),
    required=("workdir", "format", "out"),
  )


def main(argv):
  cli.start(argv)
  try:
    export(
      FLAGS.workdir,
      FLAGS.format,
      FLAGS.out,
      FLAGS.checkpoint,
      FLAGS.page,
      FLAGS.verify,
      echo=functools.partial(print, flush=True),
    )
  except ImportError as e:
    sys.exit(f"error: {e.name or e} is not installed: pip install 'convnet[export]'")
  except ConvnetError as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit(f"error: interrupted; {FLAGS.out} holds only whole files of this or earlier exports")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
