"""Exceptions raised by flask-messaging."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NoReturn, Protocol

from redis import exceptions as redis_errors

__all__ = [
    "DeliveryError",
    "EnqueueError",
    "InvalidJobError",
    "JobTooLargeError",
    "LOST_REDIS",
    "MessageDecodeError",
    "MessageEncodeError",
    "MessagingError",
    "UnknownHandlerError",
]


logger = logging.getLogger("flask_messaging")

#: Errors that mean Redis cannot be reached: the worker's, not a job's. Any
#: other error while handling a job (a reply refusing a value the job holds,
#: say) is that job's fault.
LOST_REDIS = (redis_errors.ConnectionError, redis_errors.TimeoutError)


class MessagingError(Exception):
    """Base class of this package's errors."""


class MessageEncodeError(MessagingError, ValueError):
    """A message's values cannot be sent: nothing was delivered or enqueued."""


class MessageDecodeError(MessagingError, ValueError):
    """A received envelope or payload does not match a known message class."""


class InvalidJobError(MessagingError):
    """A job was refused before any handler ran: unsigned, tampered or foreign.

    Such jobs are not retried; they go straight to RQ's failed job registry.
    """


class JobTooLargeError(InvalidJobError):
    """A job field is larger, stored or inflated, than any job of ours can be.

    The bound is twice ``MESSAGING_MAX_MESSAGE_BYTES`` plus room for the job:
    workers refuse such a job without inflating it, and displays show it as
    too large.
    """


class UnknownHandlerError(MessagingError, LookupError):
    """A job names a handler this worker's app has no subscription for.

    Another app's job on the same Redis and queue, or deploy skew (a worker
    running older code): requeue the job from the failed job registry once a
    worker that knows the handler serves the queue.
    """


class EnqueueError(MessagingError):
    """The jobs of a message's async subscribers could not be written to Redis.

    Nothing was enqueued for them; the subscribers themselves did not run and
    did not fail. Its ``__cause__`` is Redis's error. ``publish`` does not
    keep the message: publish it again once Redis answers, or register it
    with :func:`~flask_messaging.transaction.register_event` and the outbox,
    which keeps it until it is enqueued.
    """


class DeliveryError(MessagingError, ExceptionGroup[Exception]):
    """One or more subscribers failed to handle a message, or to get its job.

    Every subscriber was still given the message, or a try at its job.
    ``exceptions`` holds each handler's exception (with a note naming the
    handler and the message id) and one :class:`EnqueueError` per message
    whose jobs Redis did not take. Catch it with ``except DeliveryError``,
    ``except* SomeHandlerError`` or ``except* EnqueueError``.
    """

    def __new__(cls, message: str, exceptions: Sequence[Exception]) -> DeliveryError:
        return super().__new__(cls, message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> DeliveryError:  # type: ignore[override]
        return DeliveryError(self.message, excs)


class _Subscriber(Protocol):
    #: The handler's stable key (``module:qualname``, or its ``name``).
    @property
    def key(self) -> str: ...


def record_failure(
    errors: list[Exception] | None,
    subscription: _Subscriber,
    message_type: str,
    message_id: str | None,
    exc: Exception,
) -> list[Exception]:
    """Log a subscriber's failure, note it on ``exc`` and add it to ``errors``."""
    what = f"{message_type} message"
    if message_id:
        what += f" {message_id}"
    logger.error("Subscriber %s failed on %s", subscription.key, what, exc_info=exc)
    exc.add_note(f"raised by subscriber {subscription.key} on {what}")
    if errors is None:
        errors = []
    errors.append(exc)
    return errors


def record_enqueue_failure(
    errors: list[Exception] | None,
    subscription_keys: Sequence[str],
    message_type: str,
    message_id: str,
    exc: Exception,
) -> list[Exception]:
    """Log that a message's jobs were not enqueued; add an EnqueueError."""
    count = len(subscription_keys)
    error = EnqueueError(
        f"Could not enqueue {count} job{'s' if count > 1 else ''} of"
        f" {message_type} message {message_id} (for {', '.join(subscription_keys)}):"
        f" Redis did not take them ({type(exc).__name__}: {exc})."
    )
    error.__cause__ = exc
    logger.error("%s", error, exc_info=exc)
    if errors is None:
        errors = []
    errors.append(error)
    return errors


def raise_failures(message_type: str, errors: list[Exception]) -> NoReturn:
    unqueued = sum(isinstance(e, EnqueueError) for e in errors)
    failed = len(errors) - unqueued
    parts = []
    if failed:
        parts.append(f"{failed} subscriber{'s' if failed > 1 else ''} failed")
    if unqueued:
        parts.append("jobs could not be enqueued")
    raise DeliveryError(f"{' and '.join(parts)} on {message_type}", errors)
