r"""The book's pair in float32 and in bfloat16 mixed precision, on Fashion-MNIST, 5 seeds.

`model.dtype="bfloat16"` computes every conv and dense dot in bfloat16 (with
float32 accumulation) and keeps the parameters, optimizer state, loss and
metrics in float32. The question: does bfloat16 hold accuracy? The report,
with `--reference=dtype=float32`, gives each model's bfloat16 runs minus its
float32 runs with Welch's 95% interval. 10 epochs of the 51,000 training
images, RMSprop at 1e-3.

  python -m convnet.sweep --sweep=configs/sweeps/mixed_precision.py \
      --workdir=runs/mixed_precision --vmap_seeds \
      --sweep.data.source=idx --sweep.data.idx_dir=/usr/share/datasets/fashion-mnist
  python -m convnet.report runs/mixed_precision --reference=dtype=float32
"""

import ml_collections

from convnet.configs import fashion_mnist
from convnet.sweep import axis, product


def get_config() -> ml_collections.ConfigDict:
  return fashion_mnist.get_config()


# The book's pair: its convnet (33,194 parameters) and its dense network (33,400).
MODELS = [{"model.name": "convnet"}, {"model.name": "dense", "model.dense_features": (42,)}]


def sweep():
  return product(MODELS, axis("model.dtype", ["float32", "bfloat16"]), axis("seed", range(5)))
