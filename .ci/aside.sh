#!/usr/bin/env bash
# Builds a copy of the extension in a throw-away directory (the in-place build stays as it is) and
# runs the op tests against it; any failing test fails the script. CI runs both modes before the
# README's tests.
#   bash .ci/aside.sh sanitize   AddressSanitizer + UndefinedBehaviorSanitizer: any report fails
#   bash .ci/aside.sh portable   without -march=native (the kernels' GCC vectors as baseline SSE2):
#                                a kernel that is right only with AVX-512 fails
#   bash .ci/aside.sh cuda-emulated
#                                the CUDA kernels and entry points (csrc/cuda), run on the CPU by
#                                HIP-CPU in place of the CPU kernels, under the same op tests
set -euo pipefail
mode="${1:-}"
case "$mode" in sanitize | portable | cuda-emulated) ;;
  *) echo "usage: $0 sanitize|portable|cuda-emulated" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
python -m pip install -q hypothesis pytest expecttest  # the test extras

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r setup.py pyproject.toml csrc lenet_ext tests third_party "$work"
rm -f "$work"/lenet_ext/_C*.so
cd "$work"
tests=(tests/test_relu.py tests/test_linear.py tests/test_conv2d.py tests/test_max_pool2d.py
       tests/test_fuzz.py tests/test_fused.py tests/test_fake.py)
# Every algorithm forced on its whole claimed range (CPU kernels only: not for the emulated build).
algorithms=(tests/test_conv2d_algorithms.py tests/test_linear_algorithms.py
            tests/test_max_pool2d_algorithms.py tests/test_fused_algorithms.py)

if [ "$mode" = cuda-emulated ]; then
  LENET_EXT_CUDA=emulated python setup.py -q build_ext --inplace
  python -c "import lenet_ext, sys; sys.exit(not lenet_ext.cuda_emulated())"  # the right build
  python -m pytest -q -p no:cacheprovider "${tests[@]}" tests/test_determinism.py tests/test_cuda.py \
    tests/test_double_backward.py tests/test_mixed_precision.py
  exit
fi

if [ "$mode" = portable ]; then
  LENET_EXT_NATIVE=0 LENET_EXT_CUDA=0 python setup.py -q build_ext --inplace
  python -m pytest -q -p no:cacheprovider -x "${tests[@]}" "${algorithms[@]}" tests/test_determinism.py
  exit
fi

LENET_EXT_SANITIZE=1 LENET_EXT_CUDA=0 python setup.py -q build_ext --inplace
# The interpreter is not instrumented, so the sanitizer runtimes must be loaded before anything
# else. CPython and torch keep memory until exit by design: no leak check. A failed allocation
# raises (as without ASan) instead of aborting. Any report ends the process with an error, and is
# printed: --capture=sys leaves the sanitizers' stderr alone.
compiler="${CXX:-c++}"  # the one setup.py builds with
runtimes="$($compiler -print-file-name=libasan.so) $($compiler -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
LD_PRELOAD="$runtimes" python -m pytest -q -p no:cacheprovider -x --capture=sys "${tests[@]}" \
  "${algorithms[@]}"
