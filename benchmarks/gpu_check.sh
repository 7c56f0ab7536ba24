#!/usr/bin/env bash
# The GPU check, in one go for the day a GPU machine is lent: what the emulated-CUDA build cannot
# prove (the memory model, real warps, speed). It records the machine, builds lenet_ext with its
# CUDA kernels, runs the CUDA tests, compute-sanitizer's memcheck and racecheck over our kernels,
# the op and LeNet benchmarks on CUDA and LeNet-5 at KernelBench's shape (ours, eager, compile).
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Needs an NVIDIA GPU, a CUDA build of torch, nvcc and compute-sanitizer (on PATH or in
# $CUDA_HOME/bin), pytest, hypothesis and expecttest; no network. Each step runs under its own time
# limit (the budgets at the bottom, 7.7 minutes in all), and a failed step does not stop the rest.
# OUTDIR gets machine.txt, a log per step, the benchmarks' reports and summary.md (one line per
# step: PASS or FAIL, its time); the exit status is non-zero if any step failed. The build replaces
# the installed lenet_ext and runs on a copy of the sources, so nothing in the checkout is written.
# Commit OUTDIR as benchmarks/results/<date>-<gpu name>/ (summary.md names the folder).
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
COMMAND_LINE="$(printf '%q ' "$0" "$@")"
COMMAND_LINE="${COMMAND_LINE% }"
mkdir -p "$1" && OUT="$(cd "$1" && pwd)" || exit 2
cd "$(dirname "$0")/.." || exit 2
export OUT COMMAND_LINE PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# The tests must import the installed package: python -m puts the working directory, whose
# lenet_ext/ has no compiled _C, first on sys.path unless told not to (Python 3.11+). No bytecode or
# pytest cache is written into the checkout.
export PYTHONSAFEPATH=1 PYTHONDONTWRITEBYTECODE=1

gpu_name() { nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1; }

needs_gpu() {  # fails a step at once, saying why, where there is no GPU
  command -v nvidia-smi >/dev/null || { echo "no GPU: nvidia-smi not found"; return 1; }
  [ -n "$(gpu_name)" ] || { nvidia-smi; echo "no GPU: nvidia-smi lists none"; return 1; }
}

needs_cuda_kernels() {  # a pytest run without them would skip every CUDA test and pass
  needs_gpu || return 1
  python -c "import lenet_ext, sys; sys.exit(not lenet_ext.cuda_available())" ||
    { echo "lenet_ext has no CUDA kernels here: lenet_ext.cuda_available() is False (build.log)"; return 1; }
}

cuda_tool() {  # the toolkit's program $1: on PATH, else in CUDA_HOME (default /usr/local/cuda)
  local in_toolkit="${CUDA_HOME:-/usr/local/cuda}/bin/$1"
  command -v "$1" || { [ -x "$in_toolkit" ] && echo "$in_toolkit"; }
}

step_machine() {
  local missing=()
  echo "command: $COMMAND_LINE"
  echo "directory: $PWD"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git describe --always --dirty 2>/dev/null || echo 'unknown (no git)')"
  echo "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'), $(nproc) logical CPUs"
  if needs_gpu; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
    nvidia-smi
  else
    missing+=(GPU)
  fi
  "$(cuda_tool nvcc || echo nvcc)" --version || missing+=(nvcc)
  "$(cuda_tool compute-sanitizer || echo compute-sanitizer)" --version || missing+=(compute-sanitizer)
  python -c "import sys, torch; print(f'python {sys.version.split()[0]}, torch {torch.__version__}, '
             f'torch.version.cuda {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}')" ||
    missing+=(torch)
  [ ${#missing[@]} -eq 0 ] || { echo "missing: ${missing[*]}"; return 1; }
}

step_build() {
  needs_gpu || return 1
  # The benchmarks prefer an in-place build to the installed one, and the checkout is not ours to clean.
  if compgen -G "lenet_ext/_C*.so" >/dev/null; then
    echo "an in-place build (lenet_ext/_C*.so) would shadow the installed package: remove it first"
    return 1
  fi
  sources="$(mktemp -d)"  # not local: the EXIT trap reads it after the function returns
  trap 'rm -rf "$sources"' EXIT
  # pip builds in the source tree (build/, *.egg-info): a copy keeps the checkout as it is.
  cp -r setup.py pyproject.toml README.md csrc lenet_ext third_party "$sources"/ || return 1
  python -m pip uninstall -y lenet_ext  # so that a failed build leaves no older package to test
  # LENET_EXT_CUDA=1: stop with the reason if the CUDA kernels cannot be built, rather than
  # build the CPU ones; --no-deps: there is no network to look for them.
  LENET_EXT_CUDA=1 MAX_JOBS=16 python -m pip install -v --no-build-isolation --no-deps "$sources" ||
    return 1
  python -c "import lenet_ext, torch; assert lenet_ext.cuda_available(), 'built, but no CUDA kernels'
print(f'{lenet_ext.__path__[0]}: CUDA kernels on {torch.cuda.get_device_name()}')"
}

step_tests() {
  needs_cuda_kernels || return 1
  # -k cuda: the op tests' cuda parametrisations (ids like test_matches_stock[cuda-float32-...])
  # and, by its module name, all of test_cuda.py.
  python -m pytest -q -p no:cacheprovider -k cuda tests/test_cuda.py tests/test_relu.py \
    tests/test_linear.py tests/test_conv2d.py tests/test_max_pool2d.py
}

step_sanitizer() {  # step_sanitizer memcheck|racecheck
  needs_cuda_kernels || return 1
  local sanitizer output status summaries
  sanitizer="$(cuda_tool compute-sanitizer)" ||
    { echo "compute-sanitizer not found (PATH, \$CUDA_HOME/bin)"; return 1; }
  # Every op on multi-block shapes in both dtypes, and max_pool2d_backward given bad indices.
  # Only our kernels are instrumented (kns: a substring of the mangled name, our namespace), which
  # keeps torch's and cuDNN's out of the time and the report. API errors are not counted: torch
  # meets some by design (a stream or event query that is not ready), and a failed launch of ours
  # fails its test. Without the caching allocator each tensor is an allocation of its own, so
  # memcheck sees an overrun past a tensor's end.
  output="$(PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$1" --kernel-name kns=lenet_ext \
    --report-api-errors no --error-exitcode 1 python -m pytest -q -p no:cacheprovider \
    tests/test_cuda.py -k "bitwise_deterministic or rejects_an_index" 2>&1)"
  status=$?
  echo "$output"
  # "ERROR SUMMARY: 0 errors", "RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"
  summaries="$(grep -E '(ERROR|RACECHECK) SUMMARY' <<<"$output" | sed 's/^=* *//' | paste -sd ';' -)"
  [ -n "$summaries" ] || { echo "$1: no sanitizer summary (exit status $status)"; return 1; }
  # A clean summary alone is not enough: a crashed run can print one.
  if [ "$status" -ne 0 ] || grep -q '[1-9]' <<<"$summaries"; then
    echo "$1 FAILED: $summaries; exit status $status"
    return 1
  fi
  echo "$1: $summaries"
}

step_bench_ops() {
  needs_gpu || return 1
  python benchmarks/bench_ops.py --device cuda --batch-sizes 1 256 4096 --min-run-time 0.1 --out "$OUT"
}

step_bench_lenet() {
  needs_gpu || return 1
  python benchmarks/bench_lenet.py --device cuda --batch-sizes 1 256 4096 --min-run-time 0.1 --out "$OUT"
}

step_kernelbench() {
  needs_gpu || return 1
  python benchmarks/kernelbench_lenet.py --device cuda --batch-size 4096 --out "$OUT"
}

export -f gpu_name needs_gpu needs_cuda_kernels cuda_tool step_machine step_build step_tests \
  step_sanitizer step_bench_ops step_bench_lenet step_kernelbench

ROWS=()
FAILED=0
run_step() {  # run_step NAME SECONDS LOG COMMAND: COMMAND's output to OUTDIR/LOG, a row of summary.md
  local name=$1 budget=$2 log=$3 start=$SECONDS status result detail
  echo "== $name (up to $budget s, log $log)"
  timeout -k 1 "$budget" bash -c "$4" >"$OUT/$log" 2>&1
  status=$?
  result=PASS
  [ $status -eq 0 ] || { result=FAIL; FAILED=$((FAILED + 1)); }
  if [ $status -eq 124 ] || [ $status -eq 137 ]; then
    detail="timed out after $budget s"
  else  # the log's last line: pytest's counts, the sanitizer's summary, the failure's reason
    detail="$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/$log" | grep -v '^[[:space:]]*$' | tail -n 1 | cut -c 1-200)"
  fi
  ROWS+=("| $name | $result | $((SECONDS - start)) s | $budget s | $log | ${detail//|/\\|} |")
  echo "$result $name ($((SECONDS - start)) s): $detail"
}

# The budgets add up to 455 s (+1 s each to kill): the whole check ends within 8 minutes.
start=$SECONDS
run_step machine     15  machine.txt     step_machine
run_step build       150 build.log       step_build        # ~100 s: autograd.cpp, conv2d.cpp the slowest
run_step tests       90  tests.log       step_tests        # ~900 tests, a few through torch.compile
run_step memcheck    45  memcheck.log    "step_sanitizer memcheck"
run_step racecheck   40  racecheck.log   "step_sanitizer racecheck"
run_step bench_ops   40  bench_ops.log   step_bench_ops    # 48 rows x 0.2 s, retried when unstable
run_step bench_lenet 20  bench_lenet.log step_bench_lenet  # 12 rows
run_step kernelbench 55  kernelbench.log step_kernelbench  # one torch.compile, 3 x 1 s timed

gpu="$(gpu_name)"
machine="${gpu:-no gpu}"
machine="${machine,,}"  # "NVIDIA H100 80GB HBM3" -> nvidia-h100-80gb-hbm3
folder="$(date -u +%Y-%m-%d)-${machine// /-}"
{
  echo "# GPU check: ${gpu:-no GPU}, $(date -u +%Y-%m-%d)," \
    "commit $(git describe --always --dirty 2>/dev/null || echo unknown)"
  echo
  echo "\`$COMMAND_LINE\`: $FAILED of ${#ROWS[@]} steps failed, $((SECONDS - start)) s in all."
  echo "Commit this folder as \`benchmarks/results/$folder/\`."
  echo
  echo "| step | result | time | budget | log | detail |"
  echo "|:-- |:-- | --:| --:|:-- |:-- |"
  printf '%s\n' "${ROWS[@]}"
} >"$OUT/summary.md"
cat "$OUT/summary.md"
[ "$FAILED" -eq 0 ]
