"""The transactional outbox: events stored with the data, relayed to RQ.

Each event registered in a transaction becomes one row of the outbox table,
written in that same transaction: if the transaction commits, the event is
stored, whatever happens next. Right after the commit, the committing process
enqueues the event's jobs. Rows it could not enqueue (Redis down, the process
killed) are found by :class:`Relay` (``flask messaging relay``).

Enqueueing is made idempotent by a marker per message in Redis, set atomically
with the jobs (``RQJobs.enqueue_once``): whoever
comes second, the relay or the committing process, enqueues nothing.
The committing process does not write to the database again to record that a
row was relayed; it appends the message id to a Redis list, and the relay
marks those rows in bulk.

The table, for Alembic users (``MESSAGING_OUTBOX_TABLE``, default
``messaging_outbox``)::

    message_id   VARCHAR(32)  PRIMARY KEY  -- UUIDv7 hex: time ordered
    message_type VARCHAR(255) NOT NULL
    envelope     TEXT         NOT NULL     -- the JSON envelope
    created_at   TIMESTAMP    NOT NULL     -- UTC
    available_at TIMESTAMP    NOT NULL     -- when the relay may take it
    attempts     INTEGER      NOT NULL DEFAULT 0
    last_error   TEXT
    relayed_at   TIMESTAMP                 -- NULL while pending
    INDEX (relayed_at, available_at)
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa

from . import envelope as codec
from .jobs import Delivery, RQJobs

if TYPE_CHECKING:
    from .extension import MessagingState
    from .transaction import PendingEvent

__all__ = ["RELAYED_KEY", "Relay", "outbox_table"]

logger = logging.getLogger("flask_messaging")

#: Redis list of message ids enqueued by committing processes, for the relay
#: to mark as relayed in the outbox.
RELAYED_KEY = "flask_messaging:outbox:relayed"


def utcnow() -> datetime.datetime:
    # Naive UTC: stored and compared the same way by every database.
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def outbox_table(metadata: sa.MetaData, name: str) -> sa.Table:
    """The outbox table on ``metadata`` (made by ``create_all`` with the rest)."""
    existing = metadata.tables.get(name)
    if existing is not None:
        return existing
    return sa.Table(
        name,
        metadata,
        sa.Column("message_id", sa.String(32), primary_key=True),
        sa.Column("message_type", sa.String(255), nullable=False),
        sa.Column("envelope", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("available_at", sa.DateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("relayed_at", sa.DateTime, nullable=True),
        sa.Index(f"ix_{name}_pending", "relayed_at", "available_at"),
    )


def outbox_rows(events: Sequence[PendingEvent], delay: float) -> list[dict[str, Any]]:
    now = utcnow()
    available = now + datetime.timedelta(seconds=delay)
    return [
        {
            "message_id": event.message_id,
            "message_type": type(event.message).__message_name__,
            "envelope": event.data.decode(),
            "created_at": now,
            "available_at": available,
            "attempts": 0,
        }
        for event in events
    ]


class Relay:
    """Moves outbox rows nobody enqueued to RQ, and marks relayed rows.

    Several relays may run at once on PostgreSQL (rows are claimed with
    ``FOR UPDATE SKIP LOCKED``); on SQLite run one.
    """

    def __init__(self, state: MessagingState) -> None:
        if state.outbox is None:
            raise RuntimeError(
                "The outbox is off: bind a database (messaging.init_app(app,"
                " db=db)) and keep MESSAGING_OUTBOX = True to use the relay."
            )
        if not isinstance(state.jobs, RQJobs):
            raise RuntimeError(
                "MESSAGING_ASYNC is off: async subscribers run inline and nothing"
                " is written to the outbox, so there is nothing to relay."
            )
        self.state = state
        self.jobs = state.jobs
        self.table = state.outbox
        self.settings = state.settings.outbox
        if not sa.inspect(self.engine).has_table(self.table.name):
            raise RuntimeError(
                f"The outbox table {self.table.name!r} does not exist: create it"
                " with db.create_all() or a migration (its columns are listed in"
                " the flask_messaging.outbox documentation)."
            )

    @property
    def engine(self) -> sa.Engine:
        return self.state.db.engine  # type: ignore[no-any-return]

    def run_once(self) -> int:
        """One pass: mark, relay everything due, prune; return how many enqueued."""
        self.mark_relayed()
        total = 0
        while True:
            enqueued, taken = self.relay_batch()
            total += enqueued
            if taken < self.settings.relay_batch_size:
                break
        self.prune()
        return total

    def run(self, stop: threading.Event, interval: float | None = None) -> None:
        """Relay until ``stop`` is set; failures (Redis down) are retried."""
        interval = self.settings.relay_interval if interval is None else interval
        while not stop.is_set():
            try:
                enqueued = self.run_once()
            except Exception:
                logger.exception("Relay pass failed; retrying in %s s", interval)
            else:
                if enqueued:
                    logger.info("Relayed %d message(s) from the outbox", enqueued)
            stop.wait(interval)

    def mark_relayed(self) -> int:
        """Mark the rows the committing processes enqueued; return how many."""
        redis = self.state.redis
        marked = 0
        while True:
            ids = cast("list[bytes] | None", redis.lpop(RELAYED_KEY, 1000))
            if not ids:
                return marked
            table = self.table
            with self.engine.begin() as connection:
                connection.execute(
                    table.update()
                    .where(table.c.message_id.in_([i.decode() for i in ids]))
                    .where(table.c.relayed_at.is_(None))
                    .values(relayed_at=utcnow())
                )
            marked += len(ids)

    def relay_batch(self) -> tuple[int, int]:
        """Claim due rows, enqueue what nobody did; return (enqueued, taken)."""
        table = self.table
        now = utcnow()
        query = (
            sa.select(table.c.message_id, table.c.envelope, table.c.attempts)
            .where(table.c.relayed_at.is_(None), table.c.available_at <= now)
            .order_by(table.c.message_id)
            .limit(self.settings.relay_batch_size)
        )
        with self.engine.begin() as connection:
            if connection.dialect.name != "sqlite":
                query = query.with_for_update(skip_locked=True)
            rows = connection.execute(query).all()
            if not rows:
                return 0, 0
            messages: list[tuple[str, Sequence[Delivery]]] = []
            failed: list[tuple[str, int, str]] = []
            for message_id, data, attempts in rows:
                try:
                    messages.append((message_id, self._deliveries(data.encode())))
                except Exception as exc:
                    logger.error(
                        "Outbox message %s cannot be relayed (attempt %d): %s",
                        message_id,
                        attempts + 1,
                        exc,
                    )
                    failed.append((message_id, attempts + 1, str(exc)))
            enqueued = self.jobs.enqueue_once(messages)
            if messages:
                connection.execute(
                    table.update()
                    .where(table.c.message_id.in_([m for m, _ in messages]))
                    .values(relayed_at=utcnow())
                )
            for message_id, attempts, error in failed:
                # Back off, so that rows this code cannot read yet (deploy
                # skew) do not hold up the others.
                delay = min(3600, 2**attempts)
                connection.execute(
                    table.update()
                    .where(table.c.message_id == message_id)
                    .values(
                        attempts=attempts,
                        last_error=error,
                        available_at=now + datetime.timedelta(seconds=delay),
                    )
                )
        return sum(enqueued), len(rows)

    def _deliveries(self, data: bytes) -> list[Delivery]:
        envelope = codec.decode_envelope(data)
        message = codec.decode(envelope)
        # A predicate that fails is logged there; its subscriber gets nothing.
        deliveries, _ = self.state.broker.async_deliveries(message, envelope.id, data)
        return deliveries

    def prune(self) -> int:
        """Delete rows relayed longer ago than ``MESSAGING_OUTBOX_RETENTION``."""
        table = self.table
        cutoff = utcnow() - datetime.timedelta(seconds=self.settings.retention)
        with self.engine.begin() as connection:
            result = connection.execute(
                table.delete().where(
                    table.c.relayed_at.is_not(None), table.c.relayed_at < cutoff
                )
            )
        return int(result.rowcount or 0)

    def backlog(self) -> int:
        """How many rows are waiting to be relayed."""
        table = self.table
        with self.engine.connect() as connection:
            count = connection.execute(
                sa.select(sa.func.count()).where(table.c.relayed_at.is_(None))
            ).scalar_one()
        return int(count)
