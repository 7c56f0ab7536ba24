"""lenet_ext conv2d: torch.nn.functional.conv2d's semantics and torch.nn.Conv2d's interface."""
import pytest
import torch
import torch.nn.functional as TF

import lenet_ext
from lenet_ext import functional as F

op = torch.ops.lenet_ext

# Rounding error grows with the largest partial sums, so atol is relative to the largest element of
# the expected tensor: LeNet's float32 grad_weight sums 2e5 products to ~1e3, where stock itself
# is ~1e-5 of that away from float64 (and ours closer).
TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=3e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def assert_close(actual, expected):
    tolerance = TOLERANCE[expected.dtype]
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tolerance["rtol"],
                               atol=tolerance["atol"] * scale)


def random_conv(batch, in_channels, out_channels, size, kernel, groups=1, bias=True, **like):
    """Fresh random (input, weight, bias) that require grad."""
    x = torch.randn(batch, in_channels, *size, **like, requires_grad=True)
    w = torch.randn(out_channels, in_channels // groups, *kernel, **like, requires_grad=True)
    b = torch.randn(out_channels, **like, requires_grad=True) if bias else None
    return x, w, b


def assert_matches_stock(x, w, b, **conv_args):
    """Output and the gradients of every input that requires grad equal stock's."""
    inputs = [t for t in (x, w, b) if t is not None and t.requires_grad]
    ours = F.conv2d(x, w, b, **conv_args)
    stock = TF.conv2d(x, w, b, **conv_args)
    assert_close(ours, stock)
    grad_output = torch.randn_like(stock)
    ours_grads = torch.autograd.grad(ours, inputs, grad_output, allow_unused=True)
    stock_grads = torch.autograd.grad(stock, inputs, grad_output, allow_unused=True)
    for ours_grad, stock_grad in zip(ours_grads, stock_grads):
        assert_close(ours_grad, stock_grad)


# forward and backward against stock -------------------------------------------------------------

# (batch, in_channels, out_channels, size, kernel, stride, padding, dilation, groups, bias):
# every value of every axis of the grid appears at least once.
GRADCHECK_GRID = [
    (1, 2, 3, (5, 5), (3, 3), 1, 0, 1, 1, True),
    (3, 2, 2, (6, 5), (3, 3), 2, 1, 1, 1, False),
    (1, 3, 3, (7, 7), (5, 5), 3, 2, 1, 3, True),
    (3, 4, 2, (6, 6), (1, 1), 1, 0, 2, 2, True),
    (0, 2, 4, (5, 6), (2, 3), 1, 1, 1, 2, True),
    (1, 6, 3, (6, 7), (3, 2), 2, 2, 2, 3, False),
    (3, 3, 6, (5, 5), (3, 3), 1, "same", 2, 3, True),
    (1, 2, 2, (5, 6), (2, 3), 1, "same", 1, 1, False),
    (3, 4, 4, (4, 5), (5, 5), 1, "same", 1, 2, True),
    (1, 2, 3, (6, 6), (3, 2), 1, "valid", 2, 1, True),
    (0, 3, 3, (5, 5), (5, 5), 1, "valid", 1, 3, False),
    (3, 2, 4, (7, 6), (1, 1), 3, 1, 2, 2, False),
    # batch-lane backward (8 float64 images a block, see "special paths" below) and one left over
    (9, 2, 3, (6, 7), (5, 5), 1, 0, 1, 1, True),
    # forward over output-row vectors: 2 of 8 lanes' worth of channels, a 10-wide row (overlap)
    (2, 2, 2, (4, 12), (2, 3), 1, 0, 1, 1, True),
]


@pytest.mark.parametrize("batch, in_channels, out_channels, size, kernel, stride, padding,"
                         " dilation, groups, bias", GRADCHECK_GRID)
def test_gradcheck(device, batch, in_channels, out_channels, size, kernel, stride, padding,
                   dilation, groups, bias):
    x, w, b = random_conv(batch, in_channels, out_channels, size, kernel, groups, bias,
                          device=device, dtype=torch.float64)

    def conv(x, w, *b):
        return F.conv2d(x, w, b[0] if b else None, stride, padding, dilation, groups)

    assert torch.autograd.gradcheck(conv, (x, w) if b is None else (x, w, b))


@pytest.mark.parametrize("case", range(40))
def test_random_configurations_match_stock(device, dtype, case):
    pick = lambda options: options[torch.randint(len(options), ()).item()]  # noqa: E731
    groups = pick([1, 1, 2, 3])
    kernel = (pick([1, 2, 3, 5]), pick([1, 2, 3, 5]))
    dilation = (pick([1, 2]), pick([1, 2]))
    padding = pick([0, 1, 2, (1, 2), "same", "valid"])
    stride = 1 if padding == "same" else (pick([1, 2, 3]), pick([1, 2, 3]))
    extent = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    size = [e + pick([0, 1, 4, 9]) for e in extent]
    x, w, b = random_conv(pick([1, 2, 5]), groups * pick([1, 2, 3]), groups * pick([1, 2, 4]), size,
                          kernel, groups, pick([True, False]), device=device, dtype=dtype)
    assert_matches_stock(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize("batch", [1, 64, 256])
@pytest.mark.parametrize("in_channels, out_channels, size", [(1, 6, 32), (6, 16, 14)],
                         ids=["conv1", "conv2"])
def test_lenet_shapes_match_stock(device, batch, in_channels, out_channels, size):
    x, w, b = random_conv(batch, in_channels, out_channels, (size, size), (5, 5), device=device)
    assert_matches_stock(x, w, b)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("kernel", [(3, 3), (4, 4), (2, 5), (4, 1)])
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_padding_strings_match_stock(device, dtype, padding, kernel, dilation):
    x, w, b = random_conv(2, 3, 4, (11, 14), kernel, device=device, dtype=dtype)
    assert_matches_stock(x, w, b, padding=padding, dilation=dilation)


@pytest.mark.parametrize("padding", [1, "same"])
def test_unbatched_input_matches_stock(device, dtype, padding):
    x, w, b = random_conv(1, 3, 4, (7, 8), (4, 3), device=device, dtype=dtype)
    x = x.detach()[0].requires_grad_()
    assert F.conv2d(x, w, b, padding=padding).dim() == 3
    assert_matches_stock(x, w, b, padding=padding)


def test_batch_zero(device, dtype):
    x, w, b = random_conv(0, 3, 4, (7, 8), (3, 3), device=device, dtype=dtype)
    out = F.conv2d(x, w, b)
    assert out.shape == (0, 4, 5, 6)
    grad_x, grad_w, grad_b = torch.autograd.grad(out, (x, w, b), torch.randn_like(out))
    assert grad_x.shape == x.shape
    assert torch.equal(grad_w, torch.zeros_like(w)) and torch.equal(grad_b, torch.zeros_like(b))


@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last", "expanded"])
def test_non_contiguous_input_matches_stock(device, dtype, layout):
    base = torch.randn(2, 3, 9, 10, device=device, dtype=dtype)
    x = {"transposed": lambda: base.transpose(2, 3),
         "sliced": lambda: base[:, :, 1::2, ::3],
         "channels_last": lambda: base.contiguous(memory_format=torch.channels_last),
         "expanded": lambda: base[:1].expand(3, -1, -1, -1)}[layout]()
    x = x.detach().requires_grad_()
    w = torch.randn(4, 3, 2, 3, device=device, dtype=dtype).transpose(2, 3).requires_grad_()
    b = torch.randn(4, device=device, dtype=dtype, requires_grad=True)
    assert not x.is_contiguous() and not w.is_contiguous()
    assert_matches_stock(x, w, b, stride=(1, 2), padding=1)


@pytest.mark.parametrize("stride, padding, dilation", [
    (2, 1, 2), ((2, 1), (0, 1), (1, 2)), ([1, 3], [2, 0], [2, 1]), ((2,), (1,), (2,))])
def test_int_and_sequence_arguments_match_stock(device, stride, padding, dilation):
    x, w, b = random_conv(2, 2, 3, (9, 9), (3, 2), device=device)
    assert_matches_stock(x, w, b, stride=stride, padding=padding, dilation=dilation)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True), (True, True, False)],
                         ids=lambda needs: "".join("1" if n else "0" for n in needs))
def test_backward_computes_only_the_requested_gradients(device, needs):
    x, w, b = random_conv(2, 3, 4, (6, 6), (3, 3), device=device)
    grad_output = torch.randn(2, 4, 4, 4, device=device)
    grads = op.conv2d_backward(grad_output, x, w, [1, 1], [0, 0], [1, 1], 1, list(needs))
    assert [g is not None for g in grads] == list(needs)
    for need, x_input in zip(needs, (x, w, b)):
        x_input.requires_grad_(need)
    assert_matches_stock(x, w, b)


def test_results_do_not_depend_on_the_thread_count(device):
    x, w, b = random_conv(64, 6, 16, (14, 14), (5, 5), device=device)
    grad_output = torch.randn(64, 16, 12, 12, device=device)

    def run(threads):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = F.conv2d(x, w, b, padding=1)
            return (out, *torch.autograd.grad(out, (x, w, b), grad_output))
        finally:
            torch.set_num_threads(before)

    for one, two in zip(run(1), run(2)):
        assert torch.equal(one, two)


# special paths chosen by shape -------------------------------------------------------------------
# Shapes beside the bounds of the fast algorithms (csrc/cpu/conv2d/select.cpp), sizes in lanes (16
# float32, 8 float64): each case is (batch, in_channels, out_channels, size, kernel, groups,
# padding). Here they run through the op's own choice; test_conv2d_algorithms.py forces every
# algorithm on each of them and pins the choices LeNet's shapes get.
def _lanes(dtype):
    return 64 // torch.empty((), dtype=dtype).element_size()


SPECIAL_PATH_CASES = {
    "lenet_conv2": lambda L: (3, 6, 16 * L // 16, (14, 14), (5, 5), 1, 0),
    "lenet_conv1": lambda L: (3, 1, 6 * L // 16, (32, 32), (5, 5), 1, 0),
    "all_lanes": lambda L: (2, 3, L, (9, 11), (5, 5), 1, 0),
    "one_lane_too_many": lambda L: (2, 3, L + 1, (9, 11), (5, 5), 1, 0),
    "over_half_the_lanes": lambda L: (2, 2, L // 2 + 1, (8, 9), (3, 5), 1, 0),
    "half_the_lanes": lambda L: (2, 2, L // 2, (8, 9), (5, 5), 1, 0),
    "one_channel_out": lambda L: (2, 2, 1, (8, 9), (5, 5), 1, 0),
    "grouped": lambda L: (2, 4, 2 * L, (9, 9), (5, 5), 2, 0),
    "grouped_narrow": lambda L: (2, 4, 6, (9, 9), (5, 5), 2, 0),
    "kernel_4_wide": lambda L: (2, 3, L, (9, 11), (5, 4), 1, 0),
    "kernel_6_wide": lambda L: (2, 3, 3, (9, 11), (3, 6), 1, 0),
    "row_one_vector": lambda L: (2, 2, L, (7, L), (5, 5), 1, 0),
    "row_over_one_vector": lambda L: (2, 2, L, (7, L + 1), (5, 5), 1, 0),
    "output_row_two_vectors": lambda L: (2, 1, 3, (6, 2 * L + 4), (5, 5), 1, 0),
    "output_row_over_two_vectors": lambda L: (2, 1, 3, (6, 2 * L + 5), (5, 5), 1, 0),
    "output_row_three_tiles": lambda L: (1, 2, L, (5, 33), (2, 5), 1, 0),
    "many_input_channels": lambda L: (2, 11, L, (7, 9), (5, 5), 1, 0),
    "kernel_taller_than_output": lambda L: (2, 2, L, (6, 9), (5, 5), 1, 0),
    "padded": lambda L: (2, 3, L, (9, 11), (5, 5), 1, 1),
    "lanes_lenet_conv2": lambda L: (2 * L + 3, 6, 16 * L // 16, (14, 14), (5, 5), 1, 0),
    "lanes_one_block": lambda L: (L, 3, 7, (9, 11), (5, 5), 1, 0),
    "lanes_one_image_short": lambda L: (L - 1, 3, 7, (9, 11), (5, 5), 1, 0),
    "lanes_grouped": lambda L: (L + 1, 4, 10, (9, 9), (5, 5), 2, 0),
    "lanes_narrowest_row": lambda L: (L, 2, 5, (7, 5), (5, 5), 1, 0),
    "lanes_row_too_wide": lambda L: (L, 2, 5, (6, 15), (5, 5), 1, 0),
    "lanes_kernel_taller_than_output": lambda L: (L + 2, 2, 4, (6, 9), (5, 5), 1, 0),
    "lanes_kernel_4_wide": lambda L: (L, 3, L, (9, 11), (5, 4), 1, 0),
    "lanes_lenet_conv1": lambda L: (L + 3, 1, 6 * L // 16, (32, 32), (5, 5), 1, 0),
    "lanes_output_row_over_14": lambda L: (L, 2, 3, (7, 19), (5, 5), 1, 0),
    "lanes_forward_grouped": lambda L: (L + 1, 4, 6, (9, 9), (5, 5), 2, 0),
    "lanes_forward_one_channel_out": lambda L: (2 * L, 3, 1, (8, 6), (5, 5), 1, 0),
    # forward over output-row vectors (at most half the lanes of channels, rows >= one vector)
    "row_forward_one_vector": lambda L: (2, 2, 5, (5, L + 4), (5, 5), 1, 0),
    "row_forward_overlap": lambda L: (3, 3, L // 2, (7, L + 7), (3, 4), 1, 0),
    "row_forward_grouped": lambda L: (2, 4, 4, (6, L + 2), (3, 3), 2, 0),
    "row_forward_three_vectors": lambda L: (L + 1, 1, 2, (5, 3 * L + 2), (2, 3), 1, 0),
}


@pytest.mark.parametrize("case", SPECIAL_PATH_CASES)
def test_special_path_shapes_match_stock(device, dtype, case):
    batch, in_channels, out_channels, size, kernel, groups, padding = \
        SPECIAL_PATH_CASES[case](_lanes(dtype))
    x, w, b = random_conv(batch, in_channels, out_channels, size, kernel, groups, device=device,
                          dtype=dtype)
    assert_matches_stock(x, w, b, padding=padding, groups=groups)


@pytest.mark.parametrize("case", ["lenet_conv1", "lenet_conv2", "grouped_narrow",
                                  "output_row_two_vectors", "lanes_forward_grouped",
                                  "row_forward_grouped"])
def test_special_path_results_do_not_depend_on_the_thread_count(device, case):
    _, in_channels, out_channels, size, kernel, groups, padding = SPECIAL_PATH_CASES[case](16)
    x, w, b = random_conv(37, in_channels, out_channels, size, kernel, groups, device=device)
    grad_output = torch.randn_like(F.conv2d(x, w, b, padding=padding, groups=groups))

    def run(threads):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = F.conv2d(x, w, b, padding=padding, groups=groups)
            return (out, *torch.autograd.grad(out, (x, w, b), grad_output))
        finally:
            torch.set_num_threads(before)

    for one, two in zip(run(1), run(2)):
        assert torch.equal(one, two)


@pytest.mark.parametrize("where", ["input", "weight"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("case", ["lenet_conv1", "lenet_conv2", "lanes_lenet_conv1",
                                  "lanes_lenet_conv2"])
def test_special_path_non_finite_values_spread_as_in_stock(device, where, value, case):
    batch, in_channels, out_channels, size, kernel, groups, padding = SPECIAL_PATH_CASES[case](16)
    x, w, b = random_conv(batch, in_channels, out_channels, size, kernel, groups, device=device)
    with torch.no_grad():  # the last column is outside some taps' reach, the corner tap reaches few
        (x[1, 0, 3, -1] if where == "input" else w[2, 0, 0, 0]).fill_(value)
    ours = F.conv2d(x, w, b)
    stock = TF.conv2d(x, w, b)
    grad_output = torch.randn_like(stock)
    ours_grads = torch.autograd.grad(ours, (x, w, b), grad_output)
    stock_grads = torch.autograd.grad(stock, (x, w, b), grad_output)
    for o, s in zip((ours, *ours_grads), (stock, *stock_grads)):
        assert torch.equal(o.isnan(), s.isnan()) and torch.equal(o.isinf(), s.isinf())
        finite = o.isfinite()
        assert_close(o[finite], s[finite])


# torch.library and torch.compile ----------------------------------------------------------------

@pytest.mark.parametrize("stride, padding, dilation, groups, bias", [
    ([1, 1], [0, 0], [1, 1], 1, True), ([2, 1], [1, 2], [1, 2], 2, False)])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, stride, padding, dilation, groups, bias, requires_grad):
    x, w, b = random_conv(2, 4, 6, (7, 8), (3, 2), groups, bias, device=device)
    for t in (x, w, b):
        if t is not None:
            t.requires_grad_(requires_grad)
    torch.library.opcheck(op.conv2d, (x, w, b, stride, padding, dilation, groups))
    out = op.conv2d(x, w, b, stride, padding, dilation, groups)
    torch.library.opcheck(op.conv2d_backward, (torch.randn_like(out), x.detach(), w.detach(),
                                               stride, padding, dilation, groups,
                                               [True, True, bias]))


def test_compile_fullgraph_matches_eager(device):
    def conv(x, w, b):  # an even 'same' kernel also traces the Python-side padding
        return F.conv2d(x, w, b, padding="same", dilation=(1, 2))

    x, w, b = random_conv(3, 2, 4, (6, 7), (4, 3), device=device)
    grad_output = torch.randn(3, 4, 6, 7, device=device)
    eager = conv(x, w, b)
    compiled = torch.compile(conv, fullgraph=True)(x, w, b)
    torch.testing.assert_close(compiled, eager)
    for c, e in zip(torch.autograd.grad(compiled, (x, w, b), grad_output),
                    torch.autograd.grad(eager, (x, w, b), grad_output)):
        torch.testing.assert_close(c, e)


# nn.Conv2d ---------------------------------------------------------------------------------------

MODULE_ARGS = [
    dict(in_channels=1, out_channels=6, kernel_size=5),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1, groups=2,
         bias=False),
    dict(in_channels=3, out_channels=3, kernel_size=4, padding="same", dilation=2),
    dict(in_channels=2, out_channels=4, kernel_size=3, padding="valid"),
]


@pytest.mark.parametrize("kwargs", MODULE_ARGS)
def test_module_has_torch_initialisation_repr_and_state_dict(kwargs):
    torch.manual_seed(0)
    stock = torch.nn.Conv2d(**kwargs)
    torch.manual_seed(0)
    ours = lenet_ext.nn.Conv2d(**kwargs)
    assert repr(ours) == repr(stock)
    assert ours.state_dict().keys() == stock.state_dict().keys()
    for key, value in stock.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [(1, 2), "same"])
@pytest.mark.parametrize("batched", [True, False])
def test_module_matches_torch(device, dtype, padding_mode, padding, batched):
    stock = torch.nn.Conv2d(4, 6, (3, 4), padding=padding, padding_mode=padding_mode, groups=2,
                            device=device, dtype=dtype)
    ours = lenet_ext.nn.Conv2d(4, 6, (3, 4), padding=padding, padding_mode=padding_mode, groups=2,
                               device=device, dtype=dtype)
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(*((2,) if batched else ()), 4, 7, 9, device=device, dtype=dtype,
                    requires_grad=True)
    ours_out, stock_out = ours(x), stock(x)
    assert_close(ours_out, stock_out)
    grad_output = torch.randn_like(stock_out)
    ours_grads = torch.autograd.grad(ours_out, (x, ours.weight, ours.bias), grad_output)
    stock_grads = torch.autograd.grad(stock_out, (x, stock.weight, stock.bias), grad_output)
    for o, s in zip(ours_grads, stock_grads):
        assert_close(o, s)


@pytest.mark.parametrize("padding", [0, 1, "same"])
@pytest.mark.parametrize("dilation", [0, (0, 2), (1, 0)], ids=str)
def test_dilation_zero_on_an_empty_batch_matches_stock(dilation, padding, device, dtype):
    # torch refuses dilation 0 only on an input with elements: the kernel's extent is then 1
    x, w, b = random_conv(0, 4, 6, (7, 8), (3, 2), groups=2, device=device, dtype=dtype)
    assert F.conv2d(x, w, b, padding=padding, dilation=dilation, groups=2).shape[0] == 0
    assert_matches_stock(x, w, b, padding=padding, dilation=dilation, groups=2)


# bad input ---------------------------------------------------------------------------------------

def _args(input=(2, 4, 8, 8), weight=(6, 2, 3, 3), bias=(6,), stride=1, padding=0, dilation=1,
          groups=2, dtype=torch.float32, weight_dtype=None):
    x = torch.randn(input).to(dtype)
    w = torch.randn(weight).to(weight_dtype or dtype)
    b = None if bias is None else torch.randn(bias).to(dtype)
    return x, w, b, stride, padding, dilation, groups


# (arguments, message): the message names the argument, what was expected and what was given.
BAD_INPUTS = {
    "channels_not_groups_times_weight": (_args(input=(2, 3, 8, 8)),
                                         r"input to have .*= 4 channels, but got .*\[2, 3, 8, 8\]"),
    "out_channels_not_multiple_of_groups": (
        _args(weight=(5, 2, 3, 3), bias=(5,)),
        r"weight.size\(0\).* multiple of groups = 2.*\[5, 2, 3, 3\]"),
    "groups_zero": (_args(groups=0), r"groups to be positive, but got 0"),
    "kernel_larger_than_padded_input": (_args(weight=(6, 2, 9, 3)),
                                        r"kernel.*\(9 x 3\).*fit the padded input.*\(8 x 8\)"),
    "dilated_kernel_larger_than_padded_input": (_args(dilation=5, padding=1),
                                                r"kernel.*\(11 x 11\).*padded input.*\(10 x 10\)"),
    "stride_zero": (_args(stride=0), r"stride to be positive, but got \[0, 0\]"),
    "stride_negative": (_args(stride=(1, -1)), r"stride to be positive, but got \[1, -1\]"),
    "dilation_zero": (_args(dilation=(0, 1)), r"dilation to be positive, but got \[0, 1\]"),
    "dilation_negative_empty_batch": (_args(input=(0, 4, 8, 8), dilation=(1, -1)),
                                      r"dilation to be positive, but got \[1, -1\]"),
    # stock checks the dtypes only when the input has elements (README)
    "dtypes_mixed_empty_batch": (_args(input=(0, 4, 8, 8), weight_dtype=torch.float64),
                                 r"weight to have the same dtype as input \(Float\), but got Double"),
    "padding_negative": (_args(padding=-1), r"padding to be non-negative, but got \[-1, -1\]"),
    "input_2d": (_args(input=(4, 8)), r"input to be a 4-D tensor .*got a 2-D tensor"),
    "input_5d": (_args(input=(1, 2, 4, 8, 8)), r"input to be a 4-D tensor .*got a 5-D tensor"),
    "weight_3d": (_args(weight=(6, 2, 3)), r"weight to be a 4-D tensor .*got a 3-D tensor"),
    "input_empty_plane": (_args(input=(2, 4, 0, 8), padding=2), r"positive height and width"),
    "kernel_empty": (_args(weight=(6, 2, 0, 3)), r"kernel of positive size"),
    "bias_wrong_shape": (_args(bias=(3,)), r"bias of shape \[6\].*but got shape \[3\]"),
    "bias_2d": (_args(bias=(6, 1)), r"bias of shape \[6\].*but got shape \[6, 1\]"),
    "int_dtype": (_args(dtype=torch.int32), r"input to have dtype float32, float64, bfloat16 or float16, but got Int"),
    "complex_dtype": (_args(dtype=torch.complex64),
                      r"input to have dtype float32, float64, bfloat16 or float16, but got ComplexFloat"),
    "weight_dtype_differs": (_args(weight_dtype=torch.float64),
                             r"weight to have the same dtype as input \(Float\), but got Double"),
}


def _pair(value):
    return [value, value] if isinstance(value, int) else list(value)


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_raises_from_functional(name):
    args, message = BAD_INPUTS[name]
    with pytest.raises((RuntimeError, TypeError), match="lenet_ext.conv2d: .*" + message):
        F.conv2d(*args)


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_raises_from_the_op(name):
    (x, w, b, stride, padding, dilation, groups), message = BAD_INPUTS[name]
    with pytest.raises((RuntimeError, TypeError), match="lenet_ext.conv2d: .*" + message):
        op.conv2d(x, w, b, _pair(stride), _pair(padding), _pair(dilation), groups)


def test_op_rejects_unbatched_input_and_points_to_functional():
    x, w, b, *_ = _args(input=(4, 8, 8))
    with pytest.raises(RuntimeError, match=r"lenet_ext.conv2d: .*4-D .*lenet_ext.functional.conv2d "
                                           r"also takes unbatched 3-D"):
        op.conv2d(x, w, b, [1, 1], [0, 0], [1, 1], 2)


@pytest.mark.parametrize("padding, stride, message", [
    ("same", 2, r"padding='same' is not supported for strided convolutions: expected stride 1, "
                r"but got stride \[2, 2\]"),
    ("same", (1, 3), r"padding='same' .*but got stride \[1, 3\]"),
    ("full", 1, r"expected padding to be an int, a pair, 'valid' or 'same', but got 'full'"),
])
def test_bad_padding_string_raises(padding, stride, message):
    x, w, b, *_ = _args()
    with pytest.raises(RuntimeError, match="lenet_ext.conv2d: " + message):
        F.conv2d(x, w, b, stride=stride, padding=padding, groups=2)


def test_op_rejects_a_wrong_length_argument():
    x, w, b, *_ = _args()
    with pytest.raises(RuntimeError, match=r"lenet_ext.conv2d: expected stride to have 2 elements, "
                                           r"but got 3"):
        F.conv2d(x, w, b, stride=(1, 1, 1), groups=2)


@pytest.mark.parametrize("grad_shape, grad_dtype, message", [
    ((2, 6, 6, 5), torch.float32,
     r"grad_output of shape \[2, 6, 6, 6\], but got shape \[2, 6, 6, 5\]"),
    ((2, 6, 6, 6), torch.float64, r"grad_output to have the same dtype as input \(Float\)"),
])
def test_bad_input_raises_from_the_backward_op(grad_shape, grad_dtype, message):
    x, w, *_ = _args()
    grad_output = torch.randn(grad_shape, dtype=grad_dtype)
    with pytest.raises((RuntimeError, TypeError), match="lenet_ext.conv2d_backward: .*" + message):
        op.conv2d_backward(grad_output, x, w, [1, 1], [0, 0], [1, 1], 2, [True, True, True])
