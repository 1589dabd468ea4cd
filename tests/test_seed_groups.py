"""Seeds trained together are judged seed by seed: divergence and random numbers.

A seed of a group (`convnet.seeds`, `convnet.sweep --vmap_seeds`) whose loss or
parameters stop being finite is recorded as diverged with its own message,
naming its step; the group's other seeds finish as they would alone. Each
seed's masks are the ones its key draws alone, under every PRNG implementation.

The diverging runs are SGD with momentum 0.9 at a huge learning rate, on a
dense network of 8 hidden units: with 4 steps an epoch, seeds 0 and 2 finish
3 epochs, seed 1's loss is NaN at step 5 (in epoch 2) and seed 3's at step 4
(the end of epoch 1, before any checkpoint). The tests check that premise
against separate runs where they depend on it.
"""

import contextlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convnet import augment, checkpoints, models, optim, seeds, steps, sweep, train
from convnet.configs import mnist
from convnet.errors import DivergedError

TIMING = ("wall_time_s", "train_examples_per_sec", "vmap_group_size")


def _diverging(config, learning_rate=1e8):
  """`config` (conftest's) as a tiny dense run of 3 epochs of 4 steps that some seeds diverge."""
  config.model.name = "dense"
  config.model.dense_features = (8,)
  config.optimizer.name = "sgd"
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = learning_rate
  config.batch_size = 64
  config.microbatch_size = 0
  config.steps_per_epoch = 4
  config.num_epochs = 3
  config.log_every_steps = 2
  return config


def _group(config, group, workdir):
  """Each seed's result dict or `DivergedError`, trained together."""
  try:
    return seeds.train_seeds(config, group, str(workdir))
  except train.SeedsDivergedError as e:
    assert len(e.results) == len(group)
    return e.results


def _alone(config, seed, workdir):
  """The seed's result dict or `DivergedError`, trained alone."""
  try:
    return train.train_and_evaluate(seeds.seed_config(config, seed), str(workdir))
  except DivergedError as e:
    return e


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def _untimed(result):
  return {k: v for k, v in result.items() if k not in TIMING}


def _assert_close(together, alone):
  """A seed of a group against its separate run: the same keys, values up to float rounding."""
  assert sorted(together) == sorted(alone)
  for key, value in together.items():
    if isinstance(value, str):
      assert value == alone[key], key
    else:
      np.testing.assert_allclose(value, alone[key], rtol=1e-5, err_msg=key)


def _same_as_alone(together, alone, group_dir, alone_dir, seed):
  """A seed's outcome in a group is its outcome alone: result or message, and records."""
  if isinstance(alone, DivergedError):
    assert isinstance(together, DivergedError), together
    # The same message, the seed named, the workdir's checkpoints its group's.
    expected = f"seed {seed}: {alone}".replace(str(alone_dir), str(group_dir))
    assert str(together) == expected
  else:
    assert isinstance(together, dict), together
    _assert_close(_untimed(together), _untimed(alone))
  group_records = _records(checkpoints.seed_dir(str(group_dir), seed))
  alone_records = _records(alone_dir)
  assert [(r["kind"], r["step"]) for r in group_records] == [
    (r["kind"], r["step"]) for r in alone_records
  ]
  for a, b in zip(group_records, alone_records, strict=True):
    _assert_close(a, b)


# ----------------------------------------------------------------------------
# The guard in the steps


def _stacked_steps(learning_rate=0.1):
  """A vmapped, guarded `steps.train_steps` of the tiny dense net, and a state of two members."""
  config = _diverging(mnist.get_config(), learning_rate)
  model = models.create_model(config.model, (28, 28, 1), 10)
  tx = optim.create_optimizer(config.optimizer, 4, 12)
  states = [steps.create_train_state(jax.random.key(s), model, (28, 28, 1), tx) for s in range(2)]
  state = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  fn = jax.jit(
    jax.vmap(
      lambda *args: steps.train_steps(*args, steps_per_call=4, batch_size=8),
      in_axes=(0, 0, 0, 0, None, None, None, 0),
    )
  )
  return state, fn


@pytest.mark.slow  # the steps compiled for two learning rates
def test_the_guard_freezes_a_member_at_its_last_finite_step_and_leaves_the_others_bitwise():
  """Member 1's images turn NaN at its third step: it keeps its parameters of step 2."""
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 32, 28, 28, 1)).astype(np.float32) * 0.1
  labels = rng.integers(0, 10, size=(2, 32)).astype(np.int32)
  poisoned = images.copy()
  poisoned[1, 16:24] = np.nan  # the batch of step 3 (order 0..31, batches of 8)
  order = np.broadcast_to(np.arange(32, dtype=np.int32), (2, 32))
  live = np.array([True, True])
  state, fn = _stacked_steps()  # nothing is donated: each call starts from `state`
  (clean, clean_live), clean_metrics = fn(state, images, labels, order, 0, 4, None, live)
  (ended, ended_live), metrics = fn(state, poisoned, labels, order, 0, 4, None, live)
  assert clean_live.tolist() == [True, True] and ended_live.tolist() == [True, False]
  losses = np.asarray(metrics["loss"])
  assert np.isfinite(losses[1, :2]).all() and np.isnan(losses[1, 2:]).all()  # named from step 3
  np.testing.assert_array_equal(losses[0], np.asarray(clean_metrics["loss"])[0])  # untouched
  for a, b in zip(jax.tree.leaves(ended.params), jax.tree.leaves(clean.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(b)[0])  # bitwise
    assert np.isfinite(np.asarray(a)[1]).all()
  assert np.asarray(ended.step).tolist() == [4, 4]  # the count goes on; member 1's state stops
  # Member 1's parameters are those after its two good steps: two steps of the clean data.
  (two, _), _ = fn(state, images, labels, order, 0, 2, None, live)
  for a, b in zip(jax.tree.leaves(ended.params), jax.tree.leaves(two.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a)[1], np.asarray(b)[1])
  # One pixel of 1e38 at step 3: the loss (1.4e38) is finite, the update is not. The loss is
  # reported, the parameters stay those of step 2, and the next step reports NaN.
  huge = images.copy()
  huge[1, 16:24] = 0
  huge[1, 16:24, 14, 14] = 1e38
  state, fn = _stacked_steps(learning_rate=10.0)
  (ended, ended_live), metrics = fn(state, huge, labels, order, 0, 4, None, live)
  losses = np.asarray(metrics["loss"])
  assert ended_live.tolist() == [True, False]
  assert np.isfinite(losses[1, :3]).all() and np.isnan(losses[1, 3])
  (two, _), _ = fn(state, images, labels, order, 0, 2, None, live)
  for a, b in zip(jax.tree.leaves(ended.params), jax.tree.leaves(two.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a)[1], np.asarray(b)[1])
  # A member that is not live does not train, and reports NaN losses.
  (frozen, _), metrics = fn(state, images, labels, order, 0, 4, None, np.array([True, False]))
  assert np.isnan(np.asarray(metrics["loss"])[1]).all()
  for a, b in zip(jax.tree.leaves(frozen.params), jax.tree.leaves(state.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a)[1], np.asarray(b)[1])


# ----------------------------------------------------------------------------
# Divergence, seed by seed


def test_a_seed_that_diverges_before_any_checkpoint_leaves_its_partner_training(config, tmp_path):
  config = _diverging(config)
  config.num_epochs = 2
  with pytest.raises(train.SeedsDivergedError) as raised:
    seeds.train_seeds(config, [0, 3], str(tmp_path))
  finished, diverged = raised.value.results
  assert isinstance(diverged, DivergedError) and str(diverged).startswith(
    "seed 3: the training loss became nan at step 4. No checkpoint was saved before it."
  )
  assert str(diverged) in str(raised.value)
  assert finished["step"] == 8 and finished["epoch"] == 2 and np.isfinite(finished["test_loss"])
  seed_3 = _records(tmp_path / "seed_3")
  assert [r["step"] for r in seed_3] == [2]  # its first window only: step 4's loss was NaN
  assert [r["step"] for r in _records(tmp_path / "seed_0") if r["kind"] == "epoch"] == [4, 8]
  # The checkpoint holds finite parameters for both, and says which seed diverged and why.
  step, loop = checkpoints.read_loop(str(tmp_path))
  assert step == 8 and loop["diverged"] == {"seed 3": str(diverged)}
  for seed in (0, 3):
    params, _ = checkpoints.restore_params(str(tmp_path / f"seed_{seed}"))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  # Run again, the finished group says the same, seed by seed, and trains nothing.
  with pytest.raises(train.SeedsDivergedError) as again:
    seeds.train_seeds(config, [0, 3], str(tmp_path))
  assert str(again.value.results[1]) == str(diverged)
  assert again.value.results[0]["test_loss"] == finished["test_loss"]


@pytest.mark.slow  # a group; the quick tier's group test above covers the loop
def test_when_every_seed_diverges_the_group_stops_at_once_with_each_ones_message(config, tmp_path):
  config = _diverging(config, learning_rate=1e20)
  with pytest.raises(train.SeedsDivergedError) as raised:
    seeds.train_seeds(config, [0, 1], str(tmp_path))
  messages = [str(e) for e in raised.value.results]
  assert [m.split(":")[0] for m in messages] == ["seed 0", "seed 1"]
  assert all(" at step " in m for m in messages)
  assert not checkpoints.has_checkpoints(str(tmp_path))  # nothing saved, as for a single run


@pytest.mark.slow  # a group of three and three separate runs
def test_the_middle_seed_of_three_diverges_and_the_others_are_as_alone(config, tmp_path):
  config = _diverging(config)
  together = _group(config, [0, 1, 2], tmp_path / "group")
  alone = [_alone(config, s, tmp_path / f"alone_{s}") for s in (0, 1, 2)]
  assert [type(r).__name__ for r in alone] == ["dict", "DivergedError", "dict"], "premise"
  # Its training loss is finite through epoch 1, its validation loss after it is not.
  assert "the validation loss became nan at step 4. No checkpoint" in str(alone[1])
  for seed in (0, 1, 2):
    _same_as_alone(
      together[seed], alone[seed], tmp_path / "group", tmp_path / f"alone_{seed}", seed
    )


@pytest.mark.slow  # two groups
def test_a_healthy_seeds_numbers_do_not_depend_on_its_partner_diverging(config, tmp_path):
  """Seed 0 beside seed 1 (diverges) and beside seed 2 (does not): bitwise the same."""
  config = _diverging(config)
  with_diverging = _group(config, [0, 1], tmp_path / "a")
  with_healthy = _group(config, [0, 2], tmp_path / "b")
  assert isinstance(with_diverging[1], DivergedError) and isinstance(with_healthy[1], dict)
  assert _untimed(with_diverging[0]) == _untimed(with_healthy[0])
  assert _records(tmp_path / "a" / "seed_0") == _records(tmp_path / "b" / "seed_0")
  a, _ = checkpoints.restore_params(str(tmp_path / "a" / "seed_0"))
  b, _ = checkpoints.restore_params(str(tmp_path / "b" / "seed_0"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # two groups, one of them stopped and resumed
def test_a_group_resumed_after_a_seed_diverged_continues_the_healthy_one_exactly(config, tmp_path):
  config = _diverging(config)
  straight = _group(config, [0, 1], tmp_path / "straight")
  config.max_steps = 6  # mid-epoch 2, after seed 1 diverged at step 4
  stopped = _group(config, [0, 1], tmp_path / "resumed")
  assert stopped[0]["step"] == 6 and str(stopped[1]) == str(straight[1]).replace(
    str(tmp_path / "straight"), str(tmp_path / "resumed")
  )
  config.max_steps = -1
  resumed = _group(config, [0, 1], tmp_path / "resumed")
  assert _untimed(resumed[0]) == _untimed(straight[0])
  assert isinstance(resumed[1], DivergedError)
  for seed in (0, 1):
    assert _records(tmp_path / "resumed" / f"seed_{seed}") == _records(
      tmp_path / "straight" / f"seed_{seed}"
    )
    a, _ = checkpoints.restore_params(str(tmp_path / "resumed" / f"seed_{seed}"))
    b, _ = checkpoints.restore_params(str(tmp_path / "straight" / f"seed_{seed}"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # a sweep of two seeds, cell by cell and vmapped
def test_a_vmapped_sweep_records_each_seed_as_its_cell_by_cell_sweep_does(config, tmp_path):
  config = _diverging(config)
  cells = sweep.expand(lambda: sweep.axis("seed", [0, 1]))
  by_cell = sweep.run_sweep(config, cells, str(tmp_path / "cells"))
  vmapped = sweep.run_sweep(config, cells, str(tmp_path / "vmapped"), vmap_seeds=True)
  assert [r["status"] for r in by_cell] == ["done", "diverged"], "premise"
  assert [r["status"] for r in vmapped] == ["done", "diverged"]
  assert vmapped[1]["error"].startswith("DivergedError: seed 1: the validation loss became nan")
  assert "at step 4." in vmapped[1]["error"]
  for key in ("train_loss", "validation_loss", "test_loss", "test_accuracy", "epoch"):
    np.testing.assert_allclose(vmapped[0][key], by_cell[0][key], rtol=1e-5, err_msg=key)


@pytest.mark.slow  # the book's convnet: a vmapped sweep and a separate run
def test_the_books_convnet_at_learning_rate_8_keeps_the_seed_that_does_not_diverge(
  config, tmp_path
):
  """SGD with momentum 0.9 at learning rate 8, 26 steps: seed 0 diverges, seed 1 is done."""
  config.batch_size = 128
  config.num_epochs = 1  # 26 steps of the embedded digits' 3,400 training images
  config.optimizer.name = "sgd"
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = 8.0
  cells = sweep.expand(lambda: sweep.axis("seed", [0, 1]))
  records = sweep.run_sweep(config, cells, str(tmp_path / "sweep"), vmap_seeds=True)
  assert [r["status"] for r in records] == ["diverged", "done"]
  assert records[0]["error"].startswith("DivergedError: seed 0: the training loss became nan")
  assert records[1]["epoch"] == 1 and "at step 6." in records[0]["error"]
  alone = train.train_and_evaluate(seeds.seed_config(config, 1), str(tmp_path / "alone"))
  for key in ("train_loss", "validation_loss", "test_loss", "test_accuracy"):
    np.testing.assert_allclose(records[1][key], alone[key], rtol=1e-4, err_msg=key)


# ----------------------------------------------------------------------------
# Random numbers, seed by seed

IMPLEMENTATIONS = ["threefry2x32", "rbg", "unsafe_rbg"]


@contextlib.contextmanager
def _prng(implementation, partitionable=None):
  """JAX's default PRNG implementation (and threefry option) set, then put back."""
  before = (jax.config.jax_default_prng_impl, jax.config.jax_threefry_partitionable)
  jax.config.update("jax_default_prng_impl", implementation)
  if partitionable is not None:
    jax.config.update("jax_threefry_partitionable", partitionable)
  try:
    yield
  finally:
    jax.config.update("jax_default_prng_impl", before[0])
    jax.config.update("jax_threefry_partitionable", before[1])


@pytest.mark.parametrize(
  "implementation, partitionable",
  [
    ("unsafe_rbg", None),
    pytest.param("rbg", None, marks=pytest.mark.slow),
    pytest.param("threefry2x32", True, marks=pytest.mark.slow),
    pytest.param("threefry2x32", False, marks=pytest.mark.slow),
  ],
)
def test_vmapped_masks_are_each_keys_own_under_every_prng(implementation, partitionable):
  """Each key's masks under `jax.vmap` are its masks alone, for every implementation and option.

  Batched draws of "rbg" and "unsafe_rbg" come from the first key alone: seed 3's
  masks were seed 0's.
  """
  spec = augment.Masking(
    time_axis=1, time_masks=2, time_mask_width=6, freq_axis=0, freq_masks=1, freq_mask_width=4
  )
  images = jnp.ones((8, 28, 28, 1))
  with _prng(implementation, partitionable):
    keys = jnp.stack([augment.key(s) for s in (0, 3, 5)])
    step_B = jnp.array([7, 7, 9], jnp.int32)
    together = jax.jit(jax.vmap(lambda k, s: augment.mask_step(k, s, images, spec)))
    masks = together(keys, step_B)
    alone = jax.jit(lambda k, s: augment.mask(augment.step_key(k, s), images, spec))
    for i in range(3):
      np.testing.assert_array_equal(masks[i], alone(keys[i], step_B[i]))
    assert not np.array_equal(masks[0], masks[1])


def _masked(config):
  config.model.name = "dense"
  config.model.dense_features = (8,)
  config.batch_size = 64
  config.microbatch_size = 0
  config.steps_per_epoch = 4
  config.num_epochs = 2
  config.augment.time_masks = 2
  config.augment.time_mask_width = 6
  config.augment.freq_masks = 1
  config.augment.freq_mask_width = 4
  return config


@pytest.mark.slow  # a group and a separate run for each implementation
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_masked_seed_of_a_group_trains_as_it_does_alone_under_every_prng(
  config, tmp_path, implementation
):
  config = _masked(config)
  with _prng(implementation):
    together = seeds.train_seeds(config, [0, 3], str(tmp_path / "group"))
    alone = train.train_and_evaluate(seeds.seed_config(config, 3), str(tmp_path / "alone"))
  _same_as_alone(together[1], alone, tmp_path / "group", tmp_path / "alone", 3)
