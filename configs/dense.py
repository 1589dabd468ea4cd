r"""The book's dense baseline: flatten, dense 42 relu, dense 10 (33,400 parameters).

Same data, optimizer and schedule as configs/mnist.py, with about as many
parameters as the first convnet.

  python -m convnet.main --config=configs/dense.py --workdir=runs/dense

Measured (docs/findings.md, single runs): on the 5,000 embedded digits, 91.70%
test accuracy after 10 epochs, 1.9 s; on the full Fashion-MNIST (`idx` source,
Debian's files), 86.55%, 4.8 s; 2 vCPUs, 2026-11-27.
"""

import ml_collections

from convnet.configs import mnist


def get_config() -> ml_collections.ConfigDict:
  config = mnist.get_config()
  config.model.name = "dense"
  config.model.dense_features = (42,)
  return config
