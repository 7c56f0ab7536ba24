"""Double backward is not implemented: backpropagating through a gradient raises, naming the
backward op, instead of silently treating it as a constant."""
import pytest
import torch

import lenet_ext
from lenet_ext import functional as F

CASES = {
    "relu": (lambda x: F.relu(x), (3, 4)),
    "linear": (lambda x: F.linear(x, torch.randn(2, 4)), (3, 4)),
    "conv2d": (lambda x: F.conv2d(x, torch.randn(2, 1, 3, 3)), (1, 1, 5, 5)),
    "max_pool2d": (lambda x: F.max_pool2d(x, 2), (1, 1, 4, 4)),
    "conv2d_relu_max_pool2d": (lambda x: torch.ops.lenet_ext.conv2d_relu_max_pool2d(
        x, torch.randn(2, 1, 3, 3), torch.randn(2))[0], (1, 1, 6, 6)),
    "lenet": (lambda x: lenet_ext.models.FusedLeNet()(x), (2, 1, 32, 32)),
}


@pytest.mark.parametrize("op", CASES)
def test_second_backward_raises(op):
    fn, shape = CASES[op]
    x = torch.randn(shape, requires_grad=True)
    (grad,) = torch.autograd.grad(fn(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=f"derivative for lenet_ext::{op}_backward is not "
                                           f"implemented"):
        grad.sum().backward()
