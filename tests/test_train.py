"""Training: steps, evaluation, the loop, resume, and `convnet.main` end to end."""

import functools
import importlib.util
import json
import os
import subprocess
import sys
import threading
import types

import jax
import numpy as np
import pytest
from flax import traverse_util

from convnet import (
  checkpoints,
  config_checks,
  epochs,
  input_pipeline,
  models,
  optim,
  precompile,
  run_setup,
  train,
)
from convnet import steps as steps_lib
from convnet.errors import CheckpointError, ConfigError
from tests.conftest import book_state, main_command, start_processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(config, input_shape=(28, 28, 1), seed=0):
  model = models.create_model(config.model, input_shape, 10)
  tx = optim.create_optimizer(config.optimizer, steps_per_epoch=10, total_steps=100)
  return steps_lib.create_train_state(jax.random.key(seed), model, input_shape, tx)


def _batch(embedded, n=64):
  images = input_pipeline.scale(embedded.train_images[:n])
  return {"image": images, "label": embedded.train_labels[:n].astype(np.int32)}


@jax.jit
def _mean_loss(state, batch):
  logits = state.apply_fn({"params": state.params}, batch["image"])
  return steps_lib.cross_entropy(logits, batch["label"]).mean()


def _loss(state, batch):
  return float(_mean_loss(state, batch))


def test_a_run_initialises_the_parameters_as_init_params_does_bit_for_bit(config):
  # `create_train_state` compiles its initialisation at a lower LLVM optimisation level on a
  # CPU; the parameters must be those of the plain jitted `init_params`, bit for bit.
  model = models.create_model(config.model, (28, 28, 1), 10)
  for seed in (0, 1):
    key = jax.random.key(seed)
    quick = steps_lib.initial_params(model, key, (28, 28, 1))
    plain = steps_lib.init_params(model, key, (28, 28, 1))
    assert jax.tree.structure(quick) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(quick), jax.tree.leaves(plain), strict=True):
      assert a.dtype == b.dtype and a.shape == b.shape
      np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))


def test_one_step_lowers_the_loss(config, embedded):
  state, batch = _state(config), _batch(embedded)
  before = _loss(state, batch)
  state, metrics = jax.jit(steps_lib.train_step)(state, batch)
  assert int(state.step) == 1
  # The step reports the batch's summed metrics, before the update, and how many examples.
  assert float(metrics["count"]) == 64
  np.testing.assert_allclose(float(steps_lib.means(metrics)["loss"]), before, rtol=1e-5)
  assert _loss(state, batch) < before - 0.05
  # Pinned for the book's convnet, seed 0, RMSprop at 1e-3, on the first 64 shuffled embedded
  # digits. Update only on a deliberate change of initialisation, data order or optimizer.
  np.testing.assert_allclose(before, 2.3393, atol=2e-3)
  np.testing.assert_allclose(_loss(state, batch), 2.2253, atol=2e-3)


def test_same_seed_same_metrics_other_seed_other_metrics(config, embedded):
  batch = _batch(embedded)
  step = jax.jit(steps_lib.train_step)

  def run(seed):
    state, losses = _state(config, seed=seed), []
    for _ in range(3):
      state, metrics = step(state, batch)
      losses.append(float(steps_lib.means(metrics)["loss"]))
    return losses, jax.tree.leaves(state.params)[0]

  (a, pa), (b, pb), (c, _) = run(0), run(0), run(1)
  assert a == b
  np.testing.assert_array_equal(pa, pb)
  assert a != c


# Each optimizer with one schedule and each schedule with one optimizer (RMSprop and the
# constant schedule train in every other test).
@pytest.mark.parametrize("name, schedule", [("adam", "warmup_cosine"), ("sgd", "cosine")])
def test_other_optimizers_train(config, embedded, name, schedule):
  config.optimizer.name, config.optimizer.schedule = name, schedule
  config.optimizer.momentum, config.optimizer.warmup_epochs = 0.9, 1
  config.optimizer.learning_rate = 0.05 if name == "sgd" else 1e-3
  state, batch = _state(config), _batch(embedded)
  before = _loss(state, batch)
  step = jax.jit(steps_lib.train_step)
  for _ in range(15):  # through the warmup of 10 steps
    state, _ = step(state, batch)
  assert _loss(state, batch) < before - 0.1


@pytest.mark.slow
def test_evaluate_covers_every_example_once(config, embedded):
  state = _state(config)
  images = input_pipeline.scale(embedded.test_images[:250])
  split = input_pipeline.Split(images, embedded.test_labels[:250].astype(np.int32))
  logits = jax.jit(state.apply_fn)({"params": state.params}, images)
  expected_loss = float(steps_lib.cross_entropy(logits, split.labels).mean())
  expected_accuracy = float(np.mean(np.argmax(logits, -1) == split.labels))
  for batch_size in (250, 100, 64, 1000):  # 250 = 2 x 100 + 50: the last batch is padded
    metrics = epochs.evaluate(jax.jit(steps_lib.eval_step), state, split, batch_size)
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
    assert metrics["accuracy"] == pytest.approx(expected_accuracy, abs=1e-6)


def test_the_eval_batch_size_is_cut_to_the_longest_split_rounded_to_the_multiple():
  assert epochs.eval_batch_size(1000, 1024) == 1000
  assert epochs.eval_batch_size(1000, 1024, multiple_of=64) == 1024
  assert epochs.eval_batch_size(600, 256, multiple_of=64) == 256  # never above the batch size
  assert epochs.eval_batch_size(1, 1024, multiple_of=8) == 8


def test_splits_evaluated_with_a_shared_longest_have_batches_of_one_shape(config, embedded):
  # Validation (here 30 examples) and test (70) in batches of one shape: one compiled program.
  state = _state(config)
  images = input_pipeline.scale(embedded.test_images[:100])
  labels = embedded.test_labels[:100].astype(np.int32)
  short, long = (
    input_pipeline.Split(images[:30], labels[:30]),
    input_pipeline.Split(images[30:], labels[30:]),
  )
  shapes = {
    b["image"].shape for s in (short, long) for b in epochs.eval_batches(s, 1024, longest=70)
  }
  assert shapes == {(70, *images.shape[1:])}
  own = {b["image"].shape for s in (short, long) for b in epochs.eval_batches(s, 1024)}
  assert own == {(30, *images.shape[1:]), (70, *images.shape[1:])}  # each cut to its own size
  eval_fn = jax.jit(steps_lib.eval_step)
  for split in (short, long):  # padding to the shared shape changes no metric
    shared = epochs.evaluate(eval_fn, state, split, 1024, longest=70)
    alone = epochs.evaluate(eval_fn, state, split, 1024)
    assert shared["accuracy"] == alone["accuracy"]
    np.testing.assert_allclose(shared["loss"], alone["loss"], rtol=1e-6)


def test_epoch_order_is_a_seeded_permutation():
  a, b = epochs.epoch_order(103, seed=0, epoch=0), epochs.epoch_order(103, seed=0, epoch=0)
  np.testing.assert_array_equal(a, b)
  assert sorted(a.tolist()) == list(range(103))
  assert not np.array_equal(a, epochs.epoch_order(103, seed=0, epoch=1))
  assert not np.array_equal(a, epochs.epoch_order(103, seed=1, epoch=0))


@pytest.mark.parametrize("microbatch_size", [0, 8])
def test_fast_path_matches_the_plain_reference_step(config, embedded, microbatch_size):
  """The loop's path (matmul ops, device-resident data, several steps a call,
  microbatches) against a plain per-step jit of `nn.Conv`/`nn.max_pool` on host
  batches, as in Flax's examples."""
  batch_size, num_steps = 32, 6
  images = input_pipeline.scale(embedded.train_images[:256])
  labels = embedded.train_labels[:256].astype(np.int32)
  order = epochs.epoch_order(len(labels), seed=0, epoch=0)

  config.model.implementation = "lax"
  reference = _state(config)
  step = jax.jit(steps_lib.train_step)
  reference_losses = []
  for i in range(num_steps):
    idx = order[i * batch_size : (i + 1) * batch_size]
    reference, metrics = step(reference, {"image": images[idx], "label": labels[idx]})
    reference_losses.append(float(steps_lib.means(metrics)["loss"]))

  config.model.implementation = "matmul"
  fast = _state(config)
  steps = jax.jit(
    functools.partial(
      steps_lib.train_steps,
      steps_per_call=4,
      batch_size=batch_size,
      microbatch_size=microbatch_size,
    ),
    donate_argnums=0,
  )
  fast_losses = []
  for start, count in ((0, 4), (4, 2)):  # the second call runs 2 of its 4 steps
    fast, metrics = steps(fast, images, labels, order, start, count)
    fast_losses += (metrics["loss"][:count] / metrics["count"][:count]).tolist()
    assert metrics["loss"][count:].tolist() == [0.0] * (4 - count)
  assert int(fast.step) == num_steps
  np.testing.assert_allclose(fast_losses, reference_losses, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
    fast.params,
    reference.params,
  )
  # The parameters moved: the comparison is not between two initial states.
  assert not np.allclose(fast.params["conv_0"]["kernel"], _state(config).params["conv_0"]["kernel"])


def test_eval_microbatches_give_the_same_sums(config, embedded):
  state = _state(config)
  n = 96
  batch = {
    "image": input_pipeline.scale(embedded.test_images[:n]),
    "label": embedded.test_labels[:n].astype(np.int32),
    "mask": (np.arange(n) < 90).astype(np.float32),
  }
  whole = jax.jit(steps_lib.eval_step)(state, batch)
  split = jax.jit(functools.partial(steps_lib.eval_step, microbatch_size=32))(state, batch)
  assert float(whole["count"]) == float(split["count"]) == 90
  assert float(whole["accuracy"]) == float(split["accuracy"])
  np.testing.assert_allclose(float(whole["loss"]), float(split["loss"]), rtol=1e-5)


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_train_and_evaluate_writes_the_workdir_and_resumes_exactly(config, tmp_path):
  config.num_epochs = 2
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  assert straight["epoch"] == 2 and straight["step"] == 2 * (3400 // 256)
  assert straight["num_params"] == 33_194
  assert straight["test_accuracy"] > 0.5  # well above chance after 26 steps
  workdir = tmp_path / "straight"
  assert sorted(os.listdir(workdir / "checkpoints")) == ["13", "26"]
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
  with open(workdir / "config.json") as f:
    assert json.load(f)["model"]["conv"]["features"] == [16, 32, 32]

  # One epoch, then the same command with two: the result is the uninterrupted one's.
  config.num_epochs = 1
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  config.num_epochs = 2
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  for key in ("train_loss", "validation_loss", "test_loss", "test_accuracy", "step"):
    assert resumed[key] == straight[key], key
  steps = [r["step"] for r in _records(tmp_path / "resumed")]
  assert steps == sorted(steps) and len(steps) == len(set(steps) | {s for s in steps})
  assert [r["step"] for r in _records(tmp_path / "resumed") if r["kind"] == "epoch"] == [13, 26]

  # A finished run reports its result without training.
  again = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert again["test_accuracy"] == straight["test_accuracy"]
  assert len(_records(tmp_path / "resumed")) == len(_records(workdir))


@pytest.mark.slow
def test_resume_mid_epoch_is_exact(config, tmp_path):
  config.max_steps = 10
  config.checkpoint_every_steps = 4
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  config.max_steps = 6  # stops after the checkpoint at step 4: steps 5 and 6 are redone
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
    f.write('{"kind": "train", "step": 7, "train_lo')  # a torn line, as a crash leaves
  os.rename(tmp_path / "resumed" / "checkpoints" / "6", tmp_path / "moved")  # crash before 6
  config.max_steps = 10
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  for key in ("train_loss", "train_accuracy", "validation_loss", "test_loss", "step"):
    assert resumed[key] == straight[key], key
  steps = [r["step"] for r in _records(tmp_path / "resumed")]
  assert steps == [r["step"] for r in _records(tmp_path / "straight")]


def test_resume_with_another_config_is_refused(config, tmp_path):
  config.max_steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  config.model.conv.activation = "tanh"
  with pytest.raises(
    CheckpointError, match=r"model.conv.activation: 'relu' \(saved\) vs 'tanh' \(now\)"
  ):
    train.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("batch_size", 0, "batch_size=0"),
    ("eval_batch_size", -5, "eval_batch_size=-5"),
    ("num_epochs", -1, "num_epochs=-1"),
    ("optimizer.name", "adagrad", "optimizer.name='adagrad'"),
    ("optimizer.schedule", "linear", "optimizer.schedule='linear'"),
    ("optimizer.learning_rate", -0.1, "optimizer.learning_rate=-0.1"),
    ("model.name", "transformer", "model.name='transformer'"),
    ("data.source", "web", "data.source='web'"),
    ("model.conv.strides", 0, "model.conv.strides=0"),
    ("model.pool.type", "median", "model.pool.type='median'"),
    ("batch_size", 5120, "batch_size=5120 is larger than the 3400 training examples"),
    ("batch_size", 200, "batch_size=200: batch_size must be a multiple of microbatch_size=64"),
    ("eval_batch_size", 1000, "eval_batch_size=1000: eval_batch_size must be a multiple"),
    ("microbatch_size", -8, "microbatch_size=-8"),
    ("steps_per_call", 0, "steps_per_call=0"),
    ("model.implementation", "cudnn", "model.implementation='cudnn'"),
  ],
)
def test_bad_configs_stop_before_compiling(config, tmp_path, monkeypatch, field, value, message):
  *path, leaf = field.split(".")
  node = config
  for part in path:
    node = node[part]
  node[leaf] = value

  def no_compiling(*args, **kwargs):
    raise AssertionError("compiled before rejecting the config")

  monkeypatch.setattr(jax, "jit", no_compiling)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


# ----------------------------------------------------------------------------
# `python -m convnet.main`, end to end.


def _main_command(workdir, *overrides) -> list[str]:
  return main_command(
    workdir,
    "--config.data.source=embedded",
    "--config.batch_size=256",
    "--config.log_every_steps=2",
    *overrides,
  )


def _main(workdir, *overrides):
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
  return subprocess.run(
    _main_command(workdir, *overrides),
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow  # the command in a process, twice (10 s)
def test_main_end_to_end_and_rerun_resumes(tmp_path):
  first = _main(tmp_path, "--config.max_steps=4")
  assert first.returncode == 0, first.stderr
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
  assert [r["step"] for r in _records(tmp_path)] == [2, 4, 4]
  assert "33,194 parameters" in first.stderr
  assert "conv_2   conv 32@3x3, stride 1x1, VALID, relu  (None, 3, 3, 32)" in first.stderr
  assert "ETA epoch" in first.stderr
  # The command leaves without Python's teardown once the run is done: by then its last log
  # line, every record's TensorBoard scalars and a checkpoint that restores are all written.
  assert "Finished at step 4" in first.stderr.strip().splitlines()[-1]
  scalars, _ = _events(tmp_path)
  assert [step for step, _ in scalars["train/loss"]] == [2, 4]
  assert [step for step, _ in scalars["validation/accuracy"]] == [4]
  assert checkpoints.restore_params(str(tmp_path))[1] == 4

  second = _main(tmp_path, "--config.max_steps=6")
  assert second.returncode == 0, second.stderr
  assert "Resumed from checkpoint at step 4" in second.stderr
  # The partial epoch's record at step 4 gives way to the one of the epoch so far, at step 6.
  records = _records(tmp_path)
  assert [(r["kind"], r["step"]) for r in records] == [
    ("train", 2),
    ("train", 4),
    ("train", 6),
    ("epoch", 6),
  ]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "6"]


@pytest.mark.slow  # a new Python process (2 s)
def test_the_metrics_writer_imports_tensorboardx_without_pytorch():
  # tensorboardX imports PyTorch where it is installed (a second), for nothing the run uses.
  code = (
    "import sys; from convnet import run_setup; run_setup._import_tensorboardx(); "
    "from tensorboardX.event_file_writer import EventsWriter; "
    "print('torch' in sys.modules, 'tensorboardX' in sys.modules)"
  )
  done = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.split() == ["False", "True"]
  # PyTorch stays importable afterwards, where it is installed.
  if importlib.util.find_spec("torch") is not None:
    code += "; import torch; print(torch.ones(1).item())"
    done = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["False", "True", "1.0"], done.stderr


def test_main_reports_a_bad_config_in_one_line(tmp_path):
  result = _main(tmp_path, "--config.model.conv.kernel_size=29")
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert (
    result.stderr.strip()
    .splitlines()[-1]
    .startswith(
      "error: model.conv.kernel_size: block 0's 29x29 kernel does not fit its 28x28 input"
    )
  )


@pytest.mark.slow
def test_l1_penalty_pulls_every_kernel_weight_by_the_same_step(config, embedded):
  """With SGD, the L1 term moves each kernel weight by lr * penalty * sign(w), biases not at all."""
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  batch = _batch(embedded)
  plain, _ = jax.jit(steps_lib.train_step)(_state(config), batch)
  penalised, _ = jax.jit(functools.partial(steps_lib.train_step, l1_penalty=0.01))(
    _state(config), batch
  )
  start = traverse_util.flatten_dict(_state(config).params)
  plain, penalised = (traverse_util.flatten_dict(s.params) for s in (plain, penalised))
  for key, weight in start.items():
    expected = -0.1 * 0.01 * np.sign(weight) if key[-1] == "kernel" else 0.0
    np.testing.assert_allclose(penalised[key] - plain[key], expected, atol=1e-6, err_msg=str(key))
  assert sum(key[-1] == "kernel" for key in start) == 5  # three convs and two dense layers


def test_convnet_on_reduced_features_is_refused(config):
  config.data.features = "pca"
  config.data.num_features = 20
  with pytest.raises(ConfigError, match="model.name='convnet'.*must be 'dense'"):
    config_checks.validate(config)


def _events(workdir):
  """Every scalar in the workdir's TensorBoard files, as {tag: [(step, value)]}, and the plugins."""
  import glob
  import struct

  from tensorboardX.proto import event_pb2

  scalars, plugins = {}, {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents*"))):
    with open(path, "rb") as f:
      data = f.read()
    i = 0
    while i < len(data):
      (length,) = struct.unpack("Q", data[i : i + 8])
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
      i += 12 + length + 4
      for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        if plugin:
          plugins.setdefault(plugin, []).append(value)
        else:
          scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars, plugins


def test_each_tensorboard_tag_holds_one_statistic_and_the_hparams_are_logged(config, tmp_path):
  config.num_epochs, config.log_every_steps = 2, 5  # 13 steps an epoch: windows end at 5, 10, 15...
  train.train_and_evaluate(config, str(tmp_path))
  records = _records(tmp_path)
  scalars, plugins = _events(tmp_path)
  for tag, points in scalars.items():
    steps = [step for step, _ in points]
    assert len(steps) == len(set(steps)), f"{tag} has two values at one step"
  windows = [r for r in records if r["kind"] == "train"]
  epochs_ = [r for r in records if r["kind"] == "epoch"]
  assert (
    [s for s, _ in scalars["train/loss"]] == [r["step"] for r in windows] == [5, 10, 15, 20, 25]
  )
  np.testing.assert_allclose(
    [v for _, v in scalars["train/loss"]], [r["train_loss"] for r in windows], rtol=1e-6
  )
  assert [s for s, _ in scalars["epoch/train_loss"]] == [13, 26]
  np.testing.assert_allclose(
    [v for _, v in scalars["epoch/train_loss"]], [r["train_loss"] for r in epochs_], rtol=1e-6
  )
  np.testing.assert_allclose(
    [v for _, v in scalars["test/accuracy"]], [r["test_accuracy"] for r in epochs_], rtol=1e-6
  )
  assert "train_loss" not in scalars and "train/accuracy" not in scalars
  # TensorBoard's HParams view: the run's config, with the evaluation metrics.
  text = b"".join(v.metadata.plugin_data.content for v in plugins["hparams"])
  assert b"optimizer.learning_rate" in text and b"model.conv.features" in text
  assert b"validation/accuracy" in text and b"test/accuracy" in text


def test_train_flops_are_the_step_as_written_about_three_forward_passes(config):
  from convnet import summary

  model = models.create_model(config.model, (28, 28, 1), 10)
  tx = optim.create_optimizer(config.optimizer, 1, 1)
  state = steps_lib.create_train_state(jax.random.key(0), model, (28, 28, 1), tx)
  flops = steps_lib.train_flops_per_example(config, state, (28, 28, 1))
  forward = summary.totals(summary.model_rows(model, (28, 28, 1)))["flops"]
  assert forward == 1_338_554  # the layer table's count of the book's convnet
  assert 2.5 * forward < flops < 3.5 * forward  # forward, backward (about twice), the update


@pytest.mark.slow
def test_profile_steps_write_a_trace_of_training(config, tmp_path):
  config.max_steps, config.steps_per_call, config.profile_steps = 9, 2, 3
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 9
  traces = [
    os.path.join(root, name)
    for root, _, names in os.walk(tmp_path / "profile")
    for name in names
    if name.endswith((".xplane.pb", "perfetto_trace.json.gz"))
  ]
  assert len(traces) == 2 and all(os.path.getsize(p) > 1000 for p in traces), traces
  # The trace starts at the second call (step 2), after compiling, and holds the steps' program.
  perfetto = next(p for p in traces if p.endswith(".json.gz"))
  import gzip

  with gzip.open(perfetto, "rt") as f:
    text = f.read()
  assert "train_steps" in text


def test_workdir_files_get_the_modes_open_gives_them(config, tmp_path):
  """Atomic writes go through a temporary file; the result is readable as a plain write's is."""
  from convnet import files
  from convnet import workdir as workdir_lib

  mask = os.umask(0o022)
  try:
    files.atomic_write(str(tmp_path / "a.txt"), "x")
    with files.atomic_open(str(tmp_path / "b.bin"), "wb") as f:
      f.write(b"x")
    workdir_lib.write_config(str(tmp_path), config)
  finally:
    os.umask(mask)
  for name in ("a.txt", "b.bin", "config.json"):
    assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name
  assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.bin", "config.json"]  # no temporary left


def _bad_data(config, tmp_path):
  """A config whose data cannot be read: an IDX folder with no files in it."""
  config.data.source = "idx"
  config.data.idx_dir = str(tmp_path / "no_such_idx_dir")
  return config


def test_a_run_that_fails_before_writing_leaves_no_workdir(config, tmp_path):
  from convnet import seeds
  from convnet.errors import DataError

  for name, run in (
    ("run", lambda c, w: train.train_and_evaluate(c, w)),
    ("group", lambda c, w: seeds.train_seeds(c, [0, 1], w)),
  ):
    workdir = tmp_path / "runs" / name
    with pytest.raises(DataError):
      run(_bad_data(config, tmp_path), str(workdir))
    assert not workdir.exists(), f"{name}: {sorted(os.listdir(workdir))}"
  # The parent the run made for it stays: only the workdir itself is the run's to remove.
  assert (tmp_path / "runs").is_dir()


def test_a_failed_run_keeps_a_folder_that_was_there_or_that_it_wrote_in(config, tmp_path):
  from convnet.errors import DataError

  existing = tmp_path / "existing"
  existing.mkdir()
  with pytest.raises(DataError):
    train.train_and_evaluate(_bad_data(config.copy_and_resolve_references(), tmp_path), existing)
  assert existing.is_dir()  # made by the user: kept, even empty
  # A run that wrote checkpoints, then is rerun on other data and refused, keeps everything.
  config.num_epochs, config.max_steps = 1, 2
  workdir = tmp_path / "trained"
  train.train_and_evaluate(config.copy_and_resolve_references(), str(workdir))
  before = sorted(os.listdir(workdir))
  config.max_steps = -1
  with pytest.raises(CheckpointError, match="data.source"):
    train.train_and_evaluate(_bad_data(config, tmp_path), str(workdir))
  assert sorted(os.listdir(workdir)) == before


def test_the_log_says_what_it_compiles_and_how_far_a_long_evaluation_is(
  config, embedded, tmp_path, caplog, monkeypatch
):
  config.num_epochs, config.steps_per_epoch = 2, 2
  log_compiles = jax.config.jax_log_compiles
  jax.config.update("jax_log_compiles", True)  # in every thread (`jax.log_compiles` is this one's)
  try:
    with caplog.at_level("INFO"):
      train.train_and_evaluate(config, str(tmp_path / "run"))
  finally:
    jax.config.update("jax_log_compiles", log_compiles)
  text = caplog.text
  assert text.count("Compiling the training steps") == 1
  assert text.count("Evaluating on validation and test") == 1  # the first evaluation only
  assert text.index("Compiling the training steps") < text.index("First steps began")
  # The steps and the evaluation compiled in another thread while the run set up, and the loop's
  # calls found those programs: no call compiled. Validation and test batches share one shape
  # (the fixture's splits differ in size), so the evaluation is one program.
  compiled = [
    (r.threadName, name)
    for r in caplog.records
    for name in ("train_steps", "eval_step")
    if r.getMessage().startswith(f"Compiling jit({name}) ")
  ]
  assert sorted(compiled) == [("convnet-compile", "eval_step"), ("convnet-compile", "train_steps")]

  monkeypatch.setattr(epochs, "PROGRESS_EVERY_S", 0.0)
  state = book_state(config)
  images = input_pipeline.scale(embedded.test_images[:200])
  split = input_pipeline.Split(images, embedded.test_labels[:200].astype(np.int32))
  caplog.clear()
  with caplog.at_level("INFO"):
    epochs.evaluate(jax.jit(steps_lib.eval_step), state, split, batch_size=5)
  assert "Evaluating: batch 16/40" in caplog.text and "batch 32/40" in caplog.text


@pytest.mark.slow  # waits for the compiles it interrupts (5 s)
def test_an_error_during_the_set_up_waits_for_the_programs_compiling_in_other_threads(
  config, tmp_path, monkeypatch
):
  # A fresh run starts compiling its steps before it initialises the parameters; an error
  # after that goes on only once those threads are done (Python's exit would abort in them).
  # Each compile waits at a gate that opens a second after the error is raised, so that the
  # compiles are surely still going when it is (a cached program would compile at once).
  gate, start = threading.Event(), precompile.Compiles.start

  class Gated:
    def __init__(self, jitted):
      self.jitted = jitted

    def lower(self, *args):
      lowered = self.jitted.lower(*args)
      return types.SimpleNamespace(compile=lambda: gate.wait(60) and lowered.compile())

    def __call__(self, *args, **kwargs):
      return self.jitted(*args, **kwargs)

  def refuse(*args, **kwargs):
    assert any(t.name == "convnet-compile" for t in threading.enumerate())  # still compiling
    threading.Timer(1.0, gate.set).start()
    raise CheckpointError("refused for the test")

  monkeypatch.setattr(
    precompile.Compiles,
    "start",
    lambda self, jitted, *examples: start(self, Gated(jitted), *examples),
  )
  monkeypatch.setattr(run_setup, "resume", refuse)
  with pytest.raises(CheckpointError, match="refused for the test"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert gate.is_set()  # the error waited for the gated compiles
  assert not any(t.name == "convnet-compile" for t in threading.enumerate())


@pytest.mark.slow
def test_main_refuses_what_it_can_before_logging_anything(tmp_path):
  # A value that parses but cannot work, a workdir under a file, and a changed config on a
  # workdir that holds checkpoints: each is the command's only line, before devices or layers.
  (tmp_path / "a_file").write_text("")
  assert _main(tmp_path / "trained", "--config.max_steps=2").returncode == 0
  cases = [
    (["--config.num_epochs=-1"], "error: num_epochs=-1"),
    (["--config.data.source=embeded"], "error: data.source='embeded'"),
    (["--workdir=" + str(tmp_path / "a_file" / "run")], "is a file, not a folder"),
    (
      ["--workdir=" + str(tmp_path / "trained"), "--config.model.dense_features=(32,)"],
      "holds checkpoints of a run with another config: model.dense_features",
    ),
  ]
  processes = start_processes([_main_command(tmp_path, *args) for args, _ in cases])
  for (args, message), process in zip(cases, processes, strict=True):
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, args
    lines = (stdout + stderr).strip().splitlines()
    assert len(lines) == 1 and message in lines[0], (args, lines)
