"""torch.autocast over lenet_ext: conv2d, linear and the fused ops compute in the autocast dtype, as
stock's conv2d and linear do (autocast's lower-precision list), and max_pool2d and relu follow their
input. Every output and gradient has the dtype stock's has under the same autocast, and the values
are stock's to a few units in the last place."""
import copy

import pytest
import torch
import torch.nn.functional as TF

import lenet_ext
from lenet_ext import functional as F
from lenet_ext.models import FusedLeNet, LeNet, StockLeNet

AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]


def small_network(nn):
    """A network of every module lenet_ext.nn has, from ``nn`` (lenet_ext.nn or torch.nn)."""
    return torch.nn.Sequential(nn.Conv2d(3, 8, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
                               torch.nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


# name: (ours, stock twin, input shape)
NETWORKS = {
    "LeNet": (LeNet, StockLeNet, (1, 32, 32)),
    "FusedLeNet": (FusedLeNet, StockLeNet, (1, 32, 32)),
    "Sequential": (lambda: small_network(lenet_ext.nn), lambda: small_network(torch.nn), (3, 8, 8)),
}


@pytest.fixture(params=AUTOCAST_DTYPES, ids=["bfloat16", "float16"])
def autocast_dtype(request):
    return request.param


def twins(name, device):
    """(ours, stock) with the same weights."""
    ours_cls, stock_cls, _ = NETWORKS[name]
    ours, stock = ours_cls().to(device), stock_cls().to(device)
    stock.load_state_dict(ours.state_dict())
    return ours, stock


def assert_close_to_stock(ours, stock, autocast_dtype, what):
    # Both sides compute each conv2d and linear in float32 and round its result once to the
    # autocast dtype, but add in different orders: a value next to a rounding boundary may round
    # the other way, one unit in the last place (eps: 2^-7 bfloat16, 2^-10 float16), which later
    # layers carry on, and the fused ops round only their results, not the layers between. So a
    # few units of the tensor's largest magnitude (a difference of large sums is absolute, not
    # relative to the small result). Measured: at most 1.4 eps (LeNet and the Sequential, 4 images,
    # 600 runs).
    assert ours.dtype == stock.dtype, f"{what}: ours {ours.dtype}, stock {stock.dtype}"
    eps = torch.finfo(autocast_dtype).eps
    scale = stock.detach().abs().max().item()
    torch.testing.assert_close(ours, stock, rtol=4 * eps, atol=4 * eps * scale, msg=what)


def train_step(model, input, target, device, autocast_dtype, backward_inside):
    """(output, input's gradient, the parameters' gradients) of one cross-entropy step with the
    forward under autocast, and the backward after it or, with ``backward_inside``, within it."""
    input = input.clone().requires_grad_()
    with torch.autocast(device, dtype=autocast_dtype):
        output = model(input)
        loss = TF.cross_entropy(output, target)
        if backward_inside:
            loss.backward()
    if not backward_inside:
        loss.backward()
    return output, input.grad, [parameter.grad for parameter in model.parameters()]


@pytest.mark.parametrize("backward_inside", [False, True],
                         ids=["backward after", "backward inside"])
@pytest.mark.parametrize("name", ["LeNet", "Sequential"])
def test_network_outputs_and_gradients_have_stock_dtypes_and_values(
        name, device, autocast_dtype, backward_inside):
    ours, stock = twins(name, device)
    # A few images: a value rounded the other way can tie or untie a pool window and move a
    # gradient entry, rarely (1 in 600 runs at 16 images, none in 600 at 4).
    input = torch.randn(4, *NETWORKS[name][2], device=device)
    target = torch.randint(0, 10, (4,), device=device)
    output, input_grad, grads = train_step(ours, input, target, device, autocast_dtype,
                                           backward_inside)
    stock_output, stock_input_grad, stock_grads = train_step(stock, input, target, device,
                                                             autocast_dtype, backward_inside)
    assert stock_output.dtype == autocast_dtype and stock_input_grad.dtype == torch.float32
    assert_close_to_stock(output, stock_output, autocast_dtype, "output")
    assert_close_to_stock(input_grad, stock_input_grad, autocast_dtype, "input gradient")
    for (key, _), grad, stock_grad in zip(ours.named_parameters(), grads, stock_grads):
        assert_close_to_stock(grad, stock_grad, autocast_dtype, f"{key} gradient")


def test_fused_lenet_forward_has_the_stock_dtype_and_values(device, autocast_dtype):
    ours, stock = twins("FusedLeNet", device)
    input = torch.randn(16, 1, 32, 32, device=device)
    with torch.autocast(device, dtype=autocast_dtype):
        output, stock_output = ours(input), stock(input)
    assert stock_output.dtype == autocast_dtype
    assert_close_to_stock(output, stock_output, autocast_dtype, "output")


@pytest.mark.parametrize("backward_inside", [False, True],
                         ids=["backward after", "backward inside"])
def test_fused_lenet_is_the_fused_op_on_tensors_cast_by_hand(device, autocast_dtype,
                                                              backward_inside):
    # The fused op rounds only its results, not each layer's as stock does, so a near-tie in a
    # pool or at a ReLU may go the other way and move a gradient entry: its gradients are not
    # stock's to a few units (their accuracy is test_mixed_precision's). What autocast adds, the
    # casts, is checked to the bit, and the dtypes against stock's.
    ours, stock = twins("FusedLeNet", device)
    by_hand = copy.deepcopy(ours).to(autocast_dtype)
    input = torch.randn(16, 1, 32, 32, device=device)
    target = torch.randint(0, 10, (16,), device=device)
    output, input_grad, grads = train_step(ours, input, target, device, autocast_dtype,
                                           backward_inside)
    stock_output, stock_input_grad, stock_grads = train_step(stock, input, target, device,
                                                             autocast_dtype, backward_inside)
    hand_output, hand_input_grad, hand_grads = train_step(
        by_hand, input.to(autocast_dtype), target, device, autocast_dtype, backward_inside)
    assert output.dtype == stock_output.dtype and input_grad.dtype == stock_input_grad.dtype
    assert [grad.dtype for grad in grads] == [grad.dtype for grad in stock_grads]
    assert torch.equal(output, hand_output) and torch.equal(input_grad, hand_input_grad.float())
    for (key, _), grad, hand_grad in zip(ours.named_parameters(), grads, hand_grads):
        assert torch.equal(grad, hand_grad.float()), key


@pytest.mark.parametrize("name", NETWORKS)
def test_autocast_disabled_inside_keeps_float32(name, device, autocast_dtype):
    ours, stock = twins(name, device)
    input = torch.randn(4, *NETWORKS[name][2], device=device)
    with torch.autocast(device, dtype=autocast_dtype):
        with torch.autocast(device, enabled=False):
            output, stock_output = ours(input), stock(input)
    assert output.dtype == stock_output.dtype == torch.float32
    torch.testing.assert_close(output, stock_output, rtol=1e-4, atol=1e-5)


def _conv2d_args(device, dtype):
    return (torch.randn(2, 3, 8, 8, device=device, dtype=dtype),
            torch.randn(4, 3, 3, 3, device=device, dtype=dtype),
            torch.randn(4, device=device, dtype=dtype)), {"padding": 1}


def _linear_args(device, dtype):
    return (torch.randn(5, 7, device=device, dtype=dtype),
            torch.randn(3, 7, device=device, dtype=dtype),
            torch.randn(3, device=device, dtype=dtype)), {}


def _planes(device, dtype):
    return (torch.randn(2, 3, 8, 8, device=device, dtype=dtype),), {}


# name: (ours, stock, (tensors, keyword arguments) for a device and dtype, cast by autocast)
FUNCTIONS = {
    "conv2d": (F.conv2d, TF.conv2d, _conv2d_args, True),
    "linear": (F.linear, TF.linear, _linear_args, True),
    "max_pool2d": (lambda x: F.max_pool2d(x, 2), lambda x: TF.max_pool2d(x, 2), _planes, False),
    "relu": (F.relu, TF.relu, _planes, False),
}


def forward_backward(fn, tensors, kwargs, device, autocast_dtype):
    """fn's output under autocast, and the gradients of a random projection of it."""
    inputs = [t.clone().requires_grad_() for t in tensors]
    with torch.autocast(device, dtype=autocast_dtype):
        output = fn(*inputs, **kwargs)
    projection = torch.randn(output.shape, generator=torch.Generator().manual_seed(0))
    (output.float() * projection.to(device)).sum().backward()
    return output, [t.grad for t in inputs]


@pytest.mark.parametrize("tensor_dtype", [torch.float32, torch.float64, *AUTOCAST_DTYPES],
                         ids=["float32", "float64", "bfloat16", "float16"])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_functional_op_casts_as_torch_nn_functional(name, device, autocast_dtype, tensor_dtype):
    ours_fn, stock_fn, make_args, casts = FUNCTIONS[name]
    # conv2d and linear compute in the autocast dtype, but for float64, which autocast leaves alone
    computes_in = autocast_dtype if casts and tensor_dtype != torch.float64 else tensor_dtype
    tensors, kwargs = make_args(device, tensor_dtype)
    (output, grads), (stock_output, stock_grads) = (
        forward_backward(fn, tensors, kwargs, device, autocast_dtype) for fn in (ours_fn, stock_fn))
    assert stock_output.dtype == computes_in
    assert_close_to_stock(output, stock_output, autocast_dtype, "output")
    for i, (grad, stock_grad) in enumerate(zip(grads, stock_grads)):
        assert_close_to_stock(grad, stock_grad, autocast_dtype, f"gradient {i}")


def test_conv2d_relu_max_pool2d_is_the_op_on_tensors_cast_by_hand(autocast_dtype):
    # CPU only, as the op. Checked as FusedLeNet is: a near-tie in a window may pick another
    # argmax than stock's, and so move a gradient entry.
    def fused(input, weight, bias):
        return torch.ops.lenet_ext.conv2d_relu_max_pool2d(input, weight, bias)[0]

    def stock(input, weight, bias):
        return TF.max_pool2d(TF.relu(TF.conv2d(input, weight, bias)), 2)

    tensors = (torch.randn(2, 3, 12, 12), torch.randn(4, 3, 5, 5), torch.randn(4))
    output, grads = forward_backward(fused, tensors, {}, "cpu", autocast_dtype)
    stock_output, stock_grads = forward_backward(stock, tensors, {}, "cpu", autocast_dtype)
    hand_output, hand_grads = forward_backward(fused, [t.to(autocast_dtype) for t in tensors], {},
                                               "cpu", autocast_dtype)
    assert_close_to_stock(output, stock_output, autocast_dtype, "output")
    assert torch.equal(output, hand_output)
    for grad, stock_grad, hand_grad in zip(grads, stock_grads, hand_grads):
        assert grad.dtype == stock_grad.dtype == torch.float32
        assert torch.equal(grad, hand_grad.float())
