r"""Shapes3D: the 3D convnet against a dense network of about as many parameters, 5 seeds.

The configs/shapes3d.py convnet (31,402 parameters) and the
configs/shapes3d_dense.py network (32,866).

  python -m convnet.sweep --sweep=configs/sweeps/shapes3d.py \
      --workdir=runs/shapes3d_sweep --vmap_seeds
  python -m convnet.report runs/shapes3d_sweep
"""

import ml_collections

from convnet.configs import shapes3d
from convnet.sweep import axis, product


def get_config() -> ml_collections.ConfigDict:
  return shapes3d.get_config()


def sweep():
  models = [
    {"model.name": "convnet", "model.dense_features": (64,)},
    {"model.name": "dense", "model.dense_features": (8,)},
  ]
  return product(models, axis("seed", range(5)))
