"""Exceptions raised by flask-messaging."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from redis import exceptions as redis_errors

if TYPE_CHECKING:
    from .subscription import Subscription

__all__ = [
    "DeliveryError",
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
    """A job names a handler this worker has no subscription for.

    Usually deploy skew (a worker running older code): requeue the job from the
    failed job registry once the worker knows the handler.
    """


class DeliveryError(MessagingError, ExceptionGroup[Exception]):
    """One or more subscribers failed to handle a message.

    Every subscriber was still given the message. ``exceptions`` holds each
    handler's exception; each has a note naming the handler and the message id.
    Catch it with ``except DeliveryError`` or ``except* SomeHandlerError``.
    """

    def __new__(cls, message: str, exceptions: Sequence[Exception]) -> DeliveryError:
        return super().__new__(cls, message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> DeliveryError:  # type: ignore[override]
        return DeliveryError(self.message, excs)


def record_failure(
    errors: list[Exception] | None,
    subscription: Subscription,
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


def raise_failures(message_type: str, errors: list[Exception]) -> NoReturn:
    count = len(errors)
    raise DeliveryError(
        f"{count} subscriber{'s' if count > 1 else ''} failed on {message_type}",
        errors,
    )
