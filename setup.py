"""Builds lenet_ext._C against the torch installed in this environment: the C++ (CPU) kernels always,
and the CUDA kernels when that torch has CUDA and the CUDA toolkit (nvcc and its headers) is found.

Build it with `pip install --no-build-isolation .` (or `-e .`): an extension must be compiled
against the very torch that imports it, and pip's default isolated build has no torch; there this
script stops at once and says so.

Environment variables:
  LENET_EXT_CUDA=1         CUDA kernels, or stop with the reason they cannot be built
  LENET_EXT_CUDA=0         CPU kernels only
  LENET_EXT_CUDA=emulated  the CUDA kernels (csrc/cuda) compiled as host C++ against HIP-CPU
                           (third_party/hip-cpu; needs TBB: apt-get install libtbb-dev) and
                           registered at the CPU key in place of the CPU kernels, so that the op
                           tests run them without a GPU (`bash .ci/aside.sh cuda-emulated`)
  LENET_EXT_NATIVE=0       a portable binary instead of -march=native (the kernels are written to
                           be auto-vectorised; AVX-512 doubles their speed over baseline SSE)
  LENET_EXT_SANITIZE=1     AddressSanitizer + UndefinedBehaviorSanitizer (-O1, any undefined
                           behaviour fatal); needs libasan preloaded (`bash .ci/aside.sh sanitize`)
"""
import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
NO_TORCH = """lenet_ext: cannot build: torch is not importable in this build environment.
The extension must be compiled against the torch that will import it. With torch installed, run
    pip install --no-build-isolation .
(pip's default build runs in an isolated environment without your torch); without it, first
    pip install torch==2.13.0 setuptools ninja"""


def cuda_headers_found(cuda_home):
    """True if the toolkit at cuda_home has the CUDA runtime headers (nvcc alone is not enough)."""
    return any(os.path.isfile(os.path.join(cuda_home, include, "cuda_runtime.h"))
               for include in ("include", os.path.join("targets", "x86_64-linux", "include"),
                               os.path.join("targets", "sbsa-linux", "include")))


def choose_kernels(forced, torch_cuda, cuda_home, headers_found=cuda_headers_found):
    """("cuda" | "cpu" | "emulated", the reason) for LENET_EXT_CUDA = forced (None if unset), the
    CUDA version torch was built with (None for a CPU build) and the toolkit root (None if none)."""
    if forced not in (None, "", "0", "1", "emulated"):
        raise SystemExit(f"lenet_ext: LENET_EXT_CUDA must be 1, 0 or emulated, not {forced!r}")
    if forced == "emulated":
        return "emulated", "LENET_EXT_CUDA=emulated"
    if forced == "0":
        return "cpu", "LENET_EXT_CUDA=0"
    if torch_cuda is None:
        problem = "this torch was built without CUDA"
    elif cuda_home is None:
        problem = "no CUDA toolkit was found (put nvcc on PATH or set CUDA_HOME)"
    elif not headers_found(cuda_home):
        problem = f"the CUDA toolkit at {cuda_home} has no cuda_runtime.h"
    else:
        return "cuda", f"torch has CUDA {torch_cuda} and the toolkit at {cuda_home} has its headers"
    if forced == "1":
        raise SystemExit(f"lenet_ext: LENET_EXT_CUDA=1, but {problem}.")
    return "cpu", problem


def tbb_found():
    """HIP-CPU runs its blocks with C++17 parallel algorithms, which libstdc++ builds on TBB."""
    dirs = ["/usr/include", "/usr/local/include"] + os.environ.get("CPATH", "").split(":")
    return any(os.path.isfile(os.path.join(d, "tbb", "tbb.h")) for d in dirs if d)


def build():
    try:
        import torch
        from torch.utils.cpp_extension import (CUDA_HOME, BuildExtension, CppExtension,
                                               CUDAExtension)
    except ImportError:
        raise SystemExit(NO_TORCH)

    kernels, reason = choose_kernels(os.environ.get("LENET_EXT_CUDA"), torch.version.cuda,
                                     CUDA_HOME)
    built = {"cuda": "CPU and CUDA", "cpu": "CPU", "emulated": "emulated CUDA"}[kernels]
    print(f"lenet_ext: building the {built} kernels: {reason}", file=sys.stderr)

    # csrc/cpu/<op>.cpp and csrc/cpu/<op>/*.cpp (an op with several algorithms has a folder)
    sources = ["csrc/lenet_ext.cpp", "csrc/autograd.cpp", "csrc/autocast.cpp",
               "csrc/node_names.cpp"] + sorted(
        glob.glob("csrc/cpu/**/*.cpp", recursive=True))
    cxx_flags = ["-O3", "-std=c++20", "-ffp-contract=fast", "-fdiagnostics-color=always"]
    if os.environ.get("LENET_EXT_NATIVE", "1") != "0":
        cxx_flags.append("-march=native")
    else:  # GCC notes that 64-byte vectors passed by value have no SSE ABI; ours never cross a library
        cxx_flags.append("-Wno-psabi")
    link_flags = []
    if torch._C.has_openmp:
        # at::parallel_for is a header template: without -fopenmp it compiles to a serial loop. The
        # loader resolves libgomp.so.1 to the copy torch already loaded, so both share one pool.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if os.environ.get("LENET_EXT_SANITIZE") == "1":
        # -fno-wrapv undoes Python's -fwrapv, so that signed overflow in index arithmetic is reported
        sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                    "-fno-omit-frame-pointer"]
        cxx_flags += ["-O1", "-g", "-fno-wrapv"] + sanitize
        link_flags += sanitize
    extra = {"cxx": cxx_flags}
    # torch_python: registerCppFunction and functionToPyObject, which give the autograd nodes
    # their Python types (csrc/node_names.cpp); the limited API leaves it unlinked otherwise
    define_macros, include_dirs, libraries = [], [], ["torch_python"]
    Extension = CppExtension
    if kernels == "cuda":
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + ["csrc/cuda/registration.cpp"]
        # No -gencode/-arch here: BuildExtension adds them from TORCH_CUDA_ARCH_LIST, and only when
        # no nvcc flag mentions "arch". Without that variable it targets the visible GPUs, and with
        # none visible it would fail, so then build for the A100 and H100 (plus PTX for newer GPUs).
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
            print("lenet_ext: no GPU visible and TORCH_CUDA_ARCH_LIST unset; building for "
                  "8.0;9.0+PTX", file=sys.stderr)
        # No fast-math: results must match the CPU kernels' to rounding.
        extra["nvcc"] = ["-O3", "-std=c++17"]
        Extension = CUDAExtension
    elif kernels == "emulated":
        if not tbb_found():
            raise SystemExit("lenet_ext: LENET_EXT_CUDA=emulated needs TBB's headers (HIP-CPU runs "
                             "on C++17 parallel algorithms): apt-get install libtbb-dev")
        # The .cu files, each included by a one-line .cpp: setuptools sends .cu files to nvcc.
        sources += sorted(glob.glob("csrc/cuda/emulated/*.cpp")) + ["csrc/cuda/registration.cpp"]
        define_macros.append(("LENET_EXT_CUDA_EMULATED", None))
        include_dirs.append(os.path.join(ROOT, "third_party", "hip-cpu", "include"))
        libraries.append("tbb")
        # the CPU kernels' entry points are left unregistered, and nvcc's #pragma unroll is unknown
        cxx_flags += ["-Wno-unused-function", "-Wno-unknown-pragmas"]

    setup(
        ext_modules=[
            Extension(
                "lenet_ext._C",
                sources,
                extra_compile_args=extra,
                extra_link_args=link_flags,
                define_macros=define_macros,
                include_dirs=include_dirs,
                libraries=libraries,
                py_limited_api=True,
            )
        ],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        options={"bdist_wheel": {"py_limited_api": "cp39"}},
    )


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import its functions
    build()
