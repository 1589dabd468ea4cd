#!/usr/bin/env bash
# A short check of this project on one NVIDIA GPU (H100/H200 class), offline.
# Each step has a time limit; together they allow 460 s (7.7 minutes), plus
# the time to start Python and find the GPU. From the repository root:
#
#   scripts/gpu_check.sh
#
# 1. The device: nvidia-smi and jax.devices(); stops if JAX sees no GPU.
# 2. The tests that run the compiled steps on the device: the fast path against
#    the reference step, the implementations against each other, evaluation,
#    resume. Tests that fail are run again with
#    JAX_DEFAULT_MATMUL_PRECISION=highest: a test that then passes failed on
#    TF32 rounding (JAX's default for float32 matmuls and convolutions on
#    Ampere and newer GPUs), not on a bug. test_models.py is skipped where
#    TensorFlow is not installed.
# 3. `convnet.benchmark`: training and eval examples/s of the book's convnet on
#    random data, whole batches (microbatches help on a CPU, not a GPU).
#    "project" is the training path (matmul ops); "flax" is a per-step loop
#    with nn.Conv (lax convolutions, cuDNN on a GPU).
# 4. `convnet.main` for two epochs on the 5,000 embedded digits: examples/s and
#    the time of the second epoch (the first includes compilation).
# Then a summary block. Everything it prints is in $OUT/gpu_check.log; with
# $OUT/summary.txt, $OUT/gpu_benchmark.json and $OUT/train_metrics.jsonl.
#
# Python: .venv/bin/activate if it exists, else `python` (or `python3`) on the
# PATH. Missing packages are installed: offline from wheels in .whl/ when that
# folder exists, else by `pip install -e '.[test]'`, which needs a package
# registry. To prepare a machine with JAX for CUDA but no network, run this
# where pip works (the three are pure Python, 1.5 MB):
#
#   python -m pip download --no-deps -d .whl ml_collections mnist1d tensorboardX
#
# `pip install -U "jax[cuda12]"` runs only when nvidia-smi lists a GPU and JAX
# cannot use it.
#
# Environment:
#   OUT                       output folder (default /tmp/gpu_check)
#   GPU_CHECK_ALLOW_CPU=1     go on without a GPU, to try the script on a CPU
#   GPU_CHECK_TEST_FILES      pytest files (default: test_models, test_ops, test_train)
#   GPU_CHECK_TEST_FILTER     pytest -k expression (default: "not main_end_to_end")
#   GPU_CHECK_FRAMEWORKS      benchmark frameworks (default: project,flax)
#   GPU_CHECK_BATCH_SIZES     benchmark batch sizes (default: 128,512,2048)
#   GPU_CHECK_DTYPES          benchmark dtypes (default: float32; float32,bfloat16: twice the time)
#   GPU_CHECK_EXAMPLES        benchmark examples per timed round (default: 65536)
#   GPU_CHECK_ROUNDS          benchmark rounds (default: 3)
#   GPU_CHECK_EPOCHS          epochs of the training run (default: 2)
#   GPU_CHECK_TEST_TIMEOUT, GPU_CHECK_RERUN_TIMEOUT, GPU_CHECK_BENCHMARK_TIMEOUT,
#   GPU_CHECK_TRAIN_TIMEOUT   time limits in seconds (default: 170, 50, 160, 80)
#
# On a CPU, a smaller run of every step:
#
#   GPU_CHECK_ALLOW_CPU=1 GPU_CHECK_TEST_FILTER=fast_path GPU_CHECK_BATCH_SIZES=128 \
#     GPU_CHECK_EXAMPLES=2048 GPU_CHECK_ROUNDS=2 scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-/tmp/gpu_check}
allow_cpu=${GPU_CHECK_ALLOW_CPU:-0}
default_tests="tests/test_models.py tests/test_ops.py tests/test_train.py"
read -r -a test_files <<<"${GPU_CHECK_TEST_FILES:-$default_tests}"
test_filter=${GPU_CHECK_TEST_FILTER:-not main_end_to_end}
frameworks=${GPU_CHECK_FRAMEWORKS:-project,flax}
batch_sizes=${GPU_CHECK_BATCH_SIZES:-128,512,2048}
dtypes=${GPU_CHECK_DTYPES:-float32}
examples=${GPU_CHECK_EXAMPLES:-65536}
rounds=${GPU_CHECK_ROUNDS:-3}
epochs=${GPU_CHECK_EPOCHS:-2}
test_timeout=${GPU_CHECK_TEST_TIMEOUT:-170}
rerun_timeout=${GPU_CHECK_RERUN_TIMEOUT:-50}
benchmark_timeout=${GPU_CHECK_BENCHMARK_TIMEOUT:-160}
train_timeout=${GPU_CHECK_TRAIN_TIMEOUT:-80}

mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
scratch=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export PYTHONUNBUFFERED=1
# The benchmark's workers are processes of their own beside their parent, as
# some tests' subprocesses are: each JAX process taking 75% of the GPU's memory
# at start would leave the next one none.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}

say() { printf '\n== %s\n' "$*"; }
die() {
  printf '\nERROR: %s\n' "$*" >&2
  exit 1
}
started=$SECONDS

say "Python environment"
if [[ -f .venv/bin/activate ]]; then
  echo "using .venv (source .venv/bin/activate)"
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
python=$(command -v python || command -v python3) || die "no python or python3 on the PATH"
echo "python: $python ($("$python" --version 2>&1))"

missing_modules() {
  "$python" - <<'PY'
import importlib.util
names = ["absl", "flax", "jax", "ml_collections", "mnist1d", "numpy", "optax", "orbax.checkpoint",
         "pytest", "tensorboardX"]
def found(name):
  try:
    return importlib.util.find_spec(name) is not None
  except ImportError:
    return False
print(" ".join(n for n in names if not found(n)))
PY
}
missing=$(missing_modules)
if [[ -n $missing ]]; then
  echo "missing: $missing"
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing the wheels in .whl/ (offline) into $scratch/site"
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$scratch/site" \
      .whl/*.whl
    export PYTHONPATH=$scratch/site${PYTHONPATH:+:$PYTHONPATH}
    missing=$(missing_modules)
  fi
  if [[ -n $missing ]]; then
    echo "pip install -e '.[test]' (needs a package registry)"
    timeout 600 "$python" -m pip install -q --retries 1 --timeout 15 -e '.[test]' ||
      die "could not install the project's packages (still missing: $missing)." \
        "Offline, bring them as wheels in .whl/ (see this script's header)."
  fi
else
  echo "the project's packages are installed"
fi
# The configs import as convnet.configs once the project itself is installed (offline: no deps).
if ! "$python" -c 'import convnet.configs' >/dev/null 2>&1; then
  echo "pip install --no-deps --no-build-isolation -e . (the project itself, offline)"
  "$python" -m pip install -q --no-deps --no-build-isolation -e . ||
    die "could not install the project (pip install --no-deps -e . failed)"
fi

gpu_found() { "$python" -c 'import jax; jax.devices("gpu")' >/dev/null 2>&1; }
if ! gpu_found; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "nvidia-smi lists a GPU that JAX cannot use: pip install -U 'jax[cuda12]'"
    timeout 600 "$python" -m pip install -q --retries 1 --timeout 15 -U "jax[cuda12]" ||
      die "could not install jax[cuda12] (no package registry?)"
  fi
fi

say "1. Device"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
else
  echo "nvidia-smi: not found"
fi
if gpu_found; then
  # The tests' conftest hides GPUs from TensorFlow by setting CUDA_VISIBLE_DEVICES=""
  # when it is unset, which would hide them from JAX too; and JAX_PLATFORMS=cuda makes
  # JAX stop rather than fall back to the CPU.
  export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
  export JAX_PLATFORMS=cuda
elif [[ $allow_cpu == 1 ]]; then
  echo "JAX sees no GPU; GPU_CHECK_ALLOW_CPU=1: every step runs on the CPU"
else
  "$python" -c 'import jax; print("jax.devices():", jax.devices())' || true
  die "JAX sees no GPU (python -c 'import jax; jax.devices(\"gpu\")' fails)." \
    "Check nvidia-smi, and that jax has its CUDA plugin (pip list | grep -i jax)." \
    "GPU_CHECK_ALLOW_CPU=1 runs the steps on the CPU."
fi
device=$("$python" - <<'PY'
import sys

import jax
import jaxlib

d = jax.devices()[0]
print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, backend {jax.default_backend()}",
      file=sys.stderr)
print("jax.devices():", jax.devices(), file=sys.stderr)
print(f"{d.device_kind} ({d.platform}, {len(jax.devices())} device(s))")
PY
)
echo "device: $device"

status=()
record() { status+=("$1: $2"); }
outcome() { if ((rc == 0)); then echo ok; else echo "FAILED (exit $rc)"; fi; }
# Runs "$@" under `timeout`, its output also in the file $log; sets rc.
limited() {
  local limit=$1 log=$2
  shift 2
  rc=0
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$log" || rc=$?
  if ((rc == 124 || rc == 137)); then echo "(stopped at its time limit, ${limit} s)"; fi
}
pytest_line() {
  grep -E '[0-9]+ (passed|failed|error|skipped|deselected)' "$1" | tail -n 1 || true
}

say "2. Tests: pytest ${test_files[*]} -k \"$test_filter\" (limit ${test_timeout} s)"
pytest_args=(-q --maxfail=20 -o "cache_dir=$scratch/pytest_cache")
pytest_args+=("${test_files[@]}" -k "$test_filter")
limited "$test_timeout" "$scratch/pytest.log" "$python" -m pytest "${pytest_args[@]}"
tests="$(pytest_line "$scratch/pytest.log")"
if ((rc == 0)); then
  record tests "ok"
elif ((rc == 1)); then
  say "2b. The failed tests again, JAX_DEFAULT_MATMUL_PRECISION=highest (limit ${rerun_timeout} s)"
  limited "$rerun_timeout" "$scratch/rerun.log" env JAX_DEFAULT_MATMUL_PRECISION=highest \
    "$python" -m pytest "${pytest_args[@]}" --last-failed
  tests="$tests; failed ones at highest precision: $(pytest_line "$scratch/rerun.log")"
  record tests "FAILED (exit 1)"
else
  record tests "FAILED (exit $rc)"
fi
[[ -n $tests ]] || tests="no result (exit $rc)"

say "3. Benchmark: python -m convnet.benchmark (limit ${benchmark_timeout} s)"
limited "$benchmark_timeout" "$scratch/benchmark.log" "$python" -m convnet.benchmark \
  --frameworks="$frameworks" --batch_sizes="$batch_sizes" --dtypes="$dtypes" --seeds=0 \
  --rounds="$rounds" --examples="$examples" --microbatch_size=0 --out="$out/gpu_benchmark.json"
record benchmark "$(outcome)"

say "4. Training: convnet.main, embedded digits, $epochs epoch(s) (limit ${train_timeout} s)"
workdir="$scratch/workdir"
limited "$train_timeout" "$scratch/main.log" "$python" -m convnet.main --config=configs/mnist.py \
  --workdir="$workdir" --config.data.source=embedded --config.microbatch_size=0 \
  --config.num_epochs="$epochs"
record training "$(outcome)"
if [[ -f $workdir/metrics.jsonl ]]; then cp "$workdir/metrics.jsonl" "$out/train_metrics.jsonl"; fi

say "Summary"
"$python" - "$out" "$device" "$tests" "$rounds" "$examples" "$((SECONDS - started))" \
  "${status[@]}" <<'PY' |
import json, os, sys

out, device, tests, rounds, examples, seconds, *status = sys.argv[1:]
lines = [f"device:    {device}", f"tests:     {tests}"]

path = os.path.join(out, "gpu_benchmark.json")
if os.path.exists(path):
  with open(path) as f:
    bench = json.load(f)
  frameworks = bench["frameworks"]
  lines.append(f"benchmark: train examples/s (median of {rounds} rounds of {int(examples):,} "
               "examples), eval examples/s, first step (compilation included)")
  for batch_size, by_dtype in bench["throughput"].items():
    for dtype, row in by_dtype.items():
      for name in frameworks:
        r = row[name]
        if "skipped" in r:
          lines.append(f"  batch {batch_size:>5}  {dtype:<8} {name:<8} skipped: {r['skipped']}")
          continue
        lines.append(f"  batch {batch_size:>5}  {dtype:<8} {name:<8}"
                     f" train {r['train_examples_per_sec']:>11,.0f}"
                     f"   eval {r['eval_examples_per_sec']:>11,.0f}"
                     f"   first step {r['first_step_s']:.2f} s")
  flops = bench["flops"]["train_flops_per_example"]
  peaks = ", ".join(f"{d} {g:,.0f}" for d, g in bench["matmul_peak_gflops"].items())
  lines.append(f"  {flops / 1e6:.2f} MFLOP per training example; "
               f"square matmul: {peaks} GFLOP/s")
else:
  lines.append("benchmark: no results")

path = os.path.join(out, "train_metrics.jsonl")
epochs = []
if os.path.exists(path):
  with open(path) as f:
    epochs = [r for r in map(json.loads, f) if r.get("kind") == "epoch"]
if epochs:
  lines.append(f"training:  the book's convnet (configs/mnist.py) on the embedded digits, "
               f"{epochs[0]['step']} steps an epoch, then validation and test")
  previous = 0.0
  for r in epochs:
    r["seconds"], previous = r["wall_time_s"] - previous, r["wall_time_s"]
    note = " (compilation included)" if r["epoch"] == 1 else ""
    lines.append(f"  epoch {r['epoch']}: {r['seconds']:.2f} s{note}, "
                 f"{r['train_examples_per_sec']:,.0f} train examples/s, "
                 f"test accuracy {r['test_accuracy']:.4f}")
  last = epochs[-1]
  lines.append(f"  time to one epoch: {last['seconds']:.2f} s (epoch {last['epoch']}), "
               f"{last['train_examples_per_sec']:,.0f} train examples/s")
else:
  lines.append("training:  no epoch records")
lines.append("steps:     " + "; ".join(status))
lines.append(f"time:      {int(seconds)} s in all; files in {out}")
print("\n".join(lines))
PY
  tee "$out/summary.txt"

for s in "${status[@]}"; do
  [[ $s == *": ok" ]] || exit 1
done
