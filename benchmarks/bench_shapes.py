"""A shape sweep: lenet_ext.functional.conv2d and linear against torch.nn.functional's on every conv
and linear layer of ResNet-18, ResNet-50, VGG-16, a CIFAR ResNet-20, pytorch/examples' MNIST net and
LeNet, and on two large single planes, at several batch sizes; forward, grad-input, grad-weight and
forward+backward apart; stock/ours, GFLOP/s, % of the FMA peak and peak memory.

    python benchmarks/bench_shapes.py [--threads N] [--batch-sizes 1 8 16 32 64]
        [--networks resnet18 resnet50 vgg16 cifar-resnet20 mnist-net lenet]
        [--passes forward grad-input grad-weight forward+backward] [--min-run-time SECONDS]
        [--max-gb GB] [--only-large-planes | --no-large-planes] [--quick] [--no-peak]
        [--device cpu|cuda] [--resume-from SHAPES.json] [--out DIR] [--list]

Rows. One per distinct (layer shape, batch size, pass): a layer shape several networks share (ResNet-18
and ResNet-50's 3x3 64->64 on 56x56) is timed once and lists every network and layer that uses it.
ResNet-50's 53 convolutions collapse so to the distinct shapes of each stage's bottleneck (1x1 reduce,
3x3, 1x1 expand, the stride-2 downsample). Networks take their usual input (224x224 ImageNet,
32x32 CIFAR, 28x28 MNIST, 32x32 LeNet); the CIFAR ResNet-20 has the paper's parameter-free (option A)
shortcuts, so no 1x1 convolutions. The large planes (1x3x512x512 and 1x3x1024x1024, 3x3, 3->16,
padding 1) run at batch 1 only. A (layer, batch) whose float32 tensors would exceed --max-gb
(inputs, grad_output, and ours' and stock's outputs and gradients at once, as the check holds them)
is skipped, and the report says which.

Passes. Inputs, weights and grad_output are N(0, 1), the same for both sides.
- forward: F.conv2d / F.linear on tensors that require no grad.
- grad-input, grad-weight: torch.autograd.grad on a graph built once (retain_graph) in which only the
  input, or only the weight, requires grad, so each side's own backward node computes that one
  gradient: ours torch.ops.lenet_ext.conv2d_backward / linear_backward with output_mask
  [True, False, False] or [False, True, False], stock aten.convolution_backward with the same mask, or
  addmm's backward (one mm) for linear. This times exactly what training runs, autograd engine
  included (a few µs, the same on both sides), without re-implementing stock's backward formulas.
- forward+backward: the forward, then torch.autograd.grad for input, weight and bias (every layer
  here gets its input gradient, the first layer of a network too).
FLOPs: 2 x multiply-adds of the forward; grad-input and grad-weight each cost one forward's,
forward+backward three (the bias is not counted). % peak: our GFLOP/s over the fp32 FMA peak that
benchmarks/peak_fma.c measures once at the start for 1 and 2 threads (more threads: 1-thread peak
x threads, marked estimated). The peak of a shared VM moves from minute to minute: compare ratios.

Checking and timing. Before a row is timed, ours and stock's results are compared with
torch.testing.assert_close at tolerances scaled like tests/helpers.py's sum_tolerance: rtol 1e-5,
atol 1e-5 * sqrt(the length of the sums behind each result). Where that fails (a sum over millions
of terms, rounded differently), both are compared with a float64 stock reference: the row is timed
if ours is at most 2x as far from it as stock (and within 1e-4 of it relative to its largest value),
else it is reported as a mismatch, not timed, and the run exits 1. Timing is lenet_ext.bench's:
ROUNDS alternating rounds of ours and stock, the median of the rounds' ratios with its quartiles,
timed again while unstable (bench.time_against).

Memory. The peak of the forward+backward pass, ours and stock measured the same way, with
lenet_ext.bench.peak_bytes: on CUDA torch.cuda.max_memory_allocated; on CPU the rise of the process's
peak resident set (VmHWM, reset through /proc/self/clear_refs) after malloc_trim(0), which counts
torch's tensors and the scratch buffers kernels take with malloc alike (the profiler's memory events
would miss ours' im2col columns and oneDNN's scratchpads). The smallest of 3 measurements. mem ratio
= ours / stock (above 1: ours needs more). Page-granular: rows under ~1 MB move by a few pages from
run to run (the summary's worst ratio leaves them out).

Output in --out (default benchmarks/results/<date>-<machine>/): shapes.json (rewritten atomically
after every row, so a crash loses no finished row; --resume-from it skips those rows), shapes.md
(the table and a summary) and shapes.png (stock/ours of forward+backward per layer; needs
matplotlib). Progress on stderr.
"""
import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import torch

CHECKOUT = Path(__file__).resolve().parents[1]
if any((CHECKOUT / "lenet_ext").glob("_C*")):  # this checkout's in-place build wins over an installed one
    sys.path.insert(0, str(CHECKOUT))

import lenet_ext  # noqa: E402
from lenet_ext import bench  # noqa: E402
from lenet_ext.checkpoint import write_atomically  # noqa: E402

PASSES = ("forward", "grad-input", "grad-weight", "forward+backward")
BATCH_SIZES = (1, 8, 16, 32, 64)
MAX_GB = 4.0
MEMORY_REPEATS = 3
# below this on either side a CPU measurement is a handful of pages, moved by heap layout: the summary's
# worst memory ratio looks only at rows above it (the table shows every row)
MEMORY_FLOOR = 1e6
PEAK_SOURCE = Path(__file__).resolve().parent / "peak_fma.c"
TITLE = "lenet_ext conv2d and linear vs stock PyTorch over the layer shapes of common networks"
# --quick: a handful of small rows (network, layer name), batches and a tiny run time, for smoke tests
QUICK_LAYERS = (("lenet", "conv2"), ("cifar-resnet20", "layer2.0.conv1"), ("lenet", "fc1"))
QUICK_BATCH_SIZES = (1, 3)
QUICK_MIN_RUN_TIME = 0.005
# a failed assert_close is arbitrated against float64: ours may be this much farther from it than stock
ARBITER_SLACK = 2.0


# layers and networks ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layer:
    """A conv2d (square kernel, stride, padding, input plane size x size) or a linear layer
    (in_channels, out_channels are in_features, out_features; size, kernel, stride, padding unused)."""
    kind: str  # "conv2d" or "linear"
    in_channels: int
    out_channels: int
    size: int = 0
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    bias: bool = True

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    def input_shape(self, batch: int) -> tuple:
        if self.kind == "linear":
            return (batch, self.in_channels)
        return (batch, self.in_channels, self.size, self.size)

    def output_shape(self, batch: int) -> tuple:
        if self.kind == "linear":
            return (batch, self.out_channels)
        return (batch, self.out_channels, self.out_size, self.out_size)

    @property
    def weight_shape(self) -> tuple:
        if self.kind == "linear":
            return (self.out_channels, self.in_channels)
        return (self.out_channels, self.in_channels, self.kernel, self.kernel)

    @property
    def parameters(self) -> int:
        return math.prod(self.weight_shape) + (self.out_channels if self.bias else 0)

    def macs(self, batch: int) -> int:
        """Multiply-adds of one forward: every output element sums in_channels x kernel^2 products."""
        return math.prod(self.output_shape(batch)) * math.prod(self.weight_shape[1:])

    def reduction_lengths(self, batch: int) -> dict:
        """Result label -> how many products each of its elements sums (for the check's tolerance)."""
        per_position = self.out_size ** 2 if self.kind == "conv2d" else 1
        return {"output": math.prod(self.weight_shape[1:]),
                "grad input": self.out_channels * (self.kernel ** 2 if self.kind == "conv2d" else 1),
                "grad weight": batch * per_position, "grad bias": batch * per_position}

    @property
    def label(self) -> str:
        """Unique for each distinct layer: "conv 64->128 3x3/2 p1 @56", "linear 512->1000 +bias"."""
        suffix = " +bias" if self.bias else ""
        if self.kind == "linear":
            return f"linear {self.in_channels}->{self.out_channels}{suffix}"
        return (f"conv {self.in_channels}->{self.out_channels} {self.kernel}x{self.kernel}"
                + (f"/{self.stride}" if self.stride != 1 else "") + (f" p{self.padding}" if self.padding else "")
                + f" @{self.size}{suffix}")

    def tensor_bytes(self, batch: int, element_size: int = 4) -> int:
        """Bytes of the float32 tensors a forward+backward comparison holds at once: input, weight,
        bias and grad_output, and each side's output and three gradients."""
        inputs = math.prod(self.input_shape(batch))
        outputs = math.prod(self.output_shape(batch))
        parameters = self.parameters
        return element_size * (inputs + parameters + outputs + 2 * (outputs + inputs + parameters))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def conv(in_channels, out_channels, size, kernel, stride=1, padding=0, bias=False) -> Layer:
    return Layer("conv2d", in_channels, out_channels, size, kernel, stride, padding, bias)


def linear(in_features, out_features, bias=True) -> Layer:
    return Layer("linear", in_features, out_features, bias=bias)


def _resnet(blocks: tuple, bottleneck: bool) -> list:
    """torchvision's ResNet on 224x224: (layer name, Layer) for every conv (BN after each, so no
    bias) and the fc. Bottlenecks stride in their 3x3 (ResNet v1.5, as torchvision)."""
    layers = [("conv1", conv(3, 64, 224, 7, 2, 3))]
    size, channels = 56, 64  # after the stem's stride-2 conv and stride-2 max-pool
    for stage, count in enumerate(blocks, start=1):
        width = 64 * 2 ** (stage - 1)
        out_channels = width * 4 if bottleneck else width
        for block in range(count):
            stride = 2 if stage > 1 and block == 0 else 1
            name = f"layer{stage}.{block}"
            if bottleneck:
                layers += [(f"{name}.conv1", conv(channels, width, size, 1)),
                           (f"{name}.conv2", conv(width, width, size, 3, stride, 1)),
                           (f"{name}.conv3", conv(width, out_channels, size // stride, 1))]
            else:
                layers += [(f"{name}.conv1", conv(channels, width, size, 3, stride, 1)),
                           (f"{name}.conv2", conv(width, width, size // stride, 3, 1, 1))]
            if stride != 1 or channels != out_channels:
                layers.append((f"{name}.downsample.0", conv(channels, out_channels, size, 1, stride)))
            channels, size = out_channels, size // stride
    return layers + [("fc", linear(channels, 1000))]


def resnet18() -> list:
    return _resnet((2, 2, 2, 2), bottleneck=False)


def resnet50() -> list:
    return _resnet((3, 4, 6, 3), bottleneck=True)


def vgg16() -> list:
    """torchvision's vgg16 (no batch norm) on 224x224: 13 3x3 convs with bias, a max-pool after each
    stage, the classifier's three linear layers."""
    layers, channels, size, index = [], 3, 224, 0
    for width, count in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(count):
            layers.append((f"features.{index}", conv(channels, width, size, 3, 1, 1, bias=True)))
            channels, index = width, index + 2  # each conv is followed by a ReLU in features
        size, index = size // 2, index + 1  # and each stage by a max-pool
    return layers + [("classifier.0", linear(512 * 7 * 7, 4096)), ("classifier.3", linear(4096, 4096)),
                     ("classifier.6", linear(4096, 1000))]


def cifar_resnet20() -> list:
    """He et al. 2016's CIFAR-10 ResNet-20 on 32x32: a 3x3 conv to 16 channels, three stages of three
    basic blocks (16, 32, 64 channels on 32x32, 16x16, 8x8), the first conv of stages 2 and 3 of
    stride 2, parameter-free shortcuts (option A), global pooling and a 64->10 fc."""
    layers, channels, size = [("conv1", conv(3, 16, 32, 3, 1, 1))], 16, 32
    for stage, width in enumerate((16, 32, 64), start=1):
        for block in range(3):
            stride = 2 if stage > 1 and block == 0 else 1
            layers += [(f"layer{stage}.{block}.conv1", conv(channels, width, size, 3, stride, 1)),
                       (f"layer{stage}.{block}.conv2", conv(width, width, size // stride, 3, 1, 1))]
            channels, size = width, size // stride
    return layers + [("linear", linear(64, 10))]


def mnist_net() -> list:
    """pytorch/examples mnist/main.py's Net on 28x28: conv 1->32 3x3, conv 32->64 3x3, 2x2 max-pool,
    fc 9216->128, fc 128->10."""
    return [("conv1", conv(1, 32, 28, 3, bias=True)), ("conv2", conv(32, 64, 26, 3, bias=True)),
            ("fc1", linear(9216, 128)), ("fc2", linear(128, 10))]


def lenet() -> list:
    """The tutorial's LeNet (lenet_ext.models.LeNet) on 32x32."""
    return [("conv1", conv(1, 6, 32, 5, bias=True)), ("conv2", conv(6, 16, 14, 5, bias=True)),
            ("fc1", linear(400, 120)), ("fc2", linear(120, 84)), ("fc3", linear(84, 10))]


NETWORKS = {"resnet18": resnet18, "resnet50": resnet50, "vgg16": vgg16, "cifar-resnet20": cifar_resnet20,
            "mnist-net": mnist_net, "lenet": lenet}
LARGE_PLANES = {"large-plane": [("512x512", conv(3, 16, 512, 3, 1, 1, bias=True)),
                                ("1024x1024", conv(3, 16, 1024, 3, 1, 1, bias=True))]}


def distinct_layers(networks: dict) -> dict:
    """{Layer: ["network:layer name", ...]} over every layer of every network ({name: [(layer name,
    Layer)]}), in the order of first use: each distinct shape once, with every use."""
    uses = {}
    for network, layers in networks.items():
        for name, layer in layers:
            uses.setdefault(layer, []).append(f"{network}:{name}")
    return uses


def network_names(uses: list) -> list:
    return list(dict.fromkeys(use.split(":")[0] for use in uses))


@dataclasses.dataclass
class Planned:
    layer: Layer
    uses: list
    batch: int
    pass_: str

    @property
    def key(self) -> str:
        return row_key(self.layer.label, self.batch, self.pass_)


def row_key(label: str, batch: int, pass_: str) -> str:
    return f"{label} | batch {batch} | {pass_}"


def plan(networks: dict, batch_sizes, passes, large_planes: bool, only=None) -> list:
    """Every row to run, in order: each distinct layer of `networks` (names, keys of NETWORKS) at each
    batch size and pass, then, with large_planes, the large planes at batch 1. `only`: (network,
    layer name) pairs, the layers to keep (their uses still cover every network given)."""
    tables = {name: NETWORKS[name]() for name in networks}
    uses = distinct_layers(tables)
    if only is not None:
        kept = {dict(tables[network])[name] for network, name in only}
        uses = {layer: u for layer, u in uses.items() if layer in kept}
    rows = [Planned(layer, u, batch, pass_) for layer, u in uses.items()
            for batch in batch_sizes for pass_ in passes]
    if large_planes:
        rows += [Planned(layer, u, 1, pass_) for layer, u in distinct_layers(LARGE_PLANES).items()
                 for pass_ in passes]
    return rows


def flops(layer: Layer, batch: int, pass_: str) -> int:
    """FLOPs of one pass: 2 per multiply-add of the forward, once for forward, grad-input and
    grad-weight, three times for forward+backward (bias terms not counted)."""
    return 2 * layer.macs(batch) * (3 if pass_ == "forward+backward" else 1)


def over_budget(layer: Layer, batch: int, max_gb: float) -> bool:
    return layer.tensor_bytes(batch) > max_gb * 1e9


# the comparison of one row ---------------------------------------------------------------------

def _ops(layer: Layer):
    """(ours, stock): functions of (input, weight, bias)."""
    if layer.kind == "linear":
        return lenet_ext.functional.linear, torch.nn.functional.linear
    kwargs = dict(stride=layer.stride, padding=layer.padding)
    return ((lambda x, w, b: lenet_ext.functional.conv2d(x, w, b, **kwargs)),
            (lambda x, w, b: torch.nn.functional.conv2d(x, w, b, **kwargs)))


def make_tensors(layer: Layer, batch: int, device, dtype=torch.float32) -> dict:
    return {"input": torch.randn(layer.input_shape(batch), device=device, dtype=dtype),
            "weight": torch.randn(layer.weight_shape, device=device, dtype=dtype),
            "bias": torch.randn(layer.out_channels, device=device, dtype=dtype) if layer.bias else None,
            "grad_output": torch.randn(layer.output_shape(batch), device=device, dtype=dtype)}


def pass_function(op, tensors: dict, pass_: str):
    """(a zero-argument callable running `pass_` of op on `tensors`, the labels of what it returns)."""
    x, w, b, grad_output = (tensors[k] for k in ("input", "weight", "bias", "grad_output"))
    if pass_ == "forward":
        return (lambda: op(x, w, b)), ("output",)
    if pass_ in ("grad-input", "grad-weight"):
        # only the one tensor requires grad: the backward node's output_mask asks for it alone
        wanted = 0 if pass_ == "grad-input" else 1
        leaves = [t.detach().requires_grad_(i == wanted) if t is not None else None
                  for i, t in enumerate((x, w, b))]
        output = op(*leaves)  # the graph, built once and kept (retain_graph)
        return ((lambda: torch.autograd.grad(output, leaves[wanted], grad_output, retain_graph=True)),
                (("grad input", "grad weight")[wanted],))
    leaves = [t.detach().requires_grad_() for t in (x, w, b) if t is not None]

    def forward_backward():
        output = op(*leaves, *([None] if b is None else []))
        return (output.detach(), *torch.autograd.grad(output, leaves, grad_output))
    return forward_backward, ("output", "grad input", "grad weight", "grad bias")[:1 + len(leaves)]


def _tuple(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def sum_tolerance(length: int) -> dict:
    """tests/helpers.py's float32 tolerance for sums of `length` products of N(0, 1) data."""
    return dict(rtol=1e-5, atol=1e-5 * max(1.0, length ** 0.5))


def check(layer: Layer, batch: int, pass_: str, ours: tuple, stock: tuple, labels, tensors: dict) -> str:
    """'' when ours equals stock (assert_close at sum_tolerance), or when it does not but is, per
    result, at most ARBITER_SLACK times as far from a float64 stock reference as stock is (and
    within bench.TOLERANCE of it, relative to its largest value); else why not."""
    lengths = layer.reduction_lengths(batch)
    failures = []
    for label, a, b in zip(labels, ours, stock):
        try:
            torch.testing.assert_close(a.detach(), b.detach(), **sum_tolerance(lengths[label]))
        except AssertionError as error:
            failures.append((label, str(error).strip().splitlines()))
    if not failures:
        return ""
    reference_tensors = {k: (v.double() if v is not None else None) for k, v in tensors.items()}
    reference = _tuple(pass_function(_ops(layer)[1], reference_tensors, pass_)[0]())
    problems = []
    for label, lines in failures:
        i = labels.index(label)
        ref = reference[i].detach()
        ours_error = (ours[i].detach().double() - ref).abs().max().item()
        stock_error = (stock[i].detach().double() - ref).abs().max().item()
        scale = ref.abs().max().clamp_min(1e-30).item()
        if not (ours_error <= ARBITER_SLACK * stock_error and ours_error <= bench.TOLERANCE * scale):
            problems.append(f"{label}: {' '.join(lines[:3])} (float64 reference: ours {ours_error:.2e} "
                            f"off, stock {stock_error:.2e})")
    return "; ".join(problems)


def memory(fns: dict, device) -> dict:
    """name -> the smallest of MEMORY_REPEATS bench.peak_bytes measurements (None: not measurable),
    the callables alternating."""
    seen = {name: [] for name in fns}
    for _ in range(MEMORY_REPEATS):
        for name, fn in fns.items():
            seen[name].append(bench.peak_bytes(fn, device))
    return {name: None if None in values else min(values) for name, values in seen.items()}


def run_row(planned: Planned, device, min_run_time: float, peak: Optional[float]) -> dict:
    """Builds, checks, times (and for forward+backward measures the memory of) one row: its JSON dict."""
    layer, batch, pass_ = planned.layer, planned.batch, planned.pass_
    row = base_row(planned)
    tensors = make_tensors(layer, batch, device)
    ours_op, stock_op = _ops(layer)
    ours, labels = pass_function(ours_op, tensors, pass_)
    stock, _ = pass_function(stock_op, tensors, pass_)
    ours_result, stock_result = _tuple(ours()), _tuple(stock())
    problem = check(layer, batch, pass_, ours_result, stock_result, labels, tensors)
    if problem:
        return {**row, "status": "mismatch", "message": problem}
    pair = bench.Pair(layer.label, pass_, batch, row["shape"], lambda: ours_result, lambda: stock_result,
                      labels, flops(layer, batch, pass_), "GFLOP/s")
    error, *_ = bench.max_error(pair)  # on the results already computed
    del ours_result, stock_result, pair
    times, contention, attempts = bench.time_against({"ours": ours, "stock": stock}, "stock", min_run_time)
    timed = bench.Row(layer.label, pass_, batch, row["shape"], "GFLOP/s", flops(layer, batch, pass_), error,
                      times["ours"], times["stock"], contention, attempts)
    row.update(timed.as_dict(), status="ok", peak_gflops=peak)
    for side in ("ours", "stock"):
        row[f"{side}_pct_peak"] = 100 * row[f"{side}_rate"] / peak if peak else None
    if pass_ == "forward+backward":
        used = memory({"ours": ours, "stock": stock}, device)
        row.update(memory_ours_bytes=used["ours"], memory_stock_bytes=used["stock"],
                   memory_ratio=used["ours"] / used["stock"] if used["ours"] is not None and used["stock"]
                   else None)
    return row


def base_row(planned: Planned) -> dict:
    layer, batch = planned.layer, planned.batch
    shape = (f"{'x'.join(map(str, layer.input_shape(batch)[1:]))} -> "
             f"{'x'.join(map(str, layer.output_shape(batch)[1:]))}")
    return {"key": planned.key, "layer": layer.label, "layer_spec": layer.as_dict(),
            "networks": network_names(planned.uses), "uses": planned.uses, "batch": batch,
            "pass": planned.pass_, "shape": shape, "flops": flops(layer, batch, planned.pass_),
            "tensor_bytes": layer.tensor_bytes(batch)}


# report ----------------------------------------------------------------------------------------

def write_json_atomic(path: Path, document: dict) -> None:
    """A crash at any moment leaves the old file or the new one, never half of one."""
    write_atomically(path, lambda file: file.write((json.dumps(document, indent=1) + "\n").encode()))


def _timed_row(row: dict) -> bench.Row:
    return bench.Row(row["name"], row["mode"], row["batch"], row["shape"], row["unit"], row["work"],
                     row["max_error"], row["ours_rounds_s"], row["stock_rounds_s"], row["contention_cores"],
                     row["attempts"])


def _megabytes(value) -> str:
    return "-" if value is None else f"{value / 1e6:.3g} MB"


def _ratio_cell(row: dict) -> str:
    return bench.format_ratio(_timed_row(row).ratios)


def markdown_rows(rows: list) -> str:
    header = ("layer", "networks", "batch", "pass", "ours", "stock", "stock/ours", "GFLOP/s ours",
              "% peak ours", "mem ours/stock")
    lines = []
    for r in rows:
        if r["status"] != "ok":
            continue
        pct = "-" if r.get("ours_pct_peak") is None else f"{r['ours_pct_peak']:.1f}%"
        mem = "-"
        if r.get("memory_ratio") is not None:
            mem = (f"{r['memory_ratio']:.2f}x ({_megabytes(r['memory_ours_bytes'])} / "
                   f"{_megabytes(r['memory_stock_bytes'])})")
        elif r["pass"] == "forward+backward":
            mem = f"{_megabytes(r.get('memory_ours_bytes'))} / {_megabytes(r.get('memory_stock_bytes'))}"
        lines.append((r["layer"], ", ".join(r["networks"]), str(r["batch"]), r["pass"],
                      bench.format_time(r["ours_median_s"]), bench.format_time(r["stock_median_s"]),
                      _ratio_cell(r), f"{r['ours_rate']:.3g}", pct, mem))
    return bench._markdown(header, lines, "llrlrrrrrr")


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def summary(rows: list, max_gb: float) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    lines = []
    if ok:
        worst = min(ok, key=lambda r: r["stock_over_ours"])
        lines.append(f"- Worst stock/ours: {_ratio_cell(worst)}, {worst['layer']} batch {worst['batch']} "
                     f"{worst['pass']} ({', '.join(worst['networks'])}).")
        by_pass = {p: [r["stock_over_ours"] for r in ok if r["pass"] == p] for p in PASSES}
        lines.append(f"- Geometric mean of stock/ours over {len(ok)} rows: "
                     f"{geometric_mean(r['stock_over_ours'] for r in ok):.3g}x ("
                     + ", ".join(f"{p} {geometric_mean(v):.3g}x" for p, v in by_pass.items() if v) + ").")
        with_memory = [r for r in ok if r.get("memory_ratio") is not None]
        large = [r for r in with_memory if min(r["memory_ours_bytes"], r["memory_stock_bytes"]) >= MEMORY_FLOOR]
        if with_memory:
            most = max(large or with_memory, key=lambda r: r["memory_ratio"])
            among = (f"rows where both sides need at least {MEMORY_FLOOR / 1e6:g} MB" if large else
                     f"all rows, though none reaches {MEMORY_FLOOR / 1e6:g} MB on both sides: rough")
            lines.append(f"- Worst memory ratio (ours / stock, forward+backward peak, {among}): "
                         f"{most['memory_ratio']:.2f}x, {most['layer']} batch {most['batch']} "
                         f"({_megabytes(most['memory_ours_bytes'])} against {_megabytes(most['memory_stock_bytes'])}).")
        below = [r for r in ok if r["stock_over_ours"] < 1.0]
        lines.append(f"- Rows below 1.0x (stock faster): {len(below)} of {len(ok)}"
                     + (":" if below else "."))
        lines += [f"  - {r['layer']} batch {r['batch']} {r['pass']}: {_ratio_cell(r)}" for r in below]
        note = bench.unstable_note([_timed_row(r) for r in ok])
        if note:
            lines.append(f"- **{note}**")
    skipped = {(r["layer"], r["batch"]): r for r in rows if r["status"] == "skipped"}
    if skipped:
        lines.append(f"- Skipped, over the memory budget of {max_gb:g} GB (--max-gb): "
                     + "; ".join(f"{layer} batch {batch} ({r['tensor_bytes'] / 1e9:.1f} GB)"
                                 for (layer, batch), r in skipped.items()) + ".")
    failed = [r for r in rows if r["status"] in ("mismatch", "error")]
    if failed:
        lines.append(f"- **{len(failed)} rows not timed: ours differs from stock or raised**:")
        lines += [f"  - {r['layer']} batch {r['batch']} {r['pass']}: {r['status']}: {r['message']}" for r in failed]
    return "\n".join(lines)


LEGEND = (f"Ours and stock alternate in {bench.ROUNDS} rounds in one process (lenet_ext.bench.time_against). "
          "Times: medians over the rounds. stock/ours: the median of the rounds' ratios (above 1: ours "
          "faster), in brackets their quartiles; UNSTABLE as in the other benchmarks. GFLOP/s: 2 x the "
          "forward's multiply-adds per pass, three forwards' for forward+backward. % peak: of the "
          "benchmarks/peak_fma.c fp32 FMA peak above. mem: peak bytes of forward+backward beyond the "
          "inputs (CPU: rise of the resident set after malloc_trim; CUDA: max_memory_allocated), "
          "ours / stock.")


def peak_line(peak: dict) -> str:
    if peak.get("error"):
        return f"FMA peak: not measured ({peak['error']})."
    measured = ", ".join(f"{k} thread{'s' if int(k) > 1 else ''} {v:.1f}" for k, v in peak["gflops"].items())
    used = peak.get("for_threads")
    return (f"FMA peak (benchmarks/peak_fma.c, at the start): {measured} GFLOP/s; % peak uses "
            + (f"{used:.1f} GFLOP/s" if used else "none")
            + (" (estimated: 1-thread peak x threads)" if peak.get("estimated") else "") + ".")


def write_markdown(document: dict, path: Path) -> None:
    env, rows = document["environment"], document["rows"]
    text = (f"### {TITLE}\n\n{bench.describe(env)}\n\n`{env['command']}`\n\n{peak_line(document['peak_fma'])}\n\n"
            f"{markdown_rows(rows)}\n\n{summary(rows, document['max_gb'])}\n\n{LEGEND}\n")
    path.write_text(text)


def plot(rows: list, path: Path, title: str) -> bool:
    """stock/ours of forward+backward per layer, log y, a line at 1, one marker per batch size.
    False without matplotlib or without such rows."""
    rows = [r for r in rows if r["status"] == "ok" and r["pass"] == "forward+backward"]
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, LogLocator
    except ImportError:
        return False
    if not rows:
        return False
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    figure = Figure(figsize=(max(9.0, 0.32 * len(layers) + 2.0), 6.0))
    axes = figure.subplots()
    for batch, marker in zip(batches, "os^Dv<>ph*"):
        points = [(layers.index(r["layer"]), r["stock_over_ours"]) for r in rows if r["batch"] == batch]
        axes.plot(*zip(*points), marker=marker, linestyle="none", label=f"batch {batch}", alpha=0.8)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_yscale("log")
    axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    axes.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    axes.set_xticks(range(len(layers)), layers, rotation=90, fontsize=7)
    axes.set_ylabel("stock time / our time (above 1: ours faster)")
    axes.legend(fontsize=8)
    axes.set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return True


# command line ----------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(prog="benchmarks/bench_shapes.py", description=TITLE)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads for ours and stock alike (default: %(default)s)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", metavar="N",
                        help=f"(default: {' '.join(map(str, BATCH_SIZES))}; --quick: "
                             f"{' '.join(map(str, QUICK_BATCH_SIZES))}); large planes: batch 1 only")
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS), metavar="NET",
                        help=f"networks whose layers to sweep (default: all: {' '.join(NETWORKS)})")
    parser.add_argument("--passes", nargs="+", choices=PASSES, default=list(PASSES), metavar="PASS",
                        help=f"(default: all: {' '.join(PASSES)})")
    parser.add_argument("--min-run-time", type=float, metavar="SECONDS",
                        help=f"timed seconds per side of each row over all its rounds (default: 1; "
                             f"--quick: {QUICK_MIN_RUN_TIME})")
    parser.add_argument("--max-gb", type=float, default=MAX_GB, metavar="GB",
                        help="skip a (layer, batch) whose tensors would exceed this many GB "
                             "(default: %(default)s)")
    planes = parser.add_mutually_exclusive_group()
    planes.add_argument("--only-large-planes", action="store_true",
                        help="only the 1x3x512x512 and 1x3x1024x1024 3x3 convolutions")
    planes.add_argument("--no-large-planes", action="store_true", help="leave the large planes out")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke test: {len(QUICK_LAYERS)} small layers, batches "
                             f"{' '.join(map(str, QUICK_BATCH_SIZES))}, {QUICK_MIN_RUN_TIME} s a side, "
                             "no large planes")
    parser.add_argument("--no-peak", action="store_true",
                        help="do not compile and run benchmarks/peak_fma.c (no %% peak)")
    parser.add_argument("--list", action="store_true",
                        help="print the rows the options plan (and which the budget skips), run nothing")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--resume-from", type=Path, metavar="JSON",
                        help="a shapes.json of an unfinished run: its timed rows are kept, not rerun "
                             "(same machine, threads, device and torch required)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="report folder (default: the --resume-from file's folder, else "
                             "benchmarks/results/<date>-<machine>)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes = args.batch_sizes or list(QUICK_BATCH_SIZES)
        args.min_run_time = QUICK_MIN_RUN_TIME if args.min_run_time is None else args.min_run_time
    args.batch_sizes = args.batch_sizes or list(BATCH_SIZES)
    args.min_run_time = 1.0 if args.min_run_time is None else args.min_run_time
    return args


def load_resumed(path: Path, env: dict) -> dict:
    """key -> row of the timed rows of an earlier run's shapes.json (skipped and failed rows are tried
    again), after checking it
    was measured on this machine, thread count, device and torch."""
    document = json.loads(path.read_text())
    earlier = document["environment"]
    differs = [k for k in ("cpu", "threads", "device", "torch", "gpu") if earlier.get(k) != env.get(k)]
    if differs:
        raise SystemExit(f"--resume-from {path}: measured with other "
                         + ", ".join(f"{k} ({earlier.get(k)} here {env.get(k)})" for k in differs)
                         + "; its ratios do not mix with this run's")
    return {r["key"]: r for r in document["rows"] if r["status"] == "ok"}


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    bench.prepare(args.device, args.threads)
    env = bench.environment(args.device, args.threads, shlex.join(["python", "benchmarks/bench_shapes.py", *argv]))
    env["cpu_flags"] = bench.cpu_flags()

    networks = [] if args.only_large_planes else args.networks
    only = QUICK_LAYERS if args.quick else None
    if only:
        networks = list(dict.fromkeys([*networks, *(n for n, _ in only)]))
    rows_planned = plan(networks, args.batch_sizes, args.passes,
                        large_planes=not (args.no_large_planes or args.quick) or args.only_large_planes,
                        only=only)
    if args.list:
        for planned in rows_planned:
            over = over_budget(planned.layer, planned.batch, args.max_gb)
            print(f"{planned.key}  ({', '.join(network_names(planned.uses))})"
                  + (f"  skipped: {planned.layer.tensor_bytes(planned.batch) / 1e9:.1f} GB" if over else ""))
        work = sum(flops(p.layer, p.batch, p.pass_) for p in rows_planned
                   if not over_budget(p.layer, p.batch, args.max_gb))
        print(f"{len(rows_planned)} rows; one call of every row timed: {work / 1e12:.2f} TFLOP a side")
        return 0

    peak = {"gflops": {}, "error": "--no-peak" if args.no_peak else None}
    if args.device == "cuda":
        peak["error"] = "a CPU figure; % peak is not given on CUDA"
    elif not args.no_peak:
        progress(f"bench_shapes: compiling and running {PEAK_SOURCE.name} for the FMA peak")
        peak = bench.fma_peak(PEAK_SOURCE)
    peak["for_threads"], peak["estimated"] = (None, False) if peak["error"] else \
        bench.peak_for_threads(peak["gflops"], args.threads)
    peak["gflops"] = {str(k): v for k, v in peak["gflops"].items()}

    resumed = load_resumed(args.resume_from, env) if args.resume_from else {}
    out = args.out or (args.resume_from.parent if args.resume_from
                       else CHECKOUT / "benchmarks" / "results" / f"{env['date'][:10]}-{bench.machine_name(env)}")
    out.mkdir(parents=True, exist_ok=True)

    document = {"title": TITLE, "environment": env, "options": {k: (str(v) if isinstance(v, Path) else v)
                                                                 for k, v in vars(args).items()},
                "peak_fma": peak, "max_gb": args.max_gb, "memory_method": bench.peak_bytes.__doc__.strip(),
                "resumed_from": str(args.resume_from) if args.resume_from else None,
                "complete": False, "rows": []}
    planned_keys = {p.key for p in rows_planned}
    # rows of the earlier run outside this plan stay in the report too: nothing finished is lost
    document["rows"] = [r for k, r in resumed.items() if k not in planned_keys]
    json_path = out / "shapes.json"
    progress(f"{TITLE}\n{bench.describe(env)}\n{peak_line(peak)}\n{len(rows_planned)} rows"
             + (f", {sum(p.key in resumed for p in rows_planned)} of them from {args.resume_from}" if resumed else ""))
    failed = 0
    try:
        for i, planned in enumerate(rows_planned, start=1):
            where = f"[{i}/{len(rows_planned)}] {planned.layer.label} ({', '.join(network_names(planned.uses))}) " \
                    f"batch {planned.batch} {planned.pass_}"
            if planned.key in resumed:
                document["rows"].append(resumed[planned.key])
                progress(f"{where}: done in {args.resume_from}")
                continue
            if over_budget(planned.layer, planned.batch, args.max_gb):
                row = {**base_row(planned), "status": "skipped",
                       "message": f"tensors {planned.layer.tensor_bytes(planned.batch) / 1e9:.1f} GB > --max-gb "
                                  f"{args.max_gb:g}"}
                progress(f"{where}: skipped, {row['message']}")
            else:
                started = time.perf_counter()
                try:
                    row = run_row(planned, args.device, args.min_run_time, peak["for_threads"])
                except Exception as error:  # an op that raises: reported, the sweep goes on
                    row = {**base_row(planned), "status": "error", "message": f"{type(error).__name__}: {error}"}
                if row["status"] == "ok":
                    mem = "" if row.get("memory_ratio") is None else f"  mem ours/stock {row['memory_ratio']:.2f}x"
                    progress(f"{where}: ours {bench.format_time(row['ours_median_s'])}  stock "
                             f"{bench.format_time(row['stock_median_s'])}  stock/ours {_ratio_cell(row)}  "
                             f"{row['ours_rate']:.3g} GFLOP/s{mem}  ({time.perf_counter() - started:.1f} s)")
                else:
                    failed += 1
                    progress(f"{where}: {row['status'].upper()}: {row['message']}")
            document["rows"].append(row)
            write_json_atomic(json_path, document)
        document["complete"] = True
        write_json_atomic(json_path, document)
    finally:  # an interrupted run still gets the table of what it finished
        write_markdown(document, out / "shapes.md")
        paths = [json_path, out / "shapes.md"]
        if plot(document["rows"], out / "shapes.png", f"conv2d and linear, forward+backward: stock / ours\n"
                                                       f"{bench.describe(env)}"):
            paths.append(out / "shapes.png")
        else:
            progress("no plot (matplotlib is not installed, or no forward+backward row)")
    print(f"{markdown_rows(document['rows'])}\n\n{summary(document['rows'], args.max_gb)}\n")
    print(f"wrote {', '.join(map(str, paths))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
