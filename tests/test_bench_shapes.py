"""benchmarks/bench_shapes.py: the layer tables are the real networks (parameter counts and
multiply-adds as published), shared shapes are timed once, a (layer, batch) over the memory budget
is skipped and reported, the FLOP counts, a --quick run end to end, and a crash mid-sweep loses no
finished row and --resume-from finishes only the rest."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lenet_ext
from lenet_ext import bench

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_shapes", REPO / "benchmarks" / "bench_shapes.py")
shapes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shapes)


def _convs(network):
    return [(name, layer) for name, layer in shapes.NETWORKS[network]() if layer.kind == "conv2d"]


def _linears(network):
    return [(name, layer) for name, layer in shapes.NETWORKS[network]() if layer.kind == "linear"]


def _parameters(network):
    """Every weight and bias, and for the ResNets the batch norm after each conv (weight and bias)."""
    layers = [layer for _, layer in shapes.NETWORKS[network]()]
    batch_norm = sum(2 * l.out_channels for l in layers if l.kind == "conv2d") if "resnet" in network else 0
    return sum(l.parameters for l in layers) + batch_norm


# The published figures: torchvision's model docs (parameters, and "GFLOPS", which count
# multiply-adds of the conv and linear layers at 224x224), pytorch/examples' MNIST net and the README's
# LeNet (61,706); ResNet-20's "0.27M" of He et al. 2016, table 6.
@pytest.mark.parametrize("network, parameters, gmacs", [
    ("resnet18", 11_689_512, 1.814),
    ("resnet50", 25_557_032, 4.089),
    ("vgg16", 138_357_544, 15.470),
    ("cifar-resnet20", 269_722, 0.0406),
    ("mnist-net", 1_199_882, None),
    ("lenet", 61_706, None),
])
def test_the_tables_have_the_published_parameters_and_multiply_adds(network, parameters, gmacs):
    assert _parameters(network) == parameters
    if gmacs is not None:
        macs = sum(layer.macs(1) for _, layer in shapes.NETWORKS[network]())
        assert macs / 1e9 == pytest.approx(gmacs, abs=0.0005 if gmacs > 1 else 0.00005)


def test_resnet18_has_20_convs_with_3_downsamples_one_fc_and_12_distinct_shapes():
    convs = _convs("resnet18")
    assert len(convs) == 20 and len(_linears("resnet18")) == 1
    assert [name for name, _ in convs if "downsample" in name] == \
        ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    assert len(set(layer for _, layer in convs)) == 11
    assert len(shapes.distinct_layers({"resnet18": shapes.resnet18()})) == 12
    assert dict(convs)["layer4.0.downsample.0"] == shapes.conv(256, 512, 14, 1, stride=2)
    assert dict(convs)["conv1"].out_size == 112 and dict(convs)["layer4.1.conv2"].out_size == 7


def test_resnet50_collapses_to_each_stage_bottlenecks_distinct_shapes():
    convs = _convs("resnet50")
    assert len(convs) == 53 and sum("downsample" in name for name, _ in convs) == 4
    distinct = shapes.distinct_layers({"resnet50": shapes.resnet50()})
    assert len(distinct) == 24  # the stem, 4 shapes in stage 1, 6 in each of stages 2-4, the fc
    # stage 3: 1x1 reduce (from stage 2, and within), 3x3 stride 2 and 1, 1x1 expand, downsample
    stage3 = {layer: uses for layer, uses in distinct.items() if any("layer3." in u for u in uses)}
    assert set(stage3) == {shapes.conv(512, 256, 28, 1), shapes.conv(1024, 256, 14, 1),
                           shapes.conv(256, 256, 28, 3, 2, 1), shapes.conv(256, 256, 14, 3, 1, 1),
                           shapes.conv(256, 1024, 14, 1), shapes.conv(512, 1024, 28, 1, 2)}
    assert len(stage3[shapes.conv(1024, 256, 14, 1)]) == 5  # layer3.1-5.conv1
    # stage 1's expand and downsample are one shape (1x1 64->256 on 56x56, stride 1)
    assert distinct[shapes.conv(64, 256, 56, 1)] == ["resnet50:layer1.0.conv3", "resnet50:layer1.0.downsample.0",
                                                     "resnet50:layer1.1.conv3", "resnet50:layer1.2.conv3"]


def test_small_networks_match_their_definitions():
    assert [layer for _, layer in shapes.mnist_net()] == [
        shapes.conv(1, 32, 28, 3, bias=True), shapes.conv(32, 64, 26, 3, bias=True),
        shapes.linear(64 * 12 * 12, 128), shapes.linear(128, 10)]
    # LeNet: our model's parameters, and bench.LENET_OPS's shapes
    ours = [tuple(p.shape) for name, p in lenet_ext.models.LeNet().named_parameters() if name.endswith("weight")]
    assert [layer.weight_shape for _, layer in shapes.lenet()] == ours
    for name, layer in shapes.lenet():
        _, input_shape, weight_shape = bench.LENET_OPS[name]
        assert (layer.input_shape(1)[1:], layer.weight_shape) == (input_shape, weight_shape)
    cifar = _convs("cifar-resnet20")
    assert len(cifar) == 19 and {layer.out_size for _, layer in cifar} == {32, 16, 8}
    assert {layer.out_channels for _, layer in cifar} == {16, 32, 64}
    assert [l for _, l in shapes.vgg16()][-3] == shapes.linear(25088, 4096)


def test_shared_shapes_are_planned_once_with_every_network_that_uses_them():
    rows = shapes.plan(["resnet18", "resnet50"], [1, 8], shapes.PASSES, large_planes=False)
    keys = [r.key for r in rows]
    assert len(keys) == len(set(keys))
    distinct = shapes.distinct_layers({"resnet18": shapes.resnet18(), "resnet50": shapes.resnet50()})
    assert len(rows) == len(distinct) * 2 * len(shapes.PASSES)
    assert len(distinct) == 12 + 24 - 5  # both: the stem and the stride-1 3x3 of each stage
    conv3x3 = next(r for r in rows if r.layer == shapes.conv(64, 64, 56, 3, 1, 1))
    assert conv3x3.uses == [f"resnet18:layer1.{b}.conv{c}" for b in (0, 1) for c in (1, 2)] + \
        [f"resnet50:layer1.{b}.conv2" for b in (0, 1, 2)]
    assert shapes.network_names(conv3x3.uses) == ["resnet18", "resnet50"]
    # the large planes: batch 1 only, whatever the batch sizes
    planes = shapes.plan([], [8, 64], ["forward"], large_planes=True)
    assert [(r.layer.input_shape(r.batch), r.layer.weight_shape) for r in planes] == [
        ((1, 3, 512, 512), (16, 3, 3, 3)), ((1, 3, 1024, 1024), (16, 3, 3, 3))]


def test_a_layer_over_the_memory_budget_is_skipped():
    first = shapes.conv(64, 64, 224, 3, 1, 1, bias=True)  # VGG-16's second conv
    assert shapes.over_budget(first, 64, shapes.MAX_GB) and not shapes.over_budget(first, 32, shapes.MAX_GB)
    lenet_fc1 = shapes.linear(400, 120)
    # input, weight, bias, grad_output, then each side's output and three gradients: float32
    assert lenet_fc1.tensor_bytes(2) == 4 * (800 + 48120 + 240 + 2 * (240 + 800 + 48120))


@pytest.mark.parametrize("network, name, batch, pass_, expected", [
    ("lenet", "conv1", 2, "forward", 2 * 2 * 6 * 28 * 28 * 1 * 5 * 5),
    ("lenet", "conv2", 3, "forward+backward", 3 * (2 * 3 * 16 * 10 * 10 * 6 * 5 * 5)),
    ("lenet", "fc1", 64, "grad-weight", 2 * 64 * 400 * 120),
    ("resnet18", "conv1", 1, "forward", 2 * 64 * 112 * 112 * 3 * 7 * 7),  # 236 MFLOP
    ("resnet50", "layer2.0.conv2", 8, "grad-input", 2 * 8 * 128 * 28 * 28 * 128 * 3 * 3),
    ("mnist-net", "fc1", 16, "forward", 2 * 16 * 9216 * 128),
])
def test_flop_counts(network, name, batch, pass_, expected):
    assert shapes.flops(dict(shapes.NETWORKS[network]())[name], batch, pass_) == expected


def test_flop_counts_agree_with_the_op_benchmark():
    for name in ("conv1", "conv2", "fc1", "fc3"):
        layer = dict(shapes.lenet())[name]
        assert shapes.flops(layer, 4, "forward") == bench.op_pair(name, 4, "cpu", "forward").work


# running it ------------------------------------------------------------------------------------

@pytest.fixture
def fast(monkeypatch):
    """In-process runs with a fake clock: stock 2 ms, ours 1 ms a call in each of 8 rounds; counts
    the rows timed. Restores torch's thread count."""
    timed = []

    def time_against(fns, reference, seconds):
        timed.append(fns)
        return {"ours": [1e-3] * 8, "stock": [2e-3] * 8}, 0.0, 1
    monkeypatch.setattr(bench, "time_against", time_against)
    threads = torch.get_num_threads()
    yield timed
    torch.set_num_threads(threads)


def _main(*args):
    return shapes.main(["--threads", "1", "--no-peak", *map(str, args)])


def test_a_quick_run_writes_json_markdown_and_plot(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/bench_shapes.py", "--quick", "--threads", "1",
                             "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "shapes.json").read_text())
    assert {"environment", "peak_fma", "options", "max_gb", "memory_method", "rows", "complete"} <= set(report)
    assert report["complete"] and report["environment"]["threads"] == 1
    assert report["environment"]["torch"] == torch.__version__ and report["environment"]["cpu_flags"] is not None
    peak = report["peak_fma"]  # peak_fma.c ran, or says why it could not
    assert peak["error"] or (peak["gflops"]["1"] > 0 and peak["for_threads"] == peak["gflops"]["1"])
    rows = report["rows"]
    assert len(rows) == len(shapes.QUICK_LAYERS) * len(shapes.QUICK_BATCH_SIZES) * len(shapes.PASSES)
    assert all(r["status"] == "ok" and r["stock_over_ours"] > 0 for r in rows)
    for r in rows:
        assert {"layer", "networks", "uses", "batch", "pass", "ours_median_s", "stock_median_s",
                "stock_over_ours_quartiles", "ours_rate", "ours_pct_peak", "max_error", "flops"} <= set(r)
        assert r["ours_rate"] == pytest.approx(r["flops"] / r["ours_median_s"] / 1e9)
        if r["pass"] == "forward+backward":
            assert r["memory_ours_bytes"] is not None and r["memory_stock_bytes"] is not None
    table = (tmp_path / "shapes.md").read_text()
    assert "| layer " in table and "stock/ours" in table and "mem ours/stock" in table
    assert "Geometric mean of stock/ours over 24 rows" in table and "Rows below 1.0x" in table
    assert "| conv 6->16 5x5 @14 +bias | lenet " in table
    assert "[24/24]" in result.stderr  # progress
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "shapes.png").read_bytes().startswith(b"\x89PNG")


def test_rows_over_the_budget_are_skipped_and_reported(tmp_path, fast):
    assert _main("--quick", "--passes", "forward", "--max-gb", 0.0002, "--out", tmp_path) == 0
    rows = json.loads((tmp_path / "shapes.json").read_text())["rows"]
    skipped = {(r["layer"], r["batch"]) for r in rows if r["status"] == "skipped"}
    # 0.2 MB: lenet conv2 fits at batch 1 (~0.03 MB), cifar's conv (~0.2 MB a image) and fc1 do not
    assert skipped == {("conv 16->32 3x3/2 p1 @32", 1), ("conv 16->32 3x3/2 p1 @32", 3),
                       ("linear 400->120 +bias", 1), ("linear 400->120 +bias", 3)}
    assert len(fast) == len(rows) - len(skipped)
    assert "Skipped, over the memory budget of 0.0002 GB" in (tmp_path / "shapes.md").read_text()


def test_a_crash_keeps_finished_rows_and_resume_runs_only_the_rest(tmp_path, fast, monkeypatch):
    timed = bench.time_against  # the fixture's fake clock

    def crash_on_the_sixth(fns, reference, seconds):
        if len(fast) == 5:
            raise KeyboardInterrupt  # as Ctrl-C or a kill between two rows
        return timed(fns, reference, seconds)
    monkeypatch.setattr(bench, "time_against", crash_on_the_sixth)
    with pytest.raises(KeyboardInterrupt):
        _main("--quick", "--out", tmp_path)
    first = json.loads((tmp_path / "shapes.json").read_text())
    assert not first["complete"] and [r["status"] for r in first["rows"]] == ["ok"] * 5
    assert "| conv 16->32" in (tmp_path / "shapes.md").read_text()  # the table of what finished

    monkeypatch.setattr(bench, "time_against", timed)
    fast.clear()
    assert _main("--quick", "--resume-from", tmp_path / "shapes.json") == 0  # --out: the same folder
    final = json.loads((tmp_path / "shapes.json").read_text())
    planned = shapes.plan(list(shapes.NETWORKS), shapes.QUICK_BATCH_SIZES, shapes.PASSES, False,
                          only=shapes.QUICK_LAYERS)
    assert final["complete"] and [r["key"] for r in final["rows"]] == [p.key for p in planned]
    assert len(fast) == len(planned) - 5  # the five finished rows were not timed again
    assert final["rows"][:5] == first["rows"]


def test_resume_refuses_a_run_with_other_threads(tmp_path, fast):
    assert _main("--quick", "--passes", "forward", "--batch-sizes", 1, "--out", tmp_path) == 0
    with pytest.raises(SystemExit, match="threads"):
        shapes.main(["--threads", "2", "--no-peak", "--quick", "--resume-from", str(tmp_path / "shapes.json")])


def test_a_wrong_op_is_reported_not_timed_and_fails_the_run(tmp_path, fast, monkeypatch):
    wrong = lambda input, weight, bias=None: torch.nn.functional.linear(input, weight, bias) * 1.001  # noqa: E731
    monkeypatch.setattr(lenet_ext.functional, "linear", wrong)
    assert _main("--quick", "--passes", "forward", "--batch-sizes", 1, "--out", tmp_path) == 1
    rows = {r["layer"]: r for r in json.loads((tmp_path / "shapes.json").read_text())["rows"]}
    assert rows["linear 400->120 +bias"]["status"] == "mismatch"
    assert all(r["status"] == "ok" for name, r in rows.items() if name.startswith("conv"))
    assert len(fast) == 2


def test_a_difference_within_float64_arbitration_is_accepted(monkeypatch):
    # with no tolerance at all assert_close fails on rounding; ours is as close to float64 as stock
    monkeypatch.setattr(shapes, "sum_tolerance", lambda length: dict(rtol=0.0, atol=0.0))
    layer = dict(shapes.lenet())["conv2"]
    tensors = shapes.make_tensors(layer, 4, "cpu")
    ours_fn, labels = shapes.pass_function(shapes._ops(layer)[0], tensors, "forward+backward")
    stock_fn, _ = shapes.pass_function(shapes._ops(layer)[1], tensors, "forward+backward")
    ours, stock = ours_fn(), stock_fn()
    assert any(not torch.equal(a, b) for a, b in zip(ours, stock))
    assert shapes.check(layer, 4, "forward+backward", ours, stock, labels, tensors) == ""
    off = (ours[0] * 1.001, *ours[1:])
    assert shapes.check(layer, 4, "forward+backward", off, stock, labels, tensors).startswith("output")


class _BackwardCalls(TorchDispatchMode):
    """Records the backward ops (and their output_mask) and the matmuls that run below autograd."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        self.calls.append((name, args[-1]) if name.endswith("_backward.default") else name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("pass_, mask", [("grad-input", [True, False, False]),
                                         ("grad-weight", [False, True, False])])
def test_a_gradient_pass_runs_each_sides_backward_for_that_gradient_only(pass_, mask):
    expected = {  # (layer, side) -> what autograd runs for the one gradient
        ("conv2", 0): [("lenet_ext.conv2d_backward.default", mask)],
        ("conv2", 1): [("aten.convolution_backward.default", mask)],
        ("fc2", 0): [("lenet_ext.linear_backward.default", mask)],
        ("fc2", 1): ["aten.t.default", "aten.mm.default"] + ["aten.t.default"] * 2 * mask[1]}
    for (name, side), calls in expected.items():
        layer = dict(shapes.lenet())[name]
        tensors = shapes.make_tensors(layer, 2, "cpu")
        fn, labels = shapes.pass_function(shapes._ops(layer)[side], tensors, pass_)
        with _BackwardCalls() as log:
            (gradient,) = fn()
        assert log.calls == calls, (name, side)
        assert gradient.shape == tensors["input" if mask[0] else "weight"].shape
        assert labels == ("grad input" if mask[0] else "grad weight",)


def test_peak_bytes_sees_an_allocation():
    small = bench.peak_bytes(lambda: None, "cpu")
    if small is None:
        pytest.skip("no /proc/self/clear_refs or malloc_trim here")
    assert bench.peak_bytes(lambda: torch.ones(10_000_000), "cpu") >= 0.95 * 40e6
    assert small < 1e6


def test_peak_helpers():
    assert bench.peak_for_threads({"1": 100.0, "2": 190.0}, 2) == (190.0, False)
    assert bench.peak_for_threads({1: 100.0, 2: 190.0}, 4) == (400.0, True)
    assert bench.peak_for_threads({}, 2) == (None, False)
    assert bench.machine_name({"device": "cpu", "cpu": "Intel(R) Xeon(R) Processor (family 6, model 207)"}) == \
        "intel-xeon-6-207"
    assert bench.machine_name({"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"
    assert math.isclose(shapes.geometric_mean([1.0, 4.0]), 2.0)
