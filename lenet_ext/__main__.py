"""`python -m lenet_ext` (console script `lenet-ext`): checks every op against stock PyTorch on
random data, forward and gradients, then times ours against stock on LeNet's shapes (~30 s on two
CPU cores, more where a busy machine makes rows be timed again) and prints the ratios. Offline, no
dataset. Exit code 1 if any check fails."""
import argparse
import itertools
import sys

import torch

import lenet_ext
from lenet_ext import bench


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lenet_ext", description=__doc__)
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if lenet_ext.cuda_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], metavar="N")
    parser.add_argument("--min-run-time", type=float, default=0.3, metavar="SECONDS",
                        help="timed seconds per side of each comparison, over all its rounds "
                             "(default: %(default)s)")
    parser.add_argument("--check-only", action="store_true", help="skip the benchmark")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    bench.prepare(args.device, args.threads)
    env = bench.environment(args.device, args.threads)
    print(f"lenet_ext {lenet_ext.__version__} on {args.device}: {bench.describe(env)}\n")

    print(f"Self-check against torch, forward and every gradient, float32, batch 3 "
          f"(max |ours - torch| / max |torch| <= {bench.TOLERANCE:.0e}):")
    checks = bench.self_check(args.device)
    for check in checks:
        print(f"  {'PASS' if check.ok else 'FAIL'}  {check.name:<10}  {check.detail}")
    if not all(check.ok for check in checks):
        print("\nSelf-check FAILED: not timing ops that compute the wrong answer.")
        return 1
    if args.check_only:
        return 0

    print(f"\nTiming ours against torch ({args.min_run_time:g} s a side in {bench.ROUNDS} alternating "
          f"rounds) ...", flush=True)
    pairs = list(itertools.chain(bench.op_pairs(args.batch_sizes, args.device),
                                 bench.lenet_pairs(args.batch_sizes, args.device)))
    rows = []
    for number, pair in enumerate(pairs, 1):  # progress on stderr, overwritten in place
        print(f"\r  {number}/{len(pairs)}: {pair.name} {pair.mode}, batch {pair.batch}\033[K",
              end="", file=sys.stderr, flush=True)
        rows.append(bench.measure(pair, args.min_run_time))
    print("\r\033[K", end="", file=sys.stderr)
    print(f"\n{bench.ratio_table(rows)}\n\nstock/ours: the median over the rounds of stock's time / ours "
          f"(above 1: ours is faster), in brackets the rounds' quartiles. Full tables: "
          f"benchmarks/bench_ops.py and benchmarks/bench_lenet.py.")
    note = bench.unstable_note(rows)
    if note:
        print(f"\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
