"""python -m torchperf compare TAG_A TAG_B [--threshold 0.05] [--alpha 0.05] [--out DIR]
python -m torchperf clean TAG [--namespace NS]

compare's exit status: 0 when no cell is slower, 1 when any is; clean's: 0 when everything the
sweep left is gone, 1 when something could not be removed. 2 for bad input (one line on stderr).
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
    clean = commands.add_parser(
        "clean",
        help="delete what an Argo sweep left on the cluster: its WorkflowTemplates, Sensor, "
        "Workflows (their pods with them) and ConfigMaps",
    )
    clean.add_argument("tag", help="the sweep's tag")
    clean.add_argument(
        "--namespace",
        default=None,
        help="the sweep's namespace (default: METAFLOW_KUBERNETES_NAMESPACE, else default)",
    )
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "clean":
            from torchperf.backends.argo.clean import run

            return run(args.tag, namespace=args.namespace)
        from torchperf import compare

        return compare.run(
            args.tag_a, args.tag_b, threshold=args.threshold, alpha=args.alpha, out=args.out
        )
    except ConfigError as error:
        fail(error)
    except KeyboardInterrupt:
        return 130
    return 2  # not reached: fail exits


if __name__ == "__main__":
    sys.exit(main())
