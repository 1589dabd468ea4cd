r"""The convnet against a dense network with as many parameters, at three budgets, 5 seeds.

Budgets of about 8.5k, 33k (the book's pair: 33,194 and 33,400) and 131k
parameters. The convnets are the book's architecture at half, one and twice
its width, with a dense layer of 32, 64 and 128 units; each dense network has
one hidden layer, sized to the nearest parameter count.

  python -m convnet.sweep --sweep=configs/sweeps/convnet_vs_dense.py \
      --workdir=runs/convnet_vs_dense --sweep.data.source=embedded
  python -m convnet.report runs/convnet_vs_dense
"""

import ml_collections

from convnet.configs import mnist
from convnet.sweep import axis, product

# (conv filters, convnet's dense layer, dense network's hidden layer): about
# 8.5k, 33k and 131k parameters on 28x28x1 inputs with 10 classes.
BUDGETS = [((8, 16, 16), 32, 11), ((16, 32, 32), 64, 42), ((32, 64, 64), 128, 165)]


def get_config() -> ml_collections.ConfigDict:
  return mnist.get_config()


def sweep():
  settings = []
  for filters, convnet_dense, dense_hidden in BUDGETS:
    settings.append(
      {
        "model.name": "convnet",
        "model.conv.features": filters,
        "model.dense_features": (convnet_dense,),
      }
    )
    settings.append({"model.name": "dense", "model.dense_features": (dense_hidden,)})
  return product(settings, axis("seed", range(5)))
