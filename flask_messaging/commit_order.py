"""Committing a session that spans several databases, the outbox's last.

A Flask-SQLAlchemy session with binds holds one connection per database and
SQLAlchemy commits them one after the other, in no set order. If the outbox
row's database committed before another one failed at COMMIT (a deferred
constraint, a serialization failure, a lost connection), the row would stay
committed and the relay would deliver the event of a transaction that did not
wholly commit. So, when SQLAlchemy sends the first COMMIT of the session's
transaction (every ``before_commit`` listener has run and the last flush is
done: nothing of the transaction is still to be written), the other databases
are committed first; if one of them fails, the outbox's connection has not
committed and rolls back with the rest of the session.

The other databases are committed on their DBAPI connections, through the
connection's own commit path (its ``commit`` event, its error handling);
SQLAlchemy's transaction objects stay as they are, so the session's own loop
then commits them as always, a COMMIT with nothing left to commit.

What this cannot make atomic (no order can): the outbox's own COMMIT failing
after the others committed. The event then does not leave; the other
databases keep their writes, as they would without messaging. A session with
``twophase=True`` is left to SQLAlchemy, which prepares every database
before committing any.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

__all__ = ["commit_others_first", "outbox_connection"]


def _entries(session: Session) -> dict[int, tuple[Any, Any, bool, bool]]:
    transaction = session.get_transaction()
    if transaction is None:
        return {}
    # SQLAlchemy's own record of the transaction's connections, keyed by
    # engine and by connection: (connection, transaction, whether the session
    # commits it, whether it closes it). Public read-only views of it exist
    # only from SQLAlchemy 2.1.7, and none lets the commit be ordered.
    entries: dict[Any, tuple[Any, Any, bool, bool]] = transaction._connections
    return {id(entry): entry for entry in entries.values()}


def outbox_connection(session: Session, outbox_bind: Any) -> sa.Connection | None:
    """The session transaction's connection to ``outbox_bind``, if it has one."""
    transaction = session.get_transaction()
    if transaction is None:
        return None
    entry = transaction._connections.get(outbox_bind)
    return None if entry is None else entry[0]


def commit_others_first(
    session: Session, outbox_bind: Any, committing: sa.Connection | None = None
) -> None:
    """Commit every database of the session's transaction but the outbox's.

    Called from the connection ``commit`` event that SQLAlchemy fires for
    the first connection it commits (``committing``, which commits right
    after, itself), once the outbox rows are written. A transaction on one
    database is left alone.

    :param outbox_bind: the engine the outbox table lives on.
    :raises RuntimeError: the session uses a connection it does not commit
        itself (an external transaction), so the order cannot be decided:
        refused rather than risk an event without its data.
    :raises sqlalchemy.exc.DBAPIError: a database failed at COMMIT; the
        outbox's has not committed.
    """
    if session.twophase:
        return
    distinct = _entries(session)
    if len(distinct) < 2:
        return
    outbox = outbox_connection(session, outbox_bind)
    if outbox is None:
        raise RuntimeError(
            "The outbox rows were written but the session holds no connection"
            " for the outbox's database; nothing was committed."
        )
    if not all(entry[2] for entry in distinct.values()):
        raise RuntimeError(
            "This transaction writes to several databases and at least one of"
            " them is joined from an outside transaction, which the session does"
            " not commit: flask-messaging cannot commit the outbox's database"
            " last, so it refuses to commit registered events. Commit that"
            " outside transaction yourself first, or register the events in a"
            " session that owns its connections."
        )
    for connection, _, _, _ in distinct.values():
        if connection is outbox or connection is committing:
            continue
        # Raises if this database fails at COMMIT: the session's commit then
        # fails before the outbox's database has committed anything.
        connection._commit_impl()


def after_failed_commit(session: Session) -> None:
    """Let the session roll back after one of its COMMITs failed.

    Called from the ``handle_error`` event of a connection whose COMMIT
    failed after others of the same transaction committed. Their
    transactions are over, and the rollback that must follow would warn
    (or, with warnings as errors, raise) on each: each is given an empty
    transaction in its place, which the rollback ends.
    """
    transaction = session.get_transaction()
    if transaction is None:
        return
    entries: dict[Any, tuple[Any, Any, bool, bool]] = transaction._connections
    replaced: dict[int, tuple[Any, Any, bool, bool]] = {}
    for key, entry in list(entries.items()):
        connection, root, _, autoclose = entry
        if root.is_active or connection._transaction is root:
            continue
        if id(entry) not in replaced:
            replaced[id(entry)] = (connection, connection.begin(), False, autoclose)
        entries[key] = replaced[id(entry)]
