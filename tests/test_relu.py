import pytest
import torch
from torch.library import opcheck

import lenet_ext
from lenet_ext import functional as F
from helpers import assert_matches_stock

SHAPES = [(), (0,), (1,), (7,), (3, 5), (2, 3, 4, 5), (64, 6, 28, 28), (2, 0, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_stock(shape, device, dtype):
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    assert_matches_stock(F.relu, torch.nn.functional.relu, [x], rtol=0, atol=0)


def test_non_contiguous_and_expanded_input(device, dtype):
    x = torch.randn(6, 5, device=device, dtype=dtype).t()
    assert not x.is_contiguous()
    torch.testing.assert_close(F.relu(x), torch.relu(x), rtol=0, atol=0)
    expanded = torch.randn(1, 5, device=device, dtype=dtype).expand(4, 5)
    torch.testing.assert_close(F.relu(expanded), torch.relu(expanded), rtol=0, atol=0)


def test_nan_and_inf_propagate_as_in_torch(device, dtype):
    x = torch.tensor([float("nan"), -float("inf"), float("inf"), -1.0, 0.0, 2.0],
                     device=device, dtype=dtype, requires_grad=True)
    assert_matches_stock(F.relu, torch.nn.functional.relu, [x], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (2, 3, 2, 2)], ids=str)
def test_gradcheck(shape, device):
    # keep inputs away from the kink at 0, where the derivative is not defined
    x = torch.randn(shape, device=device, dtype=torch.float64)
    x = (x + x.sign() * 0.1).requires_grad_()
    assert torch.autograd.gradcheck(F.relu, (x,))


def test_inplace_writes_into_input(device, dtype):
    x = torch.randn(4, 5, device=device, dtype=dtype)
    expected = torch.relu(x)
    result = F.relu(x, inplace=True)
    assert result is x
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


def test_inplace_on_intermediate_is_differentiable(device):
    leaf = torch.randn(4, 5, device=device, dtype=torch.float64, requires_grad=True)
    assert_matches_stock(lambda x: F.relu(x * 2, inplace=True),
                         lambda x: torch.relu_(x * 2), [leaf], rtol=0, atol=0)


def test_inplace_on_leaf_requiring_grad_raises_like_torch(device):
    leaf = torch.randn(3, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        F.relu(leaf, inplace=True)


def test_opcheck(device, dtype):
    x = torch.randn(3, 4, device=device, dtype=dtype, requires_grad=True)
    opcheck(torch.ops.lenet_ext.relu, (x,))
    opcheck(torch.ops.lenet_ext.relu_backward, (torch.randn_like(x), torch.relu(x.detach())))


@pytest.mark.parametrize("bad_dtype", [torch.int64, torch.int32, torch.bool, torch.complex64], ids=str)
def test_unsupported_dtype_raises(bad_dtype, device):
    x = torch.ones(3, device=device).to(bad_dtype)
    for call in (lambda: F.relu(x), lambda: torch.ops.lenet_ext.relu(x)):
        with pytest.raises(TypeError, match=r"lenet_ext\.relu: expected input to have dtype "
                                            r"float32, float64, bfloat16 or float16, but got"):
            call()


def test_backward_op_checks_its_arguments(device):
    result = torch.rand(3, 4, device=device)
    with pytest.raises(RuntimeError, match=r"lenet_ext\.relu_backward: expected grad_output of "
                                           r"shape \[3, 4\], but got shape \[4, 3\]"):
        torch.ops.lenet_ext.relu_backward(torch.rand(4, 3, device=device), result)
    with pytest.raises(TypeError, match=r"lenet_ext\.relu_backward: expected grad_output to have "
                                        r"the same dtype as result"):
        torch.ops.lenet_ext.relu_backward(result.double(), result)


def test_module_is_drop_in(device):
    for inplace in (False, True):
        ours, stock = lenet_ext.nn.ReLU(inplace=inplace), torch.nn.ReLU(inplace=inplace)
        assert repr(ours) == repr(stock)
        x = torch.randn(2, 3, device=device)
        torch.testing.assert_close(ours(x.clone()), stock(x.clone()), rtol=0, atol=0)
