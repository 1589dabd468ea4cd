r"""Where a training step's time goes: the book's convnet, op by op, beside TensorFlow's kernels.

Two tables, in microseconds of one CPU thread per training example:

1. Each op of a training step alone, at the shapes of the book's convnet, in
   this project's implementation (`convnet.ops`, as the training path runs
   them: in microbatches of `--microbatch_size`) and in TensorFlow's kernels
   (oneDNN on x86, as Keras `fit` runs them: on the whole batch): the forward
   conv, the input-gradient conv, the weight-gradient conv, max pooling and
   its gradient (for the project, the conv and its pooling as one op,
   `ops.conv_max_pool`, forward and backward), and the dense layers.
2. The project's whole compiled training step, from a profile of XLA's
   executed operations, summed by layer and by pass (forward, backward), so
   that fusion and the work around the dots are counted where they happen.

Times are of one thread per example; the step runs on every core, so its
wall time is less. With `--dtype=bfloat16`, the project's dots take bfloat16
inputs (`model.dtype`), and TensorFlow's ops run in bfloat16.

  python scripts/op_profile.py [--batch_size=128] [--dtype=float32] [--out=FILE.json]
"""

import argparse
import collections
import functools
import glob
import json
import os
import re
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CONVS = [  # (layer, input shape, features): the book's convnet on 28x28x1 images
  ("conv_0", (28, 28, 1), 16),
  ("conv_1", (13, 13, 16), 32),
  ("conv_2", (5, 5, 32), 32),
]
POOLED = {"conv_0", "conv_1"}  # followed by 2x2 max pooling
DENSE = [("dense_0", 288, 64), ("logits", 64, 10)]


def _best_seconds(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def project_ops(batch_size: int, microbatch_size: int, dtype: str, repeats: int) -> dict:
  """Each op alone, microseconds per example: jitted over the batch's microbatches in turn."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from convnet import ops

  compute = jnp.bfloat16 if dtype == "bfloat16" else None
  micro = microbatch_size or batch_size
  count = batch_size // micro
  rng = np.random.default_rng(0)

  def normal(*shape):
    return jnp.asarray(rng.normal(size=shape).astype(np.float32))

  def timed(fn, *args) -> float:
    mapped = jax.jit(lambda *xs: jax.lax.map(lambda a: fn(*a), xs))
    seconds = _best_seconds(lambda: jax.block_until_ready(mapped(*args)), repeats)
    return 1e6 * seconds / batch_size

  times = {}
  for name, (h, w, c), f in CONVS:
    x, kernel, bias = normal(count, micro, h, w, c), normal(3, 3, c, f), normal(f)
    if name in POOLED:

      def forward(x, kernel=kernel, bias=bias):
        return ops.conv_max_pool(x, kernel, bias, (1, 1), "VALID", (2, 2), compute)

      label = "conv+pool"
    else:

      def forward(x, kernel=kernel, bias=bias):
        return ops.conv(x, kernel, (1, 1), "VALID", compute) + bias

      label = "conv"
    y = jax.eval_shape(forward, x[0])
    g = normal(count, *y.shape)
    times[f"{name} {label} forward"] = timed(forward, x)
    times[f"{name} {label} weight gradient"] = timed(
      lambda x, g, forward=forward, kernel=kernel: jax.vjp(lambda k: forward(x, k), kernel)[1](g)[
        0
      ],
      x,
      g,
    )
    if c > 1:  # the first conv's input gradient is never computed
      times[f"{name} {label} input gradient"] = timed(
        lambda g, forward=forward, x0=x[0]: jax.vjp(forward, x0)[1](g)[0], g
      )
  for name, n_in, n_out in DENSE:
    x, kernel, g = normal(count, micro, n_in), normal(n_in, n_out), normal(count, micro, n_out)
    times[f"{name} dense forward and gradients"] = timed(
      lambda x, g, kernel=kernel: jax.vjp(lambda x, k: ops.matmul(x, k, compute), x, kernel)[1](g),
      x,
      g,
    )
  return times


def tensorflow_ops(batch_size: int, dtype: str, repeats: int) -> dict:
  """TensorFlow's kernels for the same ops on the whole batch, microseconds per example."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
  import numpy as np
  import tensorflow as tf

  tf_dtype = tf.bfloat16 if dtype == "bfloat16" else tf.float32
  rng = np.random.default_rng(0)

  def normal(*shape):
    return tf.constant(rng.normal(size=shape).astype(np.float32), dtype=tf_dtype)

  def timed(fn, *args) -> float:
    compiled = tf.function(fn)
    return 1e6 * _best_seconds(lambda: compiled(*args).numpy(), repeats) / batch_size

  times = {}
  for name, (h, w, c), f in CONVS:
    x, kernel = normal(batch_size, h, w, c), normal(3, 3, c, f)
    y = tf.nn.conv2d(x, kernel, 1, "VALID")
    g = normal(*y.shape)
    times[f"{name} conv forward"] = timed(lambda x, k: tf.nn.conv2d(x, k, 1, "VALID"), x, kernel)
    times[f"{name} conv weight gradient"] = timed(
      lambda x, g, sizes=kernel.shape: tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=sizes, out_backprop=g, strides=[1, 1, 1, 1], padding="VALID"
      ),
      x,
      g,
    )
    if c > 1:
      times[f"{name} conv input gradient"] = timed(
        lambda g, k, sizes=x.shape: tf.raw_ops.Conv2DBackpropInput(
          input_sizes=sizes, filter=k, out_backprop=g, strides=[1, 1, 1, 1], padding="VALID"
        ),
        g,
        kernel,
      )
    if name in POOLED:
      pooled = tf.nn.max_pool2d(y, 2, 2, "VALID")
      gp = normal(*pooled.shape)
      times[f"{name} max pool forward"] = timed(lambda y: tf.nn.max_pool2d(y, 2, 2, "VALID"), y)
      times[f"{name} max pool gradient"] = timed(
        lambda y, p, gp: tf.raw_ops.MaxPoolGrad(
          orig_input=y,
          orig_output=p,
          grad=gp,
          ksize=[1, 2, 2, 1],
          strides=[1, 2, 2, 1],
          padding="VALID",
        ),
        y,
        pooled,
        gp,
      )
  for name, n_in, n_out in DENSE:
    x, kernel, g = normal(batch_size, n_in), normal(n_in, n_out), normal(batch_size, n_out)

    def dense(x, k, g):
      return (
        tf.reduce_sum(tf.matmul(x, k))
        + tf.reduce_sum(tf.matmul(g, k, transpose_b=True))
        + tf.reduce_sum(tf.matmul(x, g, transpose_a=True))
      )

    times[f"{name} dense forward and gradients"] = timed(dense, x, kernel, g)
  return times


def step_profile(batch_size: int, microbatch_size: int, dtype: str) -> dict:
  """The compiled training step's executed operations, thread microseconds per example,
  summed by (layer, pass) from the ops' metadata."""
  import jax
  import numpy as np
  from jax.profiler import ProfileData

  from convnet import frameworks, models, optim
  from convnet import steps as steps_lib

  config = frameworks.book_config("matmul", dtype)
  model = models.create_model(config.model, frameworks.INPUT_SHAPE, frameworks.NUM_CLASSES)
  tx = optim.create_optimizer(config.optimizer, 1, 1)
  state = steps_lib.create_train_state(jax.random.key(0), model, frameworks.INPUT_SHAPE, tx)
  steps_per_call, calls = 8, 4
  num = batch_size * steps_per_call * calls
  images, labels = jax.device_put(frameworks.random_data(num))
  order = jax.device_put(np.arange(num, dtype=np.int32))
  fn = jax.jit(
    functools.partial(
      steps_lib.train_steps,
      steps_per_call=steps_per_call,
      batch_size=batch_size,
      microbatch_size=microbatch_size,
    ),
    donate_argnums=0,
  )
  hlo = fn.lower(state, images, labels, order, 0, steps_per_call).compile().as_text()
  for _ in range(2):
    state, metrics = fn(state, images, labels, order, 0, steps_per_call)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder):
      for i in range(calls):
        state, metrics = fn(state, images, labels, order, i * steps_per_call, steps_per_call)
      jax.block_until_ready(metrics)
    (path,) = glob.glob(os.path.join(folder, "**", "*.xplane.pb"), recursive=True)
    profile = ProfileData.from_file(path)
  # Each instruction's layer and pass, from the op_name JAX gives it (`layers.apply` names every
  # op by its layer): "transpose(jvp(...))/conv_1/..." is conv_1's backward pass; an
  # instruction without a layer is the loss, the optimizer or the loop.
  where = {}
  for name, op_name in re.findall(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]*)\"", hlo):
    layer = re.search(r"/(conv_\d+|dense_\d+|logits)(?:/|$)", op_name)
    backward = "transpose(" in op_name
    where[name] = (
      layer[1] if layer else "loss, optimizer, loop",
      "backward" if backward else "forward",
    )
  totals = collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      if "XLAEigen" not in line.name:  # XLA's compute threads
        continue
      for event in line.events:
        # Control flow (a loop, a branch) spans the operations it runs: those count, not it.
        if event.name in where and not re.match(r"(while|cond|conditional|call)\b", event.name):
          totals[where[event.name]] += event.duration_ns
  examples = batch_size * steps_per_call * calls
  return {f"{layer} {direction}": ns / 1e3 / examples for (layer, direction), ns in totals.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--microbatch_size", type=int, default=64)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="", help="Also write the tables here as JSON.")
  args = parser.parse_args()
  if args.batch_size < 1 or args.microbatch_size < 0 or args.repeats < 1:
    sys.exit("error: --batch_size and --repeats must be at least 1, --microbatch_size at least 0")
  if args.microbatch_size and args.batch_size % args.microbatch_size:
    sys.exit(f"error: --microbatch_size={args.microbatch_size} must divide --batch_size")
  results = {
    "batch_size": args.batch_size,
    "microbatch_size": args.microbatch_size,
    "dtype": args.dtype,
    "project_ops": project_ops(args.batch_size, args.microbatch_size, args.dtype, args.repeats),
    "tensorflow_ops": tensorflow_ops(args.batch_size, args.dtype, args.repeats),
    "step_profile": step_profile(args.batch_size, args.microbatch_size, args.dtype),
  }
  for title, key in (("project ops", "project_ops"), ("TensorFlow ops", "tensorflow_ops")):
    print(f"\n| {title}, {args.dtype}, batch {args.batch_size} | us per example |\n|---|---|")
    for op, micros in results[key].items():
      print(f"| {op} | {micros:.2f} |")
    print(f"| total | {sum(results[key].values()):.2f} |")
  profile = results["step_profile"]
  total = sum(profile.values())
  print(f"\n| the compiled step, {args.dtype}, batch {args.batch_size} | us per example | share |")
  print("|---|---|---|")
  for part, micros in sorted(profile.items(), key=lambda kv: -kv[1]):
    print(f"| {part} | {micros:.2f} | {100 * micros / total:.0f}% |")
  print(f"| total (thread time) | {total:.2f} | 100% |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
