"""Workers that pull a sweep's cells, and the launcher that runs them on submitit or Ray."""

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from absl import flags

from convnet import cli, halving, launch, sweep, sweep_records, train, workdir
from convnet.errors import ConfigError, FileFormatError
from tests.conftest import REPO, cpu_env

# ----------------------------------------------------------------------------
# Pulling, with a fake training function


def _seed_cells(n):
  return sweep.expand(lambda: sweep.axis("seed", range(n)))


def _fake_result(config):
  return {
    "num_params": 1,
    "train_flops_per_example": 2.0,
    "best_validation_accuracy": 0.5,
    "test_accuracy_at_best_validation": config.seed / 10,
    "wall_time_s": 0.1,
  }


def test_a_worker_takes_every_other_cell_while_one_cell_runs_long(config, tmp_path, monkeypatch):
  # Cell seed=0 runs until every other cell has its record: with shards fixed in advance
  # (0, 2, 4 for worker 0), worker 0 could never get there. Pulling, worker 1 takes them all.
  cells = _seed_cells(6)
  records = tmp_path / "records"
  long_cell_started = threading.Event()
  trained_by = {}

  def fake_train(config, path):
    with workdir.run_dir(path) as path, workdir.lock(path):
      trained_by[os.path.basename(path)] = threading.current_thread().name
      if config.seed == 0:
        long_cell_started.set()
        deadline = time.monotonic() + 30
        while len(glob.glob(str(records / "*.json"))) < 5:
          assert time.monotonic() < deadline, "worker 1 left cells undone"
          time.sleep(0.01)
      return _fake_result(config)

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  write_record = sweep_records.write_record

  def slow_write_record(sweep_dir, cell, *args):
    # Opens the moment between a run's end (its lock let go) and its record, as a busy machine
    # does: the long cell's record comes late, and worker 1 looks again within that moment.
    if cell.name == "seed=0":
      time.sleep(0.5)
    record = write_record(sweep_dir, cell, *args)
    if cell.name == "seed=5":
      time.sleep(0.2)
    return record

  monkeypatch.setattr(sweep_records, "write_record", slow_write_record)
  written = {}

  def work(i):
    written[i] = sweep.run_sweep(config, cells, str(tmp_path), (i, 2), pull=True)

  first = threading.Thread(target=work, args=(0,), name="worker 0")
  first.start()
  assert long_cell_started.wait(30)
  second = threading.Thread(target=work, args=(1,), name="worker 1")
  second.start()
  first.join(60)
  second.join(60)
  assert [r["cell"] for r in written[0]] == ["seed=0"]
  assert [r["cell"] for r in written[1]] == [f"seed={s}" for s in range(1, 6)]
  assert trained_by == {f"seed={s}": f"worker {min(s, 1)}" for s in range(6)}  # each once
  assert sorted(os.listdir(records)) == sorted(f"seed={s}.json" for s in range(6))


def test_a_pulling_worker_skips_finished_and_held_cells_and_tries_a_failed_one_once(
  config, tmp_path, monkeypatch
):
  cells = _seed_cells(4)
  calls = []

  def fake_train(config, path):
    calls.append(os.path.basename(path))
    if config.seed == 3:
      raise RuntimeError("broken on purpose")
    os.makedirs(path, exist_ok=True)
    return _fake_result(config)

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  sweep.run_sweep(config, cells[:1], str(tmp_path))  # seed=0 finished before
  held = tmp_path / "cells" / "seed=1"
  held.mkdir(parents=True)
  with workdir.lock(str(held)):  # another worker's, alive
    assert workdir.is_locked(str(held))
    written = sweep.run_sweep(config, cells, str(tmp_path), (1, 2), pull=True)
  assert not workdir.is_locked(str(held))
  assert calls == ["seed=0", "seed=2", "seed=3"]  # from its start, round the list, once each
  assert [(r["cell"], r["status"]) for r in written] == [("seed=2", "done"), ("seed=3", "failed")]
  # The holder died without a record: the next worker takes the cell.
  again = sweep.run_sweep(config, cells, str(tmp_path), (0, 2), pull=True)
  assert [r["cell"] for r in again] == ["seed=1", "seed=3"]  # and retries the failed one


def test_is_locked_creates_nothing(tmp_path):
  assert not workdir.is_locked(str(tmp_path / "missing"))
  assert not (tmp_path / "missing").exists()
  assert not workdir.is_locked(str(tmp_path))
  assert not (tmp_path / ".lock").exists()


# ----------------------------------------------------------------------------
# The launcher's pieces


def _parse(argv, capsys):
  flag_values = flags.FlagValues()
  launch.define_flags(flag_values)
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_flags(["convnet.launch", *argv], flag_values)
  return exit_info.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
  "flag, named",
  [
    ("--cluster=kubernetes", "--cluster=kubernetes"),
    ("--shards=0", "--shards=0"),
    ("--gpus_per_task=-1", "--gpus_per_task=-1"),
    ("--nodes=2", "--nodes"),
  ],
)
def test_a_bad_flag_is_one_line(flag, named, capsys, monkeypatch):
  argv = ["--sweep=configs/sweeps/kernel_size.py", "--workdir=/tmp/x", "--shards=2", flag]
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(sys, "argv", ["convnet.launch", *argv])
  code, err = _parse(argv, capsys)
  assert code == cli.USAGE_ERROR
  assert err.startswith("error: ") and named in err and len(err.splitlines()) == 1, err


def test_a_missing_engine_names_its_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
  with pytest.raises(ConfigError, match=r"pip install 'convnet\[ray\]'"):
    launch.import_engine("ray")


def test_jobs_leave_the_gpu_memory_to_share_unless_told_otherwise():
  assert launch.job_environment({}) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  told = {"XLA_PYTHON_CLIENT_MEM_FRACTION": ".3", "XLA_PYTHON_CLIENT_PREALLOCATE": "true", "X": "1"}
  assert launch.job_environment(told) == {k: v for k, v in told.items() if k != "X"}


def test_resources_become_submitit_parameters():
  resources = launch.Resources(
    timeout_min=90, slurm_partition="gpu", cpus_per_task=8, gpus_per_task=1, retries=5
  )
  slurm = launch.executor_parameters("slurm", resources, 4, "sweep_x")
  assert slurm == {
    "name": "sweep_x",
    "timeout_min": 90,
    "nodes": 1,
    "tasks_per_node": 1,
    "gpus_per_node": 1,
    "cpus_per_task": 8,
    "slurm_array_parallelism": 4,
    "slurm_partition": "gpu",
  }
  local = launch.executor_parameters("local", launch.Resources(), 2, "sweep_x")
  assert local["gpus_per_node"] == 0 and "slurm_partition" not in local
  with pytest.raises(ConfigError, match="--gpus_per_task=0.5"):
    launch.executor_parameters("slurm", launch.Resources(gpus_per_task=0.5), 2, "x")


def test_a_slurm_submission_is_a_job_array_of_pulling_workers(config, tmp_path, monkeypatch):
  # No SLURM here: a fake `sbatch` keeps the script it is given, and `srun` need only exist.
  pytest.importorskip("submitit")
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
  (bin_dir / "sbatch").write_text(
    f'#!/bin/sh\nfor a in "$@"; do [ -f "$a" ] && cp "$a" {tmp_path}/script.sh; done\n'
    'echo "Submitted batch job 4242"\n'
  )
  for name in ("srun", "sbatch"):
    os.chmod(bin_dir / name, 0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  cells = _seed_cells(3)
  sweep_dir = str(tmp_path / "sweep")
  workers = [launch.Worker(config, cells, sweep_dir, (i, 2)) for i in range(2)]
  resources = launch.Resources(
    timeout_min=90, slurm_partition="gpu", cpus_per_task=4, gpus_per_task=1, retries=2
  )
  jobs = launch.submit("slurm", workers, resources)
  assert [job.job_id for job in jobs] == ["4242_0", "4242_1"]
  script = (tmp_path / "script.sh").read_text()
  for line in (
    "#SBATCH --array=0-1%2",
    "#SBATCH --partition=gpu",
    "#SBATCH --cpus-per-task=4",
    "#SBATCH --gpus-per-node=1",
    "#SBATCH --time=90",
    "#SBATCH --signal=USR2@",  # before the time limit: the worker saves, then requeues
    "#SBATCH --job-name=sweep_sweep",
  ):
    assert line in script, f"{line} not in:\n{script}"
  import submitit

  pickled = [submitit.helpers.DelayedSubmission.load(job.paths.submitted_pickle) for job in jobs]
  assert [p.function.shard for p in pickled] == [(0, 2), (1, 2)]
  assert pickled[0].function.environment["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
  again = pickled[1].function.checkpoint()  # what a requeue submits: the same worker
  assert again.function is pickled[1].function and not again.args


# ----------------------------------------------------------------------------
# Real jobs (slow): submitit's local executor and a local Ray cluster

SWEEP_FILE = textwrap.dedent(
  """
  from convnet.configs import mnist
  from convnet.sweep import axis


  def get_config():
    config = mnist.get_config()
    config.data.source = "embedded"
    config.batch_size = 128
    config.num_epochs = 2
    config.steps_per_epoch = {steps}
    config.checkpoint_every_steps = 2
    config.log_every_steps = 0
    return config


  def sweep():
    return axis("seed", {seeds})
  """
)


def _sweep_file(tmp_path, seeds=(0, 1, 2), steps=3):
  path = tmp_path / "seeds.py"
  path.write_text(SWEEP_FILE.format(seeds=list(seeds), steps=steps))
  return str(path)


def _launch_command(sweep_file, workdir, *flags):
  return [
    sys.executable,
    "-m",
    "convnet.launch",
    f"--sweep={sweep_file}",
    f"--workdir={workdir}",
    "--shards=2",
    *flags,
  ]


def _job_logs(sweep_dir):
  text = ""
  for path in glob.glob(os.path.join(sweep_dir, "jobs", "*", "*_log.*")):
    with open(path) as f:
      text += f.read()
  return text


def _check_finished(sweep_dir, names):
  # Each record, and beside it its run's test predictions: nothing else.
  assert sorted(os.listdir(os.path.join(sweep_dir, "records"))) == sorted(
    f"{n}{end}" for n in names for end in (".json", ".test_predictions.npz")
  )
  for name in names:
    with open(os.path.join(sweep_dir, "records", f"{name}.json")) as f:
      assert json.load(f)["status"] == "done", name
  assert os.path.isfile(os.path.join(sweep_dir, "report.md"))
  assert os.path.isfile(os.path.join(sweep_dir, "report.csv"))


@pytest.mark.slow
def test_two_local_submitit_jobs_run_the_sweep_and_write_the_report_once(tmp_path):
  pytest.importorskip("submitit")
  sweep_dir = str(tmp_path / "sweep")
  done = subprocess.run(
    _launch_command(_sweep_file(tmp_path), sweep_dir, "--cluster=local"),
    cwd=REPO,
    env=cpu_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"Report: {sweep_dir}/report.md" in done.stdout
  _check_finished(sweep_dir, ["seed=0", "seed=1", "seed=2"])
  logs = _job_logs(sweep_dir)
  assert logs.count("Wrote the sweep's report") == 1, logs[-3000:]
  assert "Sweep worker 0/2" in logs and "Sweep worker 1/2" in logs


def _checkpoint_steps(cell):
  """The steps of the cell's complete checkpoints (Orbax writes each elsewhere first)."""
  folder = cell / "checkpoints"
  return [int(n) for n in os.listdir(folder) if n.isdigit()] if folder.is_dir() else []


@pytest.mark.slow
def test_a_job_signalled_before_its_time_limit_saves_requeues_and_resumes(tmp_path):
  # What submitit does at a time limit (SIGUSR2 to the job), sent at once to the worker that
  # holds seed=0 as soon as that cell has a checkpoint mid-run.
  pytest.importorskip("submitit")
  sweep_dir = tmp_path / "sweep"
  launcher = subprocess.Popen(
    _launch_command(_sweep_file(tmp_path, seeds=(0, 1), steps=10), sweep_dir, "--cluster=local"),
    cwd=REPO,
    env=cpu_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  cell = sweep_dir / "cells" / "seed=0"
  deadline = time.time() + 300
  while time.time() < deadline:
    if _checkpoint_steps(cell) and workdir.is_locked(str(cell)):
      break
    assert launcher.poll() is None, launcher.communicate()[1][-3000:]
    time.sleep(0.05)
  pid = int((cell / ".lock").read_text().split()[1])
  os.kill(pid, signal.SIGUSR2)
  out, err = launcher.communicate(timeout=600)
  assert launcher.returncode == 0, err[-3000:]
  logs = _job_logs(str(sweep_dir))
  assert "Requeued job" in logs, logs[-3000:]
  assert "Resumed from checkpoint at step" in logs, logs[-3000:]
  _check_finished(str(sweep_dir), ["seed=0", "seed=1"])
  with open(cell / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == sorted(set(steps)) and len(steps) == 2, steps  # an epoch each, none repeated


@pytest.mark.slow
def test_two_ray_tasks_run_the_sweep_and_write_the_report_once(tmp_path, monkeypatch):
  ray = pytest.importorskip("ray")
  for name, value in cpu_env().items():
    monkeypatch.setenv(name, value)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  sweep_file = _sweep_file(tmp_path)
  base = sweep.load_sweep_module(sweep_file).get_config()
  cells = sweep.expand(sweep.load_sweep_module(sweep_file).sweep)
  sweep_dir = str(tmp_path / "sweep")
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  try:
    outcome = launch.launch(base, cells, sweep_dir, 2, "ray")
  finally:
    ray.shutdown()
  assert outcome["failures"] == [] and outcome["unfinished"] == {}
  assert outcome["report"] == f"{sweep_dir}/report.md"
  _check_finished(sweep_dir, ["seed=0", "seed=1", "seed=2"])
  workers = outcome["workers"]
  assert sorted(w["shard"] for w in workers) == ["0/2", "1/2"]
  assert sorted(r["cell"] for w in workers for r in w["records"]) == ["seed=0", "seed=1", "seed=2"]
  assert [w["report"] for w in workers].count(None) == 1  # written by one worker, once


def _kill_when_checkpointed(cell, stop):
  """SIGKILLs the process that holds `cell` once the cell has a checkpoint; its pid, or None."""
  while not stop.is_set():
    if _checkpoint_steps(cell) and workdir.is_locked(str(cell)):
      pid = int((cell / ".lock").read_text().split()[1])
      os.kill(pid, signal.SIGKILL)
      return pid
    time.sleep(0.05)
  return None


@pytest.mark.slow
def test_a_ray_task_killed_mid_cell_is_retried_and_the_cell_resumes(tmp_path, monkeypatch, capfd):
  ray = pytest.importorskip("ray")
  for name, value in cpu_env().items():
    monkeypatch.setenv(name, value)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("RAY_DEDUP_LOGS", "0")  # each worker's log line reaches the driver
  sweep_file = _sweep_file(tmp_path, seeds=(0, 1), steps=10)
  module = sweep.load_sweep_module(sweep_file)
  sweep_dir = tmp_path / "sweep"
  stop, killed = threading.Event(), []
  killer = threading.Thread(
    target=lambda: killed.append(_kill_when_checkpointed(sweep_dir / "cells" / "seed=0", stop))
  )
  ray.init(num_cpus=2, include_dashboard=False)
  try:
    killer.start()
    outcome = launch.launch(
      module.get_config(), sweep.expand(module.sweep), str(sweep_dir), 2, "ray"
    )
  finally:
    stop.set()
    killer.join()
    ray.shutdown()
  assert killed and killed[0], "the cell finished before it could be killed"
  assert outcome["failures"] == [] and outcome["unfinished"] == {}, outcome
  _check_finished(str(sweep_dir), ["seed=0", "seed=1"])
  out, err = capfd.readouterr()
  assert "Resumed from checkpoint at step" in out + err
  with open(sweep_dir / "cells" / "seed=0" / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == sorted(set(steps)) and len(steps) == 2, steps  # an epoch each, none repeated


@pytest.mark.parametrize("where", ["records", "halving"])
def test_a_file_a_sweep_would_refuse_stops_the_launch_before_any_job(config, tmp_path, where):
  """Workers refused such a file one by one, in tracebacks in their logs, and the launch said
  only that they failed (or, with every cell recorded, exited 0)."""
  pytest.importorskip("submitit")
  sweep_dir = tmp_path / "sweep"
  (sweep_dir / where).mkdir(parents=True)
  (sweep_dir / where / "stray.json").write_text('{"a": 1}')
  rule = halving.Halving("optimizer.learning_rate", (1, 2), 2) if where == "halving" else None
  cells = sweep.expand(
    lambda: sweep.product(
      sweep.axis("optimizer.learning_rate", [1e-3, 3e-3]), sweep.axis("seed", range(2))
    )
  )
  config.num_epochs = 2
  with pytest.raises(FileFormatError, match=rf"{where}/stray.json"):
    launch.launch(config, cells, str(sweep_dir), 2, "local", halving=rule, vmap_rates=True)
  assert sorted(os.listdir(sweep_dir)) in ([where], [where, "sweep.json"])
