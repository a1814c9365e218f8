"""A forked process's own connections and sender.

Every bind's pool and the Redis pool are its own; the events a work horse's
handler commits are enqueued before it exits. Real forks of real workers
under faults are in ``tests/reliability/test_forks.py``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_messaging import get_message_broker
from flask_messaging.state import get_state

from . import chain_app
from .conftest import flask_messaging_command
from .worker_app import handled


def test_reset_after_fork_gives_every_bind_and_redis_a_new_pool_and_closes_nothing(
    make_app: Callable[..., Flask], tmp_path: Path, real_redis_url: str
) -> None:
    db = SQLAlchemy()
    app = make_app(
        db=db,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'main.db'}",
        SQLALCHEMY_BINDS={"audit": f"sqlite:///{tmp_path / 'audit.db'}"},
    )
    with app.app_context():
        engines = dict(db.engines)
    assert set(engines) == {None, "audit"}
    held = {key: engine.connect() for key, engine in engines.items()}
    pools = {key: engine.pool for key, engine in engines.items()}
    redis = get_state(app).redis
    redis.ping()
    redis_connection = redis.connection_pool.get_connection()

    get_state(app).reset_after_fork()

    for key, engine in engines.items():
        assert engine.pool is not pools[key]  # new connections from here on
        assert held[key].execute(sa.text("SELECT 1")).scalar_one() == 1  # open
        held[key].close()
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT 2")).scalar_one() == 2
    pool = redis.connection_pool
    assert pool._created_connections == 0  # type: ignore[attr-defined]
    assert pool.pid == os.getpid()  # type: ignore[attr-defined]
    assert redis_connection._sock is not None  # the parent's, left open
    assert redis.ping()
    redis_connection.disconnect()


@pytest.mark.parametrize(
    "how", [["--fork"], ["--threads", "1"], ["--threads", "4"]], ids=" ".join
)
def test_the_events_a_handler_commits_are_handled_within_the_burst(
    tmp_path: Path,
    real_redis_url: str,
    how: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The sender writes the second event's job just after the handler's
    # commit: a work horse ended with os._exit, past the exit hook that
    # flushes it, and a burst found the queues empty before it wrote; the
    # second event waited for the relay (an hour here).
    env = {
        "MESSAGING_REDIS_URL": real_redis_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'chain.db'}",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # chain_app reads them
    app = chain_app.create_app()
    with app.app_context():
        get_message_broker().publish(chain_app.First(1))
    args = ["worker", "--burst", "--no-relay", *how]
    process = flask_messaging_command(
        "tests.chain_app:create_app",
        *args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert [e["n"] for e in handled(get_state(app).redis)] == [1], output
