"""Stop requests: a flag in one process; one agreed step in two, whichever is signalled."""

import json
import os
import signal
import sys
import textwrap
import threading
import time

import pytest
from conftest import cpu_env, free_address, start_processes

from convnet import preemption

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
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  with preemption.stop_requests() as stop:
    assert stop.requested(0) == 0
    assert stop.requested(5) == 0
    signal.raise_signal(signal.SIGTERM)
    assert stop.requested(6) == signal.SIGTERM
    assert stop.requested(7) == signal.SIGTERM  # it stands
    with pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)
    with pytest.raises(ValueError, match="steps must increase: step 7 after step 7"):
      stop.requested(7)
  assert {s: signal.getsignal(s) for s in before} == before
  with preemption.stop_requests() as stop:  # a new run starts without a request
    signal.raise_signal(signal.SIGINT)
    assert (stop.requested(7), stop.received) == (signal.SIGINT, signal.SIGINT)
  assert {s: signal.getsignal(s) for s in before} == before


def test_other_threads_leave_the_handlers_alone():
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  seen = []

  def run():
    with preemption.stop_requests() as stop:
      seen.append(({s: signal.getsignal(s) for s in before}, stop.requested(1)))

  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  assert seen == [(before, 0)]
