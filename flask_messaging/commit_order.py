"""Committing a session that spans several databases, the outbox's last.

A Flask-SQLAlchemy session with binds holds one connection per database and
SQLAlchemy commits them one after the other, in no set order. If the outbox
row's database committed before another one failed at COMMIT (a deferred
constraint, a serialization failure, a lost connection), the row would stay
committed and the relay would deliver the event of a transaction that did not
wholly commit. So, before the session commits, the other databases are
committed first; if one of them fails, the outbox's connection has not
committed and rolls back with the rest of the session.

What this cannot make atomic (no order can): the outbox's own COMMIT failing
after the others committed. The event then does not leave; the other
databases keep their writes, as they would without messaging. A session with
``twophase=True`` is left to SQLAlchemy, which prepares every database
before committing any.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

__all__ = ["commit_others_first"]


def commit_others_first(session: Session, outbox_bind: Any) -> None:
    """Commit every database of the session's transaction but the outbox's.

    Called by the ``before_commit`` listener once the outbox rows are written
    and the session flushed. A transaction on one database is left alone.

    :param outbox_bind: the engine the outbox table lives on.
    :raises RuntimeError: the session uses a connection it does not commit
        itself (an external transaction), so the order cannot be decided:
        refused rather than risk an event without its data.
    """
    if session.twophase:
        return
    transaction = session.get_transaction()
    assert transaction is not None
    # SQLAlchemy's own record of the transaction's connections, keyed by
    # engine and by connection: (connection, transaction, whether the session
    # commits it, whether it closes it). Public read-only views of it exist
    # only from SQLAlchemy 2.1.7, and none lets the commit be ordered.
    entries: dict[Any, tuple[Any, Any, bool, bool]] = transaction._connections
    distinct = {id(entry): entry for entry in entries.values()}
    if len(distinct) < 2:
        return
    outbox_entry = entries.get(outbox_bind)
    if outbox_entry is None:
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
    for entry in distinct.values():
        if entry is outbox_entry:
            continue
        connection, root, _, autoclose = entry
        # Raises if this database fails at COMMIT: the session's commit then
        # fails before the outbox's database has committed anything.
        root.commit()
        # An empty transaction in its place, which the session must not
        # commit (a rollback after the outbox's COMMIT failed would then find
        # it already ended), only roll back or close with the connection.
        replacement = (connection, connection.begin(), False, autoclose)
        for key in [k for k, e in entries.items() if e is entry]:
            entries[key] = replacement
