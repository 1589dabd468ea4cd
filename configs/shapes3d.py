r"""A 3D convnet on Shapes3D: ten kinds of solid voxelised in 16x16x16 grids.

conv 16@3x3x3 relu, max-pool 2/2, conv 32@3x3x3 relu, max-pool 2/2, flatten,
dense 64 relu, dense 10: the book's convnet with one more spatial axis. Data
generated on the spot (convnet/sources/shapes3d.py): 5,000 training volumes, 15% of
them held out for validation, and 1,000 test volumes.

  python -m convnet.main --config=configs/shapes3d.py --workdir=runs/shapes3d

Measured (docs/findings.md, single runs; 2 vCPUs, 2026-11-27): 88.70% test accuracy after
40 epochs (88.10% at the best validation epoch), 167 s.
"""

import ml_collections

from convnet.configs import mnist


def get_config() -> ml_collections.ConfigDict:
  config = mnist.get_config()
  config.data.source = "shapes3d"
  config.data.name = "shapes3d"
  config.model.conv.features = (16, 32)
  config.model.pool.type = "max"
  config.num_epochs = 40
  return config
