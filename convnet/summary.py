r"""A Keras-style table of a configured model, with FLOPs and receptive fields, and no training.

  python -m convnet.summary --config=configs/mnist.py \
      [--config.model.conv.kernel_size='((5, 5), 3, 3)']

One row per layer: each conv (its activation folded in), each pooling, the
flatten or global head, each dense layer and the logits, with the layer's Flax
name, output shape (batch as None), parameters, forward FLOPs for one example,
and the receptive field at that depth: its size and its jump (the distance in
input pixels between adjacent outputs) along each spatial axis. Below the
table, the totals, and the same totals from JAX and XLA: `models.count_params`
of the parameters `model.init` makes, and XLA's cost analysis of the forward
pass per example. The input shape comes from `input_pipeline.input_spec`:
nothing is downloaded or read whole. `convnet.main` logs the table at the start
of a run.

FLOPs, as XLA's cost analysis counts them: 2 per multiply-add, 1 per bias add,
per pooling comparison or addition (a window of w inputs takes w - 1) and per
division, and `ACTIVATION_COSTS` per activation output. Exponentials, tanh and
erf are XLA "transcendentals", counted apart. A "matmul" conv multiplies the
padding's zeros too; XLA counts a "lax" conv's multiply-adds with the input
only. Work done once per batch, whatever its size, is left out (see
`xla_counts`). The totals equal XLA's count of the forward pass as written
(lowered, before optimisation), for both implementations, every activation,
pooling, padding, head and rank that `tests/test_summary.py` tries. The
compiled program's count can differ (fusion recomputes some elementwise work,
simplification removes some); the printout says by how much.

Receptive fields: r_out = r_in + (k - 1) * j_in and j_out = j_in * s, from
r = j = 1 at the input, for every conv and pooling window (padding does not
change them). After the head, every output sees the whole input.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from convnet import cli, config_checks, display, input_pipeline, models, ops, sources, steps
from convnet.errors import ConvnetError
from convnet.model_config import output_length
from convnet.models import layers

# (FLOPs, transcendentals) per output of each activation, as XLA's cost analysis counts the
# program as written; `tests/test_summary.py` measures them again.
ACTIVATION_COSTS: dict[str, tuple[int, int]] = {
  "relu": (1, 0),
  "gelu": (8, 1),
  "elu": (4, 1),
  "selu": (6, 1),
  "swish": (4, 1),
  "tanh": (0, 1),
  "sigmoid": (3, 1),
  "linear": (0, 0),
}


@dataclasses.dataclass(frozen=True)
class Row:
  """One layer of the table.

  Attributes:
    name: the Flax module's name (`conv_0`, `dense_0`, `logits`), or `input`,
      `pool_{i}` (block i's pooling), `flatten`, `global_avg`, `global_max`.
    operation: what the layer does, e.g. "conv 16@3x3, stride 1x1, VALID, relu".
    output_shape: shape of one example's output (no batch axis).
    weights: kernel entries.
    biases: bias entries.
    flops: forward FLOPs for one example (see the module docstring).
    transcendentals: exponentials, tanh and erf for one example.
    receptive_field: input pixels one output sees along each spatial axis;
      None from the head on, where each output combines every position.
    jump: input pixels between adjacent outputs along each spatial axis; None
      from the head on.
    field_start: the input position where the first output's receptive field
      begins along each spatial axis (negative where padding comes first);
      None from the head on.
    input_seen: from the head on, the number of input positions along each
      spatial axis that some output of the last conv block sees: the whole
      input, unless VALID windows leave its last rows out (the book's convnet
      never sees the last 2 rows and columns of a 28x28 digit) or strides
      wider than their windows skip positions.
  """

  name: str
  operation: str
  output_shape: tuple[int, ...]
  weights: int = 0
  biases: int = 0
  flops: int = 0
  transcendentals: int = 0
  receptive_field: tuple[int, ...] | None = None
  jump: tuple[int, ...] | None = None
  field_start: tuple[int, ...] | None = None
  input_seen: tuple[int, ...] | None = None

  @property
  def params(self) -> int:
    return self.weights + self.biases


def receptive_fields(
  windows: Sequence[tuple[Sequence[int], Sequence[int]]], rank: int, before: Row | None = None
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
  """(size, jump) per spatial axis after each (window, stride) of a stack of convs and pools.

  Args:
    windows: one (kernel or pooling window, strides) pair per layer, in order.
    rank: number of spatial axes.
    before: the row the windows apply to (its receptive field and jump); by
      default the input, where both are 1.
  """
  size, jump = (1,) * rank, (1,) * rank
  if before is not None:
    size, jump = before.receptive_field, before.jump
  fields = []
  for window, strides in windows:
    size = tuple(r + (k - 1) * j for r, k, j in zip(size, window, jump, strict=True))
    jump = tuple(j * s for j, s in zip(jump, strides, strict=True))
    fields.append((size, jump))
  return fields


def layer_rows(
  model_config: Mapping[str, Any], input_shape: Sequence[int], num_classes: int
) -> list[Row]:
  """The table's rows for the model a config's `model` field names, on this input shape.

  Raises:
    ConfigError: naming the field, when the model cannot work on this input.
  """
  return model_rows(models.create_model(model_config, input_shape, num_classes), input_shape)


def model_rows(model, input_shape: Sequence[int]) -> list[Row]:
  """The table's rows for the layers a model lists (`model.layers`) on this input shape."""
  input_shape = tuple(input_shape)
  spatial, channels = input_shape[:-1], input_shape[-1]
  rank = len(spatial)
  rows = [
    Row(
      "input",
      "input",
      input_shape,
      receptive_field=(1,) * rank,
      jump=(1,) * rank,
      field_start=(0,) * rank,
    )
  ]
  # Per axis: which offsets from the first output's field start it sees (a stride wider than its
  # window leaves gaps).
  offsets = [{0}] * rank
  last = len(model.layers) - 1
  for index, layer in enumerate(model.layers):
    before = rows[-1]
    if isinstance(layer, layers.Conv | layers.Pool):
      window = layer.kernel_size if isinstance(layer, layers.Conv) else layer.window
      ((size, jump),) = receptive_fields([(window, layer.strides)], rank, before)
      pads = ops.explicit_padding(before.output_shape[:-1], window, layer.strides, layer.padding)
      out = tuple(
        output_length(n, k, s, pad)
        for n, k, s, pad in zip(before.output_shape[:-1], window, layer.strides, pads, strict=True)
      )
      # Where the first output's receptive field starts, in input pixels (padding makes it
      # negative).
      start = tuple(
        a - low * j for a, (low, _), j in zip(before.field_start, pads, before.jump, strict=True)
      )
      offsets = [
        {t * j + d for t in range(k) for d in axis_offsets}
        for axis_offsets, k, j in zip(offsets, window, before.jump, strict=True)
      ]
      field = {"receptive_field": size, "jump": jump, "field_start": start}
      if isinstance(layer, layers.Conv):
        following = model.layers[index + 1] if index < last else None
        # Pooled first (`layers.pools_first`), the conv computes only the outputs its pooling
        # reads, and its bias and activation apply to the pooled outputs.
        computed = activated = out
        if layers.pools_first(layer, following):
          activated = tuple(o // w for o, w in zip(out, following.window, strict=True))
          computed = tuple(a * w for a, w in zip(activated, following.window, strict=True))
        rows.append(_conv_row(layer, before, out, (computed, activated), pads, channels, field))
        channels = layer.features
      else:
        rows.append(_pool_row(layer, out, channels, field))
    elif isinstance(layer, layers.Head):
      rows.append(_head_row(layer, before, spatial, offsets, channels))
    else:
      rows.append(_dense_row(layer, before, index == last))
  return rows


def _conv_row(layer, before: Row, out, work, pads, channels: int, field) -> Row:
  """A conv's row; `work`: the output lengths it computes, and those it biases and activates."""
  computed, activated = work
  taps = _conv_taps(
    before.output_shape[:-1], computed, layer.kernel_size, layer.strides, pads, layer.implementation
  )
  act_flops, act_transcendentals = ACTIVATION_COSTS[layer.activation]
  outputs = math.prod(activated) * layer.features
  return Row(
    layer.name,
    f"conv {layer.features}@{_window(layer.kernel_size, layer.strides, layer.padding)}, "
    f"{layer.activation}",
    (*out, layer.features),
    weights=math.prod(layer.kernel_size) * channels * layer.features,
    biases=layer.features,
    flops=2 * taps * channels * layer.features + outputs * (1 + act_flops),
    transcendentals=outputs * act_transcendentals,
    **field,
  )


def _pool_row(layer, out, channels: int, field) -> Row:
  comparisons = (math.prod(layer.window) - 1) * math.prod(out) * channels
  if layer.kind == "avg":  # then a division by the count of real inputs per window
    comparisons += math.prod(out) * channels
  return Row(
    layer.name,
    f"{layer.kind}-pool {_window(layer.window, layer.strides, layer.padding)}",
    (*out, channels),
    flops=comparisons,
    **field,
  )


def _head_row(layer, before: Row, spatial, offsets, channels: int) -> Row:
  """The head's row; `input_seen` counts the input positions the last feature maps see."""
  seen = tuple(
    len({a + o * j + d for o in range(m) for d in axis_offsets} & set(range(n)))
    for n, m, a, j, axis_offsets in zip(
      spatial, before.output_shape[:-1], before.field_start, before.jump, offsets, strict=True
    )
  )
  if layer.kind == "flatten":
    return Row("flatten", "flatten", (math.prod(before.output_shape),), input_seen=seen)
  # A reduction over positions; the mean divides once per channel.
  reductions = (math.prod(before.output_shape[:-1]) - 1) * channels
  divisions = channels if layer.kind == "global_avg" else 0
  operation = layer.kind.replace("_", " ") + "-pool"
  return Row(layer.kind, operation, (channels,), flops=reductions + divisions, input_seen=seen)


def _dense_row(layer, before: Row, is_last: bool) -> Row:
  """A dense layer's row; the last one's (the logits) names no activation."""
  width = before.output_shape[-1]
  act_flops, act_transcendentals = ACTIVATION_COSTS[layer.activation]
  return Row(
    layer.name,
    f"dense {layer.features}" + ("" if is_last else f", {layer.activation}"),
    (layer.features,),
    weights=width * layer.features,
    biases=layer.features,
    flops=2 * width * layer.features + layer.features * (1 + act_flops),
    transcendentals=layer.features * act_transcendentals,
    input_seen=before.input_seen,
  )


def _conv_taps(spatial, out, window, strides, pads, implementation: str) -> int:
  """Output positions times kernel taps: the multiply-adds per input and output channel.

  The matmul implementation multiplies every tap, padding included; for a lax
  conv, XLA counts only the taps that fall on the input.
  """
  if implementation != "lax":
    return math.prod(out) * math.prod(window)
  taps = 1
  for n, m, k, s, (low, _) in zip(spatial, out, window, strides, pads, strict=True):
    taps *= sum(0 <= o * s + t - low < n for o in range(m) for t in range(k))
  return taps


def _window(window, strides, padding) -> str:
  """`3x3, stride 1x1, VALID` or `3x3, stride 1x1, pad (1,1),(1,1)`."""
  if not isinstance(padding, str):
    padding = "pad " + ",".join(f"({low},{high})" for low, high in padding)
  return f"{display.shape(window)}, stride {display.shape(strides)}, {padding}"


def totals(rows: Sequence[Row]) -> dict[str, int]:
  """Parameters (weights, biases), FLOPs and transcendentals of the whole model."""
  return {
    "params": sum(r.params for r in rows),
    "weights": sum(r.weights for r in rows),
    "biases": sum(r.biases for r in rows),
    "flops": sum(r.flops for r in rows),
    "transcendentals": sum(r.transcendentals for r in rows),
  }


def format_table(rows: Sequence[Row], title: str = "") -> str:
  """The rows as a fixed-width table, with the totals below."""
  header = ("Layer", "Operation", "Output shape", "Params", "FLOPs", "Receptive field", "Jump")
  spatial = rows[0].output_shape[:-1]
  body = []
  for row in rows:
    if row.receptive_field is not None:
      field, jump = display.shape(row.receptive_field) or "-", display.shape(row.jump) or "-"
    elif row.input_seen == spatial:
      field, jump = "whole input", "-"
    else:
      field, jump = f"{display.shape(row.input_seen)} of {display.shape(spatial)} seen", "-"
    body.append(
      (
        row.name,
        row.operation,
        str((None, *row.output_shape)),
        f"{row.params:,}",
        f"{row.flops:,}",
        field,
        jump,
      )
    )
  widths = [max(len(line[c]) for line in [header, *body]) for c in range(len(header))]
  right = {3, 4}  # numbers

  def line(cells):
    return "  ".join(
      cell.rjust(w) if c in right else cell.ljust(w)
      for c, (cell, w) in enumerate(zip(cells, widths, strict=True))
    ).rstrip()

  rule = "-" * len(line(header))
  total = totals(rows)
  lines = [title] if title else []
  lines += [rule, line(header), rule, *map(line, body), rule]
  lines.append(
    f"Total parameters: {total['params']:,} ({total['weights']:,} weights, "
    f"{total['biases']:,} biases)"
  )
  lines.append(f"Total forward FLOPs per example: {total['flops']:,}")
  if total["transcendentals"]:
    lines.append(f"Transcendentals (exp, tanh, erf) per example: {total['transcendentals']:,}")
  return "\n".join(lines)


def xla_counts(
  model_config: Mapping[str, Any],
  input_shape: Sequence[int],
  num_classes: int,
  compiled: bool = True,
) -> dict[str, float]:
  """Parameters and forward-pass costs of the model for one example, from JAX and XLA.

  Costs are per example: XLA's count for a batch of two minus its count for a
  batch of one. That leaves out work done once per batch whatever its size
  (average pooling's count of real inputs per window, which depends on no
  input and which XLA folds away or not depending on the padding).

  Returns:
    `params`: `models.count_params` of the parameters `model.init` makes
      (traced by `jax.eval_shape`: the same tree, without compiling the
      initialisers, which takes seconds on a CPU);
    `flops_lowered`, `transcendentals_lowered`: XLA's cost analysis of the
      forward pass as written (lowered, before optimisation);
    `flops_compiled` (unless `compiled` is False, which saves two
      compilations): from `steps.compiled_flops`, the optimised program. Its
      fusions may recompute a producer's elementwise work in each consumer (a
      block's bias, activation and pooling in each window slice of the next
      matmul conv), and simplification may remove ops.
  """
  model = models.create_model(model_config, input_shape, num_classes)
  batches = [jax.ShapeDtypeStruct((n, *input_shape), jnp.float32) for n in (1, 2)]
  params = jax.eval_shape(model.init, jax.random.key(0), batches[0])["params"]

  def forward(params, x):
    return model.apply({"params": params}, x)

  one, two = (_cost(jax.jit(forward).lower(params, x)) for x in batches)
  counts = {
    "params": models.count_params(params),
    "flops_lowered": two.get("flops", 0.0) - one.get("flops", 0.0),
    "transcendentals_lowered": two.get("transcendentals", 0.0) - one.get("transcendentals", 0.0),
  }
  if compiled:
    compiled_one, compiled_two = (steps.compiled_flops(forward, params, x) for x in batches)
    counts["flops_compiled"] = compiled_two - compiled_one
  return counts


def _cost(lowered) -> dict[str, float]:
  cost = lowered.cost_analysis()
  return cost[0] if isinstance(cost, list) else cost  # a list in older jax versions


def _agreement(table: float, xla: float) -> str:
  if table == xla:
    return f"table: {table:,.0f}, equal"
  return (
    f"table: {table:,.0f}, {100 * (table - xla) / xla:+.1f}%" if xla else f"table: {table:,.0f}"
  )


def summary_text(config: ml_collections.ConfigDict, xla: bool = True) -> str:
  """The table of a config's model on its data's input shape, and XLA's totals beside it.

  Raises:
    ConvnetError: for a config that cannot work, naming the field.
  """
  config_checks.validate(config)
  input_shape, num_classes = input_pipeline.input_spec(config.data)
  model = models.create_model(config.model, input_shape, num_classes)
  rows = model_rows(model, input_shape)
  data = sources.title(config.data)
  implementations = {
    layer.implementation for layer in model.layers if isinstance(layer, layers.Conv | layers.Pool)
  }
  name = config.model.name
  if implementations:
    name += f" ({', '.join(sorted(implementations))} implementation)"
  text = format_table(rows, f"{name} on {data}: input {input_shape}, {num_classes} classes")
  if not xla:
    return text
  total, counts = totals(rows), xla_counts(config.model, input_shape, num_classes)
  lines = [
    text,
    f"models.count_params of the parameters model.init makes: {counts['params']:,} "
    f"({_agreement(total['params'], counts['params'])})",
    "XLA cost analysis of the forward pass, per example (a batch of two minus a batch of one):",
    f"  program as written: {counts['flops_lowered']:,.0f} FLOPs "
    f"({_agreement(total['flops'], counts['flops_lowered'])})",
  ]
  if total["transcendentals"] or counts["transcendentals_lowered"]:
    lines.append(
      f"  program as written: {counts['transcendentals_lowered']:,.0f} transcendentals "
      f"({_agreement(total['transcendentals'], counts['transcendentals_lowered'])})"
    )
  lines.append(
    f"  compiled program (steps.compiled_flops): {counts['flops_compiled']:,.0f} FLOPs "
    f"({_agreement(total['flops'], counts['flops_compiled'])})"
  )
  extra = counts["flops_compiled"] - counts["flops_lowered"]
  if extra:
    lines += [
      f"  The compiled program counts {extra:+,.0f} FLOPs against the program as written: XLA's",
      "  fusions recompute elementwise work (bias, activation, pooling) in each consumer, such as",
      "  each window slice of the next matmul conv, and simplification removes some ops.",
    ]
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# Command line

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines this command's flags, when it runs as a program."""
  cli.define_config_flag(flag_values)
  flags.mark_flags_as_required(["config"], flag_values=flag_values)


def main(argv):
  cli.start(argv, quiet=False)
  try:
    print(summary_text(FLAGS.config))
  except ConvnetError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
