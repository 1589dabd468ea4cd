"""Stop requests: a flag in one process; one agreed step in two, whichever is signalled.

SIGTERM, SIGINT, SIGHUP and SIGUSR1 stop a run with a checkpoint; a second one
stops it at once, in one line; the run resumes exactly either way.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest
from conftest import cpu_env, free_address, start_processes

from convnet import checkpoints, preemption, train
from convnet.configs import mnist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process of two: steps in lockstep (a collective each call), asking at each call.
LOOP = textwrap.dedent(
  """
  import json, os, sys, time
  import numpy as np
  from jax.experimental import multihost_utils
  from convnet import parallel, preemption

  address, process_id, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
  parallel.initialize_distributed(address, 2, process_id)
  stopped, signum = None, 0
  with preemption.stop_requests() as stop:
    for step in range(0, 3000, 3):  # calls of 3 steps each: the service's step may fall between
      assert (multihost_utils.process_allgather(np.int32(step)) == step).all()
      signum = stop.requested(step)
      if signum:
        stopped = step
        break
      if step == 30:
        open(os.path.join(ready, str(process_id)), "w").close()
      time.sleep(0.01)
  # Both still answer a collective: neither stopped alone.
  steps = multihost_utils.process_allgather(np.int32(-1 if stopped is None else stopped))
  print("RESULT " + json.dumps({"step": stopped, "signal": signum, "steps": steps.tolist()}))
  """
)


@pytest.mark.slow
@pytest.mark.parametrize(
  "signum, targets",
  [(signal.SIGTERM, (1,)), (signal.SIGINT, (0,)), (signal.SIGINT, (0, 1))],
  ids=["sigterm_to_process_1", "sigint_to_process_0", "sigint_to_both"],
)
def test_two_processes_stop_at_one_step_when_either_is_signalled(signum, targets, tmp_path):
  address = free_address()
  commands = [[sys.executable, "-c", LOOP, address, str(i), str(tmp_path)] for i in range(2)]
  processes = start_processes(commands, cpu_env(PYTHONPATH=REPO))
  try:
    deadline = time.monotonic() + 60
    while not all(os.path.exists(tmp_path / str(i)) for i in range(2)):
      assert time.monotonic() < deadline, "the processes never reached step 30"
      assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
      time.sleep(0.05)
    for i in targets:
      processes[i].send_signal(signum)
    outputs = [p.communicate(timeout=60) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.communicate()
  results = []
  for p, (stdout, stderr) in zip(processes, outputs, strict=True):
    assert p.returncode == 0, stderr[-3000:]
    line = [x for x in stdout.splitlines() if x.startswith("RESULT ")][-1]
    results.append(json.loads(line[len("RESULT ") :]))
  stopped = results[0]["step"]
  assert stopped is not None and 30 < stopped < 2997, results  # stopped, and not at the end
  assert [r["step"] for r in results] == [stopped, stopped], results
  assert results[0]["steps"] == results[1]["steps"] == [stopped, stopped]
  expected = [signum if i in targets else signal.SIGTERM for i in range(2)]
  assert [r["signal"] for r in results] == expected, results


def test_one_process_stops_on_the_first_signal_and_breaks_off_on_the_second():
  before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
  with preemption.stop_requests() as stop:
    assert stop.requested(0) == 0
    assert stop.requested(5) == 0
    signal.raise_signal(signal.SIGTERM)
    assert stop.requested(6) == signal.SIGTERM
    assert stop.requested(7) == signal.SIGTERM  # it stands
    with pytest.raises(KeyboardInterrupt) as second:  # no `except Exception` holds it up
      signal.raise_signal(signal.SIGINT)
    assert isinstance(second.value, preemption.StoppedAtOnce)
    assert (second.value.signum, str(second.value)) == (
      signal.SIGINT,
      "SIGINT again: stopped at once, without saving; run the same command again to resume from "
      "the last checkpoint",
    )
    signal.raise_signal(signal.SIGINT)  # a third, while the run unwinds: nothing more
    signal.raise_signal(signal.SIGHUP)
    with pytest.raises(ValueError, match="steps must increase: step 7 after step 7"):
      stop.requested(7)
  assert {s: signal.getsignal(s) for s in before} == before
  with preemption.stop_requests() as stop:  # a new run starts without a request
    signal.raise_signal(signal.SIGINT)
    assert (stop.requested(7), stop.received) == (signal.SIGINT, signal.SIGINT)
  assert {s: signal.getsignal(s) for s in before} == before


def test_a_signal_as_a_run_ends_is_kept_for_the_caller_once():
  """A run that finished although a signal came (no step left to stop at) leaves it to be asked."""
  with preemption.stop_requests():
    signal.raise_signal(signal.SIGINT)  # the loop has ended: nothing asks `requested` again
  assert preemption.unheeded_stop() == signal.SIGINT
  assert preemption.unheeded_stop() == 0  # once
  with pytest.raises(RuntimeError), preemption.stop_requests():
    signal.raise_signal(signal.SIGHUP)
    raise RuntimeError("a run that stops on the signal, or fails, has dealt with it")
  assert preemption.unheeded_stop() == 0
  with preemption.stop_requests():
    signal.raise_signal(signal.SIGUSR1)
  with preemption.stop_requests():  # the next run starts afresh; its own ending is what counts
    pass
  assert preemption.unheeded_stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGUSR1], ids=["sighup", "sigusr1"])
def test_a_hang_up_or_a_batch_systems_warning_is_a_stop_request(signum):
  """A closed terminal (SIGHUP) or SLURM's --signal=USR1@T stops at a step, as SIGTERM does."""
  inherited = signal.signal(signum, signal.SIG_DFL)  # as in a terminal (not under nohup)
  try:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    with preemption.stop_requests() as stop:
      assert callable(signal.getsignal(signum))  # (raised unhandled, it would end this test)
      assert stop.requested(3) == 0
      signal.raise_signal(signum)
      assert (stop.requested(4), stop.received) == (signum, signum)
      with pytest.raises(preemption.StoppedAtOnce, match="SIGTERM again: stopped at once"):
        signal.raise_signal(signal.SIGTERM)
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
  finally:
    signal.signal(signum, inherited)


def test_signals_ignored_or_handled_before_keep_their_handlers():
  """Under nohup SIGHUP stays ignored; a handler someone installed stays; SIGQUIT quits."""
  seen = []
  previous = {
    signal.SIGHUP: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    signal.SIGUSR1: signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum)),
  }
  quit_before = signal.getsignal(signal.SIGQUIT)  # SIG_DFL in a terminal; SIG_IGN in `cmd &`
  try:
    with preemption.stop_requests() as stop:
      assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
      assert signal.getsignal(signal.SIGQUIT) == quit_before  # never a stop request
      signal.raise_signal(signal.SIGHUP)
      signal.raise_signal(signal.SIGUSR1)
      assert (stop.requested(1), seen) == (0, [signal.SIGUSR1])
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def test_other_threads_leave_the_handlers_alone():
  before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
  seen = []

  def run():
    with preemption.stop_requests() as stop:
      seen.append(({s: signal.getsignal(s) for s in before}, stop.requested(1)))

  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  assert seen == [(before, 0)]


# `python -m convnet.main` whose Orbax saves of step `at` are followed by `signals`, each sent
# once the one before it is handled: from inside `checkpoints.save`, while Orbax still writes.
SIGNALLED_MAIN = """
import os, runpy, signal, sys, time
import orbax.checkpoint as ocp

at, signals = int(sys.argv[1]), [getattr(signal, name) for name in sys.argv[2].split(",")]
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal (nohup would ignore it)
save = ocp.CheckpointManager.save

def save_then_signal(self, step, *args, **kwargs):
  saved = save(self, step, *args, **kwargs)
  for signum in signals if step == at else ():
    os.kill(os.getpid(), signum)
    for _ in range(25):  # 25 ms: Python runs the handler at the loop's next turn
      time.sleep(0.001)
  return saved

ocp.CheckpointManager.save = save_then_signal
sys.argv = ["convnet.main", *sys.argv[3:]]
runpy.run_module("convnet.main", run_name="__main__")
"""
# Two epochs of 13 steps of the book's convnet on the embedded digits, saved every 5 steps.
FIELDS = {
  "data.source": "embedded",
  "batch_size": 256,
  "num_epochs": 2,
  "steps_per_call": 1,
  "checkpoint_every_steps": 5,
  "log_every_steps": 5,
  "checkpoint_keep": 50,
}
TIMING = ("wall_time_s", "train_examples_per_sec")


def _run(workdir, at=0, signals="SIGINT"):
  flags = [f"--config.{k}={v}" for k, v in FIELDS.items()]
  command = [sys.executable, "-c", SIGNALLED_MAIN, str(at), signals]
  command += ["--config=configs/mnist.py", f"--workdir={workdir}", *flags]
  return subprocess.run(command, cwd=REPO, env=cpu_env(), capture_output=True, text=True)


def _errors(stderr):
  """The warnings and errors of a run's log (absl's lines start with W, E or F and the date)."""
  return [line for line in stderr.splitlines() if line[:1] in "WEF" and line[1:2].isdigit()]


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.mark.slow
def test_a_second_sigint_in_the_epoch_end_save_and_a_hang_up_each_stop_in_one_line(tmp_path):
  """SIGINT, then SIGINT again 25 ms later within the save of step 13 (an epoch's end): one
  line, no traceback; the rerun is stopped by SIGHUP at step 20, which saves first; and the
  run so far is the straight run's first 20 steps, bitwise."""
  config = mnist.get_config()
  for key, value in (FIELDS | {"max_steps": 20}).items():  # max_steps: stop, same schedule
    *parents, leaf = key.split(".")
    setattr(config[parents[0]] if parents else config, leaf, value)
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  workdir = tmp_path / "signalled"

  broken_off = _run(workdir, at=13, signals="SIGINT,SIGINT")
  assert broken_off.returncode == 128 + signal.SIGINT, broken_off.stderr[-3000:]
  assert "Traceback" not in broken_off.stderr and "Exception ignored" not in broken_off.stderr
  warnings = _errors(broken_off.stderr)
  assert len(warnings) == 2, warnings
  assert warnings[0].endswith("SIGINT received: saving a checkpoint, then stopping")
  assert warnings[1].endswith(
    "SIGINT again: stopped at once, without saving; run the same command again to resume from "
    "the last checkpoint"
  )

  hung_up = _run(workdir, at=20, signals="SIGHUP")
  assert hung_up.returncode == 128 + signal.SIGHUP, hung_up.stderr[-3000:]
  assert "Traceback" not in hung_up.stderr
  warnings = _errors(hung_up.stderr)
  assert len(warnings) == 2, warnings
  assert warnings[0].endswith("SIGHUP received: saving a checkpoint, then stopping")
  assert warnings[1].endswith(
    f"SIGHUP at step 20: checkpoint saved in {workdir}; run the same command again to resume"
  )

  def whole(workdir):  # every record but the partial epoch's that the straight run's stop wrote
    records = _metrics(workdir)
    return [r for r in records if r["kind"] != "epoch" or float(r["epoch"]).is_integer()]

  assert [r["step"] for r in whole(workdir)] == [5, 10, 13, 15, 20]
  assert whole(workdir) == whole(tmp_path / "straight")
  resumed, step = checkpoints.restore_params(str(workdir))
  expected, straight_step = checkpoints.restore_params(str(tmp_path / "straight"))
  assert step == straight_step == 20
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise


@pytest.mark.slow  # a process of its own, since the handlers and hooks it sets are global
def test_on_the_way_out_signals_and_background_threads_print_nothing():
  code = (
    "import os, signal, threading\n"
    "from convnet import preemption\n"
    "preemption.ignore_stop_signals()\n"
    "def cut_off():\n"
    "  raise RuntimeError('cannot schedule new futures after shutdown')\n"
    "thread = threading.Thread(target=cut_off)\n"
    "thread.start()\n"
    "thread.join()\n"
    "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):\n"
    "  os.kill(os.getpid(), s)\n"
    "print('exited normally')\n"
  )
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert (done.returncode, done.stdout, done.stderr) == (0, "exited normally\n", "")
