r"""The tuned convnet-against-dense pairs on Fashion-MNIST, at a fraction of the grid's cost.

The cells of `learning_rate_fashion_mnist.py` (six models, three or four
learning rates each, 5 seeds, 10 epochs at most), searched by successive
halving over the learning rate: every rate of an arm trains one epoch, with
`--vmap_rates` all of them and their seeds in one vmapped program; the better
half by mean validation accuracy over seeds (rounded up) trains on to epoch
3, then the better half of those to epoch 10, each seed group going on from
its checkpoint. Early stopping ends a run whose validation accuracy has not
improved for 3 epochs. Test accuracy takes no part in any choice.

  python -m convnet.sweep --sweep=configs/sweeps/learning_rate_fashion_mnist_halving.py \
      --workdir=runs/learning_rate_fashion_mnist_halving --vmap_rates \
      --sweep.data.source=idx --sweep.data.idx_dir=/usr/share/datasets/fashion-mnist
  python -m convnet.report runs/learning_rate_fashion_mnist_halving
"""

import ml_collections

from convnet.configs.sweeps import learning_rate_fashion_mnist
from convnet.halving import Halving

RUNGS = (1, 3, 10)  # epochs; the last is the budget, num_epochs


def get_config() -> ml_collections.ConfigDict:
  config = learning_rate_fashion_mnist.get_config()
  config.early_stopping.patience = 3
  return config


def sweep():
  return learning_rate_fashion_mnist.sweep()


def halving() -> Halving:
  return Halving("optimizer.learning_rate", rungs=RUNGS, eta=2)
