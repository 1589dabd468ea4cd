r"""What separates MNIST-1D's CNN here from its paper's 94%: initialisation, batch order.

Trains the CNN of configs/sweeps/mnist1d_paper.py by the paper's protocol
(4,000 sequences, Adam at 1e-2, batches of 100, 6,000 steps), seeds 0-4
together, once for each variant of what the authors' PyTorch code does
differently:
- "flax": this project as it is (LeCun-normal kernels, zero biases, batches
  reshuffled every epoch);
- "torch_init": PyTorch's default initialisation of Conv1d and Linear, every
  kernel and bias uniform in +-1/sqrt(fan_in);
- "fixed_order": the batches in one fixed order, the same every epoch, as the
  authors' loop takes them;
- "both".
It prints each variant's final test accuracy, mean and 95% interval over
seeds, and writes them to OUT/gap.json; the runs are kept in OUT/runs/.

  python scripts/mnist1d_gap.py --out=runs/mnist1d_gap
"""

import json
import math
import os
import sys

import jax
import numpy as np
from absl import app, flags

from convnet import analysis, cli, epochs, files, seeds, steps
from convnet.configs.sweeps import mnist1d_paper
from convnet.errors import ConvnetError

VARIANTS = ("flax", "torch_init", "fixed_order", "both")
SEEDS = range(5)

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags: defined when run as a program, not when imported."""
  flags.DEFINE_string("out", None, "Folder for the runs and gap.json.", required=True)
  flags.DEFINE_list("variants", list(VARIANTS), f"Which of {', '.join(VARIANTS)} to train.")


def torch_like_params(params, key: jax.Array):
  """Every kernel and bias uniform in +-1/sqrt(fan_in), fan_in = the kernel's inputs per output."""
  layers = sorted(params)
  new = {}
  for layer, layer_key in zip(layers, jax.random.split(key, len(layers)), strict=True):
    kernel, bias = params[layer]["kernel"], params[layer]["bias"]
    bound = 1.0 / math.sqrt(math.prod(kernel.shape[:-1]))
    kernel_key, bias_key = jax.random.split(layer_key)
    new[layer] = {
      "kernel": jax.random.uniform(kernel_key, kernel.shape, kernel.dtype, -bound, bound),
      "bias": jax.random.uniform(bias_key, bias.shape, bias.dtype, -bound, bound),
    }
  return new


def patch(variant: str) -> None:
  """Makes `steps.create_train_state` and `epochs.epoch_order` do what `variant` says."""
  original_state, original_order = PLAIN
  steps.create_train_state, epochs.epoch_order = original_state, original_order
  if variant in ("torch_init", "both"):

    def create_train_state(rng, model, input_shape, tx):
      state = original_state(rng, model, input_shape, tx)
      params = torch_like_params(state.params, jax.random.fold_in(rng, 1))
      return state.replace(params=params, opt_state=tx.init(params))

    steps.create_train_state = create_train_state
  if variant in ("fixed_order", "both"):

    def epoch_order(num_examples, seed, epoch, length=0):
      del seed, epoch
      return (np.arange(max(length, num_examples)) % num_examples).astype(np.int32)

    epochs.epoch_order = epoch_order


PLAIN = (steps.create_train_state, epochs.epoch_order)


def main(argv):
  cli.start(argv)
  unknown = sorted(set(FLAGS.variants) - set(VARIANTS))
  if unknown or not FLAGS.variants:
    cli.usage_error(f"--variants: give one or more of {', '.join(VARIANTS)}")
  try:
    files.make_dir(FLAGS.out, "--out")
    train_variants()
  except ConvnetError as e:
    sys.exit(f"error: {e}")


def train_variants() -> None:
  config = mnist1d_paper.get_config()
  table = {}
  for variant in FLAGS.variants:
    patch(variant)
    results = seeds.train_seeds(config, list(SEEDS), os.path.join(FLAGS.out, "runs", variant))
    accuracies = [r["test_accuracy"] for r in results]
    table[variant] = {"test_accuracy": accuracies, **analysis.interval(accuracies)}
    row = table[variant]
    print(
      f"{variant}: {100 * row['mean']:.2f} [{100 * row['ci_low']:.2f}, "
      f"{100 * row['ci_high']:.2f}], seeds {', '.join(f'{100 * a:.1f}' for a in accuracies)}"
    )
  patch("flax")
  with open(os.path.join(FLAGS.out, "gap.json"), "w") as f:
    json.dump(table, f, indent=1)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
