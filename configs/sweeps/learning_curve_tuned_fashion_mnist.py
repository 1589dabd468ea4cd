r"""The tuned learning-curve protocol (`learning_curve_tuned.py`) on the full Fashion-MNIST.

The same five models, budgets, early stopping, grids of rates and of each remedy's setting,
and 5 seeds, on nested subsets of 64 to 51,000 images (all that the validation split leaves
of the 60,000), with a validation set of N/5 images (at least 100, at most the 9,000 the
split holds).

  python -m convnet.sweep --sweep=configs/sweeps/learning_curve_tuned_fashion_mnist.py \
      --workdir=runs/learning_curve_tuned_fashion_mnist --vmap_rates \
      --sweep.data.source=idx --sweep.data.idx_dir=/usr/share/datasets/fashion-mnist
  python -m convnet.report runs/learning_curve_tuned_fashion_mnist
"""

import ml_collections

from convnet.configs import fashion_mnist
from convnet.configs.sweeps import learning_curve_tuned, samples_features_fashion_mnist
from convnet.sweep import axis, product

SIZES = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 51000)


def get_config() -> ml_collections.ConfigDict:
  config = learning_curve_tuned.get_config()
  config.data.name = fashion_mnist.get_config().data.name
  return config


def sweep():
  return product(
    learning_curve_tuned.cells(SIZES, samples_features_fashion_mnist.VALIDATION_SPLIT),
    axis("optimizer.learning_rate", learning_curve_tuned.LEARNING_RATES),
    axis("seed", learning_curve_tuned.SEEDS),
  )
