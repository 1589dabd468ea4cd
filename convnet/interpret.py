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
- `occlusion`: the drop in a class's probability when a patch covers each
  position (no gradients: the check saliency and Grad-CAM are measured
  against), and `rank_correlation`, how two such maps agree;
- `penultimate`, `embed`, `knn_accuracy`, `silhouette`: the learned
  representation (the input to the logits layer), in 2D by t-SNE, and how well
  it separates the classes;
- `maximise`, `target_values`: inputs that most excite a conv block's filter or
  a class's logit, by regularised gradient ascent;
- `foreground_share`, `confusion_matrix`, `confident_mistakes`,
  `first_of_each_class`: counts and picks over a test set.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

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


# ----------------------------------------------------------------------------
# Occlusion

OCCLUSION_BATCH = 512  # covered copies of an image per call


def _per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
  values = (value,) * ndim if isinstance(value, int | np.integer) else tuple(value)
  if len(values) != ndim or any(int(v) < 1 for v in values):
    raise ValueError(f"{name}={value!r}: give one positive integer, or one per spatial axis")
  return tuple(int(v) for v in values)


def occlusion_masks(
  spatial_shape: Sequence[int], patch: int | Sequence[int], stride: int | Sequence[int]
) -> np.ndarray:
  """Where each patch lies: bool (num_patches, *spatial_shape), True under the patch.

  Along each axis the patches start every `stride` pixels from 0, and one more
  ends at the last pixel where the strides miss it, so that every pixel is
  covered; a patch longer than an axis spans it. `patch` and `stride` are an
  int, or one per spatial axis.

  Raises:
    ValueError: `patch` or `stride` is not positive, or not one per axis; no spatial axis; a
      stride longer than the patch (pixels left uncovered); a patch that covers the whole image.
  """
  if not len(spatial_shape):
    raise ValueError("occlusion needs examples with a spatial axis, not feature vectors")
  sizes = [min(p, n) for p, n in zip(_per_axis(patch, len(spatial_shape), "patch"),
                                     spatial_shape, strict=True)]  # fmt: skip
  strides = _per_axis(stride, len(spatial_shape), "stride")
  for size, step in zip(sizes, strides, strict=True):
    if step > size:
      raise ValueError(
        f"a stride of {step} is longer than the patch of {size}, so the pixels between patches "
        "would get no value; give a stride of at most the patch"
      )
  if all(size == n for size, n in zip(sizes, spatial_shape, strict=True)):
    shape = "x".join(str(n) for n in spatial_shape)
    raise ValueError(
      f"a patch of {patch} covers the whole {shape} image, so occlusion would show no place; "
      "give a patch smaller than the image"
    )
  starts = []
  for n, size, step in zip(spatial_shape, sizes, strides, strict=True):
    axis = list(range(0, n - size + 1, step))
    starts.append(axis if axis[-1] == n - size else [*axis, n - size])
  corners = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(spatial_shape))
  masks = np.zeros((len(corners), *spatial_shape), bool)
  for i, corner in enumerate(corners):
    masks[(i, *(slice(c, c + size) for c, size in zip(corner, sizes, strict=True)))] = True
  return masks


@functools.partial(jax.jit, static_argnums=0)
def _occluded_probabilities(model, params, image, k, masks, fill):
  """The probability of class k for `image` (*spatial, C) with each of `masks` covered."""
  covered = jnp.where(masks[..., None], fill.reshape((1,) * image.ndim + (-1,)), image[None])
  return jax.nn.softmax(model.apply({"params": params}, covered))[:, k]


def occlusion(
  model,
  params,
  images: np.ndarray,
  classes: np.ndarray,
  patch: int | Sequence[int] = 4,
  stride: int | Sequence[int] = 2,
  fill: float | np.ndarray = 0.0,
) -> np.ndarray:
  """Occlusion sensitivity: how much a class's probability drops when a patch covers each pixel.

  Each patch of `occlusion_masks(spatial, patch, stride)` in turn is set to
  `fill` in every channel (pass the training data's mean: a float, or one value
  per channel), and the drop p(class | image) - p(class | covered image) is
  given to the pixels it covers; a pixel under several patches gets the mean of
  their drops. Positive where covering the pixel removes evidence for the class.

  Args:
    images: (N, *spatial, channels).
    classes: (N,) the class each image's drop is measured for (its label, say).
    patch, stride: in pixels (or steps), an int or one per spatial axis.
    fill: the value a patch holds.

  Returns:
    The drops, float32 (N, *spatial), probabilities in [-1, 1].

  Raises:
    ValueError: as `occlusion_masks` (a bad patch or stride, feature vectors).
  """
  images = np.asarray(images, np.float32)
  masks = occlusion_masks(images.shape[1:-1], patch, stride)
  fill = jnp.broadcast_to(jnp.asarray(fill, jnp.float32), images.shape[-1:])
  flat = masks.reshape(len(masks), -1).astype(np.float32)
  counts = flat.sum(0)
  before = predict(model, params, images)[np.arange(len(images)), np.asarray(classes)]
  maps = []
  for image, k, p in zip(images, np.asarray(classes), before, strict=True):
    after = np.concatenate(
      [  # at most OCCLUSION_BATCH covered copies in memory at once
        _occluded_probabilities(model, params, image, int(k), masks[i : i + OCCLUSION_BATCH], fill)
        for i in range(0, len(masks), OCCLUSION_BATCH)
      ]
    )
    maps.append(((p - after) @ flat) / counts)
  return np.stack(maps).reshape(images.shape[:-1]).astype(np.float32)


def rank_correlation(maps: np.ndarray, others: np.ndarray) -> np.ndarray:
  """Spearman's rank correlation over pixels of each pair of maps: (N,) in [-1, 1].

  `maps` and `others` are (N, *spatial) (for saliency, pass its magnitude).
  A pair where either map is constant (an empty Grad-CAM) has no correlation: NaN.
  """
  import warnings

  from scipy import stats

  maps, others = np.asarray(maps), np.asarray(others)
  if maps.shape != others.shape:
    raise ValueError(f"maps of shapes {maps.shape} and {others.shape} cannot be compared")
  out = np.full(len(maps), np.nan)
  for i, (a, b) in enumerate(zip(maps, others, strict=True)):
    a, b = a.ravel(), b.ravel()
    if np.ptp(a) > 0 and np.ptp(b) > 0:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out[i] = stats.spearmanr(a, b).statistic
  return out


# ----------------------------------------------------------------------------
# The learned representation


@functools.partial(jax.jit, static_argnums=0)
def _penultimate(model, params, images):
  body = layers.Stack(model.layers[:-1], getattr(model, "dtype", "float32"))
  last = model.layers[-1].name
  return body.apply({"params": {k: v for k, v in params.items() if k != last}}, images)


def penultimate(model, params, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
  """The input to the logits layer (the model's last): float32 (N, features).

  For the book's convnet and its dense baseline, the last hidden dense layer's
  activations; for a model with no hidden dense layer, its head's output. The
  layers before the last are applied as a `layers.Stack` with the model's
  parameters, in batches of `batch_size`.
  """
  split = input_pipeline.Split(images, np.zeros(len(images), np.int32))
  out = [
    _penultimate(model, params, batch["image"])[: int(batch["mask"].sum())]
    for batch in epochs.eval_batches(split, min(batch_size, len(images)))
  ]
  return np.asarray(jnp.concatenate(out), np.float32)


def embed(activations: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
  """A 2D map of activations (N, features) by scikit-learn's t-SNE: float (N, 2).

  PCA initialisation and `random_state=seed` (with PCA's start, the seed
  makes little or no difference; the same seed gives the same map); the
  perplexity is lowered to (N - 1) / 3 for small N, as t-SNE needs.

  Raises:
    ValueError: fewer than 4 points.
  """
  from sklearn.manifold import TSNE

  activations = np.asarray(activations, np.float32).reshape(len(activations), -1)
  if len(activations) < 4:
    raise ValueError(f"t-SNE needs at least 4 points, not {len(activations)}")
  tsne = TSNE(
    n_components=2,
    perplexity=min(perplexity, (len(activations) - 1) / 3),
    init="pca",
    random_state=seed,
  )
  return tsne.fit_transform(activations)


def knn_accuracy(points: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
  """Leave-one-out k-nearest-neighbour accuracy of points (N, features), in [0, 1].

  Each point is classified by the majority label of its k nearest other points
  (Euclidean; a tie goes to the smallest label, as scikit-learn's
  `KNeighborsClassifier` breaks it), and the share classified right is
  returned: how well the representation separates the classes, with no model
  trained on it.

  Raises:
    ValueError: k is not in 1..N-1.
  """
  points = np.asarray(points, np.float64).reshape(len(points), -1)
  labels = np.asarray(labels)
  if not 1 <= k < len(points):
    raise ValueError(f"k={k}: give 1 to {len(points) - 1} neighbours for {len(points)} points")
  classes, index = np.unique(labels, return_inverse=True)
  squares = (points**2).sum(-1)
  right = 0
  for start in range(0, len(points), 1000):  # distances in blocks of 1000 rows
    rows = slice(start, start + 1000)
    distances = squares[rows, None] - 2 * points[rows] @ points.T + squares[None]
    distances[np.arange(len(distances)), np.arange(start, start + len(distances))] = np.inf
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(distances), len(classes)), np.int64)
    np.add.at(votes, (np.arange(len(distances))[:, None], index[nearest]), 1)
    right += int((votes.argmax(-1) == index[rows]).sum())
  return right / len(points)


def silhouette(points: np.ndarray, labels: np.ndarray) -> float:
  """The mean silhouette of points (N, features) in the clusters their labels make, in [-1, 1].

  scikit-learn's `silhouette_score` (Euclidean): 1 for tight, well-separated
  classes, near 0 for overlapping ones.

  Raises:
    ValueError: fewer than 2 labels, or as many labels as points.
  """
  from sklearn.metrics import silhouette_score

  points = np.asarray(points, np.float64).reshape(len(points), -1)
  if not 2 <= len(np.unique(labels)) < len(points):
    raise ValueError("a silhouette needs 2 to N - 1 distinct labels")
  return float(silhouette_score(points, labels))


# ----------------------------------------------------------------------------
# Activation maximisation


def _target_values(model, params, blocks, units, inputs):
  """(T,): for inputs[t], logit units[t] (blocks[t] = -1) or filter units[t] of conv block
  blocks[t], averaged over its positions."""
  logits, state = model.apply({"params": params}, inputs, mutable=["intermediates"])
  values = jnp.take_along_axis(logits, jnp.clip(units, 0, logits.shape[-1] - 1)[:, None], -1)[:, 0]
  for name, (maps,) in state.get("intermediates", {}).items():
    if name.startswith("activation_"):  # maps (T, *block's spatial shape, features)
      chosen = jnp.clip(units, 0, maps.shape[-1] - 1).reshape((-1,) + (1,) * (maps.ndim - 1))
      mean = jnp.take_along_axis(maps, chosen, -1).mean(axis=tuple(range(1, maps.ndim)))
      values = jnp.where(blocks == int(name.split("_")[1]), mean, values)
  return values


def _targets(model, targets: Sequence[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
  """(blocks, units), int32 (T,) each, of targets ("logits" or `activation_{k}`, unit)."""
  convs = layers.convs(model.layers)
  widths = {"logits": (-1, model.layers[-1].features)}
  widths.update({f"activation_{k}": (k, conv.features) for k, conv in enumerate(convs)})
  blocks, units = [], []
  for layer, unit in targets:
    if layer not in widths:
      raise ValueError(f"{layer!r} is not 'logits' nor one of the model's {len(convs)} conv blocks")
    block, width = widths[layer]
    if not 0 <= unit < width:
      raise ValueError(f"unit {unit} of {layer}: it has {width}")
    blocks.append(block)
    units.append(unit)
  return np.asarray(blocks, np.int32), np.asarray(units, np.int32)


def target_values(model, params, targets: Sequence[tuple[str, int]], inputs: np.ndarray):
  """What `maximise` raises: float (T,), target t's value on inputs[t] (T, *input_shape).

  A target is ("logits", k), class k's logit, or (`activation_{k}`, c), conv
  block k's filter c after its activation, averaged over its positions.

  Raises:
    ValueError: a target the model lacks.
  """
  blocks, units = _targets(model, targets)
  values = jax.jit(_target_values, static_argnums=0)(
    model, params, blocks, units, jnp.asarray(inputs, jnp.float32)
  )
  return np.asarray(values)


def _total_variation(x):
  """Mean squared difference of neighbours, summed over spatial axes: (T,)."""
  out = jnp.zeros(len(x))
  for axis in range(1, x.ndim - 1):
    out = out + (jnp.diff(x, axis=axis) ** 2).mean(axis=tuple(range(1, x.ndim)))
  return out


@functools.partial(jax.jit, static_argnums=(0, 6))  # any number of steps: one program
def _ascend(model, params, blocks, units, start, steps, jitter, key, l2, tv, low, high, rate):
  spatial_axes = tuple(range(1, start.ndim - 1))
  optimizer = optax.adam(rate)

  def loss(x, shifts):
    rolled = jnp.roll(x, shifts, axis=spatial_axes) if spatial_axes else x
    penalty = l2 * (x**2).mean(axis=tuple(range(1, x.ndim))) + tv * _total_variation(x)
    return (penalty - _target_values(model, params, blocks, units, rolled)).sum()

  def step(i, carry):
    x, state = carry
    shifts = jax.random.randint(
      jax.random.fold_in(key, i), (len(spatial_axes),), -jitter, jitter + 1
    )
    updates, state = optimizer.update(jax.grad(loss)(x, shifts), state)
    return jnp.clip(optax.apply_updates(x, updates), low, high), state

  x, _ = jax.lax.fori_loop(0, steps, step, (start, optimizer.init(start)))
  return x


def maximise(
  model,
  params,
  targets: Sequence[tuple[str, int]],
  input_shape: Sequence[int],
  *,
  steps: int = 200,
  seed: int = 0,
  jitter: int = 1,
  l2: float = 1e-3,
  tv: float = 0.5,
  data_range: tuple[float, float] = (0.0, 1.0),
  learning_rate: float = 0.02,
) -> np.ndarray:
  """Inputs that most excite each target, by gradient ascent: (T, *input_shape).

  For each target (see `target_values`: a class's logit, or a conv block's
  filter), an input starts at the middle of `data_range` plus seeded noise (a
  tenth of the range) and climbs the target's value with Adam for `steps`
  steps, all targets at once, in one compiled program. Each step scores the
  input rolled by a random shift of up to `jitter` pixels along every spatial
  axis (so that no one pixel's position is fitted), minus `l2` times its mean
  square and `tv` times its total variation (the mean squared difference of
  neighbours, summed over axes), and clips it to `data_range`. The same seed
  gives the same inputs. A filter that no position of the start activates (a
  ReLU's zero everywhere) has no gradient of its own: only the penalties move
  its input, and it may stay at 0. Any number of spatial axes: a 1D model's inputs are
  curves, a 3D model's volumes.

  Args:
    targets: ("logits", k) or (`activation_{k}`, c) pairs.
    input_shape: one example's shape, channels last.
    learning_rate: Adam's step, as a fraction of the data's range.

  Raises:
    ValueError: a target the model lacks.
  """
  low, high = (float(v) for v in data_range)
  blocks, units = _targets(model, targets)
  start_key, key = jax.random.split(jax.random.key(seed))
  noise = jax.random.normal(start_key, (len(units), *input_shape))
  start = jnp.clip((low + high) / 2 + 0.1 * (high - low) * noise, low, high)
  x = _ascend(
    model, params, blocks, units, start, int(steps), int(jitter), key,
    l2, tv, low, high, learning_rate * (high - low),
  )  # fmt: skip
  return np.asarray(x)
