#!/usr/bin/env bash
# The developer and test set-up, from the repository root (a user needs only `pip install .`):
#   - a virtual environment in .venv with the package, editable, and its extras (pip): `test`
#     (pytest, hypothesis, nbmake, the `tfds` extra: tensorflow-datasets and TensorFlow, the
#     `export` extra: onnx, onnxruntime and Playwright, and the `cluster` and `ray` extras:
#     submitit and Ray) and `tensorboard`;
#   - @tensorflow/tfjs in node_modules/ (npm ci, from package.json and package-lock.json), when
#     npm is there;
#   - from Debian (apt-get, as root or with sudo that needs no password), each only when it is
#     not already on PATH: espeak-ng, which speaks the spoken-digit dataset; Node.js and npm,
#     which check TF.js exports; chromium, the browser the export page's test drives.
#
#   scripts/install.sh && . .venv/bin/activate
#
# Without apt-get or sudo (macOS, Fedora, a cluster's login node), it still sets up the Python
# side and ends with one line naming the system packages still missing and what each is for;
# it exits 0 then, unless CONVNET_REQUIRE_SYSTEM=1 (as in CI) asks for everything. PYTHON names
# the interpreter (default python3; 3.11 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

say() { echo "install.sh: $*" >&2; }

# What is missing from PATH, a line each: "Debian packages|what they are for".
missing_tools() {
  command -v espeak-ng >/dev/null || echo "espeak-ng|the spoken-digit dataset"
  local node=() # Debian's nodejs and npm, both needed
  command -v node >/dev/null || node+=(nodejs)
  command -v npm >/dev/null || node+=(npm)
  ((${#node[@]} == 0)) || echo "${node[*]}|checking TF.js exports"
  if [[ -z ${CONVNET_CHROMIUM:-} ]] && ! command -v chromium >/dev/null \
    && ! command -v chromium-browser >/dev/null && ! command -v google-chrome >/dev/null; then
    echo "chromium|the export page's test"
  fi
}

# How to run apt-get here: as root, or through sudo that asks no password; else nothing.
apt=()
if command -v apt-get >/dev/null; then
  if [[ $(id -u) -eq 0 ]]; then
    apt=(apt-get)
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    apt=(sudo -n apt-get)
  fi
fi

venv_works() { "$python" -c 'import venv, ensurepip' 2>/dev/null; }

# Python first: without a working `python3 -m venv` nothing else is of use.
if ! command -v "$python" >/dev/null; then
  say "no $python on PATH: install Python 3.11 or newer, or set PYTHON to one"
  exit 1
fi
if ! "$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  say "$python is Python $("$python" -c 'import platform; print(platform.python_version())'):" \
    "convnet needs 3.11 or newer; install it, or set PYTHON to one (PYTHON=python3.12 $0)"
  exit 1
fi
packages=()
if ! venv_works; then
  if ((${#apt[@]} == 0)); then
    say "$python -m venv does not work: install its venv module (Debian and Ubuntu:" \
      "sudo apt-get install python3-venv), then rerun $0"
    exit 1
  fi
  packages+=(python3-venv)
fi

# The system packages, where apt-get can install them; a failure leaves them missing, no more.
while IFS="|" read -r names _; do packages+=($names); done < <(missing_tools) # names split
if ((${#packages[@]} > 0 && ${#apt[@]} > 0)); then
  say "apt-get install ${packages[*]}"
  if ! { "${apt[@]}" update -qq && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq \
    "${packages[@]}" >/dev/null; }; then
    say "apt-get could not install ${packages[*]}"
  fi
fi
if ! venv_works; then
  say "$python -m venv does not work, and apt-get could not install python3-venv"
  exit 1
fi

"$python" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e '.[test,tensorboard]'
if command -v npm >/dev/null && command -v node >/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error
fi

# One line for what is still missing: what each is for, and how to install it.
missing=() uses=""
while IFS="|" read -r names use; do
  missing+=($names)
  uses+="${uses:+, }${names// / and } ($use)"
done < <(missing_tools)
if ((${#missing[@]} == 0)); then
  say "done; activate the environment with: . .venv/bin/activate"
  exit 0
fi
line="the Python side is set up in .venv; missing system packages: $uses; the tests that use"
line+=" them fail until they are installed (Debian and Ubuntu: sudo apt-get install ${missing[*]})"
if [[ ${CONVNET_REQUIRE_SYSTEM:-0} == 1 ]]; then
  say "CONVNET_REQUIRE_SYSTEM=1, and $line"
  exit 1
fi
say "$line"
