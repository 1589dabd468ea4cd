"""The pure steps: one optimizer step, one evaluation step, and many steps in one call.

Nothing here does I/O: `train_step(state, batch)` and
`eval_step(state, batch)` return their metrics, and the loop around them
(`convnet.train`, `convnet.seeds`) logs, evaluates and saves. Every function
runs unchanged on CPU, GPU and TPU, on one device or, with a batch sharding,
on many (see `convnet.parallel`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from convnet import augment

TrainState = train_state.TrainState
Batch = Mapping[str, jax.Array]


@functools.partial(jax.jit, static_argnums=(0, 2))
def init_params(model, rng: jax.Array, input_shape: tuple[int, ...]):
  """The model's parameters, initialised from `rng` (compiled once per model and shape).

  The forward pass that `model.init` traces is dead code, which JAX drops as
  it lowers the program: what compiles draws the random initial values only.
  """
  return model.init(rng, jnp.zeros((1, *input_shape), jnp.float32))["params"]


# The same program, compiled with LLVM's optimisation level 1 (of 0 to 3). It runs once, and
# is mostly the integer hashing of the random bits: it compiles in half the time or less, and
# gives the same parameters, bit for bit (tests/test_train.py checks it where it runs).
_init_params_o1 = jax.jit(
  init_params.__wrapped__,
  static_argnums=(0, 2),
  compiler_options={"xla_backend_optimization_level": 1},
)


def initial_params(model, rng: jax.Array, input_shape: tuple[int, ...]):
  """`init_params(model, rng, input_shape)`, bit for bit, compiled sooner on a CPU.

  On other backends, and inside a trace (`jax.eval_shape`, `jax.jit`), it is
  `init_params` itself.
  """
  fast = jax.default_backend() == "cpu" and not isinstance(rng, jax.core.Tracer)
  return (_init_params_o1 if fast else init_params)(model, rng, tuple(input_shape))


def create_train_state(rng: jax.Array, model, input_shape, tx) -> TrainState:
  """A fresh `TrainState`: step 0, initial parameters (`initial_params`) and optimizer state.

  As `TrainState.create` makes it, with the optimizer's state made in one jitted call
  rather than op by op (one small program to compile, not one per parameter's shape).
  """
  params = initial_params(model, rng, input_shape)
  opt_state = jax.jit(tx.init)(params)
  return TrainState(step=0, apply_fn=model.apply, params=params, tx=tx, opt_state=opt_state)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against one-hot labels."""
  one_hot = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    one_hot = optax.smooth_labels(one_hot, label_smoothing)
  return optax.softmax_cross_entropy(logits, one_hot)


def example_metrics(logits_BK: jax.Array, labels_B: jax.Array) -> dict[str, jax.Array]:
  """Every metric of a batch, per example: each value has shape (B,).

  The steps sum each one over the batch (the eval step over its real examples
  only) and return the sums with the number of examples, "count"; the loop
  divides, so each metric reaches metrics.jsonl, the log, TensorBoard and the
  result as the mean over an epoch or a split (`train_<name>`,
  `validation_<name>`, `test_<name>`). A new metric is one more entry here
  (docs/adding_a_metric.md). "loss" is the cross-entropy; the loss the
  optimizer minimises (`train_step`) may add label smoothing and L1.
  """
  return {
    "loss": cross_entropy(logits_BK, labels_B),
    "accuracy": (jnp.argmax(logits_BK, -1) == labels_B).astype(jnp.float32),
  }


def summed_metrics(logits_BK: jax.Array, labels_B: jax.Array, mask_B=None) -> dict[str, jax.Array]:
  """`example_metrics` summed over the batch (where `mask_B` is 1), and "count", the examples."""
  mask_B = jnp.ones(labels_B.shape, jnp.float32) if mask_B is None else mask_B
  sums = {k: jnp.sum(v * mask_B) for k, v in example_metrics(logits_BK, labels_B).items()}
  return sums | {"count": jnp.sum(mask_B)}


def means(sums: Mapping[str, Any]) -> dict[str, Any]:
  """Each summed metric divided by "count": the means over the examples summed."""
  return {k: v / sums["count"] for k, v in sums.items() if k != "count"}


def split_batch(batch: Batch, microbatch_size: int, sharding=None) -> Batch:
  """(batch, ...) arrays as (batch / microbatch_size, microbatch_size, ...).

  With a batch `sharding` over n devices, each holding a contiguous slice of
  the batch, microbatch k is every device's k-th contiguous chunk of
  microbatch_size / n examples, so each microbatch is split across the devices
  as the batch is, and no example moves. On one device, microbatch k is
  examples k * microbatch_size to (k + 1) * microbatch_size - 1.
  """
  devices = 1 if sharding is None else sharding.mesh.size

  def split(x):
    x = x.reshape(devices, -1, microbatch_size // devices, *x.shape[1:]).swapaxes(0, 1)
    x = x.reshape(x.shape[0], microbatch_size, *x.shape[3:])
    if sharding is not None:
      spec = jax.sharding.PartitionSpec(None, *sharding.spec)
      x = jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(sharding.mesh, spec))
    return x

  return jax.tree.map(split, batch)


def constrain(batch: Batch, sharding) -> Batch:
  """The batch split across devices as `sharding` says; as it is, without one."""
  return batch if sharding is None else jax.lax.with_sharding_constraint(batch, sharding)


def l1_norm(params) -> jax.Array:
  """Sum of the absolute values of every kernel (weights, not biases)."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return sum(jnp.abs(x).sum() for path, x in leaves if path[-1].key == "kernel")


def train_step(
  state: TrainState,
  batch: Batch,
  label_smoothing: float = 0.0,
  microbatch_size: int = 0,
  l1_penalty: float = 0.0,
  batch_sharding: jax.sharding.NamedSharding | None = None,
  masking: augment.Masking | None = None,
  key: jax.Array | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a batch; returns the new state and the batch's summed metrics.

  The loss minimised is the batch's mean cross-entropy (with `label_smoothing`),
  plus `l1_penalty` times the kernels' L1 norm when that is set. The metrics
  are `summed_metrics` of the batch before the step: every entry of
  `example_metrics` summed over the batch, and "count", its size; with
  `label_smoothing`, also "smoothed_loss", the smoothed cross-entropy's sum,
  so that "loss" is the plain cross-entropy in training as in evaluation.
  With `microbatch_size` (a divisor of the batch size), the gradient is summed
  over microbatches of that size, one after another: the same step up to float
  rounding, and faster on a CPU, where a small microbatch's activations stay in
  cache. With `batch_sharding` (see `convnet.parallel`), each device computes
  on its slice of the batch (and of every microbatch), and XLA sums the
  gradients across devices. With `masking`, the batch's examples are masked
  first (`convnet.augment`), with `key` (`augment.key`) folded with the step.
  """
  batch_size = batch["label"].shape[0]
  batch = constrain(batch, batch_sharding)
  if masking is not None:
    images = augment.mask_step(key, state.step, batch["image"], masking)
    batch = constrain({**batch, "image": images}, batch_sharding)

  def loss_fn(params, batch):
    logits = state.apply_fn({"params": params}, batch["image"])
    smoothed = cross_entropy(logits, batch["label"], label_smoothing).sum()
    metrics = summed_metrics(logits, batch["label"])
    if label_smoothing:  # The loss minimised, under its own name: "loss" stays the plain one.
      metrics["smoothed_loss"] = smoothed
    return smoothed / batch_size, metrics

  grad_fn = jax.grad(loss_fn, has_aux=True)
  if not microbatch_size or microbatch_size >= batch_size:
    grads, metrics = grad_fn(state.params, batch)
  else:

    def accumulate(totals, microbatch):
      return jax.tree.map(jnp.add, totals, grad_fn(state.params, microbatch)), None

    microbatches = split_batch(batch, microbatch_size, batch_sharding)
    first = jax.tree.map(lambda x: x[0], microbatches)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state.params, first))
    (grads, metrics), _ = jax.lax.scan(accumulate, zeros, microbatches)
  if l1_penalty:
    grads = jax.tree.map(jnp.add, grads, jax.grad(lambda p: l1_penalty * l1_norm(p))(state.params))
  state = state.apply_gradients(grads=grads)
  return state, metrics


def eval_step(
  state: TrainState,
  batch: Batch,
  microbatch_size: int = 0,
  batch_sharding: jax.sharding.NamedSharding | None = None,
  per_example: bool = False,
):
  """`summed_metrics` of a batch: each metric summed over the examples where "mask" is 1.

  With `microbatch_size` (a divisor of the batch size), the batch runs in
  microbatches of that size, one after another; with `batch_sharding`, split
  across devices. With `per_example`, returns (sums, `example_predictions`):
  the same sums, and each example's prediction in the batch's order (padding
  included), from the same logits.
  """
  batch = constrain(batch, batch_sharding)

  def sums(batch):
    logits = state.apply_fn({"params": state.params}, batch["image"])
    metrics = summed_metrics(logits, batch["label"], batch["mask"])
    return (metrics, example_predictions(logits, batch["label"])) if per_example else metrics

  if not microbatch_size or microbatch_size >= batch["label"].shape[0]:
    return sums(batch)
  microbatches = split_batch(batch, microbatch_size, batch_sharding)
  outputs = jax.lax.map(sums, microbatches)
  metrics = outputs[0] if per_example else outputs
  metrics = jax.tree.map(lambda x: x.sum(0), metrics)
  if not per_example:
    return metrics
  return metrics, jax.tree.map(lambda x: join_microbatches(x, batch_sharding), outputs[1])


def example_predictions(logits_BK: jax.Array, labels_B: jax.Array) -> dict[str, jax.Array]:
  """Each example's predicted class, int32 (B,), and the probability of its label, float32 (B,).

  "predicted" is the argmax of the logits (the class that "accuracy" counts);
  "true_probability" is the softmax probability of the label's class.
  """
  log_probabilities = jax.nn.log_softmax(logits_BK.astype(jnp.float32))
  true_log_probability = jnp.take_along_axis(log_probabilities, labels_B[:, None], axis=-1)
  return {
    "predicted": jnp.argmax(logits_BK, -1).astype(jnp.int32),
    "true_probability": jnp.exp(true_log_probability[:, 0]),
  }


def join_microbatches(x: jax.Array, sharding=None) -> jax.Array:
  """The inverse of `split_batch` for one array: (batch / m, m, ...) back to (batch, ...)."""
  devices = 1 if sharding is None else sharding.mesh.size
  num_microbatches, size = x.shape[:2]
  x = x.reshape(num_microbatches, devices, size // devices, *x.shape[2:]).swapaxes(0, 1)
  return x.reshape(num_microbatches * size, *x.shape[3:])


def compiled_flops(fn, *args) -> float:
  """FLOPs of `fn(*args)` from XLA's cost analysis of the compiled (optimised) program.

  XLA counts the body of a loop once, so give it a step without microbatches.
  Compiling costs as much as compiling the step itself (seconds on a CPU).
  """
  return _flops(jax.jit(fn).lower(*args).compile().cost_analysis())


def lowered_flops(fn, *args) -> float:
  """FLOPs of `fn(*args)` as written: XLA's cost analysis of the lowered program, uncompiled.

  The count of the model's arithmetic, independent of the fusions a backend's
  compiler makes (which recompute some elementwise work); it takes
  milliseconds. XLA counts the body of a loop once.
  """
  return _flops(jax.jit(fn).lower(*args).cost_analysis())


def _flops(cost) -> float:
  cost = cost[0] if isinstance(cost, list) else cost  # a list in older jax versions
  return float(cost["flops"])


def train_flops_per_example(
  config: ml_collections.ConfigDict, state: TrainState, input_shape: tuple[int, ...]
) -> float:
  """XLA's FLOP count of one train step as written (`lowered_flops`), per example.

  The step is the plain one, without microbatches (whose loop XLA would count
  once), at `config.batch_size`; `args` are shapes only, so nothing runs.
  """
  batch = {
    "image": jax.ShapeDtypeStruct((config.batch_size, *input_shape), jnp.float32),
    "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
  }
  step = functools.partial(
    train_step, label_smoothing=config.label_smoothing, l1_penalty=config.l1_penalty
  )
  return lowered_flops(step, state, batch) / config.batch_size


def train_steps(
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  order: jax.Array,
  start: jax.Array,
  count: jax.Array,
  key: jax.Array | None = None,
  live: jax.Array | None = None,
  *,
  steps_per_call: int,
  batch_size: int,
  **step_options,
):
  """`count` (at most `steps_per_call`) train steps in one call, on device-resident data.

  Step i trains on the examples `order[(start + i) * batch_size:][:batch_size]`
  of `images` and `labels`, which stay on the device for the whole run. On a
  mesh, they and the state are replicated, and with `batch_sharding` each
  device gathers and computes on its own slice of every batch. One
  compiled program serves every `count`: steps past it leave the state as it
  is and report zeros. Returns the new state and each step's summed metrics
  (see `train_step`), each of shape (steps_per_call,). `key` is the run's
  masking key (`augment.key`), used with `masking`. `step_options` are
  `train_step`'s other keyword arguments (`label_smoothing`,
  `microbatch_size`, `l1_penalty`, `batch_sharding`, `masking`).

  With `live`, a boolean scalar (whether this model still trains; one of a
  vmapped group's seeds, say), the steps are guarded: a step whose loss, or
  whose updated parameters, are not finite keeps the parameters and optimizer
  state as they were before it and turns `live` False. From then on the
  model's parameters stay as they are (the step count goes on) and each step
  reports a NaN "loss", so the loop can name the first step that did not
  train. Returns ((state, live), metrics) then.
  """

  def one_step(carry, i):
    def run(carry):
      state, live = carry
      idx = jax.lax.dynamic_slice_in_dim(order, (start + i) * batch_size, batch_size)
      batch = {"image": jnp.take(images, idx, axis=0), "label": jnp.take(labels, idx, axis=0)}
      new, metrics = train_step(state, batch, key=key, **step_options)
      if live is None:
        return (new, live), metrics
      finite = jnp.isfinite(metrics["loss"]) & all_finite(new.params)
      trains = live & finite
      params, opt_state = jax.tree.map(
        lambda a, b: jnp.where(trains, a, b),
        (new.params, new.opt_state),
        (state.params, state.opt_state),
      )
      metrics["loss"] = jnp.where(live, metrics["loss"], jnp.nan)
      return (new.replace(params=params, opt_state=opt_state), trains), metrics

    def skip(carry):
      return carry, jax.tree.map(jnp.zeros_like, jax.eval_shape(run, carry)[1])

    return jax.lax.cond(i < count, run, skip, carry)

  (state, live), metrics = jax.lax.scan(one_step, (state, live), jnp.arange(steps_per_call))
  return (state, metrics) if live is None else ((state, live), metrics)


def all_finite(tree) -> jax.Array:
  """Whether every element of every array in `tree` is finite: a boolean scalar."""
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))
