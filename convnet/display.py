"""How numbers, settings and datasets are written in logs, tables and titles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def duration(seconds: float) -> str:
  """A duration to the second: "42s", "3m07s", "2h05m"."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def epoch_number(epoch: float) -> str:
  """An epoch count: "3" when whole, "2.50" within an epoch."""
  return str(epoch) if isinstance(epoch, int) else f"{epoch:.2f}"


def metrics_line(record: Mapping[str, Any]) -> str:
  """A metrics record as "key=value ...": rates as whole numbers, other floats to 4 places."""
  parts = []
  for key, value in record.items():
    if key in ("kind", "epoch"):
      continue
    if isinstance(value, float):
      value = f"{value:,.0f}" if "per_sec" in key else f"{value:.4f}"
    parts.append(f"{key}={value}")
  return " ".join(parts)


def shape(sizes: Sequence[int]) -> str:
  """Sizes joined by "x", as shapes, kernels and strides are written: (3, 3) as "3x3"."""
  return "x".join(str(s) for s in sizes)


def setting_value(value: Any, separators: Sequence[str] = (",", "x")) -> str:
  """A config value as a setting's label writes it: (16, 32) as "16,32", ((2, 2), (1, 1)) as
  "2x2,1x1"; anything but a list or tuple as `str(value)`.

  A list's items are joined by `separators[0]`, their own items by
  `separators[1]`, and so on; the last separator joins every deeper level.
  `convnet.sweep` names directories with ("_",): "16_32", "2_2_1_1".
  """
  if not isinstance(value, list | tuple):
    return str(value)
  inner = separators[1:] or separators
  return separators[0].join(setting_value(v, inner) for v in value)
