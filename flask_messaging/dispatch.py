"""Async delivery: what a job is, where jobs go, and what runs one.

A :class:`Delivery` is one message for one async subscriber, and becomes one
job. The app's :class:`JobSink` takes a publish's deliveries: RQ jobs in
Redis (a :class:`DurableJobSink`, :mod:`flask_messaging._rq.enqueue`), or
:class:`InlineJobs`, which runs them at once (``MESSAGING_ASYNC = False``).

Every job names :func:`dispatch`, and only it (:data:`DISPATCH_FUNCTION`).
The worker's job class (:class:`~flask_messaging._rq.job.MessagingJob`)
refuses any other function before importing anything; ``dispatch`` then
checks the job's HMAC signature, which binds its contents to its job id and
queue, and finds the handler in the app's own registry (an allow-list), by
the stable key the job carries.

An ``async def`` handler is run to its end where it is called
(:func:`~flask_messaging.coroutines.run_to_completion`), unless a worker
asked for its coroutines with :func:`deferring_coroutines`: then
:func:`dispatch` hands the coroutine to the worker's
:class:`~flask_messaging.coroutines.HandlerLoop` and returns at once.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Protocol, runtime_checkable

from flask import Flask, current_app, has_app_context

from . import envelope as codec
from .coroutines import HandlerLoop, run_if_awaitable
from .errors import (
    InvalidJobError,
    UnknownHandlerError,
    raise_failures,
    record_failure,
)
from .message import message_type_by_name
from .signing import JobBinding
from .subscription import Subscription

__all__ = [
    "DISPATCH_FUNCTION",
    "Delivery",
    "DurableJobSink",
    "InlineJobs",
    "JobSink",
    "deferring_coroutines",
    "dispatch",
    "run_delivery",
    "running_job",
]

#: The only function our jobs ever name; workers refuse any other. Stored in
#: every job: it names this module's :func:`dispatch` for good.
DISPATCH_FUNCTION = "flask_messaging.dispatch.dispatch"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message for one async subscriber: one job."""

    subscription: Subscription
    #: The stable name of the message's class.
    message_type: str
    message_id: str
    #: The encoded envelope.
    envelope: bytes

    @property
    def job_id(self) -> str:
        """Stable per (message, subscriber): the same delivery is the same job."""
        return f"msg-{self.message_id}-{self.subscription.key_digest}"


class JobSink(Protocol):
    """Where a publish's async deliveries go."""

    def enqueue(self, deliveries: Sequence[Delivery]) -> None:
        """Hand over ``deliveries``.

        :raises DeliveryError: deliveries run at once failed (inline sinks).
        :raises redis.RedisError: Redis did not take the jobs (none was
            written).
        """


@runtime_checkable
class DurableJobSink(JobSink, Protocol):
    """A sink whose jobs outlive this process: the outbox relays through one."""

    def enqueue_once(
        self,
        messages: Sequence[tuple[str, Sequence[Delivery]]],
        relayed_key: str | None = None,
    ) -> list[bool]:
        """Enqueue each message's deliveries unless that message was already.

        ``messages`` pairs a message id with its deliveries (possibly none).
        With ``relayed_key``, each message id enqueued is also appended to
        that Redis list, for the relay to mark its outbox row.

        :return: per message, whether this call enqueued it.
        """
        ...


_running: contextvars.ContextVar[JobBinding | None] = contextvars.ContextVar(
    "flask_messaging_job", default=None
)


@contextmanager
def running_job(binding: JobBinding) -> Iterator[None]:
    """Let :func:`dispatch` run inside the block, as the job ``binding`` names."""
    token = _running.set(binding)
    try:
        yield
    finally:
        _running.reset(token)


class _Deferral(NamedTuple):
    loop: HandlerLoop
    timeout: float | None


_deferral: contextvars.ContextVar[_Deferral | None] = contextvars.ContextVar(
    "flask_messaging_deferral", default=None
)


@contextmanager
def deferring_coroutines(loop: HandlerLoop, timeout: float | None) -> Iterator[None]:
    """Let :func:`dispatch`, inside the block, hand coroutines to ``loop``.

    For a worker that runs ``async def`` handlers many at once: inside the
    block, :func:`dispatch` checks the job and decodes its message as
    usual, then, for an ``async def`` handler (or one that returns an
    awaitable), submits the coroutine to ``loop`` and returns a
    :class:`concurrent.futures.Future` instead of waiting for it. A plain
    handler runs in place and ``dispatch`` returns ``None``, as outside the
    block. Only ``dispatch`` defers: sync subscribers, inline jobs and
    :meth:`~flask_messaging.broker.TestBroker.process_messages` still run
    coroutines to their end.

    The coroutine runs in a task of its own, inside a new app context of the
    same Flask app (so with a Flask-SQLAlchemy session of its own, removed
    when the task ends) and with :func:`~flask_messaging.current_envelope`
    giving its message's envelope. ``dispatch`` may first wait for a free
    place on ``loop`` (:meth:`~flask_messaging.coroutines.HandlerLoop.submit`).

    The future resolves to ``None`` once the handler returned; it raises
    what the handler raised, :class:`TimeoutError` when it ran longer than
    ``timeout``, or :class:`concurrent.futures.CancelledError` when it was
    cancelled (``loop`` closed before it ended).

    :param loop: the worker's loop, made in the worker's own process.
    :param timeout: seconds each coroutine may run before it is cancelled;
        ``None``: no limit.
    """
    token = _deferral.set(_Deferral(loop, timeout))
    try:
        yield
    finally:
        _deferral.reset(token)


def dispatch(
    handler_key: object, envelope: object, signature: object
) -> concurrent.futures.Future[None] | None:
    """Deliver one message to one async handler: the body of every job.

    :return: ``None`` once the handler ran; inside
        :func:`deferring_coroutines`, a future of an ``async def`` handler's
        coroutine, which runs on (see there).
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
    return _handle(subscription, parsed, _deferral.get())


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


def _handle(
    subscription: Subscription,
    envelope: codec.Envelope,
    deferral: _Deferral | None = None,
) -> concurrent.futures.Future[None] | None:
    message = codec.decode(envelope)
    if deferral is not None and subscription.is_coroutine:
        return _defer(deferral, partial(subscription.handler, message), envelope)
    with codec.handling(envelope):
        result = subscription.handler(message)
        if result is None:
            return None
        if deferral is not None and inspect.isawaitable(result):
            # A plain function that returned a coroutine: its own code ran
            # here; the coroutine runs on the loop like any other.
            try:
                return _defer(deferral, lambda: result, envelope)
            except BaseException:
                close = getattr(result, "close", None)
                if close is not None:
                    close()  # never run: no "never awaited" warning
                raise
        run_if_awaitable(result)
    return None


def _defer(
    deferral: _Deferral, call: Callable[[], object], envelope: codec.Envelope
) -> concurrent.futures.Future[None]:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return deferral.loop.submit(
        partial(_run_deferred, app, call, envelope), timeout=deferral.timeout
    )


async def _run_deferred(
    app: Flask, call: Callable[[], object], envelope: codec.Envelope
) -> None:
    # A task of its own, in a copy of the worker's context: nothing it
    # dispatches is deferred again, and its app context is its own, popped
    # (the Flask-SQLAlchemy session removed) when it ends.
    _deferral.set(None)
    with app.app_context(), codec.handling(envelope):
        result = call()
        if inspect.isawaitable(result):
            await result


class InlineJobs:
    """Runs async subscribers at once, in the publishing thread.

    For ``MESSAGING_ASYNC = False``: each delivery still goes through a full
    encode and decode, as it would through a worker.
    """

    def enqueue(self, deliveries: Sequence[Delivery]) -> None:
        """Run each delivery's handler in turn.

        :raises DeliveryError: handlers failed; every delivery still ran.
        """
        errors: list[Exception] | None = None
        for delivery in deliveries:
            try:
                run_delivery(delivery.subscription, delivery.envelope)
            except Exception as exc:
                errors = record_failure(
                    errors,
                    delivery.subscription,
                    delivery.message_type,
                    delivery.message_id,
                    exc,
                )
        if errors:
            raise_failures(deliveries[0].message_type, errors)
