"""Concurrency: eight Python threads calling forward and backward of every op, and of the
whole LeNet and FusedLeNet, at once get bitwise the results the same calls give one after another."""
import threading

import torch

import lenet_ext
from lenet_ext import functional as F

THREADS = 8
ITERATIONS = 4


def make_inputs(seed):
    """Fresh inputs of every op, different for every thread."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, requires_grad=True)

    return {
        "relu": (randn(4, 6, 12, 12),),
        "linear": (randn(16, 40), randn(24, 40), randn(24)),
        "conv2d": (randn(4, 4, 12, 12), randn(6, 2, 3, 3), randn(6)),
        "max_pool2d": (randn(4, 6, 12, 11),),
        "lenet": (randn(4, 1, 32, 32),),
        "conv2d_relu_max_pool2d": (randn(4, 2, 13, 12), randn(5, 2, 3, 3), randn(5)),
        "fused_lenet": (randn(4, 1, 32, 32),),
    }


NETWORK = lenet_ext.models.LeNet()  # one network shared by every thread, read only
FUSED = lenet_ext.models.FusedLeNet()  # the whole network as one op, shared too


def call(name, inputs):
    if name == "relu":
        return F.relu(*inputs)
    if name == "linear":
        return F.linear(*inputs)
    if name == "conv2d":
        return F.conv2d(*inputs, stride=(1, 2), padding=1, groups=2)
    if name == "max_pool2d":
        return F.max_pool2d(*inputs, 3, stride=2, padding=1, return_indices=True)[0]
    if name == "conv2d_relu_max_pool2d":
        return torch.ops.lenet_ext.conv2d_relu_max_pool2d(*inputs)[0]
    return (FUSED if name == "fused_lenet" else NETWORK)(*inputs)


def forward_backward(name, inputs):
    """Output and gradients with respect to the inputs (and the shared network's parameters);
    torch.autograd.grad, so that no thread accumulates into another's .grad."""
    output = call(name, inputs)
    network = {"lenet": NETWORK, "fused_lenet": FUSED}.get(name)
    wrt = list(inputs) + (list(network.parameters()) if network else [])
    grad_output = torch.ones_like(output) / output.numel()
    return [output.detach(), *torch.autograd.grad(output, wrt, grad_output)]


def run_all(seed):
    inputs = make_inputs(seed)
    return {name: forward_backward(name, args) for name, args in inputs.items()}


def test_concurrent_calls_equal_serial_calls():
    expected = [run_all(seed) for seed in range(THREADS)]
    results = [[] for _ in range(THREADS)]
    errors = []
    start = threading.Barrier(THREADS)

    def worker(seed):
        try:
            start.wait()
            for _ in range(ITERATIONS):
                results[seed].append(run_all(seed))
        except Exception as error:  # noqa: BLE001  (reported below, with its thread)
            errors.append((seed, error))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for seed in range(THREADS):
        assert len(results[seed]) == ITERATIONS
        for iteration in results[seed]:
            for name, tensors in iteration.items():
                for i, (got, want) in enumerate(zip(tensors, expected[seed][name])):
                    assert torch.equal(got, want), f"thread {seed}, {name}, result {i} differs"


def test_threads_get_different_inputs():
    # the comparison above means something only if the threads' work differs
    first, second = run_all(0), run_all(1)
    for name in first:
        assert not torch.equal(first[name][0], second[name][0]), name
