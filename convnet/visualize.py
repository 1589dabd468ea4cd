r"""Pictures of what a trained network learned, drawn from its workdir.

  python -m convnet.visualize --workdir=DIR [--out=DIR/figures] [--checkpoint=best]
  python -m convnet.visualize --workdir=DIR --compare=OTHER_DIR   # two runs' t-SNE maps

Loads the run's config and its latest checkpoint (or, with
`--checkpoint=best`, its best epoch's by validation accuracy: the model behind
"test accuracy at best validation"), and writes PNG figures to `--out`:
- `curves.png`: loss and accuracy per epoch, train, validation and test
  (from `metrics.jsonl`);
- `filters.png`: the first layer's kernels (a dense model's first-layer
  weights, shaped like the input);
- `feature_maps_<n>.png`: every conv block's feature maps for test image n
  (a conv block is one of the model's convolutions and the poolings after it);
- `saliency.png`: the first test image of each class, the gradient of its
  predicted class's logit with respect to the input, and Grad-CAM on the last
  conv block (for a model with convolutions);
- `confusion.png`: the test set's confusion matrix;
- `mistakes.png`: the most confidently misclassified test images;
- `occlusion.png` and `occlusion.json`: for the same images as `saliency.png`,
  the drop in the true class's probability when a patch covers each pixel,
  beside saliency and Grad-CAM, and the rank correlations of occlusion with
  them over a sample of test images (examples with pixels, not feature vectors);
- `embedding.png` and `embedding.json`: a t-SNE map of the penultimate
  activations of a sample of test images, by class, with k-NN accuracy and
  silhouette on the map and on the activations;
- `maximised_conv_<k>.png` and `maximised_logits.png`: activation
  maximisation of the first filters of each conv block and of each logit.

With `--compare=OTHER_DIR` it writes only `embedding_comparison.png` and
`.json`: the two runs' maps side by side, on the same test images.

A workdir of seeds trained together (`convnet.seeds`, `convnet.sweep
--vmap_seeds`) is one `seed_<s>/` folder; its weights come from the group's
stacked checkpoint. A sweep directory gets the report's table and plots,
drawn by `convnet.report`. What the figures show is computed by
`convnet.interpret`; the run is read by `convnet.trained`.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import app, flags, logging

from convnet import (
  analysis,
  checkpoints,
  cli,
  display,
  files,
  interpret,
  report,
  sources,
  summary,
  trained,
)
from convnet.errors import CheckpointError, ConfigError, ConvnetError
from convnet.models import layers

DPI = 100
FEATURE_MAP_COLUMNS = 8
NUM_MISTAKES = 16
SALIENCY_SAMPLE = 1000  # test images whose saliency's share on the foreground is measured
OCCLUSION_SAMPLE = 100  # test images whose occlusion is compared with saliency and Grad-CAM
EMBEDDING_EXAMPLES = 2000  # test images embedded by t-SNE (--embedding_examples)
KNN_NEIGHBOURS = 5
MAXIMISED_FILTERS = 8  # filters of each conv block drawn by activation maximisation
MAXIMISE_STEPS = 200


# ----------------------------------------------------------------------------
# Figures


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _save(fig, path: str) -> str:
  """Saves a PNG at the figure's own size (no tight bounding box), atomically; closes it."""
  files.save_figure(fig, path, DPI)
  _pyplot().close(fig)
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


def example_map(example: np.ndarray) -> np.ndarray:
  """An example (*spatial, channels) as `_show` draws it: 3 channels of 2D in colour, a
  sequence of many channels (a spectrogram's frames) as a map of channels by steps, else the
  first channel."""
  example = np.asarray(example)
  if example.ndim == 1:  # Features with no channel axis (PCA, selected pixels).
    return example
  if example.ndim == 2 and example.shape[-1] > 1:  # (steps, channels): channels down, steps across
    return example.T
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


def plot_filters(
  model, params: Mapping[str, Any], input_shape: Sequence[int], path: str, title=""
) -> str:
  """The first layer's kernels, one tile each, blue negative and red positive.

  For a model whose first layer with weights is dense, each of its units'
  weights are shaped like the input.
  """
  plt = _pyplot()
  first = next(layer for layer in model.layers if isinstance(layer, layers.Conv | layers.Dense))
  kernel = np.asarray(params[first.name]["kernel"])
  if isinstance(first, layers.Conv):  # kernel (*window, in, out)
    tiles = np.moveaxis(kernel, -1, 0)
    what = f"{first.name}: {tiles.shape[0]} kernels of {display.shape(kernel.shape[:-2])}"
    if kernel.shape[-2] != 1 and not (kernel.shape[-2] == 3 and kernel.ndim == 4):
      tiles = tiles.sum(-1, keepdims=True)
      what += f", summed over {kernel.shape[-2]} input channels"
  else:  # kernel (inputs, units)
    tiles = kernel.T.reshape(kernel.shape[1], *input_shape)
    if len(input_shape) == 1:  # Features with no channel axis (PCA, selected pixels).
      tiles = tiles[..., None]
    what = f"{first.name}: the weights of its {kernel.shape[1]} units, shaped like the input"
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
  image: np.ndarray,
  maps: Mapping[str, np.ndarray],
  convs: Sequence[layers.Conv],
  path: str,
  title: str = "",
) -> str:
  """One image and every conv block's feature maps for it, one tile per channel.

  `maps` holds `activation_{k}` for the k-th of `convs` (`interpret.feature_maps`).
  """
  plt = _pyplot()
  rows = [math.ceil(m.shape[-1] / FEATURE_MAP_COLUMNS) for m in maps.values()]
  fig = plt.figure(figsize=(1.2 * FEATURE_MAP_COLUMNS + 2.2, 1.15 * sum(rows) + 0.5 * len(rows)))
  left, right = fig.subfigures(1, 2, width_ratios=(2.2, 1.2 * FEATURE_MAP_COLUMNS))
  ax = left.subplots()
  _show(ax, example_map(image))
  ax.set_title(title or "input", fontsize=9)
  sections = right.subfigures(len(maps), 1, height_ratios=rows, squeeze=False)[:, 0]
  for section, fmap, conv, n_rows in zip(sections, maps.values(), convs, rows, strict=True):
    axes = section.subplots(n_rows, FEATURE_MAP_COLUMNS, squeeze=False)
    vmax = float(fmap.max()) or 1.0
    for c, ax in enumerate(axes.flat):
      if c < fmap.shape[-1]:
        _show(ax, fmap[..., c], cmap="viridis", vmin=min(float(fmap.min()), 0.0), vmax=vmax)
      else:
        ax.axis("off")
    size = display.shape(fmap.shape[:-1])
    section.suptitle(
      f"{conv.name} + {conv.activation}: {fmap.shape[-1]} maps of {size} "
      f"(kernel {display.shape(conv.kernel_size)})",
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
  magnitude = interpret.pixel_magnitudes(saliency_maps)
  if magnitude.ndim == 3 and images.ndim == 3:  # sequences of many channels, drawn as `_example`
    magnitude = magnitude.transpose(0, 2, 1)
  on_foreground, _ = interpret.foreground_share(images, saliency_maps)
  for i in range(n):
    _show(axes[0, i], example_map(images[i]))
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
      _show(axes[2, i], example_map(images[i]))
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
    _show(ax, example_map(images[i]))
    ax.set_title(
      f"true {class_names[labels[i]]}\npred {class_names[predicted]} {probs[i, predicted]:.2f}",
      fontsize=7,
    )
  fig.suptitle(
    f"Most confident mistakes on the test set{f' ({title})' if title else ''}", fontsize=10
  )
  fig.tight_layout()
  return _save(fig, path)


def plot_occlusion(
  images: np.ndarray,
  saliency_magnitude: np.ndarray,
  cams: np.ndarray | None,
  drops: np.ndarray,
  labels: np.ndarray,
  class_names: Sequence[str],
  path: str,
  title: str = "",
  cam_label: str = "Grad-CAM",
  note: str = "",
) -> str:
  """Images, then |saliency|, Grad-CAM and occlusion of their true class, one column each.

  `saliency_magnitude`, `cams` and `drops` are (N, *spatial) (`interpret.occlusion`'s
  drops: red where covering a pixel lowers the class's probability, each map
  scaled to its largest |drop|); each column's title gives the largest drop and
  Spearman's rank correlation of occlusion with the others (n/a: an empty map).
  """
  plt = _pyplot()
  n = len(images)
  rows = [("input", None), ("|d logit / d input|", saliency_magnitude)]
  rows += [(cam_label, cams)] if cams is not None else []
  rows += [("occlusion: drop in\np(true class), scaled", drops)]
  fig, axes = plt.subplots(
    len(rows), n, figsize=(1.4 * n + 0.8, 1.55 * len(rows) + 0.8), squeeze=False
  )
  with_saliency = interpret.rank_correlation(drops, saliency_magnitude)
  with_cam = interpret.rank_correlation(drops, cams) if cams is not None else None
  for i in range(n):
    heading = (
      f"{class_names[labels[i]]}, max drop {drops[i].max():.2f}\nρ sal {with_saliency[i]:.2f}"
    )
    if with_cam is not None:
      heading += ", cam n/a" if np.isnan(with_cam[i]) else f", cam {with_cam[i]:.2f}"
    for r, (_, maps) in enumerate(rows):
      ax = axes[r, i]
      if maps is None:
        _show(ax, example_map(images[i]))
        ax.set_title(heading, fontsize=7)
      elif maps is drops:  # each map to its own largest |drop|: a sure class drops little
        limit = float(np.abs(maps[i]).max()) or 1.0
        _show(ax, maps[i], cmap="RdBu_r", vmin=-limit, vmax=limit)
      elif maps is cams and maps[i].ndim == 2:  # over the image, as in saliency.png
        _show(ax, example_map(images[i]))
        ax.imshow(maps[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
      else:
        _show(ax, maps[i], cmap="hot" if maps is saliency_magnitude else "jet")
  for r, (label, _) in enumerate(rows):
    axes[r, 0].set_ylabel(label, fontsize=8)
  heading = f"Occlusion of the true class{f' ({title})' if title else ''}"
  fig.suptitle(f"{heading}\n{note}" if note else heading, fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


def plot_embeddings(
  panels: Sequence[tuple[np.ndarray, np.ndarray, str]],
  class_names: Sequence[str],
  path: str,
  title: str = "",
) -> str:
  """2D maps side by side, one panel per (points (N, 2), labels (N,), caption), by class colour."""
  plt = _pyplot()
  colours = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
  fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 5.9), squeeze=False)
  for ax, (points, labels, caption) in zip(axes[0], panels, strict=True):
    for k, name in enumerate(class_names):
      chosen = labels == k
      if chosen.any():
        ax.scatter(*points[chosen].T, s=4, color=colours(k % colours.N), label=name, alpha=0.7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(caption, fontsize=8)
  axes[0, -1].legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5))
  fig.suptitle(f"t-SNE of the penultimate activations{f' ({title})' if title else ''}", fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


def plot_maximised(
  inputs: np.ndarray,
  captions: Sequence[str],
  path: str,
  title: str = "",
  data_range: tuple[float, float] | None = None,
) -> str:
  """Inputs found by activation maximisation (T, *input_shape), one tile each, captioned.

  `data_range` (low, high): the grey scale of every tile, so that tiles compare and a constant
  one shows its value (None: each tile scaled to its own values).
  """
  scale = {} if data_range is None else {"vmin": data_range[0], "vmax": data_range[1]}
  plt = _pyplot()
  columns = min(FEATURE_MAP_COLUMNS, max(len(inputs), 1))
  rows = max(math.ceil(len(inputs) / columns), 1)
  fig, axes = plt.subplots(rows, columns, figsize=(1.5 * columns, 1.7 * rows + 0.9), squeeze=False)
  for i, ax in enumerate(axes.flat):
    if i < len(inputs):
      _show(ax, example_map(inputs[i]), **scale)
      ax.set_title(captions[i], fontsize=7)
    else:
      ax.axis("off")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


# ----------------------------------------------------------------------------
# All the figures of a workdir


def describe(run: trained.TrainedRun) -> str:
  """`convnet on fashion_mnist, step 4,680`: a short title for the figures."""
  dataset = sources.title(run.config.data)
  return f"{run.config.model.name} on {dataset}, step {run.step:,}"


def check_occlusion(input_shape: tuple[int, ...], patch: int, stride: int) -> None:
  """Refuses occlusion's `patch` and `stride` (pixels) on examples of `input_shape` (spatial
  axes, then channels) where they cannot work.

  Raises:
    ConfigError: a stride longer than the patch, or a patch that covers the whole image, naming
      both flags (see `interpret.occlusion_masks`).
  """
  try:
    interpret.occlusion_masks(input_shape[:-1], patch, stride)
  except ValueError as e:
    raise ConfigError(f"--occlusion_patch={patch} --occlusion_stride={stride}: {e}") from None


def write_figures(
  workdir: str,
  out: str | None = None,
  num_images: int = 3,
  grad_cam_block: int = -1,
  checkpoint: str = "latest",
  occlusion_patch: int = 4,
  occlusion_stride: int = 2,
  embedding_examples: int = EMBEDDING_EXAMPLES,
  maximise_steps: int = MAXIMISE_STEPS,
) -> list[str]:
  """Writes every figure of a run's workdir, or a sweep's report; returns their paths.

  `checkpoint`: "latest" or "best" (see `trained.load`). Occlusion covers
  patches of `occlusion_patch` pixels every `occlusion_stride`; the t-SNE map
  embeds `embedding_examples` test images (a seeded sample); activation
  maximisation climbs `maximise_steps` steps.

  Raises:
    ConfigError: `grad_cam_block` names a conv block the model lacks.
    CheckpointError, WorkdirError, DataError: as `trained.load`, or `out` cannot be written.
  """
  workdir = os.path.abspath(workdir)
  if os.path.isdir(os.path.join(workdir, "records")):
    records = analysis.load_records(workdir)
    return report.write_report(
      records, out or workdir, report.describe(records, workdir), sweep_dir=workdir
    )
  run = trained.load(workdir, checkpoint)
  convs = layers.convs(run.model.layers)
  num_blocks = len(convs)
  if num_blocks and not -num_blocks <= grad_cam_block < num_blocks:
    raise ConfigError(
      f"--grad_cam_block={grad_cam_block}: the model has {num_blocks} conv blocks; "
      f"give 0 to {num_blocks - 1}, or -1 for the last"
    )
  out = out or os.path.join(workdir, "figures")
  figures = ["curves.png", "filters.png", "saliency.png", "confusion.png", "mistakes.png"]
  figures += [f"feature_maps_{n}.png" for n in range(num_images)] if convs else []
  spatial = len(run.dataset.input_shape) > 1  # not feature vectors
  figures += ["occlusion.png", "occlusion.json"] if spatial else []
  if spatial:  # a bad patch is refused before anything is drawn
    check_occlusion(run.dataset.input_shape, occlusion_patch, occlusion_stride)
  embedding = min(embedding_examples, len(run.dataset.test)) > KNN_NEIGHBOURS
  figures += ["embedding.png", "embedding.json"] if embedding else []
  figures += [f"maximised_conv_{k}.png" for k in range(num_blocks)] + ["maximised_logits.png"]
  files.prepare_folder(out, figures)  # all checked before any is drawn
  title = describe(run)
  test = run.dataset.test
  names = run.dataset.class_names
  paths = [
    plot_curves(run.records, os.path.join(out, "curves.png"), title),
    plot_filters(
      run.model, run.params, run.dataset.input_shape, os.path.join(out, "filters.png"), title
    ),
  ]
  if convs:
    picks = np.arange(min(num_images, len(test)))
    maps = interpret.feature_maps(run.model, run.params, test.images[picks])
    for n in picks:
      path = os.path.join(out, f"feature_maps_{n}.png")
      label = f"test image {n}: {names[test.labels[n]]}"
      one = {k: v[n] for k, v in maps.items()}
      paths.append(plot_feature_maps(test.images[n], one, convs, path, label))
  probs = interpret.predict(run.model, run.params, test.images)
  predictions = probs.argmax(-1)
  picks = interpret.first_of_each_class(test.labels, run.dataset.num_classes)
  images = test.images[picks]
  cams, cam_label = None, ""
  if convs:
    block = grad_cam_block % num_blocks
    cams = interpret.grad_cam(run.model, run.params, images, predictions[picks], block)
    rows = summary.model_rows(run.model, run.dataset.input_shape)
    size = next(row.output_shape[:-1] for row in rows if row.name == convs[block].name)
    cam_label = f"Grad-CAM, {convs[block].name} ({display.shape(size)})"
  sample = np.arange(min(SALIENCY_SAMPLE, len(test)))
  on_foreground, foreground = interpret.foreground_share(
    test.images[sample],
    interpret.saliency(run.model, run.params, test.images[sample], predictions[sample]),
  )
  note = (
    f"over {len(sample):,} test images, {100 * on_foreground.mean():.0f}% of |gradient| lies on "
    f"the foreground (pixels > 0.1), {100 * foreground.mean():.0f}% of the pixels"
  )
  logging.info("Saliency %s", note)
  paths.append(
    plot_saliency(
      images,
      interpret.saliency(run.model, run.params, images, predictions[picks]),
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
  block = grad_cam_block % num_blocks if convs else None
  if spatial:
    paths += write_occlusion(run, picks, out, block, occlusion_patch, occlusion_stride)
  else:
    logging.info("No occlusion: the examples are feature vectors, with no pixels to cover")
  if embedding:
    paths += write_embedding(run, out, embedding_examples)
  paths += write_maximised(run, out, maximise_steps)
  counts = interpret.confusion_matrix(test.labels, predictions, run.dataset.num_classes)
  paths.append(plot_confusion(counts, names, os.path.join(out, "confusion.png"), title))
  wrong = interpret.confident_mistakes(probs, test.labels, NUM_MISTAKES)
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


def sample(num_examples: int, size: int, seed: int = 0) -> np.ndarray:
  """`size` indices of `num_examples` (all of them if fewer), drawn with `seed`, in order."""
  if size >= num_examples:
    return np.arange(num_examples)
  return np.sort(np.random.default_rng(seed).choice(num_examples, size, replace=False))


def _write_json(path: str, value) -> str:
  files.atomic_write(path, files.json_text(value))
  return path


def _agreement(values: np.ndarray) -> dict[str, Any]:
  return {
    "mean": float(np.nanmean(values)) if np.isfinite(values).any() else float("nan"),
    "undefined": int(np.isnan(values).sum()),  # an empty (constant) map
    "per_image": values,
  }


def write_occlusion(
  run: trained.TrainedRun,
  picks: np.ndarray,
  out: str,
  block: int | None,
  patch: int = 4,
  stride: int = 2,
) -> list[str]:
  """`occlusion.png` of test images `picks`, and `occlusion.json`: the agreement measures.

  Occlusion (`interpret.occlusion`, fill: the training images' mean per
  channel), |saliency| and Grad-CAM on conv block `block` (None: no Grad-CAM),
  all of the true class; the JSON gives Spearman's rank correlation over pixels
  of occlusion with the other two, per image and their mean, over
  `OCCLUSION_SAMPLE` test images (a seeded sample).
  """
  test = run.dataset.test
  train_images = run.dataset.train.images
  fill = train_images.mean(axis=tuple(range(train_images.ndim - 1)))

  def maps(indices):
    images, classes = test.images[indices], test.labels[indices]
    drops = interpret.occlusion(run.model, run.params, images, classes, patch, stride, fill)
    gradients = interpret.saliency(run.model, run.params, images, classes)
    cams = None
    if block is not None:
      cams = interpret.grad_cam(run.model, run.params, images, classes, block)
    return drops, np.abs(gradients).max(-1), cams

  measured = sample(len(test), OCCLUSION_SAMPLE)
  both = maps(np.concatenate([picks, measured]))  # one batch: one compiled program of each
  drops, magnitude, cams = (m if m is None else m[len(picks) :] for m in both)
  measures = {
    "patch": patch,
    "stride": stride,
    "fill": fill,
    "examples": len(measured),
    "test_indices": measured,
    "spearman_with_saliency": _agreement(interpret.rank_correlation(drops, magnitude)),
  }
  note = (
    f"over {len(measured)} test images, Spearman's ρ of occlusion with |saliency| "
    f"{measures['spearman_with_saliency']['mean']:.2f}"
  )
  cam_label = ""
  if cams is not None:
    measures["grad_cam_block"] = block
    measures["spearman_with_grad_cam"] = _agreement(interpret.rank_correlation(drops, cams))
    note += f", with Grad-CAM {measures['spearman_with_grad_cam']['mean']:.2f}"
    cam_label = f"Grad-CAM, {layers.convs(run.model.layers)[block].name}"
  logging.info("Occlusion: %s", note)
  drops, magnitude, cams = (m if m is None else m[: len(picks)] for m in both)
  figure = plot_occlusion(
    test.images[picks],
    magnitude,
    cams,
    drops,
    test.labels[picks],
    run.dataset.class_names,
    os.path.join(out, "occlusion.png"),
    describe(run),
    cam_label,
    f"patch {patch}, stride {stride}; {note}",
  )
  return [figure, _write_json(os.path.join(out, "occlusion.json"), measures)]


def representation(
  run: trained.TrainedRun, examples: int = EMBEDDING_EXAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """A run's learned representation of `examples` test images (a sample drawn with `seed`).

  Returns:
    The t-SNE map (n, 2) of their penultimate activations (`interpret.embed`),
    their labels (n,), and the separation measures: leave-one-out k-NN
    accuracy and silhouette, on the map and on the activations.
  """
  test = run.dataset.test
  indices = sample(len(test), examples, seed)
  activations = interpret.penultimate(run.model, run.params, test.images[indices])
  points = interpret.embed(activations, seed)
  labels = test.labels[indices]
  measures: dict[str, Any] = {"examples": len(indices), "features": activations.shape[1]}
  measures["k"] = KNN_NEIGHBOURS
  spaces = {"embedding": points, "activations": activations}
  measures["knn_accuracy"] = {
    where: interpret.knn_accuracy(values, labels, KNN_NEIGHBOURS)
    for where, values in spaces.items()
  }
  measures["silhouette"] = {where: _silhouette(values, labels) for where, values in spaces.items()}
  return points, labels, measures


def _silhouette(points: np.ndarray, labels: np.ndarray) -> float:
  try:
    return interpret.silhouette(points, labels)
  except ValueError:  # one class in the sample
    return float("nan")


def _caption(run: trained.TrainedRun, measures: Mapping[str, Any]) -> str:
  knn, silhouette = measures["knn_accuracy"], measures["silhouette"]
  return (
    f"{describe(run)}, {measures['examples']:,} test images\n"
    f"{measures['k']}-NN accuracy {100 * knn['embedding']:.1f}% on the map, "
    f"{100 * knn['activations']:.1f}% on the {measures['features']} activations\n"
    f"silhouette {silhouette['embedding']:.2f} on the map, "
    f"{silhouette['activations']:.2f} on the activations"
  )


def write_embedding(
  run: trained.TrainedRun, out: str, examples: int = EMBEDDING_EXAMPLES
) -> list[str]:
  """`embedding.png`, the t-SNE map of a run's test images by class, and `embedding.json`."""
  points, labels, measures = representation(run, examples)
  logging.info("Embedding: %s", _caption(run, measures).replace("\n", "; "))
  path = os.path.join(out, "embedding.png")
  figure = plot_embeddings(
    [(points, labels, _caption(run, measures))], run.dataset.class_names, path
  )
  return [figure, _write_json(os.path.join(out, "embedding.json"), measures)]


def _check_same_test_set(runs: Sequence[trained.TrainedRun], other: str) -> None:
  """Raises ConfigError, naming why, unless two runs' test splits are the same examples: the
  same data fields (the pixel permutation may differ: the same examples, their pixels moved),
  the same example shape and the same labels in the same order."""

  def data(run):
    fields = run.config.data.to_dict()
    fields.pop("permute_pixels", None)
    return fields

  mine, theirs = (run.dataset.test for run in runs)
  differ = sorted(k for k in set(data(runs[0])) | set(data(runs[1]))
                  if data(runs[0]).get(k) != data(runs[1]).get(k))  # fmt: skip
  if differ:
    shown = ", ".join(
      f"data.{k}={data(runs[1]).get(k)!r} against {data(runs[0]).get(k)!r}" for k in differ[:3]
    )
    why = f"its data differs ({shown})"
  elif mine.images.shape[1:] != theirs.images.shape[1:]:
    why = f"its test examples are {theirs.images.shape[1:]}, not {mine.images.shape[1:]}"
  elif len(mine) != len(theirs) or not np.array_equal(mine.labels, theirs.labels):
    why = f"its {len(theirs):,} test labels are not the {len(mine):,} of --workdir, in order"
  else:
    return
  raise ConfigError(f"--compare={other}: {why}; compare two runs on the same test examples")


def write_comparison(
  workdir: str,
  other: str,
  out: str | None = None,
  checkpoint: str = "latest",
  examples: int = EMBEDDING_EXAMPLES,
) -> list[str]:
  """`embedding_comparison.png`: two runs' t-SNE maps side by side, and its JSON of measures.

  Both runs embed the same test images (their test sets must be the same), so
  their k-NN accuracies and silhouettes compare. Writes to `out` (default
  WORKDIR/figures).

  Raises:
    ConfigError: the two runs' test sets differ.
    CheckpointError: `other` is not a directory.
    CheckpointError, WorkdirError, DataError: as `trained.load`, or `out` cannot be written.
  """
  workdir, other = os.path.abspath(workdir), os.path.abspath(other)
  if not os.path.isdir(other):
    raise CheckpointError(f"--compare={other} is not a directory")
  runs = [trained.load(workdir, checkpoint), trained.load(other, checkpoint)]
  _check_same_test_set(runs, other)
  out = out or os.path.join(workdir, "figures")
  names = ["embedding_comparison.png", "embedding_comparison.json"]
  files.prepare_folder(out, names)
  panels, entries = [], []
  for run in runs:
    points, labels, measures = representation(run, examples)
    panels.append((points, labels, _caption(run, measures)))
    entries.append({"workdir": run.workdir, "run": describe(run), "step": run.step, **measures})
  figure = plot_embeddings(panels, runs[0].dataset.class_names, os.path.join(out, names[0]))
  return [figure, _write_json(os.path.join(out, names[1]), {"runs": entries})]


def write_maximised(run: trained.TrainedRun, out: str, steps: int = MAXIMISE_STEPS) -> list[str]:
  """`maximised_conv_<k>.png` per conv block and `maximised_logits.png`: activation maximisation.

  The first `MAXIMISED_FILTERS` filters of each block and every class's logit
  (`interpret.maximise`, within the training images' range); each tile's
  caption gives the value it reached.
  """
  train_images = run.dataset.train.images
  data_range = (float(train_images.min()), float(train_images.max()))
  names = run.dataset.class_names
  groups = [  # (figure, targets, captions, what)
    (
      f"maximised_{conv.name}.png",
      [(f"activation_{k}", c) for c in range(min(MAXIMISED_FILTERS, conv.features))],
      [f"filter {c}" for c in range(min(MAXIMISED_FILTERS, conv.features))],
      f"{conv.name}: the inputs that most excite {min(MAXIMISED_FILTERS, conv.features)} of "
      f"its {conv.features} filters (mean activation)",
    )
    for k, conv in enumerate(layers.convs(run.model.layers))
  ]
  classes = range(run.dataset.num_classes)
  groups.append(
    (
      "maximised_logits.png",
      [("logits", c) for c in classes],
      [names[c] for c in classes],
      "the inputs that most raise each class's logit",
    )
  )
  targets = [target for group in groups for target in group[1]]  # all in one program
  inputs = interpret.maximise(
    run.model, run.params, targets, run.dataset.input_shape, steps=steps, data_range=data_range
  )
  values = interpret.target_values(run.model, run.params, targets, inputs)
  paths, first = [], 0
  for name, group, captions, what in groups:
    chosen = slice(first, first + len(group))
    first += len(group)
    captions = [f"{c}: {v:.2f}" for c, v in zip(captions, values[chosen], strict=True)]
    title = f"Activation maximisation, {what}\n{describe(run)}, {steps} steps"
    path = os.path.join(out, name)
    paths.append(plot_maximised(inputs[chosen], captions, path, title, data_range))
  return paths


# ----------------------------------------------------------------------------
# Command line

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines this command's flags, when it runs as a program."""
  cli.define(
    flag_values,
    (
      ("string", "workdir", None, "A run's workdir (or one seed_<s>/ of a group), or a sweep."),
      ("string", "out", None, "Where to write the figures; default: WORKDIR/figures."),
      ("integer", "num_images", 3, "Test images whose feature maps are drawn.", {"lower_bound": 0}),
      ("integer", "grad_cam_block", -1, "The conv block Grad-CAM looks at; -1: the last."),
      (
        "enum",
        "checkpoint",
        "latest",
        "The weights drawn: the latest checkpoint's, or the best validation epoch's.",
        {"enum_values": list(checkpoints.WHICH)},
      ),
      ("integer", "occlusion_patch", 4, "Occlusion's patch, in pixels.", {"lower_bound": 1}),
      ("integer", "occlusion_stride", 2, "Occlusion's stride, in pixels.", {"lower_bound": 1}),
      (
        "integer",
        "embedding_examples",
        EMBEDDING_EXAMPLES,
        "Test images in the t-SNE map of the penultimate activations (a seeded sample).",
        {"lower_bound": KNN_NEIGHBOURS + 1},
      ),
      (
        "integer",
        "maximise_steps",
        MAXIMISE_STEPS,
        "Gradient ascent steps of activation maximisation.",
        {"lower_bound": 1},
      ),
      (
        "string",
        "compare",
        None,
        "Another run on the same data: write only the side-by-side t-SNE maps of the two "
        "(embedding_comparison.png and .json).",
      ),
    ),
    required=("workdir",),
  )


def main(argv):
  cli.start(argv)
  try:
    if FLAGS.compare:
      paths = write_comparison(
        FLAGS.workdir, FLAGS.compare, FLAGS.out, FLAGS.checkpoint, FLAGS.embedding_examples
      )
    else:
      paths = write_figures(
        FLAGS.workdir,
        FLAGS.out,
        FLAGS.num_images,
        FLAGS.grad_cam_block,
        FLAGS.checkpoint,
        FLAGS.occlusion_patch,
        FLAGS.occlusion_stride,
        FLAGS.embedding_examples,
        FLAGS.maximise_steps,
      )
  except ConvnetError as e:
    sys.exit(f"error: {e}")
  print("Wrote " + ", ".join(paths))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
