"""Two benchmark runs side by side: stock/ours before -> after, per op, mode and batch size.

    python benchmarks/compare.py BEFORE.json AFTER.json
"""
import json
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
if any((CHECKOUT / "lenet_ext").glob("_C*")):  # this checkout's in-place build wins over an installed one
    sys.path.insert(0, str(CHECKOUT))

from lenet_ext import bench  # noqa: E402


def main(argv=None) -> int:
    before, after = (json.loads(Path(p).read_text())["rows"] for p in (argv or sys.argv[1:]))
    print(bench.before_after_table(before, after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
