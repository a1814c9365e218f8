"""Several databases (Flask-SQLAlchemy binds): an event leaves only if every
database its transaction wrote to committed.

On PostgreSQL, with two databases of the suite's own on one server. A
``DEFERRABLE INITIALLY DEFERRED`` foreign key to a missing row makes a
database fail at COMMIT, after SQLAlchemy may already have committed the
other one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from flask import Flask
from rq import Queue
from sqlalchemy.orm import Session

from flask_messaging import Message, wait_for_sent
from flask_messaging.commit_order import commit_others_first
from flask_messaging.outbox import Relay
from flask_messaging.queue_names import LOW_PRIORITY
from flask_messaging.state import get_state
from flask_messaging.transaction import register_event

from .binds_app import Account, AccountNote, Child, Parent, create_app, db, messaging
from .conftest import POSTGRES_ADMIN_URL, POSTGRES_DATABASE
from .servers import postgres_database


@dataclass(frozen=True)
class AccountOpened(Message, name="tests.binds.account_opened"):
    email: str


@messaging.subscribe(AccountOpened, queue_name=LOW_PRIORITY)
def on_opened(event: AccountOpened) -> None:
    """Never run here: the tests count jobs."""


@pytest.fixture(scope="module")
def other_database_url(postgres_server_url: str | None) -> str:
    """A second database of the suite's own, beside the first."""
    if postgres_server_url is None:
        pytest.skip("no PostgreSQL server")
    return postgres_database(POSTGRES_ADMIN_URL, f"{POSTGRES_DATABASE}_b")


@pytest.fixture
def app(
    fresh_tables: Callable[[Flask], Flask],
    postgres_url: str,
    other_database_url: str,
    real_redis_url: str,
) -> Iterator[Flask]:
    app = fresh_tables(create_app(postgres_url, other_database_url, real_redis_url))
    with app.app_context():
        yield app


def outbox_count() -> int:
    table = get_state().outbox
    with db.engine.connect() as connection:
        return int(
            connection.execute(sa.select(sa.func.count()).select_from(table)).scalar()
        )


def jobs() -> int:
    """The jobs in Redis once the sender has written every commit's."""
    wait_for_sent()
    return int(Queue(LOW_PRIORITY, connection=get_state().redis).count)


def count(model: type) -> int:
    with db.engines[model.__table__.metadata.info.get("bind_key")].connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(model)).scalar())


def test_an_event_does_not_leave_when_the_other_database_fails_at_commit(
    app: Flask,
) -> None:
    # The other bind fails at COMMIT (deferred foreign key to a missing
    # parent); the default bind, with the outbox, would commit fine.
    for n in range(10):
        db.session.add(Account(email=f"a{n}@example.com"))
        db.session.add(Child(parent_id=999))
        register_event(AccountOpened(f"a{n}@example.com"))
        with pytest.raises(sa.exc.IntegrityError):
            db.session.commit()
        db.session.rollback()
    assert outbox_count() == 0  # 3 to 5 of 10 before: committed first
    assert jobs() == 0
    assert Relay(get_state()).run_once() == 0
    assert jobs() == 0


def test_an_event_does_not_leave_when_its_own_database_fails_at_commit(
    app: Flask,
) -> None:
    # The outbox's database fails at COMMIT after the other one committed:
    # the event does not leave; the other database keeps its write.
    db.session.add(Parent(id=1))
    db.session.add(AccountNote(account_id=999))
    register_event(AccountOpened("nobody@example.com"))
    with pytest.raises(sa.exc.IntegrityError):
        db.session.commit()
    db.session.rollback()
    assert outbox_count() == 0 and jobs() == 0
    assert count(Parent) == 1


def test_events_leave_once_when_both_databases_commit(app: Flask) -> None:
    db.session.add(Account(email="a@example.com"))
    db.session.add(Parent(id=1))
    db.session.add(Child(parent_id=1))
    register_event(AccountOpened("a@example.com"))
    db.session.commit()
    assert (count(Account), count(Child)) == (1, 1)
    assert outbox_count() == 1 and jobs() == 1
    assert Relay(get_state()).run_once() == 0
    # A transaction that writes only the other database: the outbox's
    # connection joins it, and commits last.
    db.session.add(Parent(id=2))
    register_event(AccountOpened("b@example.com"))
    db.session.commit()
    assert outbox_count() == 2 and jobs() == 2


def test_several_databases_with_an_outside_transaction_are_refused(
    app: Flask,
) -> None:
    # A session joined to a transaction it does not commit: the order of the
    # commits is not the session's to decide, so the events are refused.
    outbox_engine = db.engine
    with db.engines["other"].connect() as outside:
        outside.begin()
        session = Session(
            binds={Account: outbox_engine, Parent: outside, Child: outside}
        )
        session.add(Account(email="a@example.com"))
        session.add(Parent(id=3))
        session.flush()
        with pytest.raises(RuntimeError, match="joined from an outside transaction"):
            commit_others_first(session, outbox_engine)
        session.rollback()
        session.close()


def test_a_later_before_commit_listener_writes_to_the_other_database(
    app: Flask,
) -> None:
    # A listener registered after messaging's adds a row on the other bind.
    # Before, the other database was committed inside messaging's listener,
    # and this row, flushed afterwards, was never committed.
    def audit(session: Session) -> None:
        session.add(Parent(id=42))

    sa.event.listen(db.session, "before_commit", audit)
    try:
        db.session.add(Account(email="a@example.com"))
        db.session.add(Parent(id=41))
        register_event(AccountOpened("a@example.com"))
        db.session.commit()
    finally:
        sa.event.remove(db.session, "before_commit", audit)
    assert (count(Account), count(Parent)) == (1, 2)
    assert outbox_count() == 1 and jobs() == 1


def test_a_later_before_commit_listener_that_fails_to_flush_commits_nothing(
    app: Flask,
) -> None:
    # The final flush fails (NOT NULL): nothing may stay committed. Before,
    # the other database had already committed its write.
    def broken(session: Session) -> None:
        session.add(Account(email=None))

    sa.event.listen(db.session, "before_commit", broken)
    try:
        db.session.add(Parent(id=7))
        db.session.add(Account(email="a@example.com"))
        register_event(AccountOpened("a@example.com"))
        with pytest.raises(sa.exc.IntegrityError):
            db.session.commit()
        db.session.rollback()
    finally:
        sa.event.remove(db.session, "before_commit", broken)
    assert (count(Account), count(Parent)) == (0, 0)
    assert outbox_count() == 0 and jobs() == 0


def test_an_event_of_a_flush_hook_with_several_databases(app: Flask) -> None:
    # Registered during commit's own flush, on a transaction of two
    # databases: its row is written and the outbox's database commits last.
    def on_insert(mapper: object, connection: object, target: Parent) -> None:
        register_event(AccountOpened(f"parent-{target.id}@example.com"))

    sa.event.listen(Parent, "after_insert", on_insert)
    try:
        db.session.add(Parent(id=8))
        db.session.add(Account(email="a@example.com"))
        db.session.commit()
        db.session.add(Parent(id=9))
        db.session.add(Child(parent_id=999))  # the other database fails
        with pytest.raises(sa.exc.IntegrityError):
            db.session.commit()
        db.session.rollback()
    finally:
        sa.event.remove(Parent, "after_insert", on_insert)
    assert outbox_count() == 1 and jobs() == 1
