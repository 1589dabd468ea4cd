r"""Why a convnet wins on images: objects at random places, and dense networks matched two ways.

Each image sits at a random place on a 56x56 canvas (the "canvas" source), so
where the object is varies. The book's convnet (219,562 parameters on this
input, 8.49 MFLOP forward per example) against two dense networks of one hidden
layer, their widths computed by `convnet.matching` when the sweep is
expanded: one matched in parameters (70 units, 220,300 parameters), one
matched in forward FLOPs (1,349 units, 8.49 MFLOP, 4.2M parameters), 5 seeds.
A record's `flops_per_example` counts a training step, which costs a dense
network about twice its forward pass and the convnet about three times, so
there the FLOP-matched pair reads 17.3 against 25.2 MFLOP.

On Fashion-MNIST (Debian's IDX files), with 4 pieces of clutter cut from other
garments in a second workdir (`--sweep.data.canvas.clutter=4`):

  python -m convnet.sweep --sweep=configs/sweeps/why_convnets.py \
      --workdir=runs/why_convnets --vmap_seeds --sweep.data.canvas.base=idx \
      --sweep.data.name=fashion_mnist --sweep.data.idx_dir=/usr/share/datasets/fashion-mnist
  python -m convnet.report runs/why_convnets --reference=model.name=convnet

Without the overrides, the base is the embedded digits (offline, in seconds a
cell). The widths are matched on 56x56x1 inputs with 10 classes: another
canvas size needs them computed again (change CANVAS_SIZE).
"""

import ml_collections

from convnet import input_pipeline, matching
from convnet.configs import mnist
from convnet.sweep import axis, product

CANVAS_SIZE = 56
SEEDS = range(5)


def get_config() -> ml_collections.ConfigDict:
  config = mnist.get_config()
  config.data.source = "canvas"
  config.data.canvas.base = "embedded"
  config.data.canvas.size = CANVAS_SIZE
  return config


def models() -> list[dict]:
  """The book's convnet, and the dense networks matched to it in parameters and in forward FLOPs."""
  config = get_config()
  input_shape, num_classes = input_pipeline.input_spec(config.data)
  dense = [
    {"model.name": "dense", "model.dense_features": (width,)}
    for width in (
      matching.matched_width(config, input_shape, num_classes, measure)
      for measure in ("params", "forward_flops")
    )
  ]
  return [{"model.name": "convnet"}, *dense]


def sweep():
  return product(models(), axis("seed", SEEDS))
