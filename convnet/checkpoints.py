"""A run's Orbax checkpoints: the newest ones, and the one behind the headline number.

`WORKDIR/checkpoints/<step>/` holds the `TrainState` ("state") and the loop's
counters ("loop", JSON). The manager keeps the newest `checkpoint_keep`
checkpoints and, beside them, the checkpoint of each member's best epoch by
validation accuracy: the epoch whose test accuracy the results report as "at
best validation" (`epochs.best_record`, the first of ties). Its parameters
stay readable after the run: `restore_params(workdir, "best")`.

A group of seeds trained together keeps one stacked checkpoint per step, and
the best epoch of every seed.

Every restore is checked: the loop's fields must have the types and ranges the
loop reads (`checks.loop_problem`), and the arrays must match the BLAKE2b digest saved
with them ("state_blake2b", `checks.state_digest`). A checkpoint that fails is damaged:
the run passes it over for the newest good one, as for one that cannot be read.

Before Orbax opens a step folder (to list, restore or read it), its entries are
checked (`checks.step_problem`): only folders and regular files, and the JSON files
Orbax parses of the types it reads. Orbax never sees a step folder that fails:
a named pipe would hang it, and a bad `_CHECKPOINT_METADATA` would raise
inside it; such a checkpoint is damaged too.
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
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from convnet import checkpoint_checks as checks
from convnet import epochs, files, logs
from convnet import workdir as workdir_lib
from convnet.errors import CheckpointError, DivergedError, NoCheckpointsError, WorkdirError

CHECKPOINTS = "checkpoints"
WHICH = ("latest", "best")
# How many times a reader reads the newest checkpoint again, when a live run replaced the one read.
_REREADS = 3


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
  Damaged step folders (`checks.step_problem`) are not shown to Orbax: `restore` passes
  them over and renames them.

  Raises:
    WorkdirError: a symbolic link stands where Orbax writes or deletes (see `checks.check_links`).
    CheckpointError: every checkpoint in it is damaged; the message names the newest.
  """
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
  checks.check_links(directory)
  policies = [ocp.checkpoint_managers.LatestN(keep), best or KeepSteps()]
  listing = checks.GoodSteps()
  made = ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      create=True,
      enable_async_checkpointing=False,
      cleanup_tmp_directories=True,
      step_name_format=listing,
    ),
  )
  if listing.damaged and not made.all_steps():  # a run would start afresh over them
    made.close()
    step = max(listing.damaged)
    raise CheckpointError(
      f"{_damaged_checkpoint(directory, step, listing.damaged[step])}. {_none_readable(directory)}"
    )
  return made


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


def _damaged(directory, step: int, problem: str) -> CheckpointError:
  return CheckpointError(f"checkpoint {step} of {directory}: {problem} (a damaged file)")


def _damaged_checkpoint(directory, step: int, problem: str) -> CheckpointError:
  """A step folder that fails `checks.step_problem`, named."""
  return CheckpointError(f"checkpoint {step} of {directory}: {problem} (a damaged checkpoint)")


def _none_readable(directory) -> str:
  return (
    f"No checkpoint in {directory} can be read: use a new --workdir, or delete {directory} "
    "to start fresh."
  )


def _check_restored(directory, step: int, state, loop) -> dict[str, Any]:
  """`loop` checked (`checks.loop_problem`), and `state` against the digest saved in it; the loop
  is returned without the digest.

  A checkpoint saved before digests were kept is restored unchecked, with a warning.

  Raises:
    CheckpointError: the loop or the arrays are damaged; the message names the checkpoint.
  """
  problem = checks.loop_problem(loop, checks.num_members(state))
  if problem:
    raise _damaged(directory, step, problem)
  loop = dict(loop)
  saved = loop.pop(checks.STATE_DIGEST, None)
  if saved is None:
    logging.warning(
      "checkpoint %d of %s was saved without a digest of its arrays (by an earlier version): "
      "its arrays are restored unchecked",
      step,
      directory,
    )
  elif checks.state_digest(state) != saved:
    raise _damaged(directory, step, "its arrays do not match the digest saved with them")
  return loop


def _restore_step(manager: ocp.CheckpointManager, step: int, state_args, what: str):
  """Restores checkpoint `step`; whatever Orbax raises becomes one CheckpointError line."""
  try:
    with _quiet_if_it_fails():
      return manager.restore(
        step, args=ocp.args.Composite(state=state_args, loop=ocp.args.JsonRestore())
      )
  except Exception as e:  # Orbax raises many kinds for a bad or foreign checkpoint.
    directory = os.path.join(os.fspath(manager.directory), str(step))
    raise CheckpointError(f"checkpoint {directory} cannot be {what} ({checks.reason(e)})") from None


class _ReaderNotices(python_logging.Filter):
  """Drops Orbax's warnings that a manager made to read a directory will only read it, and that
  a step's `checks.STEP_METADATA` is missing: a live run deleted it after it was listed."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    message = record.getMessage()
    return not message.startswith(("Given directory is read only", "Metadata file does not exist"))


@contextlib.contextmanager
def _reader_notices_dropped():
  notices = _ReaderNotices()
  absl_logger = python_logging.getLogger("absl")
  absl_logger.addFilter(notices)
  try:
    yield
  finally:
    absl_logger.removeFilter(notices)


def _reader(directory: str) -> tuple[ocp.CheckpointManager, checks.GoodSteps]:
  """A manager that only reads `directory`'s good steps, and its listing (`checks.GoodSteps`, whose
  `damaged` it does not show); made without Orbax's warnings that it will only read."""
  listing = checks.GoodSteps()
  options = ocp.CheckpointManagerOptions(
    read_only=True, save_interval_steps=0, create=False, step_name_format=listing
  )
  with _reader_notices_dropped():
    return ocp.CheckpointManager(directory, options=options), listing


def read_loop(workdir: str) -> tuple[int, dict[str, Any]] | None:
  """The newest good checkpoint's step and loop counters, without its arrays; None without one.

  A checkpoint whose loop cannot be read, or fails `checks.loop_problem` or `checks.step_problem`,
  is passed over.
  """
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
  if not has_checkpoints(workdir):
    return None
  reader, listing = _reader(directory)
  damaged = {s: _damaged_checkpoint(directory, s, p) for s, p in listing.damaged.items()}
  try:
    for step in sorted({*reader.all_steps(), *damaged}, reverse=True):
      if step in damaged:
        logging.warning("%s: passed over for an older checkpoint", damaged[step])
        continue
      try:
        restored = reader.restore(step, args=ocp.args.Composite(loop=ocp.args.JsonRestore()))
      except Exception:  # An unreadable checkpoint: the one before it may do.
        continue
      problem = checks.loop_problem(restored.loop)
      if problem:
        logging.warning(
          "%s: passed over for an older checkpoint", _damaged(directory, step, problem)
        )
        continue
      return step, {k: v for k, v in restored.loop.items() if k != checks.STATE_DIGEST}
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
  """The newest good checkpoint's (state, loop), shaped like `state`; both as given if none.

  A checkpoint that cannot be read (an empty or incomplete step folder), or
  that is damaged (its files, `checks.step_problem`; its loop's fields,
  `checks.loop_problem`; or its arrays against their digest,
  `checks.state_digest`), is passed over for the one before it, and renamed
  `<step>.unreadable-<time>` once an older one has been restored, so that the
  run can save that step again; nothing is deleted. The run holds
  its workdir's lock: no other process writes there.

  Raises:
    CheckpointError: a checkpoint of another model (nothing is read), or none
      of the checkpoints can be read and checked; the message names the
      newest, what is wrong with it, and how to start fresh.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  unreadable = []
  damaged = checks.damaged_steps(manager.directory)  # not listed by Orbax (see `manager`)
  for step in sorted({*manager.all_steps(), *damaged}, reverse=True):
    if step in damaged:
      unreadable.append((step, _damaged_checkpoint(manager.directory, step, damaged[step])))
      continue
    if not _check_fits(manager, step, abstract):  # raises for another model's checkpoint
      unreadable.append((step, f"checkpoint {manager.directory / str(step)} is incomplete"))
      continue
    try:
      restored = _restore_step(manager, step, ocp.args.StandardRestore(abstract), "restored")
      restored_loop = _check_restored(manager.directory, step, restored.state, restored.loop)
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
    return restored.state, restored_loop
  if unreadable:
    raise CheckpointError(f"{unreadable[0][1]}. {_none_readable(manager.directory)}")
  return state, loop


def save(manager: ocp.CheckpointManager, state, loop: dict[str, Any]) -> None:
  """Saves the state, unless this step is saved already; non-finite parameters never are.

  `state` may be stacked along a leading axis (seeds trained together), all at
  one step. `loop` is saved beside it with the digest of its arrays added
  (`checks.STATE_DIGEST`), which every restore checks.

  Raises:
    DivergedError: a parameter is NaN or infinite; the last checkpoint is kept.
    WorkdirError: the checkpoint cannot be written (a full disk, say); the
      last complete checkpoint is kept, and the same command resumes from it.
      Or a symbolic link stands where Orbax deletes an old step (`checks.check_links`).
  """
  step = int(np.ravel(state.step)[0])
  if manager.latest_step() == step:
    return
  # On the host: one jitted check per parameter's shape would compile on the first save.
  if not all(np.isfinite(checks.host_array(x)).all() for x in jax.tree.leaves(state.params)):
    raise DivergedError(
      f"the parameters stopped being finite by step {step}; nothing was saved, and the "
      f"checkpoint of step {manager.latest_step()} is kept. Try a lower optimizer.learning_rate."
    )
  loop = dict(loop) | {checks.STATE_DIGEST: checks.state_digest(state)}
  args = ocp.args.Composite(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop))
  try:
    with logs.muted("/orbax/"), _quiet_if_it_fails():
      manager.save(step, args=args)
  except Exception as e:  # Orbax wraps the OSError of a full disk in several kinds.
    if isinstance(manager.directory, str | os.PathLike):
      checks.check_links(os.fspath(manager.directory))  # a link put there since: not a full disk
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
  """The folder of one seed of a group trained together (`convnet.seeds.train_seeds`)."""
  return os.path.join(group_dir, f"seed_{seed}")


def member_dir(group_dir: str, name: str) -> str:
  """The folder of one named member of a group trained together (`convnet.seeds.train_group`)."""
  return os.path.join(group_dir, name)


def _checkpoint_dir(workdir: str) -> tuple[str, str | None]:
  """The checkpoints of a run; for one member of a group, the group's and the member's name."""
  own = os.path.join(workdir, CHECKPOINTS)
  if os.path.isdir(own):
    return own, None
  group = os.path.join(os.path.dirname(os.path.normpath(workdir)), CHECKPOINTS)
  if os.path.isdir(group):
    return group, os.path.basename(os.path.normpath(workdir))
  raise NoCheckpointsError(f"{workdir} has no {CHECKPOINTS}/ (nor its group's): train it first")


def _member_index(directory: str, name: str, loop: Mapping[str, Any]) -> int:
  """Where the member in folder `name` is stacked in the group checkpointed in `directory`."""
  if "members" in loop:  # a group of named members
    if name not in loop["members"]:
      raise CheckpointError(
        f"{name} is not one of the members {loop['members']} saved in {directory}"
      )
    return loop["members"].index(name)
  seed = workdir_lib.SEED_DIR.fullmatch(name)
  if seed is None:
    raise NoCheckpointsError(
      f"{os.path.join(os.path.dirname(directory), name)} has no {CHECKPOINTS}/ and is not a "
      f"member of the group in {os.path.dirname(directory)}: train it first"
    )
  seeds = _group_seeds(os.path.dirname(directory), loop)
  if int(seed[1]) not in seeds:
    raise CheckpointError(f"seed {seed[1]} is not one of the seeds {seeds} saved in {directory}")
  return seeds.index(int(seed[1]))


def _group_seeds(group_dir: str, loop: Mapping[str, Any]) -> list[int]:
  """The seeds of a group in the order they are stacked."""
  if "seeds" in loop:
    return [int(s) for s in loop["seeds"]]
  # Groups saved before the order was recorded stacked their seeds in sweep order, ascending.
  names = [workdir_lib.SEED_DIR.fullmatch(n) for n in os.listdir(group_dir)]
  return sorted(int(m[1]) for m in names if m)


def restore_params(workdir: str, which: str = "latest") -> tuple[Any, int]:
  """The parameters and step of a workdir's newest good checkpoint, or of its best epoch's.

  `workdir` is a `convnet.main` workdir, or one member's folder of a group
  (`seed_<s>/`, or `<name>/` of `convnet.seeds.train_group`), whose parameters
  are taken out of the group's stacked checkpoint. `which` is
  "latest" or "best": the epoch of best validation accuracy, whose test
  accuracy `train_and_evaluate` reports as `test_accuracy_at_best_validation`.

  Each checkpoint read is checked as `restore` checks it. For "latest", one
  that cannot be read or is damaged is named in a warning and passed over for
  the one before it. A run may be training in `workdir` meanwhile, saving
  checkpoints and deleting old ones: when the checkpoint being read is
  replaced (a newer one, or a new best epoch), the newest is read instead,
  once. This only reads: nothing in the workdir is renamed or written.

  Raises:
    CheckpointError: there is no checkpoint, none can be read and checked, the
      best epoch's was not kept or is damaged, or the seed is not in its group.
  """
  if which not in WHICH:
    raise CheckpointError(f"checkpoint={which!r} is not one of {', '.join(WHICH)}")
  directory, member = _checkpoint_dir(os.path.abspath(workdir))  # Orbax takes absolute paths
  state, loop, step = _read_newest_good(workdir, directory, which)
  params = state["params"]
  if member is not None:
    index = _member_index(directory, member, loop)
    params = jax.tree.map(lambda x: x[index], params)
  return params, step


def _candidates(workdir: str, directory: str, which: str, listed: Sequence[int]) -> list[int]:
  """The steps `restore_params` may read, the first preferred: all, newest first, or the best."""
  if not listed:
    raise CheckpointError(f"{directory} holds no checkpoint: train the run first")
  if which == "latest":
    return sorted(listed, reverse=True)
  best = epochs.best_record(workdir_lib.read_metrics(workdir))
  if best is None:
    raise CheckpointError(f"{workdir} has no epoch record yet: there is no best epoch")
  step = int(best["step"])
  if step not in listed:
    raise CheckpointError(
      f"the checkpoint of the best epoch ({best['epoch']}, step {step}) is not in "
      f"{directory}: it was not kept (a run of a version before best checkpoints were "
      "kept) or was removed; use the latest"
    )
  return [step]


def _identity(step_dir: str) -> tuple[int, int] | None:
  """A step folder's inode and modification time, or None where it is gone: what changes
  when a live run deletes or replaces it."""
  try:
    info = os.lstat(step_dir)
  except OSError:
    return None
  return info.st_ino, info.st_mtime_ns


def _listed(
  reader, listing: checks.GoodSteps, workdir: str, directory: str, which: str
) -> list[int]:
  """`_candidates` of what `reader` lists now, damaged steps included (they are named)."""
  return _candidates(workdir, directory, which, sorted({*reader.all_steps(), *listing.damaged}))


def _read_newest_good(workdir: str, directory: str, which: str):
  """(state, loop, step) of the first `_candidates` step that reads and checks; see
  `restore_params`.

  A step that fails to read while a live run changes the checkpoints (the listing
  differs after the failure, or the step folder is gone or changed) was replaced
  while it was read, not damaged: the newest is read again, up to `_REREADS` times,
  then such a step is passed over as the others are.
  """
  for attempt in range(_REREADS + 1):
    reader, listing = _reader(directory)
    try:
      candidates = _listed(reader, listing, workdir, directory, which)
      failed, raced = [], False
      for step in candidates:
        if step in listing.damaged:
          failed.append(_damaged_checkpoint(directory, step, listing.damaged[step]))
          continue
        step_dir = os.path.join(directory, str(step))
        before = _identity(step_dir)
        try:
          restored = _restore_step(reader, step, ocp.args.StandardRestore(), "read")
          loop = _check_restored(directory, step, restored.state, restored.loop)
        except CheckpointError as error:
          with _reader_notices_dropped():
            reader.reload()
          try:
            raced = _listed(reader, listing, workdir, directory, which) != candidates
          except CheckpointError:  # none is left now
            raced = True
          raced = raced or before is None or _identity(step_dir) != before
          replaced = f"checkpoint {step} of {directory} was replaced while it was read (a live run)"
          if raced and attempt < _REREADS:
            logging.warning("%s: reading the newest again", replaced)
            break
          failed.append(CheckpointError(replaced) if raced else error)
          raced = False
          continue
        for error in failed:
          logging.warning("%s: passed over for an older checkpoint (left as it is)", error)
        return restored.state, loop, step
    finally:
      reader.close()
    if not raced:
      break
  more = f". No checkpoint in {directory} can be read" if len(candidates) > 1 else ""
  raise CheckpointError(f"{failed[0]}{more}")
