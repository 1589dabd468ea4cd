"""A run's directory: its config, metrics, TensorBoard events, checkpoints and lock.

A workdir written by `train.train_and_evaluate` holds:
- `config.json`: the resolved config of the run;
- `metrics.jsonl`: one JSON object per logged step or finished epoch;
- TensorBoard event files, with the same scalars;
- `checkpoints/<step>/`: Orbax checkpoints of the `TrainState` and the loop's
  counters;
- `.lock`: held while a process writes there.

A group of seeds trained together (`convnet.seeds`) keeps one `config.json`
and `metrics.jsonl` per seed in `seed_<s>/`, and one stacked checkpoint in the
group's own `checkpoints/`. Everything here writes atomically: a file is
either the old one or the new one, never half of each.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from convnet.errors import CheckpointError, DivergedError, WorkdirError, WorkdirInUseError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
SEED_DIR = re.compile(r"seed_(-?\d+)")  # a seed's folder in a group trained together
# Config fields that change what a run logs, saves or traces, and never its numbers.
RESULT_NEUTRAL = ("log_every_steps", "checkpoint_every_steps", "profile_steps")
# Config fields that may change between a run and its resumption: those, the run's length, and
# the devices (which change results by float rounding only).
RESUMABLE_CHANGES = (*RESULT_NEUTRAL, "num_epochs", "max_steps", "mesh_shape")


# ----------------------------------------------------------------------------
# Files


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
  """Opens a temporary file beside `path`, and renames it to `path` when the block ends.

  `mode` is "w" (text) or "wb" (bytes). The data is flushed to disk before the
  rename. If the block raises, the temporary file is removed and `path` is left
  as it was.
  """
  folder, name = os.path.split(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
  try:
    os.fchmod(fd, 0o666 & ~_umask())  # what open() gives a new file; mkstemp's is 0600
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def make_dir(path: str, what: str = "--workdir") -> str:
  """Makes the folder `path` (and its parents) if it is missing; returns it as an absolute path.

  Raises:
    WorkdirError: a file stands where a folder must be, or the folder cannot
      be made; `what` names the flag or setting that gave `path`.
  """
  path = os.path.abspath(path)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    reason = e.strerror or type(e).__name__
    raise WorkdirError(f"{what}={path}: cannot make this folder ({reason}); name another") from None
  return path


def atomic_write(path: str, text: str) -> None:
  """Writes `text` to `path` atomically (see `atomic_open`)."""
  with atomic_open(path) as f:
    f.write(text)


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds `workdir/.lock` while a run writes there; another run on it stops at once.

  The lock is an `fcntl.flock`, which the system drops when its process ends,
  however it ends: a lock left by a dead process never blocks.

  Raises:
    WorkdirInUseError: another live process holds the lock; the message names it.
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


# ----------------------------------------------------------------------------
# The config


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the resolved config to `workdir/config.json`."""
  atomic_write(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2) + "\n")


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir/config.json`.

  Raises:
    CheckpointError: the file is missing or cannot be read.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    if os.path.isdir(workdir) and any(SEED_DIR.fullmatch(n) for n in os.listdir(workdir)):
      raise CheckpointError(
        f"{workdir} holds a group of seeds trained together: name one of its seed_<s>/ folders"
      )
    raise CheckpointError(
      f"{workdir} has no {CONFIG_FILE}: it is not the workdir of a run of convnet.main, "
      "nor a seed_<s>/ folder of convnet.seeds or convnet.sweep"
    )
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f), type_safe=False)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path} cannot be read: {e}") from None


def check_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a workdir whose run was made with another config.

  Fields in `RESUMABLE_CHANGES` may differ; a workdir without `config.json`
  passes.

  Raises:
    CheckpointError: `config.json` cannot be read, or other fields differ (all
      of them are named, with both values).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(
      f"{path} cannot be read ({e}); move it away or use a new --workdir to start fresh"
    ) from None
  changed = changed_fields(saved, config)
  if changed:
    raise CheckpointError(
      f"{workdir} holds checkpoints of a run with another config:\n  "
      + "\n  ".join(changed)
      + f"\nUse a new --workdir, or delete {workdir} to start fresh."
    )


def changed_fields(
  saved: Mapping[str, Any],
  config: ml_collections.ConfigDict,
  allowed: tuple[str, ...] = RESUMABLE_CHANGES,
) -> list[str]:
  """The fields where `config` differs from a `saved` config (as JSON), but for `allowed` ones.

  Each as "field: saved value (saved) vs value now (now)"; a field one of the
  two lacks reads "<absent>". [] when the two configs agree.
  """
  saved = flatten(saved)
  now = flatten(json.loads(config.to_json_best_effort()))
  return [
    f"{k}: {saved.get(k, '<absent>')!r} (saved) vs {now.get(k, '<absent>')!r} (now)"
    for k in sorted(set(saved) | set(now))
    if saved.get(k) != now.get(k) and k not in allowed
  ]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """A nested mapping as {"a.b.c": value}, with tuples made lists so that both compare equal."""
  flat = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      flat.update(flatten(v, f"{prefix}{k}."))
    else:
      flat[f"{prefix}{k}"] = json.loads(json.dumps(v))
  return flat


# ----------------------------------------------------------------------------
# Metrics


def read_metrics(workdir: str, last_step: float = math.inf, rewrite: bool = False):
  """The records of `workdir/metrics.jsonl` up to `last_step`, as a list of dicts.

  Records past `last_step` and a torn last line left by a crash are dropped.
  With `rewrite` (the run that resumes from the checkpoint of `last_step`),
  the file is rewritten to match, so that the resumed run appends no step
  twice; without it the file is only read. A missing file gives [].
  """
  path = os.path.join(workdir, METRICS_FILE)
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
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))
  return records


# TensorBoard's scalars: each tag holds one statistic. Logged steps ("train" records) give the
# mean over their logging window; epoch records give the whole epoch's means and evaluations.
TAGS = {
  "train": {"train_loss": "train/loss", "train_examples_per_sec": "train/examples_per_sec"},
  "epoch": {
    "train_loss": "epoch/train_loss",
    "train_accuracy": "epoch/train_accuracy",
    "train_examples_per_sec": "epoch/train_examples_per_sec",
    "validation_loss": "validation/loss",
    "validation_accuracy": "validation/accuracy",
    "test_loss": "test/loss",
    "test_accuracy": "test/accuracy",
    "wall_time_s": "epoch/wall_time_s",
  },
}
# The scalars that TensorBoard's HParams view shows beside each run's hyperparameters.
HPARAMS_METRICS = ("validation/accuracy", "validation/loss", "test/accuracy", "test/loss")


def hparams(config: ml_collections.ConfigDict) -> dict[str, float | int | str | bool]:
  """The config as TensorBoard's HParams view takes it: dotted names, tuples as text."""
  flat = flatten(json.loads(config.to_json_best_effort()))
  return {
    k: v if isinstance(v, bool | int | float | str) else json.dumps(v) for k, v in flat.items()
  }


class MetricsWriter:
  """Appends records to `workdir/metrics.jsonl` (one write a line) and to TensorBoard.

  A record's numbers go to TensorBoard as scalars at its "step", under the
  tags of `TAGS` (one statistic a tag). With a `config`, the run's
  hyperparameters go to TensorBoard's HParams view too (tensorboardX), with
  validation and test accuracy and loss as its metrics, so that the runs of a
  sweep can be compared there. A writer that is not `enabled` (in processes
  other than 0) writes nothing.
  """

  def __init__(
    self, workdir: str, enabled: bool = True, config: ml_collections.ConfigDict | None = None
  ):
    self._workdir = workdir
    self._enabled = enabled
    self._config = config
    self._tensorboard = None  # opened at the first record, so that a finished run adds no file

  def _open(self):
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams as hparams_summaries

    self._tensorboard = SummaryWriter(self._workdir)
    if self._config is not None:
      metrics = {tag: 0.0 for tag in HPARAMS_METRICS}
      for summary in hparams_summaries(hparams(self._config), metrics):
        self._tensorboard.file_writer.add_summary(summary)

  def write(self, record: Mapping[str, Any]) -> None:
    if not self._enabled:
      return
    if self._tensorboard is None:
      self._open()
    with open(os.path.join(self._workdir, METRICS_FILE), "a") as f:
      f.write(json.dumps(record) + "\n")
    tags = TAGS.get(record.get("kind"), {})
    for key, value in record.items():
      if key in tags and isinstance(value, float | int):
        self._tensorboard.add_scalar(tags[key], value, record["step"])
    self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


# ----------------------------------------------------------------------------
# Checkpoints


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """Orbax's manager of `workdir/checkpoints`, keeping the newest `keep` checkpoints."""
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), CHECKPOINTS),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False
    ),
  )


def _restore_step(manager: ocp.CheckpointManager, step: int, state_args, what: str):
  """Restores checkpoint `step`; whatever Orbax raises becomes one CheckpointError line."""
  try:
    return manager.restore(
      step, args=ocp.args.Composite(state=state_args, loop=ocp.args.JsonRestore())
    )
  except Exception as e:  # Orbax raises many kinds for a bad or foreign checkpoint.
    directory = os.path.join(os.fspath(manager.directory), str(step))
    detail = str(e).splitlines()[0][:300] if str(e) else ""
    raise CheckpointError(
      f"checkpoint {directory} cannot be {what} ({type(e).__name__}: {detail})"
    ) from None


def _check_fits(manager: ocp.CheckpointManager, step: int, abstract) -> None:
  """Refuses a checkpoint whose arrays differ from `abstract`'s, before any is read.

  Orbax reads a checkpoint's arrays concurrently: when one of them does not
  fit, the restore raises while the other reads are still in flight, and those
  print "Exception ignored in <coroutine ...>" or "Event loop is closed"
  tracebacks later, as Python exits, after the run's one-line error. The
  checkpoint's metadata says every array's shape without reading any.
  """
  directory = manager.directory / str(step)
  try:
    metadata = ocp.StandardCheckpointHandler().metadata(directory / "state")
    saved = ocp.tree.to_flat_dict(metadata.tree)
  except Exception:  # Unreadable metadata: the restore itself names the problem.
    return
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
      f"checkpoint {directory} cannot be restored into this model ({problems[0]}{more})"
    )


def restore(manager: ocp.CheckpointManager, state, loop: dict[str, Any]):
  """The latest checkpoint's (state, loop), shaped like `state`; or both as given, if none.

  Raises:
    CheckpointError: the checkpoint does not fit `state` (another model); the
      message says how to start fresh.
  """
  step = manager.latest_step()
  if step is None:
    return state, loop
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    _check_fits(manager, step, abstract)
    restored = _restore_step(
      manager, step, ocp.args.StandardRestore(abstract), "restored into this model"
    )
  except CheckpointError as e:
    raise CheckpointError(
      f"{e}. Use a new --workdir, or delete {manager.directory} to start fresh."
    ) from None
  logging.info("Resumed from checkpoint at step %d", step)
  return restored.state, dict(restored.loop)


def save(manager: ocp.CheckpointManager, state, loop: dict[str, Any]) -> None:
  """Saves the state, unless this step is saved already; non-finite parameters never are.

  `state` may be stacked along a leading axis (seeds trained together), all at
  one step.

  Raises:
    DivergedError: a parameter is NaN or infinite; the last checkpoint is kept.
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


def seed_dir(group_dir: str, seed: int) -> str:
  """The folder of one seed of a group trained together."""
  return os.path.join(group_dir, f"seed_{seed}")


def _checkpoint_dir(workdir: str) -> tuple[str, int | None]:
  """The checkpoints of a run; for one seed of a group, the group's and the seed."""
  own = os.path.join(workdir, CHECKPOINTS)
  if os.path.isdir(own):
    return own, None
  seed = SEED_DIR.fullmatch(os.path.basename(os.path.normpath(workdir)))
  group = os.path.join(os.path.dirname(os.path.normpath(workdir)), CHECKPOINTS)
  if seed and os.path.isdir(group):
    return group, int(seed[1])
  raise CheckpointError(f"{workdir} has no {CHECKPOINTS}/ (nor its group's): train it first")


def _group_seeds(group_dir: str, loop: Mapping[str, Any]) -> list[int]:
  """The seeds of a group in the order they are stacked."""
  if "seeds" in loop:
    return [int(s) for s in loop["seeds"]]
  # Groups saved before the order was recorded stacked their seeds in sweep order, ascending.
  names = [SEED_DIR.fullmatch(n) for n in os.listdir(group_dir)]
  return sorted(int(m[1]) for m in names if m)


def restore_params(workdir: str) -> tuple[Any, int]:
  """The parameters and step of a workdir's latest checkpoint.

  `workdir` is a `convnet.main` workdir, or one `seed_<s>/` of a group, whose
  parameters are taken out of the group's stacked checkpoint.

  Raises:
    CheckpointError: there is no checkpoint, it cannot be read, or the seed is
      not in its group.
  """
  directory, seed = _checkpoint_dir(os.path.abspath(workdir))  # Orbax takes absolute paths only
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    step = manager.latest_step()
    if step is None:
      raise CheckpointError(f"{directory} holds no checkpoint: train the run first")
    restored = _restore_step(manager, step, ocp.args.StandardRestore(), "read")
  finally:
    manager.close()
  params = restored.state["params"]
  if seed is not None:
    seeds = _group_seeds(os.path.dirname(directory), restored.loop)
    if seed not in seeds:
      raise CheckpointError(f"seed {seed} is not one of the seeds {seeds} saved in {directory}")
    params = jax.tree.map(lambda x: x[seeds.index(seed)], params)
  return params, step
