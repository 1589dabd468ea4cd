"""Trains and evaluates a model: the run's set-up, and the loop around the steps.

`train_and_evaluate(config, workdir)` is what `convnet.main`, the tests and
research scripts call. The workdir (see `convnet.workdir`) gets the resolved
config, one metrics record per logged step or epoch, TensorBoard events,
Orbax checkpoints and the best epoch's test predictions (`convnet.predictions`);
running it again on the same workdir resumes from the last checkpoint, and a
finished run reports its result and returns.

`fit` is the loop. It trains one model, or (for `convnet.seeds`) copies of one
model stacked along a leading axis, so that both write, evaluate, checkpoint
and stop alike. A group's seeds are judged one by one: a seed whose loss or
parameters stop being finite stops training, and the others go on as they
would alone (`SeedsDivergedError`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from convnet import (
  augment,
  checkpoints,
  config_checks,
  display,
  epochs,
  files,
  input_pipeline,
  memory,
  models,
  optim,
  parallel,
  precompile,
  predictions,
  preemption,
)
from convnet import steps as steps_lib
from convnet import workdir as workdir_lib
from convnet.errors import (
  CheckpointError,
  DivergedError,
  FileFormatError,
  WorkdirReadOnlyError,
)


class SeedsDivergedError(DivergedError):
  """Seeds of a group diverged; each seed's result or error is in `results`.

  `results` has one entry per seed, in the group's order: the result dict of
  a seed that finished (as `train_and_evaluate` returns it), or the
  `DivergedError` of a seed that diverged, whose message names the seed and
  the step. The group's other seeds trained on as they would alone.
  """

  def __init__(self, results: list[dict[str, Any] | DivergedError]):
    self.results = results
    diverged = [str(r) for r in results if isinstance(r, DivergedError)]
    finished = len(results) - len(diverged)
    super().__init__(
      " ".join(diverged)
      + (f" ({finished} other seed(s) of the group finished.)" if finished else "")
    )


@dataclasses.dataclass
class Member:
  """One model of a run: where its metrics go, and what it has recorded so far."""

  name: str  # "" for a single run, "seed 3" for a seed of a group, or a member's folder name
  writer: workdir_lib.MetricsWriter
  records: list[dict[str, Any]]
  config: ml_collections.ConfigDict  # its own (its seed and learning rate)
  diverged: str = ""  # why this seed of a group stopped training; "" while it trains
  stopped: epochs.EarlyStop | None = None  # where and why it stopped early (`early_stop`)
  folder: str = ""  # its folder: metrics, and its test predictions (`convnet.predictions`)

  @property
  def training(self) -> bool:
    """Whether it still trains: it has neither diverged nor stopped early."""
    return not self.diverged and self.stopped is None


@dataclasses.dataclass
class Run:
  """A run set up to train: the state, the compiled steps and where results go.

  For a group trained together (seeds, or seeds and learning rates), `state`,
  `images`, `labels` and the orders are stacked along a leading axis,
  `steps_fn` and `evaluate` are vmapped, and there is one member per model.
  """

  config: ml_collections.ConfigDict
  workdir: str  # holds checkpoints/
  state: steps_lib.TrainState
  images: jax.Array
  labels: jax.Array
  orders: Callable[[int], jax.Array]  # epoch -> the order of its training examples
  steps_fn: Callable  # (state, images, labels, order, start, count, key) -> (state, metrics)
  key: jax.Array  # the masking key (`augment.key`), one per member
  # Seeds trained together: whether each still trains, a bool per member, passed to the steps
  # after `key` (`steps.train_steps`' guard); None for a single run, which stops when it diverges.
  live: jax.Array | None
  evaluate: Callable[[Any, str], list[dict[str, float]] | None]  # per member; None: no split
  # state -> the test split's (metrics, per-example predictions), a list of each per member
  # (`epochs.evaluate`), or None without a test split.
  predict: Callable[[Any], tuple[list[dict[str, float]], list[dict[str, np.ndarray]]] | None]
  members: list[Member]
  manager: Any  # orbax.checkpoint.CheckpointManager
  best: checkpoints.KeepSteps  # the members' best epochs' steps, kept beside the newest
  loop: dict[str, Any]  # saved with each checkpoint: epoch sums, wall time, run constants
  steps_per_epoch: int
  total_steps: int
  result: dict[str, Any]  # fields added to each member's result
  test_labels: list[np.ndarray]  # each member's test labels (empty without a test split)
  num_classes: int
  started_at: float  # time.perf_counter() when the set-up began


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates the configured model, resuming from `workdir`.

  Holds `workdir`'s lock while it runs.

  Returns:
    The last epoch's metrics (`train_*`, `validation_*`, `test_*`), plus
    `best_validation_accuracy`, `best_epoch`, `test_accuracy_at_best_validation`,
    `num_params`, `train_flops_per_example` (XLA's count of the step as written),
    `wall_time_s`, `train_examples_per_sec`, and `stopped_early_epoch` (0: the
    run did not stop early) with `stop_reason` where it did (`config.early_stopping`).

  A workdir that cannot be written (a read-only mount) still reports the
  result of a run that finished there.

  Raises:
    ConfigError, DataError, CheckpointError, WorkdirInUseError: a config,
      data or workdir that cannot be used; nothing is written. A resumed run
      whose config differs in a field that changes its result is refused
      before any data is read.
    WorkdirError: a file cannot be written (a full disk); what was written
      stays, and the same command resumes once it can write.
    DivergedError: the loss or the parameters stopped being finite; the last
      good checkpoint is kept.
    RunInterrupted: SIGTERM or SIGINT arrived; a checkpoint was saved.
  """
  return train_members(config, workdir)[0]


def train_members(
  config: ml_collections.ConfigDict,
  workdir: str,
  seeds: list[int] | None = None,
  members: list[tuple[str, ml_collections.ConfigDict]] | None = None,
) -> list[dict[str, Any]]:
  """One run, one per seed (`seeds`) or named members (`members`) trained together; results.

  The one set-up of `train_and_evaluate` and `convnet.seeds`: the config
  checked, `workdir` made and locked, signals turned into stop requests, a
  resumed run's configs and members checked before any data is read, then
  `set_up` and `fit`. Seeds go to `workdir/seed_<s>/`; each member, a (name,
  config) pair (`convnet.seeds.train_group` checks them), to `workdir/<name>/`;
  a group's checkpoints to `workdir/checkpoints/`.
  """
  config_checks.validate(config)
  size = len(seeds) if seeds is not None else len(members) if members is not None else 1
  memory.check(config, size)  # before any data is read
  with workdir_lib.run_dir(workdir) as workdir:
    if seeds is not None:
      member_dirs = [(checkpoints.seed_dir(workdir, s), seed_config(config, s)) for s in seeds]
      group = {"seeds": list(seeds)}
    elif members is not None:
      member_dirs = [(checkpoints.member_dir(workdir, n), c) for n, c in members]
      group = {"members": [n for n, _ in members]}
    else:
      member_dirs, group = [(workdir, config)], None
    # In a multi-host run, process 0 holds the lock for them all.
    main = parallel.is_main_process()
    lock = workdir_lib.lock(workdir) if main else contextlib.nullcontext()
    compiles = precompile.Compiles()
    try:
      with lock, preemption.stop_requests() as stop:
        check_before_loading(workdir, member_dirs, group)
        return fit(set_up(config, workdir, member_dirs, compiles, group), stop)
    except WorkdirReadOnlyError as e:  # Only the lock raises it: nothing can be written there.
      if group is not None:
        raise
      return [_finished_result(config, workdir, e)]
    finally:
      # A program still compiling in another thread (when an error or a second stop signal
      # came during the set-up) ends first: Python's exit would abort in the middle of it.
      compiles.join()


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """A copy of `config` with its seed set."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.seed = seed
  return config


def check_before_starting(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The checks of `train_and_evaluate` that need no data, device or write, for a command.

  Raises:
    ConfigError: the config cannot work (`config_checks.validate`).
    WorkdirError: `workdir` is empty, or a file stands where it or a parent must be.
    CheckpointError: `workdir` holds a run whose config differs in a field that
      changes the result.
  """
  config_checks.validate(config)
  files.check_dir(workdir)
  if os.path.isdir(workdir) and checkpoints.has_checkpoints(workdir):
    workdir_lib.check_resumable(os.path.abspath(workdir), config)


def check_before_loading(workdir: str, member_dirs, group: dict[str, list] | None = None) -> None:
  """What can be checked of a resumed run before its data is loaded: each member's config.

  For a group (see `set_up`), also its members: a checkpoint of other seeds or
  other members (their names, in their order) is refused. Also removes the
  temporary files that killed writers left in the folders.

  Raises:
    CheckpointError: a member's config differs in a field that changes its
      result (`workdir.check_resumable`), or the group's members differ.
  """
  for folder in {workdir, *(d for d, _ in member_dirs)}:
    files.remove_stale_files(folder)
  if not checkpoints.has_checkpoints(workdir):
    return
  for member_dir, member_config in member_dirs:
    workdir_lib.check_resumable(member_dir, member_config)
  saved = checkpoints.read_loop(workdir) if group is not None else None
  if saved is None:
    return
  saved_group = {k: saved[1][k] for k in ("seeds", "members") if k in saved[1]}
  if saved_group and saved_group != group:
    (was,), (now,) = saved_group, group  # each has one key
    raise CheckpointError(
      f"{workdir} holds checkpoints of a group of {was} {saved_group[was]}, not of {now} "
      f"{group[now]}: train the same {was} again, or use a new --workdir"
    )


def _finished_result(config, workdir: str, error: WorkdirReadOnlyError) -> dict[str, Any]:
  """The result of a run that finished in a workdir that cannot be written; else `error`."""
  workdir_lib.check_resumable(workdir, config)
  saved = checkpoints.read_loop(workdir)
  records = workdir_lib.read_metrics(workdir)
  if saved is None or "constants" not in saved[1]:
    raise error
  step, loop = saved
  steps_per_epoch = loop["constants"]["steps_per_epoch"]
  total_steps = epochs.total_steps(config, steps_per_epoch)
  result = epochs.summarize(records)
  stop = stopped_members(loop, [""], workdir).get("")
  if (step < total_steps and stop is None) or not result:
    raise WorkdirReadOnlyError(f"{error} (its run stopped at step {step} of {total_steps})")
  result |= loop.get("result", {}) | epochs.early_stop_fields(stop)
  logging.info("Run already finished at step %d: %s", step, display.metrics_line(result))
  return result


def step_functions(
  config: ml_collections.ConfigDict, input_shape: tuple[int, ...], batch_sharding=None
):
  """`steps.train_steps` and `steps.eval_step` with the config's settings bound, not jitted.

  The evaluation returns each example's predictions beside its sums (`per_example`).

  Raises:
    ConfigError: `config.augment` cannot mask examples of `input_shape`.
  """
  train_fn = functools.partial(
    steps_lib.train_steps,
    steps_per_call=config.steps_per_call,
    batch_size=config.batch_size,
    label_smoothing=config.label_smoothing,
    microbatch_size=config.microbatch_size,
    l1_penalty=config.l1_penalty,
    batch_sharding=batch_sharding,
    masking=augment.masking(config.augment, input_shape),
  )
  eval_fn = functools.partial(  # per example: the loop keeps the best epoch's test predictions
    steps_lib.eval_step,
    microbatch_size=config.microbatch_size,
    batch_sharding=batch_sharding,
    per_example=True,
  )
  return train_fn, eval_fn


def model_and_optimizer(
  config: ml_collections.ConfigDict, dataset: input_pipeline.Dataset, rate_in_state: bool = False
):
  """The model, optimizer and step counts for `dataset`: (model, tx, steps_per_epoch, total).

  The learning-rate schedule spans `num_epochs` whole epochs; `max_steps` only
  stops the run sooner, so that a run stopped by it and resumed is the same
  run as one that went straight through. With `rate_in_state`, the optimizer
  keeps its peak learning rate in its state (`optim.create_optimizer`).
  """
  model = models.create_model(config.model, dataset.input_shape, dataset.num_classes)
  steps_per_epoch, total_steps = epochs.step_counts(config, len(dataset.train))
  tx = optim.create_optimizer(
    config.optimizer, steps_per_epoch, steps_per_epoch * config.num_epochs, rate_in_state
  )
  return model, tx, steps_per_epoch, total_steps


def run_constants(
  config: ml_collections.ConfigDict, datasets: list[input_pipeline.Dataset], steps_per_epoch: int
) -> dict[str, Any]:
  """What a run derives at its start, saved with every checkpoint and checked on resume.

  The steps per epoch, the schedule's step counts (`optim.schedule_steps`),
  the number of training examples and a digest of them (BLAKE2b of every
  member's training images and labels): a resumed run whose data moved to
  another `data.idx_dir` must find the same data there.
  """
  digest = hashlib.blake2b(digest_size=16)
  for dataset in datasets:
    digest.update(np.ascontiguousarray(dataset.train.images).tobytes())
    digest.update(np.ascontiguousarray(dataset.train.labels).tobytes())
  schedule = optim.schedule_steps(
    config.optimizer, steps_per_epoch, steps_per_epoch * config.num_epochs
  )
  return {
    "steps_per_epoch": steps_per_epoch,
    "num_train": len(datasets[0].train),
    "train_data_blake2b": digest.hexdigest(),
  } | {f"schedule_{k}": v for k, v in schedule.items()}


def _check_constants(workdir: str, saved: dict[str, Any], now: dict[str, Any]) -> None:
  """Refuses to resume a run whose constants (see `run_constants`) differ from the saved ones."""
  changed = [
    f"{k}: {saved[k]!r} (saved) vs {now.get(k)!r} (now)" for k in saved if saved[k] != now.get(k)
  ]
  if changed:
    raise CheckpointError(
      f"{workdir} holds a run whose training data or schedule differ from this one's: "
      + "; ".join(changed)
      + ". Point the config at the run's data, or use a new --workdir."
    )


def resume(
  config: ml_collections.ConfigDict,
  workdir: str,
  state: steps_lib.TrainState,
  member_dirs: list[tuple[str, ml_collections.ConfigDict]],
  constants: dict[str, Any],
  total_steps: int,
  write: bool = True,
):
  """Opens `workdir`'s checkpoints and restores the newest, after checking the run's constants.

  `member_dirs` pairs each member's folder with its config (checked by
  `check_before_loading`). Each folder gets its config.json and metrics.jsonl
  cut back to the restored step (only where `write`: process 0 of a
  multi-host run).

  Returns:
    (manager, best, state, loop, records): the Orbax manager and its set of
    best steps, the restored state and loop counters (or those given, on a
    fresh run), and each member's records.
  """
  best = checkpoints.KeepSteps()
  manager = checkpoints.manager(workdir, config.checkpoint_keep, best)
  loop = {"wall_time_s": 0.0}
  if manager.latest_step() is not None:
    state, loop = checkpoints.restore(manager, state, loop)
    _check_constants(workdir, loop.get("constants", {}), constants)
    _check_learning_rates(workdir, state, [c for _, c in member_dirs])
  loop["constants"] = constants
  step = int(np.ravel(state.step)[0])
  records = [  # read (and checked) before anything is written
    workdir_lib.read_metrics(member_dir, step, rewrite=write, resuming=step < total_steps)
    for member_dir, _ in member_dirs
  ]
  for member_dir, member_config in member_dirs:
    if write and step < total_steps:  # A finished run keeps the config it ran with.
      os.makedirs(member_dir, exist_ok=True)
      workdir_lib.write_config(member_dir, member_config)
  best.steps = checkpoints.best_steps(records)
  return manager, best, state, loop, records


def _check_learning_rates(workdir: str, state, configs) -> None:
  """Refuses a restored state whose members' learning rates (`optim.RateState`) are not theirs."""
  saved = optim.learning_rates(state.opt_state)
  if saved is None:
    return
  wanted = np.array([c.optimizer.learning_rate for c in configs], np.float32)
  if not np.array_equal(np.asarray(saved), wanted):
    raise CheckpointError(
      f"{workdir} holds checkpoints of members trained at the learning rates "
      f"{np.asarray(saved).tolist()}, not {wanted.tolist()}: use a new --workdir"
    )


def _longest_eval_split(datasets) -> int:
  """The larger of the validation and test splits: evaluation batches are cut to it."""
  return max(len(datasets[0].validation), len(datasets[0].test))


def _eval_batch_examples(config, datasets, vmapped: bool, batch_sharding, multiple_of: int):
  """One abstract batch per shape the evaluation meets (validation, test), to compile for.

  Both splits are evaluated in batches of one shape (`epochs.eval_batch_size`
  of the larger), so there is one.
  """
  batches = {}
  longest = _longest_eval_split(datasets)
  for name in ("validation", "test"):
    splits = [getattr(d, name) for d in datasets]
    if len(splits[0]):
      first = [
        next(epochs.eval_batches(s, config.eval_batch_size, multiple_of, longest)) for s in splits
      ]
      batch = precompile.abstract(first, vmapped, batch_sharding)
      batches[str(jax.tree.map(lambda x: (x.shape, x.dtype), batch))] = batch
  return list(batches.values())


def set_up(
  config: ml_collections.ConfigDict,
  workdir: str,
  member_dirs: list[tuple[str, ml_collections.ConfigDict]],
  compiles: precompile.Compiles,
  group: dict[str, list] | None = None,
) -> Run:
  """A run ready for `fit`: data, model, state (restored where there is a checkpoint), steps.

  One member is a single run (`train_and_evaluate`), data parallel over the
  config's mesh. A `group` trains its members together (`convnet.seeds`): the
  members' data, states, orders and masking keys are stacked along a leading
  axis, and the steps and evaluation are vmapped, on one device. Members whose
  learning rates differ train with the rate in the optimizer's state
  (`optim.create_optimizer`'s `rate_in_state`), one per member; otherwise the
  state is a single run's.

  Args:
    config: the run's config; in a group, each member's differs in its seed
      and learning rate only.
    workdir: where the checkpoints go.
    member_dirs: each member's folder (config.json, metrics.jsonl, events) and config.
    compiles: where the steps and the evaluation compile while the run sets up
      (`convnet.precompile`); the caller joins it before the process may exit.
    group: None for a single run; {"seeds": [...]} for seeds (members named
      "seed <s>"), or {"members": [names]} for named members; saved with each
      checkpoint.
  """
  started_at = time.perf_counter()
  _import_tensorboardx()
  vmapped = group is not None
  configs = [c for _, c in member_dirs]
  seeds = [c.seed for c in configs]
  rates = [c.optimizer.learning_rate for c in configs]
  rate_in_state = len(set(rates)) > 1
  if vmapped:
    mesh_size, batch_sharding, jit_options = 1, None, {}
    place, combine = jax.device_put, epochs.stack
  else:
    mesh = parallel.create_mesh(config.mesh_shape)
    mesh_size, batch_sharding = mesh.size, parallel.batch_sharding(mesh)
    replicated = parallel.replicated(mesh)
    jit_options = {"out_shardings": replicated}
    place, combine = functools.partial(parallel.put, sharding=replicated), lambda xs: xs[0]
  parallel.check_batch_sizes(config, mesh_size)
  loaded = {}  # members of one seed share their data, loaded once
  for seed in seeds:
    if seed not in loaded:
      loaded[seed] = input_pipeline.load(config.data, seed)
  datasets = [loaded[s] for s in seeds]
  data = datasets[0]
  memory.check(config, len(seeds), mesh_size, data)  # with the splits' sizes, before the model
  # The members' rate (or, with `rate_in_state`, each one's in its state), not `config`'s.
  model, tx, steps_per_epoch, total_steps = model_and_optimizer(configs[0], data, rate_in_state)
  train_fn, eval_fn = step_functions(config, data.input_shape, batch_sharding)
  if vmapped:
    train_fn = jax.vmap(train_fn, in_axes=(0, 0, 0, 0, None, None, 0, 0))
    eval_fn = jax.vmap(eval_fn)
  steps_fn = jax.jit(train_fn, donate_argnums=0, **jit_options)
  eval_fn = jax.jit(eval_fn, **jit_options)
  multiple_of = math.lcm(config.microbatch_size or 1, mesh_size)

  length = epochs.order_length(steps_per_epoch, total_steps, config.batch_size)

  def orders(epoch: int) -> jax.Array:
    return place(combine([epochs.epoch_order(len(data.train), s, epoch, length) for s in seeds]))

  if not vmapped:
    names = [""]
  elif "members" in group:
    names = list(group["members"])
  else:
    names = [f"seed {s}" for s in seeds]
  images = place(combine([d.train.images for d in datasets]))
  labels = place(combine([d.train.labels for d in datasets]))
  key = place(combine([augment.key(s) for s in seeds]))

  def start_compiles() -> None:
    """The steps and the evaluation compile in other threads while this one sets up."""
    nonlocal steps_fn, eval_fn
    # What `place` makes of the fresh states and of an epoch's order (a shape only: building
    # one here would build the first twice), and what a checkpoint restores into them.
    sharding = None if vmapped else replicated
    fresh = jax.eval_shape(lambda: [new_state(s, r) for s, r in zip(seeds, rates, strict=True)])
    state = precompile.abstract(fresh, vmapped, sharding)
    order = jax.ShapeDtypeStruct((length,), np.int32)
    order = precompile.abstract([order] * len(seeds), vmapped, sharding)
    live = (place(np.ones(len(seeds), bool)),) if vmapped else ()
    steps_args = (state, images, labels, order, 0, 1, key, *live)
    batches = _eval_batch_examples(config, datasets, vmapped, batch_sharding, multiple_of)
    logging.info(
      "Compiling the training steps and the evaluation (a later run reads them from the "
      "compilation cache)"
    )
    steps_fn = compiles.start(steps_fn, steps_args)
    eval_fn = compiles.start(eval_fn, *((state, batch) for batch in batches))

  def new_state(seed: int, learning_rate: float) -> steps_lib.TrainState:
    state = steps_lib.create_train_state(jax.random.key(seed), model, data.input_shape, tx)
    if rate_in_state:
      state = state.replace(opt_state=optim.set_learning_rate(state.opt_state, learning_rate))
    return state

  # A fresh run compiles at once; a resumed one once it knows that steps are left.
  fresh_run = not checkpoints.has_checkpoints(workdir)
  if fresh_run:
    start_compiles()
  states = [new_state(s, r) for s, r in zip(seeds, rates, strict=True)]
  num_params = models.count_params(states[0].params)
  flops = steps_lib.train_flops_per_example(config, states[0], data.input_shape)
  logging.info(
    "%s%s on %s: %s parameters, %.2f MFLOP per training example; "
    "%d train, %d validation, %d test examples of shape %s; %s",
    f"{len(seeds)} models at once of " if vmapped else "",
    config.model.name,
    data.name,
    f"{num_params:,}",
    flops / 1e6,
    len(data.train),
    len(data.validation),
    len(data.test),
    data.input_shape,
    "one device"
    if vmapped
    else f"data parallel over {mesh_size} device(s) in {jax.process_count()} process(es)",
  )
  main = parallel.is_main_process()
  manager, best, state, loop, records = resume(
    config,
    workdir,
    place(combine(states)),
    member_dirs,
    run_constants(config, datasets, steps_per_epoch),
    total_steps,
    main,
  )
  if not fresh_run and int(np.ravel(state.step)[0]) < total_steps:
    start_compiles()

  def evaluate(state, name: str, predictions: bool = False):
    """Each member's metrics on split `name`; with `predictions`, and its predictions too."""
    splits = [getattr(d, name) for d in datasets]
    if not len(splits[0]):
      return None
    if not vmapped:
      splits = splits[0]
    results = epochs.evaluate(
      eval_fn,
      state,
      splits,
      config.eval_batch_size,
      batch_sharding,
      multiple_of,
      _longest_eval_split(datasets),
      predictions,
    )
    if vmapped:
      return results
    return ([results[0]], [results[1]]) if predictions else [results]

  result = {"num_params": num_params, "train_flops_per_example": flops}
  if vmapped:
    result["vmap_group_size"] = len(seeds)
  diverged = diverged_members(loop, names, workdir)
  return Run(
    config=config,
    workdir=workdir,
    state=state,
    images=images,
    labels=labels,
    orders=orders,
    steps_fn=steps_fn,
    key=key,
    live=place(np.array([n not in diverged for n in names])) if vmapped else None,
    evaluate=evaluate,
    predict=functools.partial(evaluate, name="test", predictions=True),
    members=[
      Member(name, workdir_lib.MetricsWriter(d, main, c, r), r, c, diverged.get(name, ""), folder=d)
      for name, (d, c), r in zip(names, member_dirs, records, strict=True)
    ],
    manager=manager,
    best=best,
    loop=loop | {"result": result} | (group or {}),
    steps_per_epoch=steps_per_epoch,
    total_steps=total_steps,
    result=result,
    test_labels=[d.test.labels for d in datasets],
    num_classes=data.num_classes,
    started_at=started_at,
  )


def _import_tensorboardx() -> None:
  """Imports the parts of tensorboardX that `workdir.MetricsWriter` uses, without PyTorch.

  tensorboardX's package imports PyTorch where it is installed (about a second), for writers
  that take PyTorch tensors; the event files and summaries written here need none of it. A
  process that has imported PyTorch already, or tensorboardX, is left as it is.
  """
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    return
  sys.modules["torch"] = None  # tensorboardX's `try: import torch` then finds no PyTorch
  try:
    import tensorboardX.event_file_writer  # noqa: F401
    import tensorboardX.summary  # noqa: F401
  finally:
    del sys.modules["torch"]


def fit(run: Run, stop: preemption.StopRequests) -> list[dict[str, Any]]:
  """Trains `run` to its total step count, evaluating and saving at every epoch's end.

  Asks `stop` (see `preemption.stop_requests`) before each call of the steps,
  in every process at the same steps: after a signal it saves a checkpoint and
  raises `RunInterrupted`. A single run whose loss stops being finite raises
  `DivergedError` before anything is saved. In a group, a seed whose loss or
  parameters stop being finite is marked diverged: it keeps its last finite
  parameters and writes no more records, the others train on as they would
  alone, and `SeedsDivergedError` is raised at the end (at once when none
  trains); which seeds diverged, and why, is saved with each checkpoint.

  Early stopping (`config.early_stopping`, off with patience 0) judges each
  member after each whole epoch's evaluation by `epochs.early_stop`. A single
  run that stops ends once that epoch's checkpoint is saved; a seed of a group
  that stops trains no more and writes no more records, as a diverged one,
  but finishes with a result, and the loop ends when no member trains. Where
  and why each member stopped is saved with each checkpoint, so that a rerun
  trains nothing more and reports the same; `max_steps` or `num_epochs` still
  end a run that does not stop.

  Returns:
    Each member's result (see `train_and_evaluate`), with `stopped_early_epoch`
    (see `epochs.early_stop_fields`).
  """
  config, state, members = run.config, run.state, run.members
  live = _restore_stops(run, run.live)
  check_predictions(run, state)
  steps_per_epoch, total_steps = run.steps_per_epoch, run.total_steps
  sums = epoch_sums(run.loop, len(members), config.batch_size)
  step = int(np.ravel(state.step)[0])
  first_step = step
  already_finished = step >= total_steps or not any(member.training for member in members)
  start_time = time.perf_counter() - run.loop["wall_time_s"]
  pending = []  # (per-step metrics still on the device, number of valid steps)
  # Each member's losses since the last logged step: a logged record covers its whole window.
  window = run.loop.get("window_losses") or [[] for _ in members]
  window_start, window_steps = time.perf_counter(), 0
  profile_steps = config.profile_steps if parallel.is_main_process() else 0
  profiler = epochs.Profiler(profile_steps, os.path.join(run.workdir, "profile"))

  def flush_pending() -> None:
    """Adds the pending steps' metrics to the epoch's sums and their losses to the window.

    Judges each member by its own losses (and, in a group, by the steps'
    `live` flags): see above.
    """
    at = step - sum(count for _, count in pending)  # the index of the first pending step
    pending_metrics, trains = jax.device_get((pending, live))
    for metrics, count in pending_metrics:
      metrics = {k: np.reshape(v, (len(members), -1))[:, :count] for k, v in metrics.items()}
      for i, member in enumerate(members):
        for j in range(count if member.training else 0):
          value = metrics["loss"][i, j] / metrics["count"][i, j]
          if not math.isfinite(value):
            message = epochs.diverged_message(member.config, run.manager, at + j, value)
            if live is None:
              raise DivergedError(message)
            _diverge(member, message, window[i])
            break
          window[i].append(float(value))
          for k, v in metrics.items():
            sums.setdefault(k, np.zeros(len(members)))[i] += float(v[i, j])
      at += count
    pending.clear()
    if live is None:
      return
    for i, member in enumerate(members):
      if not trains[i] and member.training:  # the last step's loss was finite, not its update
        _diverge(member, epochs.diverged_message(member.config, run.manager, step - 1), window[i])
    _stop_if_none_trains(members)

  def save(wall_time_s: float) -> None:
    loop = {"epoch_sums": {k: v.tolist() for k, v in sums.items()}, "window_losses": window}
    if live is not None:
      loop["diverged"] = {m.name: m.diverged for m in members if m.diverged}
    loop["stopped_early"] = {m.name: dataclasses.asdict(m.stopped) for m in members if m.stopped}
    checkpoints.save(run.manager, state, run.loop | loop | {"wall_time_s": wall_time_s})

  while step < total_steps and any(member.training for member in members):
    epoch, index = divmod(step, steps_per_epoch)
    epoch_start = time.perf_counter()
    epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
    order = run.orders(epoch)
    while step < epoch_end:
      if signum := stop.requested(step):
        flush_pending()
        save(time.perf_counter() - start_time)
        run.manager.wait_until_finished()
        raise epochs.interrupted(signum, step, run.workdir)
      count = _next_stop(config, step, epoch_end) - step
      start = step - epoch * steps_per_epoch
      profiler.before_call(step)
      args = (state, run.images, run.labels, order, start, count, run.key)
      if live is None:
        state, metrics = run.steps_fn(*args)
      else:
        (state, live), metrics = run.steps_fn(*args, live)
      if step == first_step:  # data read, model built, steps compiled (or found in the cache)
        logging.info("First steps began %.2f s into the run", time.perf_counter() - run.started_at)
      pending.append((metrics, count))
      step += count
      profiler.after_call(step, state)
      window_steps += count
      if config.log_every_steps and step % config.log_every_steps == 0:
        flush_pending()
        _write_window(run, step, window, window_steps, time.perf_counter() - window_start)
        window_start, window_steps = time.perf_counter(), 0
      if step == epoch_end:
        break
      if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
        flush_pending()
        save(time.perf_counter() - start_time)
    flush_pending()
    seconds = time.perf_counter() - epoch_start
    if epoch_end - first_step <= steps_per_epoch:  # the first evaluation of this process
      logging.info("Evaluating on validation and test (waiting for its program first)")
    evals = {"validation": run.evaluate(state, "validation")}
    improved = _improves(members, evals["validation"])
    evals["test"], outputs = _evaluate_test(run, state, any(improved))
    live = _judge_evaluations(run, evals, step, window, live)
    wall_time_s = time.perf_counter() - start_time
    done = epoch_end - epoch * steps_per_epoch - index
    for i, member in enumerate(members):
      if not member.training:
        continue
      member_sums = {k: v[i] for k, v in sums.items()}
      record = epochs.epoch_record(
        step, steps_per_epoch, member_sums, seconds, done * config.batch_size
      )
      evals_i = {name: values[i] for name, values in evals.items() if values}
      _finish_record(member, record, evals_i, wall_time_s)
    for value in sums.values():  # A max_steps stop within an epoch keeps its sums.
      value *= step % steps_per_epoch != 0
    if step % steps_per_epoch == 0:  # early stopping judges whole epochs only
      live = _judge_early_stopping(run, window, live)
    run.best.steps = checkpoints.best_steps(member.records for member in members)
    save(wall_time_s)
    # After the checkpoint: a run stopped in between resumes at this epoch (`check_predictions`).
    for i, member in enumerate(members if outputs else ()):
      record = member.records[-1] if member.records else None
      if record and record["step"] == step and epochs.best_record(member.records) is record:
        _save_predictions(run, i, outputs[i], record)
    window_start, window_steps = time.perf_counter(), 0

  profiler.stop(state)
  return _finish(run, step, already_finished)


def _improves(members: list[Member], validation) -> list[bool]:
  """Whether each member's epoch just evaluated becomes its best (`epochs.best_record`).

  Without a validation split, every epoch does: the best is the last.
  """
  improves = []
  for i, member in enumerate(members):
    candidate = {"kind": "epoch"}
    if validation:
      candidate["validation_accuracy"] = validation[i]["accuracy"]
    improves.append(
      member.training and epochs.best_record([*member.records, candidate]) is candidate
    )
  return improves


def _evaluate_test(run: Run, state, predictions: bool):
  """The test metrics of each member (None without a test split), and with `predictions` each
  member's per-example predictions (else None): one evaluation either way."""
  if not predictions:
    return run.evaluate(state, "test"), None
  return run.predict(state) or (None, None)


def _save_predictions(run: Run, i: int, output: dict[str, np.ndarray], record) -> None:
  """Writes member `i`'s test predictions, made after `record`'s step (process 0 only)."""
  if not parallel.is_main_process():
    return
  predictions.save(
    run.members[i].folder,
    output["predicted"],
    output["true_probability"],
    run.test_labels[i],
    step=int(record["step"]),
    epoch=record["epoch"],
    num_classes=run.num_classes,
  )


def check_predictions(run: Run, state) -> None:
  """Makes each member's saved test predictions those of its best epoch, at a (re)start.

  The loop saves them after the checkpoint of each epoch that becomes the best, so a run
  stopped in between has the best epoch's checkpoint and older predictions; a resumed run
  whose `max_steps` is larger drops a partial last epoch, and with it perhaps its best; a run
  trained before runs kept predictions has none. Such a member's predictions are made again,
  from the restored state or from its best epoch's checkpoint (kept: `checkpoints.KeepSteps`).
  Where that checkpoint is gone, a warning says so, and a file that is not the best epoch's
  is removed. Predictions that match, or a run without a test split, cost a file's read.
  Every process evaluates alike; process 0 writes.
  """
  step = int(np.ravel(state.step)[0])
  has_test = len(run.test_labels[0]) > 0
  for i, member in enumerate(run.members):
    if member.diverged:
      continue
    best = epochs.best_record(member.records)
    saved = _saved_step(member.folder)
    if best is not None and has_test and saved == int(best["step"]):
      continue
    if best is None or not has_test:
      if saved is not None:
        _remove_predictions(member, "no epoch of the run as restored backs them")
      continue
    try:
      if int(best["step"]) == step:
        at = state
      else:
        params, at_step = checkpoints.restore_params(member.folder, "best")
        if at_step != int(best["step"]):
          raise CheckpointError(f"the best checkpoint read is step {at_step}")
        at = _with_member_params(state, params, i if run.live is not None else None)
    except CheckpointError as e:
      logging.warning(
        "%s: the test predictions of its best epoch (%s, step %s) cannot be made again: %s",
        member.folder,
        best["epoch"],
        best["step"],
        e,
      )
      if saved is not None:
        _remove_predictions(member, "they are not its best epoch's")
      continue
    logging.info(
      "%s: saving the test predictions of its best epoch (%s, step %s)",
      member.folder,
      best["epoch"],
      best["step"],
    )
    _, outputs = _evaluate_test(run, at, True)
    _save_predictions(run, i, outputs[i], best)


def _saved_step(folder: str) -> int | None:
  """The step of a folder's saved test predictions; None without them, -1 where damaged."""
  try:
    return predictions.load(folder).step
  except FileNotFoundError:
    return None
  except (FileFormatError, OSError) as e:
    logging.warning("%s; it is made again", e)
    return -1


def _remove_predictions(member: Member, why: str) -> None:
  if not parallel.is_main_process():
    return
  path = predictions.path(member.folder)
  logging.info("Removing %s: %s", path, why)  # as metrics past the restored step are dropped
  with contextlib.suppress(FileNotFoundError):
    os.unlink(path)


def _with_member_params(state, params, index: int | None):
  """`state` with member `index`'s parameters (a stacked group's), or all of them (None)."""
  if index is None:
    return state.replace(
      params=jax.tree.map(lambda s, p: jax.device_put(p, s.sharding), state.params, params)
    )
  return state.replace(params=jax.tree.map(lambda s, p: s.at[index].set(p), state.params, params))


def _judge_evaluations(run: Run, evals, step: int, window, live):
  """Judges each training member by its evaluation losses after step `step`; returns `live`.

  Finite parameters can be so large that the logits overflow: a validation or
  test loss that is not finite is a divergence (`DivergedError` for a single
  run; in a group, that seed stops training, and its flag in `live` is cleared).
  """
  for i, member in enumerate(run.members):
    losses = [(n, v[i]["loss"]) for n, v in evals.items() if v and member.training]
    split, loss = next(((n, x) for n, x in losses if not math.isfinite(x)), (None, None))
    if split is None:
      continue
    message = epochs.diverged_message(member.config, run.manager, step - 1, loss, split)
    if live is None:
      raise DivergedError(message)
    _diverge(member, message, window[i])
    live = live.at[i].set(False)
  _stop_if_none_trains(run.members)
  return live


def _judge_early_stopping(run: Run, window, live):
  """Stops each training member whose whole epochs meet `epochs.early_stop`; returns `live`.

  A stopped member's flag in `live` (a group's) is cleared and its logging
  window emptied, so that it trains and writes no more.
  """
  stopping, stopped = run.config.early_stopping, []
  for i, member in enumerate(run.members):
    if not member.training:
      continue
    accuracies = epochs.whole_epoch_validation_accuracies(member.records)
    member.stopped = epochs.early_stop(accuracies, stopping.patience, stopping.min_delta)
    if member.stopped is None:
      continue
    stopped.append(member)
    window[i].clear()
    if live is not None:
      live = live.at[i].set(False)
  others = any(member.training for member in run.members)
  for member in stopped:
    prefix = f"{member.name}: " if member.name else ""
    rest = " The group's other seeds train on." if others else ""
    logging.info("%sstopped early: %s.%s", prefix, member.stopped.reason, rest)
  return live


def _restore_stops(run: Run, live):
  """Marks the members that stopped early before the restored checkpoint; returns `live`."""
  stops = stopped_members(run.loop, [member.name for member in run.members], run.workdir)
  for i, member in enumerate(run.members):
    member.stopped = stops.get(member.name)
    if member.stopped is not None and live is not None:
      live = live.at[i].set(False)
  return live


def stopped_members(
  loop: dict[str, Any], names: list[str], workdir: str
) -> dict[str, epochs.EarlyStop]:
  """The members that stopped early before a checkpoint: {"seed 3": stop}, from its `loop`.

  `names` are the run's members ("" for a single run). A checkpoint saved
  before early stopping existed has none.

  Raises:
    CheckpointError: the checkpoint's "stopped_early" field is not an object
      whose keys are members of this run and whose values are an epoch
      (>= 1), the last epoch that improved (>= 0) and a reason.
  """

  def whole(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least

  def valid(stop) -> bool:
    return (
      isinstance(stop, dict)
      and set(stop) == {"epoch", "improved_epoch", "reason"}
      and whole(stop["epoch"], 1)
      and whole(stop["improved_epoch"], 0)
      and isinstance(stop["reason"], str)
      and bool(stop["reason"])
    )

  members = ", ".join(repr(n) for n in names)
  stopped = _members_field(
    loop,
    "stopped_early",
    names,
    workdir,
    valid,
    f"an object of early stops for the members {members}",
  )
  return {name: epochs.EarlyStop(**stop) for name, stop in stopped.items()}


def _stop_if_none_trains(members: list[Member]) -> None:
  """Raises `SeedsDivergedError` when every seed of a group has diverged."""
  if all(member.diverged for member in members):
    raise SeedsDivergedError([DivergedError(member.diverged) for member in members])


def _finish(run: Run, step: int, already_finished: bool) -> list[dict[str, Any]]:
  """Closes the run's files, logs each member's result, and returns the results (see `fit`)."""
  members = run.members
  run.manager.wait_until_finished()
  run.manager.close()
  for member in members:
    member.writer.close()
  results = [
    DivergedError(member.diverged)
    if member.diverged
    else epochs.summarize(member.records) | run.result | epochs.early_stop_fields(member.stopped)
    for member in members
  ]
  done = "Run already finished" if already_finished else "Finished"
  for member, result in zip(members, results, strict=True):
    prefix = f"{member.name}: " if member.name else ""
    if isinstance(result, DivergedError):
      logging.error("%s", result)
      continue
    # The log said why when the member stopped; a rerun says it here.
    why = f" ({member.stopped.reason})" if member.stopped and already_finished else ""
    at = result["step"] if member.stopped else step  # a seed that stopped: its own last step
    shown = display.metrics_line({k: v for k, v in result.items() if k != "stop_reason"})
    logging.info("%s%s at step %d%s: %s", prefix, done, at, why, shown)
  if any(member.diverged for member in members):
    raise SeedsDivergedError(results)
  return results


def _diverge(member: Member, message: str, window: list[float]) -> None:
  """Marks a seed of a group diverged (`message`, prefixed with its name); empties its window."""
  member.diverged = f"{member.name}: {message}"
  window.clear()
  logging.error("%s The group's other seeds train on.", member.diverged)


def diverged_members(loop: dict[str, Any], names: list[str], workdir: str) -> dict[str, str]:
  """The seeds of a group that diverged before its checkpoint: {"seed 3": why}, from `loop`.

  Raises:
    CheckpointError: the checkpoint's "diverged" field is not an object whose
      keys are seeds of this group (never a single run's) and whose values are
      messages.
  """
  seeds = ", ".join(n for n in names if n) or "(none: a single run)"
  return _members_field(
    loop,
    "diverged",
    names,
    workdir,
    lambda why: isinstance(why, str) and bool(why),
    f"an object of messages for the seeds {seeds}",
    lambda name: name != "",
  )


def _members_field(loop, field: str, names, workdir: str, valid, expected: str, member=None):
  """`loop[field]` ({} when absent), checked: an object of `valid` values keyed by `names`.

  Raises:
    CheckpointError: it is not, in one line naming the field and `expected`.
  """
  value = loop.get(field, {})
  fits = isinstance(value, dict) and all(
    isinstance(k, str) and k in names and (member is None or member(k)) and valid(v)
    for k, v in value.items()
  )
  if not fits:
    raise CheckpointError(
      f"the checkpoint restored from {os.path.join(workdir, checkpoints.CHECKPOINTS)}: field "
      f"{field} of its loop/metadata is {str(value)[:60]}, not {expected}; use a new --workdir, "
      "or delete its checkpoints to start fresh"
    )
  return dict(value)


def epoch_sums(loop: dict[str, Any], num_members: int, batch_size: int) -> dict[str, np.ndarray]:
  """The epoch's summed metrics so far, one entry per member, from a checkpoint's `loop`.

  Empty at a fresh start. Checkpoints written before the steps returned sums
  held the per-step mean losses' sum, the correct predictions and the steps
  ("epoch_loss_sum", "epoch_correct", "epoch_steps"): they are read as the
  same sums, and those keys leave `loop`.
  """
  old = {
    k: loop.pop(f"epoch_{k}") for k in ("loss_sum", "correct", "steps") if f"epoch_{k}" in loop
  }
  if len(old) == 3:
    saved = {
      "loss": np.multiply(old["loss_sum"], batch_size),
      "accuracy": old["correct"],
      "count": np.multiply(old["steps"], batch_size),
    }
  else:
    saved = loop.get("epoch_sums", {})
  return {k: np.zeros(num_members) + np.asarray(v, np.float64) for k, v in saved.items()}


def _next_stop(config: ml_collections.ConfigDict, step: int, epoch_end: int) -> int:
  """The next step that needs the host: a log line, a checkpoint or the epoch's end."""
  stops = [epoch_end, step + config.steps_per_call]
  for every in (config.log_every_steps, config.checkpoint_every_steps):
    if every:
      stops.append((step // every + 1) * every)
  return min(stops)


def _finish_record(member: Member, record: dict[str, Any], evals, wall_time_s: float) -> None:
  """Adds evaluation metrics and the wall time to an epoch's record, then writes and logs it."""
  for name, metrics in evals.items():
    record |= {f"{name}_{k}": v for k, v in metrics.items()}
  record["wall_time_s"] = wall_time_s
  member.writer.write(record)
  member.records.append(record)
  prefix = f"{member.name}: " if member.name else ""
  epoch_text = display.epoch_number(record["epoch"])
  logging.info("%sepoch %s: %s", prefix, epoch_text, display.metrics_line(record))


def _write_window(run: Run, step: int, window: list[list[float]], steps: int, seconds: float):
  """Writes each member's "train" record of a logging window, logs progress, empties `window`."""
  rate = steps * run.config.batch_size / seconds
  for member, losses in zip(run.members, window, strict=True):
    if not member.training:
      continue
    member.writer.write(
      {
        "kind": "train",
        "step": step,
        "epoch": step / run.steps_per_epoch,
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "train_examples_per_sec": rate,
      }
    )
  losses = [loss for member_losses in window for loss in member_losses]  # the seeds that train
  _log_progress(step, run, float(np.mean(losses)), rate, seconds / steps)
  for losses in window:
    losses.clear()


def _log_progress(step: int, run: Run, loss: float, rate: float, seconds_per_step):
  epoch = (step - 1) // run.steps_per_epoch
  in_epoch = step - epoch * run.steps_per_epoch
  epoch_eta = (run.steps_per_epoch - in_epoch) * seconds_per_step
  run_eta = (run.total_steps - step) * seconds_per_step
  logging.info(
    "epoch %d step %d/%d (%.0f%%): train_loss=%.4f, %s examples/s, ETA epoch %s, run %s",
    epoch + 1,
    in_epoch,
    run.steps_per_epoch,
    100 * in_epoch / run.steps_per_epoch,
    loss,
    f"{rate:,.0f}",
    display.duration(epoch_eta),
    display.duration(run_eta),
  )
