"""Shared test helpers: run one function of ours and its stock twin on the same inputs and compare
outputs and every input gradient."""
import gzip
from pathlib import Path

import torch


def clone_inputs(inputs):
    """Detached copies that require grad where the original floating tensor did."""
    copies = []
    for x in inputs:
        if isinstance(x, torch.Tensor):
            copy = x.detach().clone()
            copies.append(copy.requires_grad_(x.requires_grad))
        else:
            copies.append(x)
    return copies


def outputs_and_grads(fn, inputs):
    """fn(*inputs), then the gradient of a random projection of its output w.r.t. every input
    that requires grad (a random projection catches wrong gradients that a plain sum would not)."""
    inputs = clone_inputs(inputs)
    out = fn(*inputs)
    needs_grad = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    if not needs_grad:
        return out, []
    gen = torch.Generator().manual_seed(out.numel())
    projection = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad((out * projection).sum(), needs_grad, allow_unused=True)
    return out.detach(), list(grads)


def assert_matches_stock(ours, stock, inputs, **tolerances):
    """Output and every gradient of `ours` equal those of `stock` (torch.testing tolerances)."""
    out, grads = outputs_and_grads(ours, inputs)
    expected_out, expected_grads = outputs_and_grads(stock, inputs)
    torch.testing.assert_close(out, expected_out, **tolerances)
    assert len(grads) == len(expected_grads)
    for i, (grad, expected) in enumerate(zip(grads, expected_grads)):
        torch.testing.assert_close(grad, expected, msg=lambda m: f"gradient {i}: {m}", **tolerances)


def sum_tolerance(dtype, length):
    """assert_close tolerances for results that are sums of `length` products of random N(0,1)
    data. Rounding error of a sum grows like sqrt(length) times the magnitude of its terms, and two
    correct implementations may add in different orders, so float32 needs an absolute tolerance
    that grows the same way. float64 keeps torch's defaults."""
    if dtype == torch.float64:
        return {}
    return dict(rtol=1e-5, atol=1e-5 * max(1.0, length ** 0.5))


# Whole-model parity (LeNet, MLP).
# float32 against stock float32: both are ~1e-7 (outputs) and ~1e-8 (gradients) from a float64
# reference on these shapes; these bounds leave room for a different summation order.
OUTPUT_TOL = dict(rtol=1e-4, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)


def idx_bytes(array: torch.Tensor) -> bytes:
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.to(torch.uint8).numpy().tobytes()


def write_split(directory: Path, split="train", count=6, gz=True, dot=False, size=28):
    """Writes random images (count, size, size) and labels of one split, named like
    train-images-idx3-ubyte (or, with dot, train-images.idx3-ubyte); returns them."""
    images = torch.randint(0, 256, (count, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 10, (count,), dtype=torch.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        content = idx_bytes(array)
        name = f"{split}-{kind}-ubyte".replace("-idx", ".idx" if dot else "-idx")
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(content))
        else:
            (directory / name).write_bytes(content)
    return images, labels


def parse(line):
    """`epoch=1/2 train_loss=0.5 ...` -> {"epoch": "1/2", "train_loss": "0.5", ...}"""
    return dict(field.split("=", 1) for field in line.split() if "=" in field)
