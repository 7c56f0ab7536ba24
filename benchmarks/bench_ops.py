"""Each of LeNet's layers (conv1, conv2, pool1, pool2, fc1, fc2, fc3, relu), forward and
forward+backward, ours against stock PyTorch: median times, GFLOP/s or GB/s, and stock/ours.

    python benchmarks/bench_ops.py [--batch-sizes 1 64 256] [--device cpu|cuda] [--dtype float32|bf16|fp16] [--threads N]
                                   [--min-run-time SECONDS] [--only NAME ...] [--out DIR]
"""
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
if any((CHECKOUT / "lenet_ext").glob("_C*")):  # this checkout's in-place build wins over an installed one
    sys.path.insert(0, str(CHECKOUT))

from lenet_ext import bench  # noqa: E402


def main(argv=None) -> int:
    return bench.run_cli(argv, prog="benchmarks/bench_ops.py", stem="ops", pairs=bench.op_pairs,
                         title="lenet_ext ops vs stock PyTorch at LeNet's shapes",
                         default_out=Path(__file__).parent / "results")


if __name__ == "__main__":
    sys.exit(main())
