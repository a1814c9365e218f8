"""The worker side of async delivery: the one job function, and its guard.

Every job this package enqueues names :func:`dispatch`. A worker started with
``flask messaging worker`` fetches jobs as :class:`MessagingJob`, which refuses
to import any other function or callback a job names, so a job written into
Redis by someone else cannot make the worker run arbitrary code. ``dispatch``
then checks the job's HMAC signature and finds the handler in the app's own
registry (an allow-list), by the stable key the job carries.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, has_app_context
from rq.job import Job

from . import envelope as codec
from .errors import InvalidJobError, UnknownHandlerError
from .jobs import DISPATCH_FUNCTION
from .message import message_type_by_name
from .subscription import Subscription

__all__ = ["MessagingJob", "dispatch"]


def dispatch(handler_key: object, envelope: object, signature: object) -> None:
    """Deliver one message to one async handler: the body of every job."""
    if not has_app_context() or "messaging" not in current_app.extensions:
        raise RuntimeError(
            "flask-messaging jobs run inside the Flask app: start workers with"
            " 'flask --app <your app> messaging worker', not 'rq worker'."
        )
    state = current_app.extensions["messaging"]
    if not isinstance(handler_key, str) or not isinstance(envelope, str):
        raise InvalidJobError("Refused a job whose arguments are malformed.")
    data = envelope.encode()
    if not state.signer.verify(handler_key, data, signature):
        raise InvalidJobError(
            f"Refused a job for handler {handler_key!r}: its signature does not"
            " match its contents (tampered, or signed with another"
            " MESSAGING_SIGNING_KEY / SECRET_KEY)."
        )
    parsed = codec.decode_envelope(data)
    message_type = message_type_by_name(parsed.type)
    if message_type is None:
        codec.decode(parsed)  # raises the clear "unknown message type" error
    assert message_type is not None
    subscription = state.broker.registry.async_subscription(handler_key, message_type)
    if subscription is None:
        raise UnknownHandlerError(
            f"Unknown handler {handler_key!r} for {parsed.type!r} messages:"
            f" {codec.UNKNOWN_HERE}. Requeue the job once a worker that knows"
            " it serves this queue."
        )
    _handle(subscription, parsed)


def run_delivery(subscription: Subscription, data: bytes) -> None:
    """Run an async subscriber in this thread, on a decoded copy of the message."""
    _handle(subscription, codec.decode_envelope(data))


def _handle(subscription: Subscription, envelope: codec.Envelope) -> None:
    message = codec.decode(envelope)
    with codec.handling(envelope):
        subscription.handler(message)


class MessagingJob(Job):
    """An RQ job that can only ever run :func:`dispatch`.

    RQ imports whatever function and callbacks a job hash names, whatever the
    serializer: this class refuses, before any import, every job that names
    something else, and such jobs fail at once, without retries.
    """

    @property
    def func(self) -> Any:
        if self.func_name != DISPATCH_FUNCTION or self.instance is not None:
            raise InvalidJobError(
                f"Refused job {self.id}: it names {self.func_name!r}; workers of"
                f" flask-messaging only run {DISPATCH_FUNCTION}."
            )
        callbacks = [
            name
            for name in (
                self._success_callback_name,
                self._failure_callback_name,
                self._stopped_callback_name,
            )
            if name
        ]
        if callbacks:
            raise InvalidJobError(
                f"Refused job {self.id}: it names callbacks {callbacks!r}, which"
                " flask-messaging jobs never have."
            )
        return dispatch

    # Callbacks would be imported by name after the job ran: never.
    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def perform(self) -> Any:
        try:
            return super().perform()
        except InvalidJobError:
            self.retries_left = 0  # a refused job would be refused again
            raise
