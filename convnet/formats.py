"""A trained model's layers, written as an ONNX graph and as a TensorFlow.js LayersModel.

`layers` gives the layers a model lists (`convnet.models.layers`) with
their trained weights and every padding resolved for the input; `to_onnx`
and `to_tfjs` write those layers in each format from the format's own
definitions: ONNX through the `onnx` package's graph builders (the operators
of the ONNX specification), the LayersModel as the JSON topology and weight
manifest that `tf.loadLayersModel` reads. `convnet.export` checks what they
write against JAX.

Every setting the models can express goes to ONNX. TF.js's layers pad
pooling windows only as "valid" or "same", have no 3D zero padding, and
cannot read Flax's (tanh) gelu from model.json; `to_tfjs` refuses settings
that need those with one line (`ExportError`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from convnet import model_config, ops
from convnet.errors import ExportError
from convnet.models import layers as model_layers

ONNX_OPSET = 20  # the first with Gelu, whose tanh form is Flax's nn.gelu
_TFJS_ACTIVATIONS = {
  "relu": "relu",
  "elu": "elu",
  "selu": "selu",
  "swish": "swish",
  "tanh": "tanh",
  "sigmoid": "sigmoid",
  "linear": "linear",
}


# ----------------------------------------------------------------------------
# The model's layers, with their weights


@dataclasses.dataclass(frozen=True)
class Conv:
  """A `layers.Conv` with its weights: `kernel` (*kernel_size, in, out), `bias` (out,)."""

  name: str
  kernel: np.ndarray
  bias: np.ndarray
  strides: tuple[int, ...]
  pads: tuple[tuple[int, int], ...]  # (low, high) zeros on each spatial axis
  same: bool  # the pads are those of "SAME" for this input
  activation: str


@dataclasses.dataclass(frozen=True)
class Pool:
  """A `layers.Pool`, its padding resolved: the real inputs of each window are pooled."""

  name: str
  kind: str  # "max" or "avg"
  window: tuple[int, ...]
  strides: tuple[int, ...]
  pads: tuple[tuple[int, int], ...]
  same: bool


# A head has no weights and no padding: the model's own record serves.
Head = model_layers.Head


@dataclasses.dataclass(frozen=True)
class Dense:
  """A `layers.Dense` with its weights: `activation(x @ kernel + bias)`; `kernel` (in, out)."""

  name: str
  kernel: np.ndarray
  bias: np.ndarray
  activation: str


Layer = Conv | Pool | Head | Dense


def _window_pads(spatial, window, strides, padding) -> tuple[tuple, bool]:
  pads = ops.explicit_padding(spatial, window, strides, padding)
  return pads, pads == ops.explicit_padding(spatial, window, strides, "SAME")


def layers(model: Any, params: Mapping[str, Any], input_shape: Sequence[int]) -> list[Layer]:
  """The layers a model lists (`model.layers`, see `convnet.models`) with its trained `params`.

  Args:
    model: the module `models.create_model` built for the run.
    params: its parameters (`checkpoints.restore_params`).
    input_shape: one example's shape, channels last, e.g. (28, 28, 1).

  Returns:
    The layers in order; every "SAME" or explicit padding is resolved into
    (low, high) amounts for this input.
  """
  out: list[Layer] = []
  spatial = tuple(input_shape[:-1])
  for layer in model.layers:
    if isinstance(layer, model_layers.Conv):
      p = params[layer.name]
      pads, same = _window_pads(spatial, layer.kernel_size, layer.strides, layer.padding)
      kernel, bias = np.asarray(p["kernel"]), np.asarray(p["bias"])
      out.append(Conv(layer.name, kernel, bias, layer.strides, pads, same, layer.activation))
      spatial = _shape_after(spatial, layer.kernel_size, layer.strides, pads)
    elif isinstance(layer, model_layers.Pool):
      pads, same = _window_pads(spatial, layer.window, layer.strides, layer.padding)
      out.append(Pool(layer.name, layer.kind, layer.window, layer.strides, pads, same))
      spatial = _shape_after(spatial, layer.window, layer.strides, pads)
    elif isinstance(layer, model_layers.Head):
      out.append(Head(layer.name, layer.kind))
    else:
      p = params[layer.name]
      kernel, bias = np.asarray(p["kernel"]), np.asarray(p["bias"])
      out.append(Dense(layer.name, kernel, bias, layer.activation))
  return out


def _shape_after(spatial, window, strides, pads) -> tuple[int, ...]:
  return tuple(
    model_config.output_length(n, w, s, pad)
    for n, w, s, pad in zip(spatial, window, strides, pads, strict=True)
  )


# ----------------------------------------------------------------------------
# ONNX


def to_onnx(layers_: Sequence[Layer], input_shape: Sequence[int], metadata: Mapping[str, str]):
  """An ONNX model (`onnx.ModelProto`, opset 20) computing the layers' logits.

  Input "images", float32 (N, *input_shape) channels last; output "logits",
  float32 (N, num_classes). Convolutions and pooling run channels first, as
  ONNX defines them, between two transposes; pooling's padding is never
  counted (MaxPool pads with -inf, AveragePool has count_include_pad=0).

  Raises:
    ImportError: the `onnx` package is not installed (`pip install 'convnet[export]'`).
  """
  import onnx
  from onnx import TensorProto, helper, numpy_helper

  rank = len(input_shape) - 1
  nodes, initializers = [], []
  x, channels_first = "images", False

  def node(op: str, inputs: list[str], name: str, **attributes) -> str:
    nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
    return name

  def constant(name: str, value: np.ndarray) -> str:
    initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return name

  def transpose(x: str, to_first: bool, name: str) -> str:
    spatial = list(range(1, rank + 1))
    perm = [0, rank + 1, *spatial] if to_first else [0, *range(2, rank + 2), 1]
    return node("Transpose", [x], name, perm=perm)

  for layer in layers_:
    if isinstance(layer, Conv):
      if not channels_first:
        x, channels_first = transpose(x, True, f"{layer.name}_channels_first"), True
      kernel = np.moveaxis(layer.kernel, (-1, -2), (0, 1))  # (out, in, *kernel_size)
      x = node(
        "Conv",
        [x, constant(f"{layer.name}/kernel", kernel), constant(f"{layer.name}/bias", layer.bias)],
        _before_activation(layer),
        kernel_shape=list(layer.kernel.shape[:-2]),
        strides=list(layer.strides),
        pads=[low for low, _ in layer.pads] + [high for _, high in layer.pads],
      )
      x = _onnx_activation(node, x, layer.activation, layer.name)
    elif isinstance(layer, Pool):
      extra = {"count_include_pad": 0} if layer.kind == "avg" else {}
      x = node(
        "MaxPool" if layer.kind == "max" else "AveragePool",
        [x],
        layer.name,
        kernel_shape=list(layer.window),
        strides=list(layer.strides),
        pads=[low for low, _ in layer.pads] + [high for _, high in layer.pads],
        **extra,
      )
    elif isinstance(layer, Head):
      if (
        layer.kind == "flatten" and channels_first
      ):  # flatten in Flax's (spatial..., channels) order
        x = transpose(x, False, "channels_last")
      elif layer.kind != "flatten":
        x = node(
          "GlobalAveragePool" if layer.kind == "global_avg" else "GlobalMaxPool", [x], "pool"
        )
      x = node("Flatten", [x], layer.name, axis=1)
    else:
      x = node(
        "Gemm",
        [
          x,
          constant(f"{layer.name}/kernel", layer.kernel),
          constant(f"{layer.name}/bias", layer.bias),
        ],
        _before_activation(layer),
      )
      x = _onnx_activation(node, x, layer.activation, layer.name)
  nodes[-1].output[0] = "logits"
  num_classes = layers_[-1].kernel.shape[-1]
  graph = helper.make_graph(
    nodes,
    "convnet",
    [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", *input_shape])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
    initializers,
  )
  model = helper.make_model(
    graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="convnet"
  )
  helper.set_model_props(model, dict(metadata))
  onnx.checker.check_model(model, full_check=True)
  return model


def _before_activation(layer: Conv | Dense) -> str:
  """The name of a layer's output before its activation (its own name if it has none)."""
  return layer.name if layer.activation == "linear" else f"{layer.name}_preactivation"


def _onnx_activation(node, x: str, activation: str, name: str) -> str:
  """Appends the nodes of a Flax activation (`model_config.ACTIVATIONS`) to the graph."""
  if activation == "linear":
    return x
  if activation == "swish":
    return node("Mul", [x, node("Sigmoid", [x], f"{name}_sigmoid")], name)
  op, attributes = {
    "relu": ("Relu", {}),
    "gelu": ("Gelu", {"approximate": "tanh"}),
    "elu": ("Elu", {"alpha": 1.0}),
    "selu": ("Selu", {}),  # ONNX's default alpha and gamma are JAX's constants
    "tanh": ("Tanh", {}),
    "sigmoid": ("Sigmoid", {}),
  }[activation]
  return node(op, [x], name, **attributes)


# ----------------------------------------------------------------------------
# TensorFlow.js


def to_tfjs(
  layers_: Sequence[Layer], input_shape: Sequence[int], metadata: Mapping[str, Any]
) -> tuple[dict[str, Any], bytes]:
  """A TensorFlow.js LayersModel: the `model.json` content, and `weights.bin`'s bytes.

  The topology is a Keras `Sequential` model in the JSON form that
  `tf.loadLayersModel` reads (class names and snake_case configs), with one
  weight group in one file; `metadata` becomes its `userDefinedMetadata`.
  Global heads are a Reshape to (positions, channels) and a 1D global
  pooling, so that they hold for 1D, 2D and 3D maps; an explicit 1D
  convolution padding goes through ZeroPadding2D between two Reshapes.

  Raises:
    ExportError: a pooling padding other than "VALID" or "SAME" (TF.js's
      pooling layers have no other), an explicit 3D convolution padding
      (TF.js has no ZeroPadding3D), or the gelu activation (see below).
  """
  rank = len(input_shape) - 1
  topology: list[dict[str, Any]] = []
  weights: list[dict[str, Any]] = []
  data: list[bytes] = []
  shape = list(input_shape)  # the shape before the next layer, while it is still needed

  def add(class_name: str, name: str, **config) -> None:
    config = {"name": name, "trainable": True, "dtype": "float32", **config}
    if not topology:
      config["batch_input_shape"] = [None, *input_shape]
    topology.append({"class_name": class_name, "config": config})

  def add_weights(name: str, *arrays: tuple[str, np.ndarray]) -> None:
    for kind, array in arrays:
      weights.append({"name": f"{name}/{kind}", "shape": list(array.shape), "dtype": "float32"})
      data.append(np.ascontiguousarray(array, "<f4").tobytes())

  for layer in layers_:
    if getattr(layer, "activation", "linear") not in _TFJS_ACTIVATIONS:
      raise ExportError(
        f"TF.js cannot hold {layer.name}'s activation {layer.activation!r}: Flax's gelu is the "
        "tanh form, which TF.js 4.22 calls 'gelu_new' and cannot read from model.json (its "
        "'gelu' is the erf form); export to ONNX, or train with another activation"
      )
    if isinstance(layer, Conv):
      padding = _tfjs_padding(layer, rank, shape, add)
      add(
        f"Conv{rank}D",
        layer.name,
        filters=int(layer.kernel.shape[-1]),
        kernel_size=list(layer.kernel.shape[:-2]),
        strides=list(layer.strides),
        padding=padding,
        data_format="channels_last",
        dilation_rate=[1] * rank,
        activation=_TFJS_ACTIVATIONS[layer.activation],
        use_bias=True,
      )
      add_weights(layer.name, ("kernel", layer.kernel), ("bias", layer.bias))
      shape = [*_shape_after(shape[:-1], layer.kernel.shape[:-2], layer.strides, layer.pads)]
      shape.append(int(layer.kernel.shape[-1]))
    elif isinstance(layer, Pool):
      if not (layer.same or not any(low or high for low, high in layer.pads)):
        raise ExportError(
          f"TF.js cannot hold {layer.name}'s padding {list(layer.pads)}: its pooling layers pad "
          "only as 'valid' or 'same'; export to ONNX, or train with model.pool.padding "
          "VALID or SAME"
        )
      kind = "MaxPooling" if layer.kind == "max" else "AveragePooling"
      add(
        f"{kind}{rank}D",
        layer.name,
        pool_size=list(layer.window),
        strides=list(layer.strides),
        padding="same" if layer.same else "valid",
        data_format="channels_last",
      )
      shape = [*_shape_after(shape[:-1], layer.window, layer.strides, layer.pads), shape[-1]]
    elif isinstance(layer, Head):
      if layer.kind == "flatten" and len(shape) > 1:
        add("Flatten", layer.name, data_format="channels_last")
      elif layer.kind == "flatten":
        pass  # already a vector (PCA or selected features): TF.js's Flatten refuses one
      else:
        add("Reshape", f"{layer.name}_positions", target_shape=[-1, shape[-1]])
        kind = "GlobalAveragePooling1D" if layer.kind == "global_avg" else "GlobalMaxPooling1D"
        add(kind, layer.name, data_format="channels_last")
    else:
      add(
        "Dense",
        layer.name,
        units=int(layer.kernel.shape[-1]),
        activation=_TFJS_ACTIVATIONS[layer.activation],
        use_bias=True,
      )
      add_weights(layer.name, ("kernel", layer.kernel), ("bias", layer.bias))
  model_json = {
    "format": "layers-model",
    "generatedBy": "convnet",
    "convertedBy": None,
    "modelTopology": {
      "class_name": "Sequential",
      "config": {"name": "convnet", "layers": topology},
      "keras_version": "tfjs-layers 4.22.0",
      "backend": "tensor_flow.js",
    },
    "weightsManifest": [{"paths": ["weights.bin"], "weights": weights}],
    "userDefinedMetadata": dict(metadata),
  }
  return model_json, b"".join(data)


def _tfjs_padding(layer: Conv, rank: int, shape: list[int], add) -> str:
  """The conv layer's "valid" or "same"; an explicit padding is added as layers before it."""
  if layer.same:
    return "same"
  if not any(low or high for low, high in layer.pads):
    return "valid"
  if rank == 3:
    raise ExportError(
      f"TF.js cannot hold {layer.name}'s padding {list(layer.pads)}: it has no ZeroPadding3D "
      "layer; export to ONNX, or train with model.conv.padding VALID or SAME"
    )
  if rank == 2:
    add("ZeroPadding2D", f"{layer.name}_pad", padding=[list(p) for p in layer.pads])
    return "valid"
  length, channels = shape
  low, high = layer.pads[0]
  add("Reshape", f"{layer.name}_as_2d", target_shape=[length, 1, channels])
  add("ZeroPadding2D", f"{layer.name}_pad", padding=[[low, high], [0, 0]])
  add("Reshape", f"{layer.name}_as_1d", target_shape=[length + low + high, channels])
  return "valid"
