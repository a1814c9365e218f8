"""Shared helpers: timing, a private redis-server and database, result rows,
and running a worker subprocess until it has drained its queue."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from redis import Redis

from tests.servers import find_redis_server, postgres_database, temporary_redis_server

from .stamps import STAMPS

#: The repository root: worker subprocesses run there, to import ``benchmarks``.
ROOT = Path(__file__).resolve().parent.parent

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


#: Seconds a worker may go without finishing a job before it is taken to be
#: stuck (start-up included).
STALL_TIMEOUT = 60.0


def worker_env(redis_url: str) -> dict[str, str]:
    """The environment of a worker subprocess: ours, plus where to find
    ``benchmarks`` and the private Redis (``BENCH_REDIS_URL``)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "BENCH_REDIS_URL": redis_url}


def drain_rate(name: str, command: Sequence[str], redis_url: str, count: int) -> float:
    """Run the worker ``command`` over ``count`` queued jobs; return jobs/s.

    The jobs (:mod:`benchmarks.stamps`) must already be queued. The worker
    runs until every job has pushed its stamp, then gets SIGTERM. The rate is
    ``count / (last end - first start)`` over the stamps, so the worker's
    start-up is not counted. Afterwards the private server is flushed.

    :param name: the system, for error messages.
    :raises RuntimeError: the worker exited early or stalled, or a job is
        missing or ran twice; the message ends with the worker's output.
    """
    env = worker_env(redis_url)
    with tempfile.TemporaryFile() as log, Redis.from_url(redis_url) as redis:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            _wait_for_stamps(name, process, redis, count, log)
        finally:
            _stop(process)
        stamps = [line.split() for line in redis.lrange(STAMPS, 0, -1)]
        ids = sorted(int(n) for n, _, _ in stamps)
        if ids != list(range(count)):
            missing = len(set(range(count)) - set(ids))
            raise RuntimeError(
                f"{name}: {len(ids)} jobs ran for {count} queued ({missing} missing,"
                f" {len(ids) - len(set(ids))} ran twice, {sum(n >= count for n in ids)}"
                f" not queued by this run).{_tail(log)}"
            )
        redis.flushdb()
    first_start = min(float(start) for _, start, _ in stamps)
    last_end = max(float(end) for _, _, end in stamps)
    return count / (last_end - first_start)


def _wait_for_stamps(
    name: str,
    process: subprocess.Popen[bytes],
    redis: Redis,
    count: int,
    log: IO[bytes],
) -> None:
    done, progress_at = 0, time.monotonic()
    while done < count:
        time.sleep(0.05)
        if process.poll() is not None:
            raise RuntimeError(
                f"{name}'s worker exited with status {process.returncode} after"
                f" {done} of {count} jobs.{_tail(log)}"
            )
        now_done = int(redis.llen(STAMPS))
        if now_done > done:
            done, progress_at = now_done, time.monotonic()
        elif time.monotonic() - progress_at > STALL_TIMEOUT:
            raise RuntimeError(
                f"{name}'s worker finished no job for {STALL_TIMEOUT:g} s, after"
                f" {done} of {count}.{_tail(log)}"
            )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a warm shutdown on every system here), then SIGKILL if stuck."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(log: IO[bytes], size: int = 3000) -> str:
    log.seek(0)
    text = log.read().decode(errors="replace")[-size:].strip()
    return f" Its output ends with:\n{text}" if text else ""
