"""The transactional outbox: events stored with the data, relayed to RQ.

Each event registered in a transaction becomes one row of the outbox table,
written in that same transaction: if the transaction commits, the event is
stored, whatever happens next. The row also holds the event's fan-out: the
async subscribers that must receive it, decided by the committing code
(predicates already evaluated). Right after the commit, the committing process
enqueues the event's jobs, from a thread of its own (:mod:`.sender`). Rows it
could not enqueue (Redis down, the process killed) are found by
:class:`Relay` (``flask messaging relay``, or any ``flask messaging
worker``), which delivers exactly the stored fan-out.

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
    subscribers  TEXT                      -- JSON list of async handler keys;
                                           -- NULL in rows of versions before it
    created_at   TIMESTAMP    NOT NULL     -- UTC
    available_at TIMESTAMP    NOT NULL     -- when the relay may take it,
                                           -- plus AVAILABLE_SHIFT in rows
                                           -- with a stored fan-out
    attempts     INTEGER      NOT NULL DEFAULT 0
    last_error   TEXT
    relayed_at   TIMESTAMP                 -- NULL while pending
    INDEX (relayed_at, available_at)
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import sqlalchemy as sa
from redis.exceptions import RedisError

from . import envelope as codec
from .dispatch import Delivery
from .message import Message
from .tables import table_on, utcnow

if TYPE_CHECKING:
    from .state import MessagingState

__all__ = [
    "BACKLOG_LISTED_READ",
    "RELAYED_KEY",
    "Backlog",
    "Deferred",
    "Relay",
    "outbox_backlog",
    "outbox_table",
]

logger = logging.getLogger("flask_messaging")

#: Redis list of message ids enqueued by committing processes, for the relay
#: to mark as relayed in the outbox.
RELAYED_KEY = "flask_messaging:outbox:relayed"

#: Added to ``available_at`` in rows with a stored fan-out. A relay of a
#: version before the ``subscribers`` column would deliver such a row to its
#: own subscribers and mark it relayed (dropping the ones it lacks): to it the
#: row is not due for a thousand years. This version subtracts it.
AVAILABLE_SHIFT = datetime.timedelta(days=366_000)

#: The most ids of :data:`RELAYED_KEY` that :meth:`Relay.backlog` reads.
BACKLOG_LISTED_READ = 1000

#: Ids per ``IN (...)`` list: well under SQLite's limit on bound parameters.
_CHUNK = 500


def outbox_table(metadata: sa.MetaData, name: str) -> sa.Table:
    """The outbox table on ``metadata`` (made by ``create_all`` with the rest)."""
    return table_on(
        metadata,
        name,
        sa.Column("message_id", sa.String(32), primary_key=True),
        sa.Column("message_type", sa.String(255), nullable=False),
        sa.Column("envelope", sa.Text, nullable=False),
        sa.Column("subscribers", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("available_at", sa.DateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("relayed_at", sa.DateTime, nullable=True),
        sa.Index(f"ix_{name}_pending", "relayed_at", "available_at"),
    )


class StoredEvent(Protocol):
    """What an outbox row is made of: a registered event and its fan-out."""

    message: Message
    message_id: str
    #: The encoded envelope.
    data: bytes
    #: Its async deliveries, predicates evaluated.
    deliveries: list[Delivery] | None


def outbox_rows(events: Sequence[StoredEvent], delay: float) -> list[dict[str, Any]]:
    """The rows of ``events``, each with its fan-out (``event.deliveries``).

    :param delay: seconds before a relay may take the rows
        (``MESSAGING_RELAY_DELAY``).
    """
    now = utcnow()
    available = now + datetime.timedelta(seconds=delay) + AVAILABLE_SHIFT
    return [
        {
            "message_id": event.message_id,
            "message_type": type(event.message).__message_name__,
            "envelope": event.data.decode(),
            "subscribers": _encode_subscribers(event.deliveries or ()),
            "created_at": now,
            "available_at": available,
            "attempts": 0,
        }
        for event in events
    ]


def _encode_subscribers(deliveries: Iterable[Delivery]) -> str:
    return json.dumps([d.subscription.key for d in deliveries])


def make_due(state: MessagingState, message_ids: Sequence[str]) -> None:
    """Let the relay take these rows at once, not after ``MESSAGING_RELAY_DELAY``.

    For rows whose committing process could not enqueue them: nobody else
    will, so a relay (``relay --once`` right after an outage) should not wait.
    """
    table = state.outbox
    assert table is not None
    now = utcnow()
    with state.engine.begin() as connection:
        for chunk in _chunks(message_ids):
            connection.execute(
                table.update()
                .where(table.c.message_id.in_(chunk), table.c.relayed_at.is_(None))
                .values(available_at=now + AVAILABLE_SHIFT)
            )


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


@dataclass(frozen=True)
class StoredFanOut:
    """The ``subscribers`` column of a row: who must still receive it.

    Written at commit as a JSON list of async handler keys. A relay that
    lacks some of them delivers the others and rewrites the column as
    ``{"delivered": [...], "pending": [...]}``: the row then waits for the
    pending ones only.
    """

    #: Keys already delivered by an earlier relay pass; None for a row as
    #: committed (a JSON list).
    delivered: list[str] | None
    #: Keys still to deliver.
    pending: list[str]

    @classmethod
    def decode(cls, text: str) -> StoredFanOut:
        value = json.loads(text)
        if isinstance(value, list):
            return cls(None, [str(key) for key in value])
        return cls(
            [str(key) for key in value["delivered"]],
            [str(key) for key in value["pending"]],
        )

    def encode(self) -> str:
        if self.delivered is None:
            return json.dumps(self.pending)
        return json.dumps({"delivered": self.delivered, "pending": self.pending})


@dataclass(frozen=True)
class _Plan:
    """What a relay pass does with one row."""

    fan_out: StoredFanOut
    #: The id of the enqueue marker (see ``RQJobs.enqueue_once``).
    marker: str
    deliveries: list[Delivery]
    #: Pending keys this app has no subscriber for.
    unknown: list[str]
    message_type: str

    def remainder(self) -> StoredFanOut:
        delivered = [*(self.fan_out.delivered or ()), *self._known()]
        return StoredFanOut(delivered, list(self.unknown))

    def _known(self) -> list[str]:
        return [key for key in self.fan_out.pending if key not in self.unknown]

    def unknown_error(self, message_id: str) -> str:
        names = ", ".join(repr(key) for key in self.unknown)
        delivered = ", ".join(repr(key) for key in self._known()) or "none"
        return (
            f"The async subscriber(s) {names} of {self.message_type!r} are unknown"
            f" to this relay (delivered to the others: {delivered}). Either this"
            " relay runs older code than the one that committed the event (a"
            " deploy in progress: a relay with the newer code delivers the rest),"
            " or the subscriber was removed from the code: then run 'flask"
            f" messaging outbox drop-subscriber {self.unknown[0]}' (--dry-run"
            " first) to stop waiting for it."
        )


@dataclass(frozen=True)
class Backlog:
    """Outbox rows not marked relayed, as :meth:`Relay.backlog` counts them."""

    #: Rows nobody has enqueued: the relay's work. When Redis cannot be
    #: read (``enqueued`` is None), every row not marked relayed.
    waiting: int
    #: Rows the committing process enqueued, not yet marked by a relay pass;
    #: None when Redis cannot be read to tell them apart.
    enqueued: int | None
    #: When the oldest waiting row was committed (naive UTC); None if none.
    oldest_waiting_at: datetime.datetime | None
    #: More ids were listed than :meth:`Relay.backlog` reads: ``enqueued``
    #: is the list's length and the oldest waiting row may be an enqueued
    #: one (so its age is an upper bound).
    approximate: bool = False

    @property
    def oldest_waiting_age(self) -> float | None:
        """Seconds since the oldest waiting row was committed."""
        if self.oldest_waiting_at is None:
            return None
        return max(0.0, (utcnow() - self.oldest_waiting_at).total_seconds())


@dataclass(frozen=True)
class Deferred:
    """Pending rows a relay pass left, and why (see :meth:`Relay.deferred`)."""

    #: Rows committed less than ``MESSAGING_RELAY_DELAY`` ago, left to the
    #: process that committed them.
    not_yet_due: int
    #: Rows that failed to relay (an unknown message type or subscriber),
    #: waiting for their next attempt.
    backing_off: int
    #: When the first of them becomes due (naive UTC); None if none.
    next_due_at: datetime.datetime | None
    #: The latest error of a row backing off.
    last_error: str | None

    @property
    def total(self) -> int:
        return self.not_yet_due + self.backing_off


class Relay:
    """Moves outbox rows nobody enqueued to RQ, and marks relayed rows.

    Several relays may run at once on PostgreSQL (rows are claimed with
    ``FOR UPDATE SKIP LOCKED``); on SQLite run one. Its timings and batch
    size are the app's (:attr:`settings`: ``MESSAGING_RELAY_DELAY``,
    ``MESSAGING_RELAY_INTERVAL``, ``MESSAGING_RELAY_BATCH_SIZE``,
    ``MESSAGING_OUTBOX_RETENTION``).

    :raises RuntimeError: the app has no outbox, ``MESSAGING_ASYNC`` is
        off, or the outbox table or one of its columns is missing.
    """

    def __init__(self, state: MessagingState) -> None:
        if state.outbox is None:
            raise RuntimeError(
                "The outbox is off: bind a database (messaging.init_app(app,"
                " db=db)) and keep MESSAGING_OUTBOX = True to use the relay."
            )
        if state.durable_jobs is None:
            raise RuntimeError(
                "MESSAGING_ASYNC is off: async subscribers run inline and nothing"
                " is written to the outbox, so there is nothing to relay."
            )
        self.state = state
        self.jobs = state.durable_jobs
        self.table = state.outbox
        #: The app's outbox settings; their times are in seconds.
        self.settings = state.settings.outbox
        check_table(self.engine, self.table)

    @property
    def engine(self) -> sa.Engine:
        return self.state.engine

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
        """Relay until ``stop`` is set; failures (Redis down) are retried.

        :param interval: seconds to wait after each pass; default
            ``MESSAGING_RELAY_INTERVAL``.
        """
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
        """Claim due rows, enqueue what nobody did; return (enqueued, taken).

        A row naming subscribers this app lacks has its other subscribers
        delivered; it stays pending for the unknown ones only (see
        :class:`StoredFanOut`), backing off, for a relay that has them or
        for ``flask messaging outbox drop-subscriber``.
        """
        table = self.table
        now = utcnow()
        query = (
            sa.select(
                table.c.message_id,
                table.c.envelope,
                table.c.subscribers,
                table.c.attempts,
            )
            .where(table.c.relayed_at.is_(None), due_by(table, now))
            .order_by(table.c.message_id)
            .limit(self.settings.relay_batch_size)
        )
        with self.engine.begin() as connection:
            if connection.dialect.name != "sqlite":
                query = query.with_for_update(skip_locked=True)
            rows = connection.execute(query).all()
            if not rows:
                return 0, 0
            plans: list[tuple[str, int, _Plan]] = []
            failed: list[tuple[str, int, str, bool]] = []
            for message_id, data, subscribers, attempts in rows:
                try:
                    plan = self._plan(message_id, data.encode(), subscribers)
                except Exception as exc:
                    logger.error(
                        "Outbox message %s cannot be relayed (attempt %d): %s",
                        message_id,
                        attempts + 1,
                        exc,
                    )
                    failed.append(
                        (message_id, attempts + 1, str(exc), subscribers is not None)
                    )
                else:
                    plans.append((message_id, attempts, plan))
            flags = self.jobs.enqueue_once(
                [(p.marker, p.deliveries) for *_, p in plans]
            )
            done = [
                message_id
                for (message_id, _, plan), flag in zip(plans, flags, strict=True)
                # A first pass that finds the message enqueued: the committing
                # process enqueued its whole fan-out.
                if not plan.unknown or (not flag and plan.fan_out.delivered is None)
            ]
            if done:
                connection.execute(
                    table.update()
                    .where(table.c.message_id.in_(done))
                    .values(relayed_at=utcnow())
                )
            for (message_id, attempts, plan), _ in zip(plans, flags, strict=True):
                if message_id in done:
                    continue
                error = plan.unknown_error(message_id)
                logger.error(
                    "Outbox message %s (attempt %d): %s",
                    message_id,
                    attempts + 1,
                    error,
                )
                failed.append((message_id, attempts + 1, error, True))
                connection.execute(
                    table.update()
                    .where(table.c.message_id == message_id)
                    .values(subscribers=plan.remainder().encode())
                )
            for message_id, attempts, error, shifted in failed:
                # Back off, so that rows this code cannot deliver yet (deploy
                # skew) do not hold up the others.
                delay = min(3600, 2**attempts)
                shift = AVAILABLE_SHIFT if shifted else datetime.timedelta()
                connection.execute(
                    table.update()
                    .where(table.c.message_id == message_id)
                    .values(
                        attempts=attempts,
                        last_error=error,
                        available_at=now + datetime.timedelta(seconds=delay) + shift,
                    )
                )
        return sum(flags), len(rows)

    def _plan(self, message_id: str, data: bytes, subscribers: str | None) -> _Plan:
        envelope = codec.decode_envelope(data)
        message = codec.decode(envelope)  # raises on an unknown message type
        if subscribers is None:
            # A row written before the fan-out was stored with it: the
            # subscribers are this app's, as the writing version would do.
            deliveries, _ = self.state.broker.async_deliveries(
                message, envelope.id, data
            )
            return _Plan(StoredFanOut(None, []), message_id, deliveries, [], "")
        fan_out = StoredFanOut.decode(subscribers)
        message_type = type(message)
        registry = self.state.broker.registry
        deliveries = []
        unknown = []
        for key in fan_out.pending:
            subscription = registry.async_subscription(key, message_type)
            if subscription is None:
                unknown.append(key)
            else:
                deliveries.append(
                    Delivery(subscription, envelope.type, envelope.id, data)
                )
        # A later pass over what an earlier one left is enqueued under a
        # marker of its own: the message id's marker is already set.
        marker = message_id
        if fan_out.delivered is not None:
            marker = f"{message_id}:{','.join(sorted(fan_out.pending))}"
        return _Plan(fan_out, marker, deliveries, unknown, envelope.type)

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

    def backlog(self) -> Backlog:
        """Count the rows not marked relayed: waiting, or already enqueued.

        Rows the committing process enqueued are told apart by the ids it
        listed in Redis (:data:`RELAYED_KEY`); reading changes nothing. At
        most :data:`BACKLOG_LISTED_READ` ids of that list are read (every
        relay pass empties it): with more listed (no relay has run for a
        while), ``enqueued`` is the list's length (bounded by the rows not
        marked), the oldest waiting row is looked for among the rows not in
        the part read, and ``approximate`` is True. Either way the work is
        bounded: one ``COUNT``, a few ``IN`` lists and pages of rows.
        With Redis unreachable (an outage, when the backlog matters most)
        the rows are still counted, as waiting, and ``enqueued`` is None.
        """
        table = self.table
        try:
            with self.state.redis.pipeline(transaction=False) as pipe:
                pipe.llen(RELAYED_KEY)
                pipe.lrange(RELAYED_KEY, 0, BACKLOG_LISTED_READ - 1)
                length, ids = cast("tuple[int, list[bytes]]", tuple(pipe.execute()))
        except (RedisError, OSError):
            length, ids, unknown = 0, [], True
        else:
            unknown = False
        listed = {i.decode() for i in ids}
        approximate = length > len(ids)
        pending = table.c.relayed_at.is_(None)
        with self.engine.connect() as connection:
            total = int(
                connection.execute(
                    sa.select(sa.func.count()).select_from(table).where(pending)
                ).scalar_one()
            )
            if approximate:
                enqueued = min(length, total)
            else:
                enqueued = sum(
                    connection.execute(
                        sa.select(sa.func.count())
                        .select_from(table)
                        .where(pending, table.c.message_id.in_(chunk))
                    ).scalar_one()
                    for chunk in _chunks(sorted(listed))
                )
            oldest = None
            after = ""
            # The oldest pending row nobody listed: listed rows come first at
            # most len(listed) times, so this reads about that many rows.
            while oldest is None:
                page = connection.execute(
                    sa.select(table.c.message_id, table.c.created_at)
                    .where(pending, table.c.message_id > after)
                    .order_by(table.c.message_id)
                    .limit(_CHUNK)
                ).all()
                for message_id, created_at in page:
                    if message_id not in listed:
                        oldest = created_at
                        break
                if len(page) < _CHUNK:
                    break
                after = page[-1][0]
        if unknown:
            return Backlog(total, None, oldest)
        return Backlog(total - int(enqueued), int(enqueued), oldest, approximate)

    def deferred(self) -> Deferred:
        """The pending rows that are not due yet, and when the first one is."""
        table = self.table
        backing_off = table.c.attempts > 0
        now = utcnow()
        counts = {False: 0, True: 0}
        next_due: datetime.datetime | None = None
        last_error = None
        with self.engine.connect() as connection:
            for stored, shift in (
                (table.c.subscribers.is_(None), datetime.timedelta()),
                (table.c.subscribers.is_not(None), AVAILABLE_SHIFT),
            ):
                query = (
                    sa.select(
                        backing_off.label("backing_off"),
                        sa.func.count(),
                        sa.func.min(table.c.available_at),
                    )
                    .where(
                        table.c.relayed_at.is_(None),
                        stored,
                        table.c.available_at > now + shift,
                    )
                    .group_by(backing_off)
                )
                for is_backing_off, count, due in connection.execute(query):
                    counts[bool(is_backing_off)] += int(count)
                    due -= shift
                    next_due = due if next_due is None else min(next_due, due)
            if counts[True]:
                last_error = connection.execute(
                    sa.select(table.c.last_error)
                    .where(table.c.relayed_at.is_(None), backing_off)
                    .order_by(table.c.message_id.desc())
                    .limit(1)
                ).scalar()
        return Deferred(counts[False], counts[True], next_due, last_error)


def due_by(table: sa.Table, now: datetime.datetime) -> sa.ColumnElement[bool]:
    """Rows due at ``now``: ``available_at`` shifted in rows with a fan-out."""
    return sa.or_(
        sa.and_(
            table.c.subscribers.is_not(None),
            table.c.available_at <= now + AVAILABLE_SHIFT,
        ),
        sa.and_(table.c.subscribers.is_(None), table.c.available_at <= now),
    )


def available_at(
    row_available_at: datetime.datetime, subscribers: str | None
) -> datetime.datetime:
    """When a row is due (naive UTC), its ``available_at`` unshifted."""
    if subscribers is None:
        return row_available_at
    return row_available_at - AVAILABLE_SHIFT


def check_table(engine: sa.Engine | sa.Connection, table: sa.Table) -> None:
    """Raise a :class:`RuntimeError` saying how to fix a missing table or column."""
    inspector = sa.inspect(engine)
    if not inspector.has_table(table.name):
        raise RuntimeError(
            f"The outbox table {table.name!r} does not exist: create it once, with"
            " db.create_all() in a set-up command or a migration (its columns are"
            " listed in the flask_messaging.outbox documentation), before starting"
            " the app's processes."
        )
    columns = {column["name"] for column in inspector.get_columns(table.name)}
    missing = [c.name for c in table.columns if c.name not in columns]
    if missing:
        adds = "; ".join(
            f"ALTER TABLE {table.name} ADD COLUMN {name}"
            f" {table.c[name].type.compile(engine.dialect)}"
            for name in missing
        )
        raise RuntimeError(
            f"The outbox table {table.name!r} lacks the column(s)"
            f" {', '.join(missing)}, which this version of flask-messaging writes:"
            f" add them with a migration ({adds}), as docs/transactions.md shows."
        )


def outbox_backlog(state: MessagingState) -> Backlog | None:
    """Outbox rows not marked relayed: waiting, or already enqueued.

    ``None`` without an outbox. See :meth:`Relay.backlog`.
    """
    if state.outbox is None:
        return None
    return Relay(state).backlog()
