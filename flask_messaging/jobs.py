"""Turning async deliveries into RQ jobs, or running them inline."""

from __future__ import annotations

import hashlib
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

    def enqueue_once(
        self,
        messages: Sequence[tuple[str, Sequence[Delivery]]],
        relayed_key: str | None = None,
    ) -> list[bool]:
        """Enqueue each message's deliveries unless that message was already.

        ``messages`` pairs a message id with its deliveries (possibly none). A
        marker per message id, set in the same atomic script as the jobs,
        makes a second attempt (a relay racing the committing process, two
        relays) enqueue nothing. With ``relayed_key``, each message id is also
        appended to that list, for the relay to mark its outbox row. One round
        trip per :data:`SCRIPT_BATCH` messages, all in one pipeline.

        :return: per message, whether this call enqueued it.
        """
        connection = self._connection()
        # RQ writes each job through a pipeline: record the commands it would
        # send, to replay them inside the script only for unmarked messages.
        recorder = connection.pipeline(transaction=False)
        groups: list[tuple[str, list[tuple[Any, ...]]]] = []
        for message_id, deliveries in messages:
            start = len(recorder.command_stack)
            if deliveries:
                self.enqueue(deliveries, pipeline=recorder)
            commands = [args for args, _ in recorder.command_stack[start:]]
            groups.append((message_id, commands))
        recorder.reset()
        pipe = connection.pipeline(transaction=False)
        for start in range(0, len(groups), SCRIPT_BATCH):
            keys, args = _script_arguments(groups[start : start + SCRIPT_BATCH])
            if relayed_key is not None:
                keys.append(relayed_key)
            _enqueue_once_script(keys=keys, args=args, client=pipe)
        results = pipe.execute()
        # Replies alternate: SCRIPT LOAD's, then the script's flags.
        return [bool(flag) for flags in results[1::2] for flag in flags]


#: Messages per script call: bounds the size of one script's arguments.
SCRIPT_BATCH = 200

#: Seconds a "this message was enqueued" marker lives: far longer than any
#: pause between a commit and its enqueue, or than a relay pass.
MARKER_TTL = 3600

MARKER_PREFIX = "flask_messaging:enqueued:"

_ENQUEUE_ONCE = """
-- KEYS: one marker key per message, then optionally the relayed list.
-- ARGV: marker ttl, message count, then per message: its id, its command
-- count, and per command: its argument count and arguments.
local ttl = ARGV[1]
local count = tonumber(ARGV[2])
local relayed = KEYS[count + 1]
local at = 3
local result = {}
for m = 1, count do
  local message_id = ARGV[at]
  local commands = tonumber(ARGV[at + 1])
  at = at + 2
  local fresh = redis.call('SET', KEYS[m], '1', 'NX', 'EX', ttl)
  for c = 1, commands do
    local size = tonumber(ARGV[at])
    if fresh then
      redis.call(unpack(ARGV, at + 1, at + size))
    end
    at = at + size + 1
  end
  if fresh and relayed then
    redis.call('RPUSH', relayed, message_id)
  end
  result[m] = fresh and 1 or 0
end
return result
"""


class _Script:
    """A Lua script run by EVALSHA, loaded on first use per server."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys: list[str], args: list[Any], client: Any) -> None:
        # In a pipeline the NOSCRIPT error would only show at execute():
        # SCRIPT LOAD first is idempotent and cheap.
        client.script_load(self.source)
        client.evalsha(self.sha, len(keys), *keys, *args)


_enqueue_once_script = _Script(_ENQUEUE_ONCE)


def _script_arguments(
    groups: Sequence[tuple[str, list[tuple[Any, ...]]]],
) -> tuple[list[str], list[Any]]:
    keys = [MARKER_PREFIX + message_id for message_id, _ in groups]
    args: list[Any] = [MARKER_TTL, len(groups)]
    for message_id, commands in groups:
        args += (message_id, len(commands))
        for command in commands:
            args.append(len(command))
            args += command
    return keys, args


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
