"""Lists the installed configs and sweeps, each with its description.

python -m convnet.configs
"""

from convnet import configs


def listing() -> str:
  """The configs and the sweeps, one a line with its description, under how to run them."""
  groups = (
    ("Configs: python -m convnet.main --config=NAME --workdir=DIR", configs.CONFIGS),
    ("Sweeps: python -m convnet.sweep --sweep=NAME --workdir=DIR", configs.SWEEPS),
  )
  lines = []
  for title, package in groups:
    described = configs.catalogue(package)
    column = max(map(len, described)) + 2
    lines += ["", title] if lines else [title]
    lines += [f"  {name:<{column}}{text}" for name, text in described.items()]
  return "\n".join(lines)


if __name__ == "__main__":
  print(listing())
