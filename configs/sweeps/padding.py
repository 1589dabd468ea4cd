r"""VALID (the book's) against SAME padding in every conv block, 5 seeds.

With SAME padding the feature maps keep their size through each conv (28, 14
and 7 pixels instead of 26, 11 and 3), so the dense head is larger too.

  python -m convnet.sweep --sweep=configs/sweeps/padding.py --workdir=runs/padding \
      --sweep.data.source=embedded
  python -m convnet.report runs/padding
"""

import ml_collections

from convnet.configs import mnist
from convnet.sweep import axis, product


def get_config() -> ml_collections.ConfigDict:
  return mnist.get_config()


def sweep():
  return product(axis("model.conv.padding", ["VALID", "SAME"]), axis("seed", range(5)))
