"""Turning async deliveries into RQ jobs, or running them inline."""

from __future__ import annotations

import enum
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from rq import Queue, Retry
from rq.utils import now as utcnow
from rq.utils import utcformat

from .dequeue import MessagingQueue
from .lua import LuaScript
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
    """Writes one RQ job per delivery, all in one Redis round trip.

    Jobs are exactly what RQ's own ``Queue.enqueue_many`` writes: the commands
    it sends for a job are recorded once per subscription, then replayed with
    each delivery's id, data and timestamps. That skips building an RQ
    ``Job`` object per message, most of the cost of enqueueing.
    """

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
        self._templates: dict[Subscription, _JobTemplate] = {}

    def queue(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = MessagingQueue(
                name, connection=self._connection(), serializer=JSONSerializer
            )
        return queue

    def commands(self, deliveries: Sequence[Delivery]) -> list[tuple[Any, ...]]:
        """The Redis commands that enqueue ``deliveries``."""
        signer = self._signer()
        now = utcformat(utcnow())
        commands: list[tuple[Any, ...]] = []
        for delivery in deliveries:
            subscription = delivery.subscription
            template = self._templates.get(subscription)
            if template is None:
                template = self._templates[subscription] = self._record(subscription)
            envelope = delivery.envelope
            data = zlib.compress(
                _data_encoder.encode(
                    (
                        DISPATCH_FUNCTION,
                        None,
                        (
                            subscription.key,
                            envelope.decode(),
                            signer.sign(subscription.key, envelope),
                        ),
                        {},
                    )
                )
            )
            commands += template.fill(
                delivery.job_id, data, job_description(delivery), now
            )
        return commands

    def enqueue(
        self, deliveries: Sequence[Delivery], pipeline: Pipeline | None = None
    ) -> None:
        """Enqueue ``deliveries``; in ``pipeline`` if given (not executed then)."""
        pipe = pipeline if pipeline is not None else self._connection().pipeline()
        for command in self.commands(deliveries):
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        if pipeline is None:
            pipe.execute()

    def _record(self, subscription: Subscription) -> _JobTemplate:
        assert subscription.queue_name is not None
        options = self.options
        recorder = self._connection().pipeline(transaction=False)
        self.queue(subscription.queue_name).enqueue_many(
            [
                Queue.prepare_data(
                    DISPATCH_FUNCTION,
                    args=(),
                    timeout=subscription.timeout or options.timeout,
                    result_ttl=options.result_ttl,
                    failure_ttl=options.failure_ttl,
                    ttl=options.ttl,
                    description=_PROTOTYPE_DESCRIPTION,
                    job_id=_PROTOTYPE_ID,
                    retry=options.retry_for(subscription),
                )
            ],
            pipeline=recorder,
        )
        commands = [args for args, _ in recorder.command_stack]
        recorder.reset()
        return _JobTemplate.from_recording(commands)

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
        groups = [
            (message_id, self.commands(deliveries))
            for message_id, deliveries in messages
        ]
        calls = []
        for start in range(0, len(groups), SCRIPT_BATCH):
            keys, args = _script_arguments(groups[start : start + SCRIPT_BATCH])
            if relayed_key is not None:
                keys.append(relayed_key)
            calls.append((keys, args))
        results = _enqueue_once_script.run_all(self._connection(), calls)
        return [bool(flag) for flags in results for flag in flags]


_PROTOTYPE_ID = "flask-messaging-prototype"
_PROTOTYPE_DESCRIPTION = "flask-messaging prototype description"
_data_encoder = msgspec.json.Encoder()


class _Slot(enum.Enum):
    """Where a recorded command takes a per-job value."""

    DATA = "job data"
    DESCRIPTION = "description"
    NOW = "timestamp"


@dataclass(frozen=True, slots=True)
class _WithId:
    """A recorded argument that contains the job id (a key, or the id)."""

    before: str
    after: str


@dataclass(frozen=True, slots=True)
class _JobTemplate:
    """RQ's commands for one job, with slots for what differs per job."""

    commands: tuple[tuple[Any, ...], ...]

    @classmethod
    def from_recording(cls, commands: list[tuple[Any, ...]]) -> _JobTemplate:
        slotted = []
        for command in commands:
            args: list[Any] = []
            for i, arg in enumerate(command):
                previous = command[i - 1] if i else None
                if isinstance(arg, enum.Enum):
                    arg = arg.value
                if arg == _PROTOTYPE_DESCRIPTION:
                    args.append(_Slot.DESCRIPTION)
                elif isinstance(arg, str) and _PROTOTYPE_ID in arg:
                    args.append(_WithId(*arg.split(_PROTOTYPE_ID, 1)))
                elif previous == "data" and isinstance(arg, bytes):
                    args.append(_Slot.DATA)
                elif previous in ("created_at", "enqueued_at"):
                    args.append(_Slot.NOW)
                else:
                    args.append(arg)
            slotted.append(tuple(args))
        return cls(tuple(slotted))

    def fill(
        self, job_id: str, data: bytes, description: str, now: str
    ) -> list[tuple[Any, ...]]:
        values = {_Slot.DATA: data, _Slot.DESCRIPTION: description, _Slot.NOW: now}
        return [
            tuple(
                values[a]
                if isinstance(a, _Slot)
                else a.before + job_id + a.after
                if isinstance(a, _WithId)
                else a
                for a in command
            )
            for command in self.commands
        ]


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


_enqueue_once_script = LuaScript(_ENQUEUE_ONCE)


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
