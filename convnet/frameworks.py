"""The book's convnet trained the same way in each framework the benchmark compares.

Each runner builds the book's convnet (33,194 parameters) with RMSprop
(learning rate 1e-3, decay 0.9) on random 28x28x1 images of 10 classes, and
times training and evaluation steps; `worker` drives one runner in a process
of its own over a pipe (`convnet.benchmark` starts them), so that each
framework's imports and threads stay apart.

  project  this project's training path: `steps.train_steps` over
           device-resident data, `steps_per_call` steps a call, matmul ops
  flax     a plain Flax loop as in Flax's examples: one jitted step a call,
           `nn.Conv` and `nn.max_pool`, batches from host memory
  torch    PyTorch eager, CPU (pip install -e '.[bench]')
  keras    tf.keras `fit` (TensorFlow's default, no XLA)

Every runner computes in one of `DTYPES`. "float32" is float32 throughout.
"bfloat16" is each framework's own mixed precision, with parameters, optimizer
state and loss in float32: the config's `model.dtype` for project and flax,
`torch.autocast` around the forward pass and loss for torch, and the
"mixed_bfloat16" policy (logits in float32) for keras.
"""

from __future__ import annotations

import functools
import os
import resource
import sys
import time
import traceback

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
LEARNING_RATE, RMSPROP_DECAY = 1e-3, 0.9
DTYPES = ("float32", "bfloat16")  # compute dtypes; parameters stay float32 in both


def random_data(num_examples: int, seed: int = 0):
  import numpy as np

  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(num_examples, *INPUT_SHAPE)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=num_examples).astype(np.int32)
  return images, labels


class UnsupportedDtype(Exception):
  """A framework here cannot compute in the dtype asked for; the message says why."""


def book_config(implementation: str = "matmul", dtype: str = "float32"):
  """The book's convnet config with the benchmark's optimizer, computing in `dtype`."""
  from convnet.configs import mnist

  config = mnist.get_config()
  config.model.implementation = implementation
  config.optimizer.learning_rate = LEARNING_RATE
  config.optimizer.rmsprop_decay = RMSPROP_DECAY
  config.model.dtype = dtype
  return config


def unsupported_reason(framework: str, dtype: str) -> str | None:
  """Why `framework` cannot run in `dtype` here, found without starting it; None if it can."""
  if dtype not in DTYPES:
    return f"unknown dtype {dtype}; known: {', '.join(DTYPES)}"
  return None


class JaxRunner:
  """The project's path (`train_steps`) or the plain per-step Flax loop, in `dtype`'s compute."""

  def __init__(self, framework: str, batch_size: int, num_examples: int, options: dict, dtype: str):
    import jax
    import numpy as np

    from convnet import epochs, models, optim
    from convnet import steps as steps_lib

    self.jax, self.epochs = jax, epochs
    implementation = "matmul" if framework == "project" else "lax"
    config = book_config(implementation, dtype)
    model = models.create_model(config.model, INPUT_SHAPE, NUM_CLASSES)
    tx = optim.create_optimizer(config.optimizer, 1, 1)
    self.state = steps_lib.create_train_state(jax.random.key(0), model, INPUT_SHAPE, tx)
    self.images, self.labels = random_data(num_examples)
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


class TorchRunner:
  """PyTorch eager; in bfloat16, `torch.autocast` on the CPU around the forward pass and loss."""

  def __init__(self, framework: str, batch_size: int, num_examples: int, options: dict, dtype: str):
    import contextlib

    import torch

    self.autocast = (
      functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
      if dtype == "bfloat16"
      else contextlib.nullcontext
    )
    torch.manual_seed(0)
    self.torch, self.model = torch, torch_book_convnet()
    self.optimizer = torch.optim.RMSprop(
      self.model.parameters(), lr=LEARNING_RATE, alpha=RMSPROP_DECAY
    )
    images, labels = random_data(num_examples)
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
      with self.autocast():
        loss = self.loss(self.model(x), y)
      loss.backward()
      self.optimizer.step()

  def evaluate(self, batch_size: int) -> None:
    self.model.eval()
    with self.torch.no_grad(), self.autocast():
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


class KerasRunner:
  """tf.keras `fit`; in bfloat16, the "mixed_bfloat16" policy with float32 logits."""

  def __init__(self, framework: str, batch_size: int, num_examples: int, options: dict, dtype: str):
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    previous = keras.mixed_precision.global_policy()
    # Layers take the global policy when built; it is put back after, so that
    # building this model changes nothing else in the process.
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")
    try:
      self.model = self._build(keras, layers)
    finally:
      keras.mixed_precision.set_global_policy(previous)
    self.model.compile(
      optimizer=keras.optimizers.RMSprop(LEARNING_RATE, rho=RMSPROP_DECAY),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      jit_compile=False,
    )
    self.images, self.labels = random_data(num_examples)
    self.batch_size = batch_size

  @staticmethod
  def _build(keras, layers):
    return keras.Sequential(
      [
        keras.Input(INPUT_SHAPE),
        layers.Conv2D(16, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3, activation="relu"),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(NUM_CLASSES, dtype="float32"),  # logits and loss in float32
      ]
    )

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


RUNNERS = {"project": JaxRunner, "flax": JaxRunner, "torch": TorchRunner, "keras": KerasRunner}


def worker(conn, framework, batch_size, num_examples, options, eval_batch_size, t0, dtype):
  """Serves timing requests for one framework, batch size and dtype until told to stop.

  Its first answer is `{"startup_s", "first_step_s"}`, or `{"skipped": reason}`
  (and it returns) when the framework cannot train in a dtype other than
  float32 here; a failure in float32 is raised.
  """
  sys.path.insert(0, os.getcwd())
  try:
    runner = RUNNERS[framework](framework, batch_size, num_examples, options, dtype)
    start = time.perf_counter()
    runner.train(1)
    first_step_s = time.perf_counter() - start
  except UnsupportedDtype as e:
    conn.send({"skipped": str(e)})
    return
  except Exception as e:
    if dtype == "float32":
      raise
    traceback.print_exc()
    first_line = next(iter(str(e).splitlines()), "")
    conn.send({"skipped": f"failed in {dtype}: {type(e).__name__}: {first_line}"})
    return
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
