"""Times the quick start as whole processes, beside the same job in PyTorch, in one run.

Each round runs, one after another:
- `project, first run`: `python -m convnet.main` on the quick start's config,
  with an empty compilation cache (a new `CONVNET_CACHE_DIR`) and a new workdir;
- `project, rerun`: the same command with the cache the first run filled, and
  a new workdir (so it trains again, only without compiling);
- `pytorch`: `scripts/quickstart_torch.py`, the same job in PyTorch eager.
It prints each one's minimum, median and maximum over the rounds, their
ratios to PyTorch's median, and the project's set-up time ("First steps
began ... into the run": data, model and compiling, or loading from the
cache), which is what each sweep cell pays before training.

  python scripts/time_to_result.py [--rounds=3]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = [sys.executable, "-m", "convnet.main", "--config=configs/mnist.py"]
QUICK_START = ["--config.data.source=embedded"]


def timed(command, env) -> tuple[float, str]:
  start = time.perf_counter()
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if done.returncode:
    sys.exit(f"error: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
  return seconds, done.stderr + done.stdout


def set_up_seconds(log: str) -> float:
  return float(re.search(r"First steps began ([\d.]+) s into the run", log)[1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  times = {"project, first run": [], "project, rerun": [], "pytorch": []}
  set_up = {"project, first run": [], "project, rerun": []}
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  for _ in range(args.rounds):
    with tempfile.TemporaryDirectory() as tmp:
      env["CONVNET_CACHE_DIR"] = os.path.join(tmp, "cache")
      for name, workdir in (("project, first run", "a"), ("project, rerun", "b")):
        seconds, log = timed([*MAIN, f"--workdir={os.path.join(tmp, workdir)}", *QUICK_START], env)
        times[name].append(seconds)
        set_up[name].append(set_up_seconds(log))
    times["pytorch"].append(timed([sys.executable, "scripts/quickstart_torch.py"], env)[0])
  torch = statistics.median(times["pytorch"])
  print(f"{'':20} {'min':>6} {'median':>7} {'max':>6}  {'vs pytorch':>10}  set-up (median)")
  for name, values in times.items():
    ratio = statistics.median(values) / torch
    line = f"{name:20} {min(values):6.1f} {statistics.median(values):7.1f} {max(values):6.1f}"
    extra = f"  {statistics.median(set_up[name]):.2f} s" if name in set_up else ""
    print(f"{line}  {ratio:9.2f}x{extra}")


if __name__ == "__main__":
  main()
