"""Each linear CPU algorithm forced on every shape of a grid: where it claims the shape (csrc/cpu/
linear/select.cpp) it must equal the reference kernel and stock, forward and every gradient; where
it does not, forcing it must raise. And the algorithms LeNet's fc layers take at batch 1, 64 and
256, so that a lost fast path fails here rather than only in a benchmark."""
import pytest
import torch
import torch.nn.functional as TF

from test_conv2d import _lanes, assert_close

op = torch.ops.lenet_ext
ALGORITHMS = ["reference", "dot", "axpy", "gemm"]
STEPS = ["forward", "grad_input", "grad_weight"]
HAS = {"reference": STEPS, "dot": ["forward"],
       "axpy": ["grad_input", "grad_weight"], "gemm": STEPS}

# (leading dimensions of input, in_features, out_features, bias) as a function of the lanes L: the
# dot tiles' last partial step and row/column tails, gemm's panel tails, the few-rows bound
CASES = {
    "lenet_fc1": lambda L: ((3,), 400, 120, True),
    "lenet_fc2": lambda L: ((5,), 120, 84, True),
    "lenet_fc3": lambda L: ((2,), 84, 10, True),
    "one_row": lambda L: ((1,), 2 * L + 3, 2 * L + 1, True),
    "empty": lambda L: ((0,), L, 5, True),
    "short_k": lambda L: ((4,), L - 1, 3, True),
    "one_vector_k": lambda L: ((7,), L, L, False),
    "tail_k": lambda L: ((6,), L + 1, 2 * L - 1, True),
    "one_feature": lambda L: ((13,), 1, 1, True),
    "batched_3d": lambda L: ((2, 3), 3 * L + 5, L + 3, True),
    "many_rows": lambda L: ((67,), 2 * L, 4 * L + 5, True),
    "wide": lambda L: ((9,), 5, 6 * L + 1, False),
    # gemm's cache blocks: over 336 rows and 256 of depth (every product), and over the column
    # block of 4096 floats / 2048 doubles; both big enough to split over two threads
    "blocks": lambda L: ((350,), 300, 100, True),
    "column_blocks": lambda L: ((20,), 70, 256 * L + 5, True),
    # batch 1 on two threads: axpy's shares of grad_input's columns and grad_weight's rows, dot's
    # GEMV tasks
    "one_row_wide": lambda L: ((1,), 40 * L + 3, 130, True),
    # a grad_weight product of one depth block stored around the caches (over 4 MB), its last
    # panel partial
    "streamed": lambda L: ((5,), 1040, 1030, False),
}


def _random_case(seed):
    g = torch.Generator().manual_seed(seed)
    pick = lambda options: options[torch.randint(len(options), (), generator=g).item()]  # noqa

    def case(L):
        rows = pick([1, 2, 3, 4, 6, 7, 12, 31, 64])
        return (rows,), pick([1, 3, L - 1, L, L + 1, 2 * L + 3, 50]), \
            pick([1, 4, 10, L, 2 * L, 2 * L + 1, 37]), pick([True, False])
    return case


CASES.update({f"random_{seed}": _random_case(seed) for seed in range(12)})


def _args(case, dtype):
    leading, in_features, out_features, bias = CASES[case](_lanes(dtype))
    x = torch.randn(*leading, in_features, dtype=dtype)
    w = torch.randn(out_features, in_features, dtype=dtype)
    b = torch.randn(out_features, dtype=dtype) if bias else None
    return x, w, b


def _run(algorithm, step, x, w, b, grad_output):
    if step == "forward":
        return op._linear_forced(x, w, b, algorithm)
    mask = [step == "grad_input", step == "grad_weight", step == "grad_bias"]
    return op._linear_backward_forced(grad_output, x, w, mask, algorithm)[mask.index(True)]


def _stock(step, x, w, b, grad_output):
    b = torch.zeros(w.shape[0], dtype=w.dtype) if b is None else b
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    out = TF.linear(x, w, b)
    if step == "forward":
        return out.detach()
    which = {"grad_input": x, "grad_weight": w, "grad_bias": b}[step]
    return torch.autograd.grad(out, which, grad_output)[0]


def _claimed(algorithm, step, x, w, b, grad_output):
    try:
        return _run(algorithm, step, x, w, b, grad_output)
    except RuntimeError as error:
        claimed_step = "grad_input" if step == "grad_bias" else step
        assert f"algorithm '{algorithm}' does not claim the {claimed_step}" in str(error)
        return None


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", CASES)
def test_forced_algorithm_equals_reference_and_stock(dtype, case, algorithm):
    x, w, b = _args(case, dtype)
    grad_output = torch.randn(*x.shape[:-1], w.shape[0], dtype=dtype)
    for step in STEPS + ["grad_bias"]:
        if step == "grad_bias" and b is None:
            continue
        ours = _claimed(algorithm, step, x, w, b, grad_output)
        if ours is None:
            continue
        assert_close(ours, _run("reference", step, x, w, b, grad_output))
        assert_close(ours, _stock(step, x, w, b, grad_output))


def test_every_algorithm_claims_shapes_of_the_grid():
    """Each algorithm is forced, and checked, on shapes for each step it has; the steps it does
    not have are refused everywhere."""
    for dtype in (torch.float32, torch.float64):
        claimed = {(a, s): 0 for a in ALGORITHMS for s in STEPS}
        for case in CASES:
            x, w, b = _args(case, dtype)
            grad_output = torch.randn(*x.shape[:-1], w.shape[0], dtype=dtype)
            for algorithm in ALGORITHMS:
                for step in STEPS:
                    claimed[algorithm, step] += _claimed(algorithm, step, x, w, b,
                                                         grad_output) is not None
        for (algorithm, step), count in claimed.items():
            assert (count >= 8) if step in HAS[algorithm] else (count == 0), \
                (algorithm, step, dtype, count)


@pytest.mark.parametrize("algorithm", ["dot", "axpy", "gemm"])
@pytest.mark.parametrize("case", ["blocks", "column_blocks", "one_row_wide", "streamed"])
def test_algorithm_is_bitwise_the_same_for_one_and_two_threads(case, algorithm):
    """Each element is summed by one thread in an order fixed by the shape."""
    x, w, b = _args(case, torch.float32)
    grad_output = torch.randn(*x.shape[:-1], w.shape[0])
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append([_claimed(algorithm, step, x, w, b, grad_output) for step in STEPS])
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(*results):
        assert (one is None and two is None) or torch.equal(one, two)


# LeNet's fc layers (float32) and the algorithms (forward, grad_input, grad_weight) they take.
LENET = {"fc1": (400, 120), "fc2": (120, 84), "fc3": (84, 10)}
LENET_ALGORITHMS = {1: ("dot", "axpy", "axpy"), 64: ("gemm", "gemm", "gemm"),
                    256: ("gemm", "gemm", "gemm")}


@pytest.mark.parametrize("batch", LENET_ALGORITHMS)
@pytest.mark.parametrize("layer", LENET)
def test_lenet_shapes_take_their_fast_paths(layer, batch):
    """linear and the lenet op (which calls the same kernels on the whole batch)."""
    in_features, out_features = LENET[layer]
    x, w = torch.empty(batch, in_features), torch.empty(out_features, in_features)
    expected = LENET_ALGORITHMS[batch]
    assert tuple(op._linear_algorithm(x, w, step) for step in STEPS) == expected


def test_forcing_an_unknown_algorithm_raises():
    x, w = torch.randn(2, 20), torch.randn(3, 20)
    with pytest.raises(RuntimeError, match=r"_linear_forced: expected algorithm to be one of "
                                           r"reference, dot, axpy, gemm, but got 'fast'"):
        op._linear_forced(x, w, None, "fast")
    with pytest.raises(RuntimeError, match=r"expected step to be one of forward, grad_input, "
                                           r"grad_weight, but got 'backward'"):
        op._linear_algorithm(x, w, "backward")
