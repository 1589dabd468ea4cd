r"""The dense baseline on Shapes3D, with about as many parameters as the `shapes3d` config.

Flatten the 16x16x16 volume, dense 8 relu, dense 10. Data and training as
configs/shapes3d.py.

  python -m convnet.main --config=configs/shapes3d_dense.py --workdir=runs/shapes3d_dense

Measured (docs/findings.md, single runs; 2 vCPUs, 2026-11-27): 48.10% test accuracy after
40 epochs (45.80% at the best validation epoch), 11 s.
"""

import ml_collections

from convnet.configs import shapes3d


def get_config() -> ml_collections.ConfigDict:
  config = shapes3d.get_config()
  config.model.name = "dense"
  config.model.dense_features = (8,)
  return config
