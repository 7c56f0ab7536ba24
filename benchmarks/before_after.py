"""Did a change cost speed? Builds two revisions of this repository side by side and runs the op
and LeNet benchmarks of each in alternation (before, after, after, before), so that both see the
same machine; then prints stock/ours before -> after for every row, and, as the noise to read it
against, the same table for the two runs of the unchanged revision.

    python benchmarks/before_after.py BEFORE_REV [AFTER_REV] [--out DIR] [--min-run-time S]
                                      [--only NAME ...]

AFTER_REV defaults to the working tree as it is (uncommitted changes included). Each revision is
built in place in a temporary copy (about a minute each); DIR receives one folder per run with the
benchmarks' JSON and Markdown, and before_after.md with the tables.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
if any((CHECKOUT / "lenet_ext").glob("_C*")):  # this checkout's in-place build wins over an installed one
    sys.path.insert(0, str(CHECKOUT))

from lenet_ext import bench  # noqa: E402

BENCHMARKS = {"bench_ops.py": bench.op_pairs, "bench_lenet.py": bench.lenet_pairs}
ORDER = ("before", "after", "after", "before")  # ABBA: a drift in the machine's speed cancels


def copy_of(rev, into: Path) -> Path:
    """The tree of ``rev`` (None: the working tree, uncommitted changes included) in ``into``."""
    into.mkdir(parents=True)
    if rev is None:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=CHECKOUT,
                               capture_output=True, text=True, check=True).stdout.split()
        for name in files:
            if (CHECKOUT / name).is_file():
                (into / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(CHECKOUT / name, into / name)
    else:
        archive = subprocess.run(["git", "archive", rev], cwd=CHECKOUT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def build(tree: Path, label: str) -> None:
    print(f"before_after: building {label} in {tree}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree,
                   check=True, stdout=subprocess.DEVNULL)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/before_after.py", description=__doc__.split("\n")[0])
    parser.add_argument("before", help="git revision before the change")
    parser.add_argument("after", nargs="?", default=None,
                        help="git revision after it (default: the working tree)")
    parser.add_argument("--out", type=Path, default=Path("before_after"), metavar="DIR")
    parser.add_argument("--min-run-time", default="0.5", metavar="SECONDS")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as scratch:
        trees = {"before": copy_of(args.before, Path(scratch) / "before"),
                 "after": copy_of(args.after, Path(scratch) / "after")}
        for label, tree in trees.items():
            build(tree, label)
        runs = {}
        for round_, label in enumerate(ORDER, 1):
            for script, pairs in BENCHMARKS.items():
                out = args.out / f"{round_}-{label}"
                command = [sys.executable, str(trees[label] / "benchmarks" / script),
                           "--min-run-time", args.min_run_time, "--out", str(out)]
                if args.only:
                    names = sorted({pair.name for pair in pairs([1], "cpu")} & set(args.only))
                    if not names:
                        continue
                    command += ["--only", *names]
                print(f"before_after: round {round_}/{len(ORDER)}: {label}: {script}",
                      file=sys.stderr, flush=True)
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            runs.setdefault(label, []).append(rows_of(out))

    sections = [f"# {args.before} -> {args.after or 'working tree'}\n",
                "## Before (rounds 1 and 4) -> after (rounds 2 and 3), medians of the two runs\n",
                bench.before_after_table(median_rows(runs["before"]), median_rows(runs["after"])),
                "\n## Noise: the unchanged revision, round 1 -> round 4\n",
                bench.before_after_table(*runs["before"])]
    text = "\n".join(sections) + "\n"
    (args.out / "before_after.md").write_text(text)
    print(text)
    return 0


def rows_of(folder: Path):
    return [row for path in sorted(folder.glob("*.json"))
            for row in json.loads(path.read_text())["rows"]]


def median_rows(runs):
    """Row by row, the run whose ratio is the lower of two (for two runs, the conservative median)."""
    merged = []
    for rows in zip(*runs):
        merged.append(min(rows, key=lambda row: row["stock_over_ours"]))
    return merged


if __name__ == "__main__":
    sys.exit(main())
