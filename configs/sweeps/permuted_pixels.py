r"""The book's pair on images as they are and with their pixels permuted, 5 seeds.

The 2D analogue of MNIST-1D's shuffled control: one fixed permutation of the
pixel positions (`data.permute_pixels=1`), the same for training, validation
and test, takes away what is near what, and keeps every pixel's value. A dense
network sees the same function of its inputs either way (its first layer's rows
permute with them); a convnet's 3x3 filters and pooling assume that neighbours
belong together. The book's convnet (33,194 parameters) and its dense baseline
(33,400), 10 epochs, RMSprop 1e-3.

  python -m convnet.sweep --sweep=configs/sweeps/permuted_pixels.py \
      --workdir=runs/permuted_pixels --sweep.data.source=embedded --vmap_seeds
  python -m convnet.report runs/permuted_pixels --reference=permute_pixels=0
"""

import ml_collections

from convnet.configs import mnist
from convnet.sweep import axis, product


def get_config() -> ml_collections.ConfigDict:
  return mnist.get_config()


def sweep():
  models = [
    {"model.name": "convnet"},
    {"model.name": "dense", "model.dense_features": (42,)},
  ]
  return product(models, axis("data.permute_pixels", [0, 1]), axis("seed", range(5)))
