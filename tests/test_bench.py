"""The measuring machinery: the self-check catches wrong ops, the work counts are right, and the
main job and both benchmark scripts run end to end (batch 1, a tiny run time) and write their reports."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as TF

import lenet_ext
from lenet_ext import bench
from lenet_ext.__main__ import main

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = ["--batch-sizes", "1", "--min-run-time", "0.002"]


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


# Each replaces one of our ops with a subtly or plainly wrong one.
WRONG_OPS = {
    "relu forward": ("relu", lambda input, inplace=False: input.abs()),
    "relu gradient": ("relu", lambda input, inplace=False: torch.relu(input).detach() + (input - input.detach())),
    "linear off by 0.1%": ("linear", lambda input, weight, bias=None: TF.linear(input, weight, bias) * 1.001),
    "max_pool2d averages": ("max_pool2d", lambda input, kernel_size, **kwargs: TF.avg_pool2d(input, kernel_size)),
    "conv2d gradients doubled": ("conv2d", lambda *args, **kwargs: _doubled_gradient(TF.conv2d(*args, **kwargs))),
}


def _doubled_gradient(output):
    return output.detach() + 2 * (output - output.detach())


def test_self_check_passes_every_op(device):
    checks = bench.self_check(device)
    assert [c.name for c in checks] == ["conv2d", "max_pool2d", "linear", "relu", "lenet"]
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


@pytest.mark.parametrize("wrong", WRONG_OPS, ids=list(WRONG_OPS))
def test_self_check_fails_a_wrong_op_and_the_main_job_exits_nonzero(wrong, device, monkeypatch, capsys):
    op, wrong_op = WRONG_OPS[wrong]
    monkeypatch.setattr(lenet_ext.functional, op, wrong_op)
    assert main(["--device", device, "--check-only"]) == 1
    lines = {line.split()[1]: line.split()[0] for line in capsys.readouterr().out.splitlines()
             if line.strip().startswith(("PASS", "FAIL"))}
    assert lines[op] == "FAIL"
    assert all(lines[other] == "PASS" for other in ("conv2d", "max_pool2d", "linear", "relu") if other != op)


def test_self_check_reports_an_op_that_raises(device, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel")
    monkeypatch.setattr(lenet_ext.functional, "conv2d", broken)
    conv2d = bench.self_check(device)[0]
    assert not conv2d.ok and "RuntimeError: no kernel" in conv2d.detail


def test_a_pair_that_differs_is_not_timed(monkeypatch):
    monkeypatch.setattr(lenet_ext.functional, "relu", WRONG_OPS["relu forward"][1])
    with pytest.raises(bench.MismatchError, match="relu forward batch 2: output differs"):
        bench.measure(bench.op_pair("relu", 2, "cpu", "forward"), threads=1, min_run_time=0.002)


def _pair_with_redraws(errors):
    """A relu pair whose output differs from stock's by errors[0], redrawn as one that differs by
    errors[1], and so on (0: they agree)."""
    pair = bench.op_pair("relu", 2, "cpu", "forward")
    ours = pair.ours
    pair.ours = lambda: ours() * (1 + errors[0])
    if len(errors) > 1:
        pair.redraw = lambda: _pair_with_redraws(errors[1:])
    return pair


def test_a_network_pair_that_differs_once_is_timed_on_a_fresh_draw():
    # the first draw's argmax may flip on a near-tie (see bench.measure); the redraw agrees
    row = bench.measure(_pair_with_redraws([3e-3, 0.0]), threads=1, min_run_time=0.002)
    assert row.max_error <= bench.TOLERANCE


def test_a_network_pair_that_differs_twice_is_not_timed():
    with pytest.raises(bench.MismatchError, match="relu forward batch 2: output differs"):
        bench.measure(_pair_with_redraws([3e-3, 3e-3]), threads=1, min_run_time=0.002)


@pytest.mark.parametrize("name, mode, batch, work", [
    ("conv1", "forward", 2, 2 * 2 * 6 * 28 * 28 * 1 * 5 * 5),
    ("conv1", "forward+backward", 2, 2 * (2 * 2 * 6 * 28 * 28 * 1 * 5 * 5)),  # no grad for the image
    ("conv2", "forward+backward", 3, 3 * (2 * 3 * 16 * 10 * 10 * 6 * 5 * 5)),
    ("fc1", "forward", 64, 2 * 64 * 400 * 120),
    ("fc3", "forward+backward", 5, 3 * (2 * 5 * 84 * 10)),
    ("pool1", "forward", 4, 4 * (4 * 6 * 28 * 28 + 4 * 6 * 14 * 14)),
    ("relu", "forward+backward", 4, 2 * 4 * (2 * 4 * 6 * 28 * 28)),
])
def test_work_counts_flops_and_bytes(name, mode, batch, work):
    assert bench.op_pair(name, batch, "cpu", mode).work == work


def test_the_main_job_prints_checks_and_a_ratio_for_every_op():
    result = _run("-m", "lenet_ext", "--device", "cpu", "--threads", "1", *TINY_RUN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("PASS") == 5
    for name in [*bench.LENET_OPS, "lenet"]:
        assert f"| {name} " in result.stdout


@pytest.mark.parametrize("script, stem, names, modes", [
    ("bench_ops.py", "ops", list(bench.LENET_OPS), bench.OP_MODES),
    ("bench_lenet.py", "lenet", list(bench.LENET_NETWORKS), bench.LENET_MODES),
])
def test_a_benchmark_script_writes_its_table_json_and_plot(script, stem, names, modes, tmp_path):
    result = _run(f"benchmarks/{script}", "--threads", "1", "--out", str(tmp_path), *TINY_RUN)
    assert result.returncode == 0, result.stderr
    plot = [f"{stem}.png"] if importlib.util.find_spec("matplotlib") else []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{stem}.md", f"{stem}.json", *plot])
    report = json.loads((tmp_path / f"{stem}.json").read_text())
    assert report["environment"]["threads"] == 1
    assert report["environment"]["torch"] == torch.__version__
    assert report["environment"]["command"].startswith(f"python benchmarks/{script} --threads 1")
    assert [(r["name"], r["mode"]) for r in report["rows"]] == [(n, m) for n in names for m in modes]
    assert all(r["stock_over_ours"] > 0 and r["max_error"] <= bench.TOLERANCE for r in report["rows"])
    table = (tmp_path / f"{stem}.md").read_text()
    assert all(f"| {n} " in table for n in names)
    if plot:
        assert (tmp_path / plot[0]).read_bytes().startswith(b"\x89PNG")


def test_the_plot_is_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    rows = [bench.measure(bench.op_pair("relu", 1, "cpu", "forward"), threads=1, min_run_time=0.002)]
    paths = bench.write_report(rows, bench.environment("cpu", 1, "test"), tmp_path, "ops", "title")
    assert [p.name for p in paths] == ["ops.md", "ops.json"]
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_compare_puts_two_runs_side_by_side(tmp_path):
    def run(rows):
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps({"rows": [dict(name=n, mode=m, batch=b, stock_over_ours=r)
                                             for n, m, b, r in rows]}))
        return str(path)
    before = run([("fc1", "forward", 1, 0.5), ("fc1", "forward", 64, 0.25)])
    after = run([("fc1", "forward", 1, 2.0), ("fc1", "forward", 64, 1.5), ("fused", "forward", 1, 7.0)])
    result = subprocess.run([sys.executable, "benchmarks/compare.py", before, after], capture_output=True,
                            text=True, check=True, cwd=Path(__file__).parents[1])
    lines = result.stdout.splitlines()
    assert "batch 64: before -> after" in lines[0]
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[2:]]
    assert cells == [["fc1", "forward", "0.5x -> 2x", "0.25x -> 1.5x"], ["fused", "forward", "- -> 7x", ""]]


def test_floor_times_a_network_that_computes_nothing_next_to_stock_and_fused():
    result = _run("benchmarks/floor.py", *TINY_RUN, "--threads", "1")
    assert result.returncode == 0, result.stderr
    row = [cell.strip() for cell in result.stdout.splitlines()[-1].split("|")[1:-1]]
    assert row[0] == "1" and len(row) == 6 and all(cell.endswith("x") for cell in row[4:])
    # and the zero-work network really has LeNet's parameters and gradients of their shapes
    spec = importlib.util.spec_from_file_location("floor", REPO / "benchmarks" / "floor.py")
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    net = floor.ZeroWorkLeNet()
    torch.nn.functional.cross_entropy(net(torch.randn(2, 1, 32, 32)), torch.tensor([1, 2])).backward()
    assert [(n, p.grad.shape) for n, p in net.named_parameters()] == \
        [(n, p.shape) for n, p in lenet_ext.models.LeNet().named_parameters()]
