r"""The dense baseline on spoken digits, with as many parameters as the `spoken_digits` config.

Flatten the (40, 64, 1) spectrogram, dense 64 relu, dense 10: 164,554
parameters against the convnet's 162,218. Data and training as
configs/spoken_digits.py.

  python -m convnet.main --config=configs/spoken_digits_dense.py --workdir=runs/spoken_digits_dense
"""

import ml_collections

from convnet.configs import spoken_digits


def get_config() -> ml_collections.ConfigDict:
  config = spoken_digits.get_config()
  config.model.name = "dense"
  config.model.dense_features = (64,)
  return config
