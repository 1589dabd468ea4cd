"""Learning rates trained together: rates x seeds in one vmapped program (`seeds.train_group`).

A group whose members' rates differ keeps each member's rate in the
optimizer's state (`optim.create_optimizer(..., rate_in_state=True)`). Two
claims are checked:

- Against the same group trained at one rate (a group of the same size, the
  member in the same place), a member's training is the same bit for bit: the
  rate in the state enters the update by the same operations as the plain
  optimizer's constant. That holds for the constant schedule (the sweeps') with
  RMSprop (the book's), Adam and SGD; with RMSprop's momentum, XLA computes the
  constant rate's update in another order, equal within float rounding.
- Against separate runs, a member matches within float rounding only, as a seed
  of a group does (tests/test_seed_groups.py): XLA's vmapped convolutions and
  square roots on a CPU round differently from a single model's.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convnet import checkpoint_checks, checkpoints, optim, seeds, train
from convnet.configs import mnist
from convnet.errors import CheckpointError, ConfigError, DivergedError

TIMING = ("wall_time_s", "train_examples_per_sec", "vmap_group_size")
RATES = (1e-3, 3e-3)


def _name(rate, seed):
  return f"optimizer.learning_rate={rate},seed={seed}"


def _members(config, pairs):
  """(name, config) of each (rate, seed)."""
  return [(_name(r, s), seeds.rate_config(config, s, r)) for r, s in pairs]


def _short(config):
  config.max_steps = 3
  config.steps_per_call = 2
  config.log_every_steps = 1
  return config


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def _params(workdir):
  return jax.tree.leaves(checkpoints.restore_params(str(workdir))[0])


def _assert_same(group_dir, other_dir):
  """A member's parameters and records equal another run's, bit for bit (timing aside)."""
  for a, b in zip(_params(group_dir), _params(other_dir), strict=True):
    np.testing.assert_array_equal(a, b)
  assert _records(group_dir) == _records(other_dir)


def _assert_close(group_dir, other_dir, rtol):
  for a, b in zip(_params(group_dir), _params(other_dir), strict=True):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-2)
  group, other = _records(group_dir), _records(other_dir)
  assert [(r["kind"], r["step"]) for r in group] == [(r["kind"], r["step"]) for r in other]
  for a, b in zip(group, other, strict=True):
    assert sorted(a) == sorted(b)
    for key, value in a.items():
      if isinstance(value, str):
        assert value == b[key], key
      else:
        np.testing.assert_allclose(value, b[key], rtol=rtol, err_msg=key)


# ----------------------------------------------------------------------------
# The optimizer with its rate in its state


def _updated(tx, params, grads, opt_state):
  """`params` after one update per leading entry of `grads` (12 steps)."""

  def step(carry, g):
    p, s = carry
    u, s = tx.update(g, s, p)
    return (jax.tree.map(jnp.add, p, u), s), None

  return jax.lax.scan(step, (params, opt_state), grads)[0][0]


@pytest.mark.parametrize(
  "name, momentum, schedule",
  [
    ("rmsprop", 0.0, "constant"),  # the book's, and the sweeps'
    pytest.param("adam", 0.0, "constant", marks=pytest.mark.slow),
    pytest.param("sgd", 0.9, "constant", marks=pytest.mark.slow),
    pytest.param("rmsprop", 0.9, "constant", marks=pytest.mark.slow),
    pytest.param("rmsprop", 0.0, "cosine", marks=pytest.mark.slow),
    pytest.param("adam", 0.0, "warmup_cosine", marks=pytest.mark.slow),
  ],
)
def test_rates_in_the_state_update_as_the_plain_optimizer_at_each_rate(name, momentum, schedule):
  """Two members at two rates, vmapped, against two members at one rate (the plain optimizer)."""
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(7, 5)).astype(np.float32), "b": np.ones(5, np.float32)}
  grads = jax.tree.map(lambda x: rng.normal(size=(6, *x.shape)).astype(np.float32), params)
  stacked = jax.tree.map(lambda x: np.stack([x, x]), params)
  opt_config = mnist.get_config().optimizer
  opt_config.update(name=name, momentum=momentum, schedule=schedule, warmup_epochs=1.0)
  tx = optim.create_optimizer(opt_config, 2, 6, rate_in_state=True)
  states = [optim.set_learning_rate(tx.init(params), r) for r in RATES]
  assert optim.learning_rates(states[1]) == np.float32(RATES[1])
  plains = []
  for rate in RATES:
    opt_config.learning_rate = rate
    plains.append(optim.create_optimizer(opt_config, 2, 6))
  assert optim.learning_rates(plains[0].init(params)) is None  # a single run's state, as it was

  def vmapped(tx, opt_states):  # the members' parameters after the updates
    return jax.vmap(lambda p, s: _updated(tx, p, grads, s))(stacked, _stack(opt_states))

  @jax.jit  # one program, as the training steps are
  def updated():
    return vmapped(tx, states), [vmapped(p, [p.init(params)] * 2) for p in plains]

  together, alone = updated()
  for i in range(len(RATES)):
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(alone[i]), strict=True):
      if schedule == "constant" and not (name == "rmsprop" and momentum):
        np.testing.assert_array_equal(a[i], b[i])
      else:
        np.testing.assert_allclose(a[i], b[i], rtol=1e-5, atol=1e-7)
  assert not np.array_equal(together["w"][0], together["w"][1])  # two rates, two models


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


# ----------------------------------------------------------------------------
# Members that cannot train together


@pytest.mark.parametrize(
  "change, message",
  [
    (
      lambda c, m: m[1][1].optimizer.update(momentum=0.5),
      "member 'optimizer.learning_rate=0.003,seed=0': optimizer.momentum is 0.5, not the "
      "group's 0.0; members differ in seed and optimizer.learning_rate only",
    ),
    (
      lambda c, m: m.__setitem__(1, (m[0][0], m[1][1])),
      "member name 'optimizer.learning_rate=0.001,seed=0' repeats",
    ),
    (lambda c, m: m.__setitem__(1, ("../up", m[1][1])), "member name '../up' is not a folder"),
    (lambda c, m: m.__setitem__(1, ("checkpoints", m[1][1])), "member name 'checkpoints'"),
    (
      lambda c, m: m.__setitem__(1, ("again", m[0][1])),
      "members 'optimizer.learning_rate=0.001,seed=0' and 'again' both have seed=0",
    ),
    (lambda c, m: m.clear(), "a group needs at least one member"),
  ],
)
def test_members_that_cannot_train_together_are_refused_in_one_line(
  config, tmp_path, change, message
):
  members = _members(config, [(RATES[0], 0), (RATES[1], 0)])
  change(config, members)
  with pytest.raises(ConfigError) as raised:
    seeds.train_group(config, members, str(tmp_path / "group"))
  assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
  assert not os.path.exists(tmp_path / "group")  # refused before anything is written


def test_a_checkpoint_names_its_members_or_is_damaged():
  loop = {"wall_time_s": 1.0, "constants": {}, "members": ["a", "b"]}
  assert "constants" in checkpoint_checks.loop_problem(loop, 2)  # the members fit; this does not
  for members in (["a", "a"], ["a", ""], ["a"], "ab"):
    problem = checkpoint_checks.loop_problem(loop | {"members": members}, 2)
    assert problem.startswith("field members of its loop/metadata is"), members


# ----------------------------------------------------------------------------
# Groups trained


@pytest.mark.slow  # three groups of four and four separate runs
def test_rates_times_seeds_train_as_one_rate_groups_bitwise_and_as_separate_runs(config, tmp_path):
  config = _short(config)
  pairs = [(r, s) for r in RATES for s in (0, 3)]
  results = seeds.train_group(config, _members(config, pairs), str(tmp_path / "rates"))
  assert [r["vmap_group_size"] for r in results] == [4] * 4
  assert len({r["train_loss"] for r in results}) == 4  # four models
  # The same group at one rate (plain optimizer state), the member in the same place.
  seeds.train_group(config, _members(config, [(RATES[0], s) for s in (0, 3, 5, 7)]), tmp_path / "a")
  seeds.train_group(config, _members(config, [(RATES[1], s) for s in (5, 7, 0, 3)]), tmp_path / "b")
  for rate, seed in pairs:
    member = tmp_path / "rates" / _name(rate, seed)
    saved = json.loads((member / "config.json").read_text())
    assert (saved["seed"], saved["optimizer"]["learning_rate"]) == (seed, rate)
    _assert_same(member, tmp_path / ("a" if rate == RATES[0] else "b") / _name(rate, seed))
  # Separate runs: equal within float rounding (vmapped ops round differently).
  for (rate, seed), together in zip(pairs, results, strict=True):
    alone_dir = tmp_path / f"alone_{rate}_{seed}"
    alone = train.train_and_evaluate(seeds.rate_config(config, seed, rate), str(alone_dir))
    _assert_close(tmp_path / "rates" / _name(rate, seed), alone_dir, rtol=1e-5)
    for key in ("train_loss", "validation_loss", "test_loss", "validation_accuracy", "step"):
      np.testing.assert_allclose(together[key], alone[key], rtol=1e-5, err_msg=key)


@pytest.mark.slow  # a group and two separate runs
def test_rates_on_a_cosine_schedule_with_momentum_match_separate_runs(config, tmp_path):
  config = _short(config)
  config.optimizer.update(name="sgd", momentum=0.9, schedule="warmup_cosine", warmup_epochs=0.1)
  config.steps_per_epoch = 4
  config.num_epochs = 2
  config.max_steps = -1
  pairs = [(0.05, 0), (0.2, 0)]
  results = seeds.train_group(config, _members(config, pairs), str(tmp_path / "rates"))
  for (rate, seed), together in zip(pairs, results, strict=True):
    alone_dir = tmp_path / f"alone_{rate}"
    alone = train.train_and_evaluate(seeds.rate_config(config, seed, rate), str(alone_dir))
    _assert_close(tmp_path / "rates" / _name(rate, seed), alone_dir, rtol=1e-5)
    assert together["step"] == alone["step"] == 8
  assert results[0]["train_loss"] != results[1]["train_loss"]


@pytest.mark.slow  # two groups, one stopped and resumed
def test_a_resumed_group_of_rates_is_the_uninterrupted_one_and_keeps_its_members(config, tmp_path):
  config = _short(config)
  config.max_steps = 4
  members = _members(config, [(RATES[0], 0), (RATES[1], 0), (RATES[1], 3)])
  straight = seeds.train_group(config, members, str(tmp_path / "straight"))
  stopped = config.copy_and_resolve_references()
  stopped.max_steps = 2  # a change a run may resume across
  stopped_members = [(n, c.copy_and_resolve_references()) for n, c in members]
  for _, c in stopped_members:
    c.max_steps = 2
  seeds.train_group(stopped, stopped_members, str(tmp_path / "resumed"))
  resumed = seeds.train_group(config, members, str(tmp_path / "resumed"))
  for (name, _), a, b in zip(members, straight, resumed, strict=True):
    _assert_same(tmp_path / "straight" / name, tmp_path / "resumed" / name)
    assert {k: v for k, v in a.items() if k not in TIMING} == {
      k: v for k, v in b.items() if k not in TIMING
    }
  # The finished group refuses other rates and other members, in one line, before any data.
  other_rate = _members(config, [(RATES[0], 0), (1e-2, 0), (RATES[1], 3)])
  other_rate[1] = (members[1][0], other_rate[1][1])
  with pytest.raises(CheckpointError, match="optimizer.learning_rate: 0.003 .saved. vs 0.01"):
    seeds.train_group(config, other_rate, str(tmp_path / "resumed"))
  with pytest.raises(CheckpointError) as raised:
    seeds.train_group(config, members[::-1], str(tmp_path / "resumed"))
  assert "holds checkpoints of a group of members" in str(raised.value)
  assert "\n" not in str(raised.value)
  with pytest.raises(CheckpointError, match="a group of seeds .0, 3., not of members"):
    seeds.train_seeds(config, [0, 3], str(tmp_path / "seeds"))
    seeds.train_group(config, members[:2], str(tmp_path / "seeds"))


@pytest.mark.slow  # a small dense group of three epochs
def test_a_rate_that_diverges_stops_alone(config, tmp_path):
  config.model.name = "dense"
  config.model.dense_features = (8,)
  config.optimizer.update(name="sgd", momentum=0.9)
  config.batch_size = 64
  config.microbatch_size = 0
  config.steps_per_epoch = 4
  config.num_epochs = 3
  config.log_every_steps = 2
  members = _members(config, [(0.01, 0), (1e8, 1)])
  with pytest.raises(train.SeedsDivergedError) as raised:
    seeds.train_group(config, members, str(tmp_path / "group"))
  finished, diverged = raised.value.results
  step, loop = checkpoints.read_loop(str(tmp_path / "group"))
  assert step == 12 and loop["members"] == [n for n, _ in members]
  assert loop["diverged"] == {members[1][0]: str(diverged)}
  # Each member as it is alone: the message (its own rate named) and the result.
  with pytest.raises(DivergedError) as alone_diverged:
    train.train_and_evaluate(members[1][1], str(tmp_path / "alone_1"))
  expected = f"{members[1][0]}: {alone_diverged.value}".replace(
    str(tmp_path / "alone_1"), str(tmp_path / "group")
  )
  assert str(diverged) == expected and "optimizer.learning_rate (now 100000000.0)" in expected
  alone = train.train_and_evaluate(members[0][1], str(tmp_path / "alone_0"))
  assert finished["step"] == alone["step"] == 12
  np.testing.assert_allclose(finished["test_loss"], alone["test_loss"], rtol=1e-5)
