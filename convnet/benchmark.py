r"""Training and eval throughput of the book's convnet, next to PyTorch and Keras.

  python -m convnet.benchmark [--batch_sizes=32,128,512] [--out=benchmark.json]

Each framework runs in a worker process of its own, on the same model (the
book's convnet, 33,194 parameters), data (random 28x28x1 images, 10 classes)
and optimizer (RMSprop, learning rate 1e-3, decay 0.9, float32). The workers
take turns: every round times each of them once, so a change in the machine's
speed touches them all. Reported per framework and batch size: training and
eval examples/s (median over rounds), the time its process took to finish the
first training step (imports, data, model and compilation included), the
duration of that first step, and the process's peak RSS. FLOPs per example
come from XLA's cost analysis of the compiled train and eval steps; the
fraction of peak compares them with a float32 matmul measured here.

Frameworks:
  project  this project's training path: `steps.train_steps` over
           device-resident data, `steps_per_call` steps a call, matmul ops
  flax     a plain Flax loop as in Flax's examples: one jitted step a call,
           `nn.Conv` and `nn.max_pool`, batches from host memory
  torch    PyTorch eager, CPU (pip install -e '.[bench]')
  keras    tf.keras `fit` (TensorFlow's default, no XLA)

Also, with `--seeds=N`: N seeds trained at once by one `jax.vmap` program,
against the same N runs one after another; and with `--fashion_mnist_dir`:
the wall time until the book's convnet first reaches 90% test accuracy on the
full Fashion-MNIST, this project against PyTorch with the same
hyperparameters.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time

from absl import app, flags

from convnet import cli

FRAMEWORKS = ("project", "flax", "torch", "keras")
INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
LEARNING_RATE, RMSPROP_DECAY = 1e-3, 0.9


# ----------------------------------------------------------------------------
# Workers: one process per framework and batch size, driven over a pipe.


def _random_data(num_examples: int, seed: int = 0):
  import numpy as np

  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(num_examples, *INPUT_SHAPE)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=num_examples).astype(np.int32)
  return images, labels


def _book_config(implementation: str = "matmul"):
  from convnet.configs import mnist

  config = mnist.get_config()
  config.model.implementation = implementation
  config.optimizer.learning_rate = LEARNING_RATE
  config.optimizer.rmsprop_decay = RMSPROP_DECAY
  return config


class _JaxRunner:
  """The project's path (`train_steps`) or the plain per-step Flax loop."""

  def __init__(self, framework: str, batch_size: int, num_examples: int, options: dict):
    import jax
    import numpy as np

    from convnet import epochs, models, optim
    from convnet import steps as steps_lib

    self.jax, self.epochs = jax, epochs
    implementation = "matmul" if framework == "project" else "lax"
    config = _book_config(implementation)
    model = models.create_model(config.model, INPUT_SHAPE, NUM_CLASSES)
    tx = optim.create_optimizer(config.optimizer, 1, 1)
    self.state = steps_lib.create_train_state(jax.random.key(0), model, INPUT_SHAPE, tx)
    self.images, self.labels = _random_data(num_examples)
    self.batch_size, self.steps_per_call = batch_size, options["steps_per_call"]
    microbatch_size = (
      options["microbatch_size"] if batch_size % max(options["microbatch_size"], 1) == 0 else 0
    )
    self.project = framework == "project"
    self.batches_per_pass = num_examples // batch_size
    if self.project:
      self.device_images, self.device_labels = jax.device_put((self.images, self.labels))
      self.order = jax.device_put(np.arange(num_examples, dtype=np.int32))
      self.step_fn = jax.jit(
        functools.partial(
          steps_lib.train_steps,
          steps_per_call=self.steps_per_call,
          batch_size=batch_size,
          microbatch_size=microbatch_size,
        ),
        donate_argnums=0,
      )
      self.eval_fn = jax.jit(
        functools.partial(steps_lib.eval_step, microbatch_size=options["microbatch_size"])
      )
    else:
      self.step_fn = jax.jit(steps_lib.train_step)
      self.eval_fn = jax.jit(lambda state, x: state.apply_fn({"params": state.params}, x))

  def train(self, num_steps: int) -> None:
    if self.project:
      done = 0
      while done < num_steps:
        start = done % self.batches_per_pass
        count = min(self.steps_per_call, num_steps - done, self.batches_per_pass - start)
        self.state, metrics = self.step_fn(
          self.state, self.device_images, self.device_labels, self.order, start, count
        )
        done += count
    else:
      for i in range(num_steps):
        start = i % self.batches_per_pass * self.batch_size
        batch = {
          "image": self.images[start : start + self.batch_size],
          "label": self.labels[start : start + self.batch_size],
        }
        self.state, metrics = self.step_fn(self.state, batch)
    self.jax.block_until_ready(metrics)

  def evaluate(self, batch_size: int) -> None:
    if self.project:
      from convnet import input_pipeline

      split = input_pipeline.Split(self.images, self.labels)
      self.epochs.evaluate(self.eval_fn, self.state, split, batch_size)
    else:
      for start in range(0, len(self.labels) - batch_size + 1, batch_size):
        out = self.eval_fn(self.state, self.images[start : start + batch_size])
      self.jax.block_until_ready(out)


class _TorchRunner:
  def __init__(self, framework: str, batch_size: int, num_examples: int, options: dict):
    import torch

    torch.manual_seed(0)
    self.torch, self.model = torch, torch_book_convnet()
    self.optimizer = torch.optim.RMSprop(
      self.model.parameters(), lr=LEARNING_RATE, alpha=RMSPROP_DECAY
    )
    images, labels = _random_data(num_examples)
    self.images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    self.labels = torch.from_numpy(labels.astype("int64"))
    self.batch_size, self.batches_per_pass = batch_size, num_examples // batch_size
    self.loss = torch.nn.CrossEntropyLoss()

  def train(self, num_steps: int) -> None:
    self.model.train()
    for i in range(num_steps):
      start = i % self.batches_per_pass * self.batch_size
      x, y = (
        self.images[start : start + self.batch_size],
        self.labels[start : start + self.batch_size],
      )
      self.optimizer.zero_grad()
      self.loss(self.model(x), y).backward()
      self.optimizer.step()

  def evaluate(self, batch_size: int) -> None:
    self.model.eval()
    with self.torch.no_grad():
      for start in range(0, len(self.labels) - batch_size + 1, batch_size):
        self.model(self.images[start : start + batch_size])


def torch_book_convnet():
  """The book's convnet in PyTorch: 33,194 parameters, as `configs/mnist.py`."""
  from torch import nn

  return nn.Sequential(
    nn.Conv2d(1, 16, 3),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(32, 32, 3),
    nn.ReLU(),
    nn.Flatten(),
    nn.Linear(3 * 3 * 32, 64),
    nn.ReLU(),
    nn.Linear(64, NUM_CLASSES),
  )


class _KerasRunner:
  def __init__(self, framework: str, batch_size: int, num_examples: int, options: dict):
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    self.model = keras.Sequential(
      [
        keras.Input(INPUT_SHAPE),
        layers.Conv2D(16, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3, activation="relu"),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(NUM_CLASSES),
      ]
    )
    self.model.compile(
      optimizer=keras.optimizers.RMSprop(LEARNING_RATE, rho=RMSPROP_DECAY),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      jit_compile=False,
    )
    self.images, self.labels = _random_data(num_examples)
    self.batch_size = batch_size

  def train(self, num_steps: int) -> None:
    n = num_steps * self.batch_size
    self.model.fit(
      self.images[:n],
      self.labels[:n],
      batch_size=self.batch_size,
      epochs=1,
      verbose=0,
      shuffle=False,
    )

  def evaluate(self, batch_size: int) -> None:
    self.model.predict(self.images, batch_size=batch_size, verbose=0)


RUNNERS = {"project": _JaxRunner, "flax": _JaxRunner, "torch": _TorchRunner, "keras": _KerasRunner}


def _worker(conn, framework, batch_size, num_examples, options, eval_batch_size, t0):
  """Serves timing requests for one framework and batch size until told to stop."""
  sys.path.insert(0, os.getcwd())
  runner = RUNNERS[framework](framework, batch_size, num_examples, options)
  start = time.perf_counter()
  runner.train(1)
  first_step_s = time.perf_counter() - start
  startup_s = time.time() - t0
  runner.train(2 * options["steps_per_call"])  # warm up every path the timed rounds take
  runner.evaluate(eval_batch_size)
  conn.send({"startup_s": startup_s, "first_step_s": first_step_s})
  while True:
    request, arg = conn.recv()
    if request == "stop":
      rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
      conn.send({"peak_rss_mb": rss / 2**20})
      return
    start = time.perf_counter()
    if request == "train":
      runner.train(arg)
    else:
      runner.evaluate(arg)
    conn.send(time.perf_counter() - start)


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


def measure_throughput(frameworks, batch_size, rounds, examples, eval_batch_size, options):
  """Starts one worker per framework, then times them in turns."""
  ctx = multiprocessing.get_context("spawn")
  num_examples = max(examples, eval_batch_size, 4 * batch_size)
  steps = max(examples // batch_size, 1)
  workers, results = {}, {}
  for framework in frameworks:  # started one at a time, so startup times do not overlap
    parent, child = ctx.Pipe()
    args = (
      child,
      framework,
      batch_size,
      num_examples,
      options,
      eval_batch_size,
      time.time(),
    )
    process = ctx.Process(target=_worker, args=args, daemon=True)
    process.start()
    workers[framework] = (parent, process)
    results[framework] = _receive(parent, process, framework) | {"train_s": [], "eval_s": []}
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

  config = _book_config("lax")
  model = models.create_model(config.model, INPUT_SHAPE, NUM_CLASSES)
  tx = optim.create_optimizer(config.optimizer, 1, 1)
  state = steps_lib.create_train_state(jax.random.key(0), model, INPUT_SHAPE, tx)
  images, labels = _random_data(max(batch_size, eval_batch_size))

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


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
  """float32 GFLOP/s of a square matmul under jax: the machine's practical peak."""
  import jax
  import jax.numpy as jnp

  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
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

  config = _book_config()
  model = models.create_model(config.model, INPUT_SHAPE, NUM_CLASSES)
  tx = optim.create_optimizer(config.optimizer, 1, 1)
  images, labels = jax.device_put(_random_data(steps * batch_size))
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

    config = _book_config()
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
    model = torch_book_convnet()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=LEARNING_RATE, alpha=RMSPROP_DECAY)
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


def format_table(results: dict) -> str:
  """The throughput table, one row per batch size and framework, this project first."""
  lines = [
    "| batch | framework | train ex/s | vs keras | % of matmul peak | eval ex/s | "
    "first step (s) | startup (s) | peak RSS (MB) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  peak = results["matmul_peak_gflops"] * 1e9
  train_flops = results["flops"]["train_flops_per_example"]
  for batch_size, row in results["throughput"].items():
    keras = row.get("keras", {}).get("train_examples_per_sec")
    for framework, r in row.items():
      rate = r["train_examples_per_sec"]
      ratio = f"{rate / keras:.2f}x" if keras else "-"
      lines.append(
        f"| {batch_size} | {framework} | {rate:,.0f} | {ratio} "
        f"| {100 * rate * train_flops / peak:.1f}% | {r['eval_examples_per_sec']:,.0f} "
        f"| {r['first_step_s']:.2f} | {r['startup_s']:.1f} "
        f"| {r['peak_rss_mb']:,.0f} |"
      )
  return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this command's flags, when it runs as a program (not in its worker processes)."""
  flags.DEFINE_list(
    "batch_sizes", ["32", "128", "512"], "Training batch sizes.", flag_values=flag_values
  )
  flags.register_validator(
    "batch_sizes",
    lambda sizes: all(s.isdigit() and int(s) > 0 for s in sizes),
    "must be positive ints separated by commas, e.g. 32,128",
    flag_values=flag_values,
  )
  flags.DEFINE_list(
    "frameworks",
    list(FRAMEWORKS),
    "Frameworks to measure, where installed.",
    flag_values=flag_values,
  )
  flags.register_validator(
    "frameworks",
    lambda names: set(names) <= set(FRAMEWORKS),
    f"must name some of {','.join(FRAMEWORKS)}",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "rounds",
    5,
    "Timed rounds per framework and batch size.",
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "examples",
    8192,
    "Training examples per timed round.",
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "eval_batch_size",
    1024,
    "Batch size of the eval measurement.",
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "steps_per_call",
    8,
    "The project's train steps per call.",
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "microbatch_size",
    64,
    "The project's microbatch size; 0: whole batches.",
    lower_bound=0,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "seeds",
    8,
    "Seeds for the vmap measurement; 0 to skip it.",
    lower_bound=0,
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "fashion_mnist_dir",
    "",
    "IDX folder for the time-to-90% run; empty: skip.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "max_epochs",
    30,
    "Epoch limit of the time-to-accuracy runs.",
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "out", "benchmark.json", "Where to write the results as JSON.", flag_values=flag_values
  )


def main(argv):
  cli.start(argv, quiet=False, compilation_cache=False)  # its timings include compiling
  FLAGS = flags.FLAGS
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
    "matmul_peak_gflops": matmul_peak_gflops(),
    "flops": step_flops(128, FLAGS.eval_batch_size),
    "throughput": {},
  }
  results["machine"]["versions"] = _versions(frameworks)
  for batch_size in batch_sizes:
    results["throughput"][str(batch_size)] = measure_throughput(
      frameworks,
      batch_size,
      FLAGS.rounds,
      FLAGS.examples,
      FLAGS.eval_batch_size,
      {"steps_per_call": FLAGS.steps_per_call, "microbatch_size": FLAGS.microbatch_size},
    )
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
  with open(FLAGS.out, "w") as f:
    json.dump(results, f, indent=2)
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
