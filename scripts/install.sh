#!/usr/bin/env bash
# Installs what convnet and its tests need, from the repository root:
#   - from Debian (apt-get; with sudo unless root), each only when it is not already on PATH:
#     espeak-ng, which speaks the spoken-digit dataset; Node.js and npm, which check TF.js
#     exports; chromium, the browser the export page's test drives;
#   - a virtual environment in .venv with the package, editable, and its extras (pip): `test`
#     (pytest, hypothesis, the `tfds` extra: tensorflow-datasets and TensorFlow, and the `export`
#     extra: onnx, onnxruntime and Playwright) and `tensorboard` (for `tensorboard --logdir=DIR`);
#   - @tensorflow/tfjs in node_modules/ (npm ci, from package.json and package-lock.json).
#
#   scripts/install.sh && . .venv/bin/activate
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e '.[test,tensorboard]'
npm ci --no-audit --no-fund --loglevel=error
