"""torch.compile(fullgraph=True) traces through our ops (fake kernels) and matches eager."""
import torch

from lenet_ext import functional as F
from helpers import assert_matches_stock


def mlp(x, w1, b1, w2):
    return F.linear(F.relu(F.linear(x, w1, b1)), w2)


def test_compiled_relu_and_linear_match_eager(device):
    torch._dynamo.reset()
    opts = dict(device=device, requires_grad=True)
    inputs = [torch.randn(8, 5, **opts), torch.randn(6, 5, **opts), torch.randn(6, **opts),
              torch.randn(3, 6, **opts)]
    compiled = torch.compile(mlp, fullgraph=True)
    assert_matches_stock(compiled, mlp, inputs)
