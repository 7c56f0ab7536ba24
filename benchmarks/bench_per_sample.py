"""Per-sample gradients of LeNet, ours (lenet_ext.models.LeNet, through the ops' vmap batching rules)
against stock (StockLeNet), the same weights and images, in one process: torch.func's
vmap(grad(loss)) over functional_call, one gradient of every parameter per image. The results are
checked equal first (bench.measure), then timed in alternating rounds. functorch's per-sample
fallback warning is an error here: a rule that falls back would be timed, not the rules.

    python benchmarks/bench_per_sample.py [--batch 64] [--min-run-time S] [--quick] [--out DIR]
"""
import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from torch.func import functional_call, grad, vmap

CHECKOUT = Path(__file__).resolve().parents[1]
if any((CHECKOUT / "lenet_ext").glob("_C*")):  # this checkout's in-place build wins
    sys.path.insert(0, str(CHECKOUT))

from lenet_ext import bench  # noqa: E402
from lenet_ext.checkpoint import write_atomically  # noqa: E402


def per_sample_gradients(net, params, images, labels):
    """Callable: every parameter's gradient of the cross-entropy of each image alone."""
    def loss(params, image, label):
        logits = functional_call(net, params, (image.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(logits, label.unsqueeze(0))
    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    return lambda: tuple(per_sample(params, images, labels).values())


def per_sample_pair(batch: int) -> bench.Pair:
    ours_net, stock_net = bench.lenet_twins("cpu")
    params = {name: p.detach() for name, p in stock_net.named_parameters()}
    images, labels = torch.randn(batch, 1, 32, 32), torch.randint(10, (batch,))
    return bench.Pair("LeNet per-sample gradients", "vmap(grad)", batch, "1x32x32 -> 10",
                      per_sample_gradients(ours_net, params, images, labels),
                      per_sample_gradients(stock_net, params, images, labels),
                      tuple(f"grad {name}" for name in params), batch, "img/s",
                      redraw=lambda: per_sample_pair(batch))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-run-time", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 0.2 s a row, no timing claims")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR")
    args = parser.parse_args(argv)
    warnings.filterwarnings("error", "There is a performance drop", UserWarning)
    bench.prepare("cpu", args.threads)
    env = bench.environment("cpu", args.threads, " ".join(["python"] + sys.argv))
    min_run_time = 0.2 if args.quick else args.min_run_time
    header = ("| per-sample gradients | batch | ours | stock | stock / ours |\n"
              "|:--|--:|--:|--:|--:|")
    print(f"{bench.describe(env)}\n\n{header}", flush=True)
    rows, lines = [], []
    for batch in args.batch:
        row = bench.measure(per_sample_pair(batch), min_run_time)
        rows.append(row)
        lines.append(f"| LeNet, vmap(grad) | {batch} | {bench.format_time(row.ours)} "
                     f"({bench.format_rate(row.rate(row.ours), row.unit)}) | "
                     f"{bench.format_time(row.stock)} "
                     f"({bench.format_rate(row.rate(row.stock), row.unit)}) | "
                     f"{bench.format_ratio(row.ratios)} |")
        print(lines[-1], flush=True)
    note = bench.unstable_note(rows)
    if note:
        print(note)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        text = (f"### Per-sample gradients: lenet_ext LeNet vs stock\n\n{bench.describe(env)}\n\n"
                f"`{env['command']}`\n\nStock time / our time (above 1: ours is faster), the median "
                f"of {bench.ROUNDS} alternating rounds with the rounds' quartiles.\n\n{header}\n"
                + "\n".join(lines) + "\n" + (f"\n{note}\n" if note else ""))
        write_atomically(args.out / "per_sample.md", lambda f: f.write(text.encode()))
        write_atomically(args.out / "per_sample.json", lambda f: f.write(json.dumps(
            {"environment": env, "quick": args.quick, "rows": [r.as_dict() for r in rows]},
            indent=1).encode()))
        print(f"wrote {args.out / 'per_sample.md'}, {args.out / 'per_sample.json'}")


if __name__ == "__main__":
    main()
