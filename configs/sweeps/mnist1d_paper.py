r"""MNIST-1D by its paper's protocol: the CNN, the MLP and the shuffled control, 5 seeds.

Greydanus, "Scaling down Deep Learning" (2020): all 4,000 training sequences
(no validation split), Adam at 1e-2 with no schedule, batches of 100, 6,000
steps (150 epochs of 40 steps), and the test accuracy at the end. The CNN of
configs/mnist1d.py (5,210 parameters) and the MLP of configs/mnist1d_dense.py
(two hidden layers of 100, 15,210 parameters), on the sequences and on their
shuffled control (one fixed permutation of every sequence's positions).

  python -m convnet.sweep --sweep=configs/sweeps/mnist1d_paper.py \
      --workdir=runs/mnist1d_paper --vmap_seeds
  python -m convnet.report runs/mnist1d_paper
"""

import ml_collections

from convnet.configs import mnist1d, mnist1d_dense
from convnet.sweep import axis, product

STEPS = 6000


def get_config() -> ml_collections.ConfigDict:
  config = mnist1d.get_config()
  config.data.validation_fraction = 0.0
  config.num_epochs = STEPS // (4000 // config.batch_size)
  return config


def sweep():
  models = [
    {"model.name": "convnet"},
    {
      "model.name": "dense",
      "model.dense_features": mnist1d_dense.get_config().model.dense_features,
    },
  ]
  data = axis("data.name", ["mnist1d", "mnist1d_shuffled"])
  return product(data, models, axis("seed", range(5)))
