"""Idempotent consumers: run an async handler once per message, not per delivery.

Async delivery is at least once: a worker killed mid-handler, a Redis restart
or a retry after a partial failure delivers a message to a handler again.
:func:`idempotent` records each (handler, message id) it handled and skips a
repeat. The message id is :func:`~flask_messaging.envelope.current_envelope`
``().id``,
the same in every job and every retry of one message.

.. code-block:: python

    @messaging.subscribe_async(UserRegistered, queue_name=LOW_PRIORITY)
    @idempotent  # marks in the app's Redis
    def send_welcome_email(event: UserRegistered) -> None:
        mailer.send(event.email, "Welcome!")

Apply it under the subscribe decorator, so that the subscription gets the
wrapped handler. The wrapper keeps the handler's module, name and signature,
so its stable key (``module:qualname``) does not change. On an ``async def``
handler the wrapper is ``async def`` too, and the message is marked handled
only once the coroutine has completed.

Two stores, two guarantees:

:class:`RedisMarks` (the default)
    A mark in Redis, claimed before the handler runs, released when it fails
    (so the retry runs it), set to "done" when it returns. It skips repeats of
    handled messages and stops two deliveries of one message running at once.
    Its window: the handler's effects happened but the "done" mark was not
    written (the process died in between, or Redis was unreachable): the next
    delivery runs the handler again. Effects stored elsewhere than the mark
    cannot be made exactly once by any store; the marks also need Redis
    persistence (AOF) to survive a Redis restart.

:class:`DatabaseMarks`
    A row inserted in the handler's own database transaction, under a unique
    key, and committed with the handler's effects (and the events it
    registers): both happen, or neither does. This gives exactly-once effects
    for effects in that database.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar, overload

import sqlalchemy as sa

from ._rq.job import current_job
from .coroutines import is_coroutine_function
from .envelope import current_envelope
from .errors import MessagingError
from .state import FlaskSQLAlchemy, get_state
from .subscription import handler_key
from .tables import table_on, utcnow

__all__ = [
    "AsyncMarkStore",
    "DatabaseMarks",
    "HandlingInProgressError",
    "MarkStore",
    "RedisMarks",
    "idempotent",
]

logger = logging.getLogger("flask_messaging")

P = ParamSpec("P")
R = TypeVar("R")


class HandlingInProgressError(MessagingError):
    """Another delivery of this message to this handler is running right now.

    Raised instead of running the handler a second time at once; the job fails
    and RQ retries it per the subscription's ``retry``, by when the other
    delivery has finished (and this one is skipped) or failed (and this one
    runs).
    """


class MarkStore(Protocol):
    """Where :func:`idempotent` records the messages a handler has handled."""

    def run_once(
        self, handler: str, message_id: str, call: Callable[[], R]
    ) -> R | None:
        """Run ``call`` unless ``handler`` already handled ``message_id``.

        :return: what ``call`` returned, or ``None`` when it was skipped.
        """
        ...


class AsyncMarkStore(MarkStore, Protocol):
    """A :class:`MarkStore` that can also guard ``async def`` handlers."""

    async def run_once_async(
        self, handler: str, message_id: str, call: Callable[[], Awaitable[R]]
    ) -> R | None:
        """Await ``call()`` unless ``handler`` already handled ``message_id``.

        The mark that the message was handled is written only once the
        awaitable has completed without error.

        :return: what the awaitable gave, or ``None`` when it was skipped.
        """
        ...


# --------------------------------------------------------------------------
# Redis marks.

# KEYS[1]: the mark. ARGV: the claimant's token, the lease in milliseconds.
# A mark holds "done", or "running:<token>" while a delivery runs. The same
# token claiming again is a retry of the same RQ job, which RQ only starts
# once the earlier run has ended (failed, or its worker died): take it over.
_CLAIM = """
local mark = redis.call('GET', KEYS[1])
local mine = 'running:' .. ARGV[1]
if mark == 'done' then
  return 'done'
end
if mark and mark ~= mine then
  return 'busy'
end
redis.call('SET', KEYS[1], mine, 'PX', ARGV[2])
return 'claimed'
"""

# KEYS[1]: the mark. ARGV[1]: the token. Releases only our own claim.
_RELEASE = """
if redis.call('GET', KEYS[1]) == 'running:' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisMarks:
    """Marks in Redis: claimed before the handler, "done" after it.

    :param redis: a client, or a callable returning one; default: the Redis
        of the current app (``MESSAGING_REDIS_URL``).
    :param ttl: seconds a "done" mark is kept: longer than any redelivery
        (retries, requeues from the failed job registry) may take.
    :param lease: seconds a claim lasts when the job's own timeout is
        unknown; otherwise the job's timeout plus a minute. A claim whose
        holder died without releasing it (``kill -9``) is taken over at once
        by a retry of the same job, and by any other delivery once it expires.
    :param prefix: the marks' key prefix.
    """

    def __init__(
        self,
        redis: Any = None,
        *,
        ttl: int = 7 * 24 * 3600,
        lease: int = 600,
        prefix: str = "flask_messaging:handled:",
    ) -> None:
        self._redis = redis
        self.ttl = ttl
        self.lease = lease
        self.prefix = prefix

    def redis(self) -> Any:
        """The client to use now."""
        if self._redis is None:
            return get_state().redis
        if callable(self._redis):
            return self._redis()
        return self._redis

    def run_once(
        self, handler: str, message_id: str, call: Callable[[], R]
    ) -> R | None:
        claim = self._claim(handler, message_id)
        if claim is None:
            return None
        try:
            result = call()
        except BaseException as exc:
            claim.release(exc)
            raise
        claim.done()
        return result

    async def run_once_async(
        self, handler: str, message_id: str, call: Callable[[], Awaitable[R]]
    ) -> R | None:
        """As :meth:`run_once`, awaiting ``call()``: "done" once it completed.

        Redis is called synchronously (one round trip before, one after),
        holding up the event loop that long. A timeout's cancellation
        releases the claim, as a failure does.
        """
        claim = self._claim(handler, message_id)
        if claim is None:
            return None
        try:
            result = await call()
        except BaseException as exc:
            claim.release(exc)
            raise
        claim.done()
        return result

    def _claim(self, handler: str, message_id: str) -> _RedisClaim | None:
        """Claim the mark; ``None`` when the message was handled already.

        :raises HandlingInProgressError: another delivery holds the claim.
        """
        redis = self.redis()
        key = f"{self.prefix}{handler}:{message_id}"
        job = current_job()
        # Without an RQ job (MESSAGING_ASYNC = False, TestBroker) there are no
        # retries to recognise: any token of our own will do.
        token = job.id if job is not None else uuid.uuid4().hex
        timeout = job.timeout if job is not None and job.timeout else None
        lease = (timeout + 60 if timeout and timeout > 0 else self.lease) * 1000
        state = _text(redis.eval(_CLAIM, 1, key, token, lease))
        if state == "done":
            logger.info(
                "Skipped message %s for %s: already handled", message_id, handler
            )
            return None
        if state == "busy":
            raise HandlingInProgressError(
                f"Message {message_id} is being handled by {handler} in another"
                " delivery right now; this one fails, to be retried (or skipped)"
                " once that one has finished."
            )
        return _RedisClaim(redis, key, token, self.ttl, handler, message_id)


class _RedisClaim:
    """A claimed Redis mark, to be released or set to "done"."""

    def __init__(
        self, redis: Any, key: str, token: str, ttl: int, handler: str, message_id: str
    ) -> None:
        self.redis, self.key, self.token, self.ttl = redis, key, token, ttl
        self.handler, self.message_id = handler, message_id

    def release(self, exc: BaseException) -> None:
        """The handler failed with ``exc``: let a retry run it."""
        try:
            self.redis.eval(_RELEASE, 1, self.key, self.token)
        except Exception as release_error:
            # The claim stays: a retry of this job takes it over.
            exc.add_note(f"Could not release the idempotency mark: {release_error}")

    def done(self) -> None:
        try:
            self.redis.set(self.key, "done", ex=self.ttl)
        except Exception:
            # The handler's work is done; failing the job now would only make a
            # retry do it again. A later delivery may still repeat it.
            logger.exception(
                "Handled message %s in %s but could not mark it done; a later"
                " delivery would run it again.",
                self.message_id,
                self.handler,
            )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------
# Database marks.


def handled_table(metadata: sa.MetaData, name: str) -> sa.Table:
    """The marks table on ``metadata`` (made by ``create_all`` with the rest)."""
    return table_on(
        metadata,
        name,
        sa.Column("handler", sa.String(255), primary_key=True),
        sa.Column("message_id", sa.String(32), primary_key=True),
        sa.Column("handled_at", sa.DateTime, nullable=False),
    )


class DatabaseMarks:
    r"""Marks stored in the handler's own transaction: exactly-once effects.

    .. code-block:: python

        db = SQLAlchemy()
        handled = DatabaseMarks(db)  # adds the messaging_handled table

        @messaging.subscribe_async(OrderPlaced)
        @idempotent(store=handled)
        def charge(event: OrderPlaced) -> None:
            db.session.add(Charge(order_id=event.order_id, amount=event.total))
            # committed by the decorator, together with the mark

    The decorator inserts the mark into ``db.session`` before the handler runs
    (a second delivery running at the same time waits on the row's unique key,
    then skips), commits once the handler returns and rolls back, mark
    included, when it raises. The handler should leave the commit to the
    decorator, or commit once, at its end: work committed before the mark
    would not be covered, work after the commit would not be protected.

    On an ``async def`` handler the transaction stays open across the
    handler's ``await``\ s, and the commit waits for the coroutine's end. A
    second delivery of the same message at the same time then fails at once
    with :class:`HandlingInProgressError` on PostgreSQL (to be retried),
    instead of waiting on the row: a wait would hold up the event loop that
    the first delivery needs to finish. On SQLite, one transaction writes at
    a time: another handler's write waits for this commit.

    :param db: the app's Flask-SQLAlchemy object.
    :param table: the table's name; its columns are ``handler``
        (``VARCHAR(255)``), ``message_id`` (``VARCHAR(32)``), together the
        primary key, and ``handled_at`` (``TIMESTAMP``, UTC).
    """

    def __init__(self, db: FlaskSQLAlchemy, table: str = "messaging_handled") -> None:
        self.db = db
        self.table = handled_table(db.metadata, table)

    def run_once(
        self, handler: str, message_id: str, call: Callable[[], R]
    ) -> R | None:
        session = self.db.session
        if not self._claim(session, handler, message_id):
            session.rollback()
            logger.info(
                "Skipped message %s for %s: already handled", message_id, handler
            )
            return None
        try:
            result = call()
            session.commit()
        except BaseException:
            session.rollback()
            raise
        return result

    async def run_once_async(
        self, handler: str, message_id: str, call: Callable[[], Awaitable[R]]
    ) -> R | None:
        """As :meth:`run_once`, committing once ``call()`` has completed.

        The database is called synchronously, holding up the event loop
        for each statement (see the class's documentation on waits).

        :raises HandlingInProgressError: on PostgreSQL, another delivery of
            the message to this handler has claimed it and not committed.
        """
        session = self.db.session
        if not self._claim(session, handler, message_id, wait=False):
            session.rollback()
            logger.info(
                "Skipped message %s for %s: already handled", message_id, handler
            )
            return None
        try:
            result = await call()
            session.commit()
        except BaseException:
            session.rollback()
            raise
        return result

    def _claim(
        self, session: Any, handler: str, message_id: str, wait: bool = True
    ) -> bool:
        """Insert the mark in ``session``'s transaction; False if it exists.

        :param wait: False: do not wait for another transaction's claim of
            the same mark, raise :class:`HandlingInProgressError` (PostgreSQL).
        """
        dialect = session.get_bind().dialect.name
        if not wait and dialect == "postgresql":
            # Every claim that must not wait takes this lock first, and holds
            # it until its transaction ends: finding it taken means an
            # uncommitted claim that the insert below would wait for.
            lock = sa.select(
                sa.func.pg_try_advisory_xact_lock(_lock_id(handler, message_id))
            )
            if not session.execute(lock).scalar_one():
                session.rollback()
                raise HandlingInProgressError(
                    f"Message {message_id} is being handled by {handler} in"
                    " another delivery right now; this one fails, to be retried"
                    " (or skipped) once that one has committed."
                )
        values = {
            "handler": handler,
            "message_id": message_id,
            "handled_at": utcnow(),
        }
        if dialect in ("postgresql", "sqlite"):
            insert: Any
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            # RETURNING, not rowcount: drivers report -1 for some inserts.
            statement = (
                insert(self.table)
                .values(values)
                .on_conflict_do_nothing()
                .returning(self.table.c.message_id)
            )
            return session.execute(statement).first() is not None
        try:
            with session.begin_nested():
                session.execute(sa.insert(self.table).values(values))
        except sa.exc.IntegrityError:
            return False
        return True

    def prune(self, older_than: float) -> int:
        """Delete marks older than ``older_than`` seconds; return how many.

        Keep marks longer than any redelivery may take (retries, requeues
        from the failed job registry).
        """
        cutoff = utcnow() - datetime.timedelta(seconds=older_than)
        table = self.table
        with self.db.engine.begin() as connection:
            result = connection.execute(
                table.delete().where(table.c.handled_at < cutoff)
            )
        return int(result.rowcount or 0)


def _lock_id(handler: str, message_id: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit integer) for one mark."""
    digest = hashlib.blake2b(f"{handler}\0{message_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


# --------------------------------------------------------------------------
# The decorator.

_default_store = RedisMarks()


class _Decorator(Protocol):
    """What ``idempotent(store=..., name=...)`` returns."""

    @overload
    def __call__(
        self, handler: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Callable[P, Coroutine[Any, Any, R | None]]: ...
    @overload
    def __call__(self, handler: Callable[P, R], /) -> Callable[P, R | None]: ...


@overload
def idempotent(
    handler: Callable[P, Coroutine[Any, Any, R]], /
) -> Callable[P, Coroutine[Any, Any, R | None]]: ...
@overload
def idempotent(handler: Callable[P, R], /) -> Callable[P, R | None]: ...
@overload
def idempotent(
    *, store: MarkStore | None = None, name: str | None = None
) -> _Decorator: ...
def idempotent(
    handler: Any = None, /, *, store: MarkStore | None = None, name: str | None = None
) -> Any:
    """Run the decorated async handler once per message; skip repeats.

    .. code-block:: python

        @messaging.subscribe_async(queue_name=LOW_PRIORITY)
        @idempotent                          # marks in the app's Redis
        def welcome(event: UserRegistered) -> None: ...

        @messaging.subscribe_async
        @idempotent(store=DatabaseMarks(db))  # marks in the handler's transaction
        def charge(event: OrderPlaced) -> None: ...

        @messaging.subscribe_async
        @idempotent                          # an async def handler
        async def notify(event: OrderPlaced) -> None: ...

    A skipped delivery returns ``None`` without calling the handler. The
    handler must be an async subscriber: it needs the envelope of the message
    being delivered. Call ``handler.__wrapped__(event)`` to bypass the guard
    (in a unit test, say).

    On an ``async def`` handler (see
    :func:`~flask_messaging.coroutines.is_coroutine_function`) the wrapper is
    ``async def`` too: the message is marked handled (Redis marks) or the
    transaction committed with its mark (database marks) only once the
    coroutine has completed; a failure, or a timeout's cancellation, leaves
    it unmarked for the retry, as a sync handler's failure does.

    :param store: where marks are kept; default :class:`RedisMarks` on the
        app's Redis. See the module's documentation for what each guarantees.
        An ``async def`` handler needs a store with ``run_once_async`` (an
        :class:`AsyncMarkStore`, as both of this module's are).
    :param name: the handler's key in the marks; default ``module:qualname``,
        the key ``subscribe_async`` gives it. Pass the same ``name=`` as to
        ``subscribe_async`` if you gave it one.
    :raises TypeError: an ``async def`` handler with a store that has no
        ``run_once_async``.
    :raises HandlingInProgressError: another delivery of the message to this
        handler is running (Redis marks; database marks of an ``async def``
        handler on PostgreSQL); RQ retries the job.
    :raises RuntimeError: the handler was called outside an async delivery.
    """

    def decorate(func: Callable[P, Any]) -> Callable[P, Any]:
        key = name if name is not None else handler_key(func)
        marks = store if store is not None else _default_store
        if is_coroutine_function(func):
            run_once_async = getattr(marks, "run_once_async", None)
            if run_once_async is None:
                raise TypeError(
                    f"@idempotent cannot guard the async def handler {key} with"
                    f" {marks!r}: that store has no run_once_async method. Give"
                    " it one (see AsyncMarkStore), or use RedisMarks or"
                    " DatabaseMarks."
                )

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                message_id = _message_id(key, args)
                return await run_once_async(
                    key, message_id, lambda: func(*args, **kwargs)
                )

            return async_wrapper

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            message_id = _message_id(key, args)
            return marks.run_once(key, message_id, lambda: func(*args, **kwargs))

        return wrapper

    if handler is not None:
        return decorate(handler)
    return decorate


def _message_id(key: str, args: tuple[Any, ...]) -> str:
    envelope = current_envelope()
    message = args[0] if args else None
    # A sync subscriber sees its publisher's envelope (if any), not one of its
    # own message: marking that id would skip every later message.
    if (
        envelope is None
        or getattr(type(message), "__message_name__", None) != envelope.type
    ):
        raise RuntimeError(
            f"@idempotent handler {key} was called outside the delivery of its"
            " message: subscribe it with subscribe_async (it needs the message's"
            " envelope), or call it as handler.__wrapped__(event) to bypass the"
            " guard."
        )
    return envelope.id
