"""The command line: every mistake in flags or config files is one line, `error: ...`, exit 2.

Most tests parse in this process, with each entry point's own `define_flags`
in a fresh `FlagValues`; a few run the programs, to check that each one parses
with `cli.parse_flags` and that a refused checkpoint leaves nothing after its
line.
"""

import os
import subprocess
import sys
import textwrap

import pytest
from absl import flags

from convnet import benchmark, cli, main, model_config, report, summary, sweep, visualize
from convnet.sources import spoken_digits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO)

ENTRY_POINTS = {
  "main": main,
  "sweep": sweep,
  "summary": summary,
  "visualize": visualize,
  "report": report,
  "benchmark": benchmark,
  "spoken_digits": spoken_digits,
}
# The entry points that load a config file, with its flag and a file for it.
CONFIG_FLAGS = {
  "main": ("config", "configs/mnist.py", ["--workdir=/nowhere"]),
  "sweep": ("sweep", "configs/sweeps/stride.py", ["--workdir=/nowhere"]),
  "summary": ("config", "configs/mnist.py", []),
}


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(REPO)  # The config paths are relative, as a user types them.
  # ml_collections loads every config file as the module `<flag>_config`, and reuses it: a
  # file would see the functions of the file loaded before it in this process.
  for name in ("config_config", "sweep_config"):
    monkeypatch.delitem(sys.modules, name, raising=False)


def _parse(module, argv, monkeypatch):
  """`cli.parse_flags` over the module's own flags; returns the parsed `FlagValues`."""
  flag_values = flags.FlagValues()
  module.define_flags(flag_values)
  argv = ["prog", *argv]
  monkeypatch.setattr(sys, "argv", argv)  # ml_collections finds overrides in sys.argv
  cli.parse_flags(argv, flag_values)
  return flag_values


def _refused(module, argv, monkeypatch, capsys) -> str:
  """The one line `cli.parse_flags` prints for `argv`, after checking its form and status."""
  with pytest.raises(SystemExit) as exit_info:
    _parse(module, argv, monkeypatch)
  assert exit_info.value.code == 2
  return _one_error_line(capsys.readouterr().err)


def _one_error_line(stderr: str) -> str:
  assert "Traceback" not in stderr, stderr
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr
  return lines[0]


# ----------------------------------------------------------------------------
# Flags of every entry point


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_an_unknown_flag_is_one_line(name, monkeypatch, capsys):
  line = _refused(ENTRY_POINTS[name], ["--bogus=1"], monkeypatch, capsys)
  assert line.startswith("error: --bogus=1: no such flag")


def test_an_unknown_flag_close_to_a_known_one_is_named(monkeypatch, capsys):
  line = _refused(report, ["--outt=x"], monkeypatch, capsys)
  assert line.startswith("error: --outt=x: no such flag (did you mean --out?)")


@pytest.mark.parametrize(
  "name, argv, message",
  [
    ("main", [], "error: --config and --workdir are required"),
    ("main", ["--config=configs/mnist.py"], "error: --workdir is required"),
    ("sweep", ["--workdir=/nowhere"], "error: --sweep is required"),
    ("summary", [], "error: --config is required"),
    ("visualize", [], "error: --workdir is required"),
  ],
)
def test_a_missing_required_flag_is_one_line(name, argv, message, monkeypatch, capsys):
  assert _refused(ENTRY_POINTS[name], argv, monkeypatch, capsys).startswith(message)


@pytest.mark.parametrize(
  "name, argv, message",
  [
    ("main", ["--num_processes=two"], "error: --num_processes=two: expected an int"),
    ("main", ["--workdir"], "error: --workdir: no value; write --workdir=VALUE"),
    (
      "sweep",
      ["--sweep=configs/sweeps/stride.py", "--workdir=w", "--shard=5"],
      "error: --shard=5: must be i/n with 0 <= i < n",
    ),
    ("visualize", ["--workdir=w", "--num_images=many"], "error: --num_images=many: expected an"),
    ("visualize", ["--workdir=w", "--num_images=-1"], "error: --num_images=-1: -1 is not a"),
    ("benchmark", ["--rounds=x"], "error: --rounds=x: expected an int, like its default 5"),
    ("benchmark", ["--frameworks=jax"], "error: --frameworks=jax: must name some of project"),
    ("benchmark", ["--batch_sizes=a,32"], "error: --batch_sizes=a,32: must be positive ints"),
    ("benchmark", ["--dtypes=float16"], "error: --dtypes=float16: must name some of float32,"),
    ("spoken_digits", ["--name=digits"], "error: --name=digits: value should be one of"),
    ("spoken_digits", ["--figure"], "error: --figure: no value"),
  ],
)
def test_a_bad_flag_value_is_one_line(name, argv, message, monkeypatch, capsys):
  assert _refused(ENTRY_POINTS[name], argv, monkeypatch, capsys).startswith(message)


@pytest.mark.parametrize(
  "argv, message",
  [
    (["prog", "5)"], "error: unexpected argument '5)': quote a value that holds spaces"),
    (["prog", "runs/x"], "error: unexpected argument 'runs/x': flags take the form --name=value"),
  ],
)
def test_a_stray_argument_is_one_line(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.start(argv)
  assert exit_info.value.code == 2
  assert _one_error_line(capsys.readouterr().err).startswith(message)


@pytest.mark.parametrize("argv", [["report"], ["report", "a", "b"]])
def test_report_without_one_sweep_directory_is_one_line(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    report.main(argv)
  assert exit_info.value.code == 2
  line = _one_error_line(capsys.readouterr().err)
  assert line.startswith("error: give one sweep directory: python -m convnet.report SWEEP_DIR")


# ----------------------------------------------------------------------------
# Config files and overrides, for every entry point that loads one


def _write(path, text):
  path.write_text(textwrap.dedent(text))
  return str(path)


@pytest.mark.parametrize("name", CONFIG_FLAGS)
def test_a_missing_config_file_is_one_line_with_the_closest_name(name, monkeypatch, capsys):
  flag, path, rest = CONFIG_FLAGS[name]
  typo = path.replace(".py", "x.py")
  line = _refused(ENTRY_POINTS[name], [f"--{flag}={typo}", *rest], monkeypatch, capsys)
  assert line == f"error: --{flag}={typo}: no such file; did you mean {path}?"


@pytest.mark.parametrize("name", CONFIG_FLAGS)
def test_a_folder_for_a_config_file_is_one_line(name, monkeypatch, capsys):
  flag, _, rest = CONFIG_FLAGS[name]
  line = _refused(ENTRY_POINTS[name], [f"--{flag}=configs", *rest], monkeypatch, capsys)
  assert line.startswith(f"error: --{flag}=configs: is a directory")


BROKEN_FILES = {
  "name_error": (
    """\
    import ml_collections
    def get_config():
      return ml_collections.ConfigDict({"x": undefined_name})
    """,
    "NameError at line 3: name 'undefined_name' is not defined; fix the file",
  ),
  "import_error": (
    "import no_such_module_here\n",
    "ModuleNotFoundError at line 1: No module named 'no_such_module_here'; fix the file",
  ),
  "value_error": (
    "def get_config():\n  return int('ten')\n",
    "ValueError at line 2: invalid literal for int() with base 10: 'ten'; fix the file",
  ),
  "os_error": (
    "def get_config():\n  return open('/nowhere/at/all')\n",
    "FileNotFoundError at line 2: [Errno 2] No such file or directory: '/nowhere/at/all'",
  ),
  "syntax_error": ("def get_config(:\n", "SyntaxError at line 1: "),
  "no_get_config": ("x = 1\n", "the file has no get_config() function"),
  "returns_none": ("def get_config():\n  pass\n", "get_config() returned None"),
}


@pytest.mark.parametrize("name", CONFIG_FLAGS)
@pytest.mark.parametrize("kind", BROKEN_FILES)
def test_a_config_file_that_raises_is_one_line(name, kind, tmp_path, monkeypatch, capsys):
  flag, _, rest = CONFIG_FLAGS[name]
  text, message = BROKEN_FILES[kind]
  path = _write(tmp_path / f"{kind}.py", text)
  line = _refused(ENTRY_POINTS[name], [f"--{flag}={path}", *rest], monkeypatch, capsys)
  assert line.startswith(f"error: --{flag}={path}: {message}")


def test_a_config_file_whose_import_raises_names_the_line_that_raised(
  tmp_path, monkeypatch, capsys
):
  _write(tmp_path / "base.py", "def get_config():\n  return 1 / 0\n")
  path = _write(
    tmp_path / "variant.py", "import base\ndef get_config():\n  return base.get_config()\n"
  )
  monkeypatch.syspath_prepend(str(tmp_path))
  line = _refused(summary, [f"--config={path}"], monkeypatch, capsys)
  assert line.startswith(f"error: --config={path}: ZeroDivisionError at {tmp_path}/base.py, line 2")


@pytest.mark.parametrize("name", CONFIG_FLAGS)
@pytest.mark.parametrize(
  "override, message",
  [
    ("num_epochs=ten", "num_epochs=ten: expected an int, like its default 10"),
    ("optimizer.learning_rate=fast", "optimizer.learning_rate=fast: expected a number"),
    ("data.sorce=embedded", "data.sorce=embedded: the config has no field 'sorce'"),
    ("dat.source=embedded", "dat.source=embedded: the config has no field 'dat'"),
    ("model=3", "model=3: model is a group of fields; set one of them"),
  ],
)
def test_a_bad_override_is_one_line(name, override, message, monkeypatch, capsys):
  flag, path, rest = CONFIG_FLAGS[name]
  argv = [f"--{flag}={path}", *rest, f"--{flag}.{override}"]
  line = _refused(ENTRY_POINTS[name], argv, monkeypatch, capsys)
  assert line.startswith(f"error: --{flag}.{message}")


@pytest.mark.parametrize("name", CONFIG_FLAGS)
def test_an_override_before_its_config_file_is_one_line(name, monkeypatch, capsys):
  flag, path, rest = CONFIG_FLAGS[name]
  argv = [f"--{flag}.seed=1", f"--{flag}={path}", *rest]
  line = _refused(ENTRY_POINTS[name], argv, monkeypatch, capsys)
  assert line.startswith(f"error: --{flag}.seed=1 comes before --{flag}=FILE")


@pytest.mark.parametrize("name", CONFIG_FLAGS)
def test_an_override_without_a_config_file_is_one_line(name, monkeypatch, capsys):
  flag, _, rest = CONFIG_FLAGS[name]
  line = _refused(ENTRY_POINTS[name], [*rest, f"--{flag}.seed=1"], monkeypatch, capsys)
  assert line.startswith(f"error: --{flag}.seed=1: an override of --{flag}, which is not set")


def test_a_get_config_argument_it_does_not_take_is_one_line(monkeypatch, capsys):
  line = _refused(summary, ["--config=configs/mnist.py:wide"], monkeypatch, capsys)
  assert line.startswith("error: --config=configs/mnist.py:wide: TypeError: get_config() takes")


# ----------------------------------------------------------------------------
# Tuples from the command line


@pytest.mark.parametrize("name", CONFIG_FLAGS)
@pytest.mark.parametrize(
  "field, argument, value",
  [
    ("conv.kernel_size", "((5, 5), 3, 3)", ((5, 5), 3, 3)),
    ("conv.kernel_size", "(5, 5)", (5, 5)),
    ("conv.kernel_size", "5", 5),
    ("conv.strides", "(1, 2, 1)", (1, 2, 1)),
    ("conv.padding", "SAME", "SAME"),
    ("conv.padding", "((1, 1), (2, 2))", ((1, 1), (2, 2))),
    ("conv.padding", "('SAME', 'VALID', 'VALID')", ("SAME", "VALID", "VALID")),
    ("conv.activation", "('relu', 'tanh', 'relu')", ("relu", "tanh", "relu")),
    ("conv.features", "(8, 16)", (8, 16)),
    ("conv.features", "8", 8),
    ("pool.type", "max", "max"),
    ("pool.window", "((2, 2), 2, (1, 1))", ((2, 2), 2, (1, 1))),
    ("pool.strides", "(2, 1)", (2, 1)),
    ("pool.padding", "1", 1),
    ("dense_features", "(32, 16)", (32, 16)),
    ("dense_features", "32", 32),
    ("dense_features", "()", ()),
  ],
)
def test_a_model_field_takes_one_value_or_a_tuple(name, field, argument, value, monkeypatch):
  flag, path, rest = CONFIG_FLAGS[name]
  parsed = _parse(
    ENTRY_POINTS[name],
    [f"--{flag}={path}", *rest, f"--{flag}.model.{field}={argument}"],
    monkeypatch,
  )
  node = parsed[flag].value.model
  for part in field.split("."):
    node = node[part]
  assert node == value


def test_a_per_block_tuple_reaches_the_blocks(monkeypatch):
  argv = ["--config=configs/mnist.py", "--config.model.conv.kernel_size=((5, 5), 3, 3)"]
  config = _parse(summary, argv, monkeypatch).config
  blocks = model_config.conv_blocks(config.model, (28, 28, 1))
  assert [b.kernel_size for b in blocks] == [(5, 5), (3, 3), (3, 3)]


def test_a_variant_config_keeps_its_fields_open_to_tuples(monkeypatch):
  argv = ["--config=configs/mnist1d.py", "--config.model.conv.kernel_size=((7,), 3, 3)"]
  assert _parse(summary, argv, monkeypatch).config.model.conv.kernel_size == ((7,), 3, 3)


# ----------------------------------------------------------------------------
# The programs themselves


def _run(*args, timeout=120):
  return subprocess.run(
    [sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
  )


@pytest.fixture(scope="module")
def programs():
  """Each entry point, run with a mistake (and one run without); started together, since each
  spends seconds importing."""
  commands = {
    "main, no flags": ["-m", "convnet.main"],
    "main, missing file": ["-m", "convnet.main", "--config=configs/mnst.py", "--workdir=/nowhere"],
    "main, wrong type": [
      "-m",
      "convnet.main",
      "--config=configs/mnist.py",
      "--workdir=/nowhere",
      "--config.num_epochs=ten",
    ],  # fmt: skip
    "main, unquoted tuple": [
      "-m",
      "convnet.main",
      "--config=configs/mnist.py",
      "--workdir=/nowhere",
      "--config.model.conv.kernel_size=(5,",
      "5)",
    ],  # fmt: skip
    "main, unknown jax flag": ["-m", "convnet.main", "--jax_platform=cpu"],
    "main, jax backend missing": [
      "-m",
      "convnet.main",
      "--config=configs/mnist.py",
      "--workdir=/nowhere",
      "--jax_platforms=tpu",
    ],
    "sweep": [
      "-m",
      "convnet.sweep",
      "--sweep=configs/sweeps/stride.py",
      "--workdir=/nowhere",
      "--sweep.data.sorce=embedded",
    ],  # fmt: skip
    "summary": ["-m", "convnet.summary", "--config=configs/mnist.py", "--config.model=3"],
    "visualize": ["-m", "convnet.visualize", "--workdir=/nowhere", "--num_images=many"],
    "report": ["-m", "convnet.report"],
    "export": ["-m", "convnet.export", "--workdir=/nowhere", "--format=keras", "--out=/nowhere"],
    "benchmark": ["-m", "convnet.benchmark", "--frameworks=jax"],
    "spoken_digits": ["-m", "convnet.sources.spoken_digits", "--name=digits"],
    # Not a mistake: JAX's flags and a tuple override, accepted.
    "summary, jax flags": [
      "-m",
      "convnet.summary",
      "--config=configs/mnist.py",
      "--config.data.source=embedded",
      "--config.model.conv.kernel_size=((5, 5), 3, 3)",
      "--jax_platforms=cpu",
      "--jax_enable_x64=false",
    ],
  }
  started = {
    name: subprocess.Popen(
      [sys.executable, *args],
      cwd=REPO,
      env=ENV,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for name, args in commands.items()
  }
  return {name: (p.communicate(timeout=300), p.returncode) for name, p in started.items()}


HELP_FLAGS = {
  "convnet.main": "workdir",
  "convnet.export": "format",
  "convnet.visualize": "grad_cam_block",
  "convnet.sweep": "[no]vmap_seeds",
  "convnet.summary": "config",
  "convnet.benchmark": "frameworks",
}


@pytest.fixture(scope="module")
def helpshort():
  """Each program's --helpshort output, stdout then stderr; the programs started together."""
  started = {
    module: subprocess.Popen(
      [sys.executable, "-m", module, "--helpshort"],
      cwd=REPO,
      env=ENV,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for module in HELP_FLAGS
  }
  return {module: p.communicate(timeout=300) for module, p in started.items()}


@pytest.mark.parametrize("module", list(HELP_FLAGS))
def test_helpshort_lists_the_programs_own_flags(helpshort, module):
  # absl files flags under the module that defined them (convnet.cli for all of these), and
  # --helpshort lists only the program's: without care it lists none.
  stdout, stderr = helpshort[module]
  assert f"  --{HELP_FLAGS[module]}" in stdout, stdout + stderr  # (absl exits 1 after help)


@pytest.mark.parametrize(
  "name, message",
  [
    ("main, no flags", "error: --config and --workdir are required"),
    (
      "main, missing file",
      "error: --config=configs/mnst.py: no such file; did you mean configs/mnist.py?",
    ),
    ("main, wrong type", "error: --config.num_epochs=ten: expected an int, like its default 10"),
    ("main, unquoted tuple", "error: unexpected argument '5)': quote a value that holds spaces"),
    ("main, unknown jax flag", "error: --jax_platform=cpu: no such flag (did you mean"),
    ("main, jax backend missing", "error: JAX cannot start its backend: Unable to initialize"),
    ("sweep", "error: --sweep.data.sorce=embedded: the config has no field 'sorce'"),
    ("summary", "error: --config.model=3: model is a group of fields"),
    ("visualize", "error: --num_images=many: expected an int"),
    ("report", "error: give one sweep directory"),
    ("export", "error: --format=keras: value should be one of"),
    ("benchmark", "error: --frameworks=jax: must name some of project,flax,torch,keras"),
    ("spoken_digits", "error: --name=digits: value should be one of"),
  ],
)
@pytest.mark.slow
def test_each_program_prints_one_line_for_a_mistake(programs, name, message):
  (stdout, stderr), returncode = programs[name]
  assert returncode == 2, stderr
  assert stdout == ""
  assert _one_error_line(stderr).startswith(message)


def test_jax_flags_and_a_tuple_override_are_accepted(programs):
  (stdout, stderr), returncode = programs["summary, jax flags"]
  assert returncode == 0, stderr
  kernels = [line.split()[2] for line in stdout.splitlines() if line.startswith("conv_")]
  assert kernels == ["16@5x5,", "32@3x3,", "32@3x3,"]


REFUSED_CHECKPOINT = """
import gc, os, sys, tempfile
from convnet.configs import mnist
from convnet import train
from convnet.errors import CheckpointError

config = mnist.get_config()
config.data.source = "embedded"
config.model.name = "dense"
config.model.dense_features = (8,)
config.max_steps = 1
config.steps_per_call = 1
config.eval_batch_size = 128
workdir = tempfile.mkdtemp()
train.train_and_evaluate(config, workdir)
os.remove(os.path.join(workdir, "config.json"))  # so that the checkpoint itself is compared
config.model.dense_features = (4,)
for _ in range(3):
  try:
    train.train_and_evaluate(config, workdir)
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
  gc.collect()
"""


@pytest.mark.slow  # a process that trains, then restores three times
def test_a_refused_checkpoint_leaves_nothing_after_its_line():
  """Orbax's abandoned reads printed "Event loop is closed" tracebacks at exit (2 runs in 4)."""
  done = _run("-c", REFUSED_CHECKPOINT, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = [line for line in done.stderr.splitlines() if not line.startswith(("I", "W"))]
  assert len(lines) == 3, done.stderr[-3000:]
  for line in lines:
    assert line.startswith("error: checkpoint ") and "cannot be restored into this model" in line
    assert "params.dense_0.bias has shape (8,) there, (4,) here" in line


ABANDONED_WORK = """
import asyncio, gc, sys, types
import numpy as np
from convnet import checkpoints
from convnet.errors import WorkdirError

async def read_an_array():
  return 0

def abandon_work():
  read_an_array()  # created, never awaited: reported when collected
  asyncio.Future(loop=asyncio.new_event_loop()).set_exception(OSError("File too large"))
  gc.collect()

class FullDisk:  # an Orbax manager whose save fails as on a full disk
  directory = "run/checkpoints"

  def latest_step(self):
    return None

  def save(self, step, args):
    raise OSError(27, "File too large")


if sys.argv[1] == "fails":
  state = types.SimpleNamespace(step=np.array(3), params={"kernel": np.ones(2)})
  try:
    checkpoints.save(FullDisk(), state, {})
  except WorkdirError as e:
    print(f"error: {e}", file=sys.stderr)
abandon_work()
"""


@pytest.mark.parametrize("call", ["fails", "succeeds"])
def test_work_abandoned_by_a_failed_orbax_call_is_not_reported_after_its_line(call):
  """A coroutine never awaited printed "Enable tracemalloc ..." after a full disk's one line."""
  done = _run("-c", ABANDONED_WORK, call)
  assert done.returncode == 0, done.stderr[-3000:]
  if call == "fails":
    assert done.stderr.startswith("error: cannot write the checkpoint of step 3 in run/checkpoints")
    assert len(done.stderr.splitlines()) == 1, done.stderr
  else:  # nothing failed: the same reports are someone else's bug, and stay visible
    assert "coroutine 'read_an_array' was never awaited" in done.stderr
    assert "Future exception was never retrieved" in done.stderr


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_workdir_that_cannot_be_made_is_one_line_before_anything_runs(config, tmp_path, where):
  from convnet import files, train
  from convnet.errors import WorkdirError

  blocker = tmp_path / "blocker"
  blocker.write_text("a file")
  path = blocker if where == "a file" else blocker / "run"
  with pytest.raises(WorkdirError, match=rf"^--workdir={path}: cannot make this folder"):
    train.train_and_evaluate(config, str(path))
  with pytest.raises(WorkdirError, match=r"^--out=.*: cannot make this folder"):
    files.make_dir(str(path), "--out")
  assert blocker.read_text() == "a file"
