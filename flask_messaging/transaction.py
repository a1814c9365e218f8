"""Events that leave only when the database transaction commits.

:func:`register_event` attaches a message to the current transaction of the
app's Flask-SQLAlchemy session. When the outermost transaction commits, the
message is delivered: sync subscribers right after the commit, async ones
through the outbox (or straight to RQ when ``MESSAGING_OUTBOX`` is off). A
rollback discards it; so does rolling back the savepoint it was registered in.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session, SessionTransaction, SessionTransactionOrigin

from . import commit_order
from . import envelope as codec
from .dispatch import Delivery
from .errors import DeliveryError, raise_failures
from .message import Message
from .message_broker import MessageBroker
from .outbox import check_table, outbox_rows
from .sender import send_committed
from .state import (
    FlaskSQLAlchemy,
    MessagingState,
    active_override,
    current_message_limit,
    get_state,
)

__all__ = ["capturing_registrations", "register_event", "transactional"]

logger = logging.getLogger("flask_messaging")

P = ParamSpec("P")
R = TypeVar("R")

_EVENTS = "flask_messaging.events"
_DEPTH = "flask_messaging.transactional_depth"


@dataclass(slots=True)
class PendingEvent:
    """A registered message waiting for its transaction to commit."""

    message: Message
    message_id: str
    #: The encoded envelope, made when the event was registered.
    data: bytes
    #: The transaction (a savepoint, or the root) it was registered in.
    transaction: SessionTransaction | None
    #: Its async deliveries (predicates evaluated), decided when the outbox
    #: row is written; None until then.
    deliveries: list[Delivery] | None = None


@dataclass(slots=True)
class _SessionEvents:
    pending: list[PendingEvent] = field(default_factory=list)
    committed: bool = False
    rolled_back: bool = False
    #: The outermost transaction began to commit (and may have failed to).
    commit_started: bool = False
    #: The outbox rows were written (or the fan-out decided): an event
    #: registered now could not be part of the transaction.
    sealed: bool = False
    #: Every pending event has its outbox row in the transaction.
    stored: bool = False
    #: Decided when the outermost transaction is about to commit.
    override: MessageBroker | None = None
    #: Predicates that raised while the fan-out was decided, raised after
    #: the commit with the sync subscribers' failures.
    errors: list[Exception] | None = None


_capturing: contextvars.ContextVar[list[Message] | None] = contextvars.ContextVar(
    "flask_messaging_capture", default=None
)


@contextmanager
def capturing_registrations(into: list[Message]) -> Iterator[None]:
    """Inside the block, :func:`register_event` appends to ``into`` instead.

    What :func:`~flask_messaging.testing.capture_events` is built on.
    """
    token = _capturing.set(into)
    try:
        yield
    finally:
        _capturing.reset(token)


def _captured(message: Message) -> bool:
    """Record ``message`` if a :func:`capturing_registrations` block is active."""
    captured = _capturing.get()
    if captured is None:
        return False
    # A bad or too large message fails here as it would for real.
    codec.encode(message, max_bytes=current_message_limit())
    captured.append(message)
    return True


def register_event(message: Message) -> None:
    """Deliver ``message`` if, and once, the current transaction commits.

    The message is validated and encoded at once, so a bad message fails
    inside the transaction. Events are delivered in registration order.

    :raises RuntimeError: no app context, or the app has no database bound
        to messaging.
    :raises TypeError: the message's class cannot be sent.
    :raises MessageEncodeError: the message's values cannot be sent.
    """
    if _captured(message):
        return
    state = get_state(caller="register_event()")
    session = _session(state)
    events = session.info.get(_EVENTS)
    if events is not None and events.sealed:
        raise RuntimeError(
            f"{type(message).__message_name__} was registered while its"
            " transaction was already committing (its outbox rows were written,"
            " e.g. from an after_commit listener or a connection's commit"
            " event), so it could not be part of it and was not registered:"
            " register it before commit(), or in a new transaction once this"
            " one has committed."
        )
    message_id, data = codec.encode(message, max_bytes=state.settings.max_message_bytes)
    if state.outbox is not None:
        # Begin the session's transaction now, as any query would (a rollback
        # before the first query must discard this event too), on the
        # outbox's database: its rows are written when SQLAlchemy commits,
        # when no connection can be opened any more.
        session.connection(bind_arguments={"clause": state.outbox})
    elif session.get_transaction() is None:
        session.connection()
    transaction = session.get_nested_transaction() or session.get_transaction()
    if events is None:
        events = session.info[_EVENTS] = _SessionEvents()
    events.pending.append(PendingEvent(message, message_id, data, transaction))


def transactional(func: Callable[Concatenate[Session, P], R]) -> Callable[P, R]:
    """Run ``func`` in a transaction of the app's session, passed first.

    Commits when ``func`` returns, rolls back and re-raises when it raises.
    Called inside a transaction begun explicitly (another ``@transactional``
    function, ``with session.begin():``, ``session.begin_nested()``), it
    joins that transaction: only its owner commits. A transaction the session
    began by itself (autobegin, on a first query) is committed, as before.

    .. code-block:: python

        @transactional
        def create_user(session: Session, email: str) -> User:
            user = User(email=email)
            session.add(user)
            session.flush()
            register_event(UserRegistered(user_id=str(user.id), email=email))
            return user
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        session = _session(get_state(caller=f"@transactional {func.__qualname__}()"))
        depth = session.info.get(_DEPTH, 0)
        if depth or _in_explicit_transaction(session):
            session.info[_DEPTH] = depth + 1
            try:
                return func(session, *args, **kwargs)
            finally:
                session.info[_DEPTH] = depth
        session.info[_DEPTH] = 1
        try:
            result = func(session, *args, **kwargs)
            session.commit()
            return result
        except BaseException:
            session.rollback()
            raise
        finally:
            session.info[_DEPTH] = 0

    return wrapper


def _in_explicit_transaction(session: Session) -> bool:
    root = session.get_transaction()
    return root is not None and (
        session.in_nested_transaction()
        or root.origin is not SessionTransactionOrigin.AUTOBEGIN
    )


def _session(state: MessagingState) -> Session:
    if state.db is None:
        raise RuntimeError(
            "register_event and @transactional need the app's database: call"
            " messaging.init_app(app, db=db) with your Flask-SQLAlchemy object."
        )
    session: Session = state.db.session()
    return session


# --------------------------------------------------------------------------
# Session events. Listeners are installed once per session factory; they find
# the app through the app context the session is used in.

_bound: weakref.WeakSet[Any] = weakref.WeakSet()
#: The session each connection was begun for, for the connection ``commit``
#: event (which knows only the connection).
_sessions: weakref.WeakKeyDictionary[sa.Connection, Session] = (
    weakref.WeakKeyDictionary()
)


def bind(db: FlaskSQLAlchemy) -> None:
    """Follow the transactions of ``db.session`` (a Flask-SQLAlchemy object)."""
    target = db.session
    if target in _bound:
        return
    if not _bound and not sa.event.contains(sa.Engine, "commit", _on_commit):
        sa.event.listen(sa.Engine, "commit", _on_commit)
        sa.event.listen(sa.Engine, "handle_error", _on_error)
    _bound.add(target)
    sa.event.listen(target, "after_begin", _after_begin)
    sa.event.listen(target, "before_commit", _before_commit)
    sa.event.listen(target, "after_commit", _after_commit)
    sa.event.listen(target, "after_rollback", _after_rollback)
    sa.event.listen(target, "after_soft_rollback", _after_soft_rollback)
    sa.event.listen(target, "after_transaction_end", _after_transaction_end)


def _after_begin(
    session: Session, transaction: SessionTransaction, connection: sa.Connection
) -> None:
    _sessions[connection] = session


def _before_commit(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        return  # a savepoint being released: nothing leaves yet
    events = session.info.get(_EVENTS)
    if events is None or not events.pending or events.sealed:
        return
    if any(entry[2] for entry in commit_order._entries(session).values()):
        # Written at the first COMMIT (_on_commit): after every before_commit
        # listener and the final flush, which may still register events.
        return
    # A session that commits none of its connections (joined to an outside
    # transaction): no COMMIT of its own to wait for, so the rows are written
    # now, and an event registered later is refused.
    session.flush()
    _seal(session, events, None)


def _on_commit(connection: sa.Connection) -> None:
    session = _sessions.get(connection)
    if session is None:
        return
    events = session.info.get(_EVENTS)
    if events is None or events.sealed or not events.pending:
        return
    # SQLAlchemy is about to send the first COMMIT of the session's
    # transaction: everything that precedes it (before_commit listeners,
    # the final flush and its ORM hooks) has run.
    _seal(session, events, connection)


def _on_error(context: sa.engine.ExceptionContext) -> None:
    connection = context.connection
    if connection is None or context.statement is not None:
        return  # not a COMMIT
    session = _sessions.get(connection)
    events = None if session is None else session.info.get(_EVENTS)
    if session is not None and events is not None and events.sealed:
        commit_order.after_failed_commit(session)


def _seal(
    session: Session, events: _SessionEvents, committing: sa.Connection | None
) -> None:
    events.commit_started = True
    events.sealed = True
    events.override = active_override()
    state = get_state()
    if events.override is not None or not state.writes_outbox:
        return
    assert state.outbox is not None
    # The fan-out is decided here, by the code that commits, and stored
    # with the row: a relay on other code delivers exactly this list.
    broker = state.broker
    errors = None
    for event in events.pending:
        event.deliveries, errors = broker.async_deliveries(
            event.message, event.message_id, event.data, errors
        )
    events.errors = errors
    # Stored with the data, in the same transaction: committed together.
    rows = outbox_rows(events.pending, state.settings.outbox.relay_delay)
    outbox_bind = session.get_bind(clause=state.outbox)
    connection = commit_order.outbox_connection(session, outbox_bind)
    if connection is None:
        connection = session.connection(bind_arguments={"bind": outbox_bind})
    try:
        # One row as a single execute: SQLAlchemy's executemany path costs
        # about 0.1 ms more, a tenth of a small transaction.
        connection.execute(_insert(state.outbox), rows[0] if len(rows) == 1 else rows)
    except sa.exc.DBAPIError:
        # A missing table or column (not created, not migrated) says so,
        # with the fix; anything else is the database's own error.
        check_table(outbox_bind, state.outbox)
        raise
    events.stored = True
    commit_order.commit_others_first(session, outbox_bind, committing)


#: One INSERT per outbox table, made once: SQLAlchemy keeps a statement's
#: cache key, so its compiled form is found at once, where a statement made
#: anew at every commit has its key computed again (about 0.1 ms of CPU).
_inserts: weakref.WeakKeyDictionary[sa.Table, sa.Insert] = weakref.WeakKeyDictionary()


def _insert(table: sa.Table) -> sa.Insert:
    insert = _inserts.get(table)
    if insert is None:
        insert = _inserts[table] = sa.insert(table)
    return insert


def _after_commit(session: Session) -> None:
    if session.get_nested_transaction() is None:
        events = session.info.get(_EVENTS)
        if events is not None:
            events.committed = True


def _after_rollback(session: Session) -> None:
    # The database rolled back (this fires before the transaction closes,
    # unlike after_soft_rollback); with no savepoint open, the whole of it.
    if session.get_nested_transaction() is None:
        events = session.info.get(_EVENTS)
        if events is not None:
            events.rolled_back = True


def _after_soft_rollback(session: Session, previous: SessionTransaction) -> None:
    events = session.info.get(_EVENTS)
    if events is None or not events.pending:
        return
    if previous.parent is None:
        events.pending.clear()
        return
    events.pending = [
        e for e in events.pending if not _registered_within(e.transaction, previous)
    ]


def _registered_within(
    transaction: SessionTransaction | None, ancestor: SessionTransaction
) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return  # a savepoint or an internal subtransaction
    events = session.info.pop(_EVENTS, None)
    if events is None or not events.pending:
        return
    if events.rolled_back:
        return
    if events.commit_started and not events.committed:
        return  # the commit failed, and raised to its caller: nothing leaves
    if not events.committed:
        names = ", ".join(
            f"{type(e.message).__message_name__} {e.message_id}" for e in events.pending
        )
        warnings.warn(
            f"The session was closed without commit or rollback: discarded"
            f" {len(events.pending)} registered event(s): {names}.",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    # The transaction is over: subscribers may use the session again, and
    # even commit new transactions (their events are delivered on their own).
    if events.override is not None:
        _publish_to(events.override, events.pending)
    else:
        _deliver(get_state(), events.pending, events.errors, events.stored)


def _publish_to(broker: MessageBroker, pending: list[PendingEvent]) -> None:
    errors: list[Exception] = []
    for event in pending:
        try:
            broker.publish(event.message)
        except DeliveryError as group:
            errors.extend(group.exceptions)
    if errors:
        raise_failures(type(pending[0].message).__message_name__, errors)


def _deliver(
    state: MessagingState,
    pending: list[PendingEvent],
    errors: list[Exception] | None = None,
    stored: bool = False,
) -> None:
    broker = state.broker
    for event in pending:
        route = broker.registry.route(type(event.message))
        if route.sync:
            errors = broker.deliver_sync(
                event.message, route.sync, event.message_id, errors
            )
    messages: list[tuple[str, list[Delivery]]] = []
    for event in pending:
        deliveries = event.deliveries
        if deliveries is None:
            deliveries, errors = broker.async_deliveries(
                event.message, event.message_id, event.data, errors
            )
        messages.append((event.message_id, deliveries))
    jobs = state.durable_jobs
    if jobs is None:  # the sink runs the handlers at once
        try:
            state.jobs.enqueue([d for _, deliveries in messages for d in deliveries])
        except DeliveryError as group:
            errors = [*(errors or ()), *group.exceptions]
    elif state.writes_outbox and stored:
        # The rows are committed: the jobs are written by the app's sender
        # thread, or left to the relay (sender.send_now).
        send_committed(state, messages)
    else:
        deliveries = [d for _, ds in messages for d in ds]
        if deliveries:
            try:
                jobs.enqueue(deliveries)
            except Exception:
                logger.error(
                    "Lost %d committed message(s) (%s): Redis could not be reached"
                    " and %s.",
                    len(messages),
                    ", ".join(m for m, _ in messages),
                    "they have no outbox row"
                    if state.writes_outbox
                    else "MESSAGING_OUTBOX is off",
                    exc_info=True,
                )
    if errors:
        raise_failures(type(pending[0].message).__message_name__, errors)
