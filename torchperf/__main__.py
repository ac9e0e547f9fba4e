"""python -m torchperf compare TAG_A TAG_B [--threshold 0.05] [--alpha 0.05] [--out DIR]

Exit status: 0 when no cell is slower, 1 when any is, 2 for bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torchperf.errors import ConfigError, fail


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m torchperf")
    commands = main.add_subparsers(dest="command", required=True)
    compare = commands.add_parser(
        "compare", help="compare sweep B against sweep A, cell by cell (B / A)"
    )
    compare.add_argument("tag_a", help="the reference sweep's tag")
    compare.add_argument("tag_b", help="the sweep to judge")
    compare.add_argument(
        "--threshold",
        type=float,
        default=0.05,
        help="smallest change that counts, as a share (default 0.05: 5 %%)",
    )
    compare.add_argument(
        "--alpha", type=float, default=0.05, help="significance level (default 0.05)"
    )
    compare.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for compare.json and compare.html (default: comparisons/A_vs_B/)",
    )
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from torchperf import compare

    try:
        return compare.run(
            args.tag_a, args.tag_b, threshold=args.threshold, alpha=args.alpha, out=args.out
        )
    except ConfigError as error:
        fail(error)
    return 2  # not reached: fail exits


if __name__ == "__main__":
    sys.exit(main())
