"""Mutation check of the emulated CUDA suite: plants one bug at a time in a copy of csrc/cuda,
rebuilds the emulated-CUDA extension (LENET_EXT_CUDA=emulated: the .cu kernels run on the CPU by
HIP-CPU) and runs the op tests that cover that file. A mutation is caught when a test fails.

    python tests/cuda_mutations.py [--only NAME ...] [--out table.md]

Prints a markdown table (mutation, class, caught or not, the first failing test) and exits 1 if a
mutation came out otherwise than expected (caught, or missed for a stated reason). Each mutation costs an incremental rebuild (~20-60 s) and
the tests up to the first failure; a missed one runs its tests to the end (a few minutes).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
OP_TESTS = {
    "relu": ["tests/test_relu.py"],
    "linear": ["tests/test_linear.py"],
    "conv2d": ["tests/test_conv2d.py"],
    "max_pool2d": ["tests/test_max_pool2d.py"],
}


@dataclass
class Mutation:
    name: str
    kind: str  # the class of bug
    path: str  # under csrc/cuda
    old: str  # replaced once; must occur exactly once
    new: str
    tests: list
    expect_caught: Optional[bool] = True  # None: caught or not by chance
    why_missed: str = ""  # why the emulator cannot (reliably) see it, and what would


MUTATIONS = [
    Mutation("gemm: no barrier after the tile loads", "missing __syncthreads", "linear.cu",
             "    load_tile(b_tile, b, k0, col0);\n    __syncthreads();\n",
             "    load_tile(b_tile, b, k0, col0);\n", OP_TESTS["linear"]),
    Mutation("gemm: no barrier before the next tile's loads", "missing __syncthreads", "linear.cu",
             "b_tile[k][threadIdx.x];\n    __syncthreads();\n", "b_tile[k][threadIdx.x];\n",
             OP_TESTS["linear"]),
    Mutation("block_sum: no barrier before reading the warp totals", "missing __syncthreads",
             "common.cuh", "warp_totals[threadIdx.x / kWarp] = value;\n  __syncthreads();\n",
             "warp_totals[threadIdx.x / kWarp] = value;\n", OP_TESTS["linear"] + OP_TESTS["conv2d"]),
    Mutation("block_sum: last butterfly step dropped", "dropped final reduction step", "common.cuh",
             "mask > 0; mask /= 2", "mask > 1; mask /= 2", OP_TESTS["linear"]),
    Mutation("max_pool2d: ties keep the last cell", "wrong tie rule", "max_pool2d.cu",
             "if (value > max_value || isnan(value))", "if (value >= max_value || isnan(value))",
             OP_TESTS["max_pool2d"]),
    Mutation("max_pool2d: NaN does not win", "wrong NaN rule", "max_pool2d.cu",
             "if (value > max_value || isnan(value))", "if (value > max_value)",
             OP_TESTS["max_pool2d"]),
    Mutation("max_pool2d backward: HIP-CPU's own 32-wide __shfl", "warp semantics",
             "max_pool2d.cu", "__shfl_sync(kAllLanes, target, other)",
             "__shfl(target, other, kWarp)", OP_TESTS["max_pool2d"]),
    Mutation("conv2d forward: padding bound off by one", "off-by-one bound", "conv2d.cu",
             "row_inside && iw >= 0 && iw < s.in_w", "row_inside && iw >= 0 && iw <= s.in_w",
             OP_TESTS["conv2d"]),
    Mutation("conv2d grad_input: output bound off by one", "off-by-one bound", "conv2d.cu",
             "if (ow >= s.out_w) continue;", "if (ow > s.out_w) continue;", OP_TESTS["conv2d"]),
    Mutation("relu backward: gradient passes at 0", "wrong comparison", "relu.cu",
             "result[i] <= scalar_t(0)", "result[i] < scalar_t(0)", OP_TESTS["relu"]),
    Mutation("max_pool2d backward: no barrier after zeroing", "missing __syncwarp",
             "max_pool2d.cu", "    __syncwarp();  // orders the zeroing", "    // orders the zeroing",
             OP_TESTS["max_pool2d"], expect_caught=False,
             why_missed="the shuffles that follow are block-wide barriers under HIP-CPU, and fibers "
                        "run one at a time, so the zeroing is always done first; a GPU orders the "
                        "lanes' stores only with the barrier: compute-sanitizer racecheck"),
    Mutation("gemm: loads read one column past k", "out-of-bounds read", "linear.cu",
             "tile[r][c] = row < view.rows && col < view.cols",
             "tile[r][c] = row < view.rows && col <= view.cols", OP_TESTS["linear"],
             expect_caught=None,
             why_missed="a read past the matrix, multiplied by a zero of the other tile: the sums "
                        "change only if the stray memory holds inf or NaN, so a catch is luck; "
                        "compute-sanitizer memcheck (or an ASan build) reports the read itself"),
]


def run(command, cwd, log, timeout=None, env=None):
    with open(log, "w") as out:
        return subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout, env=env).returncode


def build(work, log):
    env = dict(os.environ, LENET_EXT_CUDA="emulated", MAX_JOBS="2")
    return run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], work, log, env=env)


def first_failure(log):
    for line in Path(log).read_text().splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" ", 1)[1].split(" - ")[0]
    return ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="mutations whose name contains")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    mutations = [m for m in MUTATIONS
                 if not args.only or any(part in m.name for part in args.only)]

    work = Path(tempfile.mkdtemp(prefix="lenet_ext_mutations_"))
    try:
        for item in ("setup.py", "pyproject.toml", "csrc", "lenet_ext", "tests", "third_party"):
            copy = shutil.copytree if (ROOT / item).is_dir() else shutil.copy2
            copy(ROOT / item, work / item)
        for library in (work / "lenet_ext").glob("_C*.so"):
            library.unlink()
        print(f"building the emulated-CUDA extension in {work} ...", flush=True)
        if build(work, work / "build.log") != 0:
            sys.exit(f"the unmutated build failed: see {work / 'build.log'}")

        rows, surprises = [], 0
        for number, mutation in enumerate(mutations, 1):
            source = work / "csrc" / "cuda" / mutation.path
            original = source.read_text()
            assert original.count(mutation.old) == 1, f"{mutation.name}: text not found once"
            source.write_text(original.replace(mutation.old, mutation.new))
            start = time.monotonic()
            log = work / f"mutation-{number}.log"
            try:
                if build(work, log) != 0:
                    verdict, failing = "does not compile", ""
                else:
                    status = run([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                                  "no:cacheprovider", *mutation.tests], work, log, timeout=1800)
                    verdict = "caught" if status != 0 else "missed"
                    failing = first_failure(log)
            finally:
                source.write_text(original)
            expected = {True: "caught", False: "missed", None: verdict}[mutation.expect_caught]
            surprises += verdict != expected
            note = "; ".join(filter(None, [failing, mutation.why_missed]))
            rows.append(f"| {mutation.name} | {mutation.kind} | **{verdict}** | {note} |")
            print(f"[{number}/{len(mutations)}] {verdict:>8} ({time.monotonic() - start:.0f} s) "
                  f"{mutation.name}", flush=True)

        table = "\n".join(["| mutation | class | emulated suite | first failing test, or why "
                           "it is missed and what catches it |", "|:--|:--|:--|:--|", *rows])
        print("\n" + table)
        if args.out:
            args.out.write_text(table + "\n")
        return 1 if surprises else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
