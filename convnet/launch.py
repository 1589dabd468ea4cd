r"""Runs a sweep on a cluster: N workers that pull its cells, as submitit jobs or Ray tasks.

  python -m convnet.launch --sweep=configs/sweeps/kernel_size.py --workdir=DIR --shards=4 \
      --cluster=local [--sweep.data.source=embedded] [--vmap_seeds] [--timeout_min=240] \
      [--slurm_partition=P] [--cpus_per_task=C] [--gpus_per_task=G] [--retries=3]

Each job is one pulling worker of `convnet.sweep` (`run_sweep(..., pull=True)`):
before each cell it reads the records again and takes the next cell that is
neither finished nor held by another worker, so the N workers stay busy until
the sweep ends. The last worker to find nothing left writes the report
(`sweep.write_report_when_complete`), once. The command waits for the jobs,
then prints where the report is, or which cells have no finished record
(exit status 1).

`--cluster`:
- `local`: submitit's local executor, N processes on this machine;
- `slurm`: submitit's SLURM executor, a job array of N tasks;
- `ray`: N Ray tasks; `ray.init()` joins the cluster that `RAY_ADDRESS` or a
  local `ray start` names, or starts one on this machine.

A job that reaches its time limit or is preempted is started again and
resumes: submitit sends SIGUSR2 before the limit, the worker's run saves a
checkpoint and stops, and the job requeues itself (submitit's `checkpoint`
protocol, at most `--retries` times); a Ray task whose process or node dies is
retried. A requeued or retried worker, or any other, takes the cell up again
from its last checkpoint. submitit's logs go to `DIR/jobs/`.

JAX takes most of a GPU's memory at its first use; each job sets
`XLA_PYTHON_CLIENT_PREALLOCATE=false` (unless the environment sets it), so
that several workers can share a GPU. `XLA_PYTHON_CLIENT_MEM_FRACTION=0.3`
instead gives each a fixed share (see docs/scaling.md).

submitit and Ray are optional: `pip install 'convnet[cluster]'` or
`'convnet[ray]'`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from convnet import cli, files, sweep, sweep_records
from convnet import halving as halving_lib
from convnet.errors import ConfigError, ConvnetError, RunInterrupted

CLUSTERS = ("local", "slurm", "ray")
EXTRAS = {"local": ("submitit", "cluster"), "slurm": ("submitit", "cluster"), "ray": ("ray", "ray")}
JOBS_FOLDER = "jobs"  # in the sweep's directory: submitit's pickles and logs
# JAX's GPU memory options that a job passes on from the launching environment.
MEMORY_OPTIONS = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION")
# What submitit sends a job before its time limit (and on preemption, with SLURM).
REQUEUE_SIGNAL = signal.SIGUSR2


@dataclasses.dataclass(frozen=True)
class Resources:
  """What each job asks its cluster for.

  Attributes:
    timeout_min: the time limit of a job, in minutes; a job that reaches it is
      requeued (local and SLURM) and goes on from its checkpoints.
    slurm_partition: the SLURM partition; None for the cluster's default.
    cpus_per_task: CPU cores per job (SLURM, Ray); None for the cluster's
      default (Ray: 1).
    gpus_per_task: GPUs per job; a fraction (0.5) shares one GPU between
      workers on Ray; a whole number elsewhere.
    retries: how many times a job is started again after a time limit or a
      preemption (submitit), or after its process died (Ray).
  """

  timeout_min: int = 240
  slurm_partition: str | None = None
  cpus_per_task: int | None = None
  gpus_per_task: float = 0
  retries: int = 3


def job_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
  """The JAX memory options of every job: the launching environment's, else no preallocation."""
  env = {name: environ[name] for name in MEMORY_OPTIONS if name in environ}
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  return env


@dataclasses.dataclass
class Worker:
  """One pulling worker of a sweep, as a job: calling it runs `sweep.run_sweep(..., pull=True)`.

  submitit calls `checkpoint` when the job must stop (a time limit, a
  preemption) and requeues the same worker, which goes on where the records
  and checkpoints left off.
  """

  base: ml_collections.ConfigDict
  cells: list[sweep.Cell]
  sweep_dir: str
  shard: tuple[int, int]
  vmap_seeds: bool = False
  environment: dict[str, str] = dataclasses.field(default_factory=job_environment)
  vmap_rates: bool = False
  halving: halving_lib.Halving | None = None  # the sweep file's (`sweep_halving.from_sweep_file`)

  def __call__(self) -> dict[str, Any]:
    """Pulls cells until none is left; what it did: {"shard", "records", "report"}.

    "records" are the records it wrote; "report" the report's path if this
    worker wrote it (the last to end), else None.
    """
    for name, value in self.environment.items():
      os.environ.setdefault(name, value)  # before JAX first touches a device
    logging.set_verbosity(logging.INFO)
    cli.quiet_library_logs()
    from convnet import cache

    cache.enable_compilation_cache()
    with _requeue_after_saving() as requeue:
      try:
        records = sweep.run_sweep(
          self.base,
          self.cells,
          self.sweep_dir,
          self.shard,
          self.vmap_seeds,
          pull=True,
          vmap_rates=self.vmap_rates,
          halving=self.halving,
        )
      except RunInterrupted:
        if requeue:
          requeue[0]()  # submitit's own: `checkpoint`, requeue, exit
        raise
    configs = sweep.cell_configs(self.base, self.cells)
    report = sweep.write_report_when_complete(self.sweep_dir, self.cells, configs)
    return {"shard": "{}/{}".format(*self.shard), "records": records, "report": report}

  def checkpoint(self):
    """The same worker, to requeue: it resumes from the records and checkpoints on disk."""
    import submitit

    return submitit.helpers.DelayedSubmission(self)


@contextlib.contextmanager
def _requeue_after_saving() -> Iterator[list[Callable[[], None]]]:
  """Turns submitit's SIGUSR2 (requeue now) into: the run saves a checkpoint, then requeue.

  submitit's handler would requeue at once, losing the running cell's steps
  since its last checkpoint. Here, during a run, the signal becomes a stop
  request (SIGTERM, which the run turns into a checkpoint and
  `RunInterrupted`), and the list yielded gets submitit's handler, to call
  then; between runs, submitit's handler runs at once. Without submitit's
  handler (not a submitit job, or not the main thread) the list stays empty.
  """
  requeue: list[Callable[[], None]] = []
  main = threading.current_thread() is threading.main_thread()
  submitits = signal.getsignal(REQUEUE_SIGNAL) if main else None
  if not callable(submitits):
    yield requeue
    return
  between_runs = signal.getsignal(signal.SIGTERM)

  def stop_then_requeue(signum, frame):
    requeue.append(lambda: submitits(signum, None))
    if signal.getsignal(signal.SIGTERM) == between_runs:
      submitits(signum, frame)  # nothing is training: requeue now
    else:
      signal.raise_signal(signal.SIGTERM)  # the run saves a checkpoint and stops

  signal.signal(REQUEUE_SIGNAL, stop_then_requeue)
  try:
    yield requeue
  finally:
    signal.signal(REQUEUE_SIGNAL, submitits)


def run_worker(worker: Worker) -> dict[str, Any]:
  """Calls `worker`: the function that a Ray task runs."""
  return worker()


# ----------------------------------------------------------------------------
# Clusters


def import_engine(cluster: str):
  """The module that runs jobs on `cluster`: submitit or ray.

  Raises:
    ConfigError: it is not installed; the message names the extra to install.
  """
  if cluster not in CLUSTERS:
    raise ConfigError(f"--cluster={cluster}: must be one of {', '.join(CLUSTERS)}")
  module, extra = EXTRAS[cluster]
  try:
    return __import__(module)
  except ImportError:
    raise ConfigError(
      f"--cluster={cluster} needs {module}, which is not installed: pip install 'convnet[{extra}]'"
    ) from None


def executor_parameters(
  cluster: str, resources: Resources, shards: int, name: str
) -> dict[str, Any]:
  """The parameters of submitit's `AutoExecutor.update_parameters` for `cluster` (local, slurm).

  Raises:
    ConfigError: a fraction of a GPU, which neither can give.
  """
  gpus = resources.gpus_per_task
  if gpus != int(gpus):
    raise ConfigError(
      f"--gpus_per_task={gpus}: --cluster={cluster} gives whole GPUs; to share one GPU between "
      "workers, give 1 and see XLA_PYTHON_CLIENT_MEM_FRACTION in docs/scaling.md"
    )
  parameters = {
    "name": name,
    "timeout_min": resources.timeout_min,
    "nodes": 1,
    "tasks_per_node": 1,
    "gpus_per_node": int(gpus),
  }
  if resources.cpus_per_task is not None:
    parameters["cpus_per_task"] = resources.cpus_per_task
  if cluster == "slurm":
    parameters["slurm_array_parallelism"] = shards
    if resources.slurm_partition:
      parameters["slurm_partition"] = resources.slurm_partition
  return parameters


def make_executor(cluster: str, folder: str, resources: Resources, shards: int, name: str):
  """submitit's executor for `cluster` (local or slurm), its logs and pickles in `folder`."""
  submitit = import_engine(cluster)
  try:
    executor = submitit.AutoExecutor(
      folder, cluster=cluster, **{f"{cluster}_max_num_timeout": resources.retries}
    )
  except RuntimeError as e:  # no SLURM here: submitit looks for srun
    raise ConfigError(
      f"--cluster={cluster}: submitit cannot submit from this machine ({e}); run the command "
      "where the cluster's commands are (a login node), or use --cluster=local"
    ) from None
  executor.update_parameters(**executor_parameters(cluster, resources, shards, name))
  return executor


def submit(cluster: str, workers: Sequence[Worker], resources: Resources) -> list:
  """Submits each worker as a submitit job (a SLURM job array on `slurm`); the jobs."""
  sweep_dir = workers[0].sweep_dir
  name = "sweep_" + os.path.basename(os.path.normpath(sweep_dir))
  folder = os.path.join(sweep_dir, JOBS_FOLDER, "%j")
  executor = make_executor(cluster, folder, resources, len(workers), name)
  with executor.batch():
    jobs = [executor.submit(worker) for worker in workers]
  return jobs


def wait_for_jobs(jobs: Sequence) -> tuple[list[dict[str, Any] | None], list[str]]:
  """Waits for submitit jobs: what each worker returned (None if it failed), and a line for
  each that failed, naming its log."""
  results, failures = [], []
  for i, job in enumerate(jobs):
    try:
      results.append(job.result())
    except Exception as e:  # a job's error, or one that was killed (UncompletedJobError)
      results.append(None)
      failures.append(
        f"worker {i} (job {job.job_id}) failed: {_last_line(e)}; log: {job.paths.stderr}"
      )
  return results, failures


def run_on_ray(
  workers: Sequence[Worker], resources: Resources
) -> tuple[list[dict[str, Any] | None], list[str]]:
  """Runs each worker as a Ray task and waits, as `wait_for_jobs`.

  Joins the running cluster (`RAY_ADDRESS`, or a local `ray start`) or starts one
  on this machine, unless this process is connected already. A task whose
  process or node dies is retried, `resources.retries` times; each task runs
  in a process of its own (`max_calls=1`), which gives its device memory back.
  """
  ray = import_engine("ray")
  if not ray.is_initialized():
    ray.init()
  task = ray.remote(
    num_cpus=1 if resources.cpus_per_task is None else resources.cpus_per_task,
    num_gpus=resources.gpus_per_task,
    max_retries=resources.retries,
    max_calls=1,
  )(run_worker)
  refs = [task.remote(worker) for worker in workers]
  results, failures = [], []
  for i, ref in enumerate(refs):
    try:
      results.append(ray.get(ref))
    except Exception as e:  # the task's error, or its process lost more often than retried
      results.append(None)
      failures.append(f"worker {i} failed: {_last_line(e)}")
  return results, failures


def _last_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return lines[-1] if lines else type(error).__name__


def launch(
  base: ml_collections.ConfigDict,
  cells: Sequence[sweep.Cell],
  sweep_dir: str,
  shards: int,
  cluster: str = "local",
  vmap_seeds: bool = False,
  resources: Resources = Resources(),
  vmap_rates: bool = False,
  halving: halving_lib.Halving | None = None,
  halving_from_command: bool = False,
) -> dict[str, Any]:
  """Runs the sweep's cells with `shards` pulling workers on `cluster`, and waits for them.

  Every check `convnet.sweep` makes before training (`sweep.prepare`: the cells'
  configs and data, the folder's way of training, its records and halving files,
  cells added to a halved arm) is made before any job starts.

  Returns:
    {"report": the report's path, or None; "unfinished": {cell: its status, or
    "no record"} for each cell without a finished record; "failures": a line
    for each job that failed; "workers": what each worker returned, None for
    one that failed}.

  Raises:
    ConfigError, DataError, FileFormatError: as `sweep.prepare`; an engine that is
      not installed, or resources the cluster cannot give.
  """
  import_engine(cluster)
  sweep_dir = os.path.abspath(files.make_dir(sweep_dir))
  configs = sweep.prepare(
    base, cells, sweep_dir, vmap_seeds, vmap_rates, halving, halving_from_command
  )
  workers = [
    Worker(
      base, list(cells), sweep_dir, (i, shards), vmap_seeds, job_environment(), vmap_rates, halving
    )
    for i in range(shards)
  ]
  logging.info(
    "Launching %d workers on %s for %d cells in %s", shards, cluster, len(cells), sweep_dir
  )
  if cluster == "ray":
    results, failures = run_on_ray(workers, resources)
  else:
    results, failures = wait_for_jobs(submit(cluster, workers, resources))
  unfinished = {}
  for cell in cells:
    record = sweep_records.read_record(sweep_dir, cell)
    if record is None:
      unfinished[cell.name] = "no record"
    elif not sweep_records.is_settled(sweep_dir, cell, configs[cell.name]):  # done, or pruned
      unfinished[cell.name] = record["status"]
  # Written by the last worker already; here only if no worker lived to see every record.
  sweep.write_report_when_complete(sweep_dir, cells, configs)
  return {
    "report": sweep.current_report(sweep_dir),
    "unfinished": unfinished,
    "failures": failures,
    "workers": results,
  }


# ----------------------------------------------------------------------------
# Command line

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """The command's flags: the sweep's (as `convnet.sweep`'s), the workers' and the jobs'."""
  defaults = Resources()
  cli.define(
    flag_values,
    (
      *sweep.SWEEP_FLAGS,
      ("integer", "shards", None, "How many workers pull the sweep's cells.", {"lower_bound": 1}),
      (
        "enum",
        "cluster",
        "local",
        "Where the workers run: local (submitit, this machine), slurm (submitit) or ray.",
        {"enum_values": CLUSTERS},
      ),
      (
        "integer",
        "timeout_min",
        defaults.timeout_min,
        "Each job's time limit in minutes; a job that reaches it is requeued and resumes.",
        {"lower_bound": 1},
      ),
      ("string", "slurm_partition", None, "The SLURM partition (--cluster=slurm)."),
      (
        "integer",
        "cpus_per_task",
        None,
        "CPU cores per job (SLURM, Ray; default: the cluster's).",
        {"lower_bound": 1},
      ),
      (
        "float",
        "gpus_per_task",
        defaults.gpus_per_task,
        "GPUs per job; a fraction such as 0.5 shares a GPU on Ray.",
        {"lower_bound": 0},
      ),
      (
        "integer",
        "retries",
        defaults.retries,
        "How often a job is started again after a time limit, a preemption or a lost process.",
        {"lower_bound": 0},
      ),
    ),
    required=("sweep", "workdir", "shards"),
  )


def main(argv):
  cli.start(argv, compilation_cache=False)
  try:
    import_engine(FLAGS.cluster)
    sweep_path = config_flags.get_config_filename(FLAGS["sweep"])
    with cli.errors_in_file(sweep_path, f"--sweep={sweep_path}"):
      cells, halving = sweep.read_sweep(
        sweep_path, FLAGS.halving, FLAGS.learning_rates, FLAGS.halving_rungs, sweep.given_eta()
      )
    sweep.warn_unused_overrides(config_flags.get_override_values(FLAGS["sweep"]), cells)
    resources = Resources(
      timeout_min=FLAGS.timeout_min,
      slurm_partition=FLAGS.slurm_partition,
      cpus_per_task=FLAGS.cpus_per_task,
      gpus_per_task=FLAGS.gpus_per_task,
      retries=FLAGS.retries,
    )
    outcome = launch(
      FLAGS.sweep,
      cells,
      FLAGS.workdir,
      FLAGS.shards,
      FLAGS.cluster,
      FLAGS.vmap_seeds,
      resources,
      FLAGS.vmap_rates,
      halving,
      halving_from_command=bool(FLAGS.halving_rungs),
    )
  except ConvnetError as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit(
      "stopped waiting for the jobs, which go on; the last of them writes "
      f"{os.path.join(FLAGS.workdir, 'report.md')}"
    )
  for line in outcome["failures"]:
    print(line, file=sys.stderr)
  if outcome["report"]:
    print(f"Report: {outcome['report']}")
  if outcome["unfinished"]:
    listed = ", ".join(f"{name} ({why})" for name, why in outcome["unfinished"].items())
    sys.exit(
      f"error: {len(outcome['unfinished'])} of {len(cells)} cells have no finished record: "
      f"{listed}; the same command trains them again"
    )
  if outcome["failures"]:  # every cell is recorded, but a job failed: its log says why
    sys.exit(
      f"error: {len(outcome['failures'])} of {FLAGS.shards} jobs failed, though every cell has "
      "its record; see their logs above"
    )


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
