"""A Flask-SQLAlchemy app for the transaction and outbox tests.

``create_app()`` reads ``DATABASE_URL`` and ``MESSAGING_REDIS_URL`` from the
environment so that other processes (workers, relays, a process killed after
its commit) can load it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

from flask_messaging import Message, Messaging
from flask_messaging.queue_names import LOW_PRIORITY

from .app_factory import build_app
from .worker_app import record

db = SQLAlchemy()
messaging = Messaging()


class User(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]
    name: Mapped[str | None]


class AuditEntry(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]


@dataclass(frozen=True)
class UserRegistered(Message, name="tests.tx.user_registered"):
    user_id: int
    email: str


@dataclass(frozen=True)
class Noted(Message, name="tests.tx.noted"):
    text: str


#: What the sync subscriber saw, in order, in this process.
received: list[Message] = []


@messaging.subscribe
def remember(event: Noted) -> None:
    received.append(event)


@messaging.subscribe(UserRegistered, queue_name=LOW_PRIORITY)
def welcome(event: UserRegistered) -> None:
    record("welcome", user_id=event.user_id, email=event.email)


def sqlite_savepoints(engine: sa.Engine) -> None:
    """Let pysqlite run SAVEPOINT properly (SQLAlchemy's documented recipe)."""

    @sa.event.listens_for(engine, "connect")
    def no_implicit_begin(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def explicit_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN")


def create_app(**config: Any) -> Flask:
    app = build_app(
        "tx_app",
        messaging,
        db,
        defaults={"MESSAGING_RETRY": 0, "MESSAGING_RELAY_DELAY": 0},
        **config,
    )
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            sqlite_savepoints(db.engine)
    return app
