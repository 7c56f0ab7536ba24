"""Each conv2d CPU algorithm forced on every shape of a grid: where it claims the shape (csrc/cpu/
conv2d/select.cpp) it must equal the reference kernel and stock, forward and every gradient; where
it does not, forcing it must raise. And the algorithms LeNet's shapes take, so that a lost fast path
fails here rather than only in a benchmark."""
import pytest
import torch
import torch.nn.functional as TF

from test_conv2d import SPECIAL_PATH_CASES, TOLERANCE, _lanes, assert_close

op = torch.ops.lenet_ext
ALGORITHMS = ["reference", "im2col", "direct", "rows", "lanes", "implicit", "winograd"]
STEPS = ["forward", "grad_input", "grad_weight"]
# the steps each algorithm is written for (on some shapes)
HAS = {"reference": STEPS, "im2col": STEPS, "direct": STEPS, "rows": ["forward", "grad_weight"],
       "lanes": STEPS, "implicit": ["forward", "grad_input"], "winograd": STEPS}


def _random_small_case(seed):
    """A stride-1 unpadded conv near the fast paths' bounds: (batch, in, out, size, kernel, groups,
    padding) as a function of the lanes L, like SPECIAL_PATH_CASES."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda options: options[torch.randint(len(options), (), generator=g).item()]  # noqa

    def case(L):
        groups = pick([1, 1, 2])
        kernel = (pick([1, 2, 3, 5]), pick([5, 5, 3, 4]))
        out_channels = groups * pick([1, 3, L // 2, L // 2 + 1, L])
        size = tuple(k + pick([0, 1, 5, 9, L, 2 * L]) for k in kernel)
        return pick([1, 2, L - 1, L, L + 1, 2 * L + 3]), groups * pick([1, 2, 3]), out_channels, \
            size, kernel, groups, 0
    return case


CASES = dict(SPECIAL_PATH_CASES)
CASES.update({f"random_{seed}": _random_small_case(seed) for seed in range(16)})
# general convolutions: reference and im2col claim them, implicit the forward of the undilated
CASES.update({
    "strided": lambda L: (2, 3, 4, (9, 10), (3, 3), 1, 0, (2, 3), 1),
    "padded": lambda L: (2, 4, 6, (7, 8), (5, 5), 2, 2, 1, 1),
    "dilated": lambda L: (3, 2, 5, (11, 9), (3, 5), 1, (1, 0), 1, (2, 1)),
    "wide": lambda L: (2, 3, 2 * L + 1, (8, 8), (5, 5), 1, 0),
    # im2col's GEMM paths: 1x1 as a product on the input itself, strided 1x1, columns in several
    # chunks (1 MB of them) split over threads by chunk, input channel or tap range
    "pointwise": lambda L: (3, 24, 40, (9, 11), (1, 1), 1, 0),
    "pointwise_chunked": lambda L: (2, 64, 20, (64, 70), (1, 1), 1, 0),  # a plane of 2-3 chunks
    "pointwise_groups": lambda L: (2, 8, 6, (5, 7), (1, 1), 2, 0),
    "pointwise_strided": lambda L: (2, 16, 32, (14, 13), (1, 1), 1, 0, 2, 1),
    "chunked": lambda L: (1, 40, 36, (30, 30), (3, 3), 1, 1),
    "chunked_odd_batch": lambda L: (3, 40, 20, (31, 29), (3, 3), 1, 1),
    "stem": lambda L: (2, 3, 8, (90, 90), (7, 7), 1, 3, 2, 1),
    # grad_weight as grad_output x columns^T (from 257 output channels; fewer take the
    # transpose); stride 2's rows of 8 and 16 copied as vectors, up to the end of the input
    "many_channels": lambda L: (2, 3, 260, (6, 5), (3, 3), 1, 1),
    "strided_even_copies": lambda L: (3, 2, 5, (17, 33), (3, 3), 1, 0, 2, 1),
    # implicit GEMM: several images a chunk (8 chunks of a batch of 17, the last one short),
    # bands of rows of a large plane (the last band short), a padding of kernel - 1 (grad_input's
    # padding of 0), uneven padding, groups
    "implicit_images": lambda L: (17, 5, 7, (6, 9), (3, 2), 1, (1, 0)),
    "implicit_bands": lambda L: (2, 3, 5, (61, 45), (3, 3), 1, 1),
    "implicit_full_padding": lambda L: (2, 3, 4, (7, 6), (3, 2), 1, (2, 1)),
    "implicit_groups": lambda L: (3, 6, 4, (12, 10), (3, 3), 2, (0, 1)),
    # Winograd F(2x2, 3x3): tile rows in 2 chunks (3 in float64; 4 MB of transformed tiles),
    # output channels in 2 blocks (3; 8 MB of transformed weight), channels off whole vectors with
    # the padding of grad_input's limit, groups
    "winograd_chunks": lambda L: (6, 16, 16, (40, 40), (3, 3), 1, 1),
    # ... and in 10 chunks (20 in float64) of 1 MB, a chunk a thread (winograd_thread_chunks)
    "winograd_thread_chunks": lambda L: (12, 16, 16, (40, 40), (3, 3), 1, 1),
    "winograd_blocks": lambda L: (1, 256, 528, (4, 5), (3, 3), 1, 2),
    "winograd_uneven": lambda L: (2, 17, 33, (9, 12), (3, 3), 1, (2, 0)),
    "winograd_groups": lambda L: (2, 12, 9, (7, 6), (3, 3), 3, 1),
    # rows of a quarter, of half and of just under half a vector of tiles: 4 or 2 tile rows
    # stacked in a vector (some lanes idle in the last), the last stack of an image short
    "winograd_stacked": lambda L: (3, 5, 7, (9, L // 2), (3, 3), 1, 1),
    "winograd_stacked_half": lambda L: (2, 6, 5, (7, L), (3, 3), 1, 1),
    "winograd_stacked_odd": lambda L: (3, 6, 5, (13, L - 2), (3, 3), 1, 1),
    # implicit GEMM over stride phases ("strided", "stem" and "pointwise_strided" too): several
    # images a chunk, bands of a large plane, groups, kernels of 2-3 phases a side and a stride
    # past the kernel (phases no tap reads)
    "strided_images": lambda L: (17, 5, 7, (9, 12), (3, 3), 1, 1, 2, 1),
    "strided_bands": lambda L: (2, 3, 5, (121, 95), (3, 3), 1, 1, 2, 1),
    "strided_groups": lambda L: (3, 6, 4, (13, 11), (3, 3), 2, (1, 0), 2, 1),
    "strided_phases": lambda L: (2, 3, 4, (11, 10), (4, 5), 1, (3, 2), (3, 2), 1),
    "strided_sparse": lambda L: (2, 4, 3, (10, 11), (2, 2), 1, 0, 3, 1),
    "strided_packed": lambda L: (2, 4, 120, (9, 8), (3, 3), 1, 1, 2, 1),  # B packed, not in place
    # direct grad_weight on a zero-bordered copy: 3 wide, uneven padding, a whole vector of
    # output channels; 5 wide with groups
    "direct_bordered": lambda L: (3, 5, L, (12, 11), (3, 3), 1, (1, 2)),
    "direct_bordered_groups": lambda L: (2, 4, 2 * L, (9, 10), (5, 5), 2, 2),
    # implicit with a phase a kernel column (small planes, or a row a panel), and a small batch in
    # two chunks under a weight past 2 MB
    "implicit_unrolled": lambda L: (9, 6, 10, (7, 8), (5, 3), 1, (2, 1)),
    "implicit_aligned": lambda L: (3, 5, 7, (2 * L, 2 * L), (3, 3), 1, 1),  # a row a panel
    "implicit_heavy_weight": lambda L: (5, 228, 300, (5, 6), (3, 3), 1, 1),
})


def _conv_args(case, dtype):
    batch, in_channels, out_channels, size, kernel, groups, padding, *rest = CASES[case](_lanes(dtype))
    stride, dilation = rest if rest else (1, 1)
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    x = torch.randn(batch, in_channels, *size, dtype=dtype)
    w = torch.randn(out_channels, in_channels // groups, *kernel, dtype=dtype)
    b = torch.randn(out_channels, dtype=dtype)
    return x, w, b, pair(stride), pair(padding), pair(dilation), groups


def _run(algorithm, step, x, w, b, grad_output, *args):
    """One step of conv2d with the algorithm forced: the output or the gradient."""
    if step == "forward":
        return op._conv2d_forced(x, w, b, *args, algorithm)
    if step == "grad_bias":
        return op._conv2d_backward_forced(grad_output, x, w, *args, [False, False, True], algorithm)[2]
    mask = [step == "grad_input", step == "grad_weight", False]
    return op._conv2d_backward_forced(grad_output, x, w, *args, mask, algorithm)[mask.index(True)]


def _stock(step, x, w, b, grad_output, stride, padding, dilation, groups):
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    out = TF.conv2d(x, w, b, stride, padding, dilation, groups)
    if step == "forward":
        return out.detach()
    which = {"grad_input": x, "grad_weight": w, "grad_bias": b}[step]
    return torch.autograd.grad(out, which, grad_output)[0]


def _claimed(algorithm, step, x, w, b, grad_output, args):
    try:
        return _run(algorithm, step, x, w, b, grad_output, *args)
    except RuntimeError as error:
        assert f"algorithm '{algorithm}' does not claim the {step}" in str(error)
        return None


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", CASES)
def test_forced_algorithm_equals_reference_and_stock(dtype, case, algorithm):
    x, w, b, *args = _conv_args(case, dtype)
    grad_output = torch.randn_like(TF.conv2d(x, w, b, *args))
    for step in STEPS + ["grad_bias"]:
        ours = _claimed(algorithm, step, x, w, b, grad_output, args)
        if ours is None:
            continue
        assert_close(ours, _run("reference", step, x, w, b, grad_output, *args))
        assert_close(ours, _stock(step, x, w, b, grad_output, *args))


def test_every_algorithm_claims_shapes_of_the_grid():
    """Each algorithm is forced, and checked, on shapes for each step it has: the grid still
    reaches it. The steps it does not have are refused everywhere."""
    for dtype in (torch.float32, torch.float64):
        claimed = {(a, s): 0 for a in ALGORITHMS for s in STEPS}
        for case in CASES:
            x, w, b, *args = _conv_args(case, dtype)
            grad_output = torch.randn_like(TF.conv2d(x, w, b, *args))
            for algorithm in ALGORITHMS:
                for step in STEPS:
                    claimed[algorithm, step] += _claimed(algorithm, step, x, w, b, grad_output,
                                                         args) is not None
        for (algorithm, step), count in claimed.items():
            if step in HAS[algorithm]:
                assert count >= 4, (algorithm, step, dtype, count)
            else:
                assert count == 0, (algorithm, step, dtype, count)


@pytest.mark.parametrize("algorithm, case", [
    ("im2col", "pointwise"), ("im2col", "chunked"), ("im2col", "chunked_odd_batch"),
    ("im2col", "stem"), ("implicit", "implicit_images"), ("implicit", "implicit_bands"),
    ("implicit", "chunked"), ("winograd", "winograd_chunks"), ("winograd", "winograd_blocks"),
    ("winograd", "winograd_thread_chunks"),
    ("winograd", "chunked_odd_batch"), ("winograd", "winograd_stacked"),
    ("winograd", "winograd_stacked_odd"),
    ("im2col", "strided_images"), ("im2col", "many_channels"),
    ("implicit", "stem"), ("implicit", "strided_images"),
    ("implicit", "strided_bands"), ("implicit", "implicit_heavy_weight"),
    ("implicit", "implicit_unrolled"),
    ("direct", "direct_bordered"), ("im2col", "implicit_heavy_weight")])
def test_gemm_algorithms_are_bitwise_the_same_for_one_and_two_threads(algorithm, case):
    """Threads take disjoint parts of each result; chunks are fixed by the shape alone."""
    x, w, b, *args = _conv_args(case, torch.float32)
    grad_output = torch.randn_like(TF.conv2d(x, w, b, *args))
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append([_claimed(algorithm, step, x, w, b, grad_output, args)
                            for step in HAS[algorithm]])
    finally:
        torch.set_num_threads(previous)
    assert any(result is not None for result in results[0])
    for one, two in zip(*results):
        assert one is None and two is None or torch.equal(one, two)


# LeNet's convolutions (float32, 16 lanes) and the algorithms they take at batch 1, 64, 256.
LENET = {"conv1": (1, 6, 32), "conv2": (6, 16, 14)}
LENET_ALGORITHMS = {
    ("conv1", 1): ("rows", "im2col", "rows"),
    ("conv1", 64): ("lanes", "im2col", "lanes"),
    ("conv1", 256): ("lanes", "im2col", "lanes"),
    ("conv2", 1): ("direct", "direct", "direct"),
    ("conv2", 64): ("direct", "lanes", "lanes"),
    ("conv2", 256): ("direct", "lanes", "lanes"),
}


def _algorithms(layer, batch, weight=None):
    in_channels, out_channels, size = LENET[layer]
    x = torch.randn(batch, in_channels, size, size)
    w = torch.randn(out_channels, in_channels, 5, 5) if weight is None else weight
    return tuple(op._conv2d_algorithm(x, w, [1, 1], [0, 0], [1, 1], 1, step) for step in STEPS)


@pytest.mark.parametrize("layer, batch", LENET_ALGORITHMS)
def test_lenet_shapes_take_their_fast_paths(layer, batch):
    """conv2d and conv2d_relu_max_pool2d (which calls the same kernels) at LeNet's shapes."""
    assert _algorithms(layer, batch) == LENET_ALGORITHMS[layer, batch]


@pytest.mark.parametrize("batch", [1, 64, 256])
def test_lenet_op_chunks_take_their_fast_paths(batch):
    """The whole-network lenet op runs its conv blocks on chunks of min(16, batch) images."""
    chunk = min(16, batch)
    assert _algorithms("conv1", chunk) == (("rows", "im2col", "rows") if chunk < 16
                                           else ("lanes", "im2col", "lanes"))
    assert _algorithms("conv2", chunk) == (("direct",) * 3 if chunk < 16
                                           else ("direct", "lanes", "lanes"))


def test_direct_grad_input_needs_finite_weights():
    """Its zero padding times an infinite weight would be NaN where stock has none."""
    w = torch.randn(16, 6, 5, 5)
    w[3, 2, 1, 1] = float("inf")
    assert _algorithms("conv2", 1, w)[1] == "im2col"
    x = torch.randn(1, 6, 14, 14)
    with pytest.raises(RuntimeError, match="algorithm 'direct' does not claim the grad_input"):
        op._conv2d_backward_forced(torch.randn(1, 16, 10, 10), x, w, [1, 1], [0, 0], [1, 1], 1,
                                   [True, False, False], "direct")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index", [None, 0, 4095, 4096, 64 * 32 * 9 - 1])
def test_implicit_grad_input_needs_finite_weights(index, dtype):
    """Its padding of grad_output meets every weight: a non-finite one anywhere in the weight (the
    scan runs in blocks of 4096 values) sends grad_input to im2col, whose result is stock's."""
    x, w = torch.randn(4, 32, 16, 16, dtype=dtype), torch.randn(64, 32, 3, 3, dtype=dtype)
    if index is not None:
        w.view(-1)[index] = float("inf") if index % 2 else float("nan")
    args = ([1, 1], [1, 1], [1, 1], 1)
    chosen = op._conv2d_algorithm(x, w, *args, "grad_input")
    assert chosen == ("implicit" if index is None else "im2col")
    grad_output = torch.randn(4, 64, 16, 16, dtype=dtype)
    ours = op.conv2d_backward(grad_output, x, w, *args, [True, False, False])[0]
    torch.testing.assert_close(ours, _run(chosen, "grad_input", x, w, None, grad_output, *args),
                               equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("step, where", [("forward", "input"), ("forward", "weight"),
                                         ("grad_input", "weight"), ("grad_weight", "input")])
def test_winograd_non_finite_values_give_im2col_results(step, where, value):
    """A transform mixes a tile's values, so one infinity would turn its neighbours' results into
    NaN: such a result is recomputed by im2col, whose sums are stock's (but for the README's one
    difference: an infinite weight meeting zero padding gives NaN), NaN for NaN."""
    x, w, b, *args = _conv_args("winograd_uneven", torch.float32)
    (x if where == "input" else w)[0, 3, 2, 1] = value
    grad_output = torch.randn_like(TF.conv2d(x, w, b, *args))
    ours = _run("winograd", step, x, w, b, grad_output, *args)
    assert not ours.isfinite().all()
    torch.testing.assert_close(ours, _run("im2col", step, x, w, b, grad_output, *args), equal_nan=True,
                               rtol=0, atol=0)


@pytest.mark.parametrize("shape, batch, winograd", [
    ((64, 64, 56), 1, (True, True, True)), ((128, 128, 28), 32, (True, True, True)),
    ((256, 256, 14), 32, (True, True, True)), ((512, 512, 7), 32, (False, False, True)),
    ((64, 64, 8), 32, (True, True, True)), ((64, 64, 8), 8, (True, True, True)),
    ((128, 128, 8), 32, (False, False, True)), ((32, 64, 26), 32, (False, False, True)),
    ((512, 512, 7), 16, (False, False, False)),
    ((32, 32, 16), 32, (True, True, True)), ((32, 32, 16), 16, (False, False, True)),
    ((16, 16, 32), 32, (True, True, False)), ((16, 16, 32), 8, (False, False, False)),
    ((16, 32, 32), 32, (False, False, True)),
    ((512, 512, 7), 1, (False, False, False)), ((3, 16, 32), 32, (False, False, False))])
def test_winograd_takes_wide_3x3_layers(shape, batch, winograd):
    """From 128 tiles: the forward from 64 input and output channels, grad_input from 16 input
    channels and no more output channels, grad_weight from 16 of each and more than a vector of
    output channels (direct takes a vector's), and from 384 tiles where its transformed weight
    comes in blocks (512->512); not a few tiles (the weight's transform would cost more than the
    products); the forward and grad_input not on 4 tiles a row (8x8, 7x7) but where U is small
    (64x64 channels), and grad_input only from 64 channels on the planes implicit takes (up to
    32x32); both from 16 channels, and no more output channels, where the tiles make enough
    chunks of a thread's L2 (32->32 @16 from batch 32, 16->16 @32 from batch 16)."""
    channels, out_channels, size = shape
    x, w = torch.randn(batch, channels, size, size), torch.randn(out_channels, channels, 3, 3)
    chosen = tuple(op._conv2d_algorithm(x, w, [1, 1], [1, 1], [1, 1], 1, step) == "winograd"
                   for step in STEPS)
    assert chosen == winograd, (shape, batch, chosen)


def test_small_planes_go_to_implicit_and_im2col():
    x, w = torch.randn(32, 128, 8, 8), torch.randn(128, 128, 3, 3)
    assert [op._conv2d_algorithm(x, w, [1, 1], [1, 1], [1, 1], 1, step) for step in STEPS] == [
        "implicit", "implicit", "winograd"]
    # grad_input: implicit from 8 images, but for 1x1 past 256 channels from 32
    for batch, kernel, expected in ((8, 3, "implicit"), (4, 3, "im2col"), (8, 1, "implicit"),
                                    (32, 1, "im2col")):
        x, w = torch.randn(batch, 512, 7, 7), torch.randn(512, 512, kernel, kernel)
        padding = [kernel // 2] * 2
        assert op._conv2d_algorithm(x, w, [1, 1], padding, [1, 1], 1, "grad_input") == expected
    # and on planes up to 32x32 from 8 images, where there are no more output channels than input
    # channels and the kernel is past 1x1 (past 32x32 Winograd takes 16 channels)
    for batch, size, shape, kernel, expected in (
            (8, 32, (16, 16), 3, "implicit"), (1, 32, (16, 16), 3, "im2col"),
            (8, 33, (16, 16), 3, "winograd"), (8, 32, (16, 32), 3, "im2col"),
            (8, 32, (32, 16), 1, "im2col"), (8, 26, (32, 32), 3, "implicit")):
        x, w = torch.randn(batch, shape[0], size, size), torch.randn(shape[1], shape[0], kernel, kernel)
        padding = [kernel // 2] * 2
        assert op._conv2d_algorithm(x, w, [1, 1], padding, [1, 1], 1, "grad_input") == expected, (
            batch, size, shape, kernel)


@pytest.mark.parametrize("channels, out_channels, kernel, expected", [
    (256, 512, 3, "implicit"), (16, 32, 3, "implicit"), (3, 64, 7, "implicit"),
    (64, 32, 1, "implicit"), (64, 128, 1, "im2col")])
def test_strided_forward_is_implicit_but_for_wide_1x1(channels, out_channels, kernel, expected):
    """Stride 2: implicit for any kernel past 1x1 (its phases need no unrolled columns); a 1x1
    reads every other column, which im2col copies out faster once the GEMM packs B (more output
    channels than its few row tiles)."""
    x = torch.randn(2, channels, 14, 14)
    w = torch.randn(out_channels, channels, kernel, kernel)
    padding = [kernel // 2] * 2
    assert op._conv2d_algorithm(x, w, [2, 2], padding, [1, 1], 1, "forward") == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(16, 16, 32), (3, 16, 32), (16, 8, 32), (8, 16, 15)])
def test_grad_weight_of_a_vector_of_output_channels_is_direct(shape, dtype):
    """3x3 with padding, on a zero-bordered copy of each image, where the output channels fit the
    lanes (float64's 8 hold half of 16)."""
    channels, out_channels, size = shape
    x = torch.randn(32, channels, size, size, dtype=dtype)
    w = torch.randn(out_channels, channels, 3, 3, dtype=dtype)
    chosen = op._conv2d_algorithm(x, w, [1, 1], [1, 1], [1, 1], 1, "grad_weight")
    assert (chosen == "direct") == (out_channels <= _lanes(dtype)), chosen


@pytest.mark.parametrize("size, expected", [(64, "direct"), (65, "im2col"), (512, "im2col")])
def test_direct_grad_weight_holds_a_plane_of_at_most_64x64(size, expected):
    """Its grad_output transposed to lanes, a plane a thread, stays within 256 KB."""
    x, w = torch.randn(1, 3, size, size), torch.randn(16, 3, 3, 3)
    assert op._conv2d_algorithm(x, w, [1, 1], [1, 1], [1, 1], 1, "grad_weight") == expected


def test_forcing_an_unknown_algorithm_raises():
    x, w = torch.randn(1, 1, 8, 8), torch.randn(2, 1, 3, 3)
    with pytest.raises(RuntimeError, match=r"_conv2d_forced: expected algorithm to be one of "
                                           r"reference, im2col, direct, rows, lanes, implicit, winograd, but got 'fast'"):
        op._conv2d_forced(x, w, None, [1, 1], [0, 0], [1, 1], 1, "fast")
    with pytest.raises(RuntimeError, match=r"expected step to be one of forward, grad_input, "
                                           r"grad_weight, but got 'backward'"):
        op._conv2d_algorithm(x, w, [1, 1], [0, 0], [1, 1], 1, "backward")
