"""Our GEMM (csrc/cpu/gemm.h, through linear's forced "gemm" algorithm) against stock's torch.mm,
in one process: square products from 512 up and large linear layers, each of linear's three
products (x W^T, g W, g^T x), at 1 and 2 threads. Prints a Markdown table and writes it with a JSON
beside it.

% of peak: of the fp32 FMA peak (benchmarks/peak_fma.c) for the row's thread count, measured just
before and just after the row's timing and averaged (the JSON keeps both). This VM's speed moves by
up to 20% from minute to minute, for both sides alike, so a peak taken once at the start (also
printed) would misstate every later row; stock/ours needs no peak at all.

    python benchmarks/bench_gemm.py [--sizes 512 1024 2048] [--threads 1 2] [--no-layers]
        [--min-run-time S] [--out DIR]
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

CHECKOUT = Path(__file__).resolve().parents[1]
if any((CHECKOUT / "lenet_ext").glob("_C*")):  # this checkout's in-place build wins
    sys.path.insert(0, str(CHECKOUT))

import lenet_ext  # noqa: E402,F401
from lenet_ext import bench  # noqa: E402
from lenet_ext.checkpoint import write_atomically  # noqa: E402

op = torch.ops.lenet_ext
# (name, rows, in_features, out_features): linear layers of the shape sweep's networks
LAYERS = [("VGG-16 fc6, batch 16", 16, 25088, 4096), ("VGG-16 fc7, batch 64", 64, 4096, 4096),
          ("MNIST net fc1, batch 64", 64, 9216, 128), ("ResNet-50 fc, batch 64", 64, 2048, 1000)]


def products(rows, in_features, out_features):
    """name -> (ours, stock) callables for linear's three products on fresh random operands."""
    x, w = torch.randn(rows, in_features), torch.randn(out_features, in_features)
    g = torch.randn(rows, out_features)
    backward = op._linear_backward_forced
    return {
        "x W^T": (lambda: op._linear_forced(x, w, None, "gemm"), lambda: torch.mm(x, w.t())),
        "g W": (lambda: backward(g, x, w, [True, False, False], "gemm")[0], lambda: torch.mm(g, w)),
        "g^T x": (lambda: backward(g, x, w, [False, True, False], "gemm")[1], lambda: torch.mm(g.t(), x)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--min-run-time", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--layers", action=argparse.BooleanOptionalAction, default=True,
                        help="the large linear layers after the squares (default: yes)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR")
    args = parser.parse_args(argv)
    source = CHECKOUT / "benchmarks" / "peak_fma.c"
    peak = bench.fma_peak(source)
    print(peak["output"] or f"no FMA peak: {peak['error']}", flush=True)
    try:
        probe = bench.fma_probe(source)
    except RuntimeError as error:
        probe = None
        print(f"no FMA peak beside each row: {error}", flush=True)
    shapes = [(f"{n}^3", n, n, n) for n in args.sizes] + (LAYERS if args.layers else [])
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, m, k, n in shapes:
            for product, (ours, stock) in products(m, k, n).items():
                torch.testing.assert_close(ours(), stock(), rtol=1e-4, atol=1e-3 * k ** 0.5)
                before = probe(threads) if probe else None
                times, _ = bench.time_rounds({"ours": ours, "stock": stock}, 2 * args.min_run_time)
                after = probe(threads) if probe else None
                thread_peak = (before + after) / 2 if probe else None
                ours_s, stock_s = statistics.median(times["ours"]), statistics.median(times["stock"])
                flops = 2.0 * m * k * n
                row = {"shape": name, "product": product, "threads": threads,
                       "ours_gflops": flops / ours_s / 1e9, "stock_gflops": flops / stock_s / 1e9,
                       "ratio": stock_s / ours_s, "peak_gflops": thread_peak,
                       "peak_before_after": [before, after]}
                rows.append(row)
                share = (lambda v: f"{100 * v / thread_peak:.0f}%") if thread_peak else (lambda v: "-")
                print(f"| {threads} | {name} | {product} | {row['ours_gflops']:.0f} "
                      f"({share(row['ours_gflops'])}) | {row['stock_gflops']:.0f} "
                      f"({share(row['stock_gflops'])}) | {row['ratio']:.2f}x |", flush=True)
    header = ("| threads | shape (M x K x N) | product | ours GFLOP/s (% peak) | stock GFLOP/s (% peak) "
              "| stock/ours |\n|---:|:---|:---|---:|---:|---:|\n")
    env = bench.environment("cpu", max(args.threads), " ".join(["python"] + sys.argv))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        lines = []
        for r in rows:
            share = (lambda v: f"{100 * v / r['peak_gflops']:.0f}%") if r["peak_gflops"] else (lambda v: "-")
            lines.append(f"| {r['threads']} | {r['shape']} | {r['product']} | {r['ours_gflops']:.0f} "
                         f"({share(r['ours_gflops'])}) | {r['stock_gflops']:.0f} "
                         f"({share(r['stock_gflops'])}) | {r['ratio']:.2f}x |")
        text = (f"### lenet_ext GEMM vs torch.mm\n\n{bench.describe(env)}\n\n`{env.get('command')}`\n\n"
                f"FMA peak (benchmarks/peak_fma.c) at the start: {peak['output']}\n\n"
                "% peak: of the FMA peak for the row's threads, measured just before and after the row "
                "and averaged (both in the JSON).\n\n" + header + "\n".join(lines) + "\n")
        write_atomically(args.out / "gemm.md", lambda f: f.write(text.encode()))
        write_atomically(args.out / "gemm.json", lambda f: f.write(json.dumps(
            {"environment": env, "peak": peak, "rows": rows}, indent=1).encode()))
        print(f"wrote {args.out / 'gemm.md'}, {args.out / 'gemm.json'}")


if __name__ == "__main__":
    main()
