"""Trains LeNet (or the MLP) on MNIST or Fashion-MNIST with lenet_ext's kernels, or stock PyTorch's.

    python -m lenet_ext.train --epochs 8                    # the MNIST sample inside the package
    python -m lenet_ext.train --checkpoint runs/a.pt        # saved every epoch, crash-safe
    python -m lenet_ext.train --resume runs/a.pt            # goes on where runs/a.pt stopped
    python -m lenet_ext.train --eval runs/a.pt              # test loss, accuracy, confusion matrix
    python -m lenet_ext.train --data-dir data ...           # full MNIST, downloaded there if missing
    python -m lenet_ext.train --backend torch ...           # the same network on stock modules
    python -m lenet_ext.train --precision bf16 ...          # mixed precision (torch.autocast)
    torchrun --nproc_per_node=2 -m lenet_ext.train ...      # DistributedDataParallel (gloo / NCCL)

Without ``--data-dir``, MNIST is the 4,000/1,000-image real-MNIST sample inside the package (no
network needed), said so in a first line on stdout; Fashion-MNIST is looked for in ./data.
A progress bar (loss, images/s) goes to stderr; one line per epoch and a final summary line go to
stdout as ``key=value`` pairs.

Nothing is lost on a crash: ``--checkpoint P`` is written every ``--save-every`` epochs by an atomic
rename (``P`` always holds a complete checkpoint), and Ctrl-C or SIGTERM finishes the current step,
writes ``P`` and exits 130 / 143 with one line saying how to resume. ``--resume P`` continues with
the data order, dropout masks and optimizer state of the interrupted run: on CPU the result is
bitwise that of a run never interrupted. Per-epoch metrics go to a CSV file beside the checkpoint
(or in ``--out``), and ``--plot`` draws them. Bad data or arguments end the run with exit code 2
and one line naming the file or option.
"""
import argparse
import contextlib
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint, metrics
from . import cuda_available
from .data import BUNDLED_MNIST, DATASETS, DataError, load
from .models import MODELS

PROG = "python -m lenet_ext.train"
# LeNet returns logits, the MLP log-probabilities.
LOSSES = {"lenet": F.cross_entropy, "mlp": F.nll_loss}
DEFAULT_LR = {"sgd": 0.05, "adam": 2e-3}
EVAL_BATCH_SIZE = 1000
CLASSES = 10
# What a resumed run keeps from its checkpoint whatever the command line says: changing any of them
# would make it another run.
RUN_DEFINING = ("model", "dataset", "normalize", "batch_size", "lr", "optimizer", "backend", "seed",
                "precision")
# --precision: the dtype torch.autocast computes the forward in (None: float32 throughout).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class UsageError(Exception):
    """Bad arguments or files: one line on stderr, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        if not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def build_parser():
    parser = Parser(prog=PROG, description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--model", choices=sorted(MODELS), default="lenet", help="default: %(default)s")
    add("--dataset", choices=sorted(DATASETS), default="mnist", help="default: %(default)s")
    add("--data-dir", default=None,
        help="directory with the IDX files, flat or in torchvision's <dir>/MNIST/raw; missing files "
             "are downloaded there (default: for mnist, the 4,000/1,000-image sample bundled with "
             "the package; for fashion-mnist, data)")
    add("--no-download", dest="download", action="store_false",
        help="fail instead of downloading missing files")
    add("--normalize", action=argparse.BooleanOptionalAction, default=True,
        help="standardise pixels by the data set's mean and std, else keep [0, 1] (default: on)")
    add("--epochs", type=positive(int), default=8,
        help="epochs in all, counting those of a resumed run (default: %(default)s)")
    add("--batch-size", type=positive(int), default=64,
        help="images per step and process (default: %(default)s)")
    add("--lr", type=positive(float), default=None,
        help=f"learning rate (default: {DEFAULT_LR['sgd']} for sgd, which uses momentum 0.9, "
             f"{DEFAULT_LR['adam']} for adam)")
    add("--optimizer", choices=["sgd", "adam"], default="adam", help="default: %(default)s")
    add("--device", choices=["cpu", "cuda"], default="cpu", help="default: %(default)s")
    add("--backend", choices=["ext", "torch"], default="ext",
        help="ext: lenet_ext's kernels; torch: stock torch.nn modules, for comparison "
             "(default: %(default)s)")
    add("--precision", choices=list(PRECISIONS), default="fp32",
        help="fp32: float32 throughout; bf16, fp16: mixed precision, the forward and the loss "
             "(in training and evaluation) under torch.autocast in bfloat16 or float16 (conv2d and "
             "linear compute in it), parameters, gradients and optimizer state in float32; fp16 "
             "also scales the loss (torch.amp.GradScaler), as float16's narrow range needs "
             "(default: %(default)s)")
    add("--seed", type=int, default=0,
        help="seeds the weights, the data order and dropout (default: %(default)s)")
    add("--threads", type=positive(int), default=None,
        help="torch.set_num_threads (default: torch's choice)")
    add("--checkpoint", metavar="PATH", default=None,
        help="write the run's state there every --save-every epochs and when stopped by Ctrl-C or "
             "SIGTERM (its 'model' entry is a state_dict the stock network loads too)")
    add("--save-every", metavar="N", type=positive(int), default=1,
        help="epochs between checkpoints; the last epoch is always saved (default: %(default)s)")
    add("--resume", metavar="PATH", default=None,
        help="continue the run saved in this checkpoint, with its settings; --epochs may extend "
             "it; it is saved back there unless --checkpoint says otherwise")
    add("--eval", metavar="PATH", default=None,
        help="only evaluate this checkpoint (or bare state_dict) on the test set: loss, accuracy "
             "and a confusion matrix")
    add("--out", metavar="DIR", default=None,
        help="folder for the per-epoch metrics (CSV) and --plot's PNG, created if missing "
             "(default: beside the checkpoint, named like it; without either, no files)")
    add("--plot", action="store_true",
        help="draw loss and accuracy curves as a PNG after every epoch (needs matplotlib: "
             "pip install 'lenet_ext[plot]')")
    add("--compile", action="store_true", help="torch.compile(model, fullgraph=True)")
    return parser


def given_options(argv):
    """The options the command line sets explicitly (dest names)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.saved = None  # the checkpoint resumed or evaluated
        if args.resume and args.eval:
            raise UsageError("--resume and --eval exclude each other")
        if args.resume or args.eval:
            option, path = ("--resume", args.resume) if args.resume else ("--eval", args.eval)
            try:
                args.saved = checkpoint.load(path, training=bool(args.resume))
            except checkpoint.CheckpointError as error:
                raise UsageError(f"{option}: {error}") from None
            settings = args.saved.get("args")
            if settings is not None:  # a bare state_dict (--eval only) has none
                adopt(args, settings, given_options(argv), option, strict=bool(args.resume))
        if args.resume and args.checkpoint is None:
            args.checkpoint = args.resume
        if args.lr is None:
            args.lr = DEFAULT_LR[args.optimizer]
        args.bundled = args.data_dir is None and args.dataset == "mnist"
        args.data_path = BUNDLED_MNIST if args.bundled else (args.data_dir or "data")
        if args.checkpoint and not args.eval:
            try:
                checkpoint.check_writable(args.checkpoint)
            except checkpoint.CheckpointError as error:
                raise UsageError(f"--checkpoint {args.checkpoint}: {error}") from None
        args.metrics_path = None
        if not args.eval and (args.out or args.checkpoint or args.plot):
            if args.out:
                folder, stem = Path(args.out), "metrics"
            elif args.checkpoint:
                folder, stem = Path(args.checkpoint).parent, Path(args.checkpoint).stem
            else:
                folder, stem = Path("."), "metrics"
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UsageError(f"--out {folder}: cannot create it: {error.strerror}") from None
            args.metrics_path = folder / f"{stem}.csv"
        if args.plot and not metrics.plotting_available():
            raise UsageError("--plot needs matplotlib: pip install 'lenet_ext[plot]'")
    except UsageError as error:
        parser.error(str(error))
    return args


def adopt(args, settings, given, option, strict):
    """Takes the saved run's settings for every option the command line leaves unset; with
    ``strict`` (resuming), a run-defining option set to another value is an error."""
    for name, value in settings.items():
        if name not in vars(args) or name in ("resume", "eval", "checkpoint", "out", "plot"):
            continue
        if name not in given:
            setattr(args, name, value)
        elif strict and name in RUN_DEFINING and getattr(args, name) != value:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{option}: the run was started with {flag} {value}; a resumed run "
                             f"keeps it (drop {flag} {getattr(args, name)}, or start a new run)")


class StopRequest:
    """Remembers the first SIGINT or SIGTERM; training looks at it between steps, finishes the step
    it is in, saves and leaves. Later signals change nothing (torchrun follows a Ctrl-C with a
    SIGTERM to its workers): a save in progress is never cut short but by SIGKILL."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    AGREE_EVERY = 10

    def __init__(self):
        self.signal = 0

    def __call__(self, signum, frame):
        self.signal = self.signal or signum

    def __enter__(self):
        self.previous = {}
        try:
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self)
        except ValueError:  # not the main thread: Python delivers signals to that one only
            pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def agreed(self, device, step=0) -> int:
        """The signal to stop for (0: go on), the same on every process: one that stops alone
        would leave the others waiting in a collective. Processes agree every AGREE_EVERY steps:
        an all_reduce costs ~80 µs on gloo, 5% of a LeNet step at batch 32."""
        if not dist.is_initialized():
            return self.signal
        if step % self.AGREE_EVERY:
            return 0
        flag = torch.tensor([self.signal], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag)


def batches(images, labels, batch_size, order):
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        yield images[index], labels[index]


def shard(order, rank, world_size):
    """This process's share of ``order``: cut to a multiple of world_size, so that every process
    runs the same number of steps (DDP's collectives need that), then dealt round-robin."""
    return order[:len(order) - len(order) % world_size][rank::world_size]


def all_sum(tensor):
    """Sums a tensor over the processes (identity when not distributed)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


@torch.no_grad()
def evaluate(model, loss_fn, images, labels, order):
    """(sum of the losses, confusion matrix: rows the true class, columns the predicted one) over
    this process's share of the test set."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    confusion = torch.zeros(CLASSES * CLASSES, dtype=torch.float64, device=images.device)
    for input, target in batches(images, labels, EVAL_BATCH_SIZE, order):
        output = model(input)
        loss_sum += loss_fn(output, target, reduction="sum")
        confusion += torch.bincount(target * CLASSES + output.argmax(1), minlength=CLASSES**2)
    return loss_sum, confusion.view(CLASSES, CLASSES)


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
        with StopRequest() as stop:
            status = Run(args, device, rank, world_size).run(stop)
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
    images, labels = load(args.dataset, args.data_path, train, normalize=args.normalize,
                          pad_to=32 if args.model == "lenet" else None,
                          download=args.download and not args.bundled)
    return images.to(device), labels.to(device)


class Run:
    """One training (or evaluation) run: the network, its optimizer, where it stands (epoch, step)
    and everything needed to write and resume it."""

    def __init__(self, args, device, rank, world_size):
        self.args, self.device, self.rank, self.world_size = args, device, rank, world_size
        self.is_main = rank == 0

    def say(self, line, file=None):
        if self.is_main:
            print(line, file=file or sys.stdout, flush=True)

    def run(self, stop) -> int:
        args = self.args
        if args.bundled and not args.eval:
            self.say("lenet_ext.train: training on the real-MNIST sample bundled with the package "
                     "(4,000 training / 1,000 test images); for the full 60,000/10,000-image MNIST, "
                     "add --data-dir DIR (missing files are downloaded there)")
        if not self.load_data():
            return 2
        torch.manual_seed(args.seed)
        self.network = MODELS[args.model][args.backend]().to(self.device)
        self.loss_fn = LOSSES[args.model]
        self.test_order = torch.arange(len(self.test_set[1]), device=self.device)[
            self.rank::self.world_size]  # every image once over the processes
        if args.eval:
            return self.evaluate_only()
        return self.train(stop)

    def load_data(self) -> bool:
        args = self.args
        # Rank 0 loads first, so that only it downloads.
        if self.world_size > 1 and not self.is_main:
            dist.barrier()
        try:
            self.train_set = None if args.eval else load_split(args, True, self.device)
            self.test_set = load_split(args, False, self.device)
        except DataError as error:
            where = "" if args.bundled else f"--data-dir {args.data_path}: "
            self.say(f"lenet_ext.train: error: {where}{error}", file=sys.stderr)
            return False
        finally:
            if self.world_size > 1 and self.is_main:
                dist.barrier()
        return True

    def autocast(self):
        """The forward's precision: torch.autocast to --precision's dtype, or float32 as it is."""
        dtype = PRECISIONS[self.args.precision]
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def test(self):
        """(test loss, test accuracy in %, confusion matrix) over the whole test set, at the
        precision the network trains in."""
        with self.autocast():
            loss_sum, confusion = evaluate(self.network, self.loss_fn, *self.test_set,
                                           self.test_order)
        total = all_sum(torch.cat([loss_sum.view(1), confusion.flatten()]))
        confusion = total[1:].round().long().view(CLASSES, CLASSES)
        count = int(confusion.sum())
        return float(total[0]) / count, 100.0 * int(confusion.trace()) / count, confusion

    def evaluate_only(self) -> int:
        args, saved = self.args, self.args.saved
        try:
            self.network.load_state_dict(saved.get("model", saved))
        except RuntimeError as error:
            reason = [line.strip() for line in str(error).splitlines() if line.strip()][-1]
            self.say(f"lenet_ext.train: error: --eval {args.eval}: not a {args.model} state_dict: "
                     f"{reason}", file=sys.stderr)
            return 2
        loss, accuracy, confusion = self.test()
        epoch = f" epoch={saved['epoch']}" if "epoch" in saved else ""
        self.say(f"eval checkpoint={args.eval} model={args.model} dataset={args.dataset}{epoch} "
                 f"images={int(confusion.sum())} test_loss={loss:.4f} test_acc={accuracy:.2f}")
        self.say(format_confusion(confusion))
        return 0

    def train(self, stop) -> int:
        args, device = self.args, self.device
        network = self.network
        model = torch.compile(network, fullgraph=True) if args.compile else network
        if self.world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = (torch.optim.Adam(network.parameters(), lr=args.lr)
                          if args.optimizer == "adam" else
                          torch.optim.SGD(network.parameters(), lr=args.lr, momentum=0.9))
        # Passes loss and step through unchanged unless fp16 (a disabled scaler is one check).
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
        self.shuffle = torch.Generator().manual_seed(args.seed)  # the same order on every process
        # Where the run stands: epochs done, steps done in the next one and its partial sums.
        self.epoch, self.step, self.history = 0, 0, []
        self.partial = {"loss_sum": 0.0, "seen": 0, "seconds": 0.0}
        if args.saved is not None and args.resume:
            if args.saved["step"] and args.saved["processes"] != self.world_size:
                self.say(f"lenet_ext.train: error: --resume {args.resume}: stopped in the middle of "
                         f"an epoch run by {args.saved['processes']} processes; resume it with as "
                         f"many (now {self.world_size})", file=sys.stderr)
                return 2
            self.restore(args.saved)
        if self.epoch >= args.epochs:
            self.say(f"lenet_ext.train: {args.resume} has all {self.epoch} epochs already; "
                     f"raise --epochs to train on", file=sys.stderr)
            return 0

        while self.epoch < args.epochs:
            # The data order's generator before this epoch's draw: what a mid-epoch checkpoint
            # saves, so that a resumed run draws the same order again and skips the steps done.
            self.epoch_shuffle = self.shuffle.get_state()
            order = shard(torch.randperm(len(self.train_set[1]), generator=self.shuffle),
                          self.rank, self.world_size).to(device)
            signum = self.train_epoch(model, order, stop)
            if signum:
                return self.interrupted(signum, -(-len(order) // args.batch_size))
            self.finish_epoch()
        last = self.history[-1]
        total_images = sum(row["images_per_s"] * row["seconds"] for row in self.history)
        total_seconds = sum(row["seconds"] for row in self.history)
        self.say(f"summary model={args.model} backend={args.backend} dataset={args.dataset} "
                 f"device={device.type} processes={self.world_size} epochs={args.epochs} "
                 f"batch_size={args.batch_size} optimizer={args.optimizer} lr={args.lr:g} "
                 f"precision={args.precision} compile={int(args.compile)} "
                 f"test_acc={last['test_acc']:.2f} "
                 f"images_per_s={total_images / max(total_seconds, 1e-9):.0f} "
                 f"train_seconds={total_seconds:.1f}")
        return 0

    def train_epoch(self, model, order, stop) -> int:
        """Runs the epoch's remaining steps; returns the signal that stopped it, or 0."""
        args, partial = self.args, self.partial
        steps = -(-len(order) // args.batch_size)
        model.train()
        with tqdm(total=len(order) * self.world_size, unit="img", unit_scale=True, leave=False,
                  desc=f"epoch {self.epoch + 1}/{args.epochs}", disable=not self.is_main,
                  initial=min(self.step * args.batch_size, len(order)) * self.world_size) as bar:
            start = time.perf_counter()
            loss_sum, seen, loss = partial["loss_sum"], partial["seen"], None
            signum = stop.agreed(self.device)
            remaining = batches(*self.train_set, args.batch_size, order[self.step * args.batch_size:])
            for input, target in remaining if not signum else ():
                self.optimizer.zero_grad(set_to_none=True)
                with self.autocast():
                    loss = self.loss_fn(model(input), target)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                loss_sum = loss_sum + loss.detach() * len(target)  # on the device: no sync a step
                seen += len(target)
                self.step += 1
                bar.update(len(target) * self.world_size)
                if self.step % 10 == 0:  # .item() waits for the device: not every step
                    bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                signum = stop.agreed(self.device, self.step)
                if signum and self.step < steps:
                    break
            if loss is not None:  # drawn at least once: an epoch can end before tqdm's first redraw
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            partial.update(loss_sum=float(loss_sum), seen=seen,
                           seconds=partial["seconds"] + time.perf_counter() - start)
        return signum if self.step < steps else 0

    def finish_epoch(self):
        args, partial = self.args, self.partial
        loss_sum, seen = all_sum(torch.tensor([partial["loss_sum"], partial["seen"]],
                                              dtype=torch.float64, device=self.device)).tolist()
        # The plain network: eval mode under no_grad would make torch.compile trace a second graph.
        test_loss, accuracy, _ = self.test()
        self.epoch, self.step = self.epoch + 1, 0
        self.partial = {"loss_sum": 0.0, "seen": 0, "seconds": 0.0}
        seconds = partial["seconds"]
        self.history.append({"epoch": self.epoch, "train_loss": loss_sum / seen,
                             "test_loss": test_loss, "test_acc": accuracy,
                             "images_per_s": seen / seconds, "seconds": seconds})
        self.epoch_shuffle = self.shuffle.get_state()
        if args.checkpoint and (self.epoch % args.save_every == 0 or self.epoch == args.epochs):
            self.save()
        self.say(f"epoch={self.epoch}/{args.epochs} train_loss={loss_sum / seen:.4f} "
                 f"test_loss={test_loss:.4f} test_acc={accuracy:.2f} "
                 f"images_per_s={seen / seconds:.0f}")
        if self.is_main and args.metrics_path:
            metrics.write_csv(self.history, args.metrics_path)
            if args.plot:
                metrics.plot(self.history, args.metrics_path.with_suffix(".png"),
                             f"{args.model} on {args.dataset}: "
                             f"{'lenet_ext kernels' if args.backend == 'ext' else 'stock PyTorch'}, "
                             f"{args.optimizer}, lr {args.lr:g}, batch {args.batch_size}")

    def save(self):
        if not self.is_main:  # the processes hold the same parameters: one writes them
            return
        settings = {name: value for name, value in vars(self.args).items()
                    if name not in ("saved", "data_path", "metrics_path", "bundled")}
        checkpoint.save({
            "format": checkpoint.FORMAT,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),  # fp16's loss scale; empty otherwise
            "epoch": self.epoch, "step": self.step, "partial": self.partial,
            "processes": self.world_size,
            "random": checkpoint.random_state(self.epoch_shuffle, self.device),
            "history": self.history,
            "args": settings,
        }, self.args.checkpoint)

    def restore(self, saved):
        self.network.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        self.epoch, self.step = saved["epoch"], saved["step"]
        self.partial, self.history = dict(saved["partial"]), list(saved["history"])
        checkpoint.set_random_state(saved["random"], self.shuffle, self.device)
        if self.is_main and self.args.metrics_path:  # drops epochs done after this checkpoint
            metrics.write_csv(self.history, self.args.metrics_path)

    def interrupted(self, signum, steps) -> int:
        where = f"in epoch {self.epoch + 1} after step {self.step} of {steps}"
        name = signal.Signals(signum).name
        if self.args.checkpoint:
            self.save()
            launcher = (PROG if self.world_size == 1 else
                        f"torchrun --nproc_per_node={self.world_size} -m lenet_ext.train")
            self.say(f"lenet_ext.train: stopped by {name} {where}; saved {self.args.checkpoint}; "
                     f"continue with: {launcher} --resume {self.args.checkpoint}", file=sys.stderr)
        else:
            self.say(f"lenet_ext.train: stopped by {name} {where}; nothing saved (--checkpoint PATH "
                     f"keeps a run's progress)", file=sys.stderr)
        return 128 + signum


def format_confusion(confusion) -> str:
    """The confusion matrix as a table: a row per true class, a column per predicted one, and each
    class's accuracy."""
    width = max(5, len(str(int(confusion.max()))) + 1)
    lines = ["true\\pred" + "".join(f"{c:>{width}}" for c in range(CLASSES)) + "   acc %"]
    for c, row in enumerate(confusion.tolist()):
        total = sum(row)
        accuracy = f"{100.0 * row[c] / total:8.1f}" if total else "       -"
        lines.append(f"{c:>9}" + "".join(f"{n:>{width}}" for n in row) + accuracy)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
