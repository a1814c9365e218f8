"""Run the benchmarks and print the results; ``--write-docs`` puts them in the docs.

``python -m benchmarks [NAME ...] [--repeat N] [--write-docs]``
"""

from __future__ import annotations

import argparse
from importlib import import_module

from ._report import DOCS, environment, print_table, write_docs
from ._support import Row

BENCHMARKS = [
    "codec",
    "publish",
    "batch",
    "worker_drain",
    "concurrency",
    "transactions",
]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(BENCHMARKS)}")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help=f"replace the results table in {DOCS.name} (needs the full run)",
    )
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}")
    if args.write_docs and args.names and set(args.names) != set(BENCHMARKS):
        # The page shows one run on one machine: never a mix of two.
        parser.error("--write-docs replaces the whole table: name no benchmarks")
    about = environment(args.repeat)
    print(about)
    rows: list[Row] = []
    for name in args.names or BENCHMARKS:
        rows.extend(import_module(f"benchmarks.{name}").run(args.repeat))
    print_table(rows)
    if args.write_docs:
        write_docs(rows, about)
        print(f"Wrote the results table to {DOCS}.")


if __name__ == "__main__":
    main()
