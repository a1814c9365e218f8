"""Fixtures: a real Redis server of the suite's own, and apps wired to it.

The suite starts ``redis-server`` on a free port (or uses
``MESSAGING_TEST_REDIS_URL``, a database it may flush). Without either it falls
back to the embedded ``memory://`` stand-in and skips what needs a server,
unless ``MESSAGING_TEST_REQUIRE_SERVERS=1`` (set by CI) turns that into a
failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from redis import Redis

from flask_messaging import Messaging

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` process of the suite's own, on a free port."""

    def __init__(self, binary: str, directory: str, port: int | None = None) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra: str) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.directory,
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except Exception as exc:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server did not start on {self.port}"
                    ) from exc
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str | None]:
    """The URL of a real Redis the suite may flush, or None."""
    url = os.environ.get("MESSAGING_TEST_REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(binary, directory)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop and start."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing_server("redis-server is not installed")
    assert binary is not None
    server = RedisServer(binary, str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.stop()


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
    """Build Flask apps set up with messaging on the test Redis."""
    apps: list[Flask] = []

    def make(
        messaging: Messaging | None = None, db: Any = None, **config: Any
    ) -> Flask:
        app = Flask(f"test_app_{len(apps)}")
        app.config.update(
            SECRET_KEY="test secret",
            MESSAGING_REDIS_URL=redis_url,
            MESSAGING_ASYNC=True,
            MESSAGING_RETRY=0,
            # Tests drain the queues with workers of their own; on the embedded
            # fallback a worker thread would race them.
            MESSAGING_EMBEDDED_WORKER=redis_url != "memory://",
        )
        app.config.update(config)
        (messaging or Messaging()).init_app(app, db=db)
        apps.append(app)
        return app

    yield make
    for app in apps:
        state = app.extensions["messaging"]
        state.close()


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
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            exists = connection.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": POSTGRES_DATABASE},
            ).scalar()
            if not exists:
                connection.execute(sa.text(f'CREATE DATABASE "{POSTGRES_DATABASE}"'))
    except Exception:
        return None
    finally:
        admin.dispose()
    return (
        sa.engine.make_url(POSTGRES_ADMIN_URL)
        .set(database=POSTGRES_DATABASE)
        .render_as_string(hide_password=False)
    )


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
