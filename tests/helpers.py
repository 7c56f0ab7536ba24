"""Shared test helpers: run one function of ours and its stock twin on the same inputs and compare
outputs and every input gradient."""
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
