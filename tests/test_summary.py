"""The model summary and the input spec: receptive fields, parameters, shapes and FLOPs.

Receptive fields are checked by hand and against the gradients of the real
model, parameters against `models.count_params`, shapes against the feature
maps `ConvNet` sows, FLOPs against XLA's cost analysis, and the book's
parameter counts through `scripts/parameter_counts.py`.
"""

import contextlib
import importlib.util
import io
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convnet import input_pipeline, models, summary
from convnet.configs import dense as dense_config
from convnet.configs import mnist as mnist_config
from convnet.errors import ConfigError, DataError
from convnet.model_config import ACTIVATIONS
from convnet.sources import idx
from tests.conftest import model_config, write_idx_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# (model config, input shape): the book's models and variants of every kind of layer.
CONFIGS = {
  "book": (model_config(), (28, 28, 1)),
  "dense": (model_config(dense_config), (28, 28, 1)),
  "stride_same": (
    model_config(**{"conv.strides": 2, "conv.padding": "SAME", "pool.type": "none"}),
    (28, 28, 1),
  ),
  "avg_same_pool": (
    model_config(**{"pool.type": ("avg", "avg", "none"), "pool.window": 3, "pool.padding": "SAME"}),
    (28, 28, 1),
  ),
  "explicit_padding": (
    model_config(**{"conv.kernel_size": 5, "conv.padding": "((1, 2), (0, 1))"}),
    (28, 28, 1),
  ),
  "1d": (
    model_config(
      **{
        "conv.kernel_size": 4,
        "conv.strides": ((3,), (1,), (1,)),
        "pool.window": 3,
        "pool.strides": 1,
        "pool.padding": "SAME",
      }
    ),
    (29, 3),
  ),
  "3d_global_avg_gelu": (
    model_config(
      **{
        "conv.features": (4, 8),
        "conv.kernel_size": (3, 1, 2),
        "conv.activation": "gelu",
        "pool.type": "max",
        "pool.padding": "SAME",
        "head": "global_avg",
        "dense_activation": "tanh",
      }
    ),
    (9, 10, 11, 2),
  ),
  "global_max_mixed_activations": (
    model_config(
      **{
        "conv.activation": ("elu", "selu", "swish"),
        "head": "global_max",
        "dense_activation": "sigmoid",
        "dense_features": (32, 16),
      }
    ),
    (28, 28, 1),
  ),
}


def _param_shapes(model_config, input_shape):
  model = models.create_model(model_config, input_shape, 10)
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


# ----------------------------------------------------------------------------
# Receptive fields


def test_receptive_field_arithmetic_by_hand():
  # r_out = r_in + (k - 1) * j_in, j_out = j_in * s, from r = j = 1.
  assert summary.receptive_fields([((3, 3), (1, 1)), ((3, 3), (1, 1))], 2) == [
    ((3, 3), (1, 1)),
    ((5, 5), (1, 1)),
  ]
  # A 2/2 pool doubles the jump; the next 3-wide conv then grows the field by 2 x 2.
  assert summary.receptive_fields([((3,), (1,)), ((2,), (2,)), ((3,), (1,))], 1) == [
    ((3,), (1,)),
    ((4,), (2,)),
    ((8,), (2,)),
  ]
  # Axes are independent: (3, 1, 5) stride (2, 1, 1), then 3x3x3: 3 + 2*2, 1 + 2*1, 5 + 2*1.
  assert summary.receptive_fields([((3, 1, 5), (2, 1, 1)), ((3, 3, 3), (1, 1, 1))], 3) == [
    ((3, 1, 5), (2, 1, 1)),
    ((7, 3, 7), (2, 1, 1)),
  ]


def test_book_convnet_receptive_fields():
  # Worked by hand: conv_0 1 + 2*1 = 3; pool_0 3 + 1*1 = 4, jump 2; conv_1 4 + 2*2 = 8;
  # pool_1 8 + 1*2 = 10, jump 4; conv_2 10 + 2*4 = 18. conv_2's 3 outputs, 4 apart, see
  # 2*4 + 18 = 26 of the 28 rows: VALID convs and pools drop the last 2 rows and columns.
  rows = summary.layer_rows(*CONFIGS["book"], 10)
  fields = {r.name: (r.receptive_field, r.jump, r.input_seen) for r in rows}
  assert fields == {
    "input": ((1, 1), (1, 1), None),
    "conv_0": ((3, 3), (1, 1), None),
    "pool_0": ((4, 4), (2, 2), None),
    "conv_1": ((8, 8), (2, 2), None),
    "pool_1": ((10, 10), (4, 4), None),
    "conv_2": ((18, 18), (4, 4), None),
    "flatten": (None, None, (26, 26)),
    "dense_0": (None, None, (26, 26)),
    "logits": (None, None, (26, 26)),
  }
  assert "26x26 of 28x28 seen" in summary.format_table(rows)


def _gradient_support(model_config, input_shape):
  """Per feature map, the input pixels that outputs 0 and 1 (along every axis) depend on.

  Linear activations and average pooling, so that every path carries a gradient.
  """
  model = models.create_model(model_config, input_shape, 10)
  x = jnp.zeros((1, *input_shape))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), shapes)
  names = [f"{kind}_{i}" for i in range(len(model.blocks)) for kind in ("activation", "block")]
  rank = len(input_shape) - 1

  def feature(x, name, index):
    _, state = model.apply({"params": params}, x, mutable=["intermediates"])
    return state["intermediates"][name][0][(0, *index, 0)]

  @jax.jit
  def supports(x):
    grads = {
      (name, index): jax.grad(feature)(x, name, (index,) * rank)
      for name in names
      for index in (0, 1)
    }
    grads["logits", 0] = jax.grad(lambda x: model.apply({"params": params}, x).sum())(x)
    return {key: jnp.any(g[0] != 0, axis=-1) for key, g in grads.items()}

  return supports(x)


def _extent(mask):
  """(first, end, count) of the nonzero positions along each axis of a boolean array."""
  spans = []
  for axis in range(mask.ndim):
    hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
    spans.append((int(hits[0]), int(hits[-1]) + 1, len(hits)))
  return spans


@pytest.mark.parametrize(
  "overrides, input_shape",
  [
    ({}, (28, 28, 1)),  # the book's geometry
    ({"conv.kernel_size": ((5, 3), (3, 1), (2, 2)), "conv.strides": ((2, 1), 1, 1)}, (40, 30, 2)),
    # 1-wide windows 2 apart: the outputs see every other position, 10 of 20.
    (
      {"conv.kernel_size": 1, "conv.strides": 2, "conv.features": (3,), "pool.type": "avg"},
      (20, 1),
    ),
  ],
)
def test_receptive_fields_are_the_gradients_support(overrides, input_shape):
  model = model_config(
    **{"conv.activation": "linear", "pool.type": ("avg", "avg", "none"), **overrides}
  )
  rows = {r.name: r for r in summary.layer_rows(model, input_shape, 10)}
  support = {k: np.asarray(v) for k, v in _gradient_support(model, input_shape).items()}
  for key, mask in support.items():
    name, index = key
    if name == "logits":
      continue
    kind, block = name.split("_")
    # block_i is the pooling's output, or the conv's where the block has no pooling.
    row = rows[f"conv_{block}"] if kind == "activation" else rows.get(f"pool_{block}")
    row = row or rows[f"conv_{block}"]
    assert min(row.output_shape[:-1]) >= 2  # outputs 0 and 1 exist along every axis
    for (first, end, _), size, jump in zip(
      _extent(mask), row.receptive_field, row.jump, strict=True
    ):
      assert (first, end) == (index * jump, index * jump + size), (key, row)
  seen = [count for _, _, count in _extent(support["logits", 0])]
  assert tuple(seen) == rows["logits"].input_seen


# ----------------------------------------------------------------------------
# Parameters and shapes


def test_book_totals():
  # Pinned from the book (section 4.2). Update only if the book's models change.
  for name, expected in (("book", 33_194), ("dense", 33_400)):
    total = summary.totals(summary.layer_rows(*CONFIGS[name], 10))
    assert total["params"] == expected


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameters_equal_count_params(name):
  model_config, input_shape = CONFIGS[name]
  rows = summary.layer_rows(model_config, input_shape, 10)
  params = _param_shapes(model_config, input_shape)
  assert summary.totals(rows)["params"] == models.count_params(params)
  layers = {r.name: r for r in rows if r.params}
  assert set(layers) == set(params)
  for layer, row in layers.items():
    assert row.weights == models.count_params(params[layer]["kernel"]), layer
    assert row.params == models.count_params(params[layer]), layer


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "dense"])
def test_shapes_equal_the_models_feature_maps(name):
  model_config, input_shape = CONFIGS[name]
  model = models.create_model(model_config, input_shape, 10)
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  logits, variables = jax.eval_shape(
    lambda x: model.init_with_output(jax.random.key(0), x, mutable=True), x
  )
  maps = {k: v[0].shape[1:] for k, v in variables["intermediates"].items()}
  rows = {r.name: r.output_shape for r in summary.layer_rows(model_config, input_shape, 10)}
  for i in range(len(model.blocks)):
    assert rows[f"conv_{i}"] == maps[f"activation_{i}"]
    assert rows.get(f"pool_{i}", rows[f"conv_{i}"]) == maps[f"block_{i}"]
  head = rows.get("flatten", rows.get(model.head))
  assert head[-1] == variables["params"]["dense_0"]["kernel"].shape[0]
  assert rows["logits"] == logits.shape[1:]


# ----------------------------------------------------------------------------
# FLOPs against XLA


@pytest.mark.parametrize("implementation", ["matmul", "lax"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_flops_equal_xla_as_written(name, implementation):
  """The claim of the printout: exactly XLA's count of the forward pass as written."""
  model_config, input_shape = CONFIGS[name]
  model_config = model_config.copy_and_resolve_references()
  model_config.implementation = implementation
  total = summary.totals(summary.layer_rows(model_config, input_shape, 10))
  counts = summary.xla_counts(model_config, input_shape, 10, compiled=False)
  assert total["flops"] == counts["flops_lowered"]
  assert total["transcendentals"] == counts["transcendentals_lowered"]


def test_lax_flops_equal_the_compiled_count():
  """With relu, XLA's optimiser leaves the lax program's count as written."""
  model = model_config(implementation="lax")
  total = summary.totals(summary.layer_rows(model, (28, 28, 1), 10))
  counts = summary.xla_counts(model, (28, 28, 1), 10)
  assert total["flops"] == counts["flops_compiled"] == 1_554_458


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_activation_costs_are_xlas(activation):
  assert set(summary.ACTIVATION_COSTS) == set(ACTIVATIONS)
  n = 1000
  lowered = jax.jit(ACTIVATIONS[activation]).lower(jax.ShapeDtypeStruct((1, n), jnp.float32))
  cost = lowered.cost_analysis()
  flops, transcendentals = summary.ACTIVATION_COSTS[activation]
  assert cost.get("flops", 0.0) == flops * n
  assert cost.get("transcendentals", 0.0) == transcendentals * n


def test_bad_model_config_names_the_field():
  with pytest.raises(ConfigError, match="model.conv.kernel_size: block 2's 7x7 kernel"):
    summary.layer_rows(model_config(**{"conv.kernel_size": 7}), (28, 28, 1), 10)
  with pytest.raises(ConfigError, match="model.pool.type='sum' is not one of"):
    summary.layer_rows(model_config(**{"pool.type": "sum"}), (28, 28, 1), 10)


# ----------------------------------------------------------------------------
# Command line


def _summary_command(*overrides):
  return subprocess.run(
    [sys.executable, "-m", "convnet.summary", "--config=configs/mnist.py", *overrides],
    cwd=REPO,
    capture_output=True,
    text=True,
    env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
  )


def test_command_line_prints_the_table():
  done = _summary_command("--config.data.source=embedded")
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  conv_2 = next(line for line in lines if line.startswith("conv_2"))
  assert "(None, 3, 3, 32)" in conv_2
  assert conv_2.split()[-4:] == ["9,248", "166,464", "18x18", "4x4"]
  assert "Total parameters: 33,194 (33,040 weights, 154 biases)" in lines
  assert "Total forward FLOPs per example: 1,338,554" in lines
  assert "  program as written: 1,338,554 FLOPs (table: 1,338,554, equal)" in lines
  assert any(line.startswith("  compiled program (steps.compiled_flops): ") for line in lines)


def test_command_line_bad_override_is_one_line():
  done = _summary_command("--config.data.source=embedded", "--config.model.conv.kernel_size=7")
  assert done.returncode == 1
  assert done.stdout == ""
  assert "Traceback" not in done.stderr
  assert (
    done.stderr.strip()
    .splitlines()[-1]
    .startswith("error: model.conv.kernel_size: block 2's 7x7 kernel does not fit its 2x2 input")
  )


def test_summary_text_of_the_dense_model_on_pca_features():
  config = dense_config.get_config()
  config.data.source = "embedded"
  config.data.features = "pca"
  config.data.num_features = 50
  text = summary.summary_text(config, xla=False)
  assert "dense on embedded MNIST: input (50,), 10 classes" in text
  assert "Total parameters: 2,572 (2,520 weights, 52 biases)" in text  # 50*42 + 42 + 42*10 + 10


# ----------------------------------------------------------------------------
# Input spec without the data


def _data_config(**overrides):
  config = mnist_config.get_config().data
  config.tfds_data_dir = ""
  config.idx_dir = ""
  config.update(overrides)
  return config


def test_input_spec_of_local_sources(embedded, idx_dir):
  assert input_pipeline.input_spec(_data_config(source="embedded")) == (
    embedded.train_images.shape[1:],
    embedded.num_classes,
  )
  loaded = idx.load_idx_dir(idx_dir)
  assert input_pipeline.input_spec(_data_config(source="idx", idx_dir=str(idx_dir))) == (
    loaded.train_images.shape[1:],
    loaded.num_classes,
  )
  pca = _data_config(source="embedded", features="pca", num_features=30)
  assert input_pipeline.input_spec(pca) == ((30,), 10)


def test_input_spec_of_uncompressed_rgb_idx_files(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (12, 6, 5, 3), dtype=np.uint8)
  labels = np.arange(12, dtype=np.uint8) % 4
  write_idx_dir(tmp_path, images, labels, images[:3], labels[:3], gz=False)
  assert input_pipeline.input_spec(_data_config(source="idx", idx_dir=str(tmp_path))) == (
    (6, 5, 3),
    4,
  )


def test_input_spec_of_tfds_needs_no_download(tmp_path):
  for name, expected in (("mnist", ((28, 28, 1), 10)), ("cifar10", ((32, 32, 3), 10))):
    config = _data_config(source="tfds", name=name, tfds_data_dir=str(tmp_path))
    assert input_pipeline.input_spec(config) == expected
  assert not any(tmp_path.iterdir())  # nothing downloaded or prepared


def test_input_spec_errors_name_the_field(tmp_path):
  with pytest.raises(ConfigError, match="data.idx_dir is empty"):
    input_pipeline.input_spec(_data_config(source="idx"))
  with pytest.raises(DataError, match="no such folder"):
    input_pipeline.input_spec(_data_config(source="idx", idx_dir=str(tmp_path / "nowhere")))
  with pytest.raises(ConfigError, match="data.source='ftp' is not a source"):
    input_pipeline.input_spec(_data_config(source="ftp"))
  with pytest.raises(ConfigError, match=r"data.num_features=0 must be in \[1, 784\]"):
    input_pipeline.input_spec(_data_config(source="embedded", features="pca", num_features=0))
  tfds = {"source": "tfds", "tfds_data_dir": str(tmp_path)}
  with pytest.raises(DataError, match="data.name='imagenette': TFDS gives images of varying"):
    input_pipeline.input_spec(_data_config(name="imagenette", **tfds))
  with pytest.raises(DataError, match="data.name='no_such_dataset' is not a TFDS dataset"):
    input_pipeline.input_spec(_data_config(name="no_such_dataset", **tfds))


# ----------------------------------------------------------------------------
# scripts/parameter_counts.py


def _load_script():
  path = os.path.join(REPO, "scripts", "parameter_counts.py")
  spec = importlib.util.spec_from_file_location("parameter_counts", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # its dataclass looks its module up there
  spec.loader.exec_module(module)
  return module


def test_parameter_counts_script():
  script = _load_script()
  counts = {
    title: script.layer_counts(module, shape)
    for title, (module, shape) in script.book_models().items()
  }
  by_model = list(counts.values())

  def table(layers):
    return [(c.name, c.weights, c.params) for c in layers]

  # The book's worked example: 10,000 dense weights against 81 + 81 conv weights (not "90").
  assert table(by_model[0]) == [("logits", 10_000, 10_100)]
  assert table(by_model[1]) == [("conv_0", 81, 90), ("conv_1", 81, 82)]
  assert table(by_model[2]) == [
    ("conv_0", 144, 160),
    ("conv_1", 4_608, 4_640),
    ("conv_2", 9_216, 9_248),
    ("dense_0", 18_432, 18_496),
    ("logits", 640, 650),
  ]
  assert table(by_model[3]) == [("dense_0", 32_928, 32_970), ("logits", 420, 430)]
  # Both maps take a 10x10 image to a 10x10 image.
  for module, shape in list(script.book_models().values())[:2]:
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    out, _ = jax.eval_shape(lambda x, m=module: m.init_with_output(jax.random.key(0), x), x)
    assert np.prod(out.shape[1:]) == 100

  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    script.main()
  text = printed.getvalue()
  for line in (
    "  total                          162          172",
    "9 filters x 9 + 1 filter x 9 = 90",
  ):
    assert line in text
  assert "  total                       33,040       33,194" in text
  assert "  total                       33,348       33,400" in text
