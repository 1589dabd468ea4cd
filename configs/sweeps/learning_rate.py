r"""The book's convnet against the dense network of its size, each tuned over learning rates.

The book's pair (33,194 and 33,400 parameters), each trained with RMSprop at
three learning rates, 5 seeds each: 30 runs. The report picks each arm's rate
by mean validation accuracy over seeds, gives the test accuracy there, and
compares the two arms at their own chosen rates (`learning_rate.png` shows how
much each depends on its rate).

  python -m convnet.sweep --sweep=configs/sweeps/learning_rate.py \
      --workdir=runs/learning_rate --sweep.data.source=embedded
  python -m convnet.report runs/learning_rate
"""

import ml_collections

from convnet.configs import mnist
from convnet.sweep import axis, product

LEARNING_RATES = (3e-4, 1e-3, 3e-3)


def get_config() -> ml_collections.ConfigDict:
  return mnist.get_config()


def sweep():
  # The base config is the book's convnet; one hidden layer of 42 units gives the dense network
  # the nearest parameter count.
  arms = [{"model.name": "convnet"}, {"model.name": "dense", "model.dense_features": (42,)}]
  return product(arms, axis("optimizer.learning_rate", LEARNING_RATES), axis("seed", range(5)))
