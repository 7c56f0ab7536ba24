import pytest
import torch
from torch.library import opcheck

import lenet_ext
from lenet_ext import functional as F
from helpers import assert_matches_stock, sum_tolerance

# (input shape, out_features): N-D inputs, batch 0 and 1, odd sizes, LeNet's fc1/fc2/fc3
CASES = [((5,), 3), ((1, 7), 4), ((0, 7), 4), ((9, 13), 11), ((2, 3, 5), 6), ((2, 0, 5), 6),
         ((2, 3, 4, 5), 1), ((3, 0), 4), ((64, 400), 120), ((64, 120), 84), ((256, 84), 10),
         ((33, 67), 65)]


@pytest.mark.parametrize("input_shape,out_features", CASES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_stock(input_shape, out_features, bias, device, dtype):
    in_features = input_shape[-1]
    x = torch.randn(input_shape, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(out_features, in_features, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(out_features, device=device, dtype=dtype, requires_grad=True) if bias else None
    # grad_weight sums over the rows of input, the output and grad_input over features
    reduction = max(in_features, out_features, x.numel() // max(in_features, 1))
    assert_matches_stock(F.linear, torch.nn.functional.linear, [x, w, b],
                         **sum_tolerance(dtype, reduction))


@pytest.mark.parametrize("bias_shape", [(), (1,), (1, 4), (3, 1), (3, 4)], ids=str)
def test_bias_that_expands_to_the_output_matches_stock(bias_shape, device, dtype):
    x = torch.randn(3, 5, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(4, 5, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(bias_shape, device=device, dtype=dtype, requires_grad=True)
    assert_matches_stock(F.linear, torch.nn.functional.linear, [x, w, b], **sum_tolerance(dtype, 5))


@pytest.mark.parametrize("bias_shape", [(5,), (2, 4), (2, 1, 4)], ids=str)
def test_bias_that_does_not_expand_to_the_output_raises(bias_shape, device):
    x, w = torch.randn(3, 5, device=device), torch.randn(4, 5, device=device)
    with pytest.raises(RuntimeError, match=r"lenet_ext\.linear: expected bias of shape \[4\]"):
        F.linear(x, w, torch.randn(bias_shape, device=device))
    with pytest.raises(RuntimeError):
        torch.nn.functional.linear(x, w, torch.randn(bias_shape, device=device))


def stock_unfused_linear(input, weight, bias=None):
    """torch's F.linear by its unfused path, which it takes for a non-contiguous input of other
    than 2 dimensions: a matmul, then the bias added in place (cast to the output's dtype). Its
    fused path (addmm), which it takes otherwise, refuses a 1-D weight with a bias, and a bias of
    another dtype."""
    output = torch.matmul(input, weight.t())
    return output if bias is None else output.add_(bias)


def _non_contiguous(shape, device, dtype):
    return torch.randn(*shape[:-1], 2 * shape[-1], device=device, dtype=dtype)[..., ::2]


@pytest.mark.parametrize("input_shape", [(5,), (3, 5), (2, 3, 5), (0, 5), (2, 0, 5)], ids=str)
def test_functional_takes_a_1d_weight_as_stock(input_shape, device, dtype):
    # torch contracts the input's last dimension with it: no feature dimension in the output
    x = torch.randn(input_shape, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(5, device=device, dtype=dtype, requires_grad=True)
    assert F.linear(x, w).shape == input_shape[:-1]
    assert_matches_stock(F.linear, torch.nn.functional.linear, [x, w], **sum_tolerance(dtype, 5))


def _outputs_and_grads(fn, inputs):
    # on the inputs themselves: helpers' copies would make a non-contiguous input contiguous
    out = fn(*inputs)
    leaves = [x for x in inputs if x.requires_grad]
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out)
    return [out.detach(), *torch.autograd.grad((out * projection).sum(), leaves)]


# (weight shape, bias shape, bias dtype), each with every input shape whose output it expands to
BIASES = [((5,), (), None), ((5,), (1,), None), ((4, 5), (4,), torch.float64),
          ((4, 5), (4,), torch.int64), ((4, 5), (1, 4), None), ((4, 5), (), torch.float64)]
BIAS_CASES = [(w, b, d, x) for w, b, d in BIASES for x in [(5,), (3, 5), (2, 3, 5)]
              if len(b) <= len(x) - 1 + len(w) - 1]


@pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])
@pytest.mark.parametrize("weight_shape,bias_shape,bias_dtype,input_shape", BIAS_CASES, ids=str)
def test_functional_adds_a_bias_as_stocks_unfused_path(weight_shape, bias_shape, bias_dtype,
                                                       input_shape, layout, device):
    make = torch.randn if layout == "contiguous" else _non_contiguous
    x = make(input_shape, device=device, dtype=torch.float32).requires_grad_()
    w = torch.randn(weight_shape, device=device, requires_grad=True)
    b = torch.randn(bias_shape, device=device).mul(3).to(bias_dtype or torch.float32)
    b.requires_grad_(b.is_floating_point())
    ours = _outputs_and_grads(F.linear, [x, w, b])
    references = [stock_unfused_linear]
    if not x.is_contiguous() and x.dim() != 2:  # where torch takes that path itself
        references.append(torch.nn.functional.linear)
    for reference in references:
        for mine, theirs in zip(ours, _outputs_and_grads(reference, [x, w, b]), strict=True):
            assert mine.dtype == theirs.dtype
            torch.testing.assert_close(mine, theirs, **sum_tolerance(torch.float32, 5))


def test_functional_takes_a_row_bias_for_a_1d_input_as_stocks_fused_path(device, dtype):
    # torch's fused path (a contiguous 1-D input) computes the output as one row; the unfused one
    # (a non-contiguous input) refuses the bias
    x = torch.randn(5, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(4, 5, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(1, 4, device=device, dtype=dtype, requires_grad=True)
    assert F.linear(x, w, b).shape == (4,)
    assert_matches_stock(F.linear, torch.nn.functional.linear, [x, w, b],
                         **sum_tolerance(dtype, 5))
    strided = torch.zeros(10, device=device, dtype=dtype)[::2].copy_(x.detach())
    torch.testing.assert_close(F.linear(strided, w, b), F.linear(x, w, b), rtol=0, atol=0)


def test_functional_refuses_a_bias_whose_dtype_does_not_cast(device):
    x, w = torch.randn(3, 5, device=device), torch.randn(4, 5, device=device)
    with pytest.raises(TypeError, match=r"^lenet_ext\.linear: expected bias of a dtype that casts "
                                        r"to input's \(Float\), but got ComplexFloat$"):
        F.linear(x, w, torch.randn(4, device=device, dtype=torch.complex64))


# (rows, in_features, out_features) on both sides of each kernel choice of the CPU linear: in_features
# below, at and just past one vector (16 floats, 8 doubles) and with a partial last vector (the dot
# products' masked step); rows and out_features leaving remainders of the 4 x 4 dot-product tiles,
# the 16-wide GEMV tiles and the 32-wide gemm tiles (grad_input's and grad_weight's columns are
# in_features); rows on both sides of the switch to transposing weight (fc1 43/44 in float32, 32/33
# in float64; fc2 10/11; fc3 6/7); backward's few-rows path (rows <= 2) and gemm (3).
KERNEL_CASES = [(1, 400, 120), (2, 400, 120), (3, 400, 120), (2, 120, 84), (5, 400, 120), (32, 400, 120), (33, 400, 120),
                (43, 400, 120), (44, 400, 120), (10, 120, 84), (11, 120, 84), (1, 84, 10),
                (6, 84, 10), (7, 84, 10), (2, 7, 5), (9, 8, 7), (9, 9, 7), (2, 15, 5), (2, 16, 5),
                (2, 17, 5), (1, 16, 17), (6, 31, 33), (1, 32, 16), (5, 33, 3), (13, 48, 64)]


@pytest.mark.parametrize("rows,in_features,out_features", KERNEL_CASES, ids=str)
def test_matches_stock_around_kernel_boundaries(rows, in_features, out_features, device, dtype):
    x = torch.randn(rows, in_features, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(out_features, in_features, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(out_features, device=device, dtype=dtype, requires_grad=True)
    assert_matches_stock(F.linear, torch.nn.functional.linear, [x, w, b],
                         **sum_tolerance(dtype, max(rows, in_features, out_features)))


@pytest.mark.parametrize("rows", [1, 64], ids=["dot_products", "transposed_weight"])
@pytest.mark.parametrize("in_features", [20, 84])  # the last vector overlaps the one before
def test_non_finite_inputs_propagate_like_stock(rows, in_features, device, dtype):
    x = torch.randn(rows, in_features, device=device, dtype=dtype)
    w = torch.randn(10, in_features, device=device, dtype=dtype)
    x[0, 5] = float("inf")  # inside the overlap: counted once, never multiplied by a masked zero
    x[-1, in_features - 1] = float("nan")
    torch.testing.assert_close(F.linear(x, w), torch.nn.functional.linear(x, w), equal_nan=True,
                               **sum_tolerance(dtype, in_features))


@pytest.mark.parametrize("layout", ["transposed_input", "expanded_input", "transposed_weight",
                                    "strided_bias"])
def test_non_contiguous_arguments(layout, device, dtype):
    x = torch.randn(6, 10, device=device, dtype=dtype)
    w = torch.randn(4, 10, device=device, dtype=dtype)
    b = torch.randn(4, device=device, dtype=dtype)
    if layout == "transposed_input":
        x = torch.randn(10, 6, device=device, dtype=dtype).t()
    elif layout == "expanded_input":
        x = torch.randn(1, 10, device=device, dtype=dtype).expand(6, 10)
    elif layout == "transposed_weight":
        w = torch.randn(10, 4, device=device, dtype=dtype).t()
    else:
        b = torch.randn(8, device=device, dtype=dtype)[::2]
    for t in (x, w, b):
        t.requires_grad_()
    assert_matches_stock(F.linear, torch.nn.functional.linear, [x, w, b])


@pytest.mark.parametrize("input_shape", [(4,), (3, 4), (2, 3, 4), (0, 4)], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradcheck(input_shape, bias, device):
    opts = dict(device=device, dtype=torch.float64, requires_grad=True)
    x, w = torch.randn(input_shape, **opts), torch.randn(5, 4, **opts)
    b = torch.randn(5, **opts) if bias else None
    assert torch.autograd.gradcheck(F.linear, (x, w, b))


@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False),
                                  (False, False, True), (True, True, True), (False, False, False)],
                         ids=str)
def test_backward_computes_only_what_output_mask_selects(mask, device, dtype):
    x = torch.randn(5, 3, device=device, dtype=dtype)
    w = torch.randn(4, 3, device=device, dtype=dtype)
    grad = torch.randn(5, 4, device=device, dtype=dtype)
    results = torch.ops.lenet_ext.linear_backward(grad, x, w, list(mask))
    expected = (grad @ w, grad.t() @ x, grad.sum(0))
    for wanted, result, reference in zip(mask, results, expected):
        if wanted:
            torch.testing.assert_close(result, reference)
        else:
            assert result is None


def test_autograd_asks_only_for_needed_gradients(device):
    x = torch.randn(5, 3, device=device, requires_grad=True)
    w = torch.randn(4, 3, device=device)  # frozen weight: no grad_weight, no grad_bias
    F.linear(x, w, torch.randn(4, device=device)).sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(5, 3))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_opcheck(bias, device, dtype):
    opts = dict(device=device, dtype=dtype, requires_grad=True)
    x, w = torch.randn(2, 3, 5, **opts), torch.randn(4, 5, **opts)
    b = torch.randn(4, **opts) if bias else None
    opcheck(torch.ops.lenet_ext.linear, (x, w, b))
    grad = torch.randn(2, 3, 4, device=device, dtype=dtype)
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        opcheck(torch.ops.lenet_ext.linear_backward, (grad, x.detach(), w.detach(), mask))


def _f32(*shape, device="cpu"):
    return torch.randn(*shape, device=device)


BAD_INPUTS = [
    # (description, input, weight, bias, exception, message fragment)
    ("0-d input", lambda d: torch.randn((), device=d), lambda d: _f32(4, 1, device=d), None, RuntimeError,
     r"expected input to have at least 1 dimension"),
    ("3-D weight", lambda d: _f32(3, 5, device=d), lambda d: _f32(2, 4, 5, device=d), None,
     RuntimeError, r"expected weight to be a 2-D tensor .* but got a 3-D tensor of shape \[2, 4, 5\]"),
    ("feature mismatch", lambda d: _f32(3, 5, device=d), lambda d: _f32(4, 6, device=d), None,
     RuntimeError, r"expected the last dimension of input to equal weight.size\(1\) = "
                   r"in_features = 6, but got input of shape \[3, 5\]"),
    ("bias shape", lambda d: _f32(3, 5, device=d), lambda d: _f32(4, 5, device=d),
     lambda d: _f32(5, device=d), RuntimeError,
     # the functional also names the shapes it expands, as torch does
     r"expected bias of shape \[4\] \(out_features\)(, or one that expands to the output's shape "
     r"\[3, 4\])?, but got shape \[5\]"),
    ("integer input", lambda d: torch.ones(3, 5, dtype=torch.long, device=d),
     lambda d: _f32(4, 5, device=d), None, TypeError,
     r"expected input to have dtype float32, float64, bfloat16 or float16, but got Long"),
    ("complex input", lambda d: torch.ones(3, 5, dtype=torch.complex64, device=d),
     lambda d: torch.ones(4, 5, dtype=torch.complex64, device=d), None, TypeError,
     r"expected input to have dtype float32, float64, bfloat16 or float16, but got ComplexFloat"),
    ("mixed dtypes", lambda d: _f32(3, 5, device=d),
     lambda d: _f32(4, 5, device=d).double(), None, TypeError,
     r"expected weight to have the same dtype as input \(Float\), but got Double"),
    ("bias device", lambda d: _f32(3, 5, device=d), lambda d: _f32(4, 5, device=d),
     lambda d: _f32(4, device="meta"), RuntimeError,
     r"expected bias to be on the same device as input \((cpu|cuda:0)\), but got meta"),
]
# The op refuses these; the functional takes them as torch does (the tests above).
OP_BAD_INPUTS = [
    ("1-D weight", lambda d: _f32(3, 5, device=d), lambda d: _f32(5, device=d), None, RuntimeError,
     r"expected weight to be a 2-D tensor \(out_features, in_features\), but got a 1-D tensor"),
    ("bias dtype", lambda d: _f32(3, 5, device=d), lambda d: _f32(4, 5, device=d),
     lambda d: _f32(4, device=d).double(), TypeError,
     r"expected bias to have the same dtype as input \(Float\), but got Double"),
]


@pytest.mark.parametrize("case,entry", [(c, e) for c in BAD_INPUTS for e in ("functional", "op")]
                         + [(c, "op") for c in OP_BAD_INPUTS],
                         ids=[f"{e}-{c[0]}" for c in BAD_INPUTS for e in ("functional", "op")]
                         + [f"op-{c[0]}" for c in OP_BAD_INPUTS])
def test_bad_input_raises_a_clear_error(case, entry, device):
    _, make_input, make_weight, make_bias, exception, message = case
    fn = F.linear if entry == "functional" else torch.ops.lenet_ext.linear
    bias = make_bias(device) if make_bias else None
    with pytest.raises(exception, match=r"lenet_ext\.linear: " + message):
        fn(make_input(device), make_weight(device), bias)


def test_backward_op_checks_grad_output_shape(device):
    x, w = _f32(3, 5, device=device), _f32(4, 5, device=device)
    with pytest.raises(RuntimeError, match=r"lenet_ext\.linear_backward: expected grad_output of "
                                           r"shape \[3, 4\], but got shape \[3, 5\]"):
        torch.ops.lenet_ext.linear_backward(_f32(3, 5, device=device), x, w, [True, True, True])


@pytest.mark.parametrize("bias", [True, False])
def test_module_is_drop_in(bias, device, dtype):
    torch.manual_seed(0)
    stock = torch.nn.Linear(7, 3, bias=bias, device=device, dtype=dtype)
    torch.manual_seed(0)
    ours = lenet_ext.nn.Linear(7, 3, bias=bias, device=device, dtype=dtype)
    assert repr(ours) == repr(stock)
    assert [name for name, _ in ours.named_parameters()] == \
           [name for name, _ in stock.named_parameters()]
    for p, q in zip(ours.parameters(), stock.parameters()):  # same initialisation
        torch.testing.assert_close(p, q, rtol=0, atol=0)
        assert p.dtype == dtype and p.device.type == device
    # state_dicts move both ways
    other = torch.nn.Linear(7, 3, bias=bias, device=device, dtype=dtype)
    ours.load_state_dict(other.state_dict())
    stock.load_state_dict(ours.state_dict())
    x = torch.randn(4, 7, device=device, dtype=dtype)
    torch.testing.assert_close(ours(x), other(x))
    torch.testing.assert_close(stock(x), other(x))


# Transposed weight (gemm over packed panels): fc1 at batch 256 and 64 (panels over threads),
# fc2 at 64 (3 panels: row chunks too, a panel shared by two threads), an uneven chunk and a narrow
# last panel; and a long dot-product case with enough tiles to split. Three threads as well: other
# chunks, tasks and shared panels than two; float64's panels are half as wide.
@pytest.mark.parametrize("rows,in_features,out_features",
                         [(256, 400, 120), (64, 400, 120), (64, 120, 84), (67, 120, 84),
                          (50, 33, 200), (8, 4000, 120)], ids=str)
def test_bitwise_identical_across_thread_counts(rows, in_features, out_features, dtype):
    x = torch.randn(rows, in_features, dtype=dtype)
    w = torch.randn(out_features, in_features, dtype=dtype)
    b, grad = torch.randn(out_features, dtype=dtype), torch.randn(rows, out_features, dtype=dtype)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append((F.linear(x, w, b),
                            *torch.ops.lenet_ext.linear_backward(grad, x, w, [True, True, True])))
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(results[0][0], torch.nn.functional.linear(x, w, b),
                               **sum_tolerance(dtype, in_features))
    for one_thread, *more_threads in zip(*results):
        for other in more_threads:
            assert torch.equal(one_thread, other)
