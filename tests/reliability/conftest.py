"""Fixtures of the reliability suite: real servers, real processes, real faults.

Faults are injected into servers and processes of each test's own: a
``redis-server`` with an append-only file on a free port (never the suite's
shared one), worker and relay processes in sessions of their own. The
history of a run is kept on the suite's shared Redis, which no test faults.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from redis import Redis

from ..conftest import missing_server
from ..servers import RedisServer, find_redis_server
from .app import create_app
from .harness import Processes
from .history import History

#: Every acknowledged write on disk before the reply: a restart loses nothing.
AOF = ("--appendonly", "yes", "--appendfsync", "always")


def pytest_configure(config: pytest.Config) -> None:
    # Lets the marker work under --strict-markers before pyproject lists it.
    config.addinivalue_line(
        "markers", "reliability: injects real faults into real servers (slow)"
    )


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, persisting every write (AOF always)."""
    if find_redis_server() is None:
        missing_server("redis-server is not installed")
    directory = tmp_path / "redis"
    directory.mkdir()
    with RedisServer(directory, *AOF) as server:
        yield server


@pytest.fixture
def history(real_redis_url: str) -> Iterator[History]:
    """The run's history, on the suite's Redis (flushed for each test)."""
    client = Redis.from_url(real_redis_url)
    try:
        yield History(client)
    finally:
        client.close()


@pytest.fixture
def make_rel_app(
    postgres_url: str,
    real_redis_url: str,
    fresh_tables: Callable[[Flask], Flask],
) -> Callable[..., Flask]:
    """Build the reliability app on PostgreSQL, with fresh tables.

    ``redis_url`` defaults to the suite's Redis; the tables are dropped after
    the test.
    """

    def make(redis_url: str | None = None, **config: Any) -> Flask:
        return fresh_tables(
            create_app(
                SQLALCHEMY_DATABASE_URI=postgres_url,
                MESSAGING_REDIS_URL=redis_url or real_redis_url,
                **config,
            )
        )

    return make


@pytest.fixture
def processes(
    tmp_path: Path, postgres_url: str, real_redis_url: str
) -> Iterator[Processes]:
    """Start ``flask messaging`` workers and relays of the reliability app.

    Their Redis is the suite's unless the test sets
    ``processes.env["MESSAGING_REDIS_URL"]``; every process is stopped after.
    """
    group = Processes(
        tmp_path,
        {
            "DATABASE_URL": postgres_url,
            "MESSAGING_REDIS_URL": real_redis_url,
            "HISTORY_REDIS_URL": real_redis_url,
        },
    )
    try:
        yield group
    finally:
        group.stop_all()
