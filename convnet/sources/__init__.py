"""The data sources that `data.source` names: one module each, imported when first used.

Every source module has the same two functions:

  load(data_config) -> input_pipeline.RawData
      The dataset's train and test splits, whole, in memory, checked with
      `input_pipeline.check_data`.
  input_spec(data_config) -> (input_shape, num_classes)
      What `load` would give, from as little as can tell it: a header, the
      builder's metadata, or nothing at all for generated data.

A module may also have `title(data_config, sizes) -> str`, how titles name
its data ("embedded MNIST"); without one, titles use `data.name`.

Both read only the `data_config` fields they need and raise ConfigError for a
field that cannot work, DataError for data that cannot be read. What comes
after (the validation split, scaling, features) is `input_pipeline`'s job, the
same for every source. A new source is one module and one line in `REGISTRY`
(the README's "Adding a data source" shows one). A module is imported only when
its source is used, so TensorFlow, say, is imported only for "tfds".
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

from convnet.errors import ConfigError

# data.source -> the module that reads it.
REGISTRY = {
  "tfds": "convnet.sources.tfds",
  "idx": "convnet.sources.idx",
  "embedded": "convnet.sources.embedded",
  "mnist1d": "convnet.sources.mnist1d",
  "spoken_digits": "convnet.sources.spoken_digits",
  "shapes3d": "convnet.sources.shapes3d",
}


def get(source: str) -> ModuleType:
  """The module of `source` (a key of REGISTRY), imported on first use.

  Raises:
    ConfigError: `source` is not registered.
  """
  if source not in REGISTRY:
    raise ConfigError(
      f"data.source={source!r} is not a source; choose one of {', '.join(REGISTRY)}"
    )
  return importlib.import_module(REGISTRY[source])


def title(data_config: Mapping[str, Any], sizes: bool = False) -> str:
  """How figure and report titles name the data of `data_config` (a config's `data`).

  The source's own `title(data_config, sizes)` where it has one ("embedded
  MNIST", with `sizes` "embedded MNIST (5,000 digits)"; an IDX folder's name),
  else `data.name` ("mnist1d", "shapes3d", a TFDS name).

  A source that is not registered (records of another version, say) gets
  `data.name` too.
  """
  source = data_config.get("source", "")
  own = getattr(get(source), "title", None) if source in REGISTRY else None
  return own(data_config, sizes) if own else data_config.get("name", "")


def check_name(name: str, names: Iterable[str], source: str, kind: str) -> str:
  """`name` (the config's `data.name`) if it is one of `names`, the datasets `source` makes.

  Raises:
    ConfigError: naming `data.name`, as "not `kind`", and the names to use.
  """
  names = tuple(names)
  if name not in names:
    raise ConfigError(
      f"data.name={name!r} is not {kind}; with data.source={source!r} use "
      f"{' or '.join(map(repr, names))}"
    )
  return name
