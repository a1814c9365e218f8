"""Turning async deliveries into RQ jobs, or running them inline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rq import Queue, Retry

from .serializer import JSONSerializer
from .signing import Signer

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

    from .subscription import Subscription

__all__ = ["DISPATCH_FUNCTION", "Delivery", "InlineJobs", "JobOptions", "RQJobs"]

#: The only function our jobs ever name; workers refuse any other.
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


@dataclass(frozen=True, slots=True)
class JobOptions:
    """The app's defaults for async jobs (``MESSAGING_RETRY`` and friends)."""

    retry: int = 3
    retry_intervals: tuple[int, ...] = (10, 60, 300)
    timeout: int = 180
    result_ttl: int = 500
    failure_ttl: int = 60 * 60 * 24 * 365
    ttl: int | None = None

    def retry_for(self, subscription: Subscription) -> Retry | None:
        retry = subscription.retry
        if isinstance(retry, Retry):
            return retry
        count = self.retry if retry is None else retry
        if count == 0:
            return None
        return Retry(max=count, interval=list(self.retry_intervals) or 0)


def job_description(delivery: Delivery) -> str:
    # Shown by RQ's tools and dashboards, some of which do not escape it: built
    # from names only, never from message data.
    return f"{delivery.message_type} -> {delivery.subscription.key}"


class RQJobs:
    """Writes one RQ job per delivery, all in one Redis round trip."""

    def __init__(
        self,
        connection: Callable[[], Redis],
        signer: Callable[[], Signer],
        options: JobOptions,
    ) -> None:
        self._connection = connection
        self._signer = signer
        self.options = options
        self._queues: dict[str, Queue] = {}

    def queue(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = Queue(
                name, connection=self._connection(), serializer=JSONSerializer
            )
        return queue

    def enqueue(
        self, deliveries: Sequence[Delivery], pipeline: Pipeline | None = None
    ) -> None:
        """Enqueue ``deliveries``; in ``pipeline`` if given (not executed then)."""
        signer = self._signer()
        options = self.options
        by_queue: dict[str, list[Any]] = {}
        for delivery in deliveries:
            subscription = delivery.subscription
            assert subscription.queue_name is not None
            envelope = delivery.envelope.decode()
            by_queue.setdefault(subscription.queue_name, []).append(
                Queue.prepare_data(
                    DISPATCH_FUNCTION,
                    args=(
                        subscription.key,
                        envelope,
                        signer.sign(subscription.key, delivery.envelope),
                    ),
                    timeout=subscription.timeout or options.timeout,
                    result_ttl=options.result_ttl,
                    failure_ttl=options.failure_ttl,
                    ttl=options.ttl,
                    description=job_description(delivery),
                    job_id=delivery.job_id,
                    retry=options.retry_for(subscription),
                )
            )
        pipe = pipeline if pipeline is not None else self._connection().pipeline()
        for name, datas in by_queue.items():
            self.queue(name).enqueue_many(datas, pipeline=pipe)
        if pipeline is None:
            pipe.execute()


class InlineJobs:
    """Runs async subscribers at once, in the publishing thread.

    For ``MESSAGING_ASYNC = False``: each delivery still goes through a full
    encode and decode, as it would through a worker.
    """

    def enqueue(self, deliveries: Sequence[Delivery]) -> None:
        from .dispatch import run_delivery
        from .errors import raise_failures, record_failure

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
