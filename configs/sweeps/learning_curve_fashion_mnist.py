r"""The `learning_curve` sweep on the full Fashion-MNIST: 64 to 51,000 training images.

The same five models at the book's size, 5 seeds, 10 epochs of at least 26
steps, on nested training subsets of 64 to 51,000 images (51,000: all that the
validation split leaves of the 60,000), doubling from 64, so that every batch
(64 or 128) runs in the book config's microbatches of 64. The grid of rates is
1e-3, 3e-3 and 1e-2 (on the digits, validation chose 3e-3, the top of the
first grid): the report picks one rate per model and size by validation
accuracy. The sizes are the outer loop, so that an interrupted sweep leaves
whole points of the curve.

  python -m convnet.sweep --sweep=configs/sweeps/learning_curve_fashion_mnist.py \
      --workdir=runs/learning_curve_fashion_mnist --vmap_seeds \
      --sweep.data.source=idx --sweep.data.idx_dir=/usr/share/datasets/fashion-mnist
  python -m convnet.report runs/learning_curve_fashion_mnist

About 60 minutes on 2 vCPUs; `--shard=i/n` splits it.
"""

import ml_collections

from convnet.configs import fashion_mnist
from convnet.configs.sweeps import learning_curve
from convnet.sweep import axis, product

SIZES = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 51000)
LEARNING_RATES = (1e-3, 3e-3, 1e-2)
SEEDS = range(5)


def get_config() -> ml_collections.ConfigDict:
  return fashion_mnist.get_config()


def sweep():
  return product(
    learning_curve.sizes(SIZES),
    learning_curve.models(),
    axis("optimizer.learning_rate", LEARNING_RATES),
    axis("seed", SEEDS),
  )
