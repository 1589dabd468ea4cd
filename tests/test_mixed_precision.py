"""`model.dtype="bfloat16"`: the dots compute in bfloat16, everything else stays float32."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convnet import models
from convnet import steps as steps_lib
from convnet.configs import dense as dense_config
from convnet.errors import ConfigError
from tests.conftest import book_state, model_config

MODELS = {
  "convnet-matmul": {},
  "convnet-lax": {"implementation": "lax"},
  "dense": {"base": dense_config},
}
# The training path in the quick tier; the other implementation and the dense model in the slow one.
NAMES = [
  "convnet-matmul",
  pytest.param("convnet-lax", marks=pytest.mark.slow),
  pytest.param("dense", marks=pytest.mark.slow),
]


def _config(config, name, dtype):
  options = dict(MODELS[name])
  config.model = model_config(**options, dtype=dtype)
  config.microbatch_size = 0
  return config


def _batch(size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "image": jnp.asarray(rng.uniform(size=(size, 28, 28, 1)).astype(np.float32)),
    "label": jnp.asarray(rng.integers(0, 10, size=size).astype(np.int32)),
  }


def _leaf_dtypes(tree) -> set:
  return {x.dtype for x in jax.tree.leaves(tree) if hasattr(x, "dtype") and x.ndim}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_parameters_optimizer_state_and_activations_stay_float32(config, name):
  state = book_state(_config(config, name, "bfloat16"))
  state, metrics = jax.jit(steps_lib.train_step)(state, _batch())
  assert _leaf_dtypes(state.params) == {jnp.dtype(jnp.float32)}
  assert _leaf_dtypes(state.opt_state) == {jnp.dtype(jnp.float32)}
  assert {v.dtype for v in metrics.values()} == {jnp.dtype(jnp.float32)}
  logits, variables = state.apply_fn(
    {"params": state.params}, _batch()["image"], mutable=["intermediates"]
  )
  assert logits.dtype == jnp.float32
  assert _leaf_dtypes(variables.get("intermediates", {})) <= {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name", NAMES)
def test_every_dot_takes_bfloat16_and_accumulates_in_float32(config, name):
  state = book_state(_config(config, name, "bfloat16"))
  jaxpr = jax.make_jaxpr(lambda p: state.apply_fn({"params": p}, _batch()["image"]))(state.params)
  dots = [e for e in jaxpr.eqns if e.primitive.name in ("dot_general", "conv_general_dilated")]
  assert dots, "no dot in the forward pass"
  for e in dots:
    assert [v.aval.dtype for v in e.invars] == [jnp.bfloat16, jnp.bfloat16], e
    assert e.outvars[0].aval.dtype == jnp.float32, e


@pytest.mark.parametrize("name", NAMES)
def test_loss_and_gradients_are_close_to_float32s(config, name):
  batch = _batch(64)
  results = {}
  for dtype in ("float32", "bfloat16"):
    state = book_state(_config(config, name, dtype))  # the same seed: the same parameters

    def loss(params, state=state):
      logits = state.apply_fn({"params": params}, batch["image"])
      return steps_lib.cross_entropy(logits, batch["label"]).mean()

    results[dtype] = jax.jit(jax.value_and_grad(loss))(state.params)
  (loss32, grads32), (loss16, grads16) = results["float32"], results["bfloat16"]
  assert loss16 != loss32  # bfloat16 really computed
  assert abs(loss16 - loss32) < 1e-2 * abs(loss32)
  for path, g32 in jax.tree_util.tree_leaves_with_path(grads32):
    g16 = functools.reduce(lambda node, key: node[key.key], path, grads16)
    a, b = np.ravel(g32), np.ravel(g16)
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cosine > 0.99, (jax.tree_util.keystr(path), cosine)
    assert np.linalg.norm(a - b) < 0.1 * np.linalg.norm(a), jax.tree_util.keystr(path)


@pytest.mark.slow
def test_bfloat16_training_is_deterministic_by_seed(config):
  config = _config(config, "convnet-matmul", "bfloat16")
  batches = [_batch(32, seed) for seed in range(3)]
  step = jax.jit(functools.partial(steps_lib.train_step, microbatch_size=16))

  def train(seed):
    state = book_state(config, seed=seed)
    for batch in batches:
      state, _ = step(state, batch)
    return state.params

  first, again, other = train(0), train(0), train(1)
  jax.tree.map(np.testing.assert_array_equal, first, again)
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(other), strict=True)
  )


@pytest.mark.parametrize("dtype", ["float16", "bf16", None])
def test_an_unknown_dtype_names_the_field(dtype):
  with pytest.raises(ConfigError, match=r"model\.dtype=.* is not one of: float32, bfloat16"):
    models.create_model(model_config(dtype=dtype), (28, 28, 1), 10)
