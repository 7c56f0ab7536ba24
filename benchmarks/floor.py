"""The fastest training step any LeNet could have on top of stock PyTorch's training loop.

FusedLeNet's step is forward, cross-entropy, backward and an SGD step; only the forward and
backward ops are ours. This times that same step with a network whose forward and backward do no
arithmetic at all (a torch.autograd.Function that returns zeros and uninitialised gradients for
the same ten parameters), next to StockLeNet and FusedLeNet, in one process, in alternating rounds
(bench.time_rounds). stock / zero-work is then the largest ratio a training step can reach however
fast the kernels are.
(The zero-work Function is Python, so it costs a few µs more than FusedLeNet's C++ one: the bound
is a little low, not high.)

    python benchmarks/floor.py [--threads 2] [--batch-sizes 1 64 256] [--min-run-time 1]
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch

CHECKOUT = Path(__file__).resolve().parents[1]
if any((CHECKOUT / "lenet_ext").glob("_C*")):  # this checkout's in-place build wins over an installed one
    sys.path.insert(0, str(CHECKOUT))

from lenet_ext import bench, models  # noqa: E402


class _NoArithmetic(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, *parameters):
        ctx.parameters = parameters
        return input.new_zeros(input.shape[0], 10)

    @staticmethod
    def backward(ctx, grad):
        return (None, *(torch.empty_like(p) for p in ctx.parameters))


class ZeroWorkLeNet(models.LeNet):
    """LeNet's ten parameters, and a forward/backward that compute nothing."""

    def forward(self, input):
        return _NoArithmetic.apply(input, *self.parameters())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--min-run-time", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ("StockLeNet", "FusedLeNet", "ZeroWorkLeNet")
    print(f"{bench.describe(bench.environment('cpu', args.threads))}\n")
    print("| batch | stock | FusedLeNet | zero-work | stock/fused | stock/zero-work |")
    print("| ----: | ----: | ---------: | --------: | ----------: | --------------: |")
    unstable = False
    for batch in args.batch_sizes:
        images, targets = torch.randn(batch, 1, 32, 32), torch.randint(10, (batch,))
        steps = {name: bench.training_step(ZeroWorkLeNet() if name == "ZeroWorkLeNet"
                                           else getattr(models, name)(), images, targets)
                 for name in names}
        times, contention, _ = bench.time_against(steps, "StockLeNet", args.min_run_time)
        ratios = [bench.round_ratios(times[name], times["StockLeNet"], contention) for name in names[1:]]
        unstable |= not all(r.stable for r in ratios)
        medians = (bench.format_time(statistics.median(times[name])) for name in names)
        print(f"| {batch} | {' | '.join(medians)} | {' | '.join(map(bench.format_ratio, ratios))} |")
    if unstable:
        print(f"\nRatios marked UNSTABLE stayed so over {bench.MEASURE_ATTEMPTS} attempts (a busy machine, or "
              "the step's own time varies; see bench.round_ratios): do not trust them.")


if __name__ == "__main__":
    main()
