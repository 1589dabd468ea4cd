r"""The convnet against a dense network of its size at three budgets, each tuned over rates.

The pairs of configs/sweeps/convnet_vs_dense.py (about 8.5k, 33k, the book's
33,194 and 33,400, and 131k parameters), each trained with RMSprop at five
learning rates (3e-4 to 3e-2), 5 seeds each: 150 runs. The report picks each arm's rate by
mean validation accuracy over seeds, gives the test accuracy there, and
compares convnet and dense at their own chosen rates (`learning_rate.png`
shows how much each depends on its rate).

  python -m convnet.sweep --sweep=configs/sweeps/learning_rate.py \
      --workdir=runs/learning_rate --sweep.data.source=embedded --vmap_seeds
  python -m convnet.report runs/learning_rate
"""

import ml_collections

from convnet.configs import mnist
from convnet.configs.sweeps import convnet_vs_dense
from convnet.sweep import axis, product

LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def get_config() -> ml_collections.ConfigDict:
  return mnist.get_config()


def arms() -> list[dict]:
  """The six models of convnet_vs_dense.py: one override dict each, without a seed."""
  cells = [
    cell for cell in convnet_vs_dense.sweep() if cell["seed"] == 0
  ]  # one cell per model and budget
  return [{k: v for k, v in cell.items() if k != "seed"} for cell in cells]


def sweep():
  return product(arms(), axis("optimizer.learning_rate", LEARNING_RATES), axis("seed", range(5)))
