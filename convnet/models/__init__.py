"""The models that `model.name` names: one module each, imported when first used.

Every model module has one function:

  create(model_config, input_shape, num_classes) -> flax.linen.Module
      The model the config's `model` field describes, for examples of
      `input_shape` (channels last) and `num_classes` logits. It reads only the
      fields it needs and raises ConfigError, naming the field, for one that
      cannot work on this input.

The module it returns lists its layers, `model.layers` (a tuple of
`convnet.models.layers` records: Conv, Pool, Head, Dense). The summary, the
export formats and the figures read that list, so they work for any model
made of those kinds; `layers.Stack` is a model that is its list. A module may
also set `TAKES_FLAT_INPUTS = True` when its model takes examples that are
vectors already (`data.features` "pca" or "top_variance"); without it, such
data is refused before anything is read.

A new model is one module and one line in `REGISTRY` (docs/adding_a_model.md
shows one). Reports compare every other model with `BASELINE` on the same
data, at matched parameter counts (`analysis.matched_pairs`);
`convnet.matching.matched_width` sizes the dense baseline to match a model in
parameters, forward FLOPs or training FLOPs.

This package imports no JAX or Flax of its own, so reports can read the
registry cheaply; `ConvNet`, `DenseNet`, `Stack`, `MatmulConv` and `pool` are
imported from their modules when first named.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from convnet.errors import ConfigError

# model.name -> the module that builds it.
REGISTRY = {
  "convnet": "convnet.models.convnet",
  "dense": "convnet.models.dense",
}
# The model the others are compared with in reports.
BASELINE = "dense"

# Names of this package that live in its modules, imported when first used.
_LAZY = {
  "ConvNet": "convnet.models.convnet",
  "DenseNet": "convnet.models.dense",
  "Stack": "convnet.models.layers",
  "MatmulConv": "convnet.models.layers",
  "pool": "convnet.models.layers",
}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(name: str) -> ModuleType:
  """The module of model `name` (a key of REGISTRY), imported on first use.

  Raises:
    ConfigError: `name` is not registered.
  """
  if name not in REGISTRY:
    raise ConfigError(f"model.name={name!r} is not a model; choose one of {', '.join(REGISTRY)}")
  return importlib.import_module(REGISTRY[name])


def takes_flat_inputs(name: str) -> bool:
  """Whether model `name` takes examples that are vectors (its module's `TAKES_FLAT_INPUTS`)."""
  return getattr(get(name), "TAKES_FLAT_INPUTS", False)


def create_model(model_config: Mapping[str, Any], input_shape: Sequence[int], num_classes: int):
  """Builds the module a config names, after checking it against the data.

  Args:
    model_config: the config's `model` field (see `configs/mnist.py`).
    input_shape: shape of one example, channels last, e.g. (28, 28, 1).
    num_classes: number of classes in the data.

  Returns:
    A Linen module with its `layers`: a `ConvNet` for "convnet", a `DenseNet`
    for "dense", what `create` of the registered module returns otherwise.

  Raises:
    ConfigError: naming the field, when a setting cannot work on this input,
      or `model.name` is not registered.
  """
  return get(model_config["name"]).create(model_config, input_shape, num_classes)


def count_params(params) -> int:
  """Total number of scalars in a parameter pytree."""
  import jax

  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def to_nnx(model, params: Mapping[str, Any]):
  """A Linen `model` with its trained `params` as a Flax NNX module (`flax.nnx.bridge.ToNNX`).

  The result is called as NNX modules are, `logits_BK = nnx_model(x_B...)`
  (under `nnx.jit` for speed), and computes what
  `model.apply({"params": params}, x)` computes; it can be a submodule of NNX
  code, or be trained further with `nnx.Optimizer`. The trained variables are
  set directly, so nothing is initialised (no `lazy_init`, which would run the
  model once, op by op).

  For a trained run: `run = trained.load(DIR)`, then `to_nnx(run.model, run.params)`.
  """
  from flax import nnx
  from flax.nnx.bridge import variables as bridge_variables

  nnx_model = nnx.bridge.ToNNX(model, rngs=nnx.Rngs(0))
  for name, value in bridge_variables.linen_vars_to_nnx_attrs({"params": params}).items():
    setattr(nnx_model, name, value)
  return nnx_model
