"""scripts/install.sh where the machine lacks things: no sudo, no apt-get, no venv, no tools.

Each test runs the script in a copy of the repository with a PATH of stand-ins
only: a `python3` whose `-m venv` makes a .venv whose `python` records what it
is asked to do, and, where a test wants them, `id`, `sudo` and `apt-get` that
say what they are told to.
"""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_PYTHON = """#!/bin/bash
if [[ $1 == -c ]]; then
  [[ $2 == *ensurepip* && -n ${FAKE_NO_VENV:-} ]] && exit 1
  [[ $2 == *platform* ]] && echo 3.11.2
  exit 0
fi
if [[ $1 == -m && $2 == venv ]]; then
  mkdir -p "$3/bin"
  echo "PATH=\\"$PWD/$3/bin:\\$PATH\\"" > "$3/bin/activate"
  printf '#!/bin/bash\\necho "$*" >> "%s/calls"\\n' "$CALLS" > "$3/bin/python"
  chmod +x "$3/bin/python"
  exit 0
fi
exit 2
"""
RECORDER = '#!/bin/bash\necho "{name} $*" >> "$CALLS/calls"\n'
FAKE_ID = '#!/bin/bash\necho "${FAKE_UID:-1000}"\n'
# sudo -n fails as a sudo that wants a password does; else it runs the command.
FAKE_SUDO = '#!/bin/bash\n[[ -n ${SUDO_WANTS_PASSWORD:-} ]] && exit 1\nshift\nexec "$@"\n'


def _run(tmp_path, tools=(), **env):
  """Runs install.sh with a PATH of stand-ins and `tools`; (status, stderr lines, calls)."""
  repo, bin_dir, calls = tmp_path / "repo", tmp_path / "bin", tmp_path / "calls_dir"
  (repo / "scripts").mkdir(parents=True)
  shutil.copy(os.path.join(REPO, "scripts", "install.sh"), repo / "scripts" / "install.sh")
  bin_dir.mkdir()
  calls.mkdir()
  for name in ("bash", "dirname", "mkdir", "chmod", "true"):
    os.symlink(shutil.which(name), bin_dir / name)
  scripts = {"python3": FAKE_PYTHON, "id": FAKE_ID, **{t: None for t in tools}}
  scripts.update({"sudo": FAKE_SUDO} if "sudo" in tools else {})
  for name, text in scripts.items():
    (bin_dir / name).write_text(text or RECORDER.format(name=name))
    (bin_dir / name).chmod(0o755)
  done = subprocess.run(
    ["bash", "scripts/install.sh"],
    cwd=repo,
    env={"PATH": str(bin_dir), "CALLS": str(calls), **env},
    capture_output=True,
    text=True,
    timeout=60,
  )
  recorded = calls / "calls"
  lines = recorded.read_text().splitlines() if recorded.exists() else []
  return done.returncode, done.stderr.strip().splitlines(), lines


MISSING = (
  "install.sh: the Python side is set up in .venv; missing system packages: espeak-ng (the "
  "spoken-digit dataset), nodejs and npm (checking TF.js exports), chromium (the export page's "
  "test); the tests that use them fail until they are installed (Debian and Ubuntu: sudo "
  "apt-get install espeak-ng nodejs npm chromium)"
)
PIP = ["-m pip install --quiet --upgrade pip", "-m pip install --quiet -e .[test,tensorboard]"]


@pytest.mark.parametrize(
  "tools, env",
  [
    ((), {}),  # no apt-get: macOS, Fedora
    (("apt-get",), {}),  # apt-get, not root, no sudo
    (("apt-get", "sudo"), {"SUDO_WANTS_PASSWORD": "1"}),  # sudo that would ask a password
  ],
)
def test_without_apt_it_sets_up_python_and_names_what_is_missing(tmp_path, tools, env):
  status, stderr, calls = _run(tmp_path, tools, **env)
  assert status == 0, stderr
  assert stderr == [MISSING]
  assert calls == PIP  # pip in the new .venv, and no apt-get


def test_ci_asks_for_everything_and_fails_without_it(tmp_path):
  status, stderr, calls = _run(tmp_path, CONVNET_REQUIRE_SYSTEM="1")
  assert status == 1
  assert stderr == [MISSING.replace("install.sh: ", "install.sh: CONVNET_REQUIRE_SYSTEM=1, and ")]
  assert calls == PIP


def test_with_sudo_it_installs_the_missing_packages_with_apt(tmp_path):
  status, stderr, calls = _run(tmp_path, ("apt-get", "sudo"))
  assert status == 0, stderr
  install = "apt-get install -y -qq espeak-ng nodejs npm chromium"
  assert calls == ["apt-get update -qq", install, *PIP]
  assert stderr[0] == "install.sh: apt-get install espeak-ng nodejs npm chromium"


def test_without_a_working_venv_it_stops_first_with_one_line(tmp_path):
  status, stderr, calls = _run(tmp_path, FAKE_NO_VENV="1")
  assert status == 1
  assert stderr == [
    "install.sh: python3 -m venv does not work: install its venv module (Debian and Ubuntu: "
    "sudo apt-get install python3-venv), then rerun scripts/install.sh"
  ]
  assert calls == [] and not (tmp_path / "repo" / ".venv").exists()


def test_an_old_python_is_one_line(tmp_path):
  bin_dir = tmp_path / "bin"
  status, stderr, _ = _run(tmp_path, PYTHON=str(bin_dir / "old-python"))
  assert status == 1
  assert stderr == [
    f"install.sh: no {bin_dir}/old-python on PATH: install Python 3.11 or newer, "
    "or set PYTHON to one"
  ]
