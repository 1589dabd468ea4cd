r"""The dense baseline on spoken digits, with as many parameters as the `spoken_digits` config.

Flatten the (40, 64, 1) spectrogram, dense 64 relu, dense 10: 164,554
parameters against the convnet's 162,218. Data and training as
configs/spoken_digits.py.

  python -m convnet.main --config=configs/spoken_digits_dense.py --workdir=runs/spoken_digits_dense

Measured (docs/findings.md, single runs; 2 vCPUs, 2026-11-27): 74.58% test accuracy on the
unseen voices after 20 epochs (88.19% at the best validation epoch), 5.4 s; noisy, 66.11%.
"""

import ml_collections

from convnet.configs import spoken_digits


def get_config() -> ml_collections.ConfigDict:
  config = spoken_digits.get_config()
  config.model.name = "dense"
  config.model.dense_features = (64,)
  return config
