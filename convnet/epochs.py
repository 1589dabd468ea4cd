"""What the training loop does around the steps, for one run or seeds trained together.

`convnet.train` runs one model; `convnet.seeds` runs one copy per seed, stacked
along a leading axis and vmapped. Both count steps, order each epoch's
examples, evaluate, write the epoch's record, catch divergence and say how a
stop ended with the pieces here (`convnet.preemption` turns signals into stop
requests), so that a seed of a group computes what a single run of that seed
computes.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from convnet import display, input_pipeline, parallel, steps
from convnet.errors import ConfigError, RunInterrupted

PROGRESS_EVERY_S = 10.0  # the longest a long evaluation goes without a log line
# The train state's step counter and the positions in an epoch's order are int32 on the device.
MAX_STEPS = 2**31 - 1


def step_counts(config: ml_collections.ConfigDict, num_train: int) -> tuple[int, int]:
  """Steps per epoch and the run's total, `max_steps` included.

  An epoch is one pass over the training split in whole batches, or
  `config.steps_per_epoch` steps where that is set (> 0): a fixed budget of
  steps whatever the split's size, as a learning curve over `data.num_train`
  needs, with examples drawn in passes (see `epoch_order`).

  Raises:
    ConfigError: `batch_size` is larger than the training split, or the
      schedule's `num_epochs` epochs reach `MAX_STEPS` steps.
  """
  if config.batch_size > num_train:
    raise ConfigError(
      f"batch_size={config.batch_size} is larger than the {num_train} training examples"
    )
  steps_per_epoch = config.get("steps_per_epoch", 0) or num_train // config.batch_size
  if steps_per_epoch * config.num_epochs > MAX_STEPS:
    raise ConfigError(
      f"num_epochs={config.num_epochs}: {config.num_epochs} epochs of {steps_per_epoch} steps "
      f"pass {MAX_STEPS:,} steps, the most the int32 step counter holds; use fewer epochs "
      "(max_steps stops a run sooner, within the same schedule)"
    )
  total = total_steps(config, steps_per_epoch)
  check_order_length(config, order_length(steps_per_epoch, total, config.batch_size))
  return steps_per_epoch, total


def check_order_length(config: ml_collections.ConfigDict, length: int) -> None:
  """Refuses an order (`order_length`) longer than int32 positions can index.

  Raises:
    ConfigError: naming `steps_per_epoch` and `batch_size`.
  """
  if length > MAX_STEPS:
    raise ConfigError(
      f"steps_per_epoch={config.steps_per_epoch}: an epoch's order would hold {length:,} "
      f"examples (batches of batch_size={config.batch_size}), more than the {MAX_STEPS:,} "
      "positions int32 indexes; use fewer steps_per_epoch, a smaller batch_size, or max_steps"
    )


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """`num_epochs` epochs of `steps_per_epoch` steps, or `max_steps` where that is fewer."""
  steps = steps_per_epoch * config.num_epochs
  return min(steps, config.max_steps) if config.max_steps >= 0 else steps


def order_length(steps_per_epoch: int, total_steps: int, batch_size: int) -> int:
  """How many indices of each epoch's order a run needs: those of its longest epoch.

  An epoch's steps, or the run's where `max_steps` ends it sooner: one length
  for every epoch, so that the steps compile once. A run of 5 steps in an
  epoch of 10,000,000 orders 5 batches, not the epoch.
  """
  return min(steps_per_epoch, total_steps) * batch_size


def epoch_order(num_examples: int, seed: int, epoch: int, length: int = 0) -> np.ndarray:
  """The order of an epoch's training examples, fixed by (seed, epoch): int32, (length,).

  The first pass is a permutation of the `num_examples` examples fixed by
  (seed, epoch); pass k > 0 is fixed by (seed, epoch, k). Passes follow one
  another, and the order is their first `length` indices (by default one pass):
  only what is asked for is kept, and a shorter order is the start of a longer
  one, bit for bit, so a run stopped early and resumed trains on what a run
  straight through does. Each example comes once a pass.
  """
  length = length or num_examples
  order = np.empty(length, np.int32)
  for k, start in enumerate(range(0, length, num_examples)):
    key = [seed, epoch] if k == 0 else [seed, epoch, k]
    count = min(num_examples, length - start)
    order[start : start + count] = np.random.default_rng(key).permutation(num_examples)[:count]
  return order


def eval_batch_size(longest: int, batch_size: int, multiple_of: int = 1) -> int:
  """The batch size that evaluates splits of at most `longest` examples.

  `batch_size`, cut to `longest` rounded up to a multiple of `multiple_of`
  (the microbatch size, the device count) where it is larger. A run passes
  its longest evaluated split, so that validation and test batches have one
  shape and share one compiled program.
  """
  return min(batch_size, -(-longest // multiple_of) * multiple_of)


def eval_batches(
  split: input_pipeline.Split, batch_size: int, multiple_of: int = 1, longest: int = 0
) -> Iterator[dict[str, np.ndarray]]:
  """The whole split in batches of one size; the last is padded and masked.

  Each batch has "image" (batch_size, *input_shape), "label" (batch_size,) and
  "mask" (batch_size,) float32: 1 for a real example, 0 for padding. The size
  is `eval_batch_size(longest or len(split), batch_size, multiple_of)`: a
  `batch_size` larger than the split (or than `longest`) is cut to it.
  """
  batch_size = eval_batch_size(longest or len(split), batch_size, multiple_of)
  for start in range(0, len(split), batch_size):
    images = split.images[start : start + batch_size]
    labels = split.labels[start : start + batch_size]
    pad = batch_size - len(labels)
    mask = np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])
    if pad:
      images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
      labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    yield {"image": images, "label": labels, "mask": mask}


def stack(trees: Sequence[Any]) -> Any:
  """Trees of equal structure as one tree of arrays with a new leading axis."""
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def evaluate(
  eval_fn,
  state,
  splits: input_pipeline.Split | Sequence[input_pipeline.Split],
  batch_size: int,
  sharding=None,
  multiple_of: int = 1,
  longest: int = 0,
  predictions: bool = False,
):
  """Each metric's mean over every example of a split, each example counted once.

  `eval_fn(state, batch)` is a jitted `steps.eval_step`. Given one split, it
  returns {metric: mean} as floats, with the metrics of
  `steps.example_metrics` ("loss", "accuracy", ...). Given a sequence of
  splits, one per seed, `state` is stacked, `eval_fn` is vmapped, and it
  returns one such dict per seed, each seed on its own split (reduced inputs,
  `data.features`, are fitted on each seed's training split, so even test
  splits differ). With `sharding`, each batch is put on the devices split by
  it. Sums are float64. `batch_size`, `multiple_of` and `longest`: see `eval_batches`.

  With `predictions` (an `eval_fn` of `steps.eval_step(..., per_example=True)`),
  returns (metrics, predictions): the predictions of every example of the
  split, in its order, as numpy arrays (N,) (`steps.example_predictions`), one
  dict per seed where the metrics are. Otherwise such an `eval_fn`'s
  predictions stay on the device, unread.
  """
  single = isinstance(splits, input_pipeline.Split)
  if single:
    batches = eval_batches(splits, batch_size, multiple_of, longest)
  else:
    per_seed = [eval_batches(s, batch_size, multiple_of, longest) for s in splits]
    batches = map(stack, zip(*per_seed, strict=True))
  if sharding is not None:
    batches = (parallel.put(batch, sharding) for batch in batches)
  sums, outputs, started, logged = [], [], time.perf_counter(), time.perf_counter()
  num_examples = len(splits if single else splits[0])
  num_batches = -(-num_examples // batch_size)
  for i, batch in enumerate(batches, 1):
    result = eval_fn(state, batch)
    if isinstance(result, tuple):  # (sums, per-example predictions)
      result, per_example = result
      outputs.append(per_example)
    elif predictions:
      raise ValueError("predictions=True needs an eval_fn of steps.eval_step(per_example=True)")
    sums.append(result)
    if i % 16 == 0 and i < num_batches:  # A long evaluation says how far it has got.
      jax.block_until_ready(sums[-1])
      now = time.perf_counter()
      if now - logged > PROGRESS_EVERY_S:
        eta = (now - started) / i * (num_batches - i)
        logging.info("Evaluating: batch %d/%d, ETA %s", i, num_batches, display.duration(eta))
        logged = now
  totals = {
    k: np.atleast_1d(np.sum([s[k] for s in jax.device_get(sums)], axis=0, dtype=np.float64))
    for k in sums[0]
  }
  results = [
    {k: float(v) for k, v in steps.means({k: v[i] for k, v in totals.items()}).items()}
    for i in range(len(totals["count"]))
  ]
  if not predictions:
    return results[0] if single else results
  # Each batch's examples in order (batch, or seeds x batch), the last batch's padding dropped.
  joined = {
    k: np.concatenate([o[k] for o in jax.device_get(outputs)], axis=-1)[..., :num_examples]
    for k in outputs[0]
  }
  if single:
    return results[0], joined
  return results, [{k: v[i] for k, v in joined.items()} for i in range(len(results))]


def epoch_record(
  step: int,
  steps_per_epoch: int,
  sums: Mapping[str, float],
  seconds: float,
  examples_timed: int,
) -> dict[str, Any]:
  """The training half of an epoch's record in metrics.jsonl.

  `sums` holds the epoch's summed metrics so far and their "count" of
  examples (see `steps.train_step`): each metric becomes `train_<name>`, its
  mean. `examples_timed` examples were trained in `seconds`. "epoch" is a whole
  number at an epoch's end, and a fraction where `max_steps` stops a run within
  an epoch.
  """
  return {
    "kind": "epoch",
    "step": step,
    "epoch": step // steps_per_epoch if step % steps_per_epoch == 0 else step / steps_per_epoch,
    **{f"train_{k}": v for k, v in steps.means(sums).items()},
    "train_examples_per_sec": examples_timed / seconds,
  }


def diverged_message(
  config: ml_collections.ConfigDict, manager, step: int, loss=None, split: str = "training"
) -> str:
  """What to say when the `split` loss of step `step + 1` is `loss`, not finite.

  With `loss` None, the step's loss was finite and the parameters it left are
  not. A "validation" or "test" loss is that of the parameters after the step:
  finite, but so large that the logits overflow. `manager` is the run's Orbax
  checkpoint manager: the message names the checkpoint that is kept, or says
  that none was saved.
  """
  what = (
    "the parameters stopped being finite" if loss is None else f"the {split} loss became {loss}"
  )
  latest = manager.latest_step()
  kept = (
    f"The checkpoint of step {latest} in {manager.directory} is kept."
    if latest is not None
    else "No checkpoint was saved before it."
  )
  return (
    f"{what} at step {step + 1}. {kept} Try a lower "
    f"optimizer.learning_rate (now {config.optimizer.learning_rate}), a warmup "
    "(optimizer.schedule='warmup_cosine'), or another seed."
  )


def best_record(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
  """The epoch record of best validation accuracy (the first of ties); None without epochs.

  Without a validation split, the last epoch's.
  """
  epochs = [r for r in records if r.get("kind") == "epoch"]
  if not epochs:
    return None
  if "validation_accuracy" not in epochs[-1]:
    return epochs[-1]
  return max(epochs, key=lambda r: r["validation_accuracy"])  # max keeps the first of ties


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The run's result from its records: the last epoch's, and the best by validation.

  Adds `best_validation_accuracy` (where there is a validation split),
  `best_epoch` and, for every test metric, `test_<name>_at_best_validation`
  (`test_accuracy_at_best_validation`, ...; see `best_record`) to the last
  epoch record's metrics. No epoch records give {}.
  """
  best = best_record(records)
  if best is None:
    return {}
  final = dict([r for r in records if r.get("kind") == "epoch"][-1])
  if "validation_accuracy" in final:
    final["best_validation_accuracy"] = best["validation_accuracy"]
  final["best_epoch"] = best["epoch"]
  for key in (k for k in best if k.startswith("test_")):
    final[f"{key}_at_best_validation"] = best[key]
  final.pop("kind")
  return final


@dataclasses.dataclass(frozen=True)
class EarlyStop:
  """Where and why a run stopped early: see `early_stop`."""

  epoch: int  # the 1-based epoch after which it stopped
  improved_epoch: int  # the last epoch that improved; 0: none had a finite accuracy
  reason: str  # one line, for the log and the run's result


def early_stop(
  validation_accuracies: Sequence[float], patience: int, min_delta: float
) -> EarlyStop | None:
  """Whether a run whose whole epochs gave `validation_accuracies` stops early, and where.

  The rule: the best accuracy starts unset. Epoch by epoch (epoch 1 first),
  an epoch improves when its accuracy is finite and either the best is unset
  or the accuracy exceeds it by more than `min_delta` (`accuracy - best >
  min_delta`: a tie, or a gain of exactly `min_delta`, does not improve); the
  best then becomes that accuracy. Any other epoch (a NaN too) leaves the best
  as it is, so a gain of `min_delta` or less never moves it. The run stops
  after the first epoch that ends `patience` consecutive epochs without
  improvement. With `patience` 0 it never stops early.

  Args:
    validation_accuracies: the validation accuracy after each whole epoch, fractions in [0, 1].
    patience: epochs without improvement that stop the run; 0: never.
    min_delta: the gain in accuracy (a fraction, as the records hold) that counts.

  Returns:
    An `EarlyStop`, or None where the run does not stop (it improves, or has
    improved within `patience` epochs, up to its last epoch).
  """
  if patience <= 0:
    return None
  best, improved_epoch, since = None, 0, 0
  for epoch, accuracy in enumerate(validation_accuracies, 1):
    finite = math.isfinite(accuracy)
    if finite and (best is None or accuracy - best > min_delta):
      best, improved_epoch, since = accuracy, epoch, 0
      continue
    since += 1
    if since >= patience:
      epochs = f"{since} epoch{'s' * (since > 1)}"
      if improved_epoch:
        by = f" by more than {min_delta:g}" if min_delta else ""
        why = (
          f"validation accuracy did not improve{by} for {epochs} after epoch {improved_epoch} "
          f"({best:.4f})"
        )
      else:
        why = f"validation accuracy was not finite for its first {epochs}"
      return EarlyStop(epoch, improved_epoch, f"{why}; stopped after epoch {epoch}")
  return None


def early_stop_fields(stop: EarlyStop | None) -> dict[str, Any]:
  """A run's result fields that say whether it stopped early (`stop`), and why.

  `stopped_early_epoch`: the epoch after which it stopped, 0 when it did not
  stop early (it trained its whole budget, `num_epochs` or `max_steps`), and
  `stop_reason`, one line, only when it stopped.
  """
  if stop is None:
    return {"stopped_early_epoch": 0}
  return {"stopped_early_epoch": stop.epoch, "stop_reason": stop.reason}


def early_stop_epoch(
  validation_accuracies: Sequence[float], patience: int, min_delta: float
) -> int | None:
  """The 1-based epoch after which a run stops early, or None: the rule of `early_stop`."""
  stop = early_stop(validation_accuracies, patience, min_delta)
  return None if stop is None else stop.epoch


def whole_epoch_validation_accuracies(records: Sequence[Mapping[str, Any]]) -> list[float]:
  """The validation accuracy of each whole epoch's record, epoch 1 first (see `early_stop`).

  A record of a partial epoch (a `max_steps` stop within an epoch) is left out:
  early stopping judges whole epochs only. A record without a validation
  accuracy gives NaN.
  """
  return [
    float(r.get("validation_accuracy", math.nan))
    for r in records
    if r.get("kind") == "epoch" and float(r["epoch"]).is_integer()
  ]


class Profiler:
  """Traces `num_steps` training steps with `jax.profiler` into `folder`, once.

  The trace starts at the second call of the steps, so that it shows training
  rather than compiling, and stops at the first call that ends `num_steps`
  steps later (or when the run ends). TensorBoard's profile tab and Perfetto
  (`perfetto_trace.json.gz`) read it. With `num_steps` 0 it does nothing.
  """

  def __init__(self, num_steps: int, folder: str):
    self.num_steps, self.folder = num_steps, folder
    self.calls, self.stop_at = 0, None

  def before_call(self, step: int) -> None:
    self.calls += 1
    if self.num_steps and self.calls == 2:
      logging.info("Tracing %d steps from step %d into %s", self.num_steps, step, self.folder)
      jax.profiler.start_trace(self.folder, create_perfetto_trace=True)
      self.stop_at = step + self.num_steps

  def after_call(self, step: int, state) -> None:
    if self.stop_at is not None and step >= self.stop_at:
      self.stop(state)

  def stop(self, state) -> None:
    if self.stop_at is not None:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.stop_at = None


def interrupted(signum: int, step: int, workdir: str) -> RunInterrupted:
  """The error a run raises once it has saved its checkpoint after signal `signum`."""
  return RunInterrupted(
    f"{signal.Signals(signum).name} at step {step}: checkpoint saved in {workdir}; "
    "run the same command again to resume",
    signum,
  )
