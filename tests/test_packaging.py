"""The installed package: the docs' research script from any folder, the wheel, and the extras.

The default install has no TensorFlow and no tensorflow-datasets (they are the
`tfds` extra); the last tests hide them from a subprocess to check what works
without them, and that what does not says in one line which extra to install.
"""

import os
import re
import subprocess
import sys
import textwrap
import zipfile

import pytest

from tests.conftest import PIP, copy_package_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL_TFDS = "pip install 'convnet[tfds]'"  # what a message without the `tfds` extra says to run

# Every config and sweep, imported and built, where `configs/` is not on the path.
IMPORT_EVERY_CONFIG = textwrap.dedent(
  """
  import importlib, importlib.util, pkgutil
  import convnet.configs, convnet.configs.sweeps
  assert importlib.util.find_spec("configs") is None, "convnet took the name 'configs'"
  names = []
  for package in (convnet.configs, convnet.configs.sweeps):
    for module in pkgutil.iter_modules(package.__path__):
      if not module.ispkg and not module.name.startswith("_"):  # __main__ lists them
        config = importlib.import_module(f"{package.__name__}.{module.name}").get_config()
        assert config, module.name
        names.append(f"{package.__name__}.{module.name}")
  print(convnet.configs.__file__)
  print(" ".join(sorted(names)))
  """
)


def _outside_env(**extra):
  """The environment of a process that must find convnet as installed, not from the repository."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return {**env, "CUDA_VISIBLE_DEVICES": "", **extra}


def _repo_modules(folder: str, package: str) -> set[str]:
  """The wheel paths of the .py files in the repository's `folder`, installed as `package`."""
  paths = set()
  for root, dirs, files in os.walk(os.path.join(REPO, folder)):
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    relative = os.path.relpath(root, os.path.join(REPO, folder))
    for name in files:
      if name.endswith(".py"):
        parts = [*package.split("."), *([] if relative == "." else relative.split(os.sep)), name]
        paths.add("/".join(parts))
  return paths


def _research_blocks() -> list[str]:
  """The Python blocks of docs/training.md's "From a research script" section, in order."""
  with open(os.path.join(REPO, "docs", "training.md")) as f:
    text = f.read()
  section = text.split("## From a research script", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def _research_script() -> str:
  """docs/training.md's "From a research script" example: that section's first Python block."""
  return _research_blocks()[0]


def _run_script(folder, name: str, text: str) -> list[str]:
  """Writes `text` as `folder/name`, runs it there with the repository off the path; its lines."""
  (folder / name).write_text(text)
  result = subprocess.run(
    [sys.executable, name], cwd=folder, capture_output=True, text=True, env=_outside_env()
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout.strip().splitlines()


@pytest.mark.slow  # about 20 s on 2 vCPUs, most of it compiling the 5x5 SAME convnet's steps
def test_the_research_script_runs_from_any_folder(tmp_path):
  script = _research_script()
  # The page trains for the config's 10 epochs; here 16 steps, set just before the run, keep the
  # test short (compiling the steps is most of it). Nothing else of the script changes.
  anchor = "result = train.train_and_evaluate("
  assert anchor in script, "the docs' research script no longer calls train_and_evaluate"
  script = script.replace(anchor, f"config.num_epochs = 1\nconfig.max_steps = 16\n{anchor}", 1)
  check = textwrap.dedent(
    """
    import importlib.util
    assert importlib.util.find_spec("configs") is None, "convnet took the name 'configs'"
    print("model", model.__class__.__name__, data.input_shape, data.num_classes)
    """
  )
  accuracies, model_line = _run_script(tmp_path, "research.py", script + check)[-2:]
  test_accuracy, best_validation_accuracy = map(float, accuracies.split())
  # Chance is 0.1; 16 steps reach about 0.6.
  assert 0.3 < test_accuracy <= 1.0 and 0.3 < best_validation_accuracy <= 1.0, accuracies
  assert model_line == "model ConvNet (28, 28, 1) 10"
  assert (tmp_path / "runs" / "k5" / "metrics.jsonl").exists()

  # The section's NNX block, as written, on the run the first block left in runs/k5.
  nnx_block = _research_blocks()[1]
  assert "models.to_nnx(" in nnx_block
  check = "\nprint('logits', tuple(logits.shape), float(abs(logits).sum()) > 0)\n"
  assert _run_script(tmp_path, "nnx_script.py", nnx_block + check)[-1] == "logits (8, 10) True"


@pytest.mark.slow  # builds the wheel (5 s)
def test_the_wheel_holds_the_configs_the_digits_and_the_page(tmp_path):
  # Built from a copy, offline, with the build tools already installed (the `test` extra): an
  # in-tree build would leave build/ in the repository, whose stale files end up in later wheels.
  (tmp_path / "source").mkdir()
  source = copy_package_source(tmp_path / "source")
  build = subprocess.run(
    [*PIP, "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", tmp_path, source],
    capture_output=True,
    text=True,
  )
  assert build.returncode == 0, build.stderr[-3000:]
  (wheel,) = tmp_path.glob("convnet-*.whl")
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
  expected = _repo_modules("convnet", "convnet") | _repo_modules("configs", "convnet.configs")
  assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"
  assert {"convnet/sources/data/mnist_5k.csv.gz", "convnet/sources/data/NOTICE"} <= names
  static = {f"convnet/static/{name}" for name in os.listdir(os.path.join(REPO, "convnet/static"))}
  assert static <= names, f"the export page's files missing: {sorted(static - names)}"
  assert not [n for n in names if n.startswith("configs/")], "a top-level configs package"

  site = tmp_path / "site"
  install = subprocess.run(
    [*PIP, "install", "--no-deps", "--no-index", "--target", site, wheel],
    capture_output=True,
    text=True,
  )
  assert install.returncode == 0, install.stderr[-3000:]
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  env = _outside_env(PYTHONPATH=str(site))
  imported = subprocess.run(
    [sys.executable, "-c", IMPORT_EVERY_CONFIG],
    cwd=outside,
    capture_output=True,
    text=True,
    env=env,
  )
  assert imported.returncode == 0, imported.stderr[-3000:]
  location, modules = imported.stdout.strip().splitlines()[-2:]
  assert location.startswith(str(site)), location
  assert "convnet.configs.mnist" in modules.split()
  assert "convnet.configs.sweeps.kernel_size" in modules.split()

  # The digits from the wheel, and a config file given by its installed path.
  digits = subprocess.run(
    [
      sys.executable,
      "-c",
      "from convnet.sources import embedded; d = embedded.load_embedded(); "
      "print(embedded.embedded_path(), len(d.train_labels), len(d.test_labels))",
    ],
    cwd=outside,
    capture_output=True,
    text=True,
    env=env,
  )
  assert digits.returncode == 0, digits.stderr[-3000:]
  path, train_count, test_count = digits.stdout.split()
  assert path.startswith(str(site)) and (train_count, test_count) == ("4000", "1000")
  config_file = site / "convnet" / "configs" / "dense.py"
  summary = subprocess.run(
    [sys.executable, "-m", "convnet.summary", f"--config={config_file}"],
    cwd=outside,
    capture_output=True,
    text=True,
    env=env,
  )
  assert summary.returncode == 0, summary.stderr[-3000:]
  assert "33,400" in summary.stdout, summary.stdout


# Makes the named top-level modules impossible to find, as if they were not installed: `import`
# raises ModuleNotFoundError and `importlib.util.find_spec` returns None, as both do then.
HIDE_MODULES = textwrap.dedent(
  """
  import sys
  from importlib.machinery import PathFinder

  class NotInstalled(PathFinder):
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
      if fullname.partition(".")[0] in HIDDEN:
        return None
      return super().find_spec(fullname, path, target)

  sys.meta_path[sys.meta_path.index(PathFinder)] = NotInstalled
  """
)

TFDS_PATHS = textwrap.dedent(
  """
  from convnet import input_pipeline
  from convnet.errors import DataError
  from convnet.sources import tfds as source

  def config(data_dir, **fields):
    return {"source": "tfds", "name": "mnist", "tfds_data_dir": data_dir, "tfds_manual_dir": "",
            "train_split": "train", "test_split": "test", "validation_fraction": 0.1, **fields}

  def attempt(label, call):
    try:
      print(label, "->", call())
    except DataError as e:
      print(label, "->", e)

  prepared, empty, idx_dir = sys.argv[1:4]
  attempt("spec", lambda: input_pipeline.input_spec(config(prepared)))
  attempt("read", lambda: source.load(config(prepared)).train_images.shape)
  attempt("prepare", lambda: source.load(config(empty, tfds_manual_dir=idx_dir)))
  source.network_reachable = lambda *args, **kwargs: "no network: test"
  attempt("offline", lambda: source.load(config(empty, name="kmnist")).name)
  source.network_reachable = lambda *args, **kwargs: None
  attempt("download", lambda: source.load(config(empty, name="kmnist")).name)
  print("tensorflow imported:", "tensorflow" in sys.modules)
  """
)


def _run_without(hidden: tuple[str, ...], *args) -> dict[str, str]:
  """TFDS_PATHS in a process where `hidden` are not installed: what each path printed."""
  code = f"HIDDEN = {hidden!r}\n{HIDE_MODULES}\n{TFDS_PATHS}"
  result = subprocess.run(
    [sys.executable, "-c", code, *map(str, args)],
    capture_output=True,
    text=True,
    env=_outside_env(),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  outcomes = dict(line.split(" -> ", 1) for line in lines if " -> " in line)
  outcomes["tensorflow imported"] = lines[-1]
  return outcomes


def test_tfds_reads_a_prepared_dataset_without_tensorflow(tmp_path, idx_dir):
  pytest.importorskip("tensorflow")  # to prepare the dataset, in this process
  from convnet.sources import tfds as tfds_source

  prepared = tmp_path / "prepared"
  tfds_source.prepare_tfds_from_idx("mnist", str(idx_dir), str(prepared))
  outcomes = _run_without(("tensorflow",), prepared, tmp_path / "empty", idx_dir)
  assert outcomes.pop("spec") == "((28, 28, 1), 10)"
  assert outcomes.pop("read") == "(300, 28, 28, 1)"
  assert outcomes.pop("offline").startswith("TFDS could not download 'kmnist' (no network: test)")
  needs = "needs the Python module 'tensorflow', which is not installed: " + INSTALL_TFDS
  assert outcomes == {
    "prepare": f"Preparing TFDS 'mnist' from IDX files {needs}",
    "download": f"Downloading TFDS 'kmnist' {needs}",
    "tensorflow imported": "tensorflow imported: False",
  }


def test_without_tensorflow_datasets_the_tfds_source_names_the_extra(tmp_path):
  outcomes = _run_without(("tensorflow", "tensorflow_datasets"), tmp_path, tmp_path, tmp_path)
  message = (
    "data.source='tfds' needs the Python module 'tensorflow_datasets', which is not installed: "
    + INSTALL_TFDS
  )
  assert outcomes == {
    "spec": message,
    "read": message,
    "prepare": message,
    "offline": message,
    "download": message,
    "tensorflow imported": "tensorflow imported: False",
  }
