r"""Test accuracy against the number of training examples: the convnet, dense, and its remedies.

The seed's question: does a small sample defeat many features, and where does
the convnet's edge come from? Five models at the book's size, each at five
learning rates (the report picks one per model and size by validation
accuracy), 5 seeds, on training subsets of 50 to 3,400 examples (all the
embedded digits leave after the validation split), nested by seed
(`data.num_train`):
- the book's convnet (33,194 parameters) and dense network (33,400);
- the dense network on the first 64 principal components (`data.features=pca`),
  and on the 64 pixels of highest variance (`top_variance`), the feature
  selection and dimensionality reduction of the seed's note;
- the dense network with an L1 penalty of 1e-4 on its kernels.

Small samples train sensibly: an epoch is one pass, or 26 steps (one pass of
the 3,400 digits in batches of 128) where a pass is shorter, so every size
gets at least 260 steps over its 10 epochs; the batch is the sample's size
where that is below 128. The result is the test accuracy at the epoch of best
validation accuracy.

  python -m convnet.sweep --sweep=configs/sweeps/learning_curve.py \
      --workdir=runs/learning_curve --sweep.data.source=embedded --vmap_seeds
  python -m convnet.report runs/learning_curve
"""

import ml_collections

from convnet.configs import dense, mnist
from convnet.sweep import axis, product

SIZES = (50, 100, 200, 400, 800, 1600, 3400)
LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
SEEDS = range(5)
MIN_STEPS_PER_EPOCH = 26
NUM_FEATURES = 64


def get_config() -> ml_collections.ConfigDict:
  config = mnist.get_config()
  config.microbatch_size = 0  # batches of 50 and 100 are not multiples of 64
  return config


def models(num_features: int = NUM_FEATURES) -> list[dict]:
  """The five models, as overrides of the book's convnet config."""
  dense_model = {
    "model.name": "dense",
    "model.dense_features": tuple(dense.get_config().model.dense_features),
  }
  return [
    {"model.name": "convnet"},
    dense_model,
    dense_model | {"data.features": "pca", "data.num_features": num_features},
    dense_model | {"data.features": "top_variance", "data.num_features": num_features},
    dense_model | {"l1_penalty": 1e-4},
  ]


def sizes(values=SIZES, batch_size: int = 128) -> list[dict]:
  """One override dict per training-set size: the size, its batch, and its epoch's steps."""
  cells = []
  for n in values:
    batch = min(batch_size, n)
    cells.append(
      {
        "data.num_train": n,
        "batch_size": batch,
        "steps_per_epoch": max(MIN_STEPS_PER_EPOCH, n // batch),
      }
    )
  return cells


def sweep():
  return product(
    models(), sizes(), axis("optimizer.learning_rate", LEARNING_RATES), axis("seed", SEEDS)
  )
