"""vmap over every lenet_ext op runs its batching rule (lenet_ext.batching), never functorch's
per-sample fallback (whose warning is an error here), and gives what calling the op once per sample
gives, for the vmapped dimension anywhere (0, 1, -1), on some arguments only (None), with
vmapped weights and biases; the public ops also match stock's vmap, and per-sample gradients of
LeNet and FusedLeNet match stock's. float64, fresh random inputs."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as stock_F
from torch.func import functional_call, grad, vmap

import lenet_ext
import lenet_ext.bench
from lenet_ext.models import FusedLeNet, LeNet, StockLeNet

pytestmark = pytest.mark.filterwarnings("error::UserWarning")

BATCH = 3
ops = torch.ops.lenet_ext


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float64)


# Each op: one sample's arguments, fresh at each call. Backward ops get what their forward saves.

def conv_args(bias=True):
    return [randn(2, 4, 7, 6), randn(6, 2, 3, 2), randn(6) if bias else None, [1, 2], [1, 0],
            [1, 2], 2]


def conv_backward_args(mask):
    x, w, _, *params = conv_args()
    return [randn(ops.conv2d(x, w, None, *params).shape), x, w, *params, mask]


POOL = ([3, 2], [2, 1], [1, 0], [1, 2], True)


def pool_backward_args(shape):
    output, indices = ops.max_pool2d(randn(*shape), *POOL)
    return [randn(output.shape), indices, list(shape)]


def pool_gather_args(shape):
    _, indices = ops.max_pool2d(randn(*shape), *POOL)
    return [randn(*shape), indices]


def block_backward_args(mask):
    x, w = randn(2, 3, 9, 8), randn(4, 3, 3, 3)
    output, indices = ops.conv2d_relu_max_pool2d(x, w, randn(4))
    return [randn(output.shape), output, indices, x, w, mask]


def lenet_params():
    return [randn(*p.shape) for p in StockLeNet().parameters()]


def lenet_backward_args(mask):
    x, params = randn(2, 1, 32, 32), lenet_params()
    _, *activations = ops.lenet(x, *params)
    return [randn(2, 10), x, *params[::2], *activations, mask]


ALL, INPUT, PARAMS = "all", "input", "parameters"
MASKS = {ALL: lambda n: [True] * n, INPUT: lambda n: [True] + [False] * (n - 1),
         PARAMS: lambda n: [False] + [True] * (n - 1)}

# name -> (op, sample maker)
CASES = {
    "relu": (ops.relu, lambda: [randn(2, 3, 4)]),
    "relu_backward": (ops.relu_backward, lambda: [randn(2, 3, 4), ops.relu(randn(2, 3, 4))]),
    "linear": (ops.linear, lambda: [randn(3, 5), randn(4, 5), randn(4)]),
    "linear-1d": (ops.linear, lambda: [randn(5), randn(4, 5), randn(4)]),
    "linear-3d-nobias": (ops.linear, lambda: [randn(2, 3, 5), randn(4, 5), None]),
    "conv2d": (ops.conv2d, conv_args),
    "conv2d-nobias": (ops.conv2d, lambda: conv_args(bias=False)),
    "max_pool2d": (ops.max_pool2d, lambda: [randn(2, 3, 7, 6), *POOL]),
    "max_pool2d-3d": (ops.max_pool2d, lambda: [randn(3, 7, 6), *POOL]),
    "max_pool2d_backward": (ops.max_pool2d_backward, lambda: pool_backward_args((2, 3, 7, 6))),
    "max_pool2d_backward-3d": (ops.max_pool2d_backward, lambda: pool_backward_args((3, 7, 6))),
    "max_pool2d_gather": (ops.max_pool2d_gather, lambda: pool_gather_args((2, 3, 7, 6))),
    "max_pool2d_gather-3d": (ops.max_pool2d_gather, lambda: pool_gather_args((3, 7, 6))),
    "conv2d_relu_max_pool2d": (ops.conv2d_relu_max_pool2d,
                               lambda: [randn(2, 3, 9, 8), randn(4, 3, 3, 3), randn(4)]),
    "lenet": (ops.lenet, lambda: [randn(2, 1, 32, 32), *lenet_params()]),
}
for mask in MASKS:
    CASES[f"linear_backward-{mask}"] = (
        ops.linear_backward, lambda mask=mask: [randn(2, 3, 4), randn(2, 3, 5), randn(4, 5),
                                                MASKS[mask](3)])
    CASES[f"conv2d_backward-{mask}"] = (ops.conv2d_backward,
                                        lambda mask=mask: conv_backward_args(MASKS[mask](3)))
    CASES[f"conv2d_relu_max_pool2d_backward-{mask}"] = (
        ops.conv2d_relu_max_pool2d_backward, lambda mask=mask: block_backward_args(MASKS[mask](3)))
    CASES[f"lenet_backward-{mask}"] = (ops.lenet_backward,
                                       lambda mask=mask: lenet_backward_args(MASKS[mask](11)))
CASES["lenet_backward-fc"] = (ops.lenet_backward,
                              lambda: lenet_backward_args([False] * 5 + [True] * 6))


def test_every_op_has_a_case():
    names = {schema.name.split("::")[1] for schema in torch._C._jit_get_all_schemas()
             if schema.name.startswith("lenet_ext::")}
    public = {name for name in names if not name.startswith("_")}
    assert len(public) == 13
    assert {op._qualified_op_name.split("::")[1] for op, _ in CASES.values()} == public


def in_dims_cases(case):
    """Where the vmapped dimension is, per argument: all at 0, 1 or -1; one tensor alone vmapped;
    every tensor but one vmapped."""
    op, make = CASES[case]
    tensors = [i for i, arg in enumerate(make()) if isinstance(arg, torch.Tensor)]
    n = len(make())

    def dims(**at):
        return tuple(at.get(str(i)) for i in range(n))

    cases = [dims(**{str(i): d for i in tensors}) for d in (0, 1, -1)]
    cases += [dims(**{str(i): 1}) for i in tensors]
    if len(tensors) > 1:
        cases += [dims(**{str(j): -1 for j in tensors if j != i}) for i in tensors]
    return cases


# float64, as the op tests compare with stock: a rule may run other kernels than the op on one sample
# (lenet with vmapped weights is composed of the per-op rules), which sum in another order
RTOL, ATOL = 1e-10, 1e-12


def vmapped_and_per_sample(op, make, in_dims, out_dims=0):
    """vmap(op) over BATCH samples, and the op called on each sample, stacked at out_dims. An
    argument whose in_dim is None is one sample's, shared by all."""
    samples = [make() for _ in range(BATCH)]
    shared = samples[0]
    per_sample = [[s[i] if dim is not None else shared[i] for i, dim in enumerate(in_dims)]
                  for s in samples]
    args = [torch.stack([s[i] for s in samples], dim) if dim is not None else shared[i]
            for i, dim in enumerate(in_dims)]
    outputs = [op(*sample) for sample in per_sample]
    single = isinstance(outputs[0], torch.Tensor)
    outputs = [[o] if single else list(o) for o in outputs]
    out_dims_list = [out_dims] * len(outputs[0]) if isinstance(out_dims, int) else list(out_dims)
    expected = [None if column[0] is None else torch.stack(column, out_dim)
                for column, out_dim in zip(zip(*outputs), out_dims_list)]
    if not single:  # an output the mask leaves out is None, not vmapped
        out_dims = tuple(None if e is None else d for e, d in zip(expected, out_dims_list))
    ours = vmap(op, in_dims, out_dims)(*args)
    return ours, expected[0] if single else tuple(expected), args


@pytest.mark.parametrize("case,in_dims", [(case, in_dims) for case in CASES
                                          for in_dims in in_dims_cases(case)])
def test_vmap_of_op_matches_op_per_sample(case, in_dims):
    ours, expected, _ = vmapped_and_per_sample(*CASES[case], in_dims)
    torch.testing.assert_close(ours, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case,out_dims", [("conv2d", 1), ("linear-3d-nobias", -1),
                                           ("max_pool2d", (1, -1)), ("conv2d_backward-all", -1),
                                           ("lenet", -1), ("lenet_backward-all", 1)])
def test_vmap_out_dims(case, out_dims):
    op, make = CASES[case]
    in_dims = tuple(0 if isinstance(arg, torch.Tensor) else None for arg in make())
    ours, expected, _ = vmapped_and_per_sample(op, make, in_dims, out_dims)
    torch.testing.assert_close(ours, expected, rtol=RTOL, atol=ATOL)


# The public forward ops against stock's vmap of the function of the same arguments.
STOCK = {
    "relu": torch.relu, "linear": stock_F.linear, "linear-1d": stock_F.linear,
    "linear-3d-nobias": stock_F.linear, "conv2d": stock_F.conv2d, "conv2d-nobias": stock_F.conv2d,
    "max_pool2d": lambda *args: stock_F.max_pool2d(*args, return_indices=True),
    "max_pool2d-3d": lambda *args: stock_F.max_pool2d(*args, return_indices=True),
}


@pytest.mark.parametrize("case,in_dims", [(case, in_dims) for case in STOCK
                                          for in_dims in in_dims_cases(case)])
def test_vmap_of_op_matches_stock(case, in_dims):
    ours, _, args = vmapped_and_per_sample(*CASES[case], in_dims)
    torch.testing.assert_close(ours, vmap(STOCK[case], in_dims)(*args))


def test_vmap_refuses_a_bad_sample_as_the_op_does():
    # 2-D samples: folding them would make a valid 3-D pool input; the op refuses the sample
    with pytest.raises(RuntimeError, match=r"^lenet_ext\.max_pool2d: .*input") as vmapped:
        vmap(lenet_ext.functional.max_pool2d, (0, None))(randn(BATCH, 6, 6), 2)
    with pytest.raises(RuntimeError) as direct:
        lenet_ext.functional.max_pool2d(randn(6, 6), 2)
    assert str(vmapped.value) == str(direct.value)
    # a weight that does not match: the message shows the sample's shapes, not the folded ones
    with pytest.raises(RuntimeError, match=r"^lenet_ext\.conv2d: ") as vmapped:
        vmap(lenet_ext.functional.conv2d, (0, 0))(randn(BATCH, 1, 3, 8, 8), randn(BATCH, 4, 2, 3, 3))
    with pytest.raises(RuntimeError) as direct:
        lenet_ext.functional.conv2d(randn(1, 3, 8, 8), randn(4, 2, 3, 3))
    assert str(vmapped.value) == str(direct.value)


# Networks: per-sample gradients, ensembles (vmapped parameters), and gradients through vmap -------

def networks():
    stock = StockLeNet().double()
    return stock, {name: p.detach() for name, p in stock.named_parameters()}


def loss(network):
    return lambda params, images, labels: stock_F.cross_entropy(
        functional_call(network, params, (images,)), labels)


@pytest.mark.parametrize("network", [LeNet, FusedLeNet])
@pytest.mark.parametrize("images_dim", [0, 1, -1])
def test_per_sample_gradients_match_stock(network, images_dim):
    stock, params = networks()
    images = randn(BATCH, 1, 1, 32, 32).movedim(0, images_dim).contiguous()
    labels = torch.randint(0, 10, (BATCH, 1))
    ours, expected = (vmap(grad(loss(net)), (None, images_dim, 0))(params, images, labels)
                      for net in (network().double(), stock))
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("network", [LeNet, FusedLeNet])
@pytest.mark.parametrize("shared_images", [False, True])
def test_ensemble_gradients_match_stock(network, shared_images):
    # BATCH networks, each its own parameters: the weights and biases are the vmapped ones
    stock, _ = networks()
    params = {name: randn(BATCH, *p.shape) for name, p in stock.named_parameters()}
    images = randn(2, 1, 32, 32) if shared_images else randn(BATCH, 2, 1, 32, 32)
    labels = torch.randint(0, 10, (2,))
    in_dims = (0, None if shared_images else 0, None)
    ours, expected = (vmap(grad(loss(net)), in_dims, out_dims=1)(params, images, labels)
                      for net in (network().double(), stock))
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("network", [LeNet, FusedLeNet])
def test_gradient_through_vmap_matches_stock(network):
    # grad outside vmap: the rules' own calls are recorded by autograd and differentiated
    stock, _ = networks()
    params = {name: randn(BATCH, *p.shape) for name, p in stock.named_parameters()}
    images = randn(BATCH, 2, 1, 32, 32)

    def total(net):
        return lambda params: (vmap(lambda p, x: functional_call(net, p, (x,)))(params, images)
                               .square().sum())
    ours, expected = (grad(total(net))(params) for net in (network().double(), stock))
    torch.testing.assert_close(ours, expected)


def test_per_sample_benchmark_quick_run(tmp_path):
    # benchmarks/bench_per_sample.py end to end: checked equal, timed, written (no timing claim)
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_per_sample.py"
    spec = importlib.util.spec_from_file_location("bench_per_sample", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--quick", "--batch", "4", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "per_sample.json").read_text())["rows"]
    assert [(r["batch"], r["max_error"] <= lenet_ext.bench.TOLERANCE) for r in rows] == [(4, True)]
    assert "| LeNet, vmap(grad) | 4 |" in (tmp_path / "per_sample.md").read_text()
