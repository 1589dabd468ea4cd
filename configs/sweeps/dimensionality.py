r"""The curse of dimensionality on the dense side: L1, PCA and pixel selection, 5 seeds.

The book's note names three answers to too many input dimensions for a dense
network: L1 regularisation (`l1_penalty` times the sum of |kernel weights|
added to the loss), a PCA-reduced input (its first k principal components),
and feature selection (the k pixels of highest variance). Both reductions are
fitted on the training split alone. Each setting is the book's dense baseline
(one hidden layer of 42 units); a smaller input means fewer parameters.

  python -m convnet.sweep --sweep=configs/sweeps/dimensionality.py \
      --workdir=runs/dimensionality --sweep.data.source=embedded
  python -m convnet.report runs/dimensionality
"""

import ml_collections

from convnet.configs import dense
from convnet.sweep import axis, product


def get_config() -> ml_collections.ConfigDict:
  return dense.get_config()


def sweep():
  settings = [{"l1_penalty": 0.0}]
  settings += axis("l1_penalty", [1e-5, 1e-4, 1e-3])
  for features, sizes in (("pca", [16, 50, 100]), ("top_variance", [50, 100, 200])):
    settings += [{"data.features": features, "data.num_features": k} for k in sizes]
  return product(settings, axis("seed", range(5)))
