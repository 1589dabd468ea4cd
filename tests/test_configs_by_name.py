"""Configs by name: `--config=mnist`, `--sweep=kernel_size`, from any folder, and their listing.

Most tests parse in this process, as tests/test_cli.py does; the last one
installs the package with pip, outside the repository, and trains from
another folder with a config named, not a path.
"""

import importlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from convnet import cli, configs, main, summary, sweep
from tests.conftest import PIP, copy_package_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = {"main": main, "sweep": sweep, "summary": summary}
OTHER_FLAGS = {"main": ["--workdir=/nowhere"], "sweep": ["--workdir=/nowhere"], "summary": []}


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path, monkeypatch):
  """Runs each test in an empty folder: no configs/ beside it, as after `pip install`."""
  monkeypatch.chdir(tmp_path)
  for name in ("config_config", "sweep_config"):  # ml_collections reuses a loaded file's module
    monkeypatch.delitem(sys.modules, name, raising=False)


def _parse(program: str, argv: list[str], monkeypatch) -> flags.FlagValues:
  flag_values = flags.FlagValues()
  PROGRAMS[program].define_flags(flag_values)
  argv = ["prog", *argv, *OTHER_FLAGS[program]]
  monkeypatch.setattr(sys, "argv", argv)  # ml_collections finds overrides in sys.argv
  cli.parse_flags(argv, flag_values)
  return flag_values


def _refused(program: str, argv: list[str], monkeypatch, capsys) -> str:
  with pytest.raises(SystemExit) as exit_info:
    _parse(program, argv, monkeypatch)
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  return lines[0]


def _installed(module: str) -> str:
  return importlib.util.find_spec(module).origin


@pytest.mark.parametrize(
  "program, flag, argument, module",
  [
    ("main", "config", "mnist", "convnet.configs.mnist"),
    ("main", "config", "convnet.configs.dense", "convnet.configs.dense"),
    ("summary", "config", "spoken_digits", "convnet.configs.spoken_digits"),
    ("summary", "config", "sweeps.stride", "convnet.configs.sweeps.stride"),
    ("sweep", "sweep", "kernel_size", "convnet.configs.sweeps.kernel_size"),
    ("sweep", "sweep", "convnet.configs.sweeps.padding", "convnet.configs.sweeps.padding"),
  ],
)
def test_a_config_is_found_by_its_name(program, flag, argument, module, monkeypatch):
  parsed = _parse(program, [f"--{flag}={argument}"], monkeypatch)
  assert parsed[flag].config_filename == _installed(module)
  assert parsed[flag].value.to_dict() == importlib.import_module(module).get_config().to_dict()


def test_a_name_takes_overrides_and_a_separate_value(monkeypatch):
  argv = ["--config", "dense", "--config.num_epochs=3", "--config.model.dense_features=(10,)"]
  config = _parse("main", argv, monkeypatch).config
  assert config.model.name == "dense" and config.num_epochs == 3
  assert tuple(config.model.dense_features) == (10,)
  config = _parse("sweep", ["--sweep=stride", "--sweep.seed=4"], monkeypatch).sweep
  assert config.seed == 4


def test_the_text_after_a_colon_goes_to_get_config(monkeypatch, capsys):
  # The installed configs take no argument: get_config("wide") must refuse it, naming the flag
  # as typed.
  line = _refused("summary", ["--config=mnist:wide"], monkeypatch, capsys)
  assert line.startswith("error: --config=mnist:wide: TypeError: get_config() takes 0")


def test_a_path_still_works_and_wins_over_a_name(tmp_path, monkeypatch):
  config = _parse("main", [f"--config={REPO}/configs/dense.py"], monkeypatch).config
  assert config.model.name == "dense"
  (tmp_path / "mnist").write_text(
    "import ml_collections\n"
    "def get_config():\n"
    "  return ml_collections.ConfigDict({'source': 'a file called mnist'})\n"
  )
  parsed = _parse("summary", ["--config=mnist"], monkeypatch)
  assert parsed.config.source == "a file called mnist"
  assert parsed["config"].config_filename == "mnist"


@pytest.mark.parametrize(
  "program, argument, close, kind",
  [
    ("main", "--config=mnsit", "mnist", "configs"),
    ("summary", "--config=convnet.configs.denze", "dense", "configs"),
    ("sweep", "--sweep=kernel_sise", "kernel_size", "sweeps"),
    ("sweep", "--sweep=mnist", None, "sweeps"),
  ],
)
def test_a_misspelt_name_is_one_line_that_lists_the_names(
  program, argument, close, kind, monkeypatch, capsys
):
  line = _refused(program, [argument], monkeypatch, capsys)
  hint = f" (did you mean {close}?)" if close else ""
  package = configs.SWEEPS if kind == "sweeps" else configs.CONFIGS
  names = ", ".join(configs.names(package))
  assert line == (
    f"error: {argument}: no such file, nor an installed {kind[:-1]} of that name{hint}; "
    f"the installed {kind}: {names} (python -m convnet.configs describes them)"
  )


def test_a_missing_path_lists_the_names_too(monkeypatch, capsys):
  line = _refused("main", ["--config=configs/mnist.py"], monkeypatch, capsys)
  assert line.startswith("error: --config=configs/mnist.py: no such file; give a file, or name")
  assert ": dense, fashion_mnist, mnist, mnist1d," in line


def test_the_names_are_the_files_of_configs_and_its_sweeps():
  def files(folder):
    names = os.listdir(os.path.join(REPO, folder))
    return sorted(n[:-3] for n in names if n.endswith(".py") and not n.startswith("_"))

  assert configs.names() == files("configs")
  assert configs.names(configs.SWEEPS) == files(os.path.join("configs", "sweeps"))
  assert "mnist" in configs.names() and "kernel_size" in configs.names(configs.SWEEPS)
  assert configs.find("sweeps") is None and configs.find("__main__") is None
  assert configs.find("mnist", configs.SWEEPS) is None and configs.find("no.such.name") is None


def test_the_listing_gives_every_config_and_sweep_with_its_docstring():
  listed = subprocess.run(
    [sys.executable, "-m", "convnet.configs"], capture_output=True, text=True, check=True
  ).stdout
  lines = listed.splitlines()
  configs_at = lines.index("Configs: python -m convnet.main --config=NAME --workdir=DIR")
  sweeps_at = lines.index("Sweeps: python -m convnet.sweep --sweep=NAME --workdir=DIR")
  for package, rows in (
    (configs.CONFIGS, lines[configs_at:sweeps_at]),
    (configs.SWEEPS, lines[sweeps_at:]),
  ):
    names = configs.names(package)
    described = {row.split()[0]: row.split(None, 1)[1] for row in rows[1:] if row.strip()}
    assert list(described) == names
    for name in names:
      first_line = importlib.import_module(f"{package}.{name}").__doc__.strip().splitlines()[0]
      assert described[name] == first_line, name
      assert first_line.endswith(".") and len(first_line) <= 100, (name, first_line)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  """The package as `pip install .` installs it (no dependencies: the venv has them), in a folder.

  Installed from a copy, offline, with the build tools already there (the `test` extra), so that
  no build/ folder is left in the repository.
  """
  root = tmp_path_factory.mktemp("installed")
  (root / "source").mkdir()
  source = copy_package_source(root / "source")
  options = ["--no-deps", "--no-index", "--no-build-isolation", "--target", root / "site"]
  installed = subprocess.run(
    [*PIP, "install", *options, "."], cwd=source, capture_output=True, text=True
  )
  assert installed.returncode == 0, installed.stderr[-3000:]
  return root / "site"


@pytest.mark.slow  # 25 to 50 s on 2 vCPUs: pip, then the quick start's ten epochs
def test_an_installed_config_trains_by_name_from_any_folder(site, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(PYTHONPATH=str(site), CUDA_VISIBLE_DEVICES="")
  where = subprocess.run(
    [sys.executable, "-c", "import convnet.configs; print(convnet.configs.__file__)"],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    env=env,
  )
  assert where.stdout.startswith(str(site)), where.stdout + where.stderr
  command = "python -m convnet.main --config=mnist --workdir=DIR --config.data.source=embedded"
  argv = [sys.executable, *command.replace("DIR", "run").split()[1:]]
  done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Unable to initialize backend" not in done.stderr
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  last = records[-1]
  # The quick start reaches about 0.94 after its 10 epochs; chance is 0.1.
  assert last["epoch"] == 10 and last["test_accuracy"] > 0.85, last


@pytest.mark.parametrize(
  "program, argv, expected",
  [
    # A config field given as a flag of its own: the hint is the override, not a lookalike flag.
    ("main", ["--config=mnist", "--num_epochs=1"], "(did you mean --config.num_epochs?)"),
    (
      "main",
      ["--config=mnist", "--model.conv.kernel_size=5"],
      "(did you mean --config.model.conv.kernel_size?)",
    ),
    ("sweep", ["--sweep=stride", "--num_epochs=2"], "(did you mean --sweep.num_epochs?)"),
    # A misspelt name is named for what it is: a sweep, or a config.
    ("sweep", ["--sweep=kernel_sise"], "nor an installed sweep of that name (did you mean"),
    ("main", ["--config=mnsit"], "nor an installed config of that name (did you mean mnist?)"),
  ],
)
def test_a_slip_gets_the_hint_that_fixes_it(program, argv, expected, monkeypatch, capsys):
  assert expected in _refused(program, argv, monkeypatch, capsys)


def test_a_flag_that_is_no_config_field_keeps_absls_suggestion(monkeypatch, capsys):
  line = _refused("main", ["--config=mnist", "--num_procesess=2"], monkeypatch, capsys)
  assert "(did you mean --num_processes?)" in line
