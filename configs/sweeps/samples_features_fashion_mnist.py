r"""The `samples_features` sweep on the full Fashion-MNIST: N = 50 to 51,000 garments.

The same protocol as on the digits (`samples_features.py`): the book's dense
network on the first d principal components (8 to 256) or on all 784 pixels,
4,000 steps of `min(128, N)` images with early stopping (patience 8 epochs of
50 steps), a validation set of N/5 images (at least 100, at most the 9,000
that the validation split holds), five learning rates trained together, and
5 seeds. Cells with d > N - 1 are left out.

  python -m convnet.sweep --sweep=configs/sweeps/samples_features_fashion_mnist.py \
      --workdir=runs/samples_features_fashion_mnist --vmap_rates \
      --sweep.data.source=idx --sweep.data.idx_dir=/usr/share/datasets/fashion-mnist
  python -m convnet.report runs/samples_features_fashion_mnist
"""

import ml_collections

from convnet.configs import fashion_mnist
from convnet.configs.sweeps import samples_features
from convnet.sweep import axis, product

SIZES = (50, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 51000)
VALIDATION_SPLIT = 9000  # 0.15 * 60,000 training images


def get_config() -> ml_collections.ConfigDict:
  config = samples_features.get_config()
  config.data.name = fashion_mnist.get_config().data.name
  return config


def sweep():
  return product(
    samples_features.cells(SIZES, VALIDATION_SPLIT),
    axis("optimizer.learning_rate", samples_features.LEARNING_RATES),
    axis("seed", samples_features.SEEDS),
  )
