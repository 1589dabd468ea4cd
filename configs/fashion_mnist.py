r"""The book's convnet on Fashion-MNIST, from TFDS or from IDX files.

With network access, TFDS downloads `fashion_mnist`:

  python -m convnet.main --config=configs/fashion_mnist.py --workdir=runs/fashion

Offline, from the IDX files of Debian's `dataset-fashion-mnist` package:

  python -m convnet.main --config=configs/fashion_mnist.py --workdir=runs/fashion \
      --config.data.source=idx --config.data.idx_dir=/usr/share/datasets/fashion-mnist

Measured (docs/findings.md, single runs): 89.90% test accuracy after 10 epochs,
101 s on 2 vCPUs of an AMD EPYC, 2026-11-27 (`idx` source, Debian's files).
"""

import ml_collections

from convnet.configs import mnist


def get_config() -> ml_collections.ConfigDict:
  config = mnist.get_config()
  config.data.name = "fashion_mnist"
  return config
