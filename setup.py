"""Builds lenet_ext._C: the C++ (CPU) kernels always, the CUDA kernels when PyTorch has CUDA and nvcc
is found. LENET_EXT_CUDA=1 forces CUDA on (and fails loudly if it cannot be built), =0 forces it off.
-march=native is on by default (the kernels are written to be auto-vectorised, and AVX-512 doubles
their speed over baseline SSE); LENET_EXT_NATIVE=0 builds a portable binary instead.
LENET_EXT_SANITIZE=1 builds the C++ sources with AddressSanitizer and UndefinedBehaviorSanitizer
(-O1, any undefined behaviour fatal, signed overflow included); the library then needs libasan
preloaded: `.ci/aside.sh sanitize` builds such a copy aside and runs the op tests under it."""
import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch


def want_cuda():
    forced = os.environ.get("LENET_EXT_CUDA")
    if forced == "1":
        if torch.version.cuda is None:
            raise SystemExit(f"LENET_EXT_CUDA=1, but this PyTorch ({torch.__version__}) was "
                             "built without CUDA: install a CUDA build of PyTorch, or unset "
                             "LENET_EXT_CUDA.")
        if CUDA_HOME is None:
            raise SystemExit("LENET_EXT_CUDA=1, but no CUDA toolkit was found: put nvcc on PATH or "
                             "set CUDA_HOME.")
    if forced is not None:
        return forced == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


cuda = want_cuda()
sources = ["csrc/lenet_ext.cpp", "csrc/autograd.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
cxx_flags = ["-O3", "-std=c++20", "-ffp-contract=fast", "-fdiagnostics-color=always"]
if os.environ.get("LENET_EXT_NATIVE", "1") != "0":
    cxx_flags.append("-march=native")
else:  # GCC notes that 64-byte vectors passed by value have no SSE ABI; ours never cross a library
    cxx_flags.append("-Wno-psabi")
link_flags = []
if torch._C.has_openmp:
    # at::parallel_for is a header template: without -fopenmp it compiles to a serial loop. The
    # loader resolves libgomp.so.1 to the copy torch already loaded, so both share one thread pool.
    cxx_flags.append("-fopenmp")
    link_flags.append("-fopenmp")
if os.environ.get("LENET_EXT_SANITIZE") == "1":
    # -fno-wrapv undoes Python's -fwrapv, so that signed overflow in index arithmetic is reported
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                "-fno-omit-frame-pointer"]
    cxx_flags += ["-O1", "-g", "-fno-wrapv"] + sanitize
    link_flags += sanitize
extra = {"cxx": cxx_flags}
define_macros = []
if cuda:
    sources += sorted(glob.glob("csrc/cuda/*.cu")) + ["csrc/cuda/registration.cpp"]
    # No -gencode/-arch here: BuildExtension adds them from TORCH_CUDA_ARCH_LIST, and only when no
    # nvcc flag mentions "arch". Without that variable it targets the visible GPUs, and with none
    # visible it would fail, so then build for the A100 and H100 (plus PTX for newer GPUs).
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        print("lenet_ext: no GPU visible and TORCH_CUDA_ARCH_LIST unset; building for 8.0;9.0+PTX")
    # No fast-math: results must match the CPU kernels' to rounding.
    extra["nvcc"] = ["-O3", "-std=c++17"]
    define_macros.append(("LENET_EXT_WITH_CUDA", None))
    Extension = CUDAExtension
else:
    Extension = CppExtension

setup(
    ext_modules=[
        Extension(
            "lenet_ext._C",
            sources,
            extra_compile_args=extra,
            extra_link_args=link_flags,
            define_macros=define_macros,
            py_limited_api=True,
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
