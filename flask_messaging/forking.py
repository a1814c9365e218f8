"""A forked process's own connections to the database and to Redis.

A fork copies the pools of its parent: the connections an app factory, a
relay thread or an earlier job opened. Two processes talking over one
connection corrupt each other's conversation: with psycopg 3 on PostgreSQL a
child's statements collide with those its parent prepared
(``DuplicatePreparedStatement``), and one process reads another's result.
:func:`after_fork` is called first thing in every process our workers fork
(the work horses of ``--fork``, the children of ``--processes N``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .extension import get_state

if TYPE_CHECKING:
    from flask import Flask
    from redis import Redis

__all__ = ["after_fork"]


def after_fork(app: Flask, *connections: Redis) -> None:
    """Make the current (forked) process open connections of its own.

    Disposes the pool of every engine of the app's Flask-SQLAlchemy object
    (each bind) with ``close=False`` (SQLAlchemy's remedy for forks: the
    parent's connections are left alone, not closed under it), and empties
    the pools of the app's Redis client and of ``connections`` the same way.
    Each pool opens new connections on first use.
    """
    state = get_state(app)
    for engine in _engines(app, state.db):
        engine.dispose(close=False)
    clients = list(connections)
    if "redis" in state.__dict__:  # made already: the parent's client
        clients.append(state.redis)
    for pool in {id(c.connection_pool): c.connection_pool for c in clients}.values():
        # redis-py would notice the new pid on the next checkout and do the
        # same; done here, no connection of the parent's is ever handed out.
        pool.reset()


def _engines(app: Flask, db: Any) -> list[Any]:
    if db is None:
        return []
    with app.app_context():
        # Flask-SQLAlchemy: the engine of each bind, the default one included.
        return list(db.engines.values())
