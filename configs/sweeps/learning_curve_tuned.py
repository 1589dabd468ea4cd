r"""The learning curve by a protocol that separates sample size from training length and selection.

The first learning curve (`learning_curve.py`) gives every N 10 epochs of at least 26 steps,
chooses on the whole validation split, and fixes each remedy's setting. Here:
- every N has the same budget, 80 epochs of 50 steps (4,000 steps of `min(128, N)` examples),
  with early stopping on validation accuracy (patience 8 epochs), so that sample size and
  training length are not confounded: a run stops when validation stops improving, and the
  budget is the cap (each record says where it stopped);
- the validation set is in proportion to N: N/5 examples, at least 100, at most the 600 that
  the validation split holds (`data.num_validation`);
- five learning rates, 3e-4 to 3e-2, trained together per setting (`--vmap_rates`); and each
  remedy's own setting is a grid too: the first 8 to 256 principal components (at most N - 1,
  the most that N centred examples span), the 16 to 512 pixels of highest variance, and L1
  strengths of 1e-6 to 1e-3. The report chooses the rate, then the remedy's setting, at each N
  on validation accuracy alone, and lists every choice at a grid's edge.

Five models at the book's size, 5 seeds, on nested training subsets of 64 to all 3,400
digits that the validation split leaves, doubling from 64 so that every batch (64 or 128)
runs in the book's microbatches of 64.

  python -m convnet.sweep --sweep=configs/sweeps/learning_curve_tuned.py \
      --workdir=runs/learning_curve_tuned --sweep.data.source=embedded --vmap_rates
  python -m convnet.report runs/learning_curve_tuned
"""

import ml_collections

from convnet.configs import dense, mnist
from convnet.configs.sweeps import samples_features
from convnet.sweep import axis, product

SIZES = (64, 128, 256, 512, 1024, 2048, 3400)
COMPONENTS = samples_features.COMPONENTS
PIXELS_KEPT = (16, 32, 64, 128, 256, 512)
L1_PENALTIES = (1e-6, 1e-5, 1e-4, 1e-3)
LEARNING_RATES = samples_features.LEARNING_RATES
SEEDS = range(5)
VALIDATION_SPLIT = samples_features.VALIDATION_SPLIT


def get_config() -> ml_collections.ConfigDict:
  config = mnist.get_config()
  for field in ("steps_per_epoch", "num_epochs", "early_stopping"):
    config[field] = samples_features.get_config()[field]
  return config


def models(n: int) -> list[dict]:
  """The convnet, the dense network, and the dense network with each remedy at each setting."""
  dense_model = {
    "model.name": "dense",
    "model.dense_features": tuple(dense.get_config().model.dense_features),
  }
  pca = [{"data.features": "pca", "data.num_features": d} for d in COMPONENTS if d <= n - 1]
  pixels = [{"data.features": "top_variance", "data.num_features": k} for k in PIXELS_KEPT]
  l1 = [{"l1_penalty": v} for v in L1_PENALTIES]
  return [{"model.name": "convnet"}, dense_model] + [dense_model | r for r in pca + pixels + l1]


def cells(sizes, held_out: int) -> list[dict]:
  """Per N (the outer loop, so that a stopped sweep leaves whole points): its models."""
  return [samples_features.size(n, held_out) | m for n in sizes for m in models(n)]


def sweep():
  return product(
    cells(SIZES, VALIDATION_SPLIT),
    axis("optimizer.learning_rate", LEARNING_RATES),
    axis("seed", SEEDS),
  )
