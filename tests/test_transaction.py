"""register_event and @transactional, on SQLite and on the real PostgreSQL.

The first group ports Django's ``transaction.on_commit`` test suite
(tests/transaction_hooks/tests.py) case by case: ``atomic()`` is a
``@transactional`` function or ``session.begin_nested()``, ``on_commit`` is
``register_event``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from flask_messaging import (
    DeliveryError,
    MessageEncodeError,
    NullBroker,
    TestBroker,
    get_message_broker,
    override_message_broker,
)
from flask_messaging.state import get_state
from flask_messaging.transaction import register_event, transactional

from .tx_app import AuditEntry, Noted, User, UserRegistered, db, received


@pytest.fixture
def app(
    make_tx_app: Callable[..., Flask], database_url: str, redis_url: str
) -> Iterator[Flask]:
    received.clear()
    app = make_tx_app(database_url, redis_url)
    with app.app_context():
        yield app


def texts() -> list[str]:
    return [event.text for event in received]  # type: ignore[attr-defined]


def note(text: str) -> None:
    register_event(Noted(text))


class Boom(Exception):
    pass


# -- Django's transaction_hooks, case by case ---------------------------------


def test_executes_at_the_next_commit_if_no_transaction_began(app: Flask) -> None:
    # Django runs such a hook at once. A SQLAlchemy session begins its
    # transaction lazily (register_event begins it), so the event waits for
    # the commit that follows.
    assert not db.session().in_transaction()
    note("a")
    assert texts() == []
    db.session.commit()
    assert texts() == ["a"]


def test_delays_execution_until_after_transaction_commit(app: Flask) -> None:
    @transactional
    def work(session: Session) -> None:
        session.add(User(email="a@example.com"))
        note("a")
        assert texts() == []

    work()
    assert texts() == ["a"]


def test_does_not_execute_if_transaction_rolled_back(app: Flask) -> None:
    @transactional
    def work(session: Session) -> None:
        note("a")
        raise Boom

    with pytest.raises(Boom):
        work()
    assert texts() == []


def test_executes_only_after_final_transaction_committed(app: Flask) -> None:
    @transactional
    def outer(session: Session) -> None:
        with session.begin_nested():
            note("a")
        assert texts() == []  # releasing the savepoint delivers nothing
        inner()
        assert texts() == []

    @transactional
    def inner(session: Session) -> None:
        note("b")

    outer()
    assert texts() == ["a", "b"]


def test_discards_hooks_from_rolled_back_savepoint(app: Flask) -> None:
    @transactional
    def work(session: Session) -> None:
        try:
            with session.begin_nested():
                note("a")
                raise Boom
        except Boom:
            pass
        note("b")

    work()
    assert texts() == ["b"]


def test_no_hooks_run_from_failed_transaction(app: Flask) -> None:
    @transactional
    def work(session: Session) -> None:
        note("a")
        session.add(User(email=None))  # type: ignore[arg-type]  # NOT NULL
        session.flush()

    with pytest.raises(sa.exc.IntegrityError):
        work()
    assert texts() == []


def test_inner_savepoint_rolled_back_with_outer(app: Flask) -> None:
    @transactional
    def work(session: Session) -> None:
        try:
            with session.begin_nested():
                with session.begin_nested():
                    note("a")
                raise Boom
        except Boom:
            pass

    work()
    assert texts() == []


def test_no_savepoints_nested_transactional_merged_with_outer(app: Flask) -> None:
    @transactional
    def outer(session: Session) -> None:
        note("a")
        inner()

    @transactional
    def inner(session: Session) -> None:
        note("b")
        raise Boom

    with pytest.raises(Boom):
        outer()
    assert texts() == []


def test_inner_savepoint_does_not_affect_outer(app: Flask) -> None:
    @transactional
    def work(session: Session) -> None:
        with session.begin_nested():
            note("a")
            try:
                with session.begin_nested():
                    note("b")
                    raise Boom
            except Boom:
                pass

    work()
    assert texts() == ["a"]


def test_runs_hooks_in_order_registered(app: Flask) -> None:
    @transactional
    def work(session: Session) -> None:
        note("first")
        with session.begin_nested():
            note("second")
        note("third")

    work()
    assert texts() == ["first", "second", "third"]


def test_hooks_cleared_after_successful_commit(app: Flask) -> None:
    @transactional
    def first(session: Session) -> None:
        note("a")

    @transactional
    def second(session: Session) -> None:
        note("b")

    first()
    second()
    assert texts() == ["a", "b"]


def test_hooks_cleared_after_rollback(app: Flask) -> None:
    @transactional
    def failing(session: Session) -> None:
        note("a")
        raise Boom

    @transactional
    def working(session: Session) -> None:
        note("b")

    with pytest.raises(Boom):
        failing()
    working()
    assert texts() == ["b"]


def test_hooks_discarded_with_a_warning_when_the_session_closes(app: Flask) -> None:
    note("lost")
    db.session.execute(sa.text("SELECT 1"))
    with pytest.warns(RuntimeWarning, match=r"discarded 1 registered event\(s\)"):
        db.session.close()
    db.session.commit()
    assert texts() == []


def test_error_in_hook_doesnt_prevent_clearing_hooks(app: Flask) -> None:
    def failing(event: Noted) -> None:
        raise Boom

    get_message_broker().subscribe(Noted, failing)

    @transactional
    def work(session: Session, text: str) -> None:
        session.add(AuditEntry(text=text))
        note(text)

    with pytest.raises(DeliveryError) as info:
        work("a")
    assert [type(e) for e in info.value.exceptions] == [Boom]
    assert db.session.scalars(sa.select(AuditEntry.text)).all() == ["a"]  # committed
    with pytest.raises(DeliveryError):
        work("b")
    assert texts() == ["a", "b"]  # each delivered once, to every subscriber


def test_db_query_in_hook(app: Flask) -> None:
    seen: list[list[str]] = []

    def query(event: Noted) -> None:
        seen.append(list(db.session.scalars(sa.select(User.email))))

    get_message_broker().subscribe(Noted, query)

    @transactional
    def work(session: Session) -> None:
        session.add(User(email="a@example.com"))
        note("a")

    work()
    assert seen == [["a@example.com"]]


def test_transaction_in_hook(app: Flask) -> None:
    def write(event: Noted) -> None:
        db.session.add(AuditEntry(text=f"after {event.text}"))
        db.session.commit()

    get_message_broker().subscribe(Noted, write)

    @transactional
    def work(session: Session) -> None:
        note("a")

    work()
    assert db.session.scalars(sa.select(AuditEntry.text)).all() == ["after a"]


def test_hook_in_hook(app: Flask) -> None:
    def chain(event: Noted) -> None:
        if event.text == "a":
            note("b")
            db.session.commit()

    get_message_broker().subscribe(Noted, chain)

    @transactional
    def work(session: Session) -> None:
        note("a")

    work()
    assert texts() == ["a", "b"]


def test_raises_for_a_non_message(app: Flask) -> None:
    with pytest.raises(TypeError, match="not a Message subclass"):
        register_event("not a message")  # type: ignore[arg-type]


# -- Beyond Django ------------------------------------------------------------


def test_bad_message_fails_inside_the_transaction(app: Flask) -> None:
    @transactional
    def work(session: Session) -> None:
        session.add(User(email="a@example.com"))
        register_event(UserRegistered(user_id="not an int", email="x"))  # type: ignore[arg-type]

    with pytest.raises(MessageEncodeError):
        work()
    assert db.session.scalars(sa.select(User)).all() == []


def test_savepoint_release_alone_delivers_nothing(app: Flask) -> None:
    with db.session.begin_nested():
        note("a")
    assert texts() == []
    db.session.rollback()
    assert texts() == []


def test_transactional_passes_the_session_and_returns_the_result(app: Flask) -> None:
    @transactional
    def create(session: Session, email: str, *, name: str) -> User:
        assert session is db.session()
        user = User(email=email, name=name)
        session.add(user)
        return user

    user = create("a@example.com", name="Ada")
    assert user.id is not None
    assert create.__name__ == "create"


def test_override_receives_committed_events(app: Flask) -> None:
    broker = NullBroker()

    @transactional
    def work(session: Session) -> None:
        note("a")
        note("b")

    with override_message_broker(broker):
        work()
    assert [m.text for m in broker.published] == ["a", "b"]  # type: ignore[attr-defined]
    assert texts() == []  # the app's subscribers were not called
    assert (
        db.session.scalar(sa.select(sa.func.count()).select_from(get_state().outbox))
        == 0
    )


def test_spec_transaction_example(app: Flask) -> None:
    # As the specification writes it, imports mapped.
    @transactional
    def create_user(session: Session, email: str, name: str):  # type: ignore[no-untyped-def]
        user = User(email=email, name=name)
        session.add(user)
        session.flush()  # Get the user ID

        # Event will only be sent if transaction commits
        register_event(UserRegistered(user_id=user.id, email=email))

        return user

    test_broker = TestBroker()
    seen: list[UserRegistered] = []
    test_broker.subscribe(UserRegistered, seen.append)
    with override_message_broker(test_broker):
        user = create_user("john@example.com", "John")
        assert seen == []
        test_broker.process_messages()
    assert seen == [UserRegistered(user_id=user.id, email="john@example.com")]
