"""The model registry, and the "Adding a model" page's example: written, trained, summarised and
exported as the page shows."""

import ast
import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
import textwrap

import jax
import pytest
from absl import flags

from convnet import cli, config_checks, models, trained, web
from convnet.configs import mnist
from convnet.errors import ConfigError
from convnet.models import layers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(REPO, "docs", "adding_a_model.md")


def _blocks(language: str) -> list[str]:
  """The page's code blocks in `language` ("" for output), as written."""
  with open(PAGE) as f:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", f.read(), re.DOTALL | re.MULTILINE)
  return [text for kind, text in blocks if kind == language]


def _commands() -> list[list[str]]:
  """The page's commands, each split as a shell would (a trailing backslash continues a line)."""
  (block,) = _blocks("sh")
  return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
  """The page's model module, written out and registered by its one registry line."""
  module, line = _blocks("python")
  ((name, module_name),) = ast.literal_eval("{" + line.strip() + "}").items()
  package, _, file_stem = module_name.rpartition(".")
  assert package == models.__name__
  folder = tmp_path / "models"
  folder.mkdir()
  (folder / f"{file_stem}.py").write_text(module)
  # The module lives in tmp_path but is imported as convnet.models.<file_stem>, as it would be.
  monkeypatch.setattr(models, "__path__", [*models.__path__, str(folder)])
  monkeypatch.setitem(models.REGISTRY, name, module_name)
  yield name
  sys.modules.pop(module_name, None)
  if file_stem in vars(models):
    delattr(models, file_stem)


def _run(command: list[str], monkeypatch, *extra: str) -> None:
  """Runs `python -m MODULE FLAGS...` in this process, where the page's model is registered.

  The flags go through the module's own definitions and parser, and its `main` runs.
  """
  assert command[:2] == ["python", "-m"], command
  module = importlib.import_module(command[2])
  flag_values = flags.FlagValues()
  module.define_flags(flag_values)
  argv = [command[2], *command[3:], *extra]
  monkeypatch.setattr(sys, "argv", argv)  # ml_collections finds --config.x overrides in sys.argv
  rest = cli.parse_flags(argv, flag_values)
  monkeypatch.setattr(module, "FLAGS", flag_values)
  module.main(rest)


@pytest.mark.slow
def test_the_pages_model_trains_summarises_and_exports_as_written(
  tiny, tmp_path, monkeypatch, capsys
):
  train, summary, *exports = _commands()
  assert f"--config.model.name={tiny}" in train and f"--config.model.name={tiny}" in summary
  # The commands run as written from a folder with the repository's configs, runs/ made there.
  (tmp_path / "configs").symlink_to(os.path.join(REPO, "configs"))
  monkeypatch.chdir(tmp_path)
  _run(train, monkeypatch, "--config.num_epochs=1", "--config.max_steps=20")  # a few steps
  run = trained.load("runs/tiny")
  assert run.step == 20 and run.config.model.name == tiny
  assert [type(layer) for layer in run.model.layers] == [layers.Conv, layers.Head, layers.Dense]
  capsys.readouterr()

  _run(summary, monkeypatch)
  printed = capsys.readouterr().out
  (table,) = _blocks("")
  assert printed.startswith(table)  # the page's table, line for line
  assert "models.count_params of the parameters model.init makes: 330 (table: 330, equal)" in (
    printed
  )

  formats = [next(a for a in command if a.startswith("--format=")) for command in exports]
  assert formats == ["--format=onnx", "--format=tfjs"]
  for command in exports:
    _run(command, monkeypatch)
  printed = capsys.readouterr().out
  assert "onnxruntime: argmax equal to JAX's on 1,000 of 1,000 test images" in printed
  if web.node_runtime() is not None:
    assert "TF.js in Node.js: argmax equal to JAX's on 1,000 of 1,000 test images" in printed
  else:
    assert "Not checked in Node.js" in printed
  assert {"model.json", "weights.bin"} <= set(os.listdir("runs/tiny/tfjs"))


def test_a_model_without_flat_inputs_is_refused_reduced_features(tiny):
  config = mnist.get_config()
  config.model.name = tiny
  config.data.source = "embedded"
  config.data.features = "pca"
  config.data.num_features = 20
  with pytest.raises(ConfigError) as error:
    config_checks.validate(config)
  assert str(error.value) == (
    "model.name='tiny': name must be 'dense' with data.features='pca', which gives flat vectors"
  )


def test_the_pages_model_checks_its_field(tiny):
  config = mnist.get_config().model
  config.name = tiny
  config.conv.activation = "softsign"
  with pytest.raises(ConfigError, match=r"^model.conv.activation='softsign' is not one of: relu"):
    models.create_model(config, (28, 28, 1), 10)


def test_every_model_has_the_interface_and_lists_the_layers_it_computes():
  for name, module_name in models.REGISTRY.items():
    module = models.get(name)
    assert module.__name__ == module_name
    parameters = list(inspect.signature(module.create).parameters)
    assert parameters == ["model_config", "input_shape", "num_classes"], module_name
    config = mnist.get_config().model
    config.name = name
    model = models.create_model(config, (28, 28, 1), 10)
    params = jax.eval_shape(model.init, jax.random.key(0), jax.numpy.zeros((1, 28, 28, 1)))
    # Every layer with weights is the submodule of its name, and nothing else has parameters.
    weighted = [
      layer.name for layer in model.layers if isinstance(layer, layers.Conv | layers.Dense)
    ]
    assert sorted(params["params"]) == sorted(weighted), name
    assert model.layers[-1].features == 10 and isinstance(model.layers[-1], layers.Dense)
  assert models.BASELINE in models.REGISTRY


def test_an_unknown_model_is_one_line_naming_the_field():
  config = mnist.get_config().model
  config.name = "resnet"
  with pytest.raises(ConfigError) as error:
    models.create_model(config, (28, 28, 1), 10)
  assert str(error.value) == "model.name='resnet' is not a model; choose one of convnet, dense"


def test_models_are_imported_only_when_used():
  # In a fresh interpreter: this one has imported them all already.
  code = textwrap.dedent(
    """
    import sys
    from convnet import models, report
    loaded = [m for m in sys.modules if m.startswith(("convnet.models.", "flax", "jax"))]
    assert not loaded, loaded
    config = {"name": "dense", "dense_features": (8,), "dense_activation": "relu"}
    models.create_model(config, (4, 4, 1), 3)
    loaded = [m for m in sys.modules if m.startswith("convnet.models.")]
    assert sorted(loaded) == ["convnet.models.dense", "convnet.models.layers"], loaded
    """
  )
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
