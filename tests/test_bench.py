"""The measuring machinery: the self-check catches wrong ops, the work counts are right, a ratio
whose rounds disagree or that was timed beside another job is flagged and timed again, and the main
job and both benchmark scripts run end to end (batch 1, a tiny run time) and write their reports."""
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
import time
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
        bench.measure(bench.op_pair("relu", 2, "cpu", "forward"), min_run_time=0.002)


def _pair_with_redraws(errors):
    """A relu pair whose output differs from stock's by errors[0], redrawn as one that differs by
    errors[1], and so on (0: they agree)."""
    pair = bench.op_pair("relu", 2, "cpu", "forward")
    ours = pair.ours
    pair.ours = lambda: ours() * (1 + errors[0])
    if len(errors) > 1:
        pair.redraw = lambda: _pair_with_redraws(errors[1:])
    return pair


def test_a_network_pair_that_differs_on_all_but_its_last_draw_is_timed_on_that_draw():
    # a draw's argmax may flip on a near-tie (see bench.measure); the last draw agrees
    errors = [3e-3] * (bench.NETWORK_DRAWS - 1) + [0.0]
    row = bench.measure(_pair_with_redraws(errors), min_run_time=0.002)
    assert row.max_error <= bench.TOLERANCE


def test_a_network_pair_that_differs_on_every_draw_is_not_timed():
    errors = [3e-3] * bench.NETWORK_DRAWS + [0.0]  # the draw after the last would agree
    with pytest.raises(bench.MismatchError, match="relu forward batch 2: output differs"):
        bench.measure(_pair_with_redraws(errors), min_run_time=0.002)


# Seconds per call in each of 8 rounds. Steady: ours 1 ms, stock 2 ms, a few percent of noise.
# Noisy, as on a busy machine: other jobs slowed some blocks of either side 3-20x.
STEADY = ([1.00e-3, 1.02e-3, 0.99e-3, 1.01e-3, 1.00e-3, 0.98e-3, 1.01e-3, 1.00e-3],
          [2.01e-3, 1.99e-3, 2.03e-3, 2.00e-3, 1.97e-3, 2.02e-3, 2.00e-3, 1.98e-3])
NOISY = ([1.00e-3, 9.50e-3, 1.02e-3, 3.10e-3, 0.99e-3, 1.01e-3, 20.0e-3, 1.00e-3],
         [2.01e-3, 1.99e-3, 41.0e-3, 2.00e-3, 1.97e-3, 6.30e-3, 2.00e-3, 1.98e-3])


def test_rounds_that_agree_give_the_median_ratio_and_are_stable():
    ratios = bench.round_ratios(*STEADY)
    assert ratios.median == pytest.approx(2.0, rel=0.02) and ratios.low <= ratios.median <= ratios.high
    assert ratios.stable


def test_rounds_that_disagree_are_unstable():
    assert not bench.round_ratios(*NOISY).stable


def test_one_spoilt_round_leaves_the_ratio_stable():
    ours, stock = (list(times) for times in STEADY)
    ours[3] *= 20
    ratios = bench.round_ratios(ours, stock)
    assert ratios.stable and ratios.median == pytest.approx(2.0, rel=0.02)


def test_rounds_timed_beside_another_job_are_unstable_though_they_agree():
    assert bench.round_ratios(*STEADY, contention=bench.MAX_CONTENTION).stable
    assert not bench.round_ratios(*STEADY, contention=1.0).stable


def _row(name, rounds, contention=0.0):
    return bench.Row(name, "forward", 1, "6x28x28", "GB/s", 1e6, 0.0, *rounds, contention, attempts=1)


@pytest.mark.parametrize("table", [bench.markdown_table, bench.ratio_table])
def test_the_tables_mark_an_unstable_row_and_only_it(table):
    lines = table([_row("fc1", STEADY), _row("relu", NOISY), _row("fc2", STEADY, contention=1.0)]).splitlines()
    marked = {line.split("|")[1].strip(): "UNSTABLE" in line for line in lines[2:]}
    assert marked == {"fc1": False, "relu": True, "fc2": True}


def test_a_busy_run_says_so_and_a_quiet_one_does_not():
    assert bench.unstable_note([_row("fc1", STEADY)] * 3) == ""
    busy = bench.unstable_note([_row("fc1", STEADY), _row("relu", STEADY, contention=1.0)])
    assert busy.startswith("1 of 2 rows stayed UNSTABLE") and "the machine was busy" in busy
    quiet = bench.unstable_note([_row("fc1", STEADY), _row("relu", NOISY)])
    assert quiet.startswith("1 of 2 rows stayed UNSTABLE") and "busy" not in quiet


def test_the_json_row_carries_the_rounds_and_the_flag():
    fields = _row("relu", NOISY).as_dict()
    assert fields["ours_rounds_s"] == NOISY[0] and fields["stock_rounds_s"] == NOISY[1]
    assert fields["stable"] is False and fields["stock_over_ours"] == bench.round_ratios(*NOISY).median


@pytest.mark.parametrize("series, attempts, stable", [
    ([STEADY], 1, True),
    ([NOISY, STEADY], 2, True),
    ([NOISY] * bench.MEASURE_ATTEMPTS, bench.MEASURE_ATTEMPTS, False),
])
def test_an_unstable_row_is_timed_again_up_to_a_limit(series, attempts, stable, monkeypatch):
    timings = iter(series)
    monkeypatch.setattr(bench, "time_rounds", lambda fns, seconds: (dict(zip(fns, next(timings))), 0.0))
    row = bench.measure(bench.op_pair("relu", 2, "cpu", "forward"), min_run_time=0.002)
    assert (row.attempts, row.ratios.stable) == (attempts, stable)


def test_rounds_alternate_and_time_every_callable_in_each():
    order = []
    times, contention = bench.time_rounds({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                          seconds=0.004, rounds=4)
    runs = [name for name, _ in itertools.groupby(order[2 * bench.WARMUP_CALLS:])]
    assert runs == ["a", "b", "a", "b", "a"]  # AB BA AB BA, a side's two blocks in a row as one
    assert [len(times["a"]), len(times["b"])] == [4, 4] and all(t > 0 for t in times["a"] + times["b"])
    assert contention >= 0


def test_rounds_timed_beside_a_busy_process_measure_its_contention():
    threads = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # no CPU left free for another process
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # the burner is running
        _, contention = bench.time_rounds({"sleep": lambda: time.sleep(1e-3)}, seconds=0.5)
    finally:
        burner.kill()
        burner.wait()
        torch.set_num_threads(threads)
    assert contention > bench.MAX_CONTENTION


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
    ("bench_mnist_net.py", "mnist_net", ["mnist-net"], ("training step", "inference")),
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


@pytest.mark.parametrize("script, stem", [("bench_lenet.py", "lenet"), ("bench_mnist_net.py", "mnist_net")])
def test_a_benchmark_script_runs_in_bfloat16(script, stem, tmp_path):
    result = _run(f"benchmarks/{script}", "--dtype", "bf16", "--threads", "1", "--out", str(tmp_path),
                  *TINY_RUN)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / f"{stem}-bf16.json").read_text())  # each row checked first
    env = report["environment"]
    assert env["dtype"] == "bf16" and report["rows"]
    assert env["cpu_flags"] == bench.cpu_flags()  # the machine's flags and ceiling, same run
    assert env["fma_peak"]["error"] or env["fma_peak"]["gflops"]["1"] > 0
    assert ("avx512_bf16" in env["cpu_flags"]) <= bool(env["fma_peak"]["error"] or env["fma_peak"]["bf16_dot"])


def test_the_fma_probe_measures_one_thread_count_now():
    try:
        probe = bench.fma_probe(REPO / "benchmarks" / "peak_fma.c")
    except RuntimeError as error:  # a machine without a C compiler or AVX-512
        assert "peak_fma.c did not compile" in str(error)
        return
    one, two = probe(1), probe(2)
    assert 1 < one < 10_000 and 1 < two < 10_000 and two > 0.6 * one


def test_the_gemm_benchmark_brackets_each_row_by_the_peak(tmp_path):
    result = _run("benchmarks/bench_gemm.py", "--sizes", "48", "--threads", "1", "--no-layers",
                  "--min-run-time", "0.002", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "gemm.json").read_text())["rows"]
    assert [r["product"] for r in rows] == ["x W^T", "g W", "g^T x"]
    for r in rows:
        before, after = r["peak_before_after"]
        if r["peak_gflops"] is not None:
            assert before > 0 and after > 0 and r["peak_gflops"] == pytest.approx((before + after) / 2)
        assert r["ratio"] == pytest.approx(r["ours_gflops"] / r["stock_gflops"])
    assert "| 1 | 48^3 | g W |" in (tmp_path / "gemm.md").read_text()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_low_precision_pair_meets_its_bound(dtype):
    pairs = [bench.op_pair(name, 4, "cpu", mode, all_grads=True, dtype=dtype)
             for name in bench.LENET_OPS for mode in bench.OP_MODES]
    pairs += [bench.lenet_pair(8, "cpu", mode, name, dtype)
              for name in bench.LENET_NETWORKS for mode in bench.LENET_MODES]
    for pair in pairs:
        assert pair.reference is not None and pair.dtype == dtype
        error, label, bound = bench.max_error(pair)
        assert error <= bound, f"{pair.name} {pair.mode}: {label} error {error:.1e} > {bound:.1e}"


# Below bfloat16's resolution, 0.1% is not an error there.
@pytest.mark.parametrize("wrong", [w for w in WRONG_OPS if w != "linear off by 0.1%"])
def test_a_wrong_op_fails_its_bfloat16_check(wrong, monkeypatch):
    op, wrong_op = WRONG_OPS[wrong]
    monkeypatch.setattr(lenet_ext.functional, op, wrong_op)
    checks = [bench.max_error(bench.op_pair(name, 4, "cpu", "forward+backward", all_grads=True,
                                            dtype=torch.bfloat16))
              for name, case in bench.LENET_OPS.items() if case[0] == op]
    assert any(not error <= bound for error, _, bound in checks)


def test_the_plot_is_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    rows = [bench.measure(bench.op_pair("relu", 1, "cpu", "forward"), min_run_time=0.002)]
    paths = bench.write_report(rows, bench.environment("cpu", 1, "test"), tmp_path, "ops", "title")
    assert [p.name for p in paths] == ["ops.md", "ops.json"]
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_compare_puts_two_runs_side_by_side(tmp_path):
    def run(rows, unstable=None):
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps({"rows": [dict(name=n, mode=m, batch=b, stock_over_ours=r,
                                                  stable=(n, b) != unstable) for n, m, b, r in rows]}))
        return str(path)
    before = run([("fc1", "forward", 1, 0.5), ("fc1", "forward", 64, 0.25)])
    after = run([("fc1", "forward", 1, 2.0), ("fc1", "forward", 64, 1.5), ("fused", "forward", 1, 7.0)],
                unstable=("fc1", 64))
    result = subprocess.run([sys.executable, "benchmarks/compare.py", before, after], capture_output=True,
                            text=True, check=True, cwd=Path(__file__).parents[1])
    lines = result.stdout.splitlines()
    assert "batch 64: before -> after" in lines[0]
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[2:]]
    assert cells == [["fc1", "forward", "0.5x -> 2x", "0.25x -> 1.5x UNSTABLE"],
                     ["fused", "forward", "- -> 7x", ""]]


def test_floor_times_a_network_that_computes_nothing_next_to_stock_and_fused():
    result = _run("benchmarks/floor.py", *TINY_RUN, "--threads", "1")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| 1 |"))
    row = [cell.strip() for cell in row.split("|")[1:-1]]
    assert len(row) == 6 and all(re.fullmatch(r"\S+x \[\S+-\S+\]( UNSTABLE)?", cell) for cell in row[4:])
    # and the zero-work network really has LeNet's parameters and gradients of their shapes
    spec = importlib.util.spec_from_file_location("floor", REPO / "benchmarks" / "floor.py")
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    net = floor.ZeroWorkLeNet()
    torch.nn.functional.cross_entropy(net(torch.randn(2, 1, 32, 32)), torch.tensor([1, 2])).backward()
    assert [(n, p.grad.shape) for n, p in net.named_parameters()] == \
        [(n, p.shape) for n, p in lenet_ext.models.LeNet().named_parameters()]
