"""The fused ops and FusedLeNet: conv2d_relu_max_pool2d is max_pool2d(relu(conv2d(x, w, b)), 2)
(output, indices and gradients; ties, NaN and all-negative inputs included), lenet is the whole
tutorial network, and FusedLeNet is LeNet with the same state_dict, results and training steps."""
import pytest
import torch
import torch.nn.functional as TF
from torch.library import opcheck

import lenet_ext
from lenet_ext.models import FusedLeNet, LeNet, StockLeNet
from helpers import GRAD_TOL, OUTPUT_TOL, assert_matches_stock

ops = torch.ops.lenet_ext


def _stock_block(input, weight, bias):
    return TF.max_pool2d(TF.relu(TF.conv2d(input, weight, bias)), 2, return_indices=True)


def _block(input, weight, bias):
    return ops.conv2d_relu_max_pool2d(input, weight, bias)


def _tolerances(dtype, output=True):
    return (OUTPUT_TOL if output else GRAD_TOL) if dtype == torch.float32 else {}


def _twins(dtype, device="cpu"):
    fused = FusedLeNet().to(device, dtype)
    stock = StockLeNet().to(device, dtype)
    stock.load_state_dict(fused.state_dict())
    return fused, stock


def _lenet_args(batch, dtype=torch.float32):
    net = StockLeNet().to(dtype)
    return [torch.randn(batch, 1, 32, 32, dtype=dtype), *(p.detach() for p in net.parameters())]


def _lenet_backward_args(batch, dtype=torch.float32, mask=(True,) * 11):
    args = _lenet_args(batch, dtype)
    _, *activations = ops.lenet(*args)
    weights = args[1::2]
    return [torch.randn(batch, 10, dtype=dtype), args[0], *weights, *activations, list(mask)]


# conv2d_relu_max_pool2d ---------------------------------------------------------------------------

# (input shape, weight shape): LeNet's two blocks, an odd conv output (last row/column unpooled),
# several channels in and out, batch 0
BLOCK_CASES = [((3, 1, 32, 32), (6, 1, 5, 5)), ((3, 6, 14, 14), (16, 6, 5, 5)),
               ((2, 3, 9, 8), (4, 3, 3, 2)), ((1, 2, 4, 4), (3, 2, 3, 3)), ((0, 6, 14, 14), (16, 6, 5, 5))]


@pytest.mark.parametrize("input_shape, weight_shape", BLOCK_CASES)
def test_block_matches_stock(input_shape, weight_shape, dtype):
    x = torch.randn(input_shape, dtype=dtype, requires_grad=True)
    w = torch.randn(weight_shape, dtype=dtype, requires_grad=True)
    b = torch.randn(weight_shape[0], dtype=dtype, requires_grad=True)
    assert_matches_stock(lambda *a: _block(*a)[0], lambda *a: _stock_block(*a)[0], [x, w, b],
                         **_tolerances(dtype))
    assert torch.equal(_block(x, w, b)[1], _stock_block(x, w, b)[1])


def _inputs_with(case, dtype):
    """Block inputs whose conv outputs have many exact ties, are all negative, or hold NaN."""
    x = torch.randn(2, 2, 10, 10, dtype=dtype)
    w = torch.randn(3, 2, 3, 3, dtype=dtype)
    b = torch.randn(3, dtype=dtype)
    if case == "ties":  # small integers: sums are exact, equal values are common
        x, w, b = x.round().clamp(-1, 1), w.round().clamp(-1, 1), b.round()
    elif case == "negative everywhere":
        b = b.abs() * 0 - 1000  # every conv output < 0: outputs 0, no gradient anywhere
    elif case == "nan in a channel":
        b[1] = float("nan")  # channel 1 NaN everywhere: the last cell of each window wins
    elif case == "nan in the input":
        x[0, 1, 4, 5] = float("nan")
    return [t.requires_grad_() for t in (x, w, b)]


@pytest.mark.parametrize("case", ["ties", "negative everywhere", "nan in a channel", "nan in the input"])
def test_block_ties_nan_and_negative_inputs_match_stock(case, dtype):
    x, w, b = _inputs_with(case, dtype)
    (output, indices), (expected, expected_indices) = _block(x, w, b), _stock_block(x, w, b)
    torch.testing.assert_close(output, expected, equal_nan=True, **_tolerances(dtype))
    assert torch.equal(indices, expected_indices)
    grad = torch.randn_like(output)
    grads = torch.autograd.grad(output, (x, w, b), grad)
    expected_grads = torch.autograd.grad(expected, (x, w, b), grad)
    for name, ours, stock in zip(("input", "weight", "bias"), grads, expected_grads):
        torch.testing.assert_close(ours, stock, equal_nan=True, msg=lambda m: f"grad {name}: {m}",
                                   **_tolerances(dtype, output=False))
    if case == "negative everywhere":
        assert output.eq(0).all() and all(g.eq(0).all() for g in grads)


def test_block_backward_scatters_hand_made_indices_anywhere_in_the_plane(dtype):
    # The kernel writes whole windows when each index lies in its window; others take torch's
    # scatter-add: the gradient of each output that passed the ReLU lands where its index points.
    x, w, b = (torch.randn(s, dtype=dtype) for s in ((2, 3, 9, 11), (4, 3, 3, 3), (4,)))
    output, indices = _block(x, w, b)
    indices = indices.flip(-1)  # each points into another window of the plane
    grad = torch.randn_like(output)
    grads = ops.conv2d_relu_max_pool2d_backward(grad, output, indices, x, w, [True] * 3)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    conv = TF.conv2d(x, w, b)
    passed = torch.where(output <= 0, torch.zeros_like(grad), grad)
    grad_conv = torch.zeros_like(conv).flatten(2).scatter_add_(2, indices.flatten(2), passed.flatten(2))
    expected = torch.autograd.grad(conv, (x, w, b), grad_conv.view_as(conv))
    for ours, reference in zip(grads, expected):
        torch.testing.assert_close(ours, reference, **_tolerances(dtype, output=False))


def test_block_gradcheck():
    opts = dict(dtype=torch.float64, requires_grad=True)
    x, w, b = torch.randn(2, 2, 7, 8, **opts), torch.randn(3, 2, 3, 3, **opts), torch.randn(3, **opts)
    assert torch.autograd.gradcheck(lambda *a: _block(*a)[0], (x, w, b))


@pytest.mark.parametrize("mask", [[True, True, True], [True, False, False], [False, True, True],
                                  [False, False, True]])
def test_block_backward_computes_only_what_output_mask_selects(mask, dtype):
    x, w, b = (torch.randn(s, dtype=dtype) for s in ((2, 3, 8, 8), (4, 3, 3, 3), (4,)))
    output, indices = _block(x, w, b)
    grad = torch.randn_like(output)
    full = ops.conv2d_relu_max_pool2d_backward(grad, output, indices, x, w, [True] * 3)
    masked = ops.conv2d_relu_max_pool2d_backward(grad, output, indices, x, w, mask)
    for wanted, ours, reference in zip(mask, masked, full):
        assert (ours is not None) == wanted
        if wanted:
            assert torch.equal(ours, reference)


def test_block_opcheck(dtype):
    opts = dict(dtype=dtype, requires_grad=True)
    x, w, b = torch.randn(2, 2, 9, 8, **opts), torch.randn(3, 2, 3, 3, **opts), torch.randn(3, **opts)
    opcheck(ops.conv2d_relu_max_pool2d, (x, w, b))
    output, indices = _block(x.detach(), w.detach(), b.detach())
    grad = torch.randn_like(output)
    for mask in ([True, True, True], [False, True, False]):
        opcheck(ops.conv2d_relu_max_pool2d_backward,
                (grad, output, indices, x.detach(), w.detach(), mask))


# lenet ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 7, 64, 0])
def test_fused_lenet_matches_stock(batch, device, dtype):
    fused, stock = _twins(dtype, device)
    x = torch.randn(batch, 1, 32, 32, device=device, dtype=dtype, requires_grad=True)
    params = list(zip(fused.parameters(), stock.parameters()))
    output, expected = fused(x), stock(x)
    torch.testing.assert_close(output, expected, **_tolerances(dtype))
    grad = torch.randn_like(output)
    grads = torch.autograd.grad(output, [x, *(p for p, _ in params)], grad)
    expected_grads = torch.autograd.grad(expected, [x, *(p for _, p in params)], grad)
    names = ["input", *(n for n, _ in fused.named_parameters())]
    for name, ours, reference in zip(names, grads, expected_grads):
        torch.testing.assert_close(ours, reference, msg=lambda m: f"grad {name}: {m}",
                                   **_tolerances(dtype, output=False))


def _plane_offsets(codes, conv_w):
    """Window codes (dy * 2 + dx) of a 2x2 stride-2 pool -> offsets into the conv plane."""
    out_h, out_w = codes.shape[-2:]
    oh = torch.arange(out_h).view(-1, 1)
    ow = torch.arange(out_w)
    codes = codes.long()
    return (2 * oh + codes // 2) * conv_w + 2 * ow + codes % 2


def test_lenet_activations_are_the_stock_networks():
    args = _lenet_args(5)
    logits, pool1, pool1_indices, pool2, pool2_indices, fc1_relu, fc2_relu = ops.lenet(*args)
    x, w1, b1, w2, b2, fw1, fb1, fw2, fb2, fw3, fb3 = args
    expected_pool1, expected_indices1 = _stock_block(x, w1, b1)
    expected_pool2, expected_indices2 = _stock_block(expected_pool1, w2, b2)
    expected_fc1 = TF.relu(TF.linear(expected_pool2.flatten(1), fw1, fb1))
    expected_fc2 = TF.relu(TF.linear(expected_fc1, fw2, fb2))
    for ours, expected in ((pool1, expected_pool1), (pool2, expected_pool2), (fc1_relu, expected_fc1),
                           (fc2_relu, expected_fc2), (logits, TF.linear(expected_fc2, fw3, fb3))):
        torch.testing.assert_close(ours, expected, **OUTPUT_TOL)
    # lenet keeps each argmax as its window code dy * 2 + dx, max_pool2d as an offset in the plane
    assert pool1_indices.dtype == pool2_indices.dtype == torch.uint8
    assert torch.equal(_plane_offsets(pool1_indices, 28), expected_indices1)
    assert torch.equal(_plane_offsets(pool2_indices, 10), expected_indices2)


def test_lenet_gradcheck():
    args = [t.requires_grad_() for t in _lenet_args(2, torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: ops.lenet(*a)[0], args, fast_mode=True)


# which gradients are wanted: all, one parameter deep down or near the top, the input only, none
LENET_MASKS = [[True] * 11, [False, True] + [False] * 9, [False] * 9 + [True, False],
               [True] + [False] * 10, [False] * 11]


@pytest.mark.parametrize("mask", LENET_MASKS, ids=["all", "conv1_weight", "fc3_weight", "input", "none"])
def test_lenet_backward_computes_only_what_output_mask_selects(mask):
    args = _lenet_backward_args(20)
    full = ops.lenet_backward(*args[:-1], [True] * 11)
    masked = ops.lenet_backward(*args[:-1], mask)
    for wanted, ours, reference in zip(mask, masked, full):
        assert (ours is not None) == wanted
        if wanted:
            assert torch.equal(ours, reference)


def test_lenet_opcheck(dtype):
    args = [t.requires_grad_() for t in _lenet_args(3, dtype)]
    opcheck(ops.lenet, args)
    for mask in LENET_MASKS[:3]:
        opcheck(ops.lenet_backward, _lenet_backward_args(3, dtype, mask))


def test_torch_compile_fullgraph_equals_eager():
    fused, _ = _twins(torch.float32)
    x = torch.randn(4, 1, 32, 32)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    expected = fused(x)
    output = compiled(x)
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    grads = torch.autograd.grad(output.sum(), list(fused.parameters()))
    expected_grads = torch.autograd.grad(expected.sum(), list(fused.parameters()))
    for ours, reference in zip(grads, expected_grads):
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)


def test_state_dict_round_trips_between_lenet_fused_and_stock():
    x = torch.randn(3, 1, 32, 32)
    lenet = LeNet()
    fused, stock, back = FusedLeNet(), StockLeNet(), LeNet()
    fused.load_state_dict(lenet.state_dict())
    stock.load_state_dict(fused.state_dict())
    back.load_state_dict(stock.state_dict())
    for net in (fused, stock, back):
        torch.testing.assert_close(net(x), lenet(x), **OUTPUT_TOL)
    assert repr(fused) == repr(lenet).replace("LeNet", "FusedLeNet", 1)


def test_bitwise_the_same_with_1_and_2_threads():
    # 37 images: several chunks of the conv blocks and a partial last one
    args = [t.requires_grad_() for t in _lenet_args(37)]
    block_args = [torch.randn(37, 6, 14, 14, requires_grad=True), args[3], args[4]]
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            logits = ops.lenet(*args)[0]
            block = _block(*block_args)[0]
            results.append([logits, block, *torch.autograd.grad(logits.sum(), args),
                            *torch.autograd.grad(block.sum(), block_args)])
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_sgd_steps_follow_stock():
    fused, stock = _twins(torch.float32)
    optimizers = [torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9) for net in (fused, stock)]
    x, target = torch.randn(16, 1, 32, 32), torch.randint(10, (16,))
    for _ in range(4):
        for net, optimizer in zip((fused, stock), optimizers):
            optimizer.zero_grad()
            TF.cross_entropy(net(x), target).backward()
            optimizer.step()
    for (name, ours), reference in zip(fused.named_parameters(), stock.parameters()):
        torch.testing.assert_close(ours, reference, msg=lambda m: f"{name}: {m}", **OUTPUT_TOL)


# bad input ---------------------------------------------------------------------------------------

def _replace(args, index, value):
    return [value if i == index else a for i, a in enumerate(args)]


def _block_args():
    return [torch.randn(2, 6, 14, 14), torch.randn(16, 6, 5, 5), torch.randn(16)]


def _block_backward_args():
    x, w, b = _block_args()
    output, indices = _block(x, w, b)
    return [torch.randn_like(output), output, indices, x, w, [True] * 3]


BAD_INPUTS = {
    # name: (op, make arguments, exception, message)
    "block: 3-D input": ("conv2d_relu_max_pool2d", lambda: _replace(_block_args(), 0, torch.randn(6, 14, 14)),
                         RuntimeError, r"conv2d_relu_max_pool2d: expected input to be a 4-D tensor"),
    "block: channels": ("conv2d_relu_max_pool2d", lambda: _replace(_block_args(), 0, torch.randn(2, 5, 14, 14)),
                        RuntimeError, r"conv2d_relu_max_pool2d: expected input to have weight.size\(1\) = 6"),
    "block: too small": ("conv2d_relu_max_pool2d", lambda: _replace(_block_args(), 0, torch.randn(2, 6, 5, 9)),
                         RuntimeError, r"conv2d_relu_max_pool2d: expected input at least 6 x 6"),
    "block: integer input": ("conv2d_relu_max_pool2d",
                             lambda: _replace(_block_args(), 0, torch.ones(2, 6, 14, 14, dtype=torch.int32)),
                             TypeError, r"conv2d_relu_max_pool2d: expected input to have dtype float32"),
    "block: float64 weight": ("conv2d_relu_max_pool2d",
                              lambda: _replace(_block_args(), 1, torch.randn(16, 6, 5, 5, dtype=torch.float64)),
                              TypeError, r"conv2d_relu_max_pool2d: expected weight to have the same dtype"),
    "block: bias shape": ("conv2d_relu_max_pool2d", lambda: _replace(_block_args(), 2, torch.randn(15)),
                          RuntimeError, r"conv2d_relu_max_pool2d: expected bias of shape \[16\]"),
    "block backward: grad_output shape": (
        "conv2d_relu_max_pool2d_backward",
        lambda: _replace(_block_backward_args(), 0, torch.randn(2, 16, 5, 4)),
        RuntimeError, r"conv2d_relu_max_pool2d_backward: expected grad_output of shape \[2, 16, 5, 5\]"),
    "block backward: int32 indices": (
        "conv2d_relu_max_pool2d_backward",
        lambda: _replace(_block_backward_args(), 2, torch.zeros(2, 16, 5, 5, dtype=torch.int32)),
        TypeError, r"conv2d_relu_max_pool2d_backward: expected indices to have dtype int64"),
    "block backward: index out of range": (
        "conv2d_relu_max_pool2d_backward",
        lambda: _replace(_block_backward_args(), 2, torch.full((2, 16, 5, 5), 100)),
        RuntimeError, r"conv2d_relu_max_pool2d_backward: expected indices in \[0, conv_h \* conv_w\) "
                      r"= \[0, 100\), but got 100"),
    "lenet: 28x28 input": ("lenet", lambda: _replace(_lenet_args(2), 0, torch.randn(2, 1, 28, 28)),
                           RuntimeError, r"lenet: expected input of shape \(N, 1, 32, 32\), but got shape \[2, 1, 28, 28\]"),
    "lenet: 3 channels": ("lenet", lambda: _replace(_lenet_args(2), 0, torch.randn(2, 3, 32, 32)),
                          RuntimeError, r"lenet: expected input of shape \(N, 1, 32, 32\)"),
    "lenet: unbatched": ("lenet", lambda: _replace(_lenet_args(2), 0, torch.randn(1, 32, 32)),
                         RuntimeError, r"lenet: expected input to be a 4-D tensor \(N, 1, 32, 32\)"),
    "lenet: integer input": ("lenet", lambda: _replace(_lenet_args(2), 0, torch.ones(2, 1, 32, 32, dtype=torch.int64)),
                             TypeError, r"lenet: expected input to have dtype float32, float64, bfloat16 or float16, but got Long"),
    "lenet: fc1_weight shape": ("lenet", lambda: _replace(_lenet_args(2), 5, torch.randn(120, 256)),
                                RuntimeError, r"lenet: expected fc1_weight of shape \[120, 400\], but got shape \[120, 256\]"),
    "lenet: conv2_bias dtype": ("lenet", lambda: _replace(_lenet_args(2), 4, torch.randn(16, dtype=torch.float64)),
                                TypeError, r"lenet: expected conv2_bias to have the same dtype as input"),
    "lenet backward: fc2_relu shape": ("lenet_backward", lambda: _replace(_lenet_backward_args(2), 12, torch.randn(2, 85)),
                                       RuntimeError, r"lenet_backward: expected fc2_relu of shape \[2, 84\]"),
    "lenet backward: grad_logits batch": ("lenet_backward", lambda: _replace(_lenet_backward_args(2), 0, torch.randn(3, 10)),
                                          RuntimeError, r"lenet_backward: expected grad_logits of shape \[2, 10\]"),
    "lenet backward: pool1_indices dtype": (
        "lenet_backward", lambda: _replace(_lenet_backward_args(2), 8, torch.zeros(2, 6, 14, 14)),
        TypeError, r"lenet_backward: expected pool1_indices to have dtype uint8 \(window codes, as "
                   r"lenet returns them\), but got Float"),
    "lenet backward: int64 pool2_indices": (
        "lenet_backward", lambda: _replace(_lenet_backward_args(2), 10, torch.zeros(2, 16, 5, 5, dtype=torch.int64)),
        TypeError, r"lenet_backward: expected pool2_indices to have dtype uint8"),
    "lenet backward: pool2_indices out of range": (
        "lenet_backward", lambda: _replace(_lenet_backward_args(2), 10, torch.full((2, 16, 5, 5), 4, dtype=torch.uint8)),
        RuntimeError, r"lenet_backward: expected pool1_indices and pool2_indices in \[0, 4\) "
                      r"\(window codes dy \* 2 \+ dx\), but got 4"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_raises_naming_the_op_and_argument(case):
    op, make_args, exception, message = BAD_INPUTS[case]
    with pytest.raises(exception, match=f"^lenet_ext.{message}"):
        getattr(ops, op)(*make_args())


# (op, make arguments, index of the argument moved to another device, its name)
WRONG_DEVICE = [("conv2d_relu_max_pool2d", _block_args, 1, "weight"),
                ("conv2d_relu_max_pool2d_backward", _block_backward_args, 1, "output"),
                ("lenet", lambda: _lenet_args(2), 7, "fc2_weight"),
                ("lenet_backward", lambda: _lenet_backward_args(2), 9, "pool2")]


@pytest.mark.parametrize("op, make_args, index, name", WRONG_DEVICE, ids=[c[0] for c in WRONG_DEVICE])
def test_an_argument_on_another_device_raises_naming_it(op, make_args, index, name):
    # A meta tensor stands for another device. The dispatcher sends a call with one to the fake
    # kernel, so the C++ kernel is reached by redispatching to CPU; both must refuse.
    args = make_args()
    args[index] = args[index].to("meta")
    overload = getattr(ops, op).default
    message = f"^lenet_ext.{op}: expected {name} to be on the same device as input"
    with pytest.raises(RuntimeError, match=message):
        overload.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args)
    with pytest.raises(RuntimeError, match=message):
        overload(*args)
