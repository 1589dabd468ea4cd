"""A run's Orbax checkpoints: the newest ones, and the one behind the headline number.

`WORKDIR/checkpoints/<step>/` holds the `TrainState` ("state") and the loop's
counters ("loop", JSON). The manager keeps the newest `checkpoint_keep`
checkpoints and, beside them, the checkpoint of each member's best epoch by
validation accuracy: the epoch whose test accuracy the results report as "at
best validation" (`epochs.best_record`, the first of ties). Its parameters
stay readable after the run: `restore_params(workdir, "best")`.

A group of seeds trained together keeps one stacked checkpoint per step, and
the best epoch of every seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging as python_logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from convnet import epochs, files, logs
from convnet import workdir as workdir_lib
from convnet.errors import CheckpointError, DivergedError, WorkdirError

CHECKPOINTS = "checkpoints"
WHICH = ("latest", "best")


@dataclasses.dataclass
class KeepSteps:
  """An Orbax preservation policy: keep the checkpoints of `steps`, a set the loop updates."""

  steps: set[int] = dataclasses.field(default_factory=set)

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    return [info.step in self.steps for info in checkpoints]


def manager(workdir: str, keep: int, best: KeepSteps | None = None) -> ocp.CheckpointManager:
  """Orbax's manager of `workdir/checkpoints`: the newest `keep`, and the steps in `best`.

  Temporary folders that a killed save left behind are removed when it opens.
  """
  policies = [ocp.checkpoint_managers.LatestN(keep), best or KeepSteps()]
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), CHECKPOINTS),
    options=ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      create=True,
      enable_async_checkpointing=False,
      cleanup_tmp_directories=True,
    ),
  )


def best_steps(records_per_member: Iterable[Sequence[Mapping[str, Any]]]) -> set[int]:
  """The steps of each member's best epoch (see `epochs.best_record`).

  Also the best of the whole epochs, where a partial one (a `max_steps` stop)
  is best: a resumed run drops that record, and its best is then a whole
  epoch's.
  """
  steps = set()
  for records in records_per_member:
    whole = [r for r in records if not workdir_lib.partial_epoch(r)]
    for best in (epochs.best_record(records), epochs.best_record(whole)):
      if best is not None:
        steps.add(int(best["step"]))
  return steps


def _restore_step(manager: ocp.CheckpointManager, step: int, state_args, what: str):
  """Restores checkpoint `step`; whatever Orbax raises becomes one CheckpointError line."""
  try:
    with _quiet_if_it_fails():
      return manager.restore(
        step, args=ocp.args.Composite(state=state_args, loop=ocp.args.JsonRestore())
      )
  except Exception as e:  # Orbax raises many kinds for a bad or foreign checkpoint.
    directory = os.path.join(os.fspath(manager.directory), str(step))
    detail = str(e).splitlines()[0][:300] if str(e) else ""
    raise CheckpointError(
      f"checkpoint {directory} cannot be {what} ({type(e).__name__}: {detail})"
    ) from None


class _ReadOnlyNotice(python_logging.Filter):
  """Drops Orbax's warning that a manager made to read a directory will only read it."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Given directory is read only")


def _reader(directory: str) -> ocp.CheckpointManager:
  """A manager that only reads `directory`, made without Orbax's warnings that it will only read."""
  options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
  notice = _ReadOnlyNotice()
  absl_logger = python_logging.getLogger("absl")
  absl_logger.addFilter(notice)
  try:
    return ocp.CheckpointManager(directory, options=options)
  finally:
    absl_logger.removeFilter(notice)


def read_loop(workdir: str) -> tuple[int, dict[str, Any]] | None:
  """The newest checkpoint's step and loop counters, without its arrays; None without one."""
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
  if not has_checkpoints(workdir):
    return None
  reader = _reader(directory)
  try:
    for step in sorted(reader.all_steps(), reverse=True):
      try:
        restored = reader.restore(step, args=ocp.args.Composite(loop=ocp.args.JsonRestore()))
      except Exception:  # An unreadable checkpoint: the one before it may do.
        continue
      return step, dict(restored.loop)
  finally:
    reader.close()
  return None


def has_checkpoints(workdir: str) -> bool:
  """Whether `workdir/checkpoints/` holds a step folder, without opening any."""
  directory = os.path.join(workdir, CHECKPOINTS)
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def _check_fits(manager: ocp.CheckpointManager, step: int, abstract) -> bool:
  """Refuses a checkpoint whose arrays differ from `abstract`'s, before any is read.

  Orbax reads a checkpoint's arrays concurrently: when one of them does not
  fit, the restore raises while the other reads are still in flight, and those
  print "Exception ignored in <coroutine ...>" or "Event loop is closed"
  tracebacks later, as Python exits, after the run's one-line error. The
  checkpoint's metadata says every array's shape without reading any.

  Returns:
    Whether the metadata could be read (a checkpoint without it is incomplete).
  """
  directory = manager.directory / str(step)
  try:
    metadata = ocp.StandardCheckpointHandler().metadata(directory / "state")
    saved = ocp.tree.to_flat_dict(metadata.tree)
  except Exception:  # Unreadable metadata: an incomplete checkpoint.
    return False
  wanted = ocp.tree.to_flat_dict(abstract)
  problems = []
  for key in sorted(set(saved) | set(wanted), key=lambda k: (k[0] != "params", k)):
    name = ".".join(key)
    if key not in saved:
      problems.append(f"{name} is not in the checkpoint")
    elif key not in wanted:
      problems.append(f"{name} is in the checkpoint, not in this model")
    elif np.shape(saved[key]) != np.shape(wanted[key]):
      problems.append(
        f"{name} has shape {np.shape(saved[key])} there, {np.shape(wanted[key])} here"
      )
  if problems:
    more = f", and {len(problems) - 1} more" if len(problems) > 1 else ""
    raise CheckpointError(
      f"checkpoint {directory} cannot be restored into this model ({problems[0]}{more}). "
      f"Use a new --workdir, or delete {manager.directory} to start fresh."
    )
  return True


def restore(manager: ocp.CheckpointManager, state, loop: dict[str, Any]):
  """The newest readable checkpoint's (state, loop), shaped like `state`; both as given if none.

  A checkpoint that cannot be read (an empty or incomplete step folder) is
  passed over for the one before it, and renamed `<step>.unreadable-<time>`
  once an older one has been restored, so that the run can save that step
  again; nothing is deleted.

  Raises:
    CheckpointError: a checkpoint of another model (nothing is read), or none
      of the checkpoints can be read; the message says how to start fresh.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  unreadable = []
  for step in sorted(manager.all_steps(), reverse=True):
    if not _check_fits(manager, step, abstract):  # raises for another model's checkpoint
      unreadable.append((step, f"checkpoint {manager.directory / str(step)} is incomplete"))
      continue
    try:
      restored = _restore_step(manager, step, ocp.args.StandardRestore(abstract), "restored")
    except CheckpointError as e:
      unreadable.append((step, e))
      continue
    for bad, error in unreadable:
      moved = f"{manager.directory / str(bad)}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
      logging.warning("%s: passed over for an older checkpoint, and kept as %s", error, moved)
      os.rename(manager.directory / str(bad), moved)
    if unreadable:
      manager.reload()
    logging.info("Resumed from checkpoint at step %d", step)
    return restored.state, dict(restored.loop)
  if unreadable:
    raise CheckpointError(
      f"{unreadable[0][1]}. No checkpoint in {manager.directory} can be read: use a new "
      f"--workdir, or delete {manager.directory} to start fresh."
    )
  return state, loop


def save(manager: ocp.CheckpointManager, state, loop: dict[str, Any]) -> None:
  """Saves the state, unless this step is saved already; non-finite parameters never are.

  `state` may be stacked along a leading axis (seeds trained together), all at
  one step.

  Raises:
    DivergedError: a parameter is NaN or infinite; the last checkpoint is kept.
    WorkdirError: the checkpoint cannot be written (a full disk, say); the
      last complete checkpoint is kept, and the same command resumes from it.
  """
  step = int(np.ravel(state.step)[0])
  if manager.latest_step() == step:
    return
  if not all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state.params)):
    raise DivergedError(
      f"the parameters stopped being finite by step {step}; nothing was saved, and the "
      f"checkpoint of step {manager.latest_step()} is kept. Try a lower optimizer.learning_rate."
    )
  args = ocp.args.Composite(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop))
  try:
    with logs.muted("/orbax/"), _quiet_if_it_fails():
      manager.save(step, args=args)
  except Exception as e:  # Orbax wraps the OSError of a full disk in several kinds.
    latest = manager.latest_step()
    kept = f"the checkpoint of step {latest} is kept" if latest is not None else "none was saved"
    raise WorkdirError(
      f"cannot write the checkpoint of step {step} in {manager.directory} "
      f"({files.reason(e)}); {kept}: {files.remedy(e)} to resume"
    ) from None


@contextlib.contextmanager
def _quiet_if_it_fails():
  """Keeps the reports of the work that a failed Orbax call abandons out of the output.

  When one array of a checkpoint fails to be written or read, Orbax raises and
  closes its event loop while TensorStore still completes the other arrays:
  each completion then finds the loop closed ("Exception ignored ... Event loop
  is closed", with a traceback), and the abandoned reads and tasks are
  reported when they are collected ("Exception ignored in: <coroutine ...>",
  "Future exception was never retrieved", or "RuntimeWarning: coroutine ...
  was never awaited" and its "Enable tracemalloc" line). The one line that
  says what failed is all a user needs. While the block runs, and from its
  first failure on, this process drops those reports, and only those.
  """
  previous = sys.unraisablehook

  def hook(unraisable) -> None:
    error, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
    if not (closed_loop or (code and "/orbax/" in code.co_filename)):  # an abandoned read
      previous(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  except BaseException:
    python_logging.getLogger("asyncio").addFilter(_AbandonedTasks())
    warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)
    raise
  sys.unraisablehook = previous


class _AbandonedTasks(python_logging.Filter):
  def filter(self, record: python_logging.LogRecord) -> bool:
    return "exception was never retrieved" not in str(record.msg)  # Task, Future, _Gathering...


def seed_dir(group_dir: str, seed: int) -> str:
  """The folder of one seed of a group trained together."""
  return os.path.join(group_dir, f"seed_{seed}")


def _checkpoint_dir(workdir: str) -> tuple[str, int | None]:
  """The checkpoints of a run; for one seed of a group, the group's and the seed."""
  own = os.path.join(workdir, CHECKPOINTS)
  if os.path.isdir(own):
    return own, None
  seed = workdir_lib.SEED_DIR.fullmatch(os.path.basename(os.path.normpath(workdir)))
  group = os.path.join(os.path.dirname(os.path.normpath(workdir)), CHECKPOINTS)
  if seed and os.path.isdir(group):
    return group, int(seed[1])
  raise CheckpointError(f"{workdir} has no {CHECKPOINTS}/ (nor its group's): train it first")


def _group_seeds(group_dir: str, loop: Mapping[str, Any]) -> list[int]:
  """The seeds of a group in the order they are stacked."""
  if "seeds" in loop:
    return [int(s) for s in loop["seeds"]]
  # Groups saved before the order was recorded stacked their seeds in sweep order, ascending.
  names = [workdir_lib.SEED_DIR.fullmatch(n) for n in os.listdir(group_dir)]
  return sorted(int(m[1]) for m in names if m)


def restore_params(workdir: str, which: str = "latest") -> tuple[Any, int]:
  """The parameters and step of a workdir's latest checkpoint, or of its best epoch's.

  `workdir` is a `convnet.main` workdir, or one `seed_<s>/` of a group, whose
  parameters are taken out of the group's stacked checkpoint. `which` is
  "latest" or "best": the epoch of best validation accuracy, whose test
  accuracy `train_and_evaluate` reports as `test_accuracy_at_best_validation`.

  Raises:
    CheckpointError: there is no checkpoint, it cannot be read, the best
      epoch's was not kept, or the seed is not in its group.
  """
  if which not in WHICH:
    raise CheckpointError(f"checkpoint={which!r} is not one of {', '.join(WHICH)}")
  directory, seed = _checkpoint_dir(os.path.abspath(workdir))  # Orbax takes absolute paths only
  reader = _reader(directory)
  try:
    step = reader.latest_step()
    if step is None:
      raise CheckpointError(f"{directory} holds no checkpoint: train the run first")
    if which == "best":
      best = epochs.best_record(workdir_lib.read_metrics(workdir))
      if best is None:
        raise CheckpointError(f"{workdir} has no epoch record yet: there is no best epoch")
      step = int(best["step"])
      if step not in reader.all_steps():
        raise CheckpointError(
          f"the checkpoint of the best epoch ({best['epoch']}, step {step}) is not in "
          f"{directory}: it was not kept (a run of a version before best checkpoints were "
          "kept) or was removed; use the latest"
        )
    restored = _restore_step(reader, step, ocp.args.StandardRestore(), "read")
  finally:
    reader.close()
  params = restored.state["params"]
  if seed is not None:
    seeds = _group_seeds(os.path.dirname(directory), restored.loop)
    if seed not in seeds:
      raise CheckpointError(f"seed {seed} is not one of the seeds {seeds} saved in {directory}")
    params = jax.tree.map(lambda x: x[seeds.index(seed)], params)
  return params, step
