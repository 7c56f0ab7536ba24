"""lenet_ext max_pool2d (functional, nn.MaxPool2d, the ops themselves) against stock PyTorch: values,
argmax indices and gradients on a grid of configurations, NaN and ties, gradcheck, opcheck,
torch.compile, thread-count determinism and bad input."""
import pytest
import torch
import torch.nn.functional as F

import lenet_ext
import lenet_ext.functional as LF

lib = torch.ops.lenet_ext

# (kernel_size, stride, padding, dilation, ceil_mode, (H, W)): every value of every axis appears
# (kernel 1-4 and non-square, stride 1-3, padding 0-2, dilation 1-2, ceil_mode both, odd sizes),
# not the full product. stride None means kernel_size.
CONFIGS = [
    (1, None, 0, 1, False, (5, 7)),
    (2, None, 0, 1, False, (6, 6)),
    (2, 2, 0, 1, False, (7, 9)),  # LeNet's pool on odd sizes: the last row and column are dropped
    (2, 2, 0, 1, True, (7, 9)),  # ... or pooled in a partial window
    (3, 1, 1, 1, False, (7, 5)),
    (3, 2, 0, 1, True, (8, 8)),
    (3, 3, 1, 2, True, (10, 9)),
    (4, 2, 2, 1, True, (9, 8)),
    (2, 1, 1, 2, False, (4, 5)),
    ((2, 3), (1, 2), (1, 1), 1, True, (5, 7)),
    ((3, 2), (3, 1), (0, 1), (2, 1), False, (11, 6)),
    ((4, 1), (2, 3), (2, 0), (1, 2), True, (7, 9)),
]
CONFIG_IDS = [f"k{k}-s{s}-p{p}-d{d}-ceil{int(c)}-{h}x{w}" for k, s, p, d, c, (h, w) in CONFIGS]
BATCHES = [(), (0,), (1,), (3,)]  # () is unbatched (C, H, W) input
BATCH_IDS = ["unbatched", "batch0", "batch1", "batch3"]
CHANNELS = 2


def pool_args(config):
    kernel_size, stride, padding, dilation, ceil_mode, _ = config
    return dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                ceil_mode=ceil_mode)


def input_shape(config, batch=(1,)):
    return (*batch, CHANNELS, *config[-1])


def assert_same_pool(input, config):
    """Output, indices and gradient of ours equal torch's on `input`."""
    args = pool_args(config)
    ours_in = input.detach().clone().requires_grad_()
    stock_in = input.detach().clone().requires_grad_()
    output, indices = LF.max_pool2d(ours_in, **args, return_indices=True)
    expected_output, expected_indices = F.max_pool2d(stock_in, **args, return_indices=True)
    torch.testing.assert_close(output, expected_output, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)
    grad_output = torch.randn_like(output)
    output.backward(grad_output)
    expected_output.backward(grad_output)
    torch.testing.assert_close(ours_in.grad, stock_in.grad, equal_nan=True)


@pytest.mark.parametrize("batch", BATCHES, ids=BATCH_IDS)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_matches_torch(config, batch, device, dtype):
    assert_same_pool(torch.randn(input_shape(config, batch), device=device, dtype=dtype), config)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_ties_pick_torchs_index(config, device, dtype):
    input = torch.randint(0, 3, input_shape(config, (3,)), device=device).to(dtype)
    assert_same_pool(input, config)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_nan_propagates_as_in_torch(config, device, dtype):
    # integers make ties between the NaNs' neighbours too; a window with NaN yields NaN
    input = torch.randint(0, 3, input_shape(config, (3,)), device=device).to(dtype)
    input[torch.rand_like(input) < 0.2] = float("nan")
    assert_same_pool(input, config)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c[2] != 0],
                         ids=[i for c, i in zip(CONFIGS, CONFIG_IDS) if c[2] != 0])
@pytest.mark.parametrize("fill", [-1.0, float("-inf")])
def test_padded_cells_never_win(config, fill, device, dtype):
    # all cells below the implicit padding: outputs are input values, indices point at input cells
    input = torch.full(input_shape(config), fill, device=device, dtype=dtype)
    input = input - torch.rand_like(input)
    output, indices = LF.max_pool2d(input, **pool_args(config), return_indices=True)
    assert (output <= -1).all()
    assert_same_pool(input, config)


# Windows wholly in the padding: dilated taps that step over a small input (columns: taps at -1
# and 2 of a row 2 wide; rows: at -1 and 2 of 2 rows). Every output is then such a window, and
# torch gives -inf with the index of its first tap at or past the input's top-left corner (the
# cell after the row end; past the plane for rows), where its backward adds the gradient.
WINDOW_IN_PADDING_COLUMNS = ((2, 2), (2, 1), (0, 1), (1, 3), False, (3, 2))
WINDOW_IN_PADDING_ROWS = ((2, 1), 1, (1, 0), (3, 1), True, (2, 3))


def test_window_wholly_in_padding_is_minus_inf_at_torchs_index(device, dtype):
    input = torch.randn(input_shape(WINDOW_IN_PADDING_COLUMNS, (2,)), device=device, dtype=dtype)
    output = F.max_pool2d(input, **pool_args(WINDOW_IN_PADDING_COLUMNS), return_indices=True)
    assert (output[0] == -float("inf")).all() and (output[1] == 2).all()
    assert_same_pool(input, WINDOW_IN_PADDING_COLUMNS)  # with the gradient at that index


@pytest.mark.parametrize("algorithm", ["reference", "general"])
def test_window_wholly_in_padding_in_each_algorithm(algorithm, dtype):
    config = WINDOW_IN_PADDING_COLUMNS
    input = torch.randn(input_shape(config, (2,)), dtype=dtype)
    kernel_size, stride, padding, dilation, ceil_mode, _ = config
    output, indices = lib._max_pool2d_forced(input, kernel_size, stride, padding, dilation,
                                             ceil_mode, algorithm)
    expected, expected_indices = F.max_pool2d(input, **pool_args(config), return_indices=True)
    assert torch.equal(output, expected) and torch.equal(indices, expected_indices)


def test_window_wholly_in_padding_past_the_plane_has_no_backward(device, dtype):
    # torch's index lies past the plane; its CPU backward writes there (out of bounds), ours refuses
    config = WINDOW_IN_PADDING_ROWS
    input = torch.randn(input_shape(config, (2,)), device=device, dtype=dtype, requires_grad=True)
    output, indices = LF.max_pool2d(input, **pool_args(config), return_indices=True)
    expected, expected_indices = F.max_pool2d(input.detach(), **pool_args(config),
                                              return_indices=True)
    assert (expected == -float("inf")).all() and (expected_indices >= 6).all()
    assert torch.equal(output, expected) and torch.equal(indices, expected_indices)
    with pytest.raises(RuntimeError, match=r"^lenet_ext\.max_pool2d_backward: expected indices in "
                                           r"\[0, H\*W\) = \[0, 6\) .* but got [6-8]$"):
        output.sum().backward()


@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last"])
@pytest.mark.parametrize("config", CONFIGS[::3], ids=CONFIG_IDS[::3])
def test_non_contiguous_input(config, layout, device, dtype):
    height, width = config[-1]
    if layout == "transposed":
        input = torch.randn(3, CHANNELS, width, height, device=device, dtype=dtype).transpose(-1, -2)
    elif layout == "sliced":
        input = torch.randn(3, 2 * CHANNELS, height, 2 * width, device=device, dtype=dtype)
        input = input[:, ::2, :, 1::2]
    else:
        input = torch.randn(3, CHANNELS, height, width, device=device, dtype=dtype)
        input = input.to(memory_format=torch.channels_last)
    assert not input.is_contiguous()
    assert_same_pool(input, config)


@pytest.mark.parametrize("batch", [1, 64, 256])
@pytest.mark.parametrize("plane", [(6, 28, 28), (16, 10, 10)], ids=["pool1", "pool2"])
def test_lenet_pools(plane, batch, device):
    assert_same_pool(torch.randn(batch, *plane, device=device),
                     (2, None, 0, 1, False, plane[1:]))


# LeNet's 2x2, stride 2 pool runs on vectors of 16, 8 or 4 floats (8, 4 or 2 doubles) along an
# output row, the last block overlapping its neighbour, and on a scalar loop below the narrowest:
# output widths at, just below and just above each vector width; odd input widths and heights.
@pytest.mark.parametrize("out_w", [1, 2, 3, 4, 5, 7, 8, 9, 14, 15, 16, 17, 33])
@pytest.mark.parametrize("values", ["random", "ties", "nan"])
def test_2x2_stride_2_at_every_vector_width(out_w, values, device, dtype):
    shape = (2, 3, 4 + out_w % 2, 2 * out_w + out_w % 2)
    if values == "random":
        input = torch.randn(shape, device=device, dtype=dtype)
    else:
        input = torch.randint(0, 3, shape, device=device).to(dtype)
        if values == "nan":
            input[torch.rand_like(input) < 0.2] = float("nan")
    assert_same_pool(input, (2, None, 0, 1, False, shape[-2:]))


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_gradcheck(config, device):
    # distinct values, far apart next to gradcheck's step, so no perturbation changes an argmax
    shape = input_shape(config, (2,))
    input = torch.randperm(torch.Size(shape).numel(), device=device, dtype=torch.float64)
    input = (input / input.numel()).reshape(shape).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: LF.max_pool2d(x, **pool_args(config)), (input,))


@pytest.mark.parametrize("config", CONFIGS[::2], ids=CONFIG_IDS[::2])
def test_opcheck(config, device, dtype):
    kernel_size, stride, padding, dilation, ceil_mode, _ = config
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    input = torch.randn(input_shape(config, (2,)), device=device, dtype=dtype, requires_grad=True)
    args = (input, pair(kernel_size), pair(stride or kernel_size), pair(padding), pair(dilation),
            ceil_mode)
    torch.library.opcheck(lib.max_pool2d, args)
    _, indices = lib.max_pool2d(*args)
    grad_output = torch.randn(indices.shape, device=device, dtype=dtype)
    torch.library.opcheck(lib.max_pool2d_backward, (grad_output, indices, list(input.shape)))


def test_compile_matches_eager(device):
    def pool(x):
        return LF.max_pool2d(x, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), ceil_mode=True,
                             return_indices=True)

    compiled = torch.compile(pool, fullgraph=True)
    input = torch.randn(2, 3, 9, 8, device=device, requires_grad=True)
    (output, indices), (expected, expected_indices) = compiled(input), pool(input)
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)
    grad_output = torch.randn_like(output)
    (grad,) = torch.autograd.grad(output, input, grad_output)
    (expected_grad,) = torch.autograd.grad(expected, input, grad_output)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)


def test_bitwise_same_for_any_thread_count(device, dtype):
    # overlapping windows, so backward accumulates; enough planes for parallel_for to split them
    input = torch.randn(8, 16, 30, 30, device=device, dtype=dtype, requires_grad=True)
    grad_output = torch.randn(8, 16, 28, 28, device=device, dtype=dtype)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            output, indices = LF.max_pool2d(input, 3, stride=1, return_indices=True)
            (grad,) = torch.autograd.grad(output, input, grad_output)
            results.append((output, indices, grad))
    finally:
        torch.set_num_threads(threads)
    for one_thread, two_threads in zip(*results):
        assert torch.equal(one_thread, two_threads)


def test_indices_are_not_differentiable(device, dtype):
    input = torch.randn(2, 3, 6, 6, device=device, dtype=dtype, requires_grad=True)
    output, indices = LF.max_pool2d(input, 2, return_indices=True)
    assert output.requires_grad and not indices.requires_grad
    assert indices.dtype == torch.int64


@pytest.mark.parametrize("form", [
    dict(kernel_size=3),
    dict(kernel_size=(3, 3), stride=(3, 3)),
    dict(kernel_size=[3], stride=[2], padding=[1], dilation=[1]),
    dict(kernel_size=(3, 2), stride=[]),
    dict(kernel_size=(2, 3), stride=1, padding=(1, 0), dilation=(1, 2)),
], ids=["int", "pairs", "one-element-lists", "empty-stride", "mixed"])
def test_argument_forms(form, device):
    input = torch.randn(2, 3, 8, 9, device=device)
    torch.testing.assert_close(LF.max_pool2d(input, **form), F.max_pool2d(input, **form),
                               rtol=0, atol=0)


@pytest.mark.parametrize("arguments", [
    dict(kernel_size=2),
    dict(kernel_size=(2, 3), stride=1, padding=1, dilation=2, ceil_mode=True, return_indices=True),
], ids=["default", "all"])
def test_module_is_drop_in(arguments, device):
    ours, stock = lenet_ext.nn.MaxPool2d(**arguments), torch.nn.MaxPool2d(**arguments)
    assert isinstance(ours, torch.nn.MaxPool2d)
    assert repr(ours) == repr(stock)
    input = torch.randn(2, 3, 9, 8, device=device)
    torch.testing.assert_close(ours(input), stock(input), rtol=0, atol=0)  # tensor or pair


# (input shape, dtype, kernel_size, stride, padding, dilation, ceil_mode, error, message pattern)
BAD_INPUTS = {
    "kernel-zero": ((1, 1, 4, 4), torch.float32, (0, 2), (1, 1), (0, 0), (1, 1), False,
                    RuntimeError, r"expected kernel_size to be positive"),
    "stride-zero": ((1, 1, 4, 4), torch.float32, (2, 2), (2, 0), (0, 0), (1, 1), False,
                    RuntimeError, r"expected stride to be positive"),
    "stride-negative": ((1, 1, 4, 4), torch.float32, (2, 2), (-1, 2), (0, 0), (1, 1), False,
                        RuntimeError, r"expected stride to be positive"),
    "dilation-zero": ((1, 1, 4, 4), torch.float32, (2, 2), (2, 2), (0, 0), (0, 1), False,
                      RuntimeError, r"expected dilation to be positive"),
    "padding-over-half": ((1, 1, 8, 8), torch.float32, (3, 3), (1, 1), (1, 2), (1, 1), False,
                          RuntimeError, r"expected padding .*at most half of kernel_size"),
    "padding-negative": ((1, 1, 8, 8), torch.float32, (3, 3), (1, 1), (-1, 0), (1, 1), False,
                         RuntimeError, r"expected padding to be non-negative"),
    "kernel-three-values": ((1, 1, 8, 8), torch.float32, (2, 2, 2), (1, 1), (0, 0), (1, 1), False,
                            RuntimeError, r"expected kernel_size to have 2 elements"),
    "output-too-small": ((1, 1, 3, 3), torch.float32, (5, 5), (1, 1), (0, 0), (1, 1), False,
                         RuntimeError, r"expected an output of at least 1x1.* gives 0x0"),
    "rank-2": ((4, 4), torch.float32, (2, 2), (2, 2), (0, 0), (1, 1), False,
               RuntimeError, r"expected input to be a 3-D .* or 4-D .* but got a 2-D tensor"),
    "rank-5": ((1, 1, 1, 4, 4), torch.float32, (2, 2), (2, 2), (0, 0), (1, 1), False,
               RuntimeError, r"expected input to be a 3-D .* or 4-D .* but got a 5-D tensor"),
    "zero-channels": ((2, 0, 4, 4), torch.float32, (2, 2), (2, 2), (0, 0), (1, 1), False,
                      RuntimeError, r"expected input to have non-zero C, H and W"),
    "int-dtype": ((1, 1, 4, 4), torch.int32, (2, 2), (2, 2), (0, 0), (1, 1), False,
                  TypeError, r"expected input to have dtype float32, float64, bfloat16 or float16, but got Int"),
    "complex-dtype": ((1, 1, 4, 4), torch.complex64, (2, 2), (2, 2), (0, 0), (1, 1), False,
                      TypeError, r"expected input to have dtype float32, float64, bfloat16 or float16, "
                      r"but got ComplexFloat"),
}


@pytest.mark.parametrize("call", ["functional", "op"])
@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises(case, call, device):
    shape, dtype, kernel_size, stride, padding, dilation, ceil_mode, error, pattern = case
    input = torch.ones(shape, device=device, dtype=dtype)
    pool = LF.max_pool2d if call == "functional" else lib.max_pool2d
    with pytest.raises(error, match=r"^lenet_ext\.max_pool2d: " + pattern):
        pool(input, kernel_size, stride, padding, dilation, ceil_mode)


def backward_args(device):
    grad_output = torch.randn(2, 3, 2, 2, device=device)
    _, indices = lib.max_pool2d(torch.randn(2, 3, 4, 4, device=device), (2, 2), (2, 2), (0, 0),
                                (1, 1), False)
    return grad_output, indices, [2, 3, 4, 4]


@pytest.mark.parametrize("bad_index", [16, -1, 2**40])
def test_backward_rejects_indices_outside_the_plane(bad_index, device):
    grad_output, indices, input_size = backward_args(device)
    indices[1, 2, 0, 1] = bad_index
    with pytest.raises(RuntimeError, match=r"^lenet_ext\.max_pool2d_backward: expected indices in "
                       rf"\[0, H\*W\) = \[0, 16\) .* but got {bad_index}"):
        lib.max_pool2d_backward(grad_output, indices, input_size)


@pytest.mark.parametrize("case", ["indices-int32", "indices-shape", "input-size-length",
                                  "input-size-channels", "grad-rank", "grad-dtype"])
def test_backward_bad_input_raises(case, device):
    grad_output, indices, input_size = backward_args(device)
    error, pattern = RuntimeError, ""
    if case == "indices-int32":
        indices, error, pattern = indices.int(), TypeError, "expected indices to have dtype int64"
    elif case == "indices-shape":
        indices, pattern = indices[..., :1], "expected indices of shape"
    elif case == "input-size-length":
        input_size, pattern = [3, 4, 4], "expected input_size to have 4 elements"
    elif case == "input-size-channels":
        input_size, pattern = [2, 5, 4, 4], "expected input_size to match grad_output"
    elif case == "grad-rank":
        grad_output, indices, pattern = grad_output[0, 0], indices[0, 0], "expected grad_output to be"
    else:
        grad_output, error, pattern = grad_output.to(torch.complex64), TypeError, "expected grad_output to have dtype"
    with pytest.raises(error, match=r"^lenet_ext\.max_pool2d_backward: " + pattern):
        lib.max_pool2d_backward(grad_output, indices, input_size)
