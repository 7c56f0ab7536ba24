#!/usr/bin/env bash
# Compiles the CUDA sources without a GPU or a CUDA build of PyTorch, warnings as errors:
#   every csrc/cuda/*.cu with nvcc for sm_80 and sm_90 (they include no PyTorch header), and
#   csrc/cuda/registration.cpp with g++ -fsyntax-only against the installed torch's headers (the
#   CPU wheel ships c10/cuda and ATen/cuda) and the CUDA toolkit's.
# One line per file; exits non-zero if any fails. Run from anywhere: ./.ci/check_cuda.sh
set -uo pipefail
cd "$(dirname "$0")/.."

command -v nvcc >/dev/null || { echo "FAIL nvcc not found on PATH"; exit 1; }
out_dir=$(mktemp -d)
trap 'rm -rf "$out_dir"' EXIT
failed=0

report() {  # report <file> <log> <status>
  if [ "$3" -eq 0 ]; then
    echo "ok   $1"
  else
    echo "FAIL $1"
    sed 's/^/     /' "$2"
    failed=1
  fi
}

for source in csrc/cuda/*.cu; do
  log="$out_dir/$(basename "$source").log"
  nvcc -std=c++17 -O3 \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror \
    -c "$source" -o "$out_dir/$(basename "$source").o" >"$log" 2>&1
  report "$source (nvcc, sm_80 sm_90)" "$log" $?
done

# The toolkit root: CUDA_HOME, else where nvcc says it lives (nvcc on PATH may be a wrapper).
nvcc_top=$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p')
cuda_home=${CUDA_HOME:-$nvcc_top}
torch_includes=$("${PYTHON:-python3}" -c "from torch.utils.cpp_extension import include_paths
print(' '.join(include_paths()))") || { echo "FAIL csrc/cuda/registration.cpp (no torch)"; exit 1; }
system_includes=()
for dir in $torch_includes "$cuda_home/include"; do system_includes+=(-isystem "$dir"); done
# The CPU wheel lacks the generated c10/cuda/impl/cuda_cmake_macros.h, which only sets Windows
# DLL export macros; C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips it. -isystem: torch's own headers
# warn under -Wextra, ours must not.
log="$out_dir/registration.log"
g++ -std=c++20 -fsyntax-only -Wall -Wextra -Werror "${system_includes[@]}" \
  -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE \
  csrc/cuda/registration.cpp >"$log" 2>&1
report "csrc/cuda/registration.cpp (g++ -fsyntax-only)" "$log" $?

exit $failed
