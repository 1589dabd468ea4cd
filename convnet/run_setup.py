"""Sets up a run for the loop (`train.fit`): data, model, state, compiled steps, checks.

`set_up` builds a `Run`: the members' data loaded, the model and optimizer
made, the state created (or restored from the workdir's newest checkpoint, by
`resume`, after checking that the run's constants and learning rates are the
saved ones), and the training steps and the evaluation compiling in other
threads meanwhile. What can be refused before any data is read is refused
first: `check_before_starting` (a command's checks: no data, device or write)
and `check_before_loading` (a resumed run's configs and group).
`finished_result` reports a run that finished in a workdir that cannot be
written.
"""

from __future__ import annotations

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
)
from convnet import members as members_lib
from convnet import steps as steps_lib
from convnet import workdir as workdir_lib
from convnet.errors import CheckpointError, WorkdirReadOnlyError


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
  members: list[members_lib.Member]
  manager: Any  # orbax.checkpoint.CheckpointManager
  best: checkpoints.KeepSteps  # the members' best epochs' steps, kept beside the newest
  loop: dict[str, Any]  # saved with each checkpoint: epoch sums, wall time, run constants
  steps_per_epoch: int
  total_steps: int
  result: dict[str, Any]  # fields added to each member's result
  test_labels: list[np.ndarray]  # each member's test labels (empty without a test split)
  num_classes: int
  started_at: float  # time.perf_counter() when the set-up began


def check_before_starting(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The checks of `train.train_and_evaluate` that need no data, device or write, for a command.

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


def finished_result(config, workdir: str, error: WorkdirReadOnlyError) -> dict[str, Any]:
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
  stop = members_lib.stopped_members(loop, [""], workdir).get("")
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
  """A run ready for `train.fit`: data, model, state (restored where there is a checkpoint), steps.

  One member is a single run (`train.train_and_evaluate`), data parallel over the
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
  diverged = members_lib.diverged_members(loop, names, workdir)
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
      members_lib.Member(
        name, workdir_lib.MetricsWriter(d, main, c, r), r, c, diverged.get(name, ""), folder=d
      )
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
