r"""The `learning_rate` sweep on Fashion-MNIST: convnet against dense pairs, tuned over rates.

The six models (about 8.5k, 33k and 131k parameters), 10 epochs of the full
51,000 training images (the book's batch of 128, one pass an epoch), RMSprop
at 1e-3, 3e-3 and 1e-2, and at 3e-4 too for the dense networks and the 131k
convnet (validation chose the lowest of the three for the 8.5k dense network
and the 131k convnet), 5 seeds each: 110 runs.
The report picks each arm's rate by mean validation accuracy and compares the
arms at their own rates.
The budgets run from the smallest up, so that an interrupted sweep leaves
whole pairs; the 131k convnet takes most of the time.

  python -m convnet.sweep --sweep=configs/sweeps/learning_rate_fashion_mnist.py \
      --workdir=runs/learning_rate_fashion_mnist --vmap_seeds \
      --sweep.data.source=idx --sweep.data.idx_dir=/usr/share/datasets/fashion-mnist
  python -m convnet.report runs/learning_rate_fashion_mnist
"""

import ml_collections

from convnet.configs import fashion_mnist
from convnet.configs.sweeps import learning_rate
from convnet.sweep import axis, product

LEARNING_RATES = (1e-3, 3e-3, 1e-2)
LOWER_LEARNING_RATES = (3e-4, *LEARNING_RATES)
LARGEST_CONVNET = (32, 64, 64)  # model.conv.features of the 131k convnet


def get_config() -> ml_collections.ConfigDict:
  return fashion_mnist.get_config()


def sweep():
  cells = []
  for arm in learning_rate.arms():
    lower = arm["model.name"] == "dense" or arm.get("model.conv.features") == LARGEST_CONVNET
    rates = LOWER_LEARNING_RATES if lower else LEARNING_RATES
    cells += product([arm], axis("optimizer.learning_rate", rates), axis("seed", range(5)))
  return cells
