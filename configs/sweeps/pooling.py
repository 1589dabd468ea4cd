r"""Max pooling (the book's), average pooling, no pooling, and strided convs instead, 5 seeds.

The book pools after the first two conv blocks. "avg" and "none" change those
two; the last setting drops both pooling layers and gives the first two convs
a stride of 2 instead (28 -> 13 -> 6 -> 4). Without any pooling the last
feature map is 22x22x32, and the dense head alone has about a million
parameters.

  python -m convnet.sweep --sweep=configs/sweeps/pooling.py --workdir=runs/pooling \
      --sweep.data.source=embedded
  python -m convnet.report runs/pooling
"""

import ml_collections

from convnet.configs import mnist
from convnet.sweep import axis, product


def get_config() -> ml_collections.ConfigDict:
  return mnist.get_config()


def sweep():
  settings = [
    {"model.pool.type": ("max", "max", "none")},
    {"model.pool.type": ("avg", "avg", "none")},
    {"model.pool.type": "none"},
    {"model.pool.type": "none", "model.conv.strides": ((2, 2), (2, 2), (1, 1))},
  ]
  return product(settings, axis("seed", range(5)))
