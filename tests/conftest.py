"""Fixtures: a real Redis server of the suite's own, and apps wired to it.

The suite starts ``redis-server`` on a free port (or uses
``MESSAGING_TEST_REDIS_URL``, a database it may flush). Without either it falls
back to the embedded ``memory://`` stand-in and skips what needs a server,
unless ``MESSAGING_TEST_REQUIRE_SERVERS=1`` (set by CI) turns that into a
failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from redis import Redis

from flask_messaging import Messaging
from flask_messaging.state import get_state

from . import tx_app
from .app_factory import build_app
from .servers import (
    RedisServer,
    find_redis_server,
    postgres_database,
    temporary_redis_server,
)

REQUIRE_SERVERS = os.environ.get("MESSAGING_TEST_REQUIRE_SERVERS") == "1"
ROOT = Path(__file__).resolve().parent.parent


def flask_messaging_command(
    app: str, *args: str, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen[str]:
    """Start ``flask --app APP messaging ARGS`` in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", app, "messaging", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        text=True,
        **popen,
    )


def missing_server(reason: str) -> None:
    """Skip, or fail where the real servers are required."""
    if REQUIRE_SERVERS:
        pytest.fail(f"{reason} (MESSAGING_TEST_REQUIRE_SERVERS=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str | None]:
    """The URL of a real Redis the suite may flush, or None."""
    url = os.environ.get("MESSAGING_TEST_REDIS_URL")
    if url:
        yield url
        return
    if find_redis_server() is None:
        yield None
        return
    with temporary_redis_server() as server:
        yield server.url


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop and start."""
    if find_redis_server() is None:
        missing_server("redis-server is not installed")
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
def real_redis_url(redis_server_url: str | None) -> str:
    """A real, empty Redis; skips (or fails in CI) without one."""
    if redis_server_url is None:
        missing_server(
            "no Redis server: install redis-server or set MESSAGING_TEST_REDIS_URL"
        )
    assert redis_server_url is not None
    client = Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    return redis_server_url


@pytest.fixture
def redis_url(redis_server_url: str | None) -> str:
    """A real, empty Redis when there is one, else the embedded stand-in."""
    if redis_server_url is None:
        if REQUIRE_SERVERS:
            pytest.fail("no Redis server (MESSAGING_TEST_REQUIRE_SERVERS=1)")
        return "memory://"
    client = Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    return redis_server_url


@pytest.fixture
def make_app(redis_url: str) -> Iterator[Callable[..., Flask]]:
    """Build Flask apps set up with messaging on the test Redis (and ``db``)."""
    apps: list[Flask] = []

    def make(
        messaging: Messaging | None = None, db: SQLAlchemy | None = None, **config: Any
    ) -> Flask:
        app = build_app(
            f"test_app_{len(apps)}",
            messaging or Messaging(),
            db,
            defaults={
                "MESSAGING_REDIS_URL": redis_url,
                "MESSAGING_ASYNC": True,
                "MESSAGING_RETRY": 0,
                # Tests drain the queues with workers of their own; on the
                # embedded fallback a worker thread would race them.
                "MESSAGING_EMBEDDED_WORKER": redis_url != "memory://",
            },
            **config,
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        state = app.extensions["messaging"]
        state.close()


@pytest.fixture
def fresh_tables() -> Iterator[Callable[[Flask], Flask]]:
    """Give an app new, empty tables of its Flask-SQLAlchemy ``db``.

    After the test, each such app's messaging state is closed (any embedded
    worker stopped, the Redis pool emptied), its tables dropped and its
    engines disposed of.
    """
    apps: list[Flask] = []

    def create(app: Flask) -> Flask:
        db = app.extensions["sqlalchemy"]
        with app.app_context():
            db.drop_all()
            db.create_all()
        apps.append(app)
        return app

    yield create
    while apps:
        app = apps.pop()
        get_state(app).close()  # first: a job in hand must not lose its tables
        db = app.extensions["sqlalchemy"]
        with app.app_context():
            db.session.remove()
            db.drop_all()
            for engine in db.engines.values():
                engine.dispose()


@pytest.fixture
def make_tx_app(fresh_tables: Callable[[Flask], Flask]) -> Callable[..., Flask]:
    """Build ``tests.tx_app`` (or ``factory``, a variant of it) on fresh tables.

    Called as ``make_tx_app(database_url, redis_url, **config)``.
    """

    def make(
        database_url: str,
        redis_url: str,
        factory: Callable[..., Flask] = tx_app.create_app,
        **config: Any,
    ) -> Flask:
        return fresh_tables(
            factory(
                SQLALCHEMY_DATABASE_URI=database_url,
                MESSAGING_REDIS_URL=redis_url,
                **config,
            )
        )

    return make


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    app = make_app()
    with app.app_context():
        yield app


POSTGRES_ADMIN_URL = os.environ.get(
    "MESSAGING_TEST_POSTGRES_URL",
    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
)
# Two suites running at once (two checkouts, say) each name their own database.
POSTGRES_DATABASE = os.environ.get(
    "MESSAGING_TEST_POSTGRES_DATABASE", "flask_messaging_test"
)


@pytest.fixture(scope="session")
def postgres_server_url() -> str | None:
    """A database of the suite's own on the PostgreSQL server, or None."""
    try:
        return postgres_database(POSTGRES_ADMIN_URL, POSTGRES_DATABASE)
    except Exception:
        return None


@pytest.fixture
def postgres_url(postgres_server_url: str | None) -> str:
    """The suite's PostgreSQL database; skips (or fails in CI) without one."""
    if postgres_server_url is None:
        missing_server(f"no PostgreSQL server at {POSTGRES_ADMIN_URL}")
    assert postgres_server_url is not None
    return postgres_server_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server_url: str | None
) -> str:
    """Each test that uses it runs on SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    if postgres_server_url is None:
        missing_server(f"no PostgreSQL server at {POSTGRES_ADMIN_URL}")
    assert postgres_server_url is not None
    return postgres_server_url
