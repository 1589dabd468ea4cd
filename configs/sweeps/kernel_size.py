r"""Kernel size 1, 3, 5 and 7 in every conv block of the book's convnet, 5 seeds.

SAME padding keeps the feature maps at 28, 14 and 7 pixels, so that a 7x7
kernel fits every block; the dense head then sees 7x7x32 values, and the
parameter count grows with the kernel.

  python -m convnet.sweep --sweep=configs/sweeps/kernel_size.py --workdir=runs/kernel_size \
      --sweep.data.source=embedded
  python -m convnet.report runs/kernel_size
"""

import ml_collections

from convnet.configs import mnist
from convnet.sweep import axis, product


def get_config() -> ml_collections.ConfigDict:
  config = mnist.get_config()
  config.model.conv.padding = "SAME"
  return config


def sweep():
  return product(axis("model.conv.kernel_size", [1, 3, 5, 7]), axis("seed", range(5)))
