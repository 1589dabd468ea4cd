r"""The book's convnet on spoken digits: log-mel spectrograms of 40 mel bands by 64 frames.

The layers of configs/mnist.py on (40, 64, 1) spectrograms of the ten digit
words spoken by espeak-ng (see convnet/sources/spoken_digits.py): 162,218 parameters,
most of them in the dense layer after the flatten. Test voices are never heard
in training. The dataset is generated on first use (about 3 minutes on 2 CPU
cores, with progress in the log; it needs Debian's espeak-ng) and cached by its
parameters.

  python -m convnet.main --config=configs/spoken_digits.py --workdir=runs/spoken_digits

With white noise mixed in (SNR 0 to 20 dB):

  python -m convnet.main --config=configs/spoken_digits.py --workdir=runs/spoken_digits_noisy \
      --config.data.name=spoken_digits_noisy

Measured (docs/findings.md, single runs; 2 vCPUs, 2026-11-27): 90.42% test accuracy on the
unseen voices after 20 epochs (90.14% at the best validation epoch), 105 s; noisy, 66.67%.
"""

import ml_collections

from convnet.configs import mnist


def get_config() -> ml_collections.ConfigDict:
  config = mnist.get_config()
  config.data.source = "spoken_digits"
  config.data.name = "spoken_digits"  # or "spoken_digits_noisy"
  config.num_epochs = 20
  return config
