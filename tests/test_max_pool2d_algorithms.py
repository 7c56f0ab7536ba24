"""Each max_pool2d CPU algorithm forced on every shape of a grid: where it claims the shape (csrc/
cpu/max_pool2d/select.cpp) its output and indices must equal the reference kernel's and stock's,
and the gradient through its indices stock's; where it does not, forcing it must raise. And the
algorithm LeNet's pools take, so that a lost fast path fails here."""
import pytest
import torch
import torch.nn.functional as TF

from test_max_pool2d import CONFIGS

op = torch.ops.lenet_ext
ALGORITHMS = ["reference", "general", "2x2"]


def _pair(v):
    return list(v) if isinstance(v, tuple) else [v, v]


def _case(kernel, stride, padding, dilation, ceil_mode, size, leading=(2, 3)):
    return dict(leading=leading, size=size, args=(_pair(kernel), _pair(stride or kernel),
                                                  _pair(padding), _pair(dilation), ceil_mode))


CASES = {f"config_{i}": _case(*config) for i, config in enumerate(CONFIGS)}
CASES.update({
    # 2x2 windows: vector blocks of every width (an overlapping last block), the scalar rows
    # narrower than a vector, odd sizes, unbatched input, LeNet's pools
    **{f"2x2_{h}x{w}": _case(2, 2, 0, 1, False, (h, w)) for h, w in
       [(2, 2), (4, 6), (6, 8), (8, 16), (10, 10), (12, 34), (28, 28), (9, 67), (5, 33)]},
    "2x2_unbatched": _case(2, 2, 0, 1, False, (8, 20), leading=(3,)),
    "2x2_ceil_even": _case(2, 2, 0, 1, True, (8, 10)),
    "2x2_ceil_odd": _case(2, 2, 0, 1, True, (7, 9)),  # a window over the edge: not 2x2's
    "2x2_stride_1": _case(2, 1, 0, 1, False, (7, 9)),
    "2x2_padded": _case(2, 2, 1, 1, False, (7, 9)),
    "2x2_dilated": _case(2, 2, 0, 2, False, (9, 9)),
    "lenet_pool1": _case(2, 2, 0, 1, False, (28, 28), leading=(3, 6)),
    "lenet_pool2": _case(2, 2, 0, 1, False, (10, 10), leading=(3, 16)),
})


def _input(case, dtype, ties=False):
    shape = (*case["leading"], *case["size"])
    if ties:  # few distinct values, some NaN: ties keep the first cell, the last NaN wins
        x = torch.randint(-3, 3, shape).to(dtype)
        x[torch.rand(shape) < 0.05] = float("nan")
        return x
    return torch.randn(shape, dtype=dtype)


def _claimed(algorithm, x, args):
    try:
        return op._max_pool2d_forced(x, *args, algorithm)
    except RuntimeError as error:
        assert f"algorithm '{algorithm}' does not claim the forward" in str(error)
        return None


def _stock_grad(x, args, grad_output):
    kernel, stride, padding, dilation, ceil_mode = args
    x = x.detach().requires_grad_()
    out = TF.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    return torch.autograd.grad(out, x, grad_output)[0]


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties_nan"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", CASES)
def test_forced_algorithm_equals_reference_and_stock(dtype, case, algorithm, ties):
    x, args = _input(CASES[case], dtype, ties), CASES[case]["args"]
    ours = _claimed(algorithm, x, args)
    if ours is None:
        return
    kernel, stride, padding, dilation, ceil_mode = args
    stock = TF.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    for expected in (op._max_pool2d_forced(x, *args, "reference"), stock):
        torch.testing.assert_close(ours[0], expected[0], rtol=0, atol=0, equal_nan=True)
        assert torch.equal(ours[1], expected[1])
    grad_output = torch.randn_like(ours[0])
    torch.testing.assert_close(op.max_pool2d_backward(grad_output, ours[1], list(x.shape)),
                               _stock_grad(x, args, grad_output))


def test_every_algorithm_claims_shapes_of_the_grid():
    for dtype in (torch.float32, torch.float64):
        for algorithm in ALGORITHMS:
            claimed = sum(_claimed(algorithm, _input(case, dtype), case["args"]) is not None
                          for case in CASES.values())
            assert claimed >= 10, (algorithm, dtype, claimed)
        refused = sum(_claimed("2x2", _input(case, dtype), case["args"]) is None
                      for case in CASES.values())
        assert refused >= 10, (dtype, refused)


@pytest.mark.parametrize("batch", [1, 64, 256])
@pytest.mark.parametrize("planes, size", [(6, 28), (16, 10)], ids=["pool1", "pool2"])
def test_lenet_shapes_take_their_fast_paths(dtype, batch, planes, size):
    x = torch.empty(batch, planes, size, size, dtype=dtype)
    assert op._max_pool2d_algorithm(x, [2, 2], [2, 2], [0, 0], [1, 1], False) == "2x2"


def test_forcing_an_unknown_algorithm_raises():
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(RuntimeError, match=r"_max_pool2d_forced: expected algorithm to be one of "
                                           r"reference, general, 2x2, but got 'fast'"):
        op._max_pool2d_forced(x, [2, 2], [2, 2], [0, 0], [1, 1], False, "fast")
