"""Run the benchmarks: ``python -m benchmarks [--repeat N] [NAME ...]``."""

from __future__ import annotations

import argparse
import platform
import statistics
from importlib import import_module
from importlib.metadata import version

from ._support import Row, number, spread

BENCHMARKS = ["codec", "worker_drain", "transactions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(BENCHMARKS)}")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(
        f"Python {platform.python_version()}, rq {version('rq')},"
        f" msgspec {version('msgspec')}, {platform.machine()},"
        f" medians of {args.repeat} runs"
    )
    rows: list[Row] = []
    for name in args.names or BENCHMARKS:
        rows.extend(import_module(f"benchmarks.{name}").run(args.repeat))
    header = (
        f"{'benchmark':52} {'anchor':30} {'anchor':>11} {'ours':>11} {'unit':>9}"
        f" {'ratio':>7}  target"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        anchor, ours = statistics.median(row.anchor), statistics.median(row.ours)
        print(
            f"{row.name:52} {row.anchor_name:30} {number(anchor):>11}"
            f" {number(ours):>11} {row.unit:>9} {row.ratio:>6.2f}x  {row.target_text()}"
        )
        print(f"{'':52} {'spread':30} {spread(row.anchor):>11} {spread(row.ours):>11}")


if __name__ == "__main__":
    main()
