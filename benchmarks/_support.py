"""Shared helpers: timing, a private redis-server and database, result rows."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from redis import Redis

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
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        if not connection.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = 'flask_messaging_bench'")
        ).scalar():
            connection.execute(sa.text("CREATE DATABASE flask_messaging_bench"))
    admin.dispose()
    return (
        sa.engine.make_url(ADMIN_URL)
        .set(database="flask_messaging_bench")
        .render_as_string(hide_password=False)
    )


@contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on a free port (never anyone else's data)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("These benchmarks need redis-server on the PATH.")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
            ],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        client = Redis.from_url(url)
        try:
            for _ in range(500):
                try:
                    client.ping()
                    break
                except Exception:
                    time.sleep(0.01)
            yield url
        finally:
            client.close()
            process.terminate()
            process.wait()
