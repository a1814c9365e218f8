"""Shared helpers: timing, a private redis-server and database, result rows."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.servers import find_redis_server, postgres_database, temporary_redis_server

ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@dataclass
class Row:
    """One benchmark row: a measurement per repetition, anchor and ours.

    Rates (higher is better) by default; latencies set ``lower_is_better``.
    ``ratio`` is ours over the anchor either way, and ``target`` bounds it
    from below for rates, from above for latencies. A row with no anchor
    (an empty ``anchor``) has no ratio and no target: it shows a figure.
    """

    name: str
    unit: str
    anchor_name: str
    anchor: list[float]
    ours: list[float]
    target: float | None = None
    lower_is_better: bool = False

    @property
    def ratio(self) -> float | None:
        if not self.anchor:
            return None
        return statistics.median(self.ours) / statistics.median(self.anchor)

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        if self.target is None or ratio is None:
            return None
        if self.lower_is_better:
            return ratio <= self.target
        return ratio >= self.target

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        sign = "<=" if self.lower_is_better else ">="
        return f"{sign}{self.target:g}x"

    def result_text(self) -> str:
        return {None: "-", True: "met", False: "MISSED"}[self.met]


def rate(count: int, run: Callable[[], object]) -> float:
    """Operations per second of ``run``, which performs ``count`` of them."""
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{number(min(values))}-{number(max(values))}"


def median_text(values: list[float]) -> str:
    return number(statistics.median(values)) if values else "-"


def database_url() -> str:
    """``BENCH_DATABASE_URL``, else ``flask_messaging_bench`` on the local server.

    That database is created if missing: the benchmarks drop their tables, so
    they never run on a database in use.
    """
    url = os.environ.get("BENCH_DATABASE_URL")
    if url:
        return url
    return postgres_database(ADMIN_URL, "flask_messaging_bench")


@contextmanager
def redis_server() -> Iterator[str]:
    """The URL of a private redis-server on a free port (never anyone else's data)."""
    if find_redis_server() is None:
        raise SystemExit("These benchmarks need redis-server on the PATH.")
    with temporary_redis_server() as server:
        yield server.url
