"""LeNet-5 on hand-written C++ and CUDA kernels, registered as PyTorch custom ops.

Importing the package loads ``lenet_ext._C`` (the op schemas and kernels, reached through
``torch.ops.lenet_ext``) and registers their fake kernels and autograd formulas (``lenet_ext.ops``).
"""
import torch

from . import _C  # noqa: F401  (loading the library registers the ops)
from . import ops  # noqa: F401  (fake kernels and autograd)
from . import functional, models, nn

__version__ = "0.1.0"


def cuda_available() -> bool:
    """True when this build has CUDA kernels and a CUDA device is present."""
    has_kernels = torch._C._dispatch_has_kernel_for_dispatch_key("lenet_ext::relu", "CUDA")
    return has_kernels and torch.cuda.is_available()


__all__ = ["functional", "models", "nn", "ops", "cuda_available"]
