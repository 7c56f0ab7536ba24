"""Memory: 10,000 forward+backward calls of our ops keep the resident set flat. Each call
makes an output of at least 8 KB, so leaking one tensor (or its C++ buffer) per call would grow the
process by 20 MB or more per op, twice the bound."""
import os

import torch

import lenet_ext
from lenet_ext import functional as F

CALLS = 10_000
WARM_UP = 400
BOUND_MB = 10


def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_resident_memory_stays_flat():
    x = torch.randn(4, 8, 8, 8, requires_grad=True)  # relu: 2,048 elements
    a, w, b = (torch.randn(16, 128, requires_grad=True), torch.randn(128, 128, requires_grad=True),
               torch.randn(128, requires_grad=True))  # linear: 16 x 128 out
    image, kernel = torch.randn(2, 4, 16, 16, requires_grad=True), torch.randn(8, 4, 3, 3,
                                                                                requires_grad=True)
    planes = torch.randn(2, 8, 32, 32, requires_grad=True)  # max_pool2d: 2 x 8 x 16 x 16 out
    fused = lenet_ext.models.FusedLeNet()  # saves ~20 KB of activations a call at batch 4
    images = torch.randn(4, 1, 32, 32)
    calls = [
        (lambda: fused(images), tuple(fused.parameters())),
        (lambda: F.relu(x), (x,)),
        (lambda: F.linear(a, w, b), (a, w, b)),
        (lambda: F.conv2d(image, kernel, padding=1), (image, kernel)),
        (lambda: F.max_pool2d(planes, 2), (planes,)),
    ]

    def run(count):
        for i in range(count):
            forward, inputs = calls[i % len(calls)]
            output = forward()
            torch.autograd.grad(output, inputs, torch.ones_like(output))

    run(WARM_UP)
    before = resident_mb()
    run(CALLS)
    growth = resident_mb() - before
    assert growth < BOUND_MB, f"{CALLS} calls grew the resident set by {growth:.1f} MB"
