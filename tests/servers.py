"""Servers of our own for the tests and the benchmarks: never anyone else's data.

A ``redis-server`` process on a free port of 127.0.0.1, its files in a
directory of its own; a database of our own on the PostgreSQL server. This
module imports nothing of pytest, so that ``python -m benchmarks`` uses it
too.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import sqlalchemy as sa
from redis import Redis

#: Seconds a starting server has to answer PING.
START_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on at the time of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_redis_server() -> str | None:
    """The path of ``redis-server`` on the ``PATH``, or None."""
    return shutil.which("redis-server")


class RedisServer:
    """A ``redis-server`` process of our own, on a free port.

    Without ``options`` it persists nothing (no RDB snapshot, no append-only
    file); ``options`` are more ``redis-server`` arguments, given at every
    start, e.g. ``("--appendonly", "yes")``. The port stays the same across
    :meth:`stop` and :meth:`start`, so clients reconnect to the same URL.
    Used as a context manager, it is started on entry and stopped on exit.

    :param directory: where the server keeps its files (``--dir``).
    :param port: the port to listen on; a free one by default.
    :param binary: the ``redis-server`` to run; the one on the ``PATH`` by
        default.
    :raises RuntimeError: with no ``binary`` and no ``redis-server`` on the
        ``PATH``.
    """

    def __init__(
        self,
        directory: str | Path,
        *options: str,
        port: int | None = None,
        binary: str | None = None,
    ) -> None:
        binary = binary or find_redis_server()
        if binary is None:
            raise RuntimeError(
                "redis-server is not on the PATH: install Redis (the server),"
                " or pass binary= the path of a redis-server."
            )
        self.binary = binary
        self.directory = str(directory)
        self.options = options
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it answers PING.

        :raises RuntimeError: if it exits, or does not answer within
            :data:`START_TIMEOUT` seconds (the port taken meanwhile, say).
        """
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
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_until_ready(self.process)

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        client = Redis.from_url(self.url)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                try:
                    client.ping()
                    return
                except Exception as exc:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError(
                            f"redis-server did not start on port {self.port}."
                        ) from exc
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM the server (it writes its append-only file, if any, and
        exits) and wait for it; nothing if it is not running."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        """:meth:`stop`, then :meth:`start` on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@contextmanager
def temporary_redis_server(*options: str) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` in a temporary directory, removed after.

    :raises RuntimeError: as :class:`RedisServer` and :meth:`RedisServer.start`.
    """
    with tempfile.TemporaryDirectory() as directory:
        with RedisServer(directory, *options) as server:
            yield server


def postgres_database(admin_url: str, name: str) -> str:
    """The URL of database ``name`` on a PostgreSQL server, created if missing.

    :param admin_url: a SQLAlchemy URL of the server, as a role that may
        create databases.
    :raises sqlalchemy.exc.OperationalError: if the server cannot be reached.
    """
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            exists = connection.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": name},
            ).scalar()
            if not exists:
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return (
        sa.engine.make_url(admin_url)
        .set(database=name)
        .render_as_string(hide_password=False)
    )
