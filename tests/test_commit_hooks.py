"""Events registered while ``commit()`` runs, and ``@transactional`` inside a
transaction begun by the caller.

SQLAlchemy's commit runs every ``before_commit`` listener, then flushes
(running the ORM's flush hooks), then COMMITs the connections. An event
registered anywhere before the COMMIT belongs to the transaction and gets its
outbox row, with its subscribers; one registered after it is refused.
On SQLite and on the real PostgreSQL, with a real Redis (the outbox on).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from flask_messaging.state import get_state
from flask_messaging.transaction import register_event, transactional

from .tx_app import AuditEntry, User, UserRegistered, db, received


@pytest.fixture
def app(
    make_tx_app: Callable[..., Flask], database_url: str, real_redis_url: str
) -> Iterator[Flask]:
    received.clear()
    app = make_tx_app(database_url, real_redis_url)
    with app.app_context():
        yield app


@pytest.fixture
def listen() -> Iterator[Callable[[Any, str, Any], None]]:
    """``sa.event.listen`` for the test only."""
    added: list[tuple[Any, str, Any]] = []

    def add(target: Any, name: str, fn: Any) -> None:
        sa.event.listen(target, name, fn)
        added.append((target, name, fn))

    yield add
    for target, name, fn in added:
        sa.event.remove(target, name, fn)


def rows() -> dict[str, list[str]]:
    """Each outbox row's message e-mail and its stored subscribers."""
    table = get_state().outbox
    assert table is not None
    with db.engine.connect() as connection:
        found = connection.execute(sa.select(table.c.envelope, table.c.subscribers))
        return {
            json.loads(envelope)["payload"]["email"]: json.loads(subscribers)
            for envelope, subscribers in found
        }


def welcome_keys() -> list[str]:
    register_event(UserRegistered(user_id=0, email="direct@example.com"))
    db.session.commit()
    return rows()["direct@example.com"]


def register_on_insert(mapper: Any, connection: Any, target: User) -> None:
    register_event(UserRegistered(user_id=1, email=target.email))


def test_an_event_registered_by_a_flush_hook_at_commit_has_its_row(
    app: Flask, listen: Callable[[Any, str, Any], None]
) -> None:
    keys = welcome_keys()
    assert keys
    listen(User, "after_insert", register_on_insert)
    # No flush before commit(): the hook runs in commit's own flush. Before,
    # the event had no outbox row at all.
    db.session.add(User(email="late@example.com"))
    db.session.commit()
    assert rows()["late@example.com"] == keys


def test_a_late_event_beside_an_early_one_keeps_its_subscribers(
    app: Flask, listen: Callable[[Any, str, Any], None]
) -> None:
    keys = welcome_keys()
    listen(User, "after_insert", register_on_insert)
    register_event(UserRegistered(user_id=2, email="early@example.com"))
    db.session.add(User(email="late@example.com"))
    db.session.commit()
    # Before, the late event's row was stored with no subscribers ('[]').
    assert rows() == {
        "direct@example.com": keys,
        "early@example.com": keys,
        "late@example.com": keys,
    }


def test_an_event_of_a_later_before_commit_listener_has_its_row(
    app: Flask, listen: Callable[[Any, str, Any], None]
) -> None:
    keys = welcome_keys()

    def audit(session: Session) -> None:
        session.add(AuditEntry(text="commit"))
        register_event(UserRegistered(user_id=3, email="audit@example.com"))

    listen(db.session, "before_commit", audit)
    db.session.add(User(email="u@example.com"))
    db.session.commit()
    assert rows()["audit@example.com"] == keys
    assert db.session.query(AuditEntry).count() == 1


def test_an_event_registered_after_the_commit_began_is_refused(
    app: Flask, listen: Callable[[Any, str, Any], None]
) -> None:
    def too_late(session: Session) -> None:
        register_event(UserRegistered(user_id=4, email="too-late@example.com"))

    listen(db.session, "after_commit", too_late)
    register_event(UserRegistered(user_id=5, email="in-time@example.com"))
    with pytest.raises(RuntimeError, match="already committing"):
        db.session.commit()
    db.session.remove()
    assert set(rows()) == {"in-time@example.com"}


@transactional
def create_user(session: Session, email: str) -> None:
    session.add(User(email=email))
    register_event(UserRegistered(user_id=6, email=email))


def test_transactional_joins_a_transaction_begun_by_the_caller(app: Flask) -> None:
    with db.session.begin():
        create_user("inner@example.com")
        # Before, create_user committed the caller's transaction, and this
        # write raised InvalidRequestError and was lost.
        db.session.add(User(email="after@example.com"))
    assert db.session.query(User).count() == 2
    assert set(rows()) == {"inner@example.com"}


def test_transactional_joins_but_the_callers_rollback_discards(app: Flask) -> None:
    with pytest.raises(ZeroDivisionError), db.session.begin():
        create_user("inner@example.com")
        1 / 0  # noqa: B018
    assert db.session.query(User).count() == 0
    assert rows() == {}


def test_transactional_still_commits_an_autobegun_transaction(app: Flask) -> None:
    db.session.query(User).count()  # the session begins by itself
    create_user("auto@example.com")
    db.session.rollback()
    assert db.session.query(User).count() == 1
    assert set(rows()) == {"auto@example.com"}
