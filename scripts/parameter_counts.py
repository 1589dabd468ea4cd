r"""The book's parameter counts, counted by this project's own modules.

  python scripts/parameter_counts.py

1. The worked example of "Deep Learning with JavaScript" (chapter 4): a 10x10
   image mapped to a 10x10 image
   (a) by one dense layer: 10,000 weights, 10,100 with biases;
   (b) by two 3x3 conv layers with SAME padding, 9 filters then 1: 81 + 81 =
       162 weights, 172 with biases. The book says "only 90"; see `BOOK_NOTE`.
2. The book's two MNIST models, from configs/mnist.py (33,194 parameters) and
   configs/dense.py (33,400), layer by layer.

Every number is `models.count_params` of the parameters the modules' `init`
makes (traced by `jax.eval_shape`: the same tree, without computing the random
values); none is written by hand. `tests/test_summary.py` checks them.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from convnet import models
from convnet.configs import dense, mnist

# Where the book's "only 90" comes from: it counts every 3x3 filter as 9 weights, whatever the
# depth of its input (9 filters x 9 + 1 filter x 9 = 90). A conv filter spans all the channels of
# its input, so the second layer's one filter, applied to the 9 channels the first layer makes,
# has 3x3x9 = 81 weights, and the first layer's 9 filters on a 1-channel image have 9 x 3x3x1 =
# 81: 162 weights, 172 with the 9 + 1 biases.
BOOK_NOTE = (
  'The book says "only 90": it counts every 3x3 filter as 9 weights whatever the depth of its\n'
  "input, 9 filters x 9 + 1 filter x 9 = 90. But a filter spans every channel of its input: the\n"
  "second layer's one filter sees the 9 channels the first layer makes, 3x3x9 = 81 weights, as\n"
  "many as the first layer's 9 filters of 3x3x1. Hence 81 + 81 = 162 weights, 172 with the 10\n"
  "biases: still about 62 times fewer than the dense layer's 10,000."
)


@dataclasses.dataclass(frozen=True)
class LayerCount:
  """One layer's parameters: its kernel's shape, the kernel alone, and kernel plus bias."""

  name: str
  kernel_shape: tuple[int, ...]
  weights: int
  params: int


def layer_counts(module: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCount]:
  """Per-layer parameter counts of a module applied to one example of `input_shape`."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  params = jax.eval_shape(module.init, jax.random.key(0), x)["params"]
  return [
    LayerCount(
      name,
      tuple(layer["kernel"].shape),
      models.count_params(layer["kernel"]),
      models.count_params(layer),
    )
    for name, layer in params.items()
  ]


def image_to_image_dense() -> nn.Module:
  """A 10x10 image to a 10x10 image (100 numbers) by one dense layer: the DenseNet's logits."""
  return models.DenseNet(dense_features=(), num_classes=100)


class TwoConvs(nn.Module):
  """A 10x10 image to a 10x10 image by two 3x3 SAME convs (the convnet's conv layer), 9 then 1."""

  @nn.compact
  def __call__(self, x):
    x = models.MatmulConv(9, (3, 3), (1, 1), "SAME", name="conv_0")(x)
    return models.MatmulConv(1, (3, 3), (1, 1), "SAME", name="conv_1")(x)


def book_models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
  """The book's models, each with the shape of one input example."""
  mnist_shape = (28, 28, 1)
  return {
    "10x10 image to 10x10 image, one dense layer": (image_to_image_dense(), (10, 10, 1)),
    "10x10 image to 10x10 image, two 3x3 SAME convs, 9 filters then 1": (TwoConvs(), (10, 10, 1)),
    "The book's convnet (configs/mnist.py), on 28x28x1 MNIST": (
      models.create_model(mnist.get_config().model, mnist_shape, 10),
      mnist_shape,
    ),
    "The book's dense baseline (configs/dense.py), on 28x28x1 MNIST": (
      models.create_model(dense.get_config().model, mnist_shape, 10),
      mnist_shape,
    ),
  }


def format_counts(title: str, counts: list[LayerCount]) -> str:
  """A titled table of the layers, weights only and with biases, and their totals."""
  lines = [title, f"  {'layer':8}  {'kernel shape':14}  {'weights':>8}  {'with biases':>11}"]
  for c in counts:
    shape = "x".join(map(str, c.kernel_shape))
    lines.append(f"  {c.name:8}  {shape:14}  {c.weights:>8,}  {c.params:>11,}")
  weights, params = sum(c.weights for c in counts), sum(c.params for c in counts)
  lines.append(f"  {'total':8}  {'':14}  {weights:>8,}  {params:>11,}")
  return "\n".join(lines)


def main() -> None:
  for title, (module, input_shape) in book_models().items():
    print(format_counts(title, layer_counts(module, input_shape)))
    if isinstance(module, TwoConvs):
      print(BOOK_NOTE)
    print()


if __name__ == "__main__":
  main()
