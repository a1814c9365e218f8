"""Shared helpers: timing, a private redis-server, result rows."""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from redis import Redis


@dataclass
class Row:
    """One benchmark row: a measurement per repetition, anchor and ours.

    Rates (higher is better) by default; latencies set ``lower_is_better``.
    ``ratio`` is ours over the anchor either way, and ``target`` bounds it
    from below for rates, from above for latencies.
    """

    name: str
    unit: str
    anchor_name: str
    anchor: list[float]
    ours: list[float]
    target: float | None = None
    lower_is_better: bool = False

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours) / statistics.median(self.anchor)

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        if self.lower_is_better:
            return self.ratio <= self.target
        return self.ratio >= self.target

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        sign = "<=" if self.lower_is_better else ">="
        return f"{sign}{self.target:g}x {'met' if self.met else 'MISSED'}"


def rate(count: int, run: Callable[[], object]) -> float:
    """Operations per second of ``run``, which performs ``count`` of them."""
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def spread(values: list[float]) -> str:
    return f"{number(min(values))}-{number(max(values))}"


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
