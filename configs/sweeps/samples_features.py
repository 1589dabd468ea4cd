r"""Samples against features: the dense network at every training-set size N and input size d.

The seed's note says that a small sample defeats many features: for a given
number of training examples, too many input dimensions hurt, so the best
number of features should grow with N. This sweep asks it directly. The
book's dense network (one hidden layer of 42 units) reads either the first d
principal components of the images (d = 8 to 256, fitted on the training
subset alone) or all 784 pixels, on nested training subsets of N = 50 to all
3,400 digits that the validation split leaves.

The protocol separates sample size from training length and from selection:
- every cell has the same budget, 80 epochs of 50 steps (4,000 steps of
  `min(128, N)` examples), with early stopping on validation accuracy
  (patience 8 epochs), so that small samples stop when they have learned
  what they can and large ones are not cut short;
- the validation set is in proportion to N: N/5 examples, at least 100 and at
  most the 600 that the validation split holds (`data.num_validation`);
- five learning rates, 3e-4 to 3e-2, trained together per cell
  (`--vmap_rates`); the report picks one per cell by validation accuracy.

A cell with d > N - 1 is left out: N centred examples span at most N - 1
principal components, and the rest carry no training signal.

  python -m convnet.sweep --sweep=configs/sweeps/samples_features.py \
      --workdir=runs/samples_features --sweep.data.source=embedded --vmap_rates
  python -m convnet.report runs/samples_features
"""

import ml_collections

from convnet.configs import dense
from convnet.sweep import axis, product

SIZES = (50, 100, 200, 400, 800, 1600, 3400)
COMPONENTS = (8, 16, 32, 64, 128, 256)
LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
SEEDS = range(5)
VALIDATION_SPLIT = 600  # round(0.15 * 4,000) embedded training digits
STEPS_PER_EPOCH = 50
NUM_EPOCHS = 80
PATIENCE = 8


def get_config() -> ml_collections.ConfigDict:
  config = dense.get_config()
  config.microbatch_size = 0  # batches of 50 are not multiples of 64
  config.steps_per_epoch = STEPS_PER_EPOCH
  config.num_epochs = NUM_EPOCHS
  config.early_stopping.patience = PATIENCE
  return config


def validation_size(n: int, held_out: int) -> int:
  """N/5 validation examples, at least 100, at most the `held_out` the split holds."""
  return min(held_out, max(100, n // 5))


def features(n: int, components=COMPONENTS) -> list[dict]:
  """The input sizes a dense network on N examples can use: d <= N - 1 components, and pixels."""
  cells = [{"data.features": "pca", "data.num_features": d} for d in components if d <= n - 1]
  return cells + [{"data.features": "pixels", "data.num_features": 0}]


def size(n: int, held_out: int) -> dict:
  """The fields set per N: the size, its batch, and its validation size."""
  return {
    "data.num_train": n,
    "data.num_validation": validation_size(n, held_out),
    "batch_size": min(128, n),
  }


def cells(sizes, held_out: int, components=COMPONENTS) -> list[dict]:
  """One override dict per (N, d): the size's fields (`size`) and the input."""
  return [size(n, held_out) | f for n in sizes for f in features(n, components)]


def sweep():
  return product(
    cells(SIZES, VALIDATION_SPLIT),
    axis("optimizer.learning_rate", LEARNING_RATES),
    axis("seed", SEEDS),
  )
