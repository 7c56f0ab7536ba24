"""Behaviour only the CUDA kernels have: they run on PyTorch's current stream, replay inside CUDA
graphs, give bitwise identical results run to run, and refuse arguments on mixed devices. The ops'
numerical agreement with stock PyTorch is tested per op, on every device, in the op test files.
In the emulated-CUDA build (CPU tensors reach the CUDA kernels) the tests that need no GPU run."""
import pytest
import torch
import torch.nn.functional as F

import lenet_ext
import lenet_ext.functional as LF

lib = torch.ops.lenet_ext

# Where tensors reach the CUDA kernels: a GPU, or the CPU in the emulated build.
KERNEL_DEVICE = ("cuda" if lenet_ext.cuda_available() else
                 "cpu" if lenet_ext.cuda_emulated() else None)
pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs the CUDA kernels: a CUDA "
                                "device and a CUDA build, or the emulated build")
needs_gpu = pytest.mark.skipif(not lenet_ext.cuda_available(),
                               reason="streams, CUDA graphs and devices need a GPU")


def _conv_args():
    return dict(stride=[2, 1], padding=[1, 2], dilation=[1, 2], groups=2)


def _pool_args():
    # overlapping windows, so that cells take the gradients of several windows in backward
    return dict(kernel_size=[3, 3], stride=[1, 2], padding=[1, 1], dilation=[1, 1], ceil_mode=True)


def _op_calls(dtype):
    """Every op as (fn, inputs): fresh random CUDA inputs (sizes that span several blocks)."""
    def rand(*shape):
        return torch.randn(*shape, device=KERNEL_DEVICE, dtype=dtype)

    x, w = rand(4, 6, 19, 23), rand(8, 3, 3, 5)
    conv_out = F.conv2d(x, w, None, **_conv_args())
    pool_out, pool_indices = lib.max_pool2d(x, **_pool_args())
    linear_in, linear_w = rand(37, 300), rand(70, 300)
    relu_result = F.relu(x)
    return {
        "relu": (lib.relu, [x]),
        "relu_backward": (lib.relu_backward, [rand(*x.shape), relu_result]),
        "linear": (lib.linear, [linear_in, linear_w, rand(70)]),
        "linear_backward": (lambda g, i, w: lib.linear_backward(g, i, w, [True] * 3),
                            [rand(37, 70), linear_in, linear_w]),
        "conv2d": (lambda i, w, b: lib.conv2d(i, w, b, *_conv_args().values()), [x, w, rand(8)]),
        "conv2d_backward": (
            lambda g, i, w: lib.conv2d_backward(g, i, w, *_conv_args().values(), [True] * 3),
            [rand(*conv_out.shape), x, w]),
        "max_pool2d": (lambda i: lib.max_pool2d(i, *_pool_args().values()), [x]),
        "max_pool2d_backward": (lambda g, idx: lib.max_pool2d_backward(g, idx, list(x.shape)),
                                [rand(*pool_out.shape), pool_indices]),
    }


OPS = ["relu", "relu_backward", "linear", "linear_backward", "conv2d", "conv2d_backward",
       "max_pool2d", "max_pool2d_backward"]


def _as_list(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


@needs_gpu
@pytest.mark.parametrize("op", OPS)
def test_runs_on_the_current_stream(op, dtype):
    # On a side stream, the inputs are written only after a long sleep: a kernel launched on any
    # other stream would run at once and read the placeholder values (NaN, or -1 indices).
    fn, inputs = _op_calls(dtype)[op]
    expected = _as_list(fn(*inputs))
    placeholders = [torch.full_like(t, -1 if t.dtype == torch.long else float("nan"))
                    for t in inputs]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # ~50 ms of GPU cycles
        for placeholder, value in zip(placeholders, inputs):
            placeholder.copy_(value)
        actual = _as_list(fn(*placeholders))
    side.synchronize()
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)


@pytest.mark.parametrize("op", OPS)
def test_results_are_bitwise_deterministic(op, dtype):
    fn, inputs = _op_calls(dtype)[op]
    first = _as_list(fn(*inputs))
    for _ in range(3):
        for a, b in zip(_as_list(fn(*inputs)), first):
            assert torch.equal(a, b)


def _lenet(x, conv1_w, conv1_b, conv2_w, conv2_b, fc1_w, fc1_b, fc2_w, fc2_b):
    x = LF.max_pool2d(LF.relu(LF.conv2d(x, conv1_w, conv1_b, padding=2)), 2)
    x = LF.max_pool2d(LF.relu(LF.conv2d(x, conv2_w, conv2_b)), 2)
    x = LF.relu(LF.linear(x.flatten(1), fc1_w, fc1_b))
    return LF.linear(x, fc2_w, fc2_b)


@needs_gpu
def test_compiled_with_cuda_graphs_matches_eager():
    shapes = [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (10, 120), (10,)]
    params = [(0.1 * torch.randn(s, device="cuda")).requires_grad_() for s in shapes]
    compiled = torch.compile(_lenet, mode="reduce-overhead", fullgraph=True)
    for _ in range(4):  # warm-up, recording, then replays of the CUDA graph
        torch.compiler.cudagraph_mark_step_begin()
        x = torch.randn(8, 1, 28, 28, device="cuda")
        out = compiled(x, *params)
        grads = torch.autograd.grad(out.square().sum(), params)
        expected_out = _lenet(x, *params)
        expected_grads = torch.autograd.grad(expected_out.square().sum(), params)
        torch.testing.assert_close(out, expected_out)
        for grad, expected in zip(grads, expected_grads):
            torch.testing.assert_close(grad, expected)


MIXED_DEVICE_CALLS = {
    "relu_backward": lambda c, h: lib.relu_backward(c(4, 5), h(4, 5)),
    "linear weight": lambda c, h: lib.linear(c(3, 4), h(5, 4), None),
    "linear input": lambda c, h: lib.linear(h(3, 4), c(5, 4), c(5)),
    "linear bias": lambda c, h: lib.linear(c(3, 4), c(5, 4), h(5)),
    "linear_backward": lambda c, h: lib.linear_backward(c(3, 5), h(3, 4), c(5, 4), [True] * 3),
    "conv2d": lambda c, h: lib.conv2d(
        c(1, 2, 6, 6), h(3, 2, 3, 3), None, [1, 1], [0, 0], [1, 1], 1),
    "conv2d_backward": lambda c, h: lib.conv2d_backward(
        h(1, 3, 4, 4), c(1, 2, 6, 6), c(3, 2, 3, 3), [1, 1], [0, 0], [1, 1], 1, [True] * 3),
    "max_pool2d_backward": lambda c, h: lib.max_pool2d_backward(
        c(1, 2, 3, 3), torch.zeros(1, 2, 3, 3, dtype=torch.long), [1, 2, 6, 6]),
}


@needs_gpu
@pytest.mark.parametrize("call", MIXED_DEVICE_CALLS.values(), ids=MIXED_DEVICE_CALLS.keys())
def test_mixed_devices_raise_naming_the_op(call):
    def on_cuda(*shape):
        return torch.randn(*shape, device="cuda")

    def on_cpu(*shape):
        return torch.randn(*shape)

    with pytest.raises(RuntimeError, match=r"lenet_ext\.\w+: .*device"):
        call(on_cuda, on_cpu)


@pytest.mark.parametrize("bad_index", [-1, 36])
def test_max_pool2d_backward_rejects_an_index_outside_the_plane(bad_index):
    grad = torch.randn(2, 3, 3, 3, device=KERNEL_DEVICE)
    indices = torch.randint(0, 36, (2, 3, 3, 3), device=KERNEL_DEVICE)
    indices[1, 2, 0, 1] = bad_index
    with pytest.raises(RuntimeError, match=r"lenet_ext\.max_pool2d_backward: .*indices"):
        lib.max_pool2d_backward(grad, indices, [2, 3, 6, 6])
    # the error is reported, not a device fault: the context still works
    assert torch.equal(lib.relu(grad.abs()), grad.abs())
