"""Run the benchmarks: ``python -m benchmarks [--repeat N] [NAME ...]``."""

from __future__ import annotations

import argparse
import platform
import statistics
from importlib import import_module
from importlib.metadata import version

from ._support import Row, spread

BENCHMARKS = ["codec", "worker_drain"]


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
        f"{'benchmark':52} {'anchor':28} {'anchor/s':>12} {'ours/s':>12}"
        f" {'ratio':>7}  target"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        target = (
            "-"
            if row.target is None
            else (f">={row.target:g}x {'met' if row.met else 'MISSED'}")
        )
        anchor, ours = statistics.median(row.anchor), statistics.median(row.ours)
        print(
            f"{row.name:52} {row.anchor_name:28} {anchor:>12,.0f} {ours:>12,.0f}"
            f" {row.ratio:>6.2f}x  {target}"
        )
        print(f"{'':52} {'spread':28} {spread(row.anchor):>12} {spread(row.ours):>12}")


if __name__ == "__main__":
    main()
