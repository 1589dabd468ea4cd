#!/usr/bin/env bash
# Reproduces the single runs of docs/findings.md: the book's convnet and its dense baseline on the
# full Fashion-MNIST (IDX files) and on the embedded MNIST digits; MNIST-1D's CNN and MLP,
# plain and shuffled; spoken digits (clean and noisy) and Shapes3D, each convnet against its
# dense baseline.
#
#   scripts/results.sh [RUNS_DIR]
#
# FASHION_MNIST_DIR points at the four Fashion-MNIST IDX files (Debian's package
# dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist). The spoken digits
# are generated with espeak-ng on first use and cached (see convnet/sources/spoken_digits.py).
set -euo pipefail
runs=${1:-runs}
fashion=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
cd "$(dirname "$0")/.."

run() {
  local name=$1
  shift
  python -m convnet.main --workdir="$runs/$name" "$@"
  python - "$runs/$name" <<'PY'
import json, sys
records = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
last = [r for r in records if r["kind"] == "epoch"][-1]
print(f"{sys.argv[1]}: epochs={last['epoch']} test_accuracy={last['test_accuracy']:.4f} "
      f"wall_time_s={last['wall_time_s']:.0f}")
PY
}

run fashion_convnet --config=configs/fashion_mnist.py \
  --config.data.source=idx --config.data.idx_dir="$fashion"
run fashion_dense --config=configs/dense.py \
  --config.data.source=idx --config.data.idx_dir="$fashion"
run mnist_5k_convnet --config=configs/mnist.py --config.data.source=embedded
run mnist_5k_dense --config=configs/dense.py --config.data.source=embedded
run mnist1d_convnet --config=configs/mnist1d.py
run mnist1d_convnet_shuffled --config=configs/mnist1d.py --config.data.name=mnist1d_shuffled
run mnist1d_mlp --config=configs/mnist1d_dense.py
run mnist1d_mlp_shuffled --config=configs/mnist1d_dense.py --config.data.name=mnist1d_shuffled
run spoken_digits_convnet --config=configs/spoken_digits.py
run spoken_digits_dense --config=configs/spoken_digits_dense.py
run spoken_digits_noisy_convnet --config=configs/spoken_digits.py \
  --config.data.name=spoken_digits_noisy
run spoken_digits_noisy_dense --config=configs/spoken_digits_dense.py \
  --config.data.name=spoken_digits_noisy
run shapes3d_convnet --config=configs/shapes3d.py
run shapes3d_dense --config=configs/shapes3d_dense.py
