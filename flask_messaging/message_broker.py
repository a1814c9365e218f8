"""Brokers route published messages to their subscribers.

:class:`MessageBroker` is what every broker shares (subscribing);
:class:`MemoryBroker` is the production broker: sync subscribers run in the
publishing thread, async ones get one job each from the app's job sink. The
test doubles derive from :class:`MessageBroker` too
(:mod:`flask_messaging.testing`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar, overload

from redis.exceptions import RedisError

from . import envelope as codec
from .coroutines import run_if_awaitable
from .dispatch import Delivery, JobSink
from .errors import (
    DeliveryError,
    raise_failures,
    record_enqueue_failure,
    record_failure,
)
from .message import Message
from .queue_names import DEFAULT_PRIORITY
from .subscription import (
    Predicate,
    Retry,
    Subscription,
    SubscriptionRegistry,
    make_subscription,
)

__all__ = ["MemoryBroker", "MessageBroker"]

M = TypeVar("M", bound=Message)
H = TypeVar("H", bound=Callable[..., object])


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
        """Call each matching sync subscriber; add failures to ``errors``.

        A handler's coroutine (``async def``) is run to its end here, in the
        publishing thread (:func:`~flask_messaging.coroutines.run_to_completion`).
        """
        for subscription in subscriptions:
            try:
                predicate = subscription.predicate
                if predicate is None or predicate(message):
                    # Plain handlers return None: one comparison is all
                    # they pay for coroutines.
                    result = subscription.handler(message)
                    if result is not None:
                        run_if_awaitable(result)
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
    :param max_message_bytes: the largest encoded message, in bytes; ``None``
        for no limit.
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
