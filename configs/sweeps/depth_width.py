r"""Depth (1, 2 or 3 conv blocks) and width (half, the book's, double the filters), 5 seeds.

Each block keeps the book's 3x3 VALID conv; the first two blocks max-pool, as
in the book. Fewer blocks leave a larger feature map for the dense head, so
the shallow nets have more parameters, not fewer.

  python -m convnet.sweep --sweep=configs/sweeps/depth_width.py --workdir=runs/depth_width \
      --sweep.data.source=embedded
  python -m convnet.report runs/depth_width
"""

import ml_collections

from convnet.configs import mnist
from convnet.sweep import axis, product, zipped


def get_config() -> ml_collections.ConfigDict:
  return mnist.get_config()


def sweep():
  settings = zipped(
    axis(
      "model.conv.features",
      [(16,), (16, 32), (16, 32, 32), (8, 16, 16), (32, 64, 64)],
    ),
    axis(
      "model.pool.type",
      [
        ("max",),
        ("max", "max"),
        ("max", "max", "none"),
        ("max", "max", "none"),
        ("max", "max", "none"),
      ],
    ),
  )
  return product(settings, axis("seed", range(5)))
