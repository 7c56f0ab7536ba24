"""The fused ops' two CPU algorithms (csrc/cpu/fused/algorithms.h) forced on a grid of shapes:
`fused` (what conv2d_relu_max_pool2d and lenet run) must equal `reference` (each op's reference
kernels chained) and stock, forward and every gradient; an unknown algorithm is refused. Which
conv2d, linear and max_pool2d algorithms LeNet's shapes take is pinned in those ops' tests."""
import pytest
import torch
import torch.nn.functional as TF

from lenet_ext.models import StockLeNet
from test_conv2d import assert_close

op = torch.ops.lenet_ext
ALGORITHMS = ["reference", "fused"]

# (input shape, weight shape): LeNet's blocks, odd conv outputs (last row/column unpooled), pooled
# rows of 1-3, 4-7 and 8 or more windows (the fused pass's vector groups), batch 0
BLOCK_CASES = {
    "lenet_block1": ((3, 1, 32, 32), (6, 1, 5, 5)),
    "lenet_block2": ((3, 6, 14, 14), (16, 6, 5, 5)),
    "odd": ((2, 3, 9, 8), (4, 3, 3, 2)),
    "one_window": ((1, 2, 4, 4), (3, 2, 3, 3)),
    "three_windows": ((2, 2, 9, 10), (5, 2, 3, 5)),
    "five_windows": ((2, 1, 14, 11), (2, 1, 3, 2)),
    "wide": ((2, 3, 7, 40), (17, 3, 2, 3)),
    "empty": ((0, 6, 14, 14), (16, 6, 5, 5)),
}


def _block_inputs(case, dtype, integers):
    input_shape, weight_shape = BLOCK_CASES[case]
    if integers:  # exact sums: ties (first cell wins), zeros after the ReLU, equal indices
        make = lambda *shape: torch.randint(-2, 3, shape).to(dtype)  # noqa: E731
    else:
        make = lambda *shape: torch.randn(shape, dtype=dtype)  # noqa: E731
    return make(*input_shape), make(*weight_shape), make(weight_shape[0])


def _stock_block(x, w, b, grad_output):
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    output, indices = TF.max_pool2d(TF.relu(TF.conv2d(x, w, b)), 2, return_indices=True)
    return output.detach(), indices, torch.autograd.grad(output, (x, w, b), grad_output)


@pytest.mark.parametrize("integers", [False, True], ids=["random", "integers"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", BLOCK_CASES)
def test_block_algorithm_equals_reference_and_stock(dtype, case, algorithm, integers):
    x, w, b = _block_inputs(case, dtype, integers)
    output, indices = op._conv2d_relu_max_pool2d_forced(x, w, b, algorithm)
    ref_output, ref_indices = op._conv2d_relu_max_pool2d_forced(x, w, b, "reference")
    grad_output = torch.randn_like(output)
    stock_output, stock_indices, stock_grads = _stock_block(x, w, b, grad_output)
    for expected in (ref_output, stock_output):
        assert_close(output, expected)
    if integers:
        assert torch.equal(indices, ref_indices) and torch.equal(indices, stock_indices)
    # the backward from the same saved output and indices (the reference's)
    grads = op._conv2d_relu_max_pool2d_backward_forced(grad_output, ref_output, ref_indices, x, w,
                                                       [True] * 3, algorithm)
    ref_grads = op._conv2d_relu_max_pool2d_backward_forced(grad_output, ref_output, ref_indices, x,
                                                           w, [True] * 3, "reference")
    for grad, ref_grad, stock_grad in zip(grads, ref_grads, stock_grads):
        assert_close(grad, ref_grad)
        assert_close(grad, stock_grad)


def _lenet_args(batch, dtype):
    net = StockLeNet().to(dtype)
    return [torch.randn(batch, 1, 32, 32, dtype=dtype), *(p.detach() for p in net.parameters())]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("batch", [0, 1, 3, 16, 40])  # whole chunks of 16 images and a partial one
def test_lenet_algorithm_equals_reference_and_stock(dtype, batch, algorithm):
    args = _lenet_args(batch, dtype)
    logits, *activations = op._lenet_forced(*args, algorithm)
    ref_logits, *ref_activations = op._lenet_forced(*args, "reference")
    assert_close(logits, ref_logits)
    for activation, ref_activation in zip(activations, ref_activations):
        if activation.dtype == torch.uint8:  # window codes: float64 sums leave no near-ties
            assert dtype == torch.float32 or torch.equal(activation, ref_activation)
        else:
            assert_close(activation, ref_activation)
    net = StockLeNet().to(dtype)
    with torch.no_grad():
        for p, arg in zip(net.parameters(), args[1:]):
            p.copy_(arg)
    x = args[0].clone().requires_grad_()
    stock_logits = net(x)
    assert_close(logits, stock_logits.detach())
    grad_logits = torch.randn_like(logits)
    stock_grads = torch.autograd.grad(stock_logits, [x, *net.parameters()], grad_logits)
    weights = args[1::2]
    saved = [args[0], *weights, *ref_activations]
    grads = op._lenet_backward_forced(grad_logits, *saved, [True] * 11, algorithm)
    ref_grads = op._lenet_backward_forced(grad_logits, *saved, [True] * 11, "reference")
    for grad, ref_grad, stock_grad in zip(grads, ref_grads, stock_grads):
        assert_close(grad, ref_grad)
        assert_close(grad, stock_grad)


def test_the_ops_run_the_fused_algorithm():
    x, w, b = _block_inputs("lenet_block2", torch.float32, False)
    for ours, forced in zip(op.conv2d_relu_max_pool2d(x, w, b),
                            op._conv2d_relu_max_pool2d_forced(x, w, b, "fused")):
        assert torch.equal(ours, forced)
    args = _lenet_args(20, torch.float32)
    for ours, forced in zip(op.lenet(*args), op._lenet_forced(*args, "fused")):
        assert torch.equal(ours, forced)


def test_forcing_an_unknown_algorithm_raises():
    x, w, b = _block_inputs("odd", torch.float32, False)
    with pytest.raises(RuntimeError, match=r"_conv2d_relu_max_pool2d_forced: expected algorithm to "
                                           r"be one of reference, fused, but got 'fast'"):
        op._conv2d_relu_max_pool2d_forced(x, w, b, "fast")
    with pytest.raises(RuntimeError, match=r"_lenet_forced: expected algorithm to be one of "
                                           r"reference, fused, but got 'fast'"):
        op._lenet_forced(*_lenet_args(1, torch.float32), "fast")
