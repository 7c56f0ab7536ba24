"""Determinism on CPU (README "Determinism"): relu and a whole LeNet training step (in float32,
bfloat16 and float16) give bitwise the same results run after run, in a fresh process, and with 1
or 2 threads. linear, conv2d
and max_pool2d have the same test for the op alone in their own files."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lenet_ext
from lenet_ext import functional as F


def relu_forward_backward():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, 28, 28, generator=gen, requires_grad=True)
    grad_output = torch.randn(64, 6, 28, 28, generator=gen)
    y = F.relu(x)
    return [y.detach(), *torch.autograd.grad(y, x, grad_output)]


def lenet_training_steps(steps=3, dtype=torch.float32):
    """Losses, parameters and gradients after a few SGD steps (forward, cross-entropy, backward,
    update) at batch 64, where every op splits its work between threads."""
    torch.manual_seed(0)
    network = lenet_ext.models.LeNet().to(dtype)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    results = []
    for _ in range(steps):
        images = torch.randn(64, 1, 32, 32, generator=gen).to(dtype)
        labels = torch.randint(0, 10, (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(network(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        results.append(loss.detach())
    return results + [p.detach().clone() for p in network.parameters()] + \
        [p.grad.clone() for p in network.parameters()]


WORKLOADS = {"relu": relu_forward_backward, "lenet_training_step": lenet_training_steps,
             "lenet_training_step_bfloat16": lambda: lenet_training_steps(dtype=torch.bfloat16),
             "lenet_training_step_float16": lambda: lenet_training_steps(dtype=torch.float16)}


def with_threads(count, workload):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        return workload()
    finally:
        torch.set_num_threads(previous)


def digest(tensors):
    return hashlib.sha256(b"".join(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
                                   for t in tensors)).hexdigest()


@pytest.mark.parametrize("name", WORKLOADS)
def test_bitwise_same_across_runs_and_thread_counts(name):
    one_thread, two_threads, again = (with_threads(n, WORKLOADS[name]) for n in (1, 2, 2))
    for i, (a, b, c) in enumerate(zip(one_thread, two_threads, again)):
        assert torch.equal(a, b), f"result {i}: 1 thread and 2 threads differ"
        assert torch.equal(b, c), f"result {i}: two runs differ"


@pytest.mark.parametrize("name", WORKLOADS)
def test_bitwise_same_in_a_fresh_process(name):
    # a fresh process has other memory contents: an uninitialised read would show here
    root = Path(lenet_ext.__file__).resolve().parents[1]
    code = ("import sys; sys.path.insert(0, 'tests'); import test_determinism as t; "
            f"print(t.digest(t.with_threads(1, t.WORKLOADS[{name!r}])))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == digest(with_threads(2, WORKLOADS[name]))
