import zlib

import pytest
import torch

import lenet_ext
from lenet_ext import data
from helpers import write_split

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


MNIST_5K = data.BUNDLED_MNIST


@pytest.fixture
def mnist_5k():
    """The real 5,000-digit MNIST sample that ships inside the package."""
    return MNIST_5K


@pytest.fixture
def offline(monkeypatch):
    def refuse(url):
        raise OSError("network is unreachable (test)")
    monkeypatch.setattr(data, "_fetch", refuse)


@pytest.fixture
def synthetic_mnist(tmp_path):
    """A tiny data set of random digits, for checks that do not need learning to work."""
    write_split(tmp_path, "train", count=96)
    write_split(tmp_path, "t10k", count=32)
    return tmp_path
