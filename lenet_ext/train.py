"""Trains LeNet (or the MLP) on MNIST or Fashion-MNIST with lenet_ext's kernels, or stock PyTorch's.

    python -m lenet_ext.train --epochs 8                    # the MNIST sample inside the package
    python -m lenet_ext.train --data-dir data ...           # full MNIST, downloaded there if missing
    python -m lenet_ext.train --backend torch ...           # the same network on stock modules
    torchrun --nproc_per_node=2 -m lenet_ext.train ...      # DistributedDataParallel (gloo / NCCL)

Without ``--data-dir``, MNIST is the 4,000/1,000-image real-MNIST sample inside the package (no
network needed), said so in a first line on stdout; Fashion-MNIST is looked for in ./data.
A progress bar (loss, images/s) goes to stderr; one line per epoch and a final summary line go to
stdout as ``key=value`` pairs. Missing data that cannot be downloaded, or a corrupt file, ends the run
with a message naming ``--data-dir`` and exit code 2.
"""
import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from . import cuda_available
from .data import BUNDLED_MNIST, DATASETS, DataError, load
from .models import MODELS

# LeNet returns logits, the MLP log-probabilities.
LOSSES = {"lenet": F.cross_entropy, "mlp": F.nll_loss}
DEFAULT_LR = {"sgd": 0.05, "adam": 2e-3}
EVAL_BATCH_SIZE = 1000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lenet_ext.train",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="lenet", help="default: %(default)s")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist",
                        help="default: %(default)s")
    parser.add_argument("--data-dir", default=None,
                        help="directory with the IDX files, flat or in torchvision's <dir>/MNIST/raw; "
                             "missing files are downloaded there (default: for mnist, the "
                             "4,000/1,000-image sample bundled with the package; for fashion-mnist, "
                             "data)")
    parser.add_argument("--no-download", dest="download", action="store_false",
                        help="fail instead of downloading missing files")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                        help="standardise pixels by the data set's mean and std, else keep [0, 1] "
                             "(default: on)")
    parser.add_argument("--epochs", type=int, default=8, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="images per step and process (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"learning rate (default: {DEFAULT_LR['sgd']} for sgd, which uses "
                             f"momentum 0.9, {DEFAULT_LR['adam']} for adam)")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="adam",
                        help="default: %(default)s")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: %(default)s")
    parser.add_argument("--backend", choices=["ext", "torch"], default="ext",
                        help="ext: lenet_ext's kernels; torch: stock torch.nn modules, for comparison "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the weights and the shuffling (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--checkpoint", metavar="PATH", default=None,
                        help="save the trained state_dict there; the stock network loads it too")
    parser.add_argument("--compile", action="store_true", help="torch.compile(model, fullgraph=True)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be at least 1")
    if args.lr is None:
        args.lr = DEFAULT_LR[args.optimizer]
    args.bundled = args.data_dir is None and args.dataset == "mnist"
    if args.data_dir is None:
        args.data_dir = BUNDLED_MNIST if args.bundled else "data"
    return args


def batches(images, labels, batch_size, order):
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        yield images[index], labels[index]


def shard(order, rank, world_size):
    """This process's share of ``order``: cut to a multiple of world_size, so that every process
    runs the same number of steps (DDP's collectives need that), then dealt round-robin."""
    return order[:len(order) - len(order) % world_size][rank::world_size]


def all_sum(*values, device):
    """Sums scalars over the processes (identity when not distributed)."""
    total = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(total)
    return total.tolist()


def train_epoch(model, loss_fn, optimizer, train_batches, bar, world_size):
    """One pass; returns this process's (sum of the losses over its images, number of images)."""
    model.train()
    loss_sum, seen = 0.0, 0
    for step, (input, target) in enumerate(train_batches):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(input), target)
        loss.backward()
        optimizer.step()
        loss_sum = loss_sum + loss.detach() * len(target)  # stays on the device: no sync per step
        seen += len(target)
        bar.update(len(target) * world_size)
        if step % 10 == 0:  # .item() waits for the device: not every step
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    if seen:  # drawn at least once with the loss: an epoch can end before tqdm's first redraw
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return float(loss_sum), seen


@torch.no_grad()
def evaluate(model, images, labels, order):
    model.eval()
    correct = 0
    for input, target in batches(images, labels, EVAL_BATCH_SIZE, order):
        correct += (model(input).argmax(1) == target).sum().item()
    return correct


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    device = torch.device(args.device)
    if args.device == "cuda":
        if not (cuda_available() if args.backend == "ext" else torch.cuda.is_available()):
            print(f"lenet_ext.train: error: --device cuda: no CUDA device"
                  f"{' or no CUDA kernels in this build' if args.backend == 'ext' else ''}",
                  file=sys.stderr)
            return 2
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        status = run(args, device, rank, world_size)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if world_size > 1:
        # Out without the interpreter's exit: there torch's gloo teardown aborted a rank now and then
        # (std::terminate in a C++ destructor, no Python frame; ~3% of torchrun runs with torch
        # 2.13), failing a run whose work was all done. Everything is written and flushed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def load_split(args, train, device):
    # The bundled sample is complete: a file missing there is a broken install, not one to download
    # into the package.
    images, labels = load(args.dataset, args.data_dir, train, normalize=args.normalize,
                          pad_to=32 if args.model == "lenet" else None,
                          download=args.download and not args.bundled)
    return images.to(device), labels.to(device)


def run(args, device, rank, world_size) -> int:
    is_main = rank == 0
    if is_main and args.bundled:
        print("lenet_ext.train: training on the real-MNIST sample bundled with the package "
              "(4,000 training / 1,000 test images); for the full 60,000/10,000-image MNIST, add "
              "--data-dir DIR (missing files are downloaded there)", flush=True)
    # Rank 0 loads first, so that only it downloads.
    if world_size > 1 and not is_main:
        dist.barrier()
    try:
        train_set, test_set = load_split(args, True, device), load_split(args, False, device)
    except DataError as error:
        print(f"lenet_ext.train: error: {error}\n"
              f"lenet_ext.train: point --data-dir at a directory holding the {args.dataset} IDX files "
              f"(now --data-dir {args.data_dir}), or run where the files can be downloaded.",
              file=sys.stderr)
        return 2
    if world_size > 1 and is_main:
        dist.barrier()

    torch.manual_seed(args.seed)
    network = MODELS[args.model][args.backend]().to(device)
    model = torch.compile(network, fullgraph=True) if args.compile else network
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = (torch.optim.Adam(network.parameters(), lr=args.lr) if args.optimizer == "adam" else
                 torch.optim.SGD(network.parameters(), lr=args.lr, momentum=0.9))
    loss_fn = LOSSES[args.model]
    shuffle = torch.Generator().manual_seed(args.seed)  # the same order on every process
    test_count = len(test_set[1])
    test_order = torch.arange(test_count, device=device)[rank::world_size]  # every image, once

    total_images, total_seconds = 0, 0.0
    for epoch in range(1, args.epochs + 1):
        order = shard(torch.randperm(len(train_set[1]), generator=shuffle), rank, world_size)
        order = order.to(device)
        with tqdm(total=len(order) * world_size, unit="img", unit_scale=True, leave=False,
                  desc=f"epoch {epoch}/{args.epochs}", disable=not is_main) as bar:
            start = time.perf_counter()
            loss_sum, seen = train_epoch(model, loss_fn, optimizer,
                                         batches(*train_set, args.batch_size, order), bar, world_size)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        loss_sum, seen = all_sum(loss_sum, seen, device=device)
        # The plain network: eval mode under no_grad would make torch.compile trace a second graph.
        (correct,) = all_sum(evaluate(network, *test_set, test_order), device=device)
        accuracy = 100.0 * correct / test_count
        total_images, total_seconds = total_images + seen, total_seconds + seconds
        if is_main:
            print(f"epoch={epoch}/{args.epochs} train_loss={loss_sum / seen:.4f} "
                  f"test_acc={accuracy:.2f} images_per_s={seen / seconds:.0f}", flush=True)

    if is_main:
        if args.checkpoint:
            torch.save(network.state_dict(), args.checkpoint)
        print(f"summary model={args.model} backend={args.backend} dataset={args.dataset} "
              f"device={device.type} processes={world_size} epochs={args.epochs} "
              f"batch_size={args.batch_size} optimizer={args.optimizer} lr={args.lr:g} "
              f"compile={int(args.compile)} test_acc={accuracy:.2f} "
              f"images_per_s={total_images / max(total_seconds, 1e-9):.0f} "
              f"train_seconds={total_seconds:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
