"""The app the transaction and latency benchmarks run, in-process and in workers.

Configured from the environment: ``DATABASE_URL`` and ``MESSAGING_REDIS_URL``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from redis import Redis
from sqlalchemy.orm import Mapped, mapped_column

from flask_messaging import Message, Messaging
from flask_messaging.state import get_state
from tests.app_factory import build_app

db = SQLAlchemy()
messaging = Messaging()

#: Handler start times, in seconds since the epoch, pushed by both sides.
STARTS = "bench:starts"


class Account(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]


@dataclass(frozen=True)
class AccountOpened(Message, name="bench.account_opened"):
    account_id: int
    email: str


@messaging.subscribe_async
def on_opened(event: AccountOpened) -> None:
    get_state().redis.rpush(STARTS, time.time())


_anchor_redis: Redis | None = None


def stamp_rq(account_id: int) -> None:
    """The anchor's job: the same work as ``on_opened``."""
    global _anchor_redis
    if _anchor_redis is None:
        _anchor_redis = Redis.from_url(os.environ["MESSAGING_REDIS_URL"])
    _anchor_redis.rpush(STARTS, time.time())


def create_app(**config: object) -> Flask:
    return build_app(
        "bench", messaging, db, defaults={"MESSAGING_RELAY_DELAY": 0}, **config
    )
