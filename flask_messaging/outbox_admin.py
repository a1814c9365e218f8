"""Operator actions on outbox rows a relay cannot finish.

A row naming an async subscriber that no relay has (it was removed from the
code) waits for it, backing off, while its other subscribers are delivered
(see :class:`~flask_messaging.outbox.StoredFanOut`). These functions, behind
``flask messaging outbox``, list such rows, stop waiting for a subscriber, or
discard a row. Each returns what it changed (or, with ``dry_run``, would).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .outbox import AVAILABLE_SHIFT, StoredFanOut, available_at
from .tables import utcnow

if TYPE_CHECKING:
    from .state import MessagingState

__all__ = ["StuckRow", "discard", "drop_subscriber", "stuck_rows"]


@dataclass(frozen=True)
class StuckRow:
    """A pending row that has failed to relay at least once."""

    message_id: str
    message_type: str
    #: Subscriber keys it still waits for; None for a row of a version
    #: without a stored fan-out.
    pending: list[str] | None
    attempts: int
    last_error: str | None
    #: When a relay tries it next (naive UTC).
    available_at: datetime.datetime


def _table(state: MessagingState) -> sa.Table:
    if state.outbox is None:
        raise RuntimeError(
            "The outbox is off: bind a database (messaging.init_app(app, db=db))"
            " and keep MESSAGING_OUTBOX = True."
        )
    return state.outbox


def stuck_rows(state: MessagingState, limit: int = 100) -> list[StuckRow]:
    """The first ``limit`` pending rows with failed attempts, oldest first."""
    table = _table(state)
    query = (
        sa.select(
            table.c.message_id,
            table.c.message_type,
            table.c.subscribers,
            table.c.attempts,
            table.c.last_error,
            table.c.available_at,
        )
        .where(table.c.relayed_at.is_(None), table.c.attempts > 0)
        .order_by(table.c.message_id)
        .limit(limit)
    )
    with state.engine.connect() as connection:
        found = connection.execute(query).all()
    return [
        StuckRow(
            row.message_id,
            row.message_type,
            None
            if row.subscribers is None
            else StoredFanOut.decode(row.subscribers).pending,
            row.attempts,
            row.last_error,
            available_at(row.available_at, row.subscribers),
        )
        for row in found
    ]


def drop_subscriber(
    state: MessagingState, key: str, *, dry_run: bool = False
) -> list[str]:
    """Stop waiting for subscriber ``key`` in every pending row.

    A row left with nobody to wait for is marked relayed; the others stay
    pending for their remaining subscribers, due at once.

    :return: the ids of the rows changed (or that would be, with ``dry_run``).
    """
    table = _table(state)
    now = utcnow()
    changed: list[str] = []
    with state.engine.begin() as connection:
        query = sa.select(table.c.message_id, table.c.subscribers).where(
            table.c.relayed_at.is_(None),
            table.c.subscribers.contains(f'"{key}"', autoescape=True),
        )
        if connection.dialect.name != "sqlite":
            query = query.with_for_update()
        for message_id, subscribers in connection.execute(query).all():
            fan_out = StoredFanOut.decode(subscribers)
            if key not in fan_out.pending:
                continue
            changed.append(message_id)
            if dry_run:
                continue
            rest = StoredFanOut(
                fan_out.delivered, [k for k in fan_out.pending if k != key]
            )
            values: dict[str, object] = {
                "subscribers": rest.encode(),
                "available_at": now + AVAILABLE_SHIFT,
            }
            if not rest.pending:
                values["relayed_at"] = now
            connection.execute(
                table.update().where(table.c.message_id == message_id).values(values)
            )
    return changed


def discard(state: MessagingState, message_id: str, *, dry_run: bool = False) -> bool:
    """Mark a pending row relayed without delivering the rest of it.

    The row stays, as relayed rows do, until ``MESSAGING_OUTBOX_RETENTION``.

    :return: whether a pending row with that id exists.
    """
    table = _table(state)
    pending = sa.and_(table.c.message_id == message_id, table.c.relayed_at.is_(None))
    with state.engine.begin() as connection:
        if dry_run:
            found = connection.execute(
                sa.select(sa.func.count()).select_from(table).where(pending)
            ).scalar_one()
            return bool(found)
        result = connection.execute(
            table.update()
            .where(pending)
            .values(relayed_at=utcnow(), last_error="discarded by an operator")
        )
        return bool(result.rowcount)
