"""Brokers route published messages to their subscribers.

:class:`MemoryBroker` is the production broker: sync subscribers run in the
publishing thread, async ones get one RQ job each. :class:`NullBroker` and
:class:`TestBroker` are test doubles, installed with
:func:`override_message_broker`.
"""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar, overload

from flask import current_app, has_app_context
from redis.exceptions import RedisError
from rq import Retry

from . import envelope as codec
from .config import DEFAULTS
from .dispatch import run_delivery
from .errors import (
    DeliveryError,
    raise_failures,
    record_enqueue_failure,
    record_failure,
)
from .jobs import Delivery
from .message import Message
from .queue_names import DEFAULT_PRIORITY
from .subscription import (
    Predicate,
    Subscription,
    SubscriptionRegistry,
    make_subscription,
)

__all__ = [
    "MemoryBroker",
    "MessageBroker",
    "NullBroker",
    "TestBroker",
    "get_message_broker",
    "override_message_broker",
]

M = TypeVar("M", bound=Message)
H = TypeVar("H", bound=Callable[..., object])


class JobSink(Protocol):
    """Where a broker sends the async deliveries of a publish."""

    def enqueue(self, deliveries: Sequence[Delivery]) -> None: ...


class MessageBroker:
    """Routes messages to sync and async subscribers.

    Subclasses decide what publishing does; subscribing is the same for all.
    """

    max_message_bytes: int | None = None

    def __init__(self, registry: SubscriptionRegistry | None = None) -> None:
        self.registry = registry if registry is not None else SubscriptionRegistry()

    @overload
    def subscribe(
        self,
        message_type: type[M],
        handler: Callable[[M], object],
        *,
        predicate: Callable[[M], object] | None = ...,
    ) -> Callable[[M], object]: ...
    @overload
    def subscribe(
        self,
        message_type: type[Message],
        handler: H,
        *,
        predicate: Predicate | None = ...,
    ) -> H: ...
    def subscribe(
        self,
        message_type: type[Message],
        handler: Callable[..., object],
        *,
        predicate: Predicate | None = None,
    ) -> Callable[..., object]:
        """Call ``handler`` in the publishing thread for every matching message.

        :param message_type: a :class:`~flask_messaging.Message` subclass; its
            subclasses match too.
        :param predicate: called with the message first; the handler runs only
            when it returns a true value.
        :return: ``handler``, unchanged.
        """
        self.registry.add(make_subscription(message_type, handler, predicate=predicate))
        return handler

    def subscribe_async(
        self,
        message_type: type[Message],
        handler: H,
        *,
        queue_name: str = DEFAULT_PRIORITY,
        predicate: Predicate | None = None,
        retry: int | Retry | None = None,
        timeout: int | None = None,
        name: str | None = None,
    ) -> H:
        """Deliver every matching message to ``handler`` in an RQ job.

        :param queue_name: the RQ queue of the jobs
            (see :mod:`flask_messaging.queue_names`).
        :param predicate: checked in the publishing process; no job is created
            for a message it rejects.
        :param retry: how often a failed job is retried: a count or an
            :class:`rq.Retry`; defaults to ``MESSAGING_RETRY``.
        :param timeout: seconds a job may run; defaults to
            ``MESSAGING_JOB_TIMEOUT``.
        :param name: the handler's stable key, by which workers find it; defaults
            to ``module:qualname``. Lambdas and nested functions need one.
        :return: ``handler``, unchanged.
        """
        self.registry.add(
            make_subscription(
                message_type,
                handler,
                queue_name=queue_name,
                predicate=predicate,
                retry=retry,
                timeout=timeout,
                name=name,
            )
        )
        return handler

    def publish(self, message: Message) -> None:
        raise NotImplementedError

    def deliver_sync(
        self,
        message: Message,
        subscriptions: Sequence[Subscription],
        message_id: str | None = None,
        errors: list[Exception] | None = None,
    ) -> list[Exception] | None:
        """Call each matching sync subscriber; add failures to ``errors``."""
        for subscription in subscriptions:
            try:
                predicate = subscription.predicate
                if predicate is None or predicate(message):
                    subscription.handler(message)
            except Exception as exc:
                errors = record_failure(
                    errors, subscription, _name(message), message_id, exc
                )
        return errors


def _name(message: Message) -> str:
    return type(message).__message_name__


class MemoryBroker(MessageBroker):
    """The production broker: an in-memory map of subscribers.

    Sync subscribers are called directly, in subscription order; then each
    matching async subscriber gets one job, all written in one Redis round trip
    (up to 200 jobs; more take one round trip per 200).

    :param jobs: where async deliveries go (the app's RQ queues); the
        :class:`~flask_messaging.Messaging` extension sets it up.
    """

    def __init__(
        self,
        registry: SubscriptionRegistry | None = None,
        jobs: JobSink | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        super().__init__(registry)
        self.jobs = jobs
        self.max_message_bytes = max_message_bytes

    def publish(self, message: Message) -> None:
        """Deliver ``message`` to every subscriber of its type.

        :raises TypeError: the message's class cannot be sent.
        :raises MessageEncodeError: an async subscriber matches and the
            message's values cannot be encoded; nothing was delivered.
        :raises DeliveryError: some subscribers failed, or Redis did not take
            their jobs (an :class:`~flask_messaging.errors.EnqueueError` in
            the group); all the others received the message.
        """
        route = self.registry.route(type(message))  # checks the class, once
        if not route.async_:
            # The common in-process case, kept short: it is all a publish does.
            failures = route.sync and self.deliver_sync(message, route.sync)
            if failures:
                raise_failures(_name(message), failures)
            return
        # Encode first: a message no worker could receive fails before any
        # subscriber has seen it.
        message_id, data = codec.encode(message, max_bytes=self.max_message_bytes)
        errors = None
        if route.sync:
            errors = self.deliver_sync(message, route.sync, message_id)
        errors = self.send_jobs(message, data, message_id, errors)
        if errors:
            raise_failures(_name(message), errors)

    def async_deliveries(
        self,
        message: Message,
        message_id: str,
        data: bytes,
        errors: list[Exception] | None = None,
    ) -> tuple[list[Delivery], list[Exception] | None]:
        """One delivery per async subscription whose predicate matches.

        A predicate that raises counts as its subscriber's failure.
        """
        deliveries = []
        for subscription in self.registry.route(type(message)).async_:
            try:
                if subscription.matches(message):
                    deliveries.append(
                        Delivery(subscription, _name(message), message_id, data)
                    )
            except Exception as exc:
                errors = record_failure(
                    errors, subscription, _name(message), message_id, exc
                )
        return deliveries, errors

    def send_jobs(
        self,
        message: Message,
        data: bytes,
        message_id: str,
        errors: list[Exception] | None = None,
    ) -> list[Exception] | None:
        """Enqueue one job per async subscription whose predicate matches."""
        deliveries, errors = self.async_deliveries(message, message_id, data, errors)
        if deliveries:
            if self.jobs is None:
                raise RuntimeError(
                    "This MemoryBroker has async subscribers but no job queue; use"
                    " the broker of a Flask app set up with Messaging(app)."
                )
            try:
                self.jobs.enqueue(deliveries)
            except DeliveryError as group:  # inline jobs: failures already recorded
                errors = [*(errors or ()), *group.exceptions]
            except (RedisError, OSError) as exc:
                # Redis unreachable: no job was written, and no subscriber ran
                # or failed; the sync ones already had the message. Anything
                # else is a bug: raise it.
                keys = [delivery.subscription.key for delivery in deliveries]
                errors = record_enqueue_failure(
                    errors, keys, _name(message), message_id, exc
                )
        return errors


class _TestDouble(MessageBroker):
    """What the test brokers share: the size limit of the app they stand in for.

    :param max_message_bytes: the largest envelope accepted, in bytes; by
        default the current app's ``MESSAGING_MAX_MESSAGE_BYTES``, read at each
        publish, or that key's default (1 MiB) when no app is active, so a
        message too large for production fails in the test too. ``None``
        means no limit.
    """

    _follows_app = True
    _limit: int | None = None

    @property
    def max_message_bytes(self) -> int | None:
        """The size limit in bytes a publish applies now (``None``: no limit)."""
        return current_message_limit() if self._follows_app else self._limit

    @max_message_bytes.setter
    def max_message_bytes(self, value: int | None) -> None:
        self._follows_app = False
        self._limit = value


def current_message_limit() -> int | None:
    """The current app's ``MESSAGING_MAX_MESSAGE_BYTES``, or that key's default."""
    if has_app_context() and "messaging" in current_app.extensions:
        from .extension import get_state

        return get_state().settings.max_message_bytes
    default: int = DEFAULTS["MESSAGING_MAX_MESSAGE_BYTES"]
    return default


class NullBroker(_TestDouble):
    """Records published messages in :attr:`published` and delivers nothing.

    Each message is still encoded and checked as for a real publish, so a
    message no worker could receive fails here too (``TypeError`` or
    :class:`~flask_messaging.errors.MessageEncodeError`), and is not recorded.
    The size limit is the current app's (see :attr:`max_message_bytes`).
    """

    def __init__(self, registry: SubscriptionRegistry | None = None) -> None:
        super().__init__(registry)
        #: Every message published, in order.
        self.published: list[Message] = []

    def publish(self, message: Message) -> None:
        codec.encode(message, max_bytes=self.max_message_bytes)
        self.published.append(message)


class TestBroker(_TestDouble):
    """Queues published messages until :meth:`process_messages` delivers them.

    Delivery goes through the real encode and decode path, so a message that a
    worker could not receive fails here too. Async subscribers run inline and
    receive the decoded copy, as from a worker; sync subscribers receive the
    published object, as in production. The size limit is the app's (see
    :attr:`max_message_bytes`).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, registry: SubscriptionRegistry | None = None) -> None:
        super().__init__(registry)
        #: Every message published, in order, processed or not.
        self.published: list[Message] = []
        self._pending: deque[tuple[Message, bytes]] = deque()

    @classmethod
    def from_app(cls, app: Any = None) -> TestBroker:
        """A TestBroker with a copy of the subscriptions of ``app``.

        :param app: a Flask app set up with Messaging; defaults to the current one.
            Its ``MESSAGING_MAX_MESSAGE_BYTES`` becomes the broker's size limit.
        """
        from .extension import get_state

        state = get_state(app)
        broker = cls(state.broker.registry.copy())
        broker.max_message_bytes = state.settings.max_message_bytes
        return broker

    @property
    def pending(self) -> list[Message]:
        """Messages published and not processed yet."""
        return [message for message, _ in self._pending]

    def publish(self, message: Message) -> None:
        # Encode now: a bad message fails where it is published, as it would in
        # production.
        data = codec.encode(message, max_bytes=self.max_message_bytes).data
        self.published.append(message)
        self._pending.append((message, data))

    def process_messages(self, limit: int = 10_000) -> int:
        """Deliver pending messages, including those published meanwhile.

        :param limit: stop with an error after this many messages, a guard
            against handlers that publish each other in a loop.
        :return: how many messages were delivered.
        :raises DeliveryError: subscribers failed; the other subscribers of that
            message still received it, and later messages stay pending.
        """
        count = 0
        while self._pending:
            if count >= limit:
                raise RuntimeError(
                    f"process_messages delivered {limit} messages and more keep"
                    " coming: do handlers publish each other in a loop?"
                )
            original, data = self._pending.popleft()
            count += 1
            self._deliver(original, data)
        return count

    def _deliver(self, original: Message, data: bytes) -> None:
        envelope = codec.decode_envelope(data)
        route = self.registry.route(type(original))
        # Decoded for the check alone: sync subscribers get the object that
        # was published, as they do in production.
        codec.decode(envelope)
        errors = self.deliver_sync(original, route.sync, envelope.id, None)
        for subscription in route.async_:
            try:
                # Predicates see the published object, as in the publishing
                # process; the handler gets what a worker would decode.
                if subscription.matches(original):
                    run_delivery(subscription, data)
            except Exception as exc:
                errors = record_failure(
                    errors, subscription, envelope.type, envelope.id, exc
                )
        if errors:
            raise_failures(envelope.type, errors)


# --------------------------------------------------------------------------
# Which broker get_message_broker() returns.

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
