r"""The MLP baseline on MNIST-1D, sized after the dataset authors' reference MLP.

Flatten, dense 100 relu, dense 100 relu, dense 10: 15,210 parameters; data and
training as configs/mnist1d.py.

  python -m convnet.main --config=configs/mnist1d_dense.py --workdir=runs/mnist1d_dense

Measured (docs/findings.md, single runs; 2 vCPUs, 2026-11-27): 64.50% test accuracy after
176 epochs (63.40% at the best validation epoch), 22 s; shuffled, 66.00%.
"""

import ml_collections

from convnet.configs import mnist1d


def get_config() -> ml_collections.ConfigDict:
  config = mnist1d.get_config()
  config.model.name = "dense"
  config.model.dense_features = (100, 100)
  return config
