"""An app whose handler commits an event of its own, with the outbox on.

``create_app()`` reads ``DATABASE_URL`` and ``MESSAGING_REDIS_URL`` from the
environment, for a worker in another process. The relay waits an hour, so
the second event's job exists only if the process that committed it wrote
it (its sender).
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask

from flask_messaging import Message, Messaging
from flask_messaging.transaction import register_event

from .app_factory import build_app
from .tx_app import AuditEntry, db
from .worker_app import record

messaging = Messaging()


@dataclass(frozen=True)
class First(Message, name="tests.chain.first"):
    n: int


@dataclass(frozen=True)
class Second(Message, name="tests.chain.second"):
    n: int


@messaging.subscribe_async
def on_first(event: First) -> None:
    db.session.add(AuditEntry(text=f"first {event.n}"))
    register_event(Second(event.n))
    db.session.commit()


@messaging.subscribe_async
def on_second(event: Second) -> None:
    record("on_second", n=event.n)


def create_app() -> Flask:
    app = build_app(
        "chain_app",
        messaging,
        db,
        defaults={"MESSAGING_RETRY": 0, "MESSAGING_RELAY_DELAY": 3600},
    )
    with app.app_context():
        db.create_all()
    return app
