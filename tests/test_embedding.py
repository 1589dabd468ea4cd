"""The learned representation: penultimate activations, t-SNE maps and separation measures."""

import os
import types

import jax
import ml_collections
import numpy as np
import pytest

from convnet import input_pipeline, interpret, trained, visualize
from convnet.errors import ConfigError
from convnet.models import layers


def _clusters(seed=0, spread=1.2):
  """Three overlapping Gaussian clusters of 20, 15 and 25 points in 3D, labelled 0, 2, 5."""
  rng = np.random.default_rng(seed)
  centres = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 1.0], [0.0, 3.0, -1.0]])
  sizes, labels = (20, 15, 25), (0, 2, 5)
  points = np.concatenate(
    [c + spread * rng.standard_normal((n, 3)) for c, n in zip(centres, sizes, strict=True)]
  )
  return points, np.repeat(labels, sizes)


@pytest.mark.parametrize("k", [1, 4])
def test_knn_accuracy_is_scikit_learns_classifier_left_one_out(k):
  from sklearn.neighbors import KNeighborsClassifier

  points, labels = _clusters()
  right = 0
  for i in range(len(points)):
    others = np.arange(len(points)) != i
    classifier = KNeighborsClassifier(k).fit(points[others], labels[others])
    right += int(classifier.predict(points[i : i + 1])[0] == labels[i])
  accuracy = interpret.knn_accuracy(points, labels, k)
  assert accuracy == right / len(points)
  assert 0.5 < accuracy < 1.0  # the clusters overlap: neither trivial nor hopeless


def test_knn_accuracy_needs_fewer_neighbours_than_points():
  with pytest.raises(ValueError, match="k=4: give 1 to 3 neighbours"):
    interpret.knn_accuracy(np.zeros((4, 2)), np.zeros(4), 4)


def test_silhouette_is_the_mean_of_each_points_by_hand():
  points, labels = _clusters(seed=1, spread=0.8)
  distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
  values = []
  for i in range(len(points)):
    mine = (labels == labels[i]) & (np.arange(len(points)) != i)
    a = distances[i, mine].mean()
    b = min(distances[i, labels == other].mean() for other in set(labels) - {labels[i]})
    values.append((b - a) / max(a, b))
  np.testing.assert_allclose(interpret.silhouette(points, labels), np.mean(values), rtol=1e-10)
  with pytest.raises(ValueError, match="2 to N - 1 distinct labels"):
    interpret.silhouette(points, np.zeros(len(points)))


def test_the_penultimate_activations_are_what_the_logits_layer_takes():
  model = layers.Stack(
    (
      layers.Conv("conv_0", 2, (3,), (1,), "VALID", "relu"),
      layers.Pool("pool_0", "max", (2,), (2,)),
      layers.Head("head", "flatten"),
      layers.Dense("dense_0", 4, "tanh"),
      layers.Dense("logits", 3),
    )
  )
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda shape: rng.standard_normal(shape).astype(np.float32),
    {
      "conv_0": {"kernel": (3, 2, 2), "bias": (2,)},
      "dense_0": {"kernel": (12, 4), "bias": (4,)},
      "logits": {"kernel": (4, 3), "bias": (3,)},
    },  # fmt: skip
    is_leaf=lambda x: isinstance(x, tuple),
  )
  signals = rng.standard_normal((7, 14, 2)).astype(np.float32)  # 1D: 14 steps of 2 channels
  activations = interpret.penultimate(model, params, signals, batch_size=4)
  assert activations.shape == (7, 4) and np.abs(activations).max() <= 1.0  # tanh's
  logits = activations @ params["logits"]["kernel"] + params["logits"]["bias"]
  np.testing.assert_allclose(logits, model.apply({"params": params}, signals), atol=1e-5)


@pytest.mark.slow  # t-SNE: a second or two
def test_the_embedding_has_two_coordinates_per_point_and_is_the_same_for_a_seed():
  points, labels = _clusters()
  first = interpret.embed(points, seed=3)
  assert first.shape == (len(points), 2) and np.isfinite(first).all()
  np.testing.assert_array_equal(interpret.embed(points, seed=3), first)
  # Clusters in 3D stay clusters on the map.
  assert interpret.knn_accuracy(first, labels, 5) >= interpret.knn_accuracy(points, labels, 5) - 0.1
  with pytest.raises(ValueError, match="at least 4 points"):
    interpret.embed(points[:3])


@pytest.mark.parametrize(
  "change, why",
  [
    ({"labels": 2}, "its 10 test labels are not the 10 of --workdir, in order"),
    ({"shape": (5, 5, 1)}, "its test examples are (5, 5, 1), not (4, 4, 1)"),
    ({"data": {"canvas": {"seed": 1}}}, "its data differs (data.canvas={'seed': 1} against"),
  ],
)
def test_runs_on_other_test_sets_are_not_compared(monkeypatch, tmp_path, change, why):
  def load(workdir, checkpoint):
    theirs = workdir.endswith("other")
    labels = np.arange(10) % (change.get("labels", 3) if theirs else 3)
    shape = change.get("shape", (4, 4, 1)) if theirs else (4, 4, 1)
    data = {"source": "canvas", "canvas": {"seed": 0}, "permute_pixels": 1 if theirs else 0}
    data |= change.get("data", {}) if theirs else {}
    test = input_pipeline.Split(np.zeros((10, *shape), np.float32), labels)
    config = types.SimpleNamespace(data=ml_collections.ConfigDict(data))
    return types.SimpleNamespace(
      workdir=workdir, config=config, dataset=types.SimpleNamespace(test=test)
    )

  monkeypatch.setattr(trained, "load", load)
  other = str(tmp_path / "other")
  os.makedirs(other)
  with pytest.raises(ConfigError) as error:
    visualize.write_comparison(str(tmp_path / "convnet"), other, str(tmp_path / "out"))
  assert str(error.value).startswith(f"--compare={other}: {why}")
  assert not (tmp_path / "out").exists()
