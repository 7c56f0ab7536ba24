"""pytorch/examples' MNIST network (conv 1->32 and 32->64 3x3, max-pool, fc 9216->128->10) on our
modules against the same network on stock torch.nn, the same weights and images, in one process:
one training step (forward, cross-entropy, backward, SGD step) and inference. The results
are checked equal first (bench.measure), then timed in alternating rounds.

The example's two dropout layers are left out: each side would draw its own masks, so the two
results could not be compared. They cost the same on both sides (stock's dropout runs on both).

    python benchmarks/bench_mnist_net.py [--batch-sizes 1 64] [--min-run-time S] [--out DIR]
"""
import sys
from pathlib import Path

import torch

CHECKOUT = Path(__file__).resolve().parents[1]
if any((CHECKOUT / "lenet_ext").glob("_C*")):  # this checkout's in-place build wins
    sys.path.insert(0, str(CHECKOUT))

import lenet_ext  # noqa: E402
from lenet_ext import bench  # noqa: E402


class MnistNet(torch.nn.Module):
    """pytorch/examples mnist/main.py's Net without its dropout, on the modules and functions of
    `nn` and `F` (torch's or ours)."""

    def __init__(self, nn, F):
        super().__init__()
        self.F = F
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        F = self.F
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)  # the example's log_softmax + nll_loss: the training step's cross-entropy


def mnist_net_pair(batch: int, device, mode: str, dtype=torch.float32) -> bench.Pair:
    ours = MnistNet(lenet_ext.nn, lenet_ext.functional).to(device, dtype)
    stock = MnistNet(torch.nn, torch.nn.functional).to(device, dtype)
    stock.load_state_dict(ours.state_dict())
    images = torch.randn(batch, 1, 28, 28, device=device, dtype=dtype)
    targets = torch.randint(10, (batch,), device=device)
    make, labels = bench.network_step(mode, ours, images, targets)
    reference = None
    if dtype != torch.float32:  # stock in float32 on the same values (bench.DTYPES)
        wide = MnistNet(torch.nn, torch.nn.functional).to(device)
        wide.load_state_dict(stock.state_dict())
        reference = bench.network_step(mode, wide, images.float(), targets)[0](wide)
    return bench.Pair("mnist-net", mode, batch, "1x28x28 -> 10", make(ours), make(stock), labels,
                      batch, "img/s", redraw=lambda: mnist_net_pair(batch, device, mode, dtype),
                      dtype=dtype, reference=reference)


def pairs(batch_sizes, device, dtype=torch.float32):
    for mode in ("training step", "inference"):
        for batch in batch_sizes:
            yield mnist_net_pair(batch, device, mode, dtype)


if __name__ == "__main__":
    sys.exit(bench.run_cli(None, prog="benchmarks/bench_mnist_net.py", stem="mnist_net",
                           title="pytorch/examples' MNIST network on lenet_ext vs stock PyTorch",
                           pairs=pairs, default_out=CHECKOUT / "benchmarks" / "results"))
