"""What messaging keeps per app, and how code finds it.

:class:`MessagingState` lives at ``app.extensions["messaging"]``, put there by
:meth:`Messaging.init_app <flask_messaging.Messaging.init_app>`, which also
chooses its job sink. Everything below the extension reaches an app's
subscribers, Redis, signing key and database through it: :func:`get_state`
for the current app,
:func:`~flask_messaging.broker.get_message_broker` for the broker to publish
to (or the one a test installed with
:func:`~flask_messaging.broker.override_message_broker`).
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from flask import Flask, current_app, has_app_context

from .config import DEFAULTS, Settings
from .connection import connect, is_memory_url
from .dispatch import DurableJobSink, JobSink
from .message_broker import MemoryBroker, MessageBroker
from .signing import Signer
from .subscription import SubscriptionRegistry

logger = logging.getLogger("flask_messaging")

if TYPE_CHECKING:
    import sqlalchemy as sa
    from redis import Redis
    from sqlalchemy.orm import scoped_session

__all__ = [
    "FlaskSQLAlchemy",
    "MessagingState",
    "active_override",
    "current_message_limit",
    "get_message_broker",
    "get_state",
    "override_message_broker",
]


class FlaskSQLAlchemy(Protocol):
    """What messaging uses of a Flask-SQLAlchemy ``SQLAlchemy`` object."""

    @property
    def metadata(self) -> sa.MetaData: ...

    @property
    def engine(self) -> sa.Engine: ...

    @property
    def engines(self) -> Mapping[str | None, sa.Engine]: ...

    # Flask-SQLAlchemy's own Session subclass, or another a user configured.
    @property
    def session(self) -> scoped_session[Any]: ...


class BackgroundWorker(Protocol):
    """Threads that run an app's jobs in its own process (``memory://``)."""

    @property
    def running(self) -> bool: ...

    def stop(self, timeout: float = 10) -> None: ...


class CommitSender(Protocol):
    """The thread that writes committed messages' jobs (``sender.Sender``)."""

    #: The process it was made in; in any other it is not running.
    @property
    def pid(self) -> int: ...

    #: How many commits were handed over to it so far.
    @property
    def handed(self) -> int: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def close(self, timeout: float | None = None) -> int: ...


class MessagingState:
    """What the extension keeps per app, at ``app.extensions["messaging"]``.

    :param make_jobs: builds the app's job sink from this state (the
        extension chooses RQ, the embedded worker or inline delivery).
    """

    def __init__(
        self,
        app: Flask,
        db: FlaskSQLAlchemy | None,
        make_jobs: Callable[[MessagingState], JobSink],
    ) -> None:
        self.app = app
        self.db = db
        self.settings = Settings.from_config(app.config)
        #: The outbox table, when a database is bound and MESSAGING_OUTBOX is on.
        self.outbox: sa.Table | None = None
        self.registry = SubscriptionRegistry()
        #: The worker threads of ``memory://``, once its first job started them.
        self.embedded_worker: BackgroundWorker | None = None
        #: Writes the jobs of committed events (outbox on), once the first
        #: such commit of this process made it (flask_messaging.sender).
        self.sender: CommitSender | None = None
        self.jobs = make_jobs(self)
        #: The job sink again when its jobs outlive this process (RQ), else
        #: None (inline delivery): decided once, not at every commit.
        self.durable_jobs: DurableJobSink | None = (
            self.jobs if isinstance(self.jobs, DurableJobSink) else None
        )
        self.broker = MemoryBroker(
            self.registry,
            jobs=self.jobs,
            max_message_bytes=self.settings.max_message_bytes,
        )

    @property
    def writes_outbox(self) -> bool:
        """Whether committed events are stored in the outbox (not in tests)."""
        return self.outbox is not None and self.durable_jobs is not None

    def queue_names(self) -> tuple[str, ...]:
        """Queues workers listen on by default, highest priority first.

        ``MESSAGING_QUEUES``, then any other queue an async subscriber uses, so
        that no subscriber's jobs wait for a worker that never comes.
        """
        extra = sorted(
            {s.queue_name for s in self.registry if s.queue_name is not None}
            - set(self.settings.queues)
        )
        return (*self.settings.queues, *extra)

    @property
    def is_embedded(self) -> bool:
        """True when Redis is the in-process ``memory://`` stand-in."""
        return is_memory_url(self.settings.redis_url)

    @property
    def engine(self) -> sa.Engine:
        """The engine of the database given to ``init_app`` (its default bind).

        :raises RuntimeError: ``init_app`` was given no database.
        """
        if self.db is None:
            raise RuntimeError(
                "Messaging has no database on this app: call"
                " messaging.init_app(app, db=db) with your Flask-SQLAlchemy object."
            )
        return self.db.engine

    @cached_property
    def redis(self) -> Redis:
        """The app's Redis client, made on first use."""
        return connect(self.settings.redis_url)

    @cached_property
    def signer(self) -> Signer:
        """The app's job signer: ``MESSAGING_SIGNING_KEY``, else ``SECRET_KEY``.

        :raises RuntimeError: neither key is set.
        """
        config = self.app.config
        secret = config["MESSAGING_SIGNING_KEY"]
        fallbacks = config["MESSAGING_SIGNING_FALLBACK_KEYS"]
        if secret is None:
            secret = config.get("SECRET_KEY")
            if fallbacks is None:
                fallbacks = config.get("SECRET_KEY_FALLBACKS")
        if not secret:
            raise RuntimeError(
                "Async messages are signed so workers can trust them, and there is"
                " no key: set SECRET_KEY (or MESSAGING_SIGNING_KEY) in the app's"
                " config, the same on publishers and workers."
            )
        return Signer(secret, fallbacks or ())

    def use_redis(self, client: Redis) -> None:
        """Make ``client`` the app's Redis client (tests, benchmarks)."""
        self.__dict__["redis"] = client

    def close(self, timeout: float = 10) -> None:
        """Send what the sender holds, stop the embedded worker, drop Redis.

        :param timeout: seconds to wait for the sender to write the jobs of
            the events committed so far (then, for each still unsent, a
            warning is logged and its outbox row is left to the relay), and
            again for the embedded worker's job in hand. The next commit
            makes a new sender, the next use of :attr:`redis` a new client
            (with ``memory://``, a new, empty server, whose first job starts
            a new embedded worker): jobs not run yet are dropped with the
            old one.
        """
        self.close_sender(timeout)
        if self.embedded_worker is not None:
            self.embedded_worker.stop(timeout)
            # The next job starts another, on the new client's server.
            self.embedded_worker = None
        client = self.__dict__.pop("redis", None)
        if client is not None:
            client.connection_pool.disconnect()

    def close_sender(self, timeout: float) -> None:
        """Let this process's sender write what it holds, then stop it.

        For a process that ends without Python's exit hooks (a work horse
        ends with ``os._exit``), and for :meth:`close`. The next commit makes
        a new sender.

        :param timeout: seconds to wait; for each message still unsent then,
            a warning is logged and its outbox row is left to the relay.
        """
        sender, self.sender = self.sender, None
        if sender is not None and sender.pid == os.getpid():
            left = sender.close(timeout)
            if left:
                logger.warning(
                    "%d committed message(s) not enqueued after %g s (Redis"
                    " slow or unreachable?): a relay enqueues them from the"
                    " outbox after MESSAGING_RELAY_DELAY.",
                    left,
                    timeout,
                )

    def reset_after_fork(self, *connections: Redis) -> None:
        """Make a forked process open database and Redis connections of its own.

        A fork copies its parent's pools; two processes talking over one
        connection corrupt each other's conversation (with psycopg 3 a
        child's statements collide with those its parent prepared, and one
        process reads another's result). Disposes the pool of every engine of
        the app's Flask-SQLAlchemy object with ``close=False`` (SQLAlchemy's
        remedy for forks: the parent's connections are left alone, not
        closed under it), and empties the pools of the app's Redis client and
        of ``connections`` the same way; each opens new connections on first
        use. The parent's sender is dropped, never touched: its thread is
        not in this process, and its lock may have been held at the fork;
        the next commit makes one for this process. Called first thing in
        every process our workers fork.
        """
        self.sender = None
        if self.db is not None:
            with self.app.app_context():
                # Flask-SQLAlchemy: the engine of each bind, the default one too.
                engines = list(self.db.engines.values())
            for engine in engines:
                engine.dispose(close=False)
        clients = list(connections)
        if "redis" in self.__dict__:  # made already: the parent's client
            clients.append(self.redis)
        for pool in {
            id(c.connection_pool): c.connection_pool for c in clients
        }.values():
            # redis-py would notice the new pid on the next checkout and do the
            # same; done here, no connection of the parent's is ever handed out.
            pool.reset()


def get_state(app: Flask | None = None, *, caller: str | None = None) -> MessagingState:
    """Return the messaging state of ``app`` (default: the current app).

    :param caller: the public call that needs it, named in the error.
    :raises RuntimeError: no ``app`` and no app context, or messaging is not
        set up on the app; the message says what to do.
    """
    if app is None:
        if not has_app_context():
            raise RuntimeError(
                f"{caller or 'flask-messaging'} needs an active Flask app context,"
                " through which it finds the app's messaging (subscribers, Redis,"
                " database session): call it inside a request, a 'flask' command"
                " or a worker job, or within 'with app.app_context(): ...'."
            )
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    assert app is not None
    try:
        state: MessagingState = app.extensions["messaging"]
    except KeyError:
        raise RuntimeError(
            f"The Flask app {app.name!r} is not set up for messaging: did you forget"
            " to call Messaging(app) or messaging.init_app(app)?"
        ) from None
    return state


def current_message_limit() -> int | None:
    """The current app's ``MESSAGING_MAX_MESSAGE_BYTES``, or that key's default."""
    if has_app_context() and "messaging" in current_app.extensions:
        return get_state().settings.max_message_bytes
    default: int = DEFAULTS["MESSAGING_MAX_MESSAGE_BYTES"]
    return default


_override: contextvars.ContextVar[MessageBroker | None] = contextvars.ContextVar(
    "flask_messaging_broker_override", default=None
)


def get_message_broker() -> MessageBroker:
    """Return the broker to publish to and subscribe on.

    The broker installed by :func:`override_message_broker` if one is active
    in this context, else the broker of the current Flask app.

    :raises RuntimeError: neither is available.
    """
    broker = _override.get()
    if broker is not None:
        return broker
    try:
        # One lookup through the proxy instead of one per attribute: this runs
        # on every publish, and each proxied access costs about a microsecond.
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    except RuntimeError:
        app = None
    if app is not None:
        state = app.extensions.get("messaging")
        if state is not None:
            return state.broker  # type: ignore[no-any-return]
        raise RuntimeError(
            f"The Flask app {app.name!r} has no message broker: call"
            " Messaging(app) or messaging.init_app(app) in the app factory."
        )
    raise RuntimeError(
        "No message broker: get_message_broker() needs an active Flask app context"
        " (with app.app_context(): ...) or an override_message_broker(...) block."
    )


def active_override() -> MessageBroker | None:
    """The broker installed by :func:`override_message_broker`, if any."""
    return _override.get()


@contextmanager
def override_message_broker(broker: MessageBroker) -> Iterator[MessageBroker]:
    """Make :func:`get_message_broker` return ``broker`` inside the block.

    Blocks nest, the previous broker is restored even when the body raises, and
    the override is local to the thread or asyncio task that installed it.
    """
    if not isinstance(broker, MessageBroker):
        raise TypeError(
            f"override_message_broker needs a MessageBroker, not {broker!r}."
        )
    token = _override.set(broker)
    try:
        yield broker
    finally:
        _override.reset(token)
