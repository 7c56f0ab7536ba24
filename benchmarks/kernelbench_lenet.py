"""LeNet-5 inference at the shape of KernelBench's level-3 problem 4_LeNet5 (batch 4096 of 1x32x32
images drawn from [0, 1), 20 classes, float32): ours (lenet_ext), stock eager (torch.nn) and stock
torch.compile, on the same weights and images. Ours and torch.compile are checked against stock eager
before anything is timed; the table is printed, and written to DIR/kernelbench_lenet.md with --out.

    python benchmarks/kernelbench_lenet.py [--device cuda|cpu] [--batch-size 4096]
                                           [--min-run-time SECONDS] [--out DIR]
"""
import argparse
import shlex
import statistics
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
if any((CHECKOUT / "lenet_ext").glob("_C*")):  # this checkout's in-place build wins over an installed one
    sys.path.insert(0, str(CHECKOUT))

import torch  # noqa: E402

import lenet_ext  # noqa: E402
from lenet_ext import bench, models  # noqa: E402

NUM_CLASSES = 20  # KernelBench/level3/4_LeNet5.py: batch_size = 4096, num_classes = 20
OURS, EAGER, COMPILED = "ours (lenet_ext)", "stock eager (torch.nn)", "stock torch.compile"


def twins(device):
    """Our LeNet and the stock one, each with KernelBench's 20-way last layer, with the same weights."""
    ours, stock = models.LeNet(), models.StockLeNet()
    ours.fc3 = lenet_ext.nn.Linear(84, NUM_CLASSES)
    stock.fc3 = torch.nn.Linear(84, NUM_CLASSES)
    stock.load_state_dict(ours.state_dict())
    return ours.to(device), stock.to(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/kernelbench_lenet.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--batch-size", type=int, default=4096, metavar="N")
    parser.add_argument("--min-run-time", type=float, default=1.0, metavar="SECONDS",
                        help="timed seconds per network, over all rounds (default: %(default)s)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write DIR/kernelbench_lenet.md")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    bench.prepare(args.device, threads)  # full float32 on CUDA (no TF32), on both sides
    env = bench.environment(args.device, threads,
                            shlex.join(["python", "benchmarks/kernelbench_lenet.py", *argv]))

    torch.manual_seed(0)
    ours, stock = twins(args.device)
    images = torch.rand(args.batch_size, 1, 32, 32, device=args.device)  # KernelBench's get_inputs

    def inference(net):
        def run():
            with torch.no_grad():
                return net(images)
        return run
    calls = {OURS: inference(ours), EAGER: inference(stock), COMPILED: inference(torch.compile(stock))}

    # Checked before timed (the first compiled call compiles), as the other benchmarks check: the
    # largest difference from stock eager's logits, relative to its largest logit.
    expected = calls[EAGER]()
    errors = {}
    for name in (OURS, COMPILED):
        errors[name] = ((calls[name]() - expected).abs().max() / expected.abs().max()).item()
        if not errors[name] <= bench.TOLERANCE:  # NaN fails too
            raise SystemExit(f"{name} differs from stock eager: max relative error {errors[name]:.1e} > "
                             f"{bench.TOLERANCE:.0e}; not timing")

    # warm-up calls, then interleaved rounds, each synchronised on CUDA
    times, contention = bench.time_rounds(calls, args.min_run_time)
    lines = []
    for name, rounds in times.items():
        seconds = statistics.median(rounds)
        speedup = ("" if name == OURS else
                   bench.format_ratio(bench.round_ratios(times[OURS], rounds, contention)))
        lines.append((name, f"{seconds * 1e3:.3f}", bench.format_rate(args.batch_size / seconds, "img/s"),
                      speedup))
    table = bench._markdown(("network", "ms per batch", "images/s", "ours faster by (its time / ours)"),
                            lines, "lrrr")
    report = (f"# LeNet-5 inference at KernelBench's level-3 shape\n\n"
              f"Batch {args.batch_size}, 1x32x32 -> {NUM_CLASSES} classes, float32, no_grad; "
              f"{bench.describe(env)}.\n`{env['command']}` (commit {env['commit']})\n\n{table}\n\n"
              f"Median of {bench.ROUNDS} interleaved rounds, {args.min_run_time:g} s per network in all; "
              f"speed-ups are the median [quartiles] of the rounds' ratios. "
              "Checked against stock eager first: "
              + ", ".join(f"{name} max relative error {error:.1e}" for name, error in errors.items())
              + f" (tolerance {bench.TOLERANCE:.0e}).\n")
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "kernelbench_lenet.md").write_text(report)
        print(f"wrote {args.out / 'kernelbench_lenet.md'}")
    print("; ".join(f"{name} {ms} ms" + (f", ours faster by {ratio}" if ratio else "")
                    for name, ms, _, ratio in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
