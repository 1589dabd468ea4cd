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
  `python -m http.server --directory OUT`.
- `onnx`: `model.onnx` (opset 20), for onnxruntime and other ONNX runtimes.

Both take the model's input as the run saw it, float32 (N, *input_shape),
channels last (pixels in [0, 1] for the image datasets), and give the logits,
float32 (N, num_classes). After writing, the export runs the exported model
on the whole test split (onnxruntime for ONNX; Node.js and `@tensorflow/tfjs`
for TF.js, and the page in headless Chromium, where they are installed, see
`convnet.web`), compares it with JAX, writes `agreement.json` and prints the
agreement; a disagreement is an error.

The files are written from the model's layers by `convnet.formats`, which
also says what each format can hold.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import app, flags

from convnet import checkpoints, cli, formats
from convnet import workdir as workdir_lib
from convnet.errors import ConvnetError, ExportError

FORMATS = ("tfjs", "onnx")
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


def export(
  workdir: str,
  fmt: str,
  out: str,
  checkpoint: str = "latest",
  page: bool = False,
  verify: bool = True,
) -> list[str]:
  """Exports a run's model to `out` and checks it against JAX on the test split.

  Args:
    workdir: a `convnet.main` workdir, or one `seed_<s>/` of a group.
    fmt: "tfjs" or "onnx".
    out: the folder to write (made if missing; files of other names are kept).
    checkpoint: "latest" or "best" (see `checkpoints.restore_params`).
    page: also write the drawing page (TF.js only; see `convnet.web`).
    verify: run the exported model on the test split and write `agreement.json`.

  Returns:
    Lines that say what was written and how it agrees with JAX.

  Raises:
    ExportError: the format cannot hold a setting of the model, `--page` with
      ONNX or with inputs that are not 28x28 images, the exported model
      disagrees with JAX, or a runtime it needs is missing.
    CheckpointError, WorkdirError: the run cannot be read, or `out` written.
  """
  from convnet import visualize, web

  if fmt not in FORMATS:
    raise ExportError(f"--format={fmt} is not one of {', '.join(FORMATS)}")
  if page and fmt != "tfjs":
    raise ExportError("--page runs the TF.js model: use it with --format=tfjs")
  run = visualize.load_run(workdir, checkpoint)
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
  out = workdir_lib.make_dir(out, "--out")
  lines = []
  if fmt == "onnx":
    path = os.path.join(out, "model.onnx")
    model = formats.to_onnx(
      layers, dataset.input_shape, {k: json.dumps(v) for k, v in metadata.items()}
    )
    with workdir_lib.atomic_open(path, "wb") as f:
      f.write(model.SerializeToString())
    lines.append(f"Wrote {path} ({os.path.getsize(path):,} bytes)")
  else:
    model_json, weights = formats.to_tfjs(layers, dataset.input_shape, metadata)
    workdir_lib.atomic_write(os.path.join(out, "model.json"), json.dumps(model_json))
    with workdir_lib.atomic_open(os.path.join(out, "weights.bin"), "wb") as f:
      f.write(weights)
    lines.append(f"Wrote {out}/model.json and weights.bin ({len(weights):,} bytes)")
  images = dataset.test.images
  reference = jax_logits(run.model, run.params, images) if verify or page else None
  if page:
    lines += web.write_page(out, dataset, reference)
  if verify:
    lines.append(_verify(fmt, out, images, reference))
  if verify and page:
    lines.append(_verify_page(out, images, reference))
  return lines


def _verify(fmt: str, out: str, images: np.ndarray, reference: np.ndarray) -> str:
  """Runs the exported model on `images`; writes agreement.json; raises if it disagrees."""
  from convnet import web

  probabilities = None
  if fmt == "onnx":
    runtime, logits = "onnxruntime", onnx_logits(os.path.join(out, "model.onnx"), images)
  else:
    node = web.node_runtime()
    if node is None:
      return "Not checked in Node.js: " + web.NO_NODE
    runtime = "TF.js in Node.js"
    ((logits, probabilities),) = web.node_predict([(out, images)], node)
  result = agreement(reference, logits, probabilities)
  path = os.path.join(out, "agreement.json")
  workdir_lib.atomic_write(path, json.dumps({"runtime": runtime, **result}, indent=2) + "\n")
  line = describe_agreement(runtime, result)
  if not result["agrees"]:
    raise ExportError(f"the exported model disagrees with JAX: {line}")
  return line


def _verify_page(out: str, images: np.ndarray, reference: np.ndarray) -> str:
  """Classifies `images` in the page, in headless Chromium; raises if it disagrees with JAX.

  The result joins agreement.json as "page".
  """
  from convnet import web

  if not web.browser_available():
    return "The page not checked in a browser: " + web.NO_BROWSER
  with web.browse(out) as page:
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
  path = os.path.join(out, "agreement.json")
  recorded = {}
  if os.path.exists(path):  # the Node.js check's, where it ran
    with open(path) as f:
      recorded = json.load(f)
  workdir_lib.atomic_write(path, json.dumps({**recorded, "page": result}, indent=2) + "\n")
  line = describe_agreement(result["runtime"], result)
  if not result["agrees"]:
    raise ExportError(f"the page disagrees with JAX: {line}")
  return line


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
    lines = export(
      FLAGS.workdir, FLAGS.format, FLAGS.out, FLAGS.checkpoint, FLAGS.page, FLAGS.verify
    )
  except ImportError as e:
    sys.exit(f"error: {e.name or e} is not installed: pip install 'convnet[export]'")
  except ConvnetError as e:
    sys.exit(f"error: {e}")
  for line in lines:
    print(line)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
