"""The Flask extension: it wires every part of messaging onto an app.

:meth:`Messaging.init_app` validates the configuration, builds the app's
:class:`~flask_messaging.state.MessagingState` with the job sink the
configuration asks for (RQ, the embedded worker of ``memory://``, or inline
delivery), follows the database's transactions, and adds the ``flask
messaging`` commands and the dashboard. It is the only module that knows
every other; nothing imports it but the package itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar, overload

from flask import Flask

from . import transaction
from ._rq.compat import warn_if_untested_rq
from ._rq.enqueue import RQJobs
from .cli import messaging_cli
from .config import DEFAULTS
from .dashboard import init_dashboard
from .dispatch import InlineJobs, JobSink
from .embedded import EmbeddedJobs
from .message import Message
from .outbox import outbox_table
from .queue_names import DEFAULT_PRIORITY
from .redaction import redact_logs
from .state import FlaskSQLAlchemy, MessagingState
from .subscription import (
    Predicate,
    Retry,
    Subscription,
    SubscriptionRegistry,
    infer_message_type,
    make_subscription,
)

__all__ = ["Messaging"]

H = TypeVar("H", bound=Callable[..., Any])


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

    def __init__(
        self, app: Flask | None = None, *, db: FlaskSQLAlchemy | None = None
    ) -> None:
        self._declared: list[Subscription] = []
        self._registries: weakref.WeakSet[SubscriptionRegistry] = weakref.WeakSet()
        if app is not None:
            self.init_app(app, db=db)

    def init_app(self, app: Flask, db: FlaskSQLAlchemy | None = None) -> None:
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
        # Every process that writes or runs jobs (web, relay, worker) sets
        # up its app first: the one place to say, once, that the installed
        # RQ is not one this package was tested with.
        warn_if_untested_rq()
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        app.config.setdefault("MESSAGING_ASYNC", not app.testing)
        redact_logs()
        state = MessagingState(app, db, _job_sink)
        if db is not None:
            transaction.bind(db)
            if state.settings.outbox.enabled:
                state.outbox = outbox_table(db.metadata, state.settings.outbox.table)
        for subscription in self._declared:
            state.registry.add(subscription)
        self._registries.add(state.registry)
        app.extensions["messaging"] = state
        app.cli.add_command(messaging_cli)
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


def _job_sink(state: MessagingState) -> JobSink:
    """Where the app's async deliveries go, as its configuration asks."""
    if not state.settings.is_async:
        return InlineJobs()
    if state.is_embedded:
        return EmbeddedJobs(state)
    return RQJobs(lambda: state.redis, lambda: state.signer, state.settings.jobs)
