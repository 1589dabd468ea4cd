"""What a trained network computes, for interpreting it: predictions, feature maps, gradients.

Everything here takes a model (a Linen module of `convnet.models`, which lists
its `layers`), its parameters and a batch of examples `(N, *spatial,
channels)`, and returns NumPy arrays; `convnet.visualize` draws them. The
model is a static argument of the jitted functions, so each model compiles
once per batch shape.
- `predict`: softmax probabilities;
- `feature_maps`, `feature_map_gradients`: each conv block's activations and
  the gradient of a class's logit with respect to them (conv block k is the
  model's k-th convolution, see `models.layers.apply`);
- `saliency`: the gradient of a class's logit with respect to the input;
- `grad_cam`: Grad-CAM on a conv block, on the input's grid;
- `foreground_share`, `confusion_matrix`, `confident_mistakes`,
  `first_of_each_class`: counts and picks over a test set.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from convnet import epochs, input_pipeline, summary
from convnet.models import layers


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, params, images):
  return model.apply({"params": params}, images)


def predict(model, params, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
  """Softmax probabilities (N, num_classes) of images (N, *spatial, channels).

  The images go through in batches of `batch_size`, the last one padded, so
  that one compiled shape serves every batch.
  """
  split = input_pipeline.Split(images, np.zeros(len(images), np.int32))
  probs = [
    jax.nn.softmax(_logits(model, params, batch["image"]))[: int(batch["mask"].sum())]
    for batch in epochs.eval_batches(split, min(batch_size, len(images)))
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
  """d logit[class] / d image for each image, (N, *spatial, channels) like `images`.

  `classes` (N,) defaults to the predicted ones.
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
  """The feature maps `name` (`activation_{i}`) and d logit[class] / d feature maps.

  Both are (N, *block's spatial shape, block's features), for images
  (N, *spatial, channels) and classes (N,). The gradients are taken through
  the model's `perturbations` (see `models.layers.apply`).
  """
  maps = feature_maps(model, params, images)
  zeros = {key: jnp.zeros_like(value) for key, value in maps.items()}
  grads = _feature_map_gradients(model, params, jnp.asarray(images), jnp.asarray(classes), zeros)
  return maps[name], np.asarray(grads[name])


def feature_centres(model, input_shape: Sequence[int], block: int) -> list[np.ndarray]:
  """Input coordinates of the centre of each position of `block`'s conv output, per axis.

  Output o's receptive field begins at `field_start + o * jump` and spans
  `receptive_field` inputs (see `convnet.summary`), so its centre lies at
  `field_start + (receptive_field - 1) / 2 + o * jump`, in input pixels (or
  steps). `input_shape` is one example's, channels last; `block` indexes the
  model's convolutions (`layers.convs`).
  """
  name = layers.convs(model.layers)[block].name
  row = next(r for r in summary.model_rows(model, input_shape) if r.name == name)
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
  each map is scaled to a maximum of 1 (a map with no positive evidence is all
  zeros). `images` are (N, *spatial, channels); `classes` (N,) default to the
  predicted ones; `model` must have a convolution (`layers.convs`).
  """
  images = np.asarray(images)
  if classes is None:
    classes = predict(model, params, images).argmax(-1)
  block = block % len(layers.convs(model.layers))
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

  Both are (N,) fractions in [0, 1], for images and saliency maps
  (N, *spatial, channels); a pixel's value is as `pixel_magnitudes` says.
  Were the gradient spread evenly over the image, the two would be equal.
  """
  foreground = pixel_magnitudes(images) > threshold
  magnitude = pixel_magnitudes(saliency_maps)
  axes = tuple(range(1, foreground.ndim))
  on_foreground = (magnitude * foreground).sum(axes) / np.maximum(magnitude.sum(axes), 1e-30)
  return on_foreground, foreground.mean(axes)


def pixel_magnitudes(arrays: np.ndarray) -> np.ndarray:
  """Each pixel's |value|, from a batch of examples or maps (N, *spatial, channels).

  An image's pixel is its largest |value| over channels: (N, *spatial). A
  sequence of many channels (N, steps, channels), such as a spectrogram's
  frames of mel bands (`data.layout="sequence"`), keeps every value as a
  pixel: (N, steps, channels).
  """
  magnitude = np.abs(arrays)
  if arrays.ndim == 3 and arrays.shape[-1] > 1:
    return magnitude
  return magnitude.max(-1)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """counts[true, predicted], (num_classes, num_classes), of integer labels and predictions (N,)."""
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (labels, predictions), 1)
  return counts


def confident_mistakes(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Indices of up to k misclassified examples, most confident first.

  `probs` is (N, num_classes), `labels` (N,); a mistake's confidence is the
  probability of its predicted class.
  """
  predictions = probs.argmax(-1)
  wrong = np.flatnonzero(predictions != labels)
  confidence = probs[wrong, predictions[wrong]]
  return wrong[np.argsort(-confidence, kind="stable")[:k]]


def first_of_each_class(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """The index of the first example of every class present in `labels` (N,), in class order."""
  return np.array(
    [np.flatnonzero(labels == k)[0] for k in range(num_classes) if (labels == k).any()]
  )
