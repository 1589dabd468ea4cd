r"""Conv stride 1, 2 and 3, 5 seeds each: a stride of 2 or 3 replaces the pooling.

Stride 1 keeps the book's max pooling; strides 2 and 3 drop every pooling
layer, so the stride alone shrinks the feature maps (28 -> 13 -> 6 -> 2 and
28 -> 9 -> 3 -> 1 with 3x3 VALID convs).

  python -m convnet.sweep --sweep=configs/sweeps/stride.py --workdir=runs/stride \
      --sweep.data.source=embedded
  python -m convnet.report runs/stride
"""

import ml_collections

from convnet.configs import mnist
from convnet.sweep import axis, product


def get_config() -> ml_collections.ConfigDict:
  return mnist.get_config()


def sweep():
  settings = [
    {"model.conv.strides": 1},
    {"model.conv.strides": 2, "model.pool.type": "none"},
    {"model.conv.strides": 3, "model.pool.type": "none"},
  ]
  return product(settings, axis("seed", range(5)))
