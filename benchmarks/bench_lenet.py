"""The whole LeNet, ours against the stock tutorial network with the same weights: inference
forward and one training step (forward, cross-entropy, backward, SGD step), in images/s.

    python benchmarks/bench_lenet.py [--batch-sizes 1 64 256] [--device cpu|cuda] [--dtype float32|bf16|fp16] [--threads N]
                                     [--min-run-time SECONDS] [--only NAME ...] [--out DIR]
"""
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
if any((CHECKOUT / "lenet_ext").glob("_C*")):  # this checkout's in-place build wins over an installed one
    sys.path.insert(0, str(CHECKOUT))

from lenet_ext import bench  # noqa: E402


def main(argv=None) -> int:
    return bench.run_cli(argv, prog="benchmarks/bench_lenet.py", stem="lenet", pairs=bench.lenet_pairs,
                         title="LeNet on lenet_ext vs stock PyTorch",
                         default_out=Path(__file__).parent / "results")


if __name__ == "__main__":
    sys.exit(main())
