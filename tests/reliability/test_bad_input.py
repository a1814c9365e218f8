"""Bad messages fail at ``register_event``, inside the transaction, and leave no trace.

Unknown message types and handlers in a job (deploy skew) are covered by
``tests/test_security.py``: a clear failure into the failed job registry, and
a requeue that succeeds once the code is deployed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from flask import Flask
from redis import Redis

from flask_messaging import Message, MessageEncodeError
from flask_messaging.state import get_state
from flask_messaging.transaction import register_event

from .app import Published, create_app, db

pytestmark = pytest.mark.reliability


@dataclass
class Mutable(Message, name="tests.reliability.mutable"):
    token: str


class NotADataclass(Message, name="tests.reliability.not_a_dataclass"):
    def __init__(self, token: str) -> None:
        self.token = token


@dataclass(frozen=True)
class WithASet(Message, name="tests.reliability.with_a_set"):
    tags: set[str]


class Opaque:
    pass


@dataclass(frozen=True)
class WithAClass(Message, name="tests.reliability.with_a_class"):
    thing: Opaque


@dataclass(frozen=True)
class WithAnything(Message, name="tests.reliability.with_anything"):
    thing: object


@dataclass(frozen=True)
class Measured(Message, name="tests.reliability.measured"):
    value: float


@dataclass(frozen=True)
class Blob(Message, name="tests.reliability.blob"):
    data: str


CASES: list[tuple[Callable[[], Message], type[Exception], str]] = [
    (lambda: Mutable("t"), TypeError, "Mutable is a mutable dataclass"),
    (lambda: NotADataclass("t"), TypeError, "NotADataclass is not a dataclass"),
    (lambda: WithASet({"a"}), TypeError, "WithASet.tags: 'set' is mutable"),
    (lambda: WithAClass(Opaque()), TypeError, "WithAClass.thing: field type"),
    (
        lambda: WithAnything(Opaque()),
        MessageEncodeError,
        "tests.reliability.with_anything: field thing: .* cannot be encoded",
    ),
    (
        lambda: Measured(math.nan),
        MessageEncodeError,
        "tests.reliability.measured: invalid field value",
    ),
    (
        lambda: Blob("x" * 10 * 1024 * 1024),
        MessageEncodeError,
        "tests.reliability.blob: .* over MESSAGING_MAX_MESSAGE_BYTES",
    ),
]


@pytest.fixture
def app(database_url: str, real_redis_url: str) -> Iterator[Flask]:
    app = create_app(
        SQLALCHEMY_DATABASE_URI=database_url, MESSAGING_REDIS_URL=real_redis_url
    )
    with app.app_context():
        db.drop_all()
        db.create_all()
        try:
            yield app
        finally:
            db.session.remove()
            db.drop_all()
            db.engine.dispose()
            get_state().redis.close()


@pytest.mark.parametrize(
    ("make", "error", "says"),
    CASES,
    ids=["mutable", "not-dataclass", "set", "class", "object", "nan", "10MB"],
)
def test_a_bad_message_fails_at_registration_and_leaves_no_trace(
    app: Flask,
    make: Callable[[], Message],
    error: type[Exception],
    says: str,
) -> None:
    message = make()
    db.session.add(Published(token="kept"))
    with pytest.raises(error, match=says):
        register_event(message)
    # The caller may carry on: its own data commits, the bad event does not.
    db.session.commit()
    state = get_state()
    with db.engine.connect() as connection:
        published = connection.execute(sa.select(Published.token)).scalars().all()
        outbox = connection.execute(
            sa.select(sa.func.count()).select_from(state.outbox)
        ).scalar_one()
    assert published == ["kept"]
    assert outbox == 0
    assert Redis.from_url(state.settings.redis_url).keys("*") == []
