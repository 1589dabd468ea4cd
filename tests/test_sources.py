"""The source registry: its interface, lazy imports, and the docs' worked example, trained."""

import ast
import inspect
import os
import re
import subprocess
import sys
import textwrap

import pytest

from convnet import input_pipeline, sources
from convnet.errors import ConfigError
from tests.conftest import train_briefly

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(REPO, "docs", "data.md")


def _page_example() -> tuple[str, dict[str, str]]:
  """The module and the registry line that docs/data.md's "Adding a data source" shows."""
  with open(PAGE) as f:
    text = f.read()
  section = text.split("## Adding a data source", 1)[1].split("\n#", 1)[0]
  module, line = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
  return module, ast.literal_eval("{" + line.strip() + "}")


@pytest.fixture
def noisy_bars(tmp_path, monkeypatch):
  """The page's example module, written out and registered by its one registry line."""
  code, entry = _page_example()
  ((name, module_name),) = entry.items()
  package, _, file_stem = module_name.rpartition(".")
  assert package == sources.__name__
  (tmp_path / f"{file_stem}.py").write_text(code)
  # The module lives in tmp_path but is imported as convnet.sources.<file_stem>, as it would be.
  monkeypatch.setattr(sources, "__path__", [*sources.__path__, str(tmp_path)])
  monkeypatch.setitem(sources.REGISTRY, name, module_name)
  yield name
  sys.modules.pop(module_name, None)
  if hasattr(sources, file_stem):
    delattr(sources, file_stem)


def test_every_source_has_the_interface():
  for name, module_name in sources.REGISTRY.items():
    module = sources.get(name)
    assert module.__name__ == module_name
    for function in ("load", "input_spec"):
      parameters = list(inspect.signature(getattr(module, function)).parameters)
      assert parameters == ["data_config"], f"{module_name}.{function}{parameters}"
  assert list(input_pipeline.SOURCES) == list(sources.REGISTRY)


def test_sources_are_imported_only_when_used():
  # In a fresh interpreter: this one has imported them all already.
  code = textwrap.dedent(
    """
    import sys
    from convnet import input_pipeline
    loaded = [m for m in sys.modules if m.startswith(("convnet.sources.", "tensorflow"))]
    assert not loaded, loaded
    input_pipeline.input_spec({"source": "embedded"})
    loaded = [m for m in sys.modules if m.startswith(("convnet.sources.", "tensorflow"))]
    assert loaded == ["convnet.sources.embedded"], loaded
    """
  )
  root = REPO
  result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


def test_an_unknown_source_is_one_line_naming_the_field():
  config = {"source": "s3", "validation_fraction": 0.1}
  for call in (input_pipeline.input_spec, lambda c: input_pipeline.load(c, seed=0)):
    with pytest.raises(ConfigError) as error:
      call(config)
    assert str(error.value) == (
      "data.source='s3' is not a source; choose one of "
      "tfds, idx, embedded, mnist1d, spoken_digits, shapes3d, canvas"
    )


def test_check_name_names_the_field_and_the_choices():
  assert sources.check_name("b", ("a", "b"), "letters", "a letter") == "b"
  with pytest.raises(ConfigError) as error:
    sources.check_name("c", ("a", "b"), "letters", "a letter")
  assert (
    str(error.value) == "data.name='c' is not a letter; with data.source='letters' use 'a' or 'b'"
  )


@pytest.mark.slow  # a run on the page's example source (8 s)
def test_the_page_example_source_trains(noisy_bars, tmp_path):
  from convnet.configs import mnist

  config = mnist.get_config()
  config.data.source = noisy_bars
  assert input_pipeline.input_spec(config.data) == ((28, 28, 1), 2)
  dataset = input_pipeline.load(config.data, seed=0)
  assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (850, 150, 200)
  assert dataset.class_names == ("across", "down")
  result = train_briefly(config, tmp_path / "run")
  # Two classes: a model that had not learnt the bars would be right about half the time.
  assert result["test_accuracy"] > 0.8
