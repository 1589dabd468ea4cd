r"""Pictures of what a trained network learned, drawn from its workdir.

  python -m convnet.visualize --workdir=DIR [--out=DIR/figures]

Loads the run's config and latest checkpoint, and writes PNG figures to
`--out`:
- `curves.png`: loss and accuracy per epoch, train, validation and test
  (from `metrics.jsonl`);
- `filters.png`: the first layer's kernels (a dense model's first-layer
  weights, shaped like the input);
- `feature_maps_<n>.png`: every conv block's feature maps for test image n;
- `saliency.png`: the first test image of each class, the gradient of its
  predicted class's logit with respect to the input, and Grad-CAM on the last
  conv block;
- `confusion.png`: the test set's confusion matrix;
- `mistakes.png`: the most confidently misclassified test images.

A workdir of seeds trained together (`convnet.seeds`, `convnet.sweep
--vmap_seeds`) is one `seed_<s>/` folder; its weights come from the group's
stacked checkpoint. A sweep directory gets the report's table and plots,
drawn by `convnet.report`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging

from convnet import cli, input_pipeline, models, report, summary, train
from convnet.errors import CheckpointError, ConvnetError

DPI = 100
FEATURE_MAP_COLUMNS = 8
NUM_MISTAKES = 16
SALIENCY_SAMPLE = 1000  # test images whose saliency's share on the foreground is measured


# ----------------------------------------------------------------------------
# Loading a run


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run: its config, data, model, parameters and metrics."""

  workdir: str
  config: ml_collections.ConfigDict
  dataset: input_pipeline.Dataset
  model: Any
  params: Any
  step: int
  records: list[dict[str, Any]]


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir/config.json`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(
      f"{workdir} has no config.json: it is not the workdir of a run of convnet.main, "
      "convnet.seeds or convnet.sweep"
    )
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f), type_safe=False)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path} cannot be read: {e}") from None


def read_records(workdir: str) -> list[dict[str, Any]]:
  """The records of `workdir/metrics.jsonl`, up to a torn last line; the file is not changed."""
  return train._read_metrics(os.path.join(workdir, "metrics.jsonl"), math.inf, rewrite=False)


def _checkpoint_dir(workdir: str) -> tuple[str, int | None]:
  """The checkpoints of a run; for one seed of a group, the group's and the seed."""
  own = os.path.join(workdir, "checkpoints")
  if os.path.isdir(own):
    return own, None
  seed = re.fullmatch(r"seed_(-?\d+)", os.path.basename(os.path.normpath(workdir)))
  group = os.path.join(os.path.dirname(os.path.normpath(workdir)), "checkpoints")
  if seed and os.path.isdir(group):
    return group, int(seed[1])
  raise CheckpointError(f"{workdir} has no checkpoints/ (nor its group's): train it first")


def _group_seeds(group_dir: str, loop: Mapping[str, Any]) -> list[int]:
  """The seeds of a group in the order they are stacked."""
  if "seeds" in loop:
    return [int(s) for s in loop["seeds"]]
  # Groups saved before the order was recorded stacked their seeds in sweep order, ascending.
  names = [re.fullmatch(r"seed_(-?\d+)", n) for n in os.listdir(group_dir)]
  return sorted(int(m[1]) for m in names if m)


def restore_params(workdir: str) -> tuple[Any, int]:
  """The parameters and step of a workdir's latest checkpoint."""
  directory, seed = _checkpoint_dir(workdir)
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  step = manager.latest_step()
  if step is None:
    raise CheckpointError(f"{directory} holds no checkpoint: train the run first")
  try:
    restored = manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(), loop=ocp.args.JsonRestore()),
    )
  except Exception as e:  # Orbax raises many kinds for a bad checkpoint.
    raise CheckpointError(
      f"checkpoint {os.path.join(directory, str(step))} cannot be read "
      f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''})"
    ) from None
  finally:
    manager.close()
  params = restored.state["params"]
  if seed is not None:
    seeds = _group_seeds(os.path.dirname(directory), restored.loop)
    if seed not in seeds:
      raise CheckpointError(f"seed {seed} is not one of the seeds {seeds} saved in {directory}")
    params = jax.tree.map(lambda x: x[seeds.index(seed)], params)
  return params, step


def load_run(workdir: str) -> Run:
  """Reads a run's config, data, checkpoint and metrics from its workdir."""
  if not os.path.isdir(workdir):
    raise CheckpointError(f"--workdir={workdir} is not a directory")
  config = read_config(workdir)
  params, step = restore_params(workdir)
  dataset = input_pipeline.load(config.data, config.seed)
  model = models.create_model(config.model, dataset.input_shape, dataset.num_classes)
  expected = jax.eval_shape(train.init_params, model, jax.random.key(0), dataset.input_shape)
  shapes = jax.tree.map(np.shape, params)
  if shapes != jax.tree.map(lambda x: x.shape, expected):
    raise CheckpointError(
      f"the checkpoint in {workdir} does not fit the model its config.json describes"
    )
  return Run(workdir, config, dataset, model, params, step, read_records(workdir))


# ----------------------------------------------------------------------------
# What the network computes


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, params, images):
  return model.apply({"params": params}, images)


def predict(model, params, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
  """Softmax probabilities for every image, in batches of one compiled shape."""
  split = input_pipeline.Split(images, np.zeros(len(images), np.int32))
  probs = [
    jax.nn.softmax(_logits(model, params, batch["image"]))[: int(batch["mask"].sum())]
    for batch in train.eval_batches(split, min(batch_size, len(images)))
  ]
  return np.asarray(jnp.concatenate(probs))


@functools.partial(jax.jit, static_argnums=0)
def _feature_maps(model, params, images):
  _, state = model.apply({"params": params}, images, mutable=["intermediates"])
  return {k: v[0] for k, v in state["intermediates"].items() if k.startswith("activation_")}


def feature_maps(model, params, images: np.ndarray) -> dict[str, np.ndarray]:
  """Every conv block's feature maps after its activation: `activation_{i}` -> (N, ..., C)."""
  maps = jax.device_get(_feature_maps(model, params, jnp.asarray(images)))
  return {k: np.asarray(maps[k]) for k in sorted(maps, key=lambda k: int(k.split("_")[1]))}


@functools.partial(jax.jit, static_argnums=0)
def _input_gradients(model, params, images, classes):
  def logit(image, k):
    return model.apply({"params": params}, image[None])[0, k]

  return jax.vmap(jax.grad(logit))(images, classes)


def saliency(model, params, images: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
  """d logit[class] / d image for each image; `classes` defaults to the predicted ones.

  Returns an array of the images' shape.
  """
  images = jnp.asarray(images)
  if classes is None:
    classes = jnp.argmax(_logits(model, params, images), -1)
  return np.asarray(_input_gradients(model, params, images, jnp.asarray(classes)))


@functools.partial(jax.jit, static_argnums=0)
def _feature_map_gradients(model, params, images, classes, zeros):
  def logit(image, zeros, k):
    perturbations = {key: value[None] for key, value in zeros.items()}
    return model.apply({"params": params, "perturbations": perturbations}, image[None])[0, k]

  return jax.vmap(jax.grad(logit, argnums=1))(images, zeros, classes)


def feature_map_gradients(model, params, images, classes, name: str):
  """The feature maps `name` and d logit[class] / d feature maps, each (N, ..., C).

  The gradients are taken through the model's `perturbations` (see `models.ConvNet`).
  """
  maps = feature_maps(model, params, images)
  zeros = {key: jnp.zeros_like(value) for key, value in maps.items()}
  grads = _feature_map_gradients(model, params, jnp.asarray(images), jnp.asarray(classes), zeros)
  return maps[name], np.asarray(grads[name])


def feature_centres(model, input_shape: Sequence[int], block: int) -> list[np.ndarray]:
  """Input coordinates of the centre of each position of `block`'s conv output, per axis.

  Output o's receptive field begins at `field_start + o * jump` and spans
  `receptive_field` inputs (see `convnet.summary`).
  """
  row = next(r for r in summary.model_rows(model, input_shape) if r.name == f"conv_{block}")
  return [
    start + (size - 1) / 2 + jump * np.arange(n)
    for start, size, jump, n in zip(
      row.field_start, row.receptive_field, row.jump, row.output_shape[:-1], strict=True
    )
  ]


def grad_cam(
  model, params, images: np.ndarray, classes: np.ndarray | None = None, block: int = -1
) -> np.ndarray:
  """Grad-CAM on a conv block (the last by default), on the input's grid: (N, *spatial).

  Each channel of the block's feature maps is weighted by the mean gradient of
  the class's logit over its positions; the positive part of the weighted sum
  is where the evidence for that class lies. Each position is placed at the
  centre of its receptive field and interpolated linearly between centres;
  each map is scaled to a maximum of 1.
  """
  images = np.asarray(images)
  if classes is None:
    classes = predict(model, params, images).argmax(-1)
  block = block % len(model.blocks)
  maps, grads = feature_map_gradients(model, params, images, classes, f"activation_{block}")
  spatial_axes = tuple(range(1, maps.ndim - 1))
  weights = grads.mean(axis=spatial_axes, keepdims=True)
  cams = np.maximum((weights * maps).sum(-1), 0.0)
  centres = feature_centres(model, images.shape[1:], block)
  for axis, (points, n) in enumerate(zip(centres, images.shape[1:-1], strict=True)):
    cams = np.apply_along_axis(
      lambda c, p=points, n=n: np.interp(np.arange(n), p, c), axis + 1, cams
    )
  peak = cams.reshape(len(cams), -1).max(-1).reshape((-1,) + (1,) * len(spatial_axes))
  return np.where(peak > 0, cams / np.where(peak > 0, peak, 1.0), 0.0)


def foreground_share(images: np.ndarray, saliency_maps: np.ndarray, threshold: float = 0.1):
  """Each image's share of |saliency| on its foreground (pixels above `threshold`: a digit's
  strokes, a garment), and the foreground's share of its pixels.

  Were the gradient spread evenly over the image, the two would be equal.
  """
  foreground = np.abs(images).max(-1) > threshold
  magnitude = np.abs(saliency_maps).max(-1)
  axes = tuple(range(1, foreground.ndim))
  on_foreground = (magnitude * foreground).sum(axes) / np.maximum(magnitude.sum(axes), 1e-30)
  return on_foreground, foreground.mean(axes)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """counts[true, predicted]."""
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (labels, predictions), 1)
  return counts


def confident_mistakes(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Indices of up to k misclassified examples, most confident first."""
  predictions = probs.argmax(-1)
  wrong = np.flatnonzero(predictions != labels)
  confidence = probs[wrong, predictions[wrong]]
  return wrong[np.argsort(-confidence, kind="stable")[:k]]


def first_of_each_class(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """The index of the first example of every class present, in class order."""
  return np.array(
    [np.flatnonzero(labels == k)[0] for k in range(num_classes) if (labels == k).any()]
  )


# ----------------------------------------------------------------------------
# Figures


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _save(fig, path: str) -> str:
  """Saves at the figure's own size (no tight bounding box), atomically."""
  tmp = f"{path}.tmp.{os.getpid()}.png"
  fig.savefig(tmp, dpi=DPI)
  _pyplot().close(fig)
  os.replace(tmp, path)
  return path


def _show(ax, array: np.ndarray, cmap: str = "gray", **kwargs) -> None:
  """Draws one map with no channel axis: a 1D map as a line, 2D as an image, 3D its middle slice.

  An (H, W, 3) array is drawn as a colour image.
  """
  array = np.asarray(array)
  colour = array.ndim == 3 and array.shape[-1] == 3
  while array.ndim > (3 if colour else 2):
    array = array[array.shape[0] // 2]
  if array.ndim == 1:
    ax.plot(array, lw=0.8)
  else:
    ax.imshow(np.clip(array, 0, 1) if colour else array, cmap=cmap, **kwargs)
  ax.set_xticks([])
  ax.set_yticks([])


def _example(example: np.ndarray) -> np.ndarray:
  """An example (*spatial, channels) as `_show` draws it: 3 channels of 2D in colour, else the
  first channel."""
  example = np.asarray(example)
  if example.ndim == 1:  # Features with no channel axis (PCA, selected pixels).
    return example
  return example if example.ndim == 3 and example.shape[-1] == 3 else example[..., 0]


def plot_curves(records: Sequence[Mapping[str, Any]], path: str, title: str = "") -> str:
  """Loss and accuracy per epoch for train, validation and test."""
  plt = _pyplot()
  epochs = [r for r in records if r.get("kind") == "epoch"]
  steps = [r for r in records if r.get("kind") == "train" and "train_loss" in r]
  if not epochs:
    raise CheckpointError("metrics.jsonl has no epoch record yet: nothing to plot")
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
  if steps:
    loss_ax.plot(
      [r["epoch"] for r in steps],
      [r["train_loss"] for r in steps],
      color="C0",
      alpha=0.3,
      lw=0.8,
      label="train (logged steps)",
    )
  for color, split in (("C0", "train"), ("C1", "validation"), ("C2", "test")):
    for ax, metric, scale in ((loss_ax, "loss", 1), (acc_ax, "accuracy", 100)):
      mine = [r for r in epochs if f"{split}_{metric}" in r]
      if mine:
        ax.plot(
          [r["epoch"] for r in mine],
          [scale * r[f"{split}_{metric}"] for r in mine],
          "o-",
          color=color,
          ms=3,
          label=f"{split} (epoch{' mean' if split == 'train' else ' end'})",
        )
  loss_ax.set_ylabel("cross-entropy loss")
  acc_ax.set_ylabel("accuracy (%)")
  for ax in (loss_ax, acc_ax):
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"Training curves{f': {title}' if title else ''}", fontsize=11)
  fig.tight_layout()
  return _save(fig, path)


def plot_filters(params: Mapping[str, Any], input_shape: Sequence[int], path: str, title="") -> str:
  """The first layer's kernels, one tile each, blue negative and red positive.

  For a dense model, each first-layer unit's weights are shaped like the input.
  """
  plt = _pyplot()
  if "conv_0" in params:
    kernel = np.asarray(params["conv_0"]["kernel"])  # (*window, in, out)
    tiles = np.moveaxis(kernel, -1, 0)
    what = f"conv_0: {tiles.shape[0]} kernels of {'x'.join(map(str, kernel.shape[:-2]))}"
    if kernel.shape[-2] != 1 and not (kernel.shape[-2] == 3 and kernel.ndim == 4):
      tiles = tiles.sum(-1, keepdims=True)
      what += f", summed over {kernel.shape[-2]} input channels"
  else:
    first = sorted(k for k in params if k.startswith("dense_")) or ["logits"]
    kernel = np.asarray(params[first[0]]["kernel"])  # (inputs, units)
    tiles = kernel.T.reshape(kernel.shape[1], *input_shape)
    if len(input_shape) == 1:  # Features with no channel axis (PCA, selected pixels).
      tiles = tiles[..., None]
    what = f"{first[0]}: the weights of its {kernel.shape[1]} units, shaped like the input"
  columns = min(8, len(tiles))
  rows = math.ceil(len(tiles) / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.3 * rows + 0.8), squeeze=False)
  limit = float(np.abs(tiles).max()) or 1.0
  for i, ax in enumerate(axes.flat):
    if i < len(tiles):
      tile = tiles[i]
      if tile.shape[-1] == 3:  # Colour kernels: centred on grey.
        _show(ax, 0.5 + tile / (2 * limit))
      else:
        _show(ax, tile[..., 0], cmap="RdBu_r", vmin=-limit, vmax=limit)
      ax.set_title(str(i), fontsize=7)
    else:
      ax.axis("off")
  fig.suptitle(f"First-layer weights{f' ({title})' if title else ''}\n{what}", fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


def plot_feature_maps(
  image: np.ndarray, maps: Mapping[str, np.ndarray], blocks, path: str, title: str = ""
) -> str:
  """One image and every conv block's feature maps for it, one tile per channel."""
  plt = _pyplot()
  rows = [math.ceil(m.shape[-1] / FEATURE_MAP_COLUMNS) for m in maps.values()]
  fig = plt.figure(figsize=(1.2 * FEATURE_MAP_COLUMNS + 2.2, 1.15 * sum(rows) + 0.5 * len(rows)))
  left, right = fig.subfigures(1, 2, width_ratios=(2.2, 1.2 * FEATURE_MAP_COLUMNS))
  ax = left.subplots()
  _show(ax, _example(image))
  ax.set_title(title or "input", fontsize=9)
  sections = right.subfigures(len(maps), 1, height_ratios=rows, squeeze=False)[:, 0]
  for section, (name, fmap), block, n_rows in zip(
    sections, maps.items(), blocks, rows, strict=True
  ):
    axes = section.subplots(n_rows, FEATURE_MAP_COLUMNS, squeeze=False)
    vmax = float(fmap.max()) or 1.0
    for c, ax in enumerate(axes.flat):
      if c < fmap.shape[-1]:
        _show(ax, fmap[..., c], cmap="viridis", vmin=min(float(fmap.min()), 0.0), vmax=vmax)
      else:
        ax.axis("off")
    index = name.split("_")[1]
    size = "x".join(map(str, fmap.shape[:-1]))
    section.suptitle(
      f"conv_{index} + {block.activation}: {fmap.shape[-1]} maps of {size} "
      f"(kernel {'x'.join(map(str, block.kernel_size))})",
      fontsize=9,
    )
  return _save(fig, path)


def plot_saliency(
  images: np.ndarray,
  saliency_maps: np.ndarray,
  cams: np.ndarray | None,
  labels: np.ndarray,
  predictions: np.ndarray,
  class_names: Sequence[str],
  path: str,
  title: str = "",
  cam_label: str = "Grad-CAM",
  note: str = "",
) -> str:
  """Images, |gradient| of the predicted logit with its share on the foreground, and Grad-CAM."""
  plt = _pyplot()
  n = len(images)
  rows = 2 if cams is None else 3
  fig, axes = plt.subplots(rows, n, figsize=(1.4 * n + 0.6, 1.55 * rows + 0.7), squeeze=False)
  magnitude = np.abs(saliency_maps).max(-1)
  on_foreground, _ = foreground_share(images, saliency_maps)
  for i in range(n):
    _show(axes[0, i], _example(images[i]))
    axes[0, i].set_title(
      f"true {class_names[labels[i]]}\npred {class_names[predictions[i]]}",
      fontsize=7,
      color="black" if labels[i] == predictions[i] else "red",
    )
    _show(axes[1, i], magnitude[i], cmap="hot")
    axes[1, i].text(
      0.03,
      0.03,
      f"{100 * on_foreground[i]:.0f}%",
      color="white",
      fontsize=7,
      transform=axes[1, i].transAxes,
    )
    if cams is not None:
      _show(axes[2, i], _example(images[i]))
      if cams[i].ndim == 2:
        axes[2, i].imshow(cams[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
  axes[0, 0].set_ylabel("input", fontsize=8)
  axes[1, 0].set_ylabel("|d logit / d input|\n(% on foreground)", fontsize=8)
  if cams is not None:
    axes[2, 0].set_ylabel(cam_label, fontsize=8)
  heading = f"Saliency of the predicted class{f' ({title})' if title else ''}"
  fig.suptitle(f"{heading}\n{note}" if note else heading, fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


def plot_confusion(
  counts: np.ndarray, class_names: Sequence[str], path: str, title: str = ""
) -> str:
  """Counts of (true, predicted) pairs, coloured by the share of the true class's row."""
  plt = _pyplot()
  k = len(counts)
  fig, ax = plt.subplots(figsize=(0.55 * k + 3.5, 0.55 * k + 2.5))
  shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
  for (t, p), c in np.ndenumerate(counts):
    if c:
      ax.text(p, t, str(c), ha="center", va="center", fontsize=7,
              color="white" if shares[t, p] > 0.5 else "black")  # fmt: skip
  ax.set_xticks(range(k), class_names, rotation=45 if max(map(len, class_names)) > 2 else 0,
                ha="right" if max(map(len, class_names)) > 2 else "center", fontsize=8)  # fmt: skip
  ax.set_yticks(range(k), class_names, fontsize=8)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  accuracy = np.trace(counts) / max(counts.sum(), 1)
  ax.set_title(
    f"Confusion matrix, {counts.sum():,} test images, accuracy {100 * accuracy:.2f}%"
    + (f"\n{title}" if title else ""),
    fontsize=10,
  )
  fig.tight_layout()
  return _save(fig, path)


def plot_mistakes(
  images: np.ndarray,
  labels: np.ndarray,
  probs: np.ndarray,
  class_names: Sequence[str],
  path: str,
  title: str = "",
) -> str:
  """Misclassified images with their true label, prediction and its probability."""
  plt = _pyplot()
  columns = min(8, max(len(images), 1))
  rows = max(math.ceil(len(images) / columns), 1)
  fig, axes = plt.subplots(rows, columns, figsize=(1.5 * columns, 1.75 * rows + 0.6), squeeze=False)
  for i, ax in enumerate(axes.flat):
    if i >= len(images):
      ax.axis("off")
      continue
    predicted = int(probs[i].argmax())
    _show(ax, _example(images[i]))
    ax.set_title(
      f"true {class_names[labels[i]]}\npred {class_names[predicted]} {probs[i, predicted]:.2f}",
      fontsize=7,
    )
  fig.suptitle(
    f"Most confident mistakes on the test set{f' ({title})' if title else ''}", fontsize=10
  )
  fig.tight_layout()
  return _save(fig, path)


# ----------------------------------------------------------------------------
# All the figures of a workdir


def describe(run: Run) -> str:
  """`convnet on fashion_mnist, step 4,680`: a short title for the figures."""
  data = run.config.data
  dataset = "embedded MNIST" if data.source == "embedded" else run.dataset.name
  return f"{run.config.model.name} on {dataset}, step {run.step:,}"


def write_figures(
  workdir: str, out: str | None = None, num_images: int = 3, grad_cam_block: int = -1
) -> list[str]:
  """Writes every figure of a run's workdir, or a sweep's report; returns their paths."""
  workdir = os.path.abspath(workdir)
  if os.path.isdir(os.path.join(workdir, "records")):
    records = report.load_records(workdir)
    return report.write_report(records, out or workdir, report.describe(records, workdir))
  run = load_run(workdir)
  out = out or os.path.join(workdir, "figures")
  os.makedirs(out, exist_ok=True)
  title = describe(run)
  test = run.dataset.test
  names = run.dataset.class_names
  paths = [
    plot_curves(run.records, os.path.join(out, "curves.png"), title),
    plot_filters(run.params, run.dataset.input_shape, os.path.join(out, "filters.png"), title),
  ]
  is_convnet = isinstance(run.model, models.ConvNet)
  if is_convnet:
    picks = np.arange(min(num_images, len(test)))
    maps = feature_maps(run.model, run.params, test.images[picks])
    for n in picks:
      path = os.path.join(out, f"feature_maps_{n}.png")
      label = f"test image {n}: {names[test.labels[n]]}"
      one = {k: v[n] for k, v in maps.items()}
      paths.append(plot_feature_maps(test.images[n], one, run.model.blocks, path, label))
  probs = predict(run.model, run.params, test.images)
  predictions = probs.argmax(-1)
  picks = first_of_each_class(test.labels, run.dataset.num_classes)
  images = test.images[picks]
  cams, cam_label = None, ""
  if is_convnet:
    block = grad_cam_block % len(run.model.blocks)
    cams = grad_cam(run.model, run.params, images, predictions[picks], block)
    shapes = models.feature_map_shapes(run.model.blocks, run.dataset.input_shape)
    size = next(shape for i, stage, shape in shapes if i == block and stage == "conv")
    cam_label = f"Grad-CAM, conv_{block} ({'x'.join(map(str, size))})"
  sample = np.arange(min(SALIENCY_SAMPLE, len(test)))
  on_foreground, foreground = foreground_share(
    test.images[sample], saliency(run.model, run.params, test.images[sample], predictions[sample])
  )
  note = (
    f"over {len(sample):,} test images, {100 * on_foreground.mean():.0f}% of |gradient| lies on "
    f"the foreground (pixels > 0.1), {100 * foreground.mean():.0f}% of the pixels"
  )
  logging.info("Saliency %s", note)
  paths.append(
    plot_saliency(
      images,
      saliency(run.model, run.params, images, predictions[picks]),
      cams,
      test.labels[picks],
      predictions[picks],
      names,
      os.path.join(out, "saliency.png"),
      title,
      cam_label,
      note,
    )
  )
  counts = confusion_matrix(test.labels, predictions, run.dataset.num_classes)
  paths.append(plot_confusion(counts, names, os.path.join(out, "confusion.png"), title))
  wrong = confident_mistakes(probs, test.labels, NUM_MISTAKES)
  paths.append(
    plot_mistakes(
      test.images[wrong],
      test.labels[wrong],
      probs[wrong],
      names,
      os.path.join(out, "mistakes.png"),
      title,
    )
  )
  return paths


# ----------------------------------------------------------------------------
# Command line

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "A run's workdir (or one seed_<s>/ of a group), or a sweep.")
  flags.DEFINE_string("out", None, "Where to write the figures; default: WORKDIR/figures.")
  flags.DEFINE_integer("num_images", 3, "Test images whose feature maps are drawn.")
  flags.DEFINE_integer("grad_cam_block", -1, "The conv block Grad-CAM looks at; -1: the last.")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs()
  try:
    paths = write_figures(FLAGS.workdir, FLAGS.out, FLAGS.num_images, FLAGS.grad_cam_block)
  except ConvnetError as e:
    sys.exit(f"error: {e}")
  for path in paths:
    logging.info("Wrote %s", path)
  print("Wrote " + ", ".join(paths))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
