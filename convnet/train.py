"""Training state, jitted train and eval steps, and the training loop.

`train_and_evaluate(config, workdir)` is what `convnet.main`, the tests and
research scripts call. The workdir gets the resolved config (`config.json`),
one JSON object per logged step or epoch (`metrics.jsonl`), TensorBoard event
files and Orbax checkpoints; running it again on the same workdir resumes from
the last checkpoint, and a finished run reports its result and returns.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state

from convnet import input_pipeline, models, parallel
from convnet.errors import (
  CheckpointError,
  ConfigError,
  DivergedError,
  RunInterrupted,
  WorkdirInUseError,
)

OPTIMIZERS = ("rmsprop", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
# Config fields that may change between a run and its resumption.
RESUMABLE_CHANGES = (
  "num_epochs",
  "max_steps",
  "log_every_steps",
  "checkpoint_every_steps",
  "mesh_shape",
)

TrainState = train_state.TrainState
Batch = Mapping[str, jax.Array]


# ----------------------------------------------------------------------------
# Config checks, optimizer, state


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects settings that cannot work, before any data is read or code compiled.

  The model's shapes are checked later, against the data, by
  `models.create_model`.
  """
  for field in ("batch_size", "eval_batch_size", "steps_per_call"):
    _require(config[field] >= 1, field, config[field], "must be a positive int")
  for field in ("num_epochs", "log_every_steps", "checkpoint_every_steps"):
    _require(config[field] >= 0, field, config[field], "cannot be negative")
  _require(config.microbatch_size >= 0, "microbatch_size", config.microbatch_size, "is 0 or more")
  _require(
    config.mesh_shape == -1 or config.mesh_shape >= 1,
    "mesh_shape",
    config.mesh_shape,
    "is -1 (all devices) or a number of devices",
  )
  for field in ("batch_size", "eval_batch_size"):
    if config.microbatch_size and config[field] > config.microbatch_size:
      _require(
        config[field] % config.microbatch_size == 0,
        field,
        config[field],
        f"must be a multiple of microbatch_size={config.microbatch_size} (or set that to 0)",
      )
  _require(
    config.max_steps >= -1, "max_steps", config.max_steps, "is -1 (no limit) or a step count"
  )
  _require(config.checkpoint_keep >= 1, "checkpoint_keep", config.checkpoint_keep, "must be >= 1")
  _require(
    0.0 <= config.label_smoothing < 1.0, "label_smoothing", config.label_smoothing, "is in [0, 1)"
  )
  _require(config.l1_penalty >= 0, "l1_penalty", config.l1_penalty, "cannot be negative")
  if config.data.features != "pixels":
    _require(
      config.model.name == "dense",
      "model.name",
      config.model.name,
      f"must be 'dense' with data.features={config.data.features!r}, which gives flat vectors",
    )
  opt = config.optimizer
  _require(opt.name in OPTIMIZERS, "optimizer.name", opt.name, f"is one of {', '.join(OPTIMIZERS)}")
  _require(
    opt.schedule in SCHEDULES,
    "optimizer.schedule",
    opt.schedule,
    f"is one of {', '.join(SCHEDULES)}",
  )
  _require(opt.learning_rate > 0, "optimizer.learning_rate", opt.learning_rate, "must be positive")
  _require(
    opt.warmup_epochs >= 0, "optimizer.warmup_epochs", opt.warmup_epochs, "cannot be negative"
  )
  _require(0 <= opt.momentum < 1, "optimizer.momentum", opt.momentum, "is in [0, 1)")
  _require(0 < opt.rmsprop_decay < 1, "optimizer.rmsprop_decay", opt.rmsprop_decay, "is in (0, 1)")
  source = config.data.source
  _require(
    source in input_pipeline.SOURCES,
    "data.source",
    source,
    f"is one of {', '.join(input_pipeline.SOURCES)}",
  )
  _require(
    config.model.name in models.MODELS,
    "model.name",
    config.model.name,
    f"is one of {', '.join(models.MODELS)}",
  )


def _require(ok: bool, field: str, value: Any, rule: str) -> None:
  if not ok:
    raise ConfigError(f"{field}={value!r}: {field.split('.')[-1]} {rule}")


def create_learning_rate(opt_config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """The learning-rate schedule the config names."""
  peak = opt_config.learning_rate
  total_steps = max(total_steps, 1)
  if opt_config.schedule == "constant":
    return optax.constant_schedule(peak)
  if opt_config.schedule == "cosine":
    return optax.cosine_decay_schedule(peak, decay_steps=total_steps)
  warmup = min(int(opt_config.warmup_epochs * steps_per_epoch), total_steps - 1)
  return optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup, 0), total_steps)


def create_optimizer(opt_config, steps_per_epoch: int, total_steps: int):
  """RMSprop (the book's), Adam or SGD with momentum, from optax."""
  learning_rate = create_learning_rate(opt_config, steps_per_epoch, total_steps)
  if opt_config.name == "rmsprop":
    return optax.rmsprop(
      learning_rate, decay=opt_config.rmsprop_decay, momentum=opt_config.momentum
    )
  if opt_config.name == "adam":
    return optax.adam(learning_rate)
  if opt_config.name == "sgd":
    return optax.sgd(learning_rate, momentum=opt_config.momentum or None)
  raise ConfigError(f"optimizer.name={opt_config.name!r} is not one of {', '.join(OPTIMIZERS)}")


@functools.partial(jax.jit, static_argnums=(0, 2))
def init_params(model, rng: jax.Array, input_shape: tuple[int, ...]):
  """The model's parameters, initialised from `rng` (compiled once per model and shape)."""
  return model.init(rng, jnp.zeros((1, *input_shape), jnp.float32))["params"]


def create_train_state(rng: jax.Array, model, input_shape, tx) -> TrainState:
  """A fresh `TrainState`: step 0, initial parameters and optimizer state."""
  params = init_params(model, rng, tuple(input_shape))
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


# ----------------------------------------------------------------------------
# Steps


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against one-hot labels."""
  one_hot = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    one_hot = optax.smooth_labels(one_hot, label_smoothing)
  return optax.softmax_cross_entropy(logits, one_hot)


def _split_batch(batch: Batch, microbatch_size: int, sharding=None) -> Batch:
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


def _constrain(batch: Batch, sharding) -> Batch:
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
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a batch; returns the new state and the batch's metrics.

  The loss is the batch's mean cross-entropy, plus `l1_penalty` times the
  kernels' L1 norm when that is set; the reported loss is the cross-entropy.
  With `microbatch_size` (a divisor of the batch size), the gradient is summed
  over microbatches of that size, one after another: the same step up to float
  rounding, and faster on a CPU, where a small microbatch's activations stay in
  cache. With `batch_sharding` (see `convnet.parallel`), each device computes
  on its slice of the batch (and of every microbatch), and XLA sums the
  gradients across devices.
  """
  batch_size = batch["label"].shape[0]
  batch = _constrain(batch, batch_sharding)

  def loss_fn(params, batch):
    logits = state.apply_fn({"params": params}, batch["image"])
    loss_sum = cross_entropy(logits, batch["label"], label_smoothing).sum()
    correct = jnp.sum(jnp.argmax(logits, -1) == batch["label"])
    return loss_sum / batch_size, correct

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if not microbatch_size or microbatch_size >= batch_size:
    (loss, correct), grads = grad_fn(state.params, batch)
  else:

    def accumulate(totals, microbatch):
      (loss, correct), grads = grad_fn(state.params, microbatch)
      return jax.tree.map(jnp.add, totals, (loss, correct, grads)), None

    zeros = (jnp.zeros(()), jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, state.params))
    (loss, correct, grads), _ = jax.lax.scan(
      accumulate, zeros, _split_batch(batch, microbatch_size, batch_sharding)
    )
  if l1_penalty:
    grads = jax.tree.map(jnp.add, grads, jax.grad(lambda p: l1_penalty * l1_norm(p))(state.params))
  state = state.apply_gradients(grads=grads)
  return state, {"loss": loss, "correct": correct}


def eval_step(
  state: TrainState,
  batch: Batch,
  microbatch_size: int = 0,
  batch_sharding: jax.sharding.NamedSharding | None = None,
) -> dict[str, jax.Array]:
  """Sums of loss and correct predictions over the examples where `mask` is 1.

  With `microbatch_size` (a divisor of the batch size), the batch runs in
  microbatches of that size, one after another; with `batch_sharding`, split
  across devices.
  """
  batch = _constrain(batch, batch_sharding)

  def sums(batch):
    logits = state.apply_fn({"params": state.params}, batch["image"])
    mask = batch["mask"]
    loss = cross_entropy(logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {
      "loss_sum": jnp.sum(loss * mask),
      "correct": jnp.sum(correct * mask),
      "count": jnp.sum(mask),
    }

  if not microbatch_size or microbatch_size >= batch["label"].shape[0]:
    return sums(batch)
  microbatches = _split_batch(batch, microbatch_size, batch_sharding)
  return jax.tree.map(lambda x: x.sum(0), jax.lax.map(sums, microbatches))


def compiled_flops(fn, *args) -> float:
  """FLOPs of `fn(*args)` from XLA's cost analysis of the compiled program.

  XLA counts the body of a loop once, so give it a step without microbatches.
  """
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost  # a list in older jax versions
  return float(cost["flops"])


def train_flops_per_example(
  config: ml_collections.ConfigDict, state: TrainState, input_shape: tuple[int, ...]
) -> float:
  """XLA's FLOP count of one train step at `config.batch_size`, per example."""
  batch = {
    "image": jax.ShapeDtypeStruct((config.batch_size, *input_shape), jnp.float32),
    "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
  }
  step = functools.partial(
    train_step, label_smoothing=config.label_smoothing, l1_penalty=config.l1_penalty
  )
  return compiled_flops(step, state, batch) / config.batch_size


def eval_batches(split: input_pipeline.Split, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """The whole split in batches of one size; the last is padded and masked."""
  for start in range(0, len(split), batch_size):
    images = split.images[start : start + batch_size]
    labels = split.labels[start : start + batch_size]
    pad = batch_size - len(labels)
    mask = np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])
    if pad:
      images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
      labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    yield {"image": images, "label": labels, "mask": mask}


def evaluate(
  eval_fn, state: TrainState, split: input_pipeline.Split, batch_size: int, sharding=None
):
  """Mean loss and accuracy over every example of a split, each counted once.

  With `sharding`, each batch is put on the devices split by it.
  """
  batches = eval_batches(split, batch_size)
  if sharding is not None:
    batches = (parallel.put(batch, sharding) for batch in batches)
  sums = [eval_fn(state, batch) for batch in batches]
  totals = {k: float(np.sum([s[k] for s in jax.device_get(sums)])) for k in sums[0]}
  return {
    "loss": totals["loss_sum"] / totals["count"],
    "accuracy": totals["correct"] / totals["count"],
  }


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of an epoch's training examples, fixed by (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)


def train_steps(
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  order: jax.Array,
  start: jax.Array,
  count: jax.Array,
  *,
  steps_per_call: int,
  batch_size: int,
  label_smoothing: float = 0.0,
  microbatch_size: int = 0,
  l1_penalty: float = 0.0,
  batch_sharding: jax.sharding.NamedSharding | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """`count` (at most `steps_per_call`) train steps in one call, on device-resident data.

  Step i trains on the examples `order[(start + i) * batch_size:][:batch_size]`
  of `images` and `labels`, which stay on the device for the whole run. On a
  mesh, they and the state are replicated, and with `batch_sharding` each
  device gathers and computes on its own slice of every batch. One
  compiled program serves every `count`: steps past it leave the state as it
  is and report zeros. Returns the new state and per-step metrics of shape
  (steps_per_call,).
  """

  def one_step(state, i):
    def run(state):
      idx = jax.lax.dynamic_slice_in_dim(order, (start + i) * batch_size, batch_size)
      batch = {"image": jnp.take(images, idx, axis=0), "label": jnp.take(labels, idx, axis=0)}
      return train_step(state, batch, label_smoothing, microbatch_size, l1_penalty, batch_sharding)

    def skip(state):
      return state, {"loss": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.int32)}

    return jax.lax.cond(i < count, run, skip, state)

  return jax.lax.scan(one_step, state, jnp.arange(steps_per_call))


# ----------------------------------------------------------------------------
# Workdir: config, metrics, checkpoints


def _atomic_write(path: str, text: str) -> None:
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _check_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a workdir whose run was made with another config."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      saved = _flatten(json.load(f))
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(
      f"{path} cannot be read ({e}); move it away or use a new --workdir to start fresh"
    ) from None
  now = _flatten(json.loads(config.to_json_best_effort()))
  changed = [
    f"{k}: {saved.get(k, '<absent>')!r} (saved) vs {now.get(k, '<absent>')!r} (now)"
    for k in sorted(set(saved) | set(now))
    if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES
  ]
  if changed:
    raise CheckpointError(
      f"{workdir} holds checkpoints of a run with another config:\n  "
      + "\n  ".join(changed)
      + f"\nUse a new --workdir, or delete {workdir} to start fresh."
    )


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      flat.update(_flatten(v, f"{prefix}{k}."))
    else:
      flat[f"{prefix}{k}"] = json.loads(json.dumps(v))  # tuples and lists compare equal
  return flat


def _read_metrics(path: str, last_step: int, rewrite: bool = True) -> list[dict[str, Any]]:
  """The records of metrics.jsonl up to `last_step`, rewriting the file to match.

  Records written after the restored checkpoint, and a torn last line left by
  a crash, are dropped, so a resumed run appends no step twice. Without
  `rewrite` (the processes other than 0 of a multi-host run), the file is only read.
  """
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().splitlines(keepends=True)
  records = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      break  # A torn last line.
    if not line.endswith("\n") or record.get("step", math.inf) > last_step:
      break
    records.append(record)
  if len(records) != len(lines) and rewrite:
    logging.info(
      "Dropping %d record(s) of %s past step %d", len(lines) - len(records), path, last_step
    )
    _atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))
  return records


class _MetricsWriter:
  """Appends records to metrics.jsonl (one write a line) and to TensorBoard.

  A writer that is not `enabled` (in processes other than 0) writes nothing.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    from tensorboardX import SummaryWriter

    self._path = os.path.join(workdir, "metrics.jsonl")
    self._tensorboard = SummaryWriter(workdir) if enabled else None

  def write(self, record: dict[str, Any]) -> None:
    if self._tensorboard is None:
      return
    with open(self._path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key not in ("step", "kind") and isinstance(value, float | int):
        split, _, name = key.partition("_")
        tag = f"{split}/{name}" if split in ("train", "validation", "test") else key
        self._tensorboard.add_scalar(tag, value, record["step"])
    self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def _checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    os.path.join(workdir, "checkpoints"),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False
    ),
  )


def _restore(manager: ocp.CheckpointManager, state: TrainState, loop: dict[str, Any]):
  step = manager.latest_step()
  if step is None:
    return state, loop
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), loop=ocp.args.JsonRestore()
      ),
    )
  except Exception as e:  # Orbax raises many kinds for a bad or foreign checkpoint.
    directory = os.path.join(os.fspath(manager.directory), str(step))
    raise CheckpointError(
      f"checkpoint {directory} cannot be restored into this model "
      f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}). "
      f"Use a new --workdir, or delete {manager.directory} to start fresh."
    ) from None
  logging.info("Resumed from checkpoint at step %d", step)
  return restored.state, dict(restored.loop)


def _save(manager: ocp.CheckpointManager, state: TrainState, loop: dict[str, Any]) -> None:
  """Saves the state, unless this step is saved already; non-finite parameters never are.

  `state` may be stacked along a leading axis (seeds trained together), all at one step.
  """
  step = int(np.ravel(state.step)[0])
  if manager.latest_step() == step:
    return
  if not all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state.params)):
    raise DivergedError(
      f"the parameters stopped being finite by step {step}; nothing was saved, and the "
      f"checkpoint of step {manager.latest_step()} is kept. Try a lower optimizer.learning_rate."
    )
  manager.save(
    step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop))
  )


# ----------------------------------------------------------------------------
# The loop


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """Holds `workdir/.lock` while a run writes there; another run on it stops at once.

  The lock is an `fcntl.flock`, which the system drops when its process ends,
  however it ends: a lock left by a dead process never blocks.
  """
  path = os.path.join(workdir, ".lock")
  with open(path, "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      raise WorkdirInUseError(
        f"{workdir} is in use by {holder}; wait for that run to end, or use another --workdir"
      ) from None
    f.seek(0)
    f.truncate()
    f.write(
      f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def stop_signals() -> Iterator[dict[str, int]]:
  """Turns SIGTERM and SIGINT into a request to stop, which the loop reads between calls.

  Yields a dict whose "signal" is 0, or the number of the first signal
  received. Only the main thread can set handlers; elsewhere signals keep
  their handlers and the dict stays 0.
  """
  stop = {"signal": 0}
  if threading.current_thread() is not threading.main_thread():
    yield stop
    return

  def request(signum, frame):
    del frame
    if stop["signal"]:  # A second signal: stop now, without saving.
      raise KeyboardInterrupt
    logging.warning("%s received: saving a checkpoint, then stopping", signal.Signals(signum).name)
    stop["signal"] = signum

  previous = {s: signal.signal(s, request) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield stop
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def _diverged_message(config, workdir: str, step: int, loss: float) -> str:
  return (
    f"the training loss became {loss} at step {step + 1}. The last good checkpoint in "
    f"{workdir}/checkpoints is kept. Try a lower optimizer.learning_rate (now "
    f"{config.optimizer.learning_rate}), a warmup (optimizer.schedule='warmup_cosine'), or "
    "another seed."
  )


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
  """The run's result from its epoch records: the last, and the best by validation."""
  epochs = [r for r in records if r.get("kind") == "epoch"]
  if not epochs:
    return {}
  final = dict(epochs[-1])
  best = epochs[-1]
  if "validation_accuracy" in final:
    best = max(epochs, key=lambda r: r["validation_accuracy"])  # max keeps the first of ties
    final["best_validation_accuracy"] = best["validation_accuracy"]
  final["best_epoch"] = best["epoch"]
  final["test_accuracy_at_best_validation"] = best["test_accuracy"]
  final.pop("kind")
  return final


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates the configured model, resuming from `workdir`.

  Holds `workdir`'s lock while it runs. SIGTERM or SIGINT make it save a
  checkpoint and raise `RunInterrupted`; a loss or parameters that stop being
  finite raise `DivergedError` before anything is saved.

  Returns:
    The last epoch's metrics (`train_*`, `validation_*`, `test_*`), plus
    `best_validation_accuracy`, `best_epoch`, `test_accuracy_at_best_validation`,
    `num_params`, `train_flops_per_example` (XLA's count for the compiled step),
    `wall_time_s` and `train_examples_per_sec`.
  """
  validate_config(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  # In a multi-host run, process 0 holds the lock for them all.
  lock = workdir_lock(workdir) if parallel.is_main_process() else contextlib.nullcontext()
  with lock, stop_signals() as stop:
    return _train_and_evaluate(config, workdir, stop)


def step_counts(config: ml_collections.ConfigDict, num_train: int) -> tuple[int, int]:
  """Steps per epoch (whole batches only) and the run's total, `max_steps` included."""
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ConfigError(
      f"batch_size={config.batch_size} is larger than the {num_train} training examples"
    )
  total_steps = steps_per_epoch * config.num_epochs
  if config.max_steps >= 0:
    total_steps = min(total_steps, config.max_steps)
  return steps_per_epoch, total_steps


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, stop: dict[str, int]):
  mesh = parallel.create_mesh(config.mesh_shape)
  parallel.check_batch_sizes(config, mesh.size)
  dataset = input_pipeline.load(config.data, config.seed)
  model = models.create_model(config.model, dataset.input_shape, dataset.num_classes)
  steps_per_epoch, total_steps = step_counts(config, len(dataset.train))
  tx = create_optimizer(config.optimizer, steps_per_epoch, total_steps)
  state = create_train_state(jax.random.key(config.seed), model, dataset.input_shape, tx)
  num_params = models.count_params(state.params)
  flops = train_flops_per_example(config, state, dataset.input_shape)
  logging.info(
    "%s on %s: %s parameters, %.2f MFLOP per training example; "
    "%d train, %d validation, %d test examples of shape %s; data parallel over %d device(s) "
    "in %d process(es)",
    config.model.name,
    dataset.name,
    f"{num_params:,}",
    flops / 1e6,
    len(dataset.train),
    len(dataset.validation),
    len(dataset.test),
    dataset.input_shape,
    mesh.size,
    jax.process_count(),
  )
  batch_sharding, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  state = parallel.put(state, replicated)

  manager = _checkpoint_manager(workdir, config.checkpoint_keep)
  loop = {"epoch_loss_sum": 0.0, "epoch_correct": 0.0, "epoch_steps": 0, "wall_time_s": 0.0}
  if manager.latest_step() is not None:
    _check_resumable(workdir, config)
    state, loop = _restore(manager, state, loop)
  if parallel.is_main_process():
    config_json = config.to_json_best_effort(indent=2) + "\n"
    _atomic_write(os.path.join(workdir, "config.json"), config_json)
  records = _read_metrics(
    os.path.join(workdir, "metrics.jsonl"), int(state.step), rewrite=parallel.is_main_process()
  )
  step = int(state.step)
  if step >= total_steps:
    result = summarize(records)
    logging.info("Run already finished at step %d: %s", step, _format(result))
    return result | {"num_params": num_params, "train_flops_per_example": flops}

  writer = _MetricsWriter(workdir, enabled=parallel.is_main_process())
  steps_fn = jax.jit(
    functools.partial(
      train_steps,
      steps_per_call=config.steps_per_call,
      batch_size=config.batch_size,
      label_smoothing=config.label_smoothing,
      microbatch_size=config.microbatch_size,
      l1_penalty=config.l1_penalty,
      batch_sharding=batch_sharding,
    ),
    out_shardings=replicated,
    donate_argnums=0,
  )
  eval_fn = jax.jit(
    functools.partial(
      eval_step, microbatch_size=config.microbatch_size, batch_sharding=batch_sharding
    ),
    out_shardings=replicated,
  )
  images, labels = parallel.put((dataset.train.images, dataset.train.labels), replicated)
  start_time = time.perf_counter() - loop["wall_time_s"]
  pending = []  # (per-step metrics still on the device, number of valid steps)
  window_start, window_steps = time.perf_counter(), 0

  def flush_pending() -> list[float]:
    """Adds the pending steps' metrics to the epoch's sums; returns their losses."""
    losses = []
    first_step = int(state.step) - sum(count for _, count in pending)
    for metrics, count in jax.device_get(pending):
      for loss, correct in zip(metrics["loss"][:count], metrics["correct"][:count], strict=True):
        if not math.isfinite(loss):
          raise DivergedError(_diverged_message(config, workdir, first_step + len(losses), loss))
        losses.append(float(loss))
        loop["epoch_loss_sum"] += losses[-1]
        loop["epoch_correct"] += float(correct)
        loop["epoch_steps"] += 1
    pending.clear()
    return losses

  def next_stop(step: int, epoch_end: int) -> int:
    """The next step that needs the host: a log line, a checkpoint or the epoch's end."""
    stops = [epoch_end, step + config.steps_per_call]
    for every in (config.log_every_steps, config.checkpoint_every_steps):
      if every:
        stops.append((step // every + 1) * every)
    return min(stops)

  def check_stop() -> None:
    """Saves a checkpoint and stops, after SIGTERM or SIGINT."""
    if stop["signal"]:
      flush_pending()
      _save(manager, state, loop | {"wall_time_s": time.perf_counter() - start_time})
      manager.wait_until_finished()
      name = signal.Signals(stop["signal"]).name
      raise RunInterrupted(
        f"{name} at step {int(state.step)}: checkpoint saved in {workdir}; "
        "run the same command again to resume",
        stop["signal"],
      )

  while step < total_steps:
    epoch, index = divmod(step, steps_per_epoch)
    epoch_start = time.perf_counter()
    epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
    last_index = epoch_end - epoch * steps_per_epoch
    order = parallel.put(epoch_order(len(dataset.train), config.seed, epoch), replicated)
    while step < epoch_end:
      check_stop()
      count = next_stop(step, epoch_end) - step
      state, metrics = steps_fn(state, images, labels, order, step - epoch * steps_per_epoch, count)
      pending.append((metrics, count))
      step += count
      window_steps += count
      if config.log_every_steps and step % config.log_every_steps == 0:
        losses = flush_pending()
        seconds = time.perf_counter() - window_start
        rate = window_steps * config.batch_size / seconds
        record = {
          "kind": "train",
          "step": step,
          "epoch": step / steps_per_epoch,
          "train_loss": float(np.mean(losses)) if losses else float("nan"),
          "train_examples_per_sec": rate,
        }
        writer.write(record)
        _log_progress(step, epoch, steps_per_epoch, total_steps, record, seconds / window_steps)
        window_start, window_steps = time.perf_counter(), 0
      if step == epoch_end:
        break
      if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
        flush_pending()
        _save(manager, state, loop | {"wall_time_s": time.perf_counter() - start_time})
    flush_pending()
    epoch_train_time = time.perf_counter() - epoch_start
    steps_done = last_index - index
    record = {
      "kind": "epoch",
      "step": step,
      "epoch": epoch + 1 if step % steps_per_epoch == 0 else step / steps_per_epoch,
      "train_loss": loop["epoch_loss_sum"] / loop["epoch_steps"],
      "train_accuracy": loop["epoch_correct"] / (loop["epoch_steps"] * config.batch_size),
      "train_examples_per_sec": steps_done * config.batch_size / epoch_train_time,
    }
    for name in ("validation", "test"):
      split = getattr(dataset, name)
      if len(split):
        metrics = evaluate(eval_fn, state, split, config.eval_batch_size, batch_sharding)
        for key, value in metrics.items():
          record[f"{name}_{key}"] = value
    record["wall_time_s"] = time.perf_counter() - start_time
    writer.write(record)
    records.append(record)
    logging.info("epoch %s: %s", _format_epoch(record["epoch"]), _format(record))
    loop = {"epoch_loss_sum": 0.0, "epoch_correct": 0.0, "epoch_steps": 0}
    loop["wall_time_s"] = record["wall_time_s"]
    _save(manager, state, loop)
    window_start, window_steps = time.perf_counter(), 0

  manager.wait_until_finished()
  manager.close()
  writer.close()
  result = summarize(records)
  logging.info("Finished at step %d: %s", step, _format(result))
  return result | {"num_params": num_params, "train_flops_per_example": flops}


def _format_epoch(epoch: float) -> str:
  return str(epoch) if isinstance(epoch, int) else f"{epoch:.2f}"


def _format(record: Mapping[str, Any]) -> str:
  parts = []
  for key, value in record.items():
    if key in ("kind", "epoch"):
      continue
    if isinstance(value, float):
      value = f"{value:,.0f}" if "per_sec" in key else f"{value:.4f}"
    parts.append(f"{key}={value}")
  return " ".join(parts)


def _log_progress(step, epoch, steps_per_epoch, total_steps, record, seconds_per_step):
  in_epoch = step - epoch * steps_per_epoch
  epoch_eta = (steps_per_epoch - in_epoch) * seconds_per_step
  run_eta = (total_steps - step) * seconds_per_step
  logging.info(
    "epoch %d step %d/%d (%.0f%%): train_loss=%.4f, %s examples/s, ETA epoch %s, run %s",
    epoch + 1,
    in_epoch,
    steps_per_epoch,
    100 * in_epoch / steps_per_epoch,
    record["train_loss"],
    f"{record['train_examples_per_sec']:,.0f}",
    _duration(epoch_eta),
    _duration(run_eta),
  )


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
