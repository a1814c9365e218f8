"""The worker side of async delivery: the one job function, and its guard.

Every job this package enqueues names :func:`dispatch`. A worker started with
``flask messaging worker`` fetches jobs as :class:`MessagingJob`, which reads
only the job-hash fields our enqueue writes (see :mod:`.job_hash`), with a
bound on their size, and refuses to import any other function or callback,
so a job written into Redis by someone else cannot make the worker run
arbitrary code or act on anything else. ``dispatch`` then checks the job's
HMAC signature, which binds its contents to its job id and queue, and finds
the handler in the app's own registry (an allow-list), by the stable key the
job carries.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any

from flask import current_app, has_app_context
from rq.job import Job

from . import envelope as codec
from .errors import InvalidJobError, UnknownHandlerError
from .job_hash import ALLOWED_FIELDS, check_job_hash, field_limit
from .jobs import DISPATCH_FUNCTION
from .message import message_type_by_name
from .signing import JobBinding
from .subscription import Subscription

__all__ = ["MessagingJob", "dispatch", "job_class_for"]

_running: contextvars.ContextVar[JobBinding | None] = contextvars.ContextVar(
    "flask_messaging_job", default=None
)


def dispatch(handler_key: object, envelope: object, signature: object) -> None:
    """Deliver one message to one async handler: the body of every job.

    :raises InvalidJobError: the signature does not match the job's id, queue,
        handler key and envelope (a copy, a replay elsewhere, tampering,
        another key), or the job was signed by a version before 0.1.0's
        signatures bound id and queue.
    """
    if not has_app_context() or "messaging" not in current_app.extensions:
        raise RuntimeError(
            "flask-messaging jobs run inside the Flask app: start workers with"
            " 'flask --app <your app> messaging worker', not 'rq worker'."
        )
    state = current_app.extensions["messaging"]
    binding = _running.get()
    if binding is None:
        raise RuntimeError(
            "dispatch() runs only as a flask-messaging job, in a worker made by"
            " make_worker() or 'flask messaging worker'."
        )
    if not isinstance(handler_key, str) or not isinstance(envelope, str):
        raise InvalidJobError("Refused a job whose arguments are malformed.")
    data = envelope.encode()
    if not state.signer.verify(binding, handler_key, data, signature):
        if _older_signature(signature):
            raise InvalidJobError(
                f"Refused job {binding.job_id}: its signature is of an older"
                " flask-messaging, which did not bind a job to its id and queue."
                " Such a job cannot be told from a copy, so it never runs: drain"
                " queues with the old workers before upgrading them, and publish"
                " the message again if it is still wanted."
            )
        raise InvalidJobError(
            f"Refused job {binding.job_id} for handler {handler_key!r}: its"
            " signature does not match its contents, id and queue (tampered,"
            " copied under another id or onto another queue, or signed with"
            " another MESSAGING_SIGNING_KEY / SECRET_KEY)."
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


def _older_signature(signature: object) -> bool:
    """True for a signature as versions before bound jobs wrote: 64 hex digits."""
    return (
        isinstance(signature, str)
        and len(signature) == 64
        and all(c in "0123456789abcdef" for c in signature)
    )


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
    serializer, and acts on every field it knows: this class reads a hash
    only once :func:`~flask_messaging.job_hash.check_job_hash` has accepted
    every field (shape and size), refuses, before any import, every job that
    names something else, and such jobs fail at once, without retries.
    """

    #: The most bytes a field may hold, raw or inflated; per app, see
    #: :func:`job_class_for`.
    max_field_bytes = field_limit(1024 * 1024)

    #: The most fields a hash may have: a larger one is refused by the take
    #: before it is read (:mod:`flask_messaging.dequeue`).
    max_fields = len(ALLOWED_FIELDS)

    #: False for the displays' reads: ``data`` and ``exc_info`` are checked,
    #: then dropped, so that a page of jobs holds none of their payloads.
    #: Such a job is never saved.
    keeps_payload = True

    def restore(self, raw_data: Any) -> Any:
        """Read a job hash, refusing one that is not ours or too large.

        :raises InvalidJobError: a field our jobs never have or a value they
            never hold (:mod:`flask_messaging.job_hash`).
        :raises JobTooLargeError: a field over :attr:`max_field_bytes`.
        """
        if not raw_data or (b"data" not in raw_data and "data" not in raw_data):
            return super().restore(raw_data)  # RQ says: no such job
        checked = check_job_hash(self.id, raw_data, self.max_field_bytes)
        if not self.keeps_payload:
            checked["data"] = _PAYLOAD_NOT_KEPT
            checked.pop("exc_info", None)
        return super().restore(checked)

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.keeps_payload:
            raise RuntimeError(
                f"Job {self.id} was read for display, without its payload:"
                " it cannot be saved."
            )
        super().save(*args, **kwargs)

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
        token = _running.set(JobBinding(self.id, self.origin))
        try:
            return super().perform()
        except InvalidJobError:
            self.retries_left = 0  # a refused job would be refused again
            raise
        finally:
            _running.reset(token)


#: What a job read for display holds instead of its call.
_PAYLOAD_NOT_KEPT = b'["(not kept)", null, [], {}]'


@functools.cache
def job_class_for(
    max_message_bytes: int | None, *, for_display: bool = False
) -> type[MessagingJob]:
    """:class:`MessagingJob` bounded for ``MESSAGING_MAX_MESSAGE_BYTES``.

    Workers, and whatever writes jobs back (a requeue), read jobs with it;
    ``flask messaging status`` and the dashboard read them with
    ``for_display=True``, which keeps no payload (see
    :attr:`MessagingJob.keeps_payload`).
    """
    return type(
        "MessagingJob",
        (MessagingJob,),
        {
            "max_field_bytes": field_limit(max_message_bytes),
            "keeps_payload": not for_display,
            "__module__": __name__,
        },
    )
