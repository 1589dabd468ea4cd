"""A resumed run is the same run: what it keeps, what may change, and what it refuses.

docs/reliability.md, promises 1, 2, 7 and 9 to 11: run constants
saved and checked, `max_steps` stops that resume exactly under every schedule,
result-neutral changes allowed (and the others refused before any data is
read), the best checkpoint kept, metrics and TensorBoard files that never hold
a step twice, incomplete checkpoints passed over, and write failures reported
in one line.
"""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_train import _events

from convnet import checkpoints, files, input_pipeline, run_setup, sweep_mode, train, trained
from convnet import workdir as workdir_lib
from convnet.errors import CheckpointError, ConfigError, WorkdirError, WorkdirReadOnlyError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("wall_time_s", "train_examples_per_sec")


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def _params(workdir):
  return checkpoints.restore_params(str(workdir))[0]


def _same_tree(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _steps(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


# ----------------------------------------------------------------------------
# A max_steps stop, then the rest: the same run under every schedule.


@pytest.mark.parametrize(
  "schedule",
  [
    pytest.param("constant", marks=pytest.mark.slow),
    pytest.param("cosine", marks=pytest.mark.slow),  # quick: tests/test_train.py's resumes
    pytest.param("warmup_cosine", marks=pytest.mark.slow),
  ],
)
def test_a_max_steps_stop_and_its_resumption_are_the_uninterrupted_run(config, tmp_path, schedule):
  config.optimizer.schedule = schedule
  config.optimizer.warmup_epochs = 1
  config.num_epochs = 2
  config.log_every_steps = 5  # the window of steps 6 to 10 straddles the stop at step 7
  config.steps_per_call = 1
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  config.max_steps = 7  # within the first epoch, and within the warmup
  first = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert first["step"] == 7 and first["epoch"] == pytest.approx(7 / 13)
  config.max_steps = -1  # an allowed change
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  for key in ("train_loss", "train_accuracy", "validation_accuracy", "test_loss", "step"):
    assert resumed[key] == straight[key], key
  # The first epoch's record covers all 13 of its steps, the record of step 10 its five steps;
  # the partial record at step 7 is gone.
  assert _records(tmp_path / "resumed") == _records(tmp_path / "straight")
  _same_tree(_params(tmp_path / "resumed"), _params(tmp_path / "straight"))
  tags = _events(str(tmp_path / "resumed"))[0]
  assert [step for step, _ in tags["epoch/train_loss"]] == [13, 26]


def test_the_schedule_spans_num_epochs_and_max_steps_only_stops(config, embedded):
  config.optimizer.schedule = "cosine"
  config.num_epochs = 2
  config.max_steps = 13
  dataset = input_pipeline.load(config.data, config.seed)
  constants = run_setup.run_constants(config, [dataset], 13)
  assert constants["schedule_decay_steps"] == 26  # not 13: max_steps does not rescale it
  assert constants["steps_per_epoch"] == 13 and constants["num_train"] == 3400


@pytest.mark.parametrize("schedule, allowed", [("constant", True), ("cosine", False)])
def test_num_epochs_may_change_on_resume_only_where_the_schedule_ignores_it(
  config, tmp_path, schedule, allowed
):
  config.optimizer.schedule = schedule
  workdir_lib.write_config(str(tmp_path), config)
  config.num_epochs = 5
  if allowed:
    workdir_lib.check_resumable(str(tmp_path), config)
  else:
    with pytest.raises(
      CheckpointError, match=r"(?s)num_epochs: 1 \(saved\) vs 5 \(now\).*max_steps"
    ):
      workdir_lib.check_resumable(str(tmp_path), config)


# ----------------------------------------------------------------------------
# Allowed changes, refused ones, and when they are refused.


@pytest.mark.parametrize(
  "field, value",
  [
    ("data.idx_dir", "/data/moved"),
    ("data.tfds_data_dir", "/data/moved"),
    ("steps_per_call", 3),
    ("microbatch_size", 128),
    ("eval_batch_size", 500),
    ("checkpoint_keep", 7),
    ("model.implementation", "lax"),
    ("max_steps", 100),
    ("log_every_steps", 1),
  ],
)
def test_result_neutral_fields_may_change_on_resume(config, tmp_path, field, value):
  workdir_lib.write_config(str(tmp_path), config)
  *path, leaf = field.split(".")
  node = config
  for part in path:
    node = node[part]
  node[leaf] = value
  workdir_lib.check_resumable(str(tmp_path), config)


@pytest.mark.slow
def test_a_resume_with_every_neutral_change_at_once_goes_on(config, tmp_path):
  config.max_steps = 4
  train.train_and_evaluate(config, str(tmp_path))
  config.max_steps = 8
  config.steps_per_call = 3
  config.microbatch_size = 128
  config.eval_batch_size = 512
  config.checkpoint_keep = 7
  config.model.implementation = "lax"
  config.data.idx_dir = "/data/moved"
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 8 and _steps(tmp_path) == [4, 8]


@pytest.mark.slow
def test_a_change_that_changes_the_result_is_refused_before_any_data_is_read(
  config, tmp_path, monkeypatch
):  # in one line, however many fields changed
  config.max_steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  before = sorted(os.listdir(tmp_path))

  def no_loading(*args, **kwargs):
    raise AssertionError("loaded data before refusing the config")

  monkeypatch.setattr(input_pipeline, "load", no_loading)
  config.optimizer.learning_rate = 0.01
  config.model.conv.activation = "tanh"
  with pytest.raises(CheckpointError, match=r"optimizer.learning_rate: 0.001 \(saved\)") as error:
    train.train_and_evaluate(config, str(tmp_path))
  assert "\n" not in str(error.value) and "model.conv.activation" in str(error.value)
  assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.slow
def test_training_data_that_changed_under_its_folder_is_refused(config, tmp_path, idx_dir):
  config.data.source = "idx"
  config.data.idx_dir = str(idx_dir)
  config.batch_size = 64
  config.max_steps = 2
  train.train_and_evaluate(config, str(tmp_path / "run"))
  moved = tmp_path / "moved"
  shutil.copytree(idx_dir, moved)
  config.data.idx_dir = str(moved)  # the same files elsewhere: resumes
  config.max_steps = 3
  assert train.train_and_evaluate(config, str(tmp_path / "run"))["step"] == 3
  other = tmp_path / "other"  # other images under the same names
  shutil.copytree(idx_dir, other)
  os.replace(other / "train-images-idx3-ubyte.gz", other / "x")
  os.replace(other / "t10k-images-idx3-ubyte.gz", other / "train-images-idx3-ubyte.gz")
  os.replace(other / "x", other / "t10k-images-idx3-ubyte.gz")
  os.replace(other / "train-labels-idx1-ubyte.gz", other / "x")
  os.replace(other / "t10k-labels-idx1-ubyte.gz", other / "train-labels-idx1-ubyte.gz")
  os.replace(other / "x", other / "t10k-labels-idx1-ubyte.gz")
  config.data.idx_dir = str(other)
  config.max_steps = 4
  with pytest.raises(CheckpointError, match=r"steps_per_epoch: 3 \(saved\) vs 1 \(now\)"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert _steps(tmp_path / "run") == [2, 3]


# ----------------------------------------------------------------------------
# The best checkpoint.


@pytest.fixture
def tiny_state_class(monkeypatch):
  """A stand-in for TrainState with only a step and parameters, so that saving is quick."""
  import flax.struct

  @flax.struct.dataclass
  class State:
    step: np.ndarray
    params: dict

  return lambda step: State(step=np.int32(step), params={"w": np.full(3, step, np.float32)})


def test_the_manager_keeps_the_best_steps_beside_the_newest(tmp_path, tiny_state_class):
  best = checkpoints.KeepSteps()
  manager = checkpoints.manager(str(tmp_path), keep=1, best=best)
  accuracies = [0.5, 0.8, 0.7, 0.8, 0.6]  # the best is step 2: the first of the two 0.8s
  records = []
  for step, accuracy in enumerate(accuracies, 1):
    records.append({"kind": "epoch", "step": step, "epoch": step, "validation_accuracy": accuracy})
    best.steps = checkpoints.best_steps([records])
    checkpoints.save(manager, tiny_state_class(step), {"wall_time_s": 0.0})
  manager.close()
  assert _steps(tmp_path) == [2, 5]
  # A group: each member's best is kept.
  best = checkpoints.KeepSteps()
  manager = checkpoints.manager(str(tmp_path), keep=1, best=best)
  other = [dict(r, validation_accuracy=1 - r["validation_accuracy"]) for r in records]
  other.append({"kind": "epoch", "step": 6, "epoch": 6, "validation_accuracy": 0.1})
  records.append({"kind": "epoch", "step": 6, "epoch": 6, "validation_accuracy": 0.1})
  best.steps = checkpoints.best_steps([records, other])
  checkpoints.save(manager, tiny_state_class(6), {"wall_time_s": 0.0})
  manager.close()
  assert best.steps == {2, 1} and _steps(tmp_path) == [2, 6]  # step 1 was deleted before


@pytest.mark.slow
def test_a_partial_epoch_that_is_best_keeps_the_best_whole_epoch_too():
  records = [
    {"kind": "epoch", "step": 26, "epoch": 1, "validation_accuracy": 0.90},
    {"kind": "epoch", "step": 52, "epoch": 2, "validation_accuracy": 0.92},
    {"kind": "epoch", "step": 60, "epoch": 60 / 26, "validation_accuracy": 0.93},
  ]
  assert checkpoints.best_steps([records]) == {52, 60}  # 60's record goes if the run resumes


def test_what_to_do_about_a_failed_write_follows_its_cause():
  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  read_only = OSError(errno.EROFS, os.strerror(errno.EROFS))
  assert files.remedy(full).startswith("free some space")
  assert files.remedy(read_only).startswith("make the folder writable")
  for code in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):  # a folder where a file goes, ...
    in_the_way = OSError(code, os.strerror(code))
    assert files.remedy(in_the_way).startswith("move what stands at that path")


def test_a_folder_where_a_file_goes_is_named_with_what_to_do(tmp_path):
  (tmp_path / "metrics.jsonl").mkdir()
  with pytest.raises(WorkdirError, match=r"metrics.jsonl is a folder, where a file .*move it away"):
    files.atomic_write(str(tmp_path / "metrics.jsonl"), "{}")


@pytest.mark.slow  # four epochs; the rule itself is tested on the manager above
def test_the_best_epochs_weights_stay_readable_and_visualize_draws_them(config, tmp_path):
  config.num_epochs = 4
  config.checkpoint_keep = 1
  config.optimizer.learning_rate = 0.01  # noisy enough that the best is rarely the last
  result = train.train_and_evaluate(config, str(tmp_path))
  best = [
    r for r in _records(tmp_path) if r["kind"] == "epoch" and r["epoch"] == result["best_epoch"]
  ]
  best_step = best[0]["step"]
  assert _steps(tmp_path) == sorted({best_step, 52})
  params, step = checkpoints.restore_params(str(tmp_path), "best")
  assert step == best_step
  run = trained.load(str(tmp_path), "best")
  assert run.step == best_step
  _same_tree(run.params, params)
  with pytest.raises(CheckpointError, match="checkpoint='newest' is not one of latest, best"):
    checkpoints.restore_params(str(tmp_path), "newest")


# ----------------------------------------------------------------------------
# metrics.jsonl and TensorBoard.


@pytest.mark.slow
def test_a_bad_line_within_metrics_is_named_and_nothing_is_rewritten(config, tmp_path):
  config.num_epochs = 2
  train.train_and_evaluate(config, str(tmp_path))
  path = tmp_path / "metrics.jsonl"
  lines = path.read_text().splitlines(keepends=True)
  lines[3] = '{"kind": "tr\n'
  path.write_text("".join(lines))
  before = path.read_bytes()
  config_before = (tmp_path / "config.json").read_bytes()
  config.max_steps = 30  # a change the run could take: refused all the same, and not written
  with pytest.raises(CheckpointError, match=f"{path}:4 is not a record"):
    train.train_and_evaluate(config, str(tmp_path))
  assert path.read_bytes() == before
  assert (tmp_path / "config.json").read_bytes() == config_before
  with pytest.raises(CheckpointError, match=f"{path}:4"):
    workdir_lib.read_metrics(str(tmp_path))


def test_only_a_torn_last_line_and_lines_past_the_step_are_dropped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  good = [{"kind": "train", "step": s} for s in (1, 2, 3)]
  path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"kind": "tr')
  assert workdir_lib.read_metrics(str(tmp_path), 2, rewrite=True) == good[:2]
  assert path.read_text() == "".join(json.dumps(r) + "\n" for r in good[:2])
  for bad in ("[1, 2]", "{}", '{"kind": "train", "step": "2"}', '{"kind": "train", "step": 99}'):
    text = json.dumps(good[0]) + f"\n{bad}\n" + json.dumps(good[1]) + "\n"
    path.write_text(text)
    message = r"metrics.jsonl:(2 is not a record|3 is not in step order \(after step 99 at :2\))"
    with pytest.raises(CheckpointError, match=message):
      workdir_lib.read_metrics(str(tmp_path), 2, rewrite=True)
    assert path.read_text() == text  # nothing dropped, nothing rewritten


@pytest.mark.slow
def test_after_a_resume_each_tensorboard_point_is_there_once(config, tmp_path):
  config.max_steps = 10
  config.checkpoint_every_steps = 4
  config.log_every_steps = 2
  straight = tmp_path / "straight"
  train.train_and_evaluate(config, str(straight))
  crashed = tmp_path / "crashed"
  train.train_and_evaluate(config, str(crashed))
  shutil.rmtree(crashed / "checkpoints" / "10")  # as if killed after step 9's records
  config.max_steps = 13
  train.train_and_evaluate(config, str(crashed))
  scalars, _ = _events(str(crashed))
  for tag, points in scalars.items():
    steps_seen = [step for step, _ in points]
    assert len(steps_seen) == len(set(steps_seen)), tag
  records = _records(crashed)
  assert [s for s, _ in scalars["train/loss"]] == [
    r["step"] for r in records if r["kind"] == "train"
  ]
  for (_, value), record in zip(
    scalars["train/loss"], [r for r in records if r["kind"] == "train"], strict=True
  ):
    assert value == pytest.approx(record["train_loss"])
  assert [s for s, _ in scalars["epoch/train_loss"]] == [13]


# ----------------------------------------------------------------------------
# Checkpoints that cannot be read, and folders that cannot be written.


@pytest.mark.slow
def test_an_incomplete_checkpoint_is_passed_over_for_the_one_before(config, tmp_path):
  config.max_steps = 6
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  config.max_steps = 4
  train.train_and_evaluate(config, str(tmp_path / "run"))
  os.makedirs(tmp_path / "run" / "checkpoints" / "99")
  config.max_steps = 6
  resumed = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert resumed["test_loss"] == straight["test_loss"]
  names = os.listdir(tmp_path / "run" / "checkpoints")
  assert sorted(n for n in names if n.isdigit()) == ["4", "6"]
  assert [n for n in names if n.startswith("99.unreadable-")]  # kept, out of the way


@pytest.mark.slow
def test_a_workdir_that_cannot_be_written_reports_a_finished_run(config, tmp_path, monkeypatch):
  config.max_steps = 3
  finished = train.train_and_evaluate(config, str(tmp_path / "done"))
  config.max_steps = 2
  train.train_and_evaluate(config, str(tmp_path / "stopped"))
  real_open_append = files.open_append

  def read_only_lock(path, *args, **kwargs):
    if str(path).endswith(".lock"):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return real_open_append(path, *args, **kwargs)

  monkeypatch.setattr(files, "open_append", read_only_lock)
  config.max_steps = 3
  again = train.train_and_evaluate(config, str(tmp_path / "done"))
  for key in ("test_accuracy", "test_loss", "step", "num_params", "train_flops_per_example"):
    assert again[key] == finished[key], key
  with pytest.raises(
    WorkdirReadOnlyError, match=r"cannot be written \(Read-only file system\).*step 2 of 3"
  ):
    train.train_and_evaluate(config, str(tmp_path / "stopped"))


def test_an_empty_workdir_is_refused(config):
  with pytest.raises(WorkdirError, match="--workdir is empty"):
    train.train_and_evaluate(config, "")


@pytest.mark.slow
def test_stale_temporary_files_of_dead_writers_are_removed(config, tmp_path):
  host = socket.gethostname()
  dead = tmp_path / f".metrics.jsonl.{host}-999999999.abc123.tmp"
  live = tmp_path / f".config.json.{host}-{os.getpid()}.abc123.tmp"
  dead.write_text("")
  live.write_text("")
  config.max_steps = 1
  train.train_and_evaluate(config, str(tmp_path))
  assert not dead.exists() and live.exists()


@pytest.mark.slow
def test_an_absurd_eval_batch_is_cut_to_the_split(config, tmp_path):
  split = input_pipeline.load(config.data, config.seed).test
  from convnet import epochs

  batches = list(epochs.eval_batches(split, 2_000_000, multiple_of=64))
  assert len(batches) == 1 and len(batches[0]["label"]) == 1024  # 1,000 rounded up to 64s
  config.eval_batch_size = 2_000_000
  config.microbatch_size = 0
  config.max_steps = 1
  assert train.train_and_evaluate(config, str(tmp_path))["step"] == 1


# ----------------------------------------------------------------------------
# Sweeps: one writer per record, whichever way the seeds train.


def test_a_sweep_folder_is_held_to_one_way_of_training_its_seeds(tmp_path):
  sweep_mode.check_mode(str(tmp_path), vmap_seeds=True)
  sweep_mode.check_mode(str(tmp_path), vmap_seeds=True)
  message = "was run with --vmap_seeds: run it with --vmap_seeds again"
  with pytest.raises(ConfigError, match=message):
    sweep_mode.check_mode(str(tmp_path), vmap_seeds=False)
  older = tmp_path / "older"
  os.makedirs(older / "cells")  # a sweep of an older version, run without --vmap_seeds
  with pytest.raises(ConfigError, match="was run without --vmap_seeds"):
    sweep_mode.check_mode(str(older), vmap_seeds=True)
  sweep_mode.check_mode(str(older), vmap_seeds=False)


# ----------------------------------------------------------------------------
# A full disk: one line, nothing lost, and the rerun resumes.

_LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
sys.argv = ["convnet.main", *sys.argv[1:]]
runpy.run_module("convnet.main", run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("limit", [2500, 20_000], ids=["metrics", "checkpoint"])
def test_a_full_disk_stops_in_one_line_and_the_rerun_resumes(tmp_path, limit):
  """No file may grow past `limit` bytes: TensorBoard's events, or then a checkpoint, fail."""
  env = dict(os.environ, CONVNET_COMPILATION_CACHE="0", CUDA_VISIBLE_DEVICES="")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the suite's cache must not get half-written files
  flags = [
    "--config=configs/mnist.py",
    f"--workdir={tmp_path / 'run'}",
    "--config.data.source=embedded",
    "--config.num_epochs=2",
    "--config.log_every_steps=1",
  ]
  script = _LIMITED.format(limit=limit)
  full = subprocess.run(
    [sys.executable, "-c", script, *flags], cwd=REPO, env=env, capture_output=True, text=True
  )
  assert full.returncode == 1
  lines = [line for line in full.stderr.splitlines() if not line.startswith(("I1", "W1"))]
  assert "Traceback" not in full.stderr and not any(line.startswith("E1") for line in lines)
  assert lines[-1].startswith("error: cannot write") and str(tmp_path / "run") in lines[-1]
  assert "free some space" in lines[-1]
  assert not [n for n in os.listdir(tmp_path / "run") if n.endswith(".tmp")]
  again = subprocess.run(
    [sys.executable, "-m", "convnet.main", *flags],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
  )
  assert again.returncode == 0, again.stderr[-2000:]
  records = _records(tmp_path / "run")
  assert [r["step"] for r in records if r["kind"] == "epoch"] == [26, 52]
  assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 53))


def _truncate_largest_file(folder):
  """Cuts the largest file under `folder` to half its size, as a crash or a bad disk might."""
  files = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_read_is_passed_over_quietly(tmp_path):
  """A truncated array file with an older checkpoint: a warning, then the run goes on."""
  flags = ["--config=configs/mnist.py", f"--workdir={tmp_path}", "--config.data.source=embedded"]
  command = [sys.executable, "-m", "convnet.main", *flags, "--config.checkpoint_keep=5"]
  for steps in (2, 4):
    done = subprocess.run([*command, f"--config.max_steps={steps}"], cwd=REPO, capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
  _truncate_largest_file(tmp_path / "checkpoints" / "4" / "state")
  again = subprocess.run(
    [*command, "--config.max_steps=6"], cwd=REPO, capture_output=True, text=True
  )
  assert again.returncode == 0, again.stderr[-2000:]
  warnings = [line for line in again.stderr.splitlines() if line.startswith(("W1", "E1"))]
  assert len(warnings) == 1 and "passed over for an older checkpoint" in warnings[0], warnings
  for noise in ("Traceback", "Exception ignored", "never retrieved"):
    assert noise not in again.stderr
  names = sorted(os.listdir(tmp_path / "checkpoints"))
  assert names[:2] == ["2", "4.unreadable-" + names[1].split("-", 1)[1]] and names[2] == "6"


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_read_is_one_line_from_the_command(tmp_path):
  """A truncated array file and nothing older: one line, no traceback, the files as they were."""
  flags = ["--config=configs/mnist.py", f"--workdir={tmp_path}", "--config.data.source=embedded"]
  command = [sys.executable, "-m", "convnet.main", *flags]
  first = subprocess.run([*command, "--config.max_steps=2"], cwd=REPO, capture_output=True)
  assert first.returncode == 0, first.stderr[-2000:]
  _truncate_largest_file(tmp_path / "checkpoints" / "2" / "state")
  again = subprocess.run(
    [*command, "--config.max_steps=4"], cwd=REPO, capture_output=True, text=True
  )
  assert again.returncode == 1
  lines = [line for line in again.stderr.splitlines() if not line.startswith(("I1", "W1"))]
  assert lines[-1].startswith(f"error: checkpoint {tmp_path}/checkpoints/2 cannot be restored")
  assert "start fresh" in lines[-1]
  assert "Traceback" not in again.stderr and "Exception ignored" not in again.stderr
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
