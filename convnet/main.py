"""Trains and evaluates a model from a config file.

  python -m convnet.main --config=configs/mnist.py --workdir=/tmp/mnist
  python -m convnet.main --config=configs/mnist.py --workdir=/tmp/k5 \\
      --config.model.conv.kernel_size='((5, 5), 3, 3)'

Flags belong to the entry points, and each defines its own in
`define_flags()` when it runs as a program, never at import; library modules
define none. JAX's own flags (`--jax_platforms=cpu`) are accepted too, and a
mistake on the command line is one line (`convnet.cli`). Rerunning a command
on the same workdir resumes from its last checkpoint.

Across hosts, every process runs the same command, with `--distributed` where
SLURM, Open MPI or a TPU pod tells JAX who is who, or else with
`--coordinator_address`, `--num_processes` and `--process_id`.
"""

import sys

import jax
from absl import app, flags, logging

from convnet import cli, parallel, preemption, run_setup, summary, train
from convnet.errors import ConvnetError, RunInterrupted

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines this command's flags, when it runs as a program."""
  cli.define_config_flag(flag_values)
  cli.define(
    flag_values,
    (
      ("string", "workdir", None, "Directory for the config, metrics, events and checkpoints."),
      ("bool", "distributed", False, "Join a multi-host run; implied by the next three."),
      ("string", "coordinator_address", None, "host:port of process 0, in a multi-host run."),
      ("integer", "num_processes", None, "Number of processes in a multi-host run."),
      ("integer", "process_id", None, "This process's index in a multi-host run, from 0."),
    ),
    required=("config", "workdir"),
  )


def main(argv):
  global _prompt_exit
  cli.start(argv)
  explicit = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  distributed = FLAGS.distributed or any(v is not None for v in explicit)
  if distributed:
    parallel.initialize_distributed(*explicit)
  try:
    devices = jax.devices()
  except RuntimeError as e:  # A backend asked for (--jax_platforms=tpu, say) that cannot start.
    cli.usage_error(f"JAX cannot start its backend: {str(e).splitlines()[0]}")
  try:
    # What can be refused without a device or any data is refused before anything is logged.
    run_setup.check_before_starting(FLAGS.config, FLAGS.workdir)
  except ConvnetError as e:
    sys.exit(f"error: {e}")
  logging.info("JAX devices: %s (process %d of %d)", devices, jax.process_index(),
               jax.process_count())  # fmt: skip
  try:
    logging.info("The model, layer by layer:\n%s", summary.summary_text(FLAGS.config, xla=False))
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (RunInterrupted, preemption.StoppedAtOnce) as e:  # A stop signal, then a second one.
    preemption.ignore_stop_signals()  # A later one would break off the exit with a traceback.
    logging.warning("%s", e)
    _prompt_exit = not distributed
    sys.exit(128 + e.signum)  # The conventional exit status of a signalled process.
  except ConvnetError as e:  # A problem the message alone explains: no traceback.
    sys.exit(f"error: {e}")
  _prompt_exit = not distributed


# Whether the run has written and closed everything, so that the program, run as a single
# process, may end without Python's teardown (`cli.exit_now`). A multi-host run's processes
# tear down as usual: that tells the others they are leaving.
_prompt_exit = False


if __name__ == "__main__":
  define_flags()
  try:
    app.run(main, flags_parser=cli.parse_flags)
  except SystemExit as e:
    if _prompt_exit and (e.code is None or isinstance(e.code, int)):
      cli.exit_now(e.code or 0)
    raise
