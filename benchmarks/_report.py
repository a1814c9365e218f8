"""The results: a table for the terminal, and the one on the docs page."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ._support import Row, median_text, spread

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"

#: Whose versions move the figures: distribution name, and how to show it.
PACKAGES = [
    ("rq", "rq"),
    ("redis", "redis-py"),
    ("hiredis", "hiredis"),
    ("msgspec", "msgspec"),
    ("SQLAlchemy", "SQLAlchemy"),
    ("blinker", "blinker"),
    ("Flask-RQ", "Flask-RQ"),
    ("dramatiq", "Dramatiq"),
    ("celery", "Celery"),
]


def environment(repeat: int) -> str:
    """One line: what ran, on what, when, and how many times."""
    versions = [
        f"Python {platform.python_version()}",
        f"redis-server {_redis_server_version()}",
    ]
    for name, shown in PACKAGES:
        try:
            versions.append(f"{shown} {version(name)}")
        except PackageNotFoundError:
            versions.append(f"{shown} not installed")
    return (
        f"{', '.join(versions)}; {platform.machine()}, {os.cpu_count()} CPUs"
        f" ({_cpu_model()}); {datetime.date.today().isoformat()};"
        f" medians of {repeat} repetition{'s' if repeat != 1 else ''}"
    )


def _redis_server_version() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "not found"
    output = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False
    ).stdout
    found = re.search(r"v=(\S+)", output)
    return found.group(1) if found else output.strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cells(row: Row) -> tuple[str, str, str, str, str, str]:
    """What both tables show of a row, before its target."""
    return (
        row.name,
        row.anchor_name,
        median_text(row.anchor),
        median_text(row.ours),
        row.unit,
        _ratio(row),
    )


def _ratio(row: Row) -> str:
    return "-" if row.ratio is None else f"{row.ratio:.2f}x"


def print_table(rows: list[Row]) -> None:
    """Medians, with each side's spread (min-max) on the line below."""
    lines: list[tuple[str, ...]] = [
        ("benchmark", "anchor", "anchor", "ours", "unit", "ratio", "target")
    ]
    for row in rows:
        target = f"{row.target_text()} {row.result_text()}" if row.target else "-"
        lines.append((*_cells(row), target))
        lines.append(("", "spread", spread(row.anchor), spread(row.ours), "", "", ""))
    widths = [max(len(line[i]) for line in lines) for i in range(7)]
    for index, line in enumerate(lines):
        cells = [
            cell.ljust(width) if i in (0, 1, 6) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if index == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))


def markdown(rows: list[Row], environment: str) -> str:
    lines = [
        "| benchmark | anchor | anchor median | ours median | unit | ratio"
        " | target | result |",
        "|---|---|--:|--:|---|--:|---|---|",
    ]
    for row in rows:
        cells = [*_cells(row), row.target_text(), row.result_text().lower()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", environment + "."])


def write_docs(rows: list[Row], environment: str, path: Path = DOCS) -> None:
    """Replace the table between the markers on the docs page."""
    text = path.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(
            f"{path} has no results markers: put {START} and {END}, each on its"
            " own line, where the table goes."
        )
    table = markdown(rows, environment)
    path.write_text(f"{text[: start + len(START)]}\n{table}\n{text[end:]}")
