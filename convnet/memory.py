"""What a run will allocate, estimated from its config before anything is allocated.

`check(config, ...)` refuses a config whose arrays would not fit in the memory
there is, in one line naming the fields that make it large, before the data is
read, and once more when the data is loaded and the splits' sizes are known,
before the model is built: a mistyped size ends in a message, not in an
exhausted machine. `estimate` gives the parts, `available` the memory.

Every size is in bytes; float32 values and int32 indices take 4. The parts, for
`num_members` models (seeds trained together, stacked) on a mesh of
`num_devices` devices:

- parameters and optimizer state: the parameters counted from the model's
  layers (`summary.model_rows`: shapes from the config, no arrays), the
  optimizer's slots from `jax.eval_shape` of its `init` on a vector of that many
  parameters (shapes only, nothing allocated or compiled). Every device holds the state and
  `GRADIENT_COPIES` gradients (a step's, and their sum over microbatches); the
  host holds the state once more (as it is made, or while a checkpoint is saved).
- activations: every layer's output values per example, for one microbatch
  (`microbatch_size`, or the whole `batch_size`), times
  `TRAIN_ACTIVATION_FACTOR` bytes. The factors are XLA's own count
  (`compiled.memory_analysis()`, temporary bytes of the compiled train step) per
  output value of the book's convnet and its wider and larger-batch variants:
  4.2 to 4.4 for the "matmul" implementation (which keeps each conv's window
  slices for the backward pass), 6.0 for "lax".
- training batches: a batch's inputs, gathered, then split into microbatches.
- JAX and XLA at work: `RUNTIME_BYTES`, what compiling and running the steps
  took beyond the imports, measured for the book's convnet on a CPU.
- per-call metrics: each summed metric of the step, for each of
  `steps_per_call` steps, on the devices and on the host.
- order of training examples: the int32 indices of the longest stretch of an
  epoch the run trains (`epochs.order_length`), on the host and every device.
- evaluation (once the splits' sizes are known): a batch of inputs
  (`eval_batch_size`, cut to the larger split: `epochs.eval_batch_size`)
  on the host (padded) and the devices, and `EVAL_ACTIVATION_FACTOR` bytes per output value
  for one microbatch of it (XLA's count as above: 1.9, "lax" 0.6), less the
  train step's buffers, which are free by then.
- data (once loaded): every split on the host; the training split on every
  device, where it stays for the whole run.

The available memory: for the host, the kernel's `MemAvailable`
(/proc/meminfo; else the free physical pages from `os.sysconf`), capped by a
container's limit (cgroup v2 `memory.max` less `memory.current`); on an
accelerator, also the least any device has left (`bytes_limit` less
`bytes_in_use`, JAX's `memory_stats()`), against which the devices' share of
the parts is checked, and the host's parts against the host. On a CPU every
part is in the host's memory.

For the book's convnet (configs/mnist.py) on MNIST-sized data (51,000 training
examples), the estimate is 706 MB; a 20-step run's peak resident memory was
941 MB when it compiled its steps, 781 MB when it found them in the compilation
cache, of which 208 MB are the imports (Python, JAX, Orbax) made before any
estimate. On the 5,000 embedded digits: 353 MB against 568 MB.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from convnet import epochs, input_pipeline, models, optim, steps, summary
from convnet.errors import ConfigError, DataError
from convnet.models import layers

FLOAT_BYTES = 4  # float32 parameters, activations, inputs and metrics
INDEX_BYTES = 4  # int32 example indices and step counters
GRADIENT_COPIES = 2  # a step's gradients and their sum over microbatches
# Bytes of XLA's temporary buffers per output value, by conv implementation (see above).
TRAIN_ACTIVATION_FACTOR = {"matmul": 4.4, "lax": 6.0}  # forward and backward
EVAL_ACTIVATION_FACTOR = {"matmul": 1.9, "lax": 0.6}  # forward only, fused as it goes
INPUT_COPIES = 2  # a batch's inputs, gathered, then split into microbatches
RUNTIME_BYTES = 300 * 10**6  # compiling and running the steps, beyond what imports take
DEVICE_MEMORY = "the memory each device has left (JAX memory_stats)"


@dataclasses.dataclass(frozen=True)
class Part:
  """One part of what a run allocates.

  Attributes:
    name: what it is, e.g. "activations".
    host: bytes in the host's memory.
    device: bytes on the devices, all of them together (on a CPU, host memory too).
    fields: the config fields that set its size, the one most likely too
      large first, e.g. ("model.conv.features", "microbatch_size").
    detail: what makes it this large, in words, for the message.
    remedy: what to do, where "make <fields> smaller" is not it.
  """

  name: str
  host: int
  device: int
  fields: tuple[str, ...]
  detail: str = ""
  remedy: str = ""

  @property
  def total(self) -> int:
    return self.host + self.device


def estimate(
  config: ml_collections.ConfigDict,
  input_shape: Sequence[int],
  num_classes: int,
  num_members: int = 1,
  num_devices: int = 1,
  dataset: input_pipeline.Dataset | None = None,
) -> list[Part]:
  """The parts a run of `config` allocates (see the module docstring), in bytes.

  Args:
    config: a config that `config_checks.validate` accepts.
    input_shape: one example's shape, channels last (`input_pipeline.input_spec`).
    num_classes: the number of logits.
    num_members: models trained together (seeds, stacked along a leading axis).
    num_devices: devices of the mesh the batches are split across.
    dataset: the loaded data (one member's); without it, the parts that need
      the splits' sizes (evaluation, data, and the order where
      `steps_per_epoch` is 0) are left out.

  Raises:
    ConfigError: the model cannot work on this input (`models.create_model`), or
      `batch_size` is larger than the training split (`epochs.step_counts`).
  """
  model = models.create_model(config.model, input_shape, num_classes)
  rows = summary.model_rows(model, input_shape)[1:]  # the input's row holds no new array
  implementation = _implementation(model.layers)
  num_params = sum(row.params for row in rows)
  values = [math.prod(row.output_shape) for row in rows]  # per example
  per_example = sum(values)
  biggest = rows[max(range(len(rows)), key=values.__getitem__)]
  heaviest = rows[max(range(len(rows)), key=lambda i: rows[i].params)]
  input_size = math.prod(input_shape)
  batch = config.batch_size
  microbatch = config.microbatch_size if 0 < config.microbatch_size < batch else batch
  batch_field = "microbatch_size" if microbatch < batch else "batch_size"
  m, d = num_members, num_devices

  state = num_params + _optimizer_values(config, num_params)
  parts = [
    Part(
      "parameters and optimizer state",
      FLOAT_BYTES * m * state,
      FLOAT_BYTES * m * d * (state + GRADIENT_COPIES * num_params),
      (_field(heaviest),),
      f"{num_params:,} parameters, {heaviest.params:,} of them in {heaviest.name}, with "
      f"{config.optimizer.name}'s state",
    ),
    Part(
      "activations",
      0,
      int(FLOAT_BYTES * m * TRAIN_ACTIVATION_FACTOR[implementation] * per_example * microbatch),
      # The layers lead where an example's values outnumber the examples by far.
      (_field(biggest), batch_field)[:: 1 if per_example > 100 * microbatch else -1],
      f"{per_example:,} values per example, {math.prod(biggest.output_shape):,} of them from "
      f"{biggest.name}, for each of {microbatch:,} examples at once",
    ),
    Part(
      "training batches",
      0,
      FLOAT_BYTES * m * INPUT_COPIES * batch * input_size,
      ("batch_size",),
      f"{batch:,} examples of {input_size:,} values",
    ),
  ]
  num_metrics = _metrics_per_step(config, num_classes)
  parts.append(Part("JAX and XLA at work", RUNTIME_BYTES, 0, (), "compiling and running the steps"))
  parts.append(
    Part(
      "per-call metrics",
      FLOAT_BYTES * m * num_metrics * config.steps_per_call,
      (FLOAT_BYTES * m * num_metrics + INDEX_BYTES) * d * config.steps_per_call,
      ("steps_per_call",),
      f"{num_metrics} metrics for each of {config.steps_per_call:,} steps",
    )
  )
  order = _order_length(config, None if dataset is None else len(dataset.train))
  if order is not None:
    parts.append(
      Part(
        "order of training examples",
        INDEX_BYTES * m * order,
        INDEX_BYTES * m * d * order,
        ("steps_per_epoch", "batch_size") if config.steps_per_epoch else ("batch_size",),
        f"{order:,} int32 indices",
      )
    )
  if dataset is not None:
    step = sum(p.device for p in parts if p.name in ("activations", "training batches"))
    parts += _data_parts(config, dataset, per_example, implementation, m, d, step)
  return parts


def _data_parts(config, dataset, per_example: int, implementation: str, m: int, d: int, step: int):
  """The evaluation's and the data's parts (see `estimate`).

  The evaluation step runs when the train step's buffers (`step` bytes on the
  devices) are free: only what it needs beyond them counts.
  """
  largest = max(len(dataset.validation), len(dataset.test))
  multiple_of = math.lcm(config.microbatch_size or 1, d)
  eval_batch = epochs.eval_batch_size(largest, config.eval_batch_size, multiple_of)
  eval_microbatch = (
    config.microbatch_size if 0 < config.microbatch_size < eval_batch else eval_batch
  )
  input_bytes = FLOAT_BYTES * math.prod(dataset.input_shape) * eval_batch
  eval_factor = EVAL_ACTIVATION_FACTOR[implementation]
  train_bytes = dataset.train.images.nbytes + dataset.train.labels.nbytes
  all_bytes = sum(
    split.images.nbytes + split.labels.nbytes
    for split in (dataset.train, dataset.validation, dataset.test)
  )
  return [
    Part(
      "evaluation",
      m * input_bytes,  # the last batch padded (the others are views of the split), or stacked
      max(
        0, m * (input_bytes + int(FLOAT_BYTES * eval_factor * per_example * eval_microbatch)) - step
      ),
      ("eval_batch_size",) if eval_microbatch == eval_batch else ("microbatch_size",),
      f"batches of {eval_batch:,} examples, in microbatches of {eval_microbatch:,}",
    ),
    Part(
      "data",
      m * all_bytes,
      m * d * train_bytes,
      ("data.num_train",),
      f"{len(dataset.train):,} training examples of shape {dataset.input_shape}",
      "set data.num_train to the number of training examples to keep",
    ),
  ]


def _implementation(model_layers: Sequence[layers.Layer]) -> str:
  """The conv implementation whose factors apply: "lax" where any layer uses it, else "matmul"."""
  kinds = {getattr(layer, "implementation", "matmul") for layer in model_layers}
  return "lax" if "lax" in kinds else "matmul"


def _field(row: summary.Row) -> str:
  """The config field that sets a layer's width: its conv features or dense units."""
  if row.name.startswith(("conv_", "pool_")):
    return "model.conv.features"
  if row.name.startswith("dense_") or row.name == "logits":
    return "model.dense_features"
  return "model"


def _optimizer_values(config: ml_collections.ConfigDict, num_params: int) -> int:
  """The optimizer state's values for `num_params` parameters (`jax.eval_shape`: no arrays)."""
  tx = optim.create_optimizer(config.optimizer, 1, 1)  # the schedule does not change its state
  shapes = jax.eval_shape(tx.init, jax.ShapeDtypeStruct((num_params,), jnp.float32))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


def _metrics_per_step(config: ml_collections.ConfigDict, num_classes: int) -> int:
  """How many values the train step returns per step: its summed metrics and "count"."""
  logits = jax.ShapeDtypeStruct((1, num_classes), jnp.float32)
  labels = jax.ShapeDtypeStruct((1,), jnp.int32)
  return len(jax.eval_shape(steps.summed_metrics, logits, labels)) + bool(config.label_smoothing)


def _order_length(config: ml_collections.ConfigDict, num_train: int | None) -> int | None:
  """The order's length (`epochs.order_length`); None where it needs the unknown split size."""
  if num_train is None:
    if not config.steps_per_epoch:
      return None
    spe = config.steps_per_epoch
    total = spe * config.num_epochs
    total = min(total, config.max_steps) if config.max_steps >= 0 else total
  else:
    spe, total = epochs.step_counts(config, num_train)
  return epochs.order_length(spe, total, config.batch_size)


def available() -> tuple[int, int | None, str]:
  """(host bytes, device bytes or None, where the host's come from) a run can still allocate.

  Device bytes are the least any device of the default backend has left
  (`bytes_limit - bytes_in_use`), None on a CPU or where JAX does not say.
  """
  host, where = _host_available()
  device = None
  if jax.default_backend() != "cpu":
    left = []
    for dev in jax.local_devices():
      stats = dev.memory_stats() or {}
      if "bytes_limit" in stats:
        left.append(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    if left:
      device = min(left)
  return host, device, where


def _host_available() -> tuple[int, str]:
  """The host's memory left: MemAvailable, capped by a cgroup v2 limit."""
  host, where = None, "host memory available (/proc/meminfo MemAvailable)"
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          host = int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  if host is None:
    try:
      host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
      where = "free physical memory (sysconf)"
    except (ValueError, OSError, AttributeError):
      host, where = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical memory"
  try:
    with open("/sys/fs/cgroup/memory.max") as f:
      limit = f.read().strip()
    with open("/sys/fs/cgroup/memory.current") as f:
      used = int(f.read())
    if limit != "max" and int(limit) - used < host:
      host, where = int(limit) - used, "memory left under this container's limit (cgroup)"
  except (OSError, ValueError):
    pass
  return host, where


def check(
  config: ml_collections.ConfigDict,
  num_members: int = 1,
  num_devices: int | None = None,
  dataset: input_pipeline.Dataset | None = None,
  memory: tuple[int, int | None, str] | None = None,
) -> list[Part]:
  """Refuses a config whose arrays would not fit in memory; returns `estimate`'s parts.

  Args:
    config: a config that `config_checks.validate` accepts.
    num_members: models trained together (seeds, on one device).
    num_devices: the mesh's devices; by default `config.mesh_shape`'s (all
      devices for -1), or one for several members.
    dataset: the loaded data, where it is (see `estimate`); without it, the
      input's shape comes from `input_pipeline.input_spec` (nothing is read
      whole).
    memory: (host bytes, device bytes or None, where): by default `available()`.

  Raises:
    ConfigError: in one line, naming the field of the largest part and the
      estimate against the memory available. The errors of `estimate`; where
      `input_pipeline.input_spec` cannot know the input's shape without the
      data, nothing is checked and [] is returned (loading the data says why).
  """
  if num_devices is None and num_members > 1:
    num_devices = 1
  elif num_devices is None:
    count = jax.device_count()
    num_devices = count if config.mesh_shape == -1 else min(config.mesh_shape, count)
  if dataset is None:
    try:
      input_shape, num_classes = input_pipeline.input_spec(config.data)
    except DataError:  # Loading the data will say why; a finished run needs none.
      return []
  else:
    input_shape, num_classes = dataset.input_shape, dataset.num_classes
  parts = estimate(config, input_shape, num_classes, num_members, num_devices, dataset)
  host, device, where = available() if memory is None else memory
  if device is None:  # the devices' arrays are in the host's memory
    budgets = [(sum(p.total for p in parts), host, where, lambda p: p.total)]
  else:  # each device holds its share
    budgets = [
      (sum(p.device for p in parts) // num_devices, device, DEVICE_MEMORY, lambda p: p.device),
      (sum(p.host for p in parts), host, where, lambda p: p.host),
    ]
  for need, have, where, size in budgets:
    if need > have:
      ranked = sorted(parts, key=size, reverse=True)
      top = next(p for p in ranked if p.fields)
      listed = ", ".join(
        f"{p.name} {format_bytes(size(p))}" for p in ranked if size(p) > need / 100
      )
      settings = ", ".join(f"{field}={_value(config, field)!r}" for field in top.fields)
      raise ConfigError(
        f"{settings}: the run would need about {format_bytes(need)} of memory ({listed}), more "
        f"than the {format_bytes(have)} of {where}; {top.name}: {top.detail}; "
        + (top.remedy or f"make {' or '.join(top.fields)} smaller")
      )
  return parts


def _value(config: ml_collections.ConfigDict, field: str) -> Any:
  node: Any = config
  for part in field.split("."):
    node = node[part] if isinstance(node, Mapping | ml_collections.ConfigDict) else None
  return node


def format_bytes(count: float) -> str:
  """A size in bytes as "712 GB", "3.4 GB", "183 MB" or "12 kB" (powers of 1,000)."""
  for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
    if count >= scale:
      value = count / scale
      return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
  return f"{int(count)} B"
