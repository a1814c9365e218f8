"""A forked process's own connections: every bind's pool, the Redis pool.

Real forks of real workers are in ``tests/reliability/test_forks.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_messaging.state import get_state


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
