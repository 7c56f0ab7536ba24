import zlib

import pytest
import torch

import lenet_ext

DEVICES = ["cpu"] + (["cuda"] if lenet_ext.cuda_available() else [])
DTYPES = [torch.float32, torch.float64]

# Compare with stock cuDNN/cuBLAS in full float32, not TF32.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # A different but reproducible seed per test: fresh inputs each test, failures replayable.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
