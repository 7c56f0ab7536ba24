"""bfloat16 and float16: every op and every gradient against a float64 result, and against stock.

The inputs are rounded to the low dtype first, and the float64 reference runs stock's ops on
exactly those values, so the only error measured is the op's own. Errors are relative Frobenius
norms. The bound each result must meet:

    error(ours) <= error(stock) + 2 * error(ours in float32)

Why: our result is the float32 result rounded once (products accumulated in float32). Rounding to
nearest is the least error any low-precision answer can have, so stock's error is at least that of
the float64 result rounded. Ours can only exceed it where the float32 value lies across a rounding
boundary from the float64 one, and then by at most twice its float32 error (element by element,
hence for the norm too). So a second rounding, a low-precision accumulator or a wrong element fails,
while the float32 sum's own error, 10^4 times below a bfloat16 unit, is all the slack there is.
max_pool2d and relu forward are exact (they compare and copy), and so is a gradient that only
moves values (relu, pools whose windows do not overlap).

A whole network is a chain of such roundings: a value rounded the other way in one layer moves
the next layers' roundings too, so two implementations of equal quality end within a few percent
of each other's error, either way (the per-op LeNet at batch 64: at most 1.04x stock's over 60
seeds and both dtypes; the fused one, which rounds only its results, 0.01-1.0x). There the bound
is MODEL_RATIO x stock's error: a systematic loss, such as results rounded by truncation, exceeds
it. (At batch 8 the ten logits of a few images make the ratio noisy: up to 1.14x.)
"""
import pytest
import torch
import torch.nn.functional as TF

from lenet_ext import functional as F
from lenet_ext.models import FusedLeNet, LeNet, StockLeNet

LOW = [torch.bfloat16, torch.float16]


@pytest.fixture(params=LOW, ids=["bfloat16", "float16"])
def low(request):
    return request.param


def error(result, reference):
    scale = reference.norm().item()
    return (result.double() - reference).norm().item() / (scale if scale > 0 else 1.0)


def outputs_and_grads(fn, inputs, grad_outputs=None):
    """The floating outputs of fn(*inputs) and the gradients of <outputs, grad_outputs> w.r.t. every
    floating input (grad_outputs made random in the outputs' dtype when not given)."""
    inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    outputs = fn(*inputs)
    outputs = [o for o in (outputs if isinstance(outputs, (tuple, list)) else [outputs])
               if o.is_floating_point()]
    if grad_outputs is None:
        grad_outputs = [torch.randn(o.shape, device=o.device).to(o.dtype) for o in outputs]
    wanted = [x for x in inputs if x.requires_grad]
    grads = torch.autograd.grad(outputs, wanted, [g.to(o.dtype) for g, o in zip(grad_outputs, outputs)],
                                allow_unused=True)
    return [o.detach() for o in outputs], list(grads), grad_outputs


MODEL_RATIO = 1.1


def assert_no_worse_than_stock(ours, stock, inputs, low, model=False):
    """Each output and gradient of ours in `low` meets the module's bound against float64 (the
    one for a whole network when `model`)."""
    inputs = [x.to(low) if x.is_floating_point() else x for x in inputs]
    mine, my_grads, grad_outputs = outputs_and_grads(ours, inputs)
    theirs, their_grads, _ = outputs_and_grads(stock, inputs, grad_outputs)
    as64 = [x.double() if x.is_floating_point() else x for x in inputs]
    exact, exact_grads, _ = outputs_and_grads(stock, as64, grad_outputs)
    as32 = [x.float() if x.is_floating_point() else x for x in inputs]
    wide, wide_grads, _ = outputs_and_grads(ours, as32, grad_outputs)
    names = [f"output {i}" for i in range(len(mine))] + [f"gradient {i}" for i in range(len(my_grads))]
    for name, m, t, e, w in zip(names, mine + my_grads, theirs + their_grads, exact + exact_grads,
                                wide + wide_grads):
        assert m.dtype == low, f"{name}: dtype {m.dtype}, expected {low}"
        ours_error, stock_error, float32_error = error(m, e), error(t, e), error(w, e)
        bound = MODEL_RATIO * stock_error if model else stock_error + 2 * float32_error
        assert ours_error <= bound, (
            f"{name}: error {ours_error:.3e} against float64, stock's {stock_error:.3e}, "
            f"ours in float32 {float32_error:.3e}")
    return mine, my_grads, theirs, their_grads, exact, exact_grads


def randn(*shape, device="cpu"):
    return torch.randn(shape, device=device)


CONV2D = {  # input, weight, bias shapes and stride, padding, dilation, groups
    "lenet-conv1": ((4, 1, 32, 32), (6, 1, 5, 5), True, 1, 0, 1, 1),
    "lenet-conv2": ((4, 6, 14, 14), (16, 6, 5, 5), True, 1, 0, 1, 1),
    "3x3-padded": ((3, 16, 12, 12), (32, 16, 3, 3), True, 1, 1, 1, 1),
    "wide-3x3": ((2, 64, 8, 8), (64, 64, 3, 3), False, 1, 1, 1, 1),
    "1x1": ((2, 64, 7, 7), (32, 64, 1, 1), True, 1, 0, 1, 1),
    "7x7-stride2": ((2, 3, 30, 30), (16, 3, 7, 7), True, 2, 3, 1, 1),
    "dilated": ((2, 4, 15, 15), (8, 4, 3, 3), True, 1, 2, 2, 1),
    "grouped": ((2, 8, 11, 11), (12, 4, 3, 3), True, (2, 1), (1, 0), 1, 2),
}


@pytest.mark.parametrize("case", CONV2D)
def test_conv2d(case, low, device):
    input, weight, bias, stride, padding, dilation, groups = CONV2D[case]
    inputs = [randn(*input, device=device), randn(*weight, device=device)]
    if bias:
        inputs.append(randn(weight[0], device=device))

    def op(module):
        return lambda *t: module.conv2d(*t, stride=stride, padding=padding, dilation=dilation,
                                        groups=groups)
    assert_no_worse_than_stock(op(F), op(TF), inputs, low)


LINEAR = {  # input shape, out_features, bias
    "lenet-fc1": ((64, 400), 120, True),
    "lenet-fc3": ((64, 84), 10, True),
    "one-row": ((1, 300), 50, True),
    "1-d": ((37,), 11, True),
    "3-d": ((3, 5, 40), 24, False),
    "wide": ((16, 2048), 512, True),
}


@pytest.mark.parametrize("case", LINEAR)
def test_linear(case, low, device):
    input, out_features, bias = LINEAR[case]
    inputs = [randn(*input, device=device), randn(out_features, input[-1], device=device)]
    if bias:
        inputs.append(randn(out_features, device=device))
    assert_no_worse_than_stock(F.linear, TF.linear, inputs, low)


MAX_POOL2D = {  # input shape, kernel_size, stride, padding, dilation, ceil_mode, windows overlap
    "lenet-2x2": ((4, 6, 28, 28), 2, 2, 0, 1, False, False),
    "3x3-stride2": ((2, 8, 13, 13), 3, 2, 0, 1, False, True),
    "padded-ceil": ((2, 3, 10, 9), (3, 2), (2, 1), 1, 1, True, True),
    "dilated": ((2, 3, 12, 12), 2, 1, 0, 2, False, True),
}


@pytest.mark.parametrize("case", MAX_POOL2D)
def test_max_pool2d(case, low, device):
    shape, kernel_size, stride, padding, dilation, ceil_mode, overlap = MAX_POOL2D[case]

    def op(module):
        return lambda x: module.max_pool2d(x, kernel_size, stride, padding, dilation,
                                           ceil_mode=ceil_mode, return_indices=True)
    mine, grads, theirs, their_grads, exact, exact_grads = assert_no_worse_than_stock(
        op(F), op(TF), [randn(*shape, device=device)], low)
    assert torch.equal(mine[0].double(), exact[0])  # the maximum of low-precision values is one
    x = randn(*shape, device=device).to(low)
    torch.testing.assert_close(F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode,
                                            return_indices=True)[1],
                               TF.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode,
                                             return_indices=True)[1], rtol=0, atol=0)
    if not overlap:  # each input cell takes at most one gradient: moved, not added
        assert torch.equal(grads[0].double(), exact_grads[0])


@pytest.mark.parametrize("shape", [(7,), (4, 6, 28, 28), (3, 0, 2)], ids=str)
def test_relu_is_exact(shape, low, device):
    x = randn(*shape, device=device).to(low).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    y, y64 = F.relu(x), TF.relu(x64)
    assert y.dtype == low and torch.equal(y.double(), y64)
    grad = randn(*shape, device=device).to(low)
    (gx,), (gx64,) = torch.autograd.grad(y, x, grad), torch.autograd.grad(y64, x64, grad.double())
    assert gx.dtype == low and torch.equal(gx.double(), gx64)


def test_nan_and_inf_propagate_as_in_stock(low, device):
    x = torch.tensor([[[[float("nan"), 1.0], [-float("inf"), 2.0]],
                       [[float("inf"), -1.0], [0.5, -0.0]]]], device=device).to(low)
    for ours, stock in ((F.relu(x), TF.relu(x)),
                        (F.max_pool2d(x, 2), TF.max_pool2d(x, 2)),
                        (F.conv2d(x, torch.ones(1, 2, 1, 1, device=device).to(low)),
                         TF.conv2d(x, torch.ones(1, 2, 1, 1, device=device).to(low)))):
        torch.testing.assert_close(ours, stock, rtol=0, atol=0, equal_nan=True)


# The fused ops (CPU): against stock's unfused chain in the same dtype.

def test_conv2d_relu_max_pool2d(low):
    def stock(x, w, b):
        return TF.max_pool2d(TF.relu(TF.conv2d(x, w, b)), 2)
    assert_no_worse_than_stock(lambda x, w, b: torch.ops.lenet_ext.conv2d_relu_max_pool2d(x, w, b)[0],
                               stock, [randn(4, 6, 14, 14), randn(16, 6, 5, 5), randn(16)], low)


@pytest.mark.parametrize("model", [LeNet, FusedLeNet])
def test_lenet(model, low):
    ours = model()
    stock = StockLeNet()
    stock.load_state_dict(ours.state_dict())
    names = [name for name, _ in ours.named_parameters()]

    def run(network):
        return lambda x, *parameters: torch.func.functional_call(
            network, dict(zip(names, parameters)), (x,))
    assert_no_worse_than_stock(run(ours), run(stock),
                               [randn(64, 1, 32, 32)] + [p.detach() for p in ours.parameters()], low,
                               model=True)


def test_every_value_converts_exactly_and_results_round_as_torch(low):
    # every 16-bit pattern through an op that only moves values: widened and narrowed back unchanged
    values = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(low)
    moved = F.max_pool2d(values.reshape(1, 1, 256, 256), 1).flatten()
    nan = values.isnan()
    assert torch.equal(moved.isnan(), nan)
    assert torch.equal(moved.view(torch.int16)[~nan], values.view(torch.int16)[~nan])
    # x + b, summed in float32 and rounded once, as torch rounds it, over the whole exponent range
    # and past float16's largest value (65504) and below its smallest (6e-8)
    count = 1 << 14
    scale = torch.logspace(-40, 40, count, base=2.0)
    x, b = (torch.randn(count) * scale).to(low), (torch.randn(count) * scale * 1e-3).to(low)
    x[:4] = torch.tensor([float("inf"), -float("inf"), 65504.0, 3e-8])
    b[:4] = torch.tensor([1.0, 1.0, 16.0, 1e-8])
    ours = F.conv2d(x.reshape(1, count, 1, 1), torch.ones(count, 1, 1, 1).to(low), b, groups=count)
    torch.testing.assert_close(ours.flatten(), (x.float() + b.float()).to(low), rtol=0, atol=0,
                               equal_nan=True)


def test_relu_and_its_gradient_of_every_value_are_stocks(low):
    values = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(low)
    torch.testing.assert_close(F.relu(values), TF.relu(values), rtol=0, atol=0, equal_nan=True)
    assert torch.equal(F.relu(values).view(torch.int16) == 0, TF.relu(values).view(torch.int16) == 0)
    grad = torch.randn(values.shape).to(low)
    torch.testing.assert_close(torch.ops.lenet_ext.relu_backward(grad, values),
                               torch.ops.aten.threshold_backward(grad, values, 0), rtol=0, atol=0)


@pytest.mark.parametrize("algorithm", ["reference", "general", "2x2"])
def test_every_max_pool2d_algorithm_pools_low_precision_exactly(algorithm, low):
    # more planes than one widened piece (kWidenedPlanes input elements), and odd ones
    x = torch.randn(3, 37, 24, 22).to(low)
    x[0, 0, :2, :2] = float("nan")
    x[1, 1, :2, :2] = 1.0  # ties: the first of equal values wins, as in stock
    output, indices = torch.ops.lenet_ext._max_pool2d_forced(x, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                             algorithm)
    expected, expected_indices = TF.max_pool2d(x, 2, return_indices=True)
    torch.testing.assert_close(output, expected, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(indices, expected_indices)
    grad = torch.randn(output.shape).to(low)
    torch.testing.assert_close(torch.ops.lenet_ext.max_pool2d_backward(grad, indices, list(x.shape)),
                               torch.ops.aten.max_pool2d_with_indices_backward(
                                   grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices),
                               rtol=0, atol=0)
