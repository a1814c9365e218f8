"""The Flask extension: per-app state, configuration and decorators."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar, overload

from flask import Flask, current_app, has_app_context
from rq import Retry

from .broker import MemoryBroker
from .config import DEFAULTS, Settings
from .connection import connect, is_memory_url
from .jobs import InlineJobs, RQJobs
from .message import Message
from .redaction import redact_logs
from .signing import Signer
from .subscription import (
    Predicate,
    Subscription,
    SubscriptionRegistry,
    infer_message_type,
    make_subscription,
)

if TYPE_CHECKING:
    import sqlalchemy as sa
    from redis import Redis

    from .embedded import EmbeddedWorker

__all__ = ["Messaging", "MessagingState", "get_state"]

H = TypeVar("H", bound=Callable[..., Any])


class MessagingState:
    """What the extension keeps per app, at ``app.extensions["messaging"]``."""

    def __init__(self, app: Flask, db: Any = None) -> None:
        self.app = app
        self.db = db
        self.settings = Settings.from_config(app.config)
        #: The outbox table, when a database is bound and MESSAGING_OUTBOX is on.
        self.outbox: sa.Table | None = None
        if db is not None:
            from . import transaction
            from .outbox import outbox_table

            transaction.bind(db)
            if self.settings.outbox.enabled:
                self.outbox = outbox_table(db.metadata, self.settings.outbox.table)
        self.registry = SubscriptionRegistry()
        self.embedded_worker: EmbeddedWorker | None = None
        jobs: RQJobs | InlineJobs
        if not self.settings.is_async:
            jobs = InlineJobs()
        elif self.is_embedded:
            from .embedded import EmbeddedJobs

            jobs = EmbeddedJobs(self)
        else:
            jobs = RQJobs(lambda: self.redis, lambda: self.signer, self.settings.jobs)
        self.jobs = jobs
        self.broker = MemoryBroker(
            self.registry, jobs=jobs, max_message_bytes=self.settings.max_message_bytes
        )

    @property
    def writes_outbox(self) -> bool:
        """Whether committed events are stored in the outbox (not in tests)."""
        return self.outbox is not None and isinstance(self.jobs, RQJobs)

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

    @cached_property
    def redis(self) -> Redis:
        """The app's Redis client, made on first use."""
        return connect(self.settings.redis_url)

    @cached_property
    def signer(self) -> Signer:
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


class Messaging:
    """The flask-messaging extension.

    .. code-block:: python

        messaging = Messaging()

        def create_app():
            app = Flask(__name__)
            db.init_app(app)
            messaging.init_app(app, db=db)
            return app

    Subscriptions made with this object's decorators apply to every app it is
    initialised on, before or after the decorator runs. The extension stores
    no app: one object can serve several.
    """

    def __init__(self, app: Flask | None = None, *, db: Any = None) -> None:
        self._declared: list[Subscription] = []
        self._registries: weakref.WeakSet[SubscriptionRegistry] = weakref.WeakSet()
        if app is not None:
            self.init_app(app, db=db)

    def init_app(self, app: Flask, db: Any = None) -> None:
        """Set up messaging on ``app``.

        :param db: a Flask-SQLAlchemy ``SQLAlchemy`` object, so that
            :func:`~flask_messaging.transaction.register_event` and the outbox
            follow its transactions.
        """
        if "messaging" in app.extensions:
            raise RuntimeError(
                f"Messaging is already set up on the app {app.name!r}; call"
                " init_app once per app."
            )
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        app.config.setdefault("MESSAGING_ASYNC", not app.testing)
        redact_logs()
        state = MessagingState(app, db)
        for subscription in self._declared:
            state.registry.add(subscription)
        self._registries.add(state.registry)
        app.extensions["messaging"] = state

        from .cli import messaging_cli

        app.cli.add_command(messaging_cli)

        from .dashboard import init_dashboard

        init_dashboard(app, state)

    def _declare(self, subscription: Subscription) -> None:
        self._declared.append(subscription)
        for registry in self._registries:
            registry.add(subscription)

    @overload
    def subscribe(self, handler: H, /) -> H: ...
    @overload
    def subscribe(
        self,
        message_type: type[Message] | None = None,
        /,
        *,
        predicate: Predicate | None = None,
        queue_name: str | None = None,
        retry: int | Retry | None = None,
        timeout: int | None = None,
        name: str | None = None,
    ) -> Callable[[H], H]: ...
    def subscribe(
        self,
        message_type: Any = None,
        /,
        *,
        predicate: Predicate | None = None,
        queue_name: str | None = None,
        retry: int | Retry | None = None,
        timeout: int | None = None,
        name: str | None = None,
    ) -> Any:
        """Subscribe the decorated function on every app.

        .. code-block:: python

            @messaging.subscribe                     # type from the annotation
            def audit(event: UserRegistered): ...

            @messaging.subscribe(OrderPlaced, predicate=lambda o: o.total > 100)
            def premium(event): ...

            @messaging.subscribe(UserRegistered, queue_name=LOW_PRIORITY)
            def welcome(event): ...                  # a queue means async

        With ``queue_name`` (or ``retry``, ``timeout``) it is the same as
        :meth:`subscribe_async`. The function is returned unchanged.
        """
        if callable(message_type) and not isinstance(message_type, type):
            return self.subscribe()(message_type)
        if queue_name is None and (retry is not None or timeout is not None):
            raise TypeError(
                "retry= and timeout= apply to async subscribers: pass queue_name="
                " too, or use subscribe_async."
            )

        def decorator(handler: H) -> H:
            self._declare(
                make_subscription(
                    message_type or infer_message_type(handler),
                    handler,
                    queue_name=queue_name,
                    predicate=predicate,
                    retry=retry,
                    timeout=timeout,
                    name=name,
                )
            )
            return handler

        return decorator

    @overload
    def subscribe_async(self, handler: H, /) -> H: ...
    @overload
    def subscribe_async(
        self,
        message_type: type[Message] | None = None,
        /,
        *,
        queue_name: str | None = None,
        predicate: Predicate | None = None,
        retry: int | Retry | None = None,
        timeout: int | None = None,
        name: str | None = None,
    ) -> Callable[[H], H]: ...
    def subscribe_async(
        self,
        message_type: Any = None,
        /,
        *,
        queue_name: str | None = None,
        predicate: Predicate | None = None,
        retry: int | Retry | None = None,
        timeout: int | None = None,
        name: str | None = None,
    ) -> Any:
        """Subscribe the decorated function on every app, delivered by RQ jobs.

        Arguments as for :meth:`MemoryBroker.subscribe_async
        <flask_messaging.broker.MessageBroker.subscribe_async>`; ``queue_name``
        defaults to :data:`~flask_messaging.queue_names.DEFAULT_PRIORITY`.
        """
        from .queue_names import DEFAULT_PRIORITY

        if callable(message_type) and not isinstance(message_type, type):
            return self.subscribe_async()(message_type)
        return self.subscribe(
            message_type,
            queue_name=queue_name or DEFAULT_PRIORITY,
            predicate=predicate,
            retry=retry,
            timeout=timeout,
            name=name,
        )
