#!/usr/bin/env bash
# Installs what convnet and its tests need, from the repository root:
#   - Debian's espeak-ng, which speaks the spoken-digit dataset (apt-get; with sudo unless root),
#     when it is not already on PATH;
#   - a virtual environment in .venv with the package, editable, and its extras (pip): `test`
#     (pytest, hypothesis, and the `tfds` extra: tensorflow-datasets and TensorFlow) and
#     `tensorboard` (for `tensorboard --logdir=WORKDIR`).
#
#   scripts/install.sh && . .venv/bin/activate
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v espeak-ng >/dev/null; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq espeak-ng >/dev/null
fi

python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e '.[test,tensorboard]'
