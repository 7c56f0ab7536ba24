"""The fake (meta) kernels check what the C++ kernels check, with the same exception class and
message (lenet_ext/checks.py mirrors csrc's checks): every call of the fuzz suite's strategies and
a table that fails every check, run on CPU and on meta, must end alike. A call that mixes meta and
CPU tensors (the Meta key wins the dispatch, so the fake kernel runs) raises as stock does."""
import ast
import inspect
import sys

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import lenet_ext
import lenet_ext.functional as LF
import test_fuzz as fuzz
from lenet_ext import checks

lib = torch.ops.lenet_ext

# The checks that read the values of a tensor (indices in range), which a meta tensor has not: the
# kernels make them, the fake kernels cannot.
DATA_CHECKS = ("expected indices in [0, H*W)", "expected indices in [0, conv_h * conv_w)",
               "expected pool1_indices and pool2_indices in [0, 4)")


def outcome(fn, args, kwargs=()):
    """("ok", [(shape, dtype) of each output, then of each input's gradient]) or ("raise", exception
    class, message). Tensors that require grad are leaves; the gradient is of the outputs' sum."""
    try:
        out = fn(*args, **dict(kwargs))
        outputs = list(out) if isinstance(out, (tuple, list)) else [out]
        results = [(tuple(o.shape), o.dtype) if isinstance(o, torch.Tensor) else o for o in outputs]
        differentiable = [o for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad]
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        if differentiable and leaves:
            grads = torch.autograd.grad(differentiable, leaves, [torch.ones_like(o) for o in
                                                                 differentiable], allow_unused=True)
            results += [None if g is None else (tuple(g.shape), g.dtype) for g in grads]
        return ("ok", results)
    except Exception as error:  # noqa: BLE001  (what it raises is the outcome)
        return ("raise", type(error), str(error))


def assert_alike(cpu, meta, what):
    if cpu[0] == "raise" and any(check in cpu[2] for check in DATA_CHECKS):
        assert meta[0] == "ok", f"{what}: meta {meta}"
        return
    assert cpu == meta, f"{what}:\n  cpu:  {cpu}\n  meta: {meta}"


def on(device, value, requires_grad=False):
    """The argument on `device` (a leaf, requiring grad if asked); anything else, or any argument
    for device None, as it is."""
    if not isinstance(value, torch.Tensor) or device is None:
        return value
    value = value.detach().to(device)
    return value.requires_grad_() if requires_grad and value.is_floating_point() else value


# Every call the fuzz suite draws (its strategies, huge and overflow cases), on CPU and on meta ------

def fuzz_call(case):
    """(function, [(argument, requires grad)], kwargs) of a functional or op case of the fuzz
    suite, its tensors built on CPU."""
    kind, name = case.target.split(".", 1)
    fn = getattr(LF, name) if kind == "F" else getattr(lib, name)
    args = [(fuzz.build(spec)[0], isinstance(spec, fuzz.TensorSpec) and spec.requires_grad)
            for spec in case.args]
    return fn, args, [(key, fuzz.build(value)[0]) for key, value in case.kwargs]


def check_case(case):
    try:
        fn, args, kwargs = fuzz_call(case)
    except Exception:  # noqa: BLE001  (a case the strategies should not have drawn: fuzz skips it)
        return
    cpu, meta = ((outcome(fn, [on(device, a, grad) for a, grad in args],
                          [(k, on(device, v)) for k, v in kwargs]) for device in ("cpu", "meta")))
    assert_alike(cpu, meta, repr(case))


TARGETS = [t for t in fuzz.STRATEGIES if not t.startswith("nn.")]  # modules call the functionals


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=fuzz.EXAMPLES, deadline=None, derandomize=fuzz.SEED is None,
          database=None, phases=[Phase.explicit, Phase.generate], print_blob=False,
          suppress_health_check=list(HealthCheck))
@fuzz.another_seed
@given(data=st.data())
def test_fuzz_calls_end_alike_on_meta_and_cpu(target, data):
    check_case(data.draw(fuzz.STRATEGIES[target](target), label="case"))


EXPLICIT = {**fuzz.HUGE_CASES, **fuzz.OVERFLOW_CASES}


@pytest.mark.parametrize("name", [n for n, c in EXPLICIT.items() if not c.target.startswith("nn.")])
def test_fuzz_explicit_cases_end_alike_on_meta_and_cpu(name):
    check_case(EXPLICIT[name])


# A table of calls that fails every check of lenet_ext/checks.py ---------------------------------

def t(*shape, dtype=torch.float32):
    """A tensor of random values (zeros for integer dtypes: valid indices), built when a case
    runs. Made on CPU: each case moves its tensors to the device it runs on."""
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)


LENET_PARAMETERS = {name: shape for name, shape in zip(checks.LENET_PARAMETERS,
                                                       checks.LENET_PARAMETER_SHAPES)}
LENET_ACTIVATIONS = {name: ((2, *shape), dtype or torch.float32)
                     for name, shape, dtype in checks.LENET_ACTIVATIONS}

# Each op's valid call (keyword arguments), as a function: fresh tensors each time.
VALID = {
    "relu": lambda: dict(input=t(2, 3)),
    "relu_backward": lambda: dict(grad_output=t(2, 3), result=t(2, 3)),
    "linear": lambda: dict(input=t(3, 5), weight=t(4, 5), bias=t(4)),
    "linear_backward": lambda: dict(grad_output=t(3, 4), input=t(3, 5), weight=t(4, 5),
                                    output_mask=[True, True, True]),
    "conv2d": lambda: dict(input=t(2, 4, 8, 8), weight=t(6, 2, 3, 3), bias=t(6), stride=[1, 1],
                           padding=[0, 0], dilation=[1, 1], groups=2),
    "conv2d_backward": lambda: dict(grad_output=t(2, 6, 6, 6), input=t(2, 4, 8, 8),
                                    weight=t(6, 2, 3, 3), stride=[1, 1], padding=[0, 0],
                                    dilation=[1, 1], groups=2, output_mask=[True, True, True]),
    "max_pool2d": lambda: dict(input=t(2, 3, 8, 8), kernel_size=[2, 2], stride=[2, 2],
                               padding=[0, 0], dilation=[1, 1], ceil_mode=False),
    "max_pool2d_backward": lambda: dict(grad_output=t(2, 3, 4, 4),
                                        indices=t(2, 3, 4, 4, dtype=torch.int64),
                                        input_size=[2, 3, 8, 8]),
    "max_pool2d_gather": lambda: dict(input=t(2, 3, 8, 8), indices=t(2, 3, 4, 4, dtype=torch.int64)),
    "conv2d_relu_max_pool2d": lambda: dict(input=t(2, 1, 12, 12), weight=t(6, 1, 5, 5),
                                           bias=t(6)),
    "conv2d_relu_max_pool2d_backward": lambda: dict(
        grad_output=t(2, 6, 4, 4), output=t(2, 6, 4, 4), indices=t(2, 6, 4, 4, dtype=torch.int64),
        input=t(2, 1, 12, 12), weight=t(6, 1, 5, 5), output_mask=[True, True, True]),
    "lenet": lambda: dict(input=t(2, 1, 32, 32),
                          **{name: t(*shape) for name, shape in LENET_PARAMETERS.items()}),
    "lenet_backward": lambda: dict(
        grad_logits=t(2, 10), input=t(2, 1, 32, 32),
        **{name: t(*shape) for name, shape in LENET_PARAMETERS.items() if "weight" in name},
        **{name: t(*shape, dtype=dtype) for name, (shape, dtype) in LENET_ACTIVATIONS.items()},
        output_mask=[True] * 11),
}

# (op, what is wrong, the arguments that replace the valid call's)
BAD = [
    ("relu", "input int", dict(input=t(2, 3, dtype=torch.int32))),
    ("relu_backward", "result complex", dict(result=t(2, 3, dtype=torch.complex64))),
    ("relu_backward", "grad_output float64", dict(grad_output=t(2, 3, dtype=torch.float64))),
    ("relu_backward", "grad_output shape", dict(grad_output=t(3, 2))),
    ("linear", "input bool", dict(input=t(3, 5, dtype=torch.bool))),
    ("linear", "weight float64", dict(weight=t(4, 5, dtype=torch.float64))),
    ("linear", "input 0-d", dict(input=t())),
    ("linear", "weight 1-D", dict(weight=t(5))),
    ("linear", "weight 3-D", dict(weight=t(4, 5, 1))),
    ("linear", "in_features", dict(weight=t(4, 6))),
    ("linear", "bias float64", dict(bias=t(4, dtype=torch.float64))),
    ("linear", "bias shape", dict(bias=t(1, 4))),
    ("linear", "bias 0-d", dict(bias=t())),
    ("linear", "output past 2^63 bytes", dict(input=t(2**31, 2**30, 0), weight=t(3, 0), bias=None)),
    ("linear_backward", "grad_output shape", dict(grad_output=t(3, 5))),
    ("linear_backward", "grad_output float64", dict(grad_output=t(3, 4, dtype=torch.float64))),
    ("linear_backward", "weight 1-D", dict(weight=t(5))),
    ("linear_backward", "output_mask of 2", dict(output_mask=[True, False])),
    ("max_pool2d_gather", "input int32", dict(input=t(2, 3, 8, 8, dtype=torch.int32))),
    ("max_pool2d_gather", "input 2-D", dict(input=t(8, 8), indices=t(4, 4, dtype=torch.int64))),
    ("max_pool2d_gather", "indices float", dict(indices=t(2, 3, 4, 4))),
    ("max_pool2d_gather", "indices of another batch", dict(indices=t(3, 3, 4, 4, dtype=torch.int64))),
    # the fused backward ops have no autograd kernel that unboxes the mask first: the fake kernel's
    # own check answers on meta
    ("conv2d_relu_max_pool2d_backward", "output_mask of 2", dict(output_mask=[True, False])),
    ("conv2d", "input uint8", dict(input=t(2, 4, 8, 8, dtype=torch.uint8))),
    ("conv2d", "weight float64", dict(weight=t(6, 2, 3, 3, dtype=torch.float64))),
    ("conv2d", "input 3-D", dict(input=t(4, 8, 8))),
    ("conv2d", "weight 3-D", dict(weight=t(6, 2, 3))),
    ("conv2d", "stride 3 values", dict(stride=[1, 1, 1])),
    ("conv2d", "padding 1 value", dict(padding=[0])),
    ("conv2d", "dilation 0 values", dict(dilation=[])),
    ("conv2d", "stride 0", dict(stride=[1, 0])),
    ("conv2d", "padding -1", dict(padding=[-1, 0])),
    ("conv2d", "dilation 0", dict(dilation=[0, 1])),
    ("conv2d", "dilation -1 on an empty input", dict(input=t(0, 4, 8, 8), dilation=[1, -1])),
    ("conv2d", "groups 0", dict(groups=0)),
    ("conv2d", "stride 2^31", dict(stride=[2**31, 1])),
    ("conv2d", "padding 2^62", dict(padding=[1, 2**62])),
    ("conv2d", "dilation 2^63 - 1", dict(dilation=[2**63 - 1, 1])),
    ("conv2d", "out_channels not a multiple of groups", dict(weight=t(5, 2, 3, 3), bias=t(5))),
    ("conv2d", "channels", dict(input=t(2, 3, 8, 8))),
    ("conv2d", "channels, groups * weight.size(1) past int64",
     dict(weight=t(2**62, 2, 0, 3), groups=2**62, bias=None)),
    ("conv2d", "kernel 0", dict(weight=t(6, 2, 0, 3))),
    ("conv2d", "plane 0", dict(input=t(2, 4, 8, 0))),
    ("conv2d", "bias shape", dict(bias=t(3))),
    ("conv2d", "bias float64", dict(bias=t(6, dtype=torch.float64))),
    ("conv2d", "kernel over the padded input", dict(weight=t(6, 2, 9, 3))),
    ("conv2d", "dilated kernel over the padded input", dict(dilation=[1, 5], padding=[1, 1])),
    ("conv2d", "output past 2^63 bytes", dict(input=t(0, 4, 8, 8), padding=[2**31 - 1] * 2)),
    ("conv2d_backward", "grad_output shape", dict(grad_output=t(2, 6, 6, 5))),
    ("conv2d_backward", "grad_output float64", dict(grad_output=t(2, 6, 6, 6, dtype=torch.float64))),
    ("conv2d_backward", "groups -1", dict(groups=-1)),
    ("max_pool2d", "input complex", dict(input=t(2, 3, 8, 8, dtype=torch.complex64))),
    ("max_pool2d", "input 2-D", dict(input=t(8, 8))),
    ("max_pool2d", "input 5-D", dict(input=t(1, 2, 3, 8, 8))),
    ("max_pool2d", "0 channels", dict(input=t(2, 0, 8, 8))),
    ("max_pool2d", "kernel_size 3 values", dict(kernel_size=[2, 2, 2])),
    ("max_pool2d", "stride 0 values", dict(stride=[])),
    ("max_pool2d", "padding 1 value", dict(padding=[0])),
    ("max_pool2d", "dilation 3 values", dict(dilation=[1, 1, 1])),
    ("max_pool2d", "kernel_size 0", dict(kernel_size=[0, 2])),
    ("max_pool2d", "stride 0", dict(stride=[0, 0])),
    ("max_pool2d", "dilation -1", dict(dilation=[1, -1])),
    ("max_pool2d", "kernel_size 2^31", dict(kernel_size=[2, 2**31])),
    ("max_pool2d", "stride 2^32 + 1", dict(stride=[2**32 + 1, 1])),
    ("max_pool2d", "dilation 2^63 - 1", dict(dilation=[2**63 - 1, 1])),
    ("max_pool2d", "padding over half the kernel", dict(padding=[1, 2])),
    ("max_pool2d", "padding -1", dict(padding=[0, -1])),
    ("max_pool2d", "output 0x0", dict(kernel_size=[9, 9], stride=[1, 1])),
    ("max_pool2d", "output 0x1 with ceil_mode", dict(input=t(2, 3, 2, 8), kernel_size=[3, 3],
                                                     stride=[1, 1], ceil_mode=True)),
    ("max_pool2d_backward", "grad_output int", dict(grad_output=t(2, 3, 4, 4, dtype=torch.int64))),
    ("max_pool2d_backward", "grad_output 2-D", dict(grad_output=t(4, 4))),
    ("max_pool2d_backward", "indices int32", dict(indices=t(2, 3, 4, 4, dtype=torch.int32))),
    ("max_pool2d_backward", "indices shape", dict(indices=t(2, 3, 4, 3, dtype=torch.int64))),
    ("max_pool2d_backward", "input_size length", dict(input_size=[3, 8, 8])),
    ("max_pool2d_backward", "input_size channels", dict(input_size=[2, 4, 8, 8])),
    ("max_pool2d_backward", "input_size negative", dict(input_size=[2, 3, -1, 8])),
    ("max_pool2d_backward", "input past 2^63 bytes", dict(input_size=[2, 3, 2**40, 2**40])),
    ("conv2d_relu_max_pool2d", "input complex64", dict(input=t(2, 1, 12, 12, dtype=torch.complex64))),
    ("conv2d_relu_max_pool2d", "weight float64", dict(weight=t(6, 1, 5, 5, dtype=torch.float64))),
    ("conv2d_relu_max_pool2d", "input 3-D", dict(input=t(1, 12, 12))),
    ("conv2d_relu_max_pool2d", "weight 2-D", dict(weight=t(6, 25))),
    ("conv2d_relu_max_pool2d", "kernel 0", dict(weight=t(6, 1, 0, 5))),
    ("conv2d_relu_max_pool2d", "channels", dict(input=t(2, 2, 12, 12))),
    ("conv2d_relu_max_pool2d", "input smaller than kernel + 1", dict(input=t(2, 1, 5, 12))),
    ("conv2d_relu_max_pool2d", "bias float64", dict(bias=t(6, dtype=torch.float64))),
    ("conv2d_relu_max_pool2d", "bias shape", dict(bias=t(6, 1))),
    ("conv2d_relu_max_pool2d_backward", "input 5-D", dict(input=t(1, 2, 1, 12, 12))),
    ("conv2d_relu_max_pool2d_backward", "grad_output shape", dict(grad_output=t(2, 6, 4, 5))),
    ("conv2d_relu_max_pool2d_backward", "output float64",
     dict(output=t(2, 6, 4, 4, dtype=torch.float64))),
    ("conv2d_relu_max_pool2d_backward", "indices uint8",
     dict(indices=t(2, 6, 4, 4, dtype=torch.uint8))),
    ("conv2d_relu_max_pool2d_backward", "indices shape",
     dict(indices=t(2, 6, 4, dtype=torch.int64))),
    ("lenet", "input int", dict(input=t(2, 1, 32, 32, dtype=torch.int32))),
    ("lenet", "input 3-D", dict(input=t(1, 32, 32))),
    ("lenet", "input 28x28", dict(input=t(2, 1, 28, 28))),
    ("lenet", "fc1_weight shape", dict(fc1_weight=t(120, 401))),
    ("lenet", "conv2_bias float64", dict(conv2_bias=t(16, dtype=torch.float64))),
    ("lenet_backward", "input complex64", dict(input=t(2, 1, 32, 32, dtype=torch.complex64))),
    ("lenet_backward", "fc3_weight shape", dict(fc3_weight=t(84, 10))),
    ("lenet_backward", "grad_logits shape", dict(grad_logits=t(3, 10))),
    ("lenet_backward", "pool1 float64", dict(pool1=t(2, 6, 14, 14, dtype=torch.float64))),
    ("lenet_backward", "pool2_indices int64", dict(pool2_indices=t(2, 16, 5, 5, dtype=torch.int64))),
    ("lenet_backward", "pool1_indices shape", dict(pool1_indices=t(2, 6, 14, dtype=torch.uint8))),
    ("lenet_backward", "fc2_relu shape", dict(fc2_relu=t(2, 83))),
]


def bad_call(op, replacement):
    return {**VALID[op](), **replacement}


def run_op(op, kwargs, device):
    return outcome(lambda **kw: getattr(lib, op)(**kw), (),
                   [(name, on(device, value)) for name, value in kwargs.items()])


@pytest.mark.parametrize("op", VALID)
def test_valid_calls_give_the_same_shapes_on_meta_and_cpu(op):
    kwargs = VALID[op]()
    cpu, meta = (run_op(op, kwargs, device) for device in ("cpu", "meta"))
    assert cpu[0] == "ok", cpu
    assert cpu == meta


@pytest.mark.parametrize("op, what, replacement", BAD, ids=[f"{op}-{what}" for op, what, _ in BAD])
def test_bad_calls_raise_alike_on_meta_and_cpu(op, what, replacement):
    kwargs = bad_call(op, replacement)
    cpu, meta = (run_op(op, kwargs, device) for device in ("cpu", "meta"))
    assert cpu[0] == "raise" and cpu[2].startswith((f"lenet_ext.{op}: ", fuzz.DISPATCHER_ERROR)), \
        cpu
    assert cpu == meta


def mixes():
    """(op, argument) for every tensor argument of every op: that one on meta, the others on CPU."""
    tensors = {op: [name for name, value in make().items() if isinstance(value, torch.Tensor)]
               for op, make in VALID.items()}
    return [(op, name) for op, names in tensors.items() if len(names) > 1 for name in names]


def mixed_call(op, argument):
    return {name: on("meta" if name == argument else "cpu", value)
            for name, value in VALID[op]().items()}


@pytest.mark.parametrize("op, argument", mixes(), ids=[f"{op}-{arg}" for op, arg in mixes()])
def test_a_tensor_on_meta_among_cpu_ones_raises_naming_the_devices(op, argument):
    kwargs = mixed_call(op, argument)
    result = run_op(op, kwargs, device=None)
    reference = "grad_output" if op == "max_pool2d_backward" else \
        "result" if op == "relu_backward" else "input"
    pair = f"expected {argument} to be on the same device as {reference} (cpu), but got meta" \
        if argument != reference else "to be on the same device as " + reference + " (meta), " \
                                      "but got cpu"
    assert result[:2] == ("raise", RuntimeError) and result[2].startswith(f"lenet_ext.{op}: ") \
        and pair in result[2], result


def test_every_check_is_failed_by_some_case(monkeypatch):
    """The table and the mixes fail every check in lenet_ext/checks.py (else a check might differ
    from its C++ twin untested)."""
    source = inspect.getsource(checks)
    sites = {node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
             and getattr(node.func, "id", None) in ("_check", "_check_type")}
    failed = set()
    for name in ("_check", "_check_type"):
        original = getattr(checks, name)

        def recording(condition, *parts, original=original):
            if not condition:
                failed.add(sys._getframe(1).f_lineno)
            return original(condition, *parts)
        monkeypatch.setattr(checks, name, recording)
    for op, _, replacement in BAD:
        run_op(op, bad_call(op, replacement), "meta")
    for op, argument in mixes():
        run_op(op, mixed_call(op, argument), None)
    lines = source.splitlines()
    missed = sorted(sites - failed)
    assert not missed, "checks no case fails:\n" + "\n".join(
        f"  checks.py:{n}: {lines[n - 1].strip()}" for n in missed)


# Mixes against stock, a model with one layer on meta --------------------------------------------

def _x():
    return torch.randn(2, 3)


STOCK_MIXES = {
    # (ours, stock, arguments): one of them on meta
    "linear-bias": (LF.linear, torch.nn.functional.linear,
                    lambda: (_x(), torch.randn(4, 3), torch.randn(4, device="meta"))),
    "linear-weight": (LF.linear, torch.nn.functional.linear,
                      lambda: (_x(), torch.randn(4, 3, device="meta"), torch.randn(4))),
    "linear-input": (LF.linear, torch.nn.functional.linear,
                     lambda: (_x().to("meta"), torch.randn(4, 3), torch.randn(4))),
    "linear-weight-no-bias": (LF.linear, torch.nn.functional.linear,
                              lambda: (_x(), torch.randn(4, 3, device="meta"))),
    "linear-1d-weight": (LF.linear, torch.nn.functional.linear,
                         lambda: (_x(), torch.randn(3, device="meta"))),
    "conv2d-bias": (LF.conv2d, torch.nn.functional.conv2d,
                    lambda: (torch.randn(2, 1, 8, 8), torch.randn(3, 1, 3, 3),
                             torch.randn(3, device="meta"))),
    "conv2d-weight": (LF.conv2d, torch.nn.functional.conv2d,
                      lambda: (torch.randn(2, 1, 8, 8), torch.randn(3, 1, 3, 3, device="meta"))),
    "conv2d-input": (LF.conv2d, torch.nn.functional.conv2d,
                     lambda: (torch.randn(2, 1, 8, 8, device="meta"), torch.randn(3, 1, 3, 3))),
    "relu_backward-result": (lib.relu_backward, torch.ops.aten.threshold_backward,
                             lambda: (_x(), _x().to("meta"))),
}


@pytest.mark.parametrize("name", STOCK_MIXES)
def test_a_mix_raises_where_stock_raises_alike_and_where_stock_computes_garbage(name):
    ours, stock, make = STOCK_MIXES[name]
    args = make()
    with pytest.raises(RuntimeError, match=r"^lenet_ext\.\w+: expected \w+ to be on the same "
                                           r"device as \w+ \((cpu|meta)\), but got (cpu|meta)$"):
        ours(*args)
    extra = (0,) if stock is torch.ops.aten.threshold_backward else ()
    try:
        stock(*args, *extra)
    except Exception as error:  # noqa: BLE001
        assert type(error) is RuntimeError  # stock's class; where stock returns, it is garbage


MODEL_LAYERS = [(model, layer) for model in ("LeNet", "FusedLeNet")
                for layer in ("conv1", "conv2", "fc1", "fc2", "fc3")] + \
               [("MLP", layer) for layer in ("fc1", "fc2", "fc3")]


@pytest.mark.parametrize("model, layer", MODEL_LAYERS, ids=[f"{m}-{l}" for m, l in MODEL_LAYERS])
def test_a_model_with_one_layer_on_meta_raises(model, layer):
    net = getattr(lenet_ext.models, model)()
    getattr(net, layer).to("meta")
    x = torch.randn(3, 1, 32, 32) if "LeNet" in model else torch.randn(3, 1, 28, 28)
    with pytest.raises(RuntimeError, match=r"^lenet_ext\.\w+: expected \w+ to be on the same "
                                           r"device as input \(cpu\), but got meta$"):
        net(x)


def test_a_stock_model_with_a_linear_layer_on_meta_raises_the_same_class():
    net = lenet_ext.models.StockLeNet()
    net.fc2.to("meta")
    with pytest.raises(RuntimeError):
        net(torch.randn(3, 1, 32, 32))


@pytest.mark.parametrize("stride", [[0, 0], [2, 0]])
def test_max_pool2d_stride_zero_on_meta_raises_as_on_cpu(stride):
    x = torch.randn(2, 3, 8, 8)
    message = rf"^lenet_ext\.max_pool2d: expected stride to be positive, but got \[{stride[0]}, 0\]$"
    for device in ("cpu", "meta"):
        with pytest.raises(RuntimeError, match=message):
            LF.max_pool2d(x.to(device), 2, stride)


def test_lenet_runs_on_meta():
    # the whole LeNet on meta: shapes only, every fake kernel forward and backward
    net = lenet_ext.models.LeNet().to("meta")
    x = torch.randn(5, 1, 32, 32, device="meta", requires_grad=True)
    out = net(x)
    out.sum().backward()
    assert out.shape == (5, 10) and out.device.type == "meta"
    assert x.grad.shape == x.shape and all(p.grad.shape == p.shape for p in net.parameters())

