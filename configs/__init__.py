"""The configs of the models, installed as `convnet.configs`; the sweeps over them are in `sweeps`.

Each config is a module with `get_config()`. The entry points take one by its
name as well as by its path: `--config=mnist` (or `convnet.configs.mnist`),
`--sweep=kernel_size` (or `convnet.configs.sweeps.kernel_size`).
`python -m convnet.configs` lists them with their descriptions.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil

CONFIGS = "convnet.configs"
SWEEPS = "convnet.configs.sweeps"


def names(package: str = CONFIGS) -> list[str]:
  """The configs in `package` (CONFIGS or SWEEPS), by their short names, sorted: ["dense", ...]."""
  try:
    spec = importlib.util.find_spec(package)
  except ModuleNotFoundError:  # a parent of `package` is missing
    return []
  locations = spec.submodule_search_locations if spec else None
  modules = pkgutil.iter_modules(list(locations or []))
  return sorted(m.name for m in modules if not m.ispkg and not m.name.startswith("_"))


def find(name: str, package: str = CONFIGS) -> str | None:
  """The file of the config `name` in `package`, or None if there is none of that name.

  `name` is short ("mnist", relative to `package`; "sweeps.kernel_size" from
  CONFIGS) or whole ("convnet.configs.mnist").
  """
  if not name or not all(part.isidentifier() for part in name.split(".")):
    return None
  whole = name if name.startswith(CONFIGS + ".") else f"{package}.{name}"
  short = whole.rsplit(".", 1)
  if short[1].startswith("_") or short[1] not in names(short[0]):
    return None
  spec = importlib.util.find_spec(whole)
  return spec.origin if spec and spec.origin and spec.origin.endswith(".py") else None


def description(path: str) -> str:
  """The first line of the docstring of the config file at `path`; "" if it has none."""
  with open(path, encoding="utf-8") as f:
    docstring = ast.get_docstring(ast.parse(f.read(), path)) or ""
  return docstring.strip().split("\n", 1)[0]


def catalogue(package: str = CONFIGS) -> dict[str, str]:
  """{short name: description} of every config in `package`."""
  return {name: description(find(name, package)) for name in names(package)}
