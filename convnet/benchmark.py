r"""Training and eval throughput of the book's convnet, next to PyTorch and Keras, in
float32 and bfloat16.

  python -m convnet.benchmark [--batch_sizes=32,128,512] [--dtypes=float32,bfloat16]
      [--out=benchmark.json]

Each framework runs in a worker process of its own, on the same model (the
book's convnet, 33,194 parameters), data (random 28x28x1 images, 10 classes)
and optimizer (RMSprop, learning rate 1e-3, decay 0.9). For every batch size
and dtype the workers take turns: every round times each of them once, so a
change in the machine's speed touches them all.

Dtypes: "float32" computes in float32 throughout; "bfloat16" is each
framework's own mixed precision, parameters, optimizer state and loss in
float32 (the config's `model.dtype` for project and flax, `torch.autocast`
for torch, the "mixed_bfloat16" policy for keras; see `convnet.frameworks`).
A framework that cannot compute in a dtype here is skipped, with the reason
in the table and the JSON.

Reported per batch size, dtype and framework: training and eval examples/s
(median over rounds); the training rate over the best peer's (torch or keras,
same batch size and dtype); the fraction of that dtype's matmul peak; the
time its process took to finish the first training step (imports, data, model
and compilation included); the duration of that first step; and the
process's peak RSS. FLOPs per example come from XLA's cost analysis of the
compiled float32 train and eval steps (the same count serves bfloat16); the
matmul peak is a square 2048x2048 matmul under jax, measured here per dtype
(bfloat16 inputs with float32 accumulation).

JSON: `matmul_peak_gflops[dtype]`, and `throughput[batch_size][dtype][framework]`
holding the measurements or `{"skipped": reason}`.

Frameworks (`convnet.frameworks` trains the model in each): project (this
project's training path), flax (a plain Flax loop), torch (PyTorch eager) and
keras (tf.keras `fit`).

Also, with `--seeds=N`: N seeds trained at once by one `jax.vmap` program,
against the same N runs one after another; and with `--fashion_mnist_dir`:
the wall time until the book's convnet first reaches 90% test accuracy on the
full Fashion-MNIST, this project against PyTorch with the same
hyperparameters (both float32).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time

from absl import app, flags

from convnet import cli, files
from convnet import frameworks as frameworks_lib
from convnet.errors import ConvnetError, DataError, WorkdirError

FRAMEWORKS = ("project", "flax", "torch", "keras")
PEERS = ("torch", "keras")  # what "vs best peer" compares with
DTYPES = frameworks_lib.DTYPES
INPUT_SHAPE, NUM_CLASSES = frameworks_lib.INPUT_SHAPE, frameworks_lib.NUM_CLASSES


def available_frameworks(requested) -> tuple[list[str], list[str]]:
  """(frameworks to run, frameworks skipped because their package is missing)."""
  module = {"project": "jax", "flax": "flax", "torch": "torch", "keras": "keras"}
  run = [f for f in requested if importlib.util.find_spec(module[f]) is not None]
  return run, [f for f in requested if f not in run]


def _receive(conn, process, framework: str):
  """The worker's next answer; an error if it died instead (its traceback is on stderr)."""
  while not conn.poll(1.0):
    if not process.is_alive():
      raise RuntimeError(f"the {framework} worker exited with code {process.exitcode}")
  return conn.recv()


def measure_throughput(
  frameworks, batch_size, rounds, examples, eval_batch_size, options, dtype="float32"
):
  """Starts one worker per framework, then times them in turns.

  Returns:
    {framework: measurements}, in the order of `frameworks`; the measurements
    are `{"skipped": reason}` for a framework that cannot compute in `dtype`.
  """
  ctx = multiprocessing.get_context("spawn")
  num_examples = max(examples, eval_batch_size, 4 * batch_size)
  steps = max(examples // batch_size, 1)
  workers, results = {}, {}
  for framework in frameworks:  # started one at a time, so startup times do not overlap
    reason = frameworks_lib.unsupported_reason(framework, dtype)
    if reason:
      results[framework] = {"skipped": reason}
      continue
    parent, child = ctx.Pipe()
    args = (
      child,
      framework,
      batch_size,
      num_examples,
      options,
      eval_batch_size,
      time.time(),
      dtype,
    )
    process = ctx.Process(target=frameworks_lib.worker, args=args, daemon=True)
    process.start()
    first = _receive(parent, process, framework)
    if "skipped" in first:
      process.join()
      results[framework] = first
      continue
    workers[framework] = (parent, process)
    results[framework] = first | {"train_s": [], "eval_s": []}
  for _ in range(rounds):
    for framework, (conn, process) in workers.items():
      conn.send(("train", steps))
      results[framework]["train_s"].append(_receive(conn, process, framework))
      conn.send(("eval", eval_batch_size))
      results[framework]["eval_s"].append(_receive(conn, process, framework))
  for framework, (conn, process) in workers.items():
    conn.send(("stop", None))
    results[framework].update(_receive(conn, process, framework))
    process.join()
    r = results[framework]
    r["train_examples_per_sec"] = steps * batch_size / statistics.median(r.pop("train_s"))
    eval_examples = num_examples // eval_batch_size * eval_batch_size
    if framework == "project":
      eval_examples = num_examples  # `epochs.evaluate` covers every example
    r["eval_examples_per_sec"] = eval_examples / statistics.median(r.pop("eval_s"))
  return results


# ----------------------------------------------------------------------------
# In this process: FLOPs, matmul peak, seeds at once, time to accuracy.


def step_flops(batch_size: int, eval_batch_size: int) -> dict[str, float]:
  """FLOPs per example of the book's train and eval steps, from XLA's cost analysis."""
  import jax

  from convnet import models, optim
  from convnet import steps as steps_lib

  config = frameworks_lib.book_config("lax")
  model = models.create_model(config.model, INPUT_SHAPE, NUM_CLASSES)
  tx = optim.create_optimizer(config.optimizer, 1, 1)
  state = steps_lib.create_train_state(jax.random.key(0), model, INPUT_SHAPE, tx)
  images, labels = frameworks_lib.random_data(max(batch_size, eval_batch_size))

  batch = {"image": images[:batch_size], "label": labels[:batch_size]}
  eval_batch = {
    "image": images[:eval_batch_size],
    "label": labels[:eval_batch_size],
    "mask": images[:eval_batch_size, 0, 0, 0] * 0 + 1,
  }
  return {
    "train_flops_per_example": steps_lib.compiled_flops(steps_lib.train_step, state, batch)
    / batch_size,
    "eval_flops_per_example": steps_lib.compiled_flops(steps_lib.eval_step, state, eval_batch)
    / eval_batch_size,
  }


def matmul_peak_gflops(dtype: str = "float32", size: int = 2048, repeats: int = 10) -> float:
  """GFLOP/s of a square `size` x `size` matmul under jax: the machine's practical peak.

  "float32": float32 inputs and result; "bfloat16": bfloat16 inputs with float32
  accumulation (`preferred_element_type`), as mixed precision's dots compute.
  The best of `repeats` timed calls, after one that compiles.
  """
  import jax
  import jax.numpy as jnp

  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r}: must be one of {', '.join(DTYPES)}")
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32))
  matmul(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * size**3 / min(times) / 1e9


def measure_seeds(num_seeds: int, batch_size: int, steps: int, options: dict, rounds: int = 3):
  """Examples/s of `num_seeds` runs trained by one vmapped program, and one after another."""
  import jax
  import numpy as np

  from convnet import epochs, models, optim
  from convnet import steps as steps_lib

  config = frameworks_lib.book_config()
  model = models.create_model(config.model, INPUT_SHAPE, NUM_CLASSES)
  tx = optim.create_optimizer(config.optimizer, 1, 1)
  images, labels = jax.device_put(frameworks_lib.random_data(steps * batch_size))
  orders = np.stack([epochs.epoch_order(steps * batch_size, s, 0) for s in range(num_seeds)])
  steps_per_call, microbatch_size = options["steps_per_call"], options["microbatch_size"]
  # The vmapped program trains every seed on each microbatch at once: it gets
  # microbatches `num_seeds` times smaller, so that its working set stays the same.
  vmap_microbatch_size = max(microbatch_size // num_seeds, 1) if microbatch_size else 0
  steps_fn = functools.partial(
    steps_lib.train_steps, steps_per_call=steps_per_call, batch_size=batch_size
  )
  single = jax.jit(functools.partial(steps_fn, microbatch_size=microbatch_size), donate_argnums=0)
  batched = jax.jit(
    jax.vmap(
      functools.partial(steps_fn, microbatch_size=vmap_microbatch_size),
      in_axes=(0, None, None, 0, None, None),
    ),
    donate_argnums=0,
  )

  def states():
    return [
      steps_lib.create_train_state(jax.random.key(s), model, INPUT_SHAPE, tx)
      for s in range(num_seeds)
    ]

  def run(fn, state, order):
    for start in range(0, steps, steps_per_call):
      state, metrics = fn(state, images, labels, order, start, min(steps_per_call, steps - start))
    jax.block_until_ready(metrics)
    return state

  def sequential():
    return [run(single, state, orders[s]) for s, state in enumerate(states())]

  def vmapped():
    return run(batched, jax.tree.map(lambda *xs: np.stack(xs), *states()), orders)

  result = {
    "seeds": num_seeds,
    "batch_size": batch_size,
    "steps": steps,
    "microbatch_size": microbatch_size,
    "vmap_microbatch_size": vmap_microbatch_size,
  }
  runs = {"sequential": sequential, "vmap": vmapped}
  times = {name: [] for name in runs}
  for fn in runs.values():
    fn()  # compile
  for _ in range(rounds):  # in turns, as the frameworks are
    for name, fn in runs.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  for name, seconds in times.items():
    result[f"{name}_examples_per_sec"] = num_seeds * steps * batch_size / statistics.median(seconds)
  result["vmap_speedup"] = result["vmap_examples_per_sec"] / result["sequential_examples_per_sec"]
  return result


def time_to_accuracy(framework: str, idx_dir: str, target: float, max_epochs: int):
  """Seconds of training and per-epoch testing until test accuracy first reaches `target`.

  The full 60,000 training images (no validation split), batch 128, RMSprop;
  test accuracy on the 10,000 test images after every epoch.
  """
  import numpy as np

  from convnet import input_pipeline
  from convnet.sources import idx

  raw = idx.load_idx_dir(idx_dir, num_classes=NUM_CLASSES)
  x_train, y_train = input_pipeline.scale(raw.train_images), raw.train_labels.astype(np.int32)
  x_test, y_test = input_pipeline.scale(raw.test_images), raw.test_labels.astype(np.int32)
  batch_size, steps_per_epoch = 128, len(y_train) // 128
  history = []
  if framework == "project":
    import jax

    from convnet import epochs, models, optim
    from convnet import steps as steps_lib

    config = frameworks_lib.book_config()
    model = models.create_model(config.model, INPUT_SHAPE, NUM_CLASSES)
    tx = optim.create_optimizer(config.optimizer, steps_per_epoch, steps_per_epoch * max_epochs)
    state = steps_lib.create_train_state(jax.random.key(0), model, INPUT_SHAPE, tx)
    per_call = config.steps_per_call
    steps_fn = jax.jit(
      functools.partial(
        steps_lib.train_steps,
        steps_per_call=per_call,
        batch_size=batch_size,
        microbatch_size=config.microbatch_size,
      ),
      donate_argnums=0,
    )
    eval_fn = jax.jit(
      functools.partial(steps_lib.eval_step, microbatch_size=config.microbatch_size)
    )
    images, labels = jax.device_put((x_train, y_train))
    test = input_pipeline.Split(x_test, y_test)
    start = time.perf_counter()
    for epoch in range(max_epochs):
      order = jax.device_put(epochs.epoch_order(len(y_train), 0, epoch))
      for first in range(0, steps_per_epoch, per_call):
        count = min(per_call, steps_per_epoch - first)
        state, _ = steps_fn(state, images, labels, order, first, count)
      accuracy = epochs.evaluate(eval_fn, state, test, config.eval_batch_size)["accuracy"]
      history.append((time.perf_counter() - start, accuracy))
      if accuracy >= target:
        break
  else:
    import torch

    torch.manual_seed(0)
    model = frameworks_lib.torch_book_convnet()
    optimizer = torch.optim.RMSprop(
      model.parameters(), lr=frameworks_lib.LEARNING_RATE, alpha=frameworks_lib.RMSPROP_DECAY
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    images = torch.from_numpy(x_train.transpose(0, 3, 1, 2).copy())
    labels = torch.from_numpy(y_train.astype(np.int64))
    test_images = torch.from_numpy(x_test.transpose(0, 3, 1, 2).copy())
    start = time.perf_counter()
    for epoch in range(max_epochs):
      order = torch.from_numpy(np.random.default_rng([0, epoch]).permutation(len(y_train)))
      model.train()
      for i in range(steps_per_epoch):
        idx = order[i * batch_size : (i + 1) * batch_size]
        optimizer.zero_grad()
        loss_fn(model(images[idx]), labels[idx]).backward()
        optimizer.step()
      model.eval()
      with torch.no_grad():
        predictions = torch.cat(
          [model(test_images[i : i + 1000]).argmax(1) for i in range(0, 10000, 1000)]
        )
      accuracy = float((predictions.numpy() == y_test).mean())
      history.append((time.perf_counter() - start, accuracy))
      if accuracy >= target:
        break
  reached = history[-1][1] >= target
  return {
    "framework": framework,
    "target": target,
    "reached": reached,
    "seconds": history[-1][0] if reached else None,
    "epochs": len(history),
    "history": history,
  }


# ----------------------------------------------------------------------------
# Report.


def upgrade_results(results: dict) -> dict:
  """`results` in the current JSON shape, also when read from an older benchmark file.

  Older files held one float32 `matmul_peak_gflops` and
  `throughput[batch_size][framework]`; they become `{"float32": peak}` and
  `throughput[batch_size]["float32"][framework]`.
  """
  peak = results["matmul_peak_gflops"]
  throughput = {}
  for batch_size, row in results["throughput"].items():
    by_dtype = set(row) <= set(DTYPES)
    throughput[batch_size] = row if by_dtype else {"float32": row}
  return results | {
    "matmul_peak_gflops": peak if isinstance(peak, dict) else {"float32": peak},
    "throughput": throughput,
  }


def format_table(results: dict) -> str:
  """The throughput table: one row per batch size, dtype and framework, in the results' order.

  "vs best peer" is the row's training rate over the best of torch's and
  keras's at the same batch size and dtype; "% of peak" is the training FLOP/s
  over the matmul peak of the row's dtype. A skipped framework's row gives the
  reason. Takes the JSON of this or an older version (see `upgrade_results`).
  """
  results = upgrade_results(results)
  lines = [
    "| batch | dtype | framework | train ex/s | vs best peer | % of matmul peak | eval ex/s | "
    "first step (s) | startup (s) | peak RSS (MB) |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  train_flops = results["flops"]["train_flops_per_example"]
  for batch_size, by_dtype in results["throughput"].items():
    for dtype, row in by_dtype.items():
      peak = results["matmul_peak_gflops"].get(dtype)
      measured = {f: r for f, r in row.items() if "skipped" not in r}
      best_peer = max(
        (measured[f]["train_examples_per_sec"] for f in PEERS if f in measured), default=None
      )
      for framework, r in row.items():
        if "skipped" in r:
          lines.append(
            f"| {batch_size} | {dtype} | {framework} | skipped: {r['skipped']} "
            "| - | - | - | - | - | - |"
          )
          continue
        rate = r["train_examples_per_sec"]
        ratio = f"{rate / best_peer:.2f}x" if best_peer else "-"
        fraction = f"{100 * rate * train_flops / (peak * 1e9):.1f}%" if peak else "-"
        lines.append(
          f"| {batch_size} | {dtype} | {framework} | {rate:,.0f} | {ratio} | {fraction} "
          f"| {r['eval_examples_per_sec']:,.0f} | {r['first_step_s']:.2f} "
          f"| {r['startup_s']:.1f} | {r['peak_rss_mb']:,.0f} |"
        )
  return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this command's flags, when it runs as a program (not in its worker processes)."""
  positive, counted = {"lower_bound": 1}, {"lower_bound": 0}
  cli.define(
    flag_values,
    (
      ("list", "batch_sizes", ["32", "128", "512"], "Training batch sizes."),
      ("list", "frameworks", list(FRAMEWORKS), "Frameworks to measure, where installed."),
      ("list", "dtypes", list(DTYPES), "Compute dtypes to measure each framework in."),
      ("integer", "rounds", 5, "Timed rounds per framework and batch size.", positive),
      ("integer", "examples", 8192, "Training examples per timed round.", positive),
      ("integer", "eval_batch_size", 1024, "Batch size of the eval measurement.", positive),
      ("integer", "steps_per_call", 8, "The project's train steps per call.", positive),
      (
        "integer",
        "microbatch_size",
        64,
        "The project's microbatch size; 0: none.",
        counted,
      ),
      ("integer", "seeds", 8, "Seeds for the vmap measurement; 0 to skip it.", counted),
      ("string", "fashion_mnist_dir", "", "IDX folder for the time-to-90% run; empty: skip."),
      ("integer", "max_epochs", 30, "Epoch limit of the time-to-accuracy runs.", positive),
      ("string", "out", "benchmark.json", "Where to write the results as JSON."),
    ),
  )
  flags.register_validator(
    "batch_sizes",
    lambda sizes: all(s.isdigit() and int(s) > 0 for s in sizes),
    "must be positive ints separated by commas, e.g. 32,128",
    flag_values=flag_values,
  )
  flags.register_validator(
    "frameworks",
    lambda names: set(names) <= set(FRAMEWORKS),
    f"must name some of {','.join(FRAMEWORKS)}",
    flag_values=flag_values,
  )
  flags.register_validator(
    "dtypes",
    lambda names: bool(names) and set(names) <= set(DTYPES) and len(set(names)) == len(names),
    f"must name some of {','.join(DTYPES)}, each once",
    flag_values=flag_values,
  )


def check_paths(fashion_mnist_dir: str, out: str) -> None:
  """The time-to-accuracy data (when asked for) and the folder of `out`, checked up front.

  Raises:
    DataError: `fashion_mnist_dir` lacks one of the four IDX files.
    WorkdirError: `out`'s folder does not exist, or `out` is a folder or a symbolic link.
  """
  if fashion_mnist_dir:
    from convnet.sources import idx

    try:
      idx.find_idx_files(fashion_mnist_dir)
    except DataError as e:
      raise DataError(f"--fashion_mnist_dir: {e}") from None
  folder = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(folder) or os.path.isdir(out):
    raise WorkdirError(f"--out={out}: name a file in a folder that exists")
  files.check_target(out)  # a symbolic link there is refused, never written through


def main(argv):
  cli.start(argv, quiet=False, compilation_cache=False)  # its timings include compiling
  FLAGS = flags.FLAGS
  try:  # What would fail after the measurements is refused before them.
    check_paths(FLAGS.fashion_mnist_dir, FLAGS.out)
  except ConvnetError as e:
    sys.exit(f"error: {e}")
  frameworks, skipped = available_frameworks(FLAGS.frameworks)
  if skipped:
    print(f"skipped (not installed): {', '.join(skipped)}")
  batch_sizes = [int(b) for b in FLAGS.batch_sizes]
  results = {
    "machine": {
      "platform": platform.platform(),
      "processor": _cpu_name(),
      "cpus": os.cpu_count(),
      "python": platform.python_version(),
    },
    "date": time.strftime("%Y-%m-%d"),
    "frameworks": frameworks,
    "skipped": skipped,
    "dtypes": FLAGS.dtypes,
    "matmul_peak_gflops": {dtype: matmul_peak_gflops(dtype) for dtype in FLAGS.dtypes},
    "flops": step_flops(128, FLAGS.eval_batch_size),
    "throughput": {},
  }
  results["machine"]["versions"] = _versions(frameworks)
  for batch_size in batch_sizes:
    results["throughput"][str(batch_size)] = {
      dtype: measure_throughput(
        frameworks,
        batch_size,
        FLAGS.rounds,
        FLAGS.examples,
        FLAGS.eval_batch_size,
        {"steps_per_call": FLAGS.steps_per_call, "microbatch_size": FLAGS.microbatch_size},
        dtype,
      )
      for dtype in FLAGS.dtypes
    }
  print(format_table(results))
  if FLAGS.seeds:
    results["seeds"] = measure_seeds(
      FLAGS.seeds,
      128,
      max(FLAGS.examples // 128, 8),
      {"steps_per_call": FLAGS.steps_per_call, "microbatch_size": FLAGS.microbatch_size},
      FLAGS.rounds,
    )
    s = results["seeds"]
    print(
      f"{s['seeds']} seeds, batch {s['batch_size']}: vmap {s['vmap_examples_per_sec']:,.0f} ex/s, "
      f"one after another {s['sequential_examples_per_sec']:,.0f} ex/s ({s['vmap_speedup']:.2f}x)"
    )
  if FLAGS.fashion_mnist_dir:
    results["time_to_accuracy"] = [
      time_to_accuracy(f, FLAGS.fashion_mnist_dir, 0.90, FLAGS.max_epochs)
      for f in ("project", "torch")
      if f == "project" or "torch" in frameworks
    ]
    for r in results["time_to_accuracy"]:
      when = f"{r['seconds']:.0f} s" if r["reached"] else "not reached"
      print(
        f"time to 90% test accuracy, Fashion-MNIST, {r['framework']}: {when} ({r['epochs']} epochs)"
      )
  files.atomic_write(FLAGS.out, json.dumps(results, indent=2))
  print(f"wrote {FLAGS.out}")


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def _versions(frameworks) -> dict[str, str]:
  from importlib.metadata import PackageNotFoundError, version

  names = {
    "project": ["jax", "jaxlib", "flax"],
    "torch": ["torch"],
    "keras": ["keras", "tensorflow-cpu"],
  }
  found = {}
  for framework in frameworks:
    for name in names.get(framework, []):
      try:
        found[name] = version(name)
      except PackageNotFoundError:
        pass
  return found


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
