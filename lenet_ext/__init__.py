"""LeNet-5 on hand-written C++ and CUDA kernels, registered as PyTorch custom ops.

Importing the package loads ``lenet_ext._C`` (the op schemas, their CPU/CUDA kernels and their
autograd, all registered in C++ and reached through ``torch.ops.lenet_ext``), then ``lenet_ext.ops``,
which registers the ops' fake kernels for torch.compile, and ``lenet_ext.batching``, their vmap
batching rules.
"""
import torch

from . import _C  # noqa: F401  (loading the library registers the ops)
from . import ops  # noqa: F401  (fake kernels)
from . import batching  # vmap batching rules, registered on import
from . import functional, models, nn, onnx

__version__ = "0.1.0"


def cuda_available() -> bool:
    """True when this build has CUDA kernels and a CUDA device is present."""
    has_kernels = torch._C._dispatch_has_kernel_for_dispatch_key("lenet_ext::relu", "CUDA")
    return has_kernels and torch.cuda.is_available()


def cuda_emulated() -> bool:
    """True in the emulated-CUDA build (LENET_EXT_CUDA=emulated), where the CPU ops run the CUDA
    kernels under HIP-CPU instead of the CPU kernels (the fused ops stay CPU kernels)."""
    return bool(_C.CUDA_EMULATED)


__all__ = ["batching", "functional", "models", "nn", "onnx", "ops", "cuda_available", "cuda_emulated"]
