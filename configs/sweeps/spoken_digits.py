r"""Spoken digits: the convnet against its dense baseline, clean and noisy, 5 seeds.

The configs/spoken_digits.py convnet (162,218 parameters) and the
configs/spoken_digits_dense.py network (164,554), on the clean clips and on
the clips with white noise mixed in. Test voices are never heard in training,
so the seeds' spread includes how the model generalises to new speakers.

  python -m convnet.sweep --sweep=configs/sweeps/spoken_digits.py \
      --workdir=runs/spoken_digits_sweep --vmap_seeds
  python -m convnet.report runs/spoken_digits_sweep
"""

import ml_collections

from convnet.configs import spoken_digits
from convnet.sweep import axis, product


def get_config() -> ml_collections.ConfigDict:
  return spoken_digits.get_config()


def sweep():
  models = [
    {"model.name": "convnet", "model.dense_features": (64,)},
    {"model.name": "dense", "model.dense_features": (64,)},
  ]
  data = axis("data.name", ["spoken_digits", "spoken_digits_noisy"])
  return product(data, models, axis("seed", range(5)))
