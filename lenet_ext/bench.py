"""Measures lenet_ext against stock PyTorch, one way for every caller: benchmarks/bench_ops.py,
benchmarks/bench_lenet.py and the self-check of `python -m lenet_ext` all build their comparisons here.

A Pair is one comparison: two zero-argument callables, ours and stock, computing the same thing on
the same random inputs. It is checked equal before it is timed, then timed in rounds, each one block
of ours and one of stock; a row reports the median of the rounds' ratios and their quartiles, and is
flagged unstable where a busy machine spoilt them (see round_ratios). A report is a markdown table, a
JSON file with the machine, and a PNG plot.
"""
import argparse
import copy
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

import lenet_ext

# float32: the largest |ours - stock| of each output, relative to the largest |stock|. Relative to
# the whole tensor, not per element, so a sum that cancels to near zero does not fail a correct op.
TOLERANCE = 1e-4
# The dtypes a benchmark runs in (--dtype). In bfloat16 and float16 both sides are checked against
# stock in float32 on the same values, since they round at different points (stock after every op,
# our fused network only its results) and may be far apart while both are right: ours passes when
# its error is within LOW_PRECISION_TOLERANCE of the largest value (a few units of 2^-8 or 2^-11)
# or no more than REFERENCE_SLACK times stock's. (tests/test_mixed_precision.py holds each op to
# float64.)
DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOW_PRECISION_TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 4e-3}
REFERENCE_SLACK = 1.25

WARMUP_CALLS = 3  # cuDNN/cuBLAS algorithm selection and allocator growth happen before timing
# Ours and stock are timed in rounds, one block of each a round, so that another job's burst spoils
# a round's ratio, not a row. Eight: one spoilt round, either way, leaves the median and quartiles of
# the round ratios alone, and an even count lets the ABBA order put each side first equally often.
ROUNDS = 8
# A row is stable when the middle half of its round ratios (the quartiles) lies within 10% of the
# median: a kernel change worth reporting moves a ratio by 10% or more, which a wider spread could
# not resolve.
MAX_ROUND_SPREAD = 0.10
# A steady load defeats that test: with another job on the cores our threads use, stock's threads wait
# for a preempted one at every parallel region, and a batch-1 op ran 100-1000x slower in every round
# alike, the rounds agreeing on a meaningless ratio. So a row is also unstable when other processes
# used more than a fifth of a core beyond the CPUs our threads leave free: an idle machine's daemons
# use hundredths, a compile or a test beside us whole cores.
MAX_CONTENTION = 0.2
NETWORK_DRAWS = 8  # draws of a network's inputs and weights before a mismatch counts (measure)
MEASURE_ATTEMPTS = 3  # an unstable row is timed afresh, at most twice more

# LeNet's layers at their shapes in the network: name -> (functional op, input shape without the
# batch dimension, weight shape or None). relu is timed at its largest use, after conv1.
LENET_OPS = {
    "conv1": ("conv2d", (1, 32, 32), (6, 1, 5, 5)),
    "pool1": ("max_pool2d", (6, 28, 28), None),
    "conv2": ("conv2d", (6, 14, 14), (16, 6, 5, 5)),
    "pool2": ("max_pool2d", (16, 10, 10), None),
    "fc1": ("linear", (400,), (120, 400)),
    "fc2": ("linear", (120,), (84, 120)),
    "fc3": ("linear", (84,), (10, 84)),
    "relu": ("relu", (6, 28, 28), None),
}
OP_KWARGS = {"max_pool2d": {"kernel_size": 2}}
OP_MODES = ("forward", "forward+backward")
LENET_MODES = ("inference", "training step")
# row name -> our network in lenet_ext.models, timed against StockLeNet: per-op LeNet, and
# FusedLeNet (one op for the whole network)
LENET_NETWORKS = {"lenet": "LeNet", "fused": "FusedLeNet"}
TRAIN_LR = 1e-3  # small, so thousands of timed steps on one batch keep the weights in range
UNIT_SCALE = {"GFLOP/s": 1e9, "GB/s": 1e9, "img/s": 1.0}


@dataclasses.dataclass
class Pair:
    name: str  # "conv1", "lenet"
    mode: str  # one of OP_MODES or LENET_MODES
    batch: int
    shape: str  # per sample, "1x32x32 -> 6x28x28"
    ours: Callable[[], Any]  # returns a tensor or a tuple of tensors
    stock: Callable[[], Any]
    labels: tuple  # names of the returned tensors, for messages
    work: float  # FLOPs, bytes or images per call
    unit: str  # a key of UNIT_SCALE
    # the same case on fresh random inputs, where a correct kernel may differ by chance (see measure)
    redraw: Optional[Callable[[], "Pair"]] = None
    dtype: torch.dtype = torch.float32
    reference: Optional[Callable[[], Any]] = None  # in low precision: stock in float32, same values


@dataclasses.dataclass
class Row:
    name: str
    mode: str
    batch: int
    shape: str
    unit: str
    work: float
    max_error: float
    ours_rounds: list  # seconds per call in each round
    stock_rounds: list
    contention: float  # cores other processes took from our threads while timed (see MAX_CONTENTION)
    attempts: int  # 1, or more when the row was unstable and timed afresh

    @property
    def ratios(self) -> "RoundRatios":
        return round_ratios(self.ours_rounds, self.stock_rounds, self.contention)

    @property
    def ratio(self) -> float:
        """stock time / our time: above 1, ours is faster."""
        return self.ratios.median

    @property
    def ours(self) -> float:
        return statistics.median(self.ours_rounds)

    @property
    def stock(self) -> float:
        return statistics.median(self.stock_rounds)

    def rate(self, seconds: float) -> float:
        return self.work / seconds / UNIT_SCALE[self.unit]

    def as_dict(self) -> dict:
        fields = {k: getattr(self, k) for k in ("name", "mode", "batch", "shape", "unit", "work", "max_error")}
        for side in ("ours", "stock"):
            seconds = getattr(self, side)
            fields.update({f"{side}_median_s": seconds, f"{side}_rate": self.rate(seconds),
                           f"{side}_rounds_s": getattr(self, f"{side}_rounds")})
        ratios = self.ratios
        return {**fields, "stock_over_ours": ratios.median,
                "stock_over_ours_quartiles": [ratios.low, ratios.high], "contention_cores": self.contention,
                "stable": ratios.stable, "attempts": self.attempts}


@dataclasses.dataclass(frozen=True)
class RoundRatios:
    median: float  # of the rounds' stock/ours
    low: float  # first and third quartiles
    high: float
    stable: bool


def round_ratios(ours: Sequence[float], stock: Sequence[float], contention: float = 0.0) -> RoundRatios:
    """stock/ours in each round (times of the same round, so a slow spell hits both), summarised: the
    median and the quartiles; stable when the quartiles lie within MAX_ROUND_SPREAD of the median and
    the contention (cores, see time_rounds) is at most MAX_CONTENTION."""
    low, median, high = statistics.quantiles([s / o for o, s in zip(ours, stock)], n=4, method="inclusive")
    stable = high - low <= MAX_ROUND_SPREAD * median and contention <= MAX_CONTENTION
    return RoundRatios(median, low, high, stable)


class MismatchError(RuntimeError):
    pass


def _shape(size) -> str:
    return "x".join(map(str, size))


# cases ---------------------------------------------------------------------------------------

def op_pair(name: str, batch: int, device, mode: str, all_grads: bool = False,
            dtype=torch.float32) -> Pair:
    """One LeNet layer, ours against torch.nn.functional, on fresh random inputs.

    forward+backward returns the output and the gradients autograd would ask for in training:
    conv1's input is the image, so it gets none unless all_grads (the self-check asks for all)."""
    op, input_shape, weight_shape = LENET_OPS[name]
    tensors = [torch.randn(batch, *input_shape, device=device, dtype=dtype)]
    if weight_shape:
        tensors += [torch.randn(weight_shape, device=device, dtype=dtype),
                    torch.randn(weight_shape[0], device=device, dtype=dtype)]
    kwargs = OP_KWARGS.get(op, {})
    ours = partial(getattr(lenet_ext.functional, op), **kwargs)
    stock = partial(getattr(torch.nn.functional, op), **kwargs)
    output_size = stock(*tensors).shape
    shape = _shape(input_shape) if op == "relu" else f"{_shape(input_shape)} -> {_shape(output_size[1:])}"

    if op in ("conv2d", "linear"):
        unit, forward_work = "GFLOP/s", 2 * math.prod(output_size) * math.prod(weight_shape[1:])
    else:  # bytes at the function's interface: input read, output written
        unit, forward_work = "GB/s", tensors[0].element_size() * (tensors[0].numel() + math.prod(output_size))

    def pair(ours_fn, stock_fn, labels, work, reference):
        return Pair(name, mode, batch, shape, ours_fn, stock_fn, labels, work, unit, dtype=dtype,
                    reference=reference if dtype != torch.float32 else None)

    if mode == "forward":
        wide = [t.float() for t in tensors]
        return pair(lambda: ours(*tensors), lambda: stock(*tensors), ("output",), forward_work,
                    lambda: stock(*wide))

    argument_names = ("input", "weight", "bias")[:len(tensors)]
    wanted = [i for i in range(len(tensors)) if all_grads or not (name == "conv1" and i == 0)]
    grad_output = torch.randn(output_size, device=device, dtype=dtype)

    def forward_backward(fn, tensors, grad_output):
        tensors = [t.detach().clone().requires_grad_(i in wanted) for i, t in enumerate(tensors)]
        differentiated = [tensors[i] for i in wanted]

        def run():
            output = fn(*tensors)
            return (output, *torch.autograd.grad(output, differentiated, grad_output))
        return run

    if unit == "GFLOP/s":  # each of grad_input and grad_weight costs one forward; grad_bias ~nothing
        work = forward_work * (1 + sum(1 for i in wanted if i < 2))
    else:  # backward reads grad_output and writes grad_input: the forward's traffic again
        work = 2 * forward_work
    labels = ("output", *(f"grad {argument_names[i]}" for i in wanted))
    return pair(forward_backward(ours, tensors, grad_output),
                forward_backward(stock, tensors, grad_output), labels, work,
                forward_backward(stock, [t.float() for t in tensors], grad_output.float()))


def lenet_twins(device, network: str = "LeNet"):
    """One of our networks (lenet_ext.models.<network>) and the stock tutorial network with the
    same weights."""
    from lenet_ext import models

    ours = getattr(models, network)()
    stock = models.StockLeNet()
    stock.load_state_dict(ours.state_dict())
    return ours.to(device), stock.to(device)


def training_step(net, images, targets) -> Callable[[], tuple]:
    """One training step of `net` on one batch, as a callable: zero_grad, forward, cross-entropy,
    backward, SGD step. Returns the loss and every parameter's gradient."""
    parameters = list(net.parameters())
    optimizer = torch.optim.SGD(parameters, lr=TRAIN_LR)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(images), targets)
        loss.backward()
        optimizer.step()
        return (loss.detach(), *(p.grad for p in parameters))
    return step


def lenet_pair(batch: int, device, mode: str, name: str = "lenet", dtype=torch.float32) -> Pair:
    """The whole LeNet on random 32x32 images: inference (no_grad forward) or one training step
    (forward, cross-entropy, backward, SGD step), which returns the loss and every gradient.
    `name` (a key of LENET_NETWORKS) picks our network; stock is always StockLeNet."""
    ours_net, stock_net = (net.to(dtype) for net in lenet_twins(device, LENET_NETWORKS[name]))
    images = torch.randn(batch, 1, 32, 32, device=device, dtype=dtype)
    targets = torch.randint(10, (batch,), device=device)

    make, labels = network_step(mode, ours_net, images, targets)
    reference = None
    if dtype != torch.float32:
        wide = copy.deepcopy(stock_net).float()
        reference = network_step(mode, wide, images.float(), targets)[0](wide)
    return Pair(name, mode, batch, "1x32x32 -> 10", make(ours_net), make(stock_net), labels,
                batch, "img/s", redraw=lambda: lenet_pair(batch, device, mode, name, dtype), dtype=dtype,
                reference=reference)


def network_step(mode: str, net, images, targets):
    """(make, labels): make(a network) is the callable a whole-network row times, inference (the
    no_grad forward, returning the logits) or one training step (training_step, on `targets`);
    labels name what it returns, after `net`'s parameters."""
    if mode == "inference":
        def make(net):
            def infer():
                with torch.no_grad():
                    return net(images)
            return infer
        return make, ("logits",)
    return (lambda net: training_step(net, images, targets),
            ("loss", *(f"grad {n}" for n, _ in net.named_parameters())))


def op_pairs(batch_sizes: Iterable[int], device, dtype=torch.float32) -> Iterable[Pair]:
    for name in LENET_OPS:
        for mode in OP_MODES:
            for batch in batch_sizes:
                yield op_pair(name, batch, device, mode, dtype=dtype)


def lenet_pairs(batch_sizes: Iterable[int], device, dtype=torch.float32) -> Iterable[Pair]:
    for name in LENET_NETWORKS:
        for mode in LENET_MODES:
            for batch in batch_sizes:
                yield lenet_pair(batch, device, mode, name, dtype)


# checking and timing -------------------------------------------------------------------------

def max_error(pair: Pair) -> tuple:
    """(largest relative error over the returned tensors, the label of that tensor, the bound it
    must meet): ours against stock, or in low precision ours against the float32 reference (see
    DTYPES)."""
    if pair.reference is None:
        return (*relative_error(pair.ours(), pair.stock(), pair.labels), TOLERANCE)
    reference = pair.reference()
    stock_error, _ = relative_error(pair.stock(), reference, pair.labels)
    bound = max(LOW_PRECISION_TOLERANCE[pair.dtype], REFERENCE_SLACK * stock_error)
    return (*relative_error(pair.ours(), reference, pair.labels), bound)


def relative_error(ours, stock, labels) -> tuple:
    """(the largest of max |ours - stock| / max |stock| over the tensors, that tensor's label)."""
    ours, stock = (t if isinstance(t, tuple) else (t,) for t in (ours, stock))
    if len(ours) != len(stock):
        return math.inf, f"{len(ours)} results instead of {len(stock)}"
    worst = (0.0, labels[0])
    for label, a, b in zip(labels, ours, stock):
        if a.shape != b.shape:
            return math.inf, f"{label} shape {tuple(a.shape)} instead of {tuple(b.shape)}"
        a, b = a.detach().float(), b.detach().float()
        error = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
        if not error <= worst[0]:  # NaN counts as the worst
            worst = (error, label)
    return worst


def _seconds_per_call(fn: Callable, seconds: float) -> float:
    """Calls fn for `seconds`, so a busy machine slows the calls, not the whole run."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()  # a CUDA call returns before its kernels finish
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def _others_cpu_seconds() -> Optional[float]:
    """CPU time other processes have used on the CPUs this one may run on; None but on Linux."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        with open("/proc/stat") as stat:  # user nice system idle iowait irq softirq steal, in ticks
            ticks = sum(sum(map(int, fields[1:4] + fields[6:9])) for fields in map(str.split, stat)
                        if fields[0] in cpus)
    except (AttributeError, OSError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK") - time.process_time()


def time_rounds(fns: dict, seconds: float, rounds: int = ROUNDS) -> tuple:
    """(name -> seconds per call of fns[name] in each round, contention): every callable runs for
    `seconds` in all; contention is the cores' worth of CPU other processes used meanwhile beyond the
    CPUs our threads leave free (0 where unknown).

    A plain clock rather than torch.utils.benchmark, whose blocked_autorange estimates a block size
    on each of its calls, a cost over many short blocks (the clock read here adds ~0.1 µs a call to
    both sides alike). The order alternates (AB BA AB ...), so a drift in machine speed hits every
    callable alike."""
    for fn in fns.values():
        for _ in range(WARMUP_CALLS):
            fn()
    times = {name: [] for name in fns}
    others, start = _others_cpu_seconds(), time.perf_counter()
    for round_ in range(rounds):
        for name in (fns if round_ % 2 == 0 else reversed(fns)):
            times[name].append(_seconds_per_call(fns[name], seconds / rounds))
    if others is None:
        return times, 0.0
    free_cpus = max(0, len(os.sched_getaffinity(0)) - torch.get_num_threads())
    return times, max(0.0, (_others_cpu_seconds() - others) / (time.perf_counter() - start) - free_cpus)


def time_against(fns: dict, reference: str, seconds: float) -> tuple:
    """(times, contention, attempts): time_rounds, again (up to MEASURE_ATTEMPTS in all) while the
    ratio of the reference's time to any other callable's stays unstable; keeps the last attempt."""
    for attempt in range(1, MEASURE_ATTEMPTS + 1):
        times, contention = time_rounds(fns, seconds)
        if all(round_ratios(times[name], times[reference], contention).stable
               for name in fns if name != reference):
            break
    return times, contention, attempt


def measure(pair: Pair, min_run_time: float) -> Row:
    """Checks the pair equal, then times ours and stock for min_run_time each, in ROUNDS rounds, and
    again (up to MEASURE_ATTEMPTS in all) while the row is unstable; keeps the last attempt."""
    error, label, bound = max_error(pair)
    # A whole network's gradients go through max-pool's argmax, which jumps where two cells of a
    # window are within rounding of each other: our convolution and stock's round differently, so
    # in some draws one window picks the other cell and moves its gradient, ~3e-3 of a conv
    # weight's gradient. The MNIST net's training step flipped in 2-5 draws of 30 at batch 64 and
    # in 14 of 30 at batch 256; so up to NETWORK_DRAWS draws, each checked as strictly: a kernel
    # bug fails them all, flips alone all of them ~1 run in 400 at batch 256.
    for _ in range(NETWORK_DRAWS - 1):
        if error <= bound or pair.redraw is None:
            break
        pair = pair.redraw()
        error, label, bound = max_error(pair)
    if not error <= bound:
        raise MismatchError(f"{pair.name} {pair.mode} batch {pair.batch}: {label} differs from torch "
                            f"(max relative error {error:.1e} > {bound:.0e}); not timing it")
    times, contention, attempts = time_against({"ours": pair.ours, "stock": pair.stock}, "stock",
                                               min_run_time)
    return Row(pair.name, pair.mode, pair.batch, pair.shape, pair.unit, pair.work, error,
               times["ours"], times["stock"], contention, attempts)


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _check_group(name: str, make_pairs: Callable[[], list]) -> Check:
    try:
        pairs = make_pairs()
        worst = 0.0
        for pair in pairs:
            error, label, bound = max_error(pair)
            if not error <= bound:
                return Check(name, False, f"{pair.name} {pair.mode}: {label} differs, "
                                          f"max error {error:.1e} > {bound:.0e}")
            worst = max(worst, error)
    except Exception as error:  # an op that raises has failed its check; say how
        return Check(name, False, f"raised {type(error).__name__}: {error}")
    cases = ", ".join(dict.fromkeys(p.name if p.name != "lenet" else p.mode for p in pairs))
    return Check(name, True, f"{cases}: max error {worst:.1e}")


def self_check(device, batch: int = 3) -> list:
    """Every op, forward and all gradients, at each of its LeNet shapes, then the whole LeNet."""
    checks = []
    for op in ("conv2d", "max_pool2d", "linear", "relu"):
        names = [name for name, case in LENET_OPS.items() if case[0] == op]
        checks.append(_check_group(op, lambda names=names: [
            op_pair(name, batch, device, "forward+backward", all_grads=True) for name in names]))
    checks.append(_check_group("lenet", lambda: [lenet_pair(batch, device, m) for m in LENET_MODES]))
    return checks


# device and environment ----------------------------------------------------------------------

def prepare(device: str, threads: int) -> None:
    """Same thread count for everything; on CUDA, full float32 (no TF32) on both sides."""
    torch.set_num_threads(threads)
    if device == "cuda":
        if not lenet_ext.cuda_available():
            raise SystemExit("--device cuda: this build of lenet_ext has no CUDA kernels or no GPU is present")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def _cpu_model() -> str:
    """The CPU's name, with its x86 family and model: a VM may name only the brand ("AMD EPYC"),
    and two generations under one name differ twofold in vector throughput (family 25 is Zen 3/4
    with 256-bit FMA units, family 26 Zen 5 with 512-bit ones)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if not key.strip():
                    break  # the first processor's block ends
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def _git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def environment(device: str, threads: int, command: Optional[str] = None) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "device": device, "cpu": _cpu_model(), "logical_cpus": os.cpu_count(),
        "threads": threads, "torch": torch.__version__, "lenet_ext": lenet_ext.__version__,
        "commit": _git_commit(), "python": platform.python_version(), "platform": platform.platform(),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return env


def describe(env: dict) -> str:
    """One line: date, machine, threads, torch (and the GPU and its TF32 settings), and a warning
    when other processes kept the CPUs busy, which makes CPU timings unreliable."""
    parts = [env["date"][:10], f"{env['cpu']} ({env['logical_cpus']} logical CPUs)",
             f"{env['threads']} thread{'s' if env['threads'] != 1 else ''}", f"torch {env['torch']}"]
    if env["device"] == "cuda":
        tf32 = "on" if env["tf32_matmul"] or env["tf32_cudnn"] else "off"
        parts += [f"{env['gpu']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}, TF32 {tf32})"]
    if env.get("dtype", "float32") != "float32":
        parts.append(env["dtype"])
    peak = env.get("fma_peak") or {}
    if peak.get("gflops"):
        parts.append("FMA peak " + ", ".join(f"{v:.0f}" for v in peak["gflops"].values())
                     + " GFLOP/s (1, 2 threads)" + (
                         " · bf16 dot " + ", ".join(f"{v:.0f}" for v in peak["bf16_dot"].values())
                         if peak.get("bf16_dot") else ""))
    return " · ".join(parts)


# tables, JSON, plot --------------------------------------------------------------------------

def format_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" if value >= 1000 else f"{value:.3g} {unit}"


def format_ratio(ratios: RoundRatios) -> str:
    """The median ratio, its quartiles in brackets, and UNSTABLE where round_ratios found it so."""
    number = lambda x: f"{x:.3g}" if x < 1000 else f"{x:,.0f}"  # noqa: E731  1,470 rather than 1.47e+03
    text = f"{number(ratios.median)}x [{number(ratios.low)}-{number(ratios.high)}]"
    return text if ratios.stable else f"{text} UNSTABLE"


def unstable_note(rows) -> str:
    """A warning when any row stayed unstable, saying whether the machine was busy, else ""."""
    unstable = [r for r in rows if not r.ratios.stable]
    if not unstable:
        return ""
    if any(r.contention > MAX_CONTENTION for r in unstable):
        why = (f"the machine was busy: other processes took more than {MAX_CONTENTION:g} of a core "
               f"our threads needed; rerun on a quiet machine")
    else:
        why = (f"their rounds' ratios lay more than {MAX_ROUND_SPREAD:.0%} of the median apart on a "
               f"quiet machine: the op's time itself varies")
    return (f"{len(unstable)} of {len(rows)} rows stayed UNSTABLE over {MEASURE_ATTEMPTS} attempts "
            f"({why}). Do not trust their ratios.")


def _markdown(header, lines, align: str) -> str:
    """An aligned markdown table; align has one letter per column, l or r."""
    columns = list(zip(header, *lines))
    widths = [max(len(cell) for cell in column) for column in columns]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w)
                                 for c, w, a in zip(cells, widths, align)) + " |"
    rule = "|" + "|".join(f":{'-' * w} " if a == "l" else f" {'-' * w}:" for w, a in zip(widths, align)) + "|"
    return "\n".join([line(header), rule, *map(line, lines)])


def markdown_table(rows) -> str:
    header = ("op", "shape", "mode", "batch", "ours", "stock", "ours rate", "stock rate", "stock/ours")
    lines = [(r.name, r.shape, r.mode, str(r.batch), format_time(r.ours), format_time(r.stock),
              format_rate(r.rate(r.ours), r.unit), format_rate(r.rate(r.stock), r.unit),
              format_ratio(r.ratios)) for r in rows]
    return _markdown(header, lines, "lllrrrrrr")


def ratio_table(rows) -> str:
    """One line per op and mode, one column per batch size: ratio [quartiles] (our time vs stock time)."""
    batches = sorted({r.batch for r in rows})
    cells = {}
    for r in rows:
        cells.setdefault((r.name, r.mode), {})[r.batch] = (
            f"{format_ratio(r.ratios)} ({format_time(r.ours)} vs {format_time(r.stock)})")
    header = ("op", "mode", *(f"batch {b}: stock/ours (ours vs stock)" for b in batches))
    return _markdown(header, [(name, mode, *(by_batch.get(b, "") for b in batches))
                              for (name, mode), by_batch in cells.items()], "ll" + "r" * len(batches))


def before_after_table(before: list, after: list) -> str:
    """Two runs' JSON rows (write_report's) side by side: one line per op and mode, one column per
    batch size, each cell stock/ours before -> after, UNSTABLE where a run flagged it."""
    ratios = {}
    for run, rows in enumerate((before, after)):
        for r in rows:
            ratios.setdefault((r["name"], r["mode"]), {}).setdefault(r["batch"], [None, None])[run] = r
    batches = sorted({b for by_batch in ratios.values() for b in by_batch})
    fmt = lambda r: "-" if r is None else (  # noqa: E731
        f"{r['stock_over_ours']:.3g}x" + ("" if r.get("stable", True) else " UNSTABLE"))
    lines = [(name, mode, *(" -> ".join(map(fmt, by_batch[b])) if b in by_batch else ""
                            for b in batches))
             for (name, mode), by_batch in ratios.items()]
    return _markdown(("op", "mode", *(f"batch {b}: before -> after" for b in batches)), lines,
                     "ll" + "r" * len(batches))


LEGEND = (f"Ours and stock are timed in {ROUNDS} alternating rounds. Times: medians over the rounds. "
          "stock/ours: the median over the rounds of stock's time / ours (above 1: ours is faster), in "
          f"brackets the rounds' quartiles; UNSTABLE where they lie more than {MAX_ROUND_SPREAD:.0%} of the "
          f"median apart, or other processes took more than {MAX_CONTENTION:g} of a core from our threads, "
          f"in each of {MEASURE_ATTEMPTS} attempts (a busy machine). Rates: GFLOP/s for conv and linear "
          "(backward counts one forward per input/weight gradient), GB/s for pool and relu (the tensors "
          "at the function's interface, read once and written once), images/s for LeNet.")


def plot_ratios(rows, path: Path, title: str) -> bool:
    """stock/ours as bars, one panel per mode, one bar per op and batch size. False without matplotlib."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, LogLocator
    except ImportError:
        return False
    modes = list(dict.fromkeys(r.mode for r in rows))
    names = list(dict.fromkeys(r.name for r in rows))
    batches = sorted({r.batch for r in rows})
    width = 0.8 / len(batches)
    figure = Figure(figsize=(max(6.0, len(modes) * (0.7 * len(names) + 1.0)), 4.5))
    panels = figure.subplots(1, len(modes), sharey=True, squeeze=False)[0]
    for axes, mode in zip(panels, modes):
        for i, batch in enumerate(batches):
            bars = [(names.index(r.name) + (i - (len(batches) - 1) / 2) * width, r.ratio)
                    for r in rows if r.mode == mode and r.batch == batch]
            axes.bar(*zip(*bars), width, label=f"batch {batch}")
        axes.axhline(1.0, color="black", linewidth=0.8)
        axes.set_xticks(range(len(names)), names)
        axes.set_title(mode, fontsize=10)
    axes = panels[0]
    axes.set_yscale("log")
    axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    axes.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    axes.set_ylabel("stock time / our time (above 1: ours faster)")
    panels[-1].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return True


def write_report(rows, env: dict, out_dir: Path, stem: str, title: str) -> list:
    """<stem>.md, <stem>.json and <stem>.png in out_dir; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    note = unstable_note(rows)
    markdown = (f"### {title}\n\n{describe(env)}\n\n`{env['command']}`\n\n{markdown_table(rows)}\n\n"
                f"{LEGEND}\n" + (f"\n**{note}**\n" if note else ""))
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.json"]
    paths[0].write_text(markdown)
    paths[1].write_text(json.dumps({"title": title, "environment": env,
                                    "rows": [r.as_dict() for r in rows]}, indent=2) + "\n")
    png = out_dir / f"{stem}.png"
    if plot_ratios(rows, png, f"{title}\n{describe(env)}"):
        paths.append(png)
    else:
        print("matplotlib is not installed: no plot (pip install 'lenet_ext[bench]')")
    return paths


# the benchmark scripts' command line ---------------------------------------------------------

def run_cli(argv, *, prog: str, stem: str, title: str, pairs, default_out: Path) -> int:
    """The command line of benchmarks/bench_*.py: time `pairs(batch_sizes, device)`, print the
    table and write the report."""
    parser = argparse.ArgumentParser(prog=prog, description=title)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256], metavar="N")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads for ours and stock alike (default: %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="ours and stock both in this dtype (default: %(default)s)")
    parser.add_argument("--min-run-time", type=float, default=1.0, metavar="SECONDS",
                        help="timed seconds per side of each comparison, over all its rounds "
                             "(default: %(default)s)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="time only these rows (conv1, pool1, fc2, relu, lenet ...)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help=f"report directory (default: {default_out}/<date>-<device>)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    prepare(args.device, args.threads)
    env = environment(args.device, args.threads, shlex.join(["python", prog, *argv]))
    env["dtype"] = args.dtype
    env["cpu_flags"] = cpu_flags()
    peak_source = Path(__file__).resolve().parents[1] / "benchmarks" / "peak_fma.c"
    if args.device == "cpu" and peak_source.exists():  # the machine's ceiling, in the same run
        env["fma_peak"] = fma_peak(peak_source)
    if args.dtype != "float32":
        title, stem = f"{title}, {args.dtype}", f"{stem}-{args.dtype}"
    print(f"{title}\n{describe(env)}")
    rows = []
    for pair in pairs(args.batch_sizes, args.device, DTYPES[args.dtype]):
        if args.only and pair.name not in args.only:
            continue
        rows.append(measure(pair, args.min_run_time))
        r = rows[-1]
        print(f"  {r.name:<6} {r.mode:<16} batch {r.batch:<4} ours {format_time(r.ours):>9}"
              f"  stock {format_time(r.stock):>9}  stock/ours {format_ratio(r.ratios)}"
              + (f" ({r.attempts} attempts)" if r.attempts > 1 else ""), flush=True)
    if not rows:
        parser.error(f"--only {' '.join(args.only)}: no row of this benchmark has that name")
    out = args.out or default_out / f"{env['date'][:10]}-{args.device}"
    paths = write_report(rows, env, out, stem, title)
    note = unstable_note(rows)
    print(f"\n{markdown_table(rows)}\n" + (f"\n{note}\n" if note else ""))
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


# the machine's FMA peak, CPU flags, peak memory, report folder names ---------------------------
# (run_cli records the flags and peaks of each run; bench_shapes.py and bench_gemm.py use them too)

_FMA_PEAK_LINE = r"^(\d+) threads?: ([0-9.]+) GFLOP/s"
_BF16_DOT_LINE = r"^bf16 dot \(vdpbf16ps\), (\d+) threads?: ([0-9.]+) GFLOP/s"


def _compile_peak(source: Path, folder: str, timeout: float) -> tuple:
    """(binary, compile command) of benchmarks/peak_fma.c built in `folder` as its header says
    ($CC or cc, -O2 -march=native -fopenmp); raises OSError or subprocess.SubprocessError."""
    command = [os.environ.get("CC", "cc"), "-O2", "-march=native", "-fopenmp", str(source)]
    binary = str(Path(folder) / "peak_fma")
    subprocess.run(command + ["-o", binary], check=True, capture_output=True, text=True, timeout=timeout)
    return binary, command


def _error_line(error: Exception) -> str:
    detail = (getattr(error, "stderr", None) or str(error)).strip().splitlines()
    return f"{type(error).__name__}: {detail[-1] if detail else error}"


def fma_peak(source: Path, timeout: float = 120.0) -> dict:
    """The machine's fp32 FMA peak from benchmarks/peak_fma.c, compiled into a temporary folder and
    run once: {"gflops": {threads: GFLOP/s}, "command": the compile command, "output": its output,
    "error": None, or why there is no number (no compiler, no AVX-512, ...); with AVX-512 BF16 also
    "bf16_dot": {threads: GFLOP/s} of vdpbf16ps}. peak_fma.c measures 1 and 2 threads."""
    import re
    import tempfile

    result = {"gflops": {}, "bf16_dot": {}, "command": "", "output": "", "error": None}
    with tempfile.TemporaryDirectory() as folder:
        try:
            binary, command = _compile_peak(source, folder, timeout)
            result["command"] = shlex.join(command + ["-o", "peak_fma"])
            run = subprocess.run([binary], check=True, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as error:
            result["error"] = _error_line(error)
            return result
    result["output"] = run.stdout.strip()
    for line in run.stdout.splitlines():
        for key, pattern in (("gflops", _FMA_PEAK_LINE), ("bf16_dot", _BF16_DOT_LINE)):
            match = re.match(pattern, line.strip())
            if match:
                result[key][int(match[1])] = float(match[2])
    if not result["gflops"]:
        result["error"] = f"no GFLOP/s line in its output: {run.stdout.strip()!r}"
    return result


def fma_probe(source: Path, timeout: float = 120.0):
    """benchmarks/peak_fma.c compiled once (as fma_peak does): a callable threads -> the fp32 FMA
    peak in GFLOP/s measured now for that thread count alone (best of 5, ~0.2 s). A benchmark runs
    it just before and after each timing: a shared VM's speed moves by 20% from minute to minute,
    so a peak taken once at the start misstates every later row's % of peak. Raises RuntimeError
    where the probe cannot be compiled or run (no compiler, no AVX-512)."""
    import atexit
    import re
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="peak_fma")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    try:
        binary, _ = _compile_peak(source, folder, timeout)
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"peak_fma.c did not compile: {_error_line(error)}") from error

    def measure(threads: int) -> float:
        run = subprocess.run([binary, str(int(threads))], check=True, capture_output=True, text=True,
                             timeout=timeout)
        match = re.match(_FMA_PEAK_LINE, run.stdout.strip())
        if not match:
            raise RuntimeError(f"peak_fma {threads}: no GFLOP/s line in {run.stdout.strip()!r}")
        return float(match[2])

    return measure


def peak_for_threads(gflops: dict, threads: int) -> tuple:
    """(GFLOP/s peak for `threads` threads, estimated): the measured figure where fma_peak measured
    that count, else the one-thread figure times `threads` (estimated=True: one FMA unit a
    thread assumed); (None, False) without a one-thread figure. Keys may be ints or JSON's strings."""
    gflops = {int(k): v for k, v in gflops.items()}
    if threads in gflops:
        return gflops[threads], False
    if 1 in gflops:
        return gflops[1] * threads, True
    return None, False


def cpu_flags() -> list:
    """The first CPU's vector-ISA flags from /proc/cpuinfo (sse4*, avx*, fma, f16c, amx*), sorted;
    [] where there is no /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.partition(":")[2].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in flags if f.startswith(("sse4", "avx", "amx")) or f in ("fma", "f16c"))


def machine_name(env: dict) -> str:
    """A folder-name slug for environment()'s machine, as in benchmarks/results/<date>-<machine>:
    the GPU's name on CUDA (as benchmarks/gpu_check.sh names it), else the CPU's vendor and brand
    with its x86 family and model: "Intel(R) Xeon(R) Processor (family 6, model 207)" ->
    "intel-xeon-6-207"."""
    import re

    if env.get("device") == "cuda" and env.get("gpu"):
        return re.sub(r"[^a-z0-9]+", "-", env["gpu"].lower()).strip("-")
    cpu = env.get("cpu") or platform.machine()
    family = re.search(r"\(family (\d+), model (\d+)\)", cpu)
    words = re.sub(r"\((r|tm)\)", " ", cpu.split(" (family")[0], flags=re.I).lower().split()
    slug = "-".join(re.sub(r"[^a-z0-9]+", "-", w).strip("-") for w in words[:2]) or "cpu"
    return slug + (f"-{family[1]}-{family[2]}" if family else "")


def _rss_bytes() -> dict:
    """VmRSS and VmHWM (peak resident set since the last reset) of this process, in bytes."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def peak_bytes(fn: Callable[[], Any], device) -> Optional[int]:
    """Bytes fn() needed at its peak beyond what was allocated before the call, its results
    included; None where this cannot be measured.

    CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, less memory_allocated
    before the call (the caching allocator's own count: every tensor, no cache).
    CPU: the rise of the peak resident set (VmHWM, reset by writing 5 to /proc/self/clear_refs,
    Linux >= 4.0) over the resident set before the call, after malloc_trim(0) has handed every
    free malloc page (all arenas) back to the kernel, so that whatever fn allocates, reused or new,
    is faulted in afresh and counted. It counts every allocation alike: tensors from torch's CPU
    allocator and scratch buffers that kernels take with malloc/new/std::vector (our im2col
    columns, oneDNN's scratchpads), which the profiler's memory events (torch's allocator only)
    would miss. Page-granular (4 KB), and it includes what Python allocates meanwhile and where
    the heap's layout puts a block, so figures under ~1 MB move by a few pages from run to run."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del result
        return peak
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
        with open("/proc/self/clear_refs", "w") as clear_refs:
            trim(0)
            clear_refs.write("5")  # VmHWM := VmRSS
        before = _rss_bytes()["VmRSS"]
    except (AttributeError, OSError, KeyError):
        return None  # not glibc, not Linux, or clear_refs not writable
    result = fn()
    peak = _rss_bytes()["VmHWM"] - before
    del result
    return max(0, peak)
